"""When a scheduled sync is next due, and the clocks the scheduler reads time from.

``every: 15m`` keeps a steady beat from its first tick (missed ticks while the server was
down collapse into one run, not a burst); ``cron:`` is evaluated in its ``timezone`` so
``0 6 * * 1-5`` means 6 a.m. local time across daylight-saving changes.
"""

from __future__ import annotations

import threading
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Protocol

from undertow.orchestration.config import ScheduleSpec, format_duration


class Clock(Protocol):
    """Where the scheduler reads the time and waits; tests pass a :class:`ManualClock`."""

    def now(self) -> datetime: ...

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        """Wait up to ``seconds`` or until ``stop`` is set; True when stopped."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        return stop.wait(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to: ``clock.advance(minutes=15)``."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        with self._lock:
            self._now += delta if delta is not None else timedelta(**kwargs)
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        self.advance(seconds=seconds)
        return stop.is_set()


def next_after(schedule: ScheduleSpec, now: datetime, previous: datetime | None) -> datetime:
    """The first due time strictly after ``now``, continuing the beat of ``previous``."""
    if schedule.every is not None:
        step = schedule.every
        if previous is None or previous > now:
            return now + step
        behind = now - previous
        ticks = int(behind / step) + 1
        return previous + ticks * step
    from croniter import croniter

    assert schedule.cron is not None
    tz = zoneinfo.ZoneInfo(schedule.zone)
    base = now.astimezone(tz)
    nxt: datetime = croniter(schedule.cron, base).get_next(datetime)
    if nxt.tzinfo is None:
        nxt = nxt.replace(tzinfo=tz)
    return nxt.astimezone(UTC)


def describe(schedule: ScheduleSpec | None) -> str:
    if schedule is None:
        return "manual"
    if schedule.every is not None:
        return f"every {format_duration(schedule.every).replace(' 00s', '').replace(' 00m', '')}"
    return f"cron {schedule.cron} ({schedule.zone})"
