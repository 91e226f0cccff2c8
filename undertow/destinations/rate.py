"""Rate budgets: never more requests in any rolling window than a destination account allows.

A :class:`RateBudget` is what every request to one destination *account* draws from; every
sync in the process that writes to that account shares it (:func:`budget_for`, keyed by
:meth:`Destination.account_key`). The interface is small so that a budget kept in Redis
(shared by every process and machine) can implement it::

    permit = await budget.acquire(stop=stop, max_wait=900)   # waits for a slot
    try:
        response = await send()
    finally:
        await budget.release(permit)
    await budget.penalize(10.0)            # the vendor said "slow down": nobody sends for 10 s
    await budget.observe(remaining=3, reset_in=4.0)   # the vendor's own count, from headers

:class:`LocalBudget` is the in-process one: a sliding log per window (exact, unlike a token
bucket or GCRA with a burst, which both admit more than the limit in some rolling window).
A request holds its place in every window from the moment it starts until ``per_seconds``
after its answer arrived, so whatever the network's latency, the vendor never sees more than
``requests`` arrivals in any ``per_seconds``. The cost is one round trip per window (0.2 %
of a 10 s window at 20 ms). It also bounds the requests in flight across syncs, pauses
everyone after a slow-down answer, and trusts the vendor's ``remaining``/``reset`` headers
when they say less is left than it counted (another app shares the account).

It works across threads and event loops (each ``undertow serve`` run has its own loop):
state sits under a ``threading.Lock`` and waiters are woken with ``call_soon_threadsafe``.

Waits are bounded: ``acquire`` raises :class:`WaitTooLong` when the next slot is further
away than ``max_wait`` and :class:`Interrupted` when ``stop`` is set while it waits.
"""

from __future__ import annotations

import asyncio
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from undertow.destinations.base import RateLimit


class WaitTooLong(Exception):
    """The budget's next slot is further away than the caller accepts to wait."""

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(f"{reason}: next request allowed in {seconds:,.0f} s")
        self.seconds = seconds
        self.reason = reason


class Interrupted(Exception):
    """``stop`` was set while waiting."""


@dataclass
class Permit:
    """One request's place in a budget, returned to :meth:`RateBudget.release`."""

    started: float
    token: object = None
    """Implementation data (a Redis budget keeps its member id here)."""


class RateBudget(ABC):
    """The requests one destination account may make (see the module docstring)."""

    key: str

    @abstractmethod
    async def acquire(
        self, *, stop: asyncio.Event | None = None, max_wait: float | None = None
    ) -> Permit:
        """Wait for a place in every window and in flight; raise WaitTooLong/Interrupted."""

    @abstractmethod
    async def release(self, permit: Permit) -> None:
        """The request's answer arrived (or it failed): its place counts from now."""

    @abstractmethod
    async def penalize(self, seconds: float, reason: str = "the vendor asked to slow down") -> None:
        """Nobody on this account starts a request for ``seconds`` from now."""

    @abstractmethod
    async def observe(self, *, remaining: int, reset_in: float) -> None:
        """The vendor says ``remaining`` requests are left until ``reset_in`` seconds from now."""

    def tighten(self, limits: Sequence[RateLimit], max_in_flight: int | None) -> None:  # noqa: B027
        """Another sync on the account declares these limits: keep the stricter of each."""


@dataclass
class _Window:
    limit: int
    seconds: float
    ends: deque[float] = field(default_factory=deque)
    """When each finished request's answer arrived (oldest first, pruned past the window)."""


class LocalBudget(RateBudget):
    """The in-process budget: exact sliding logs, an in-flight cap, pauses (thread-safe)."""

    def __init__(
        self,
        key: str,
        limits: Sequence[RateLimit] = (),
        *,
        max_in_flight: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self.clock = clock
        self._windows = [_Window(limit.requests, limit.per_seconds) for limit in limits]
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.paused_until = 0.0
        self.pause_reason = ""
        self._allowance: tuple[int, float] | None = None
        """(requests left, until when) as the vendor last said, when below our own count."""
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.started = 0
        """Requests started so far (for tests and benchmarks)."""

    # -- the decision, under the lock ---------------------------------------------------------

    def _delay(self, now: float) -> tuple[float | None, str]:
        """0 when a request may start now; else seconds to wait (None: until a release)."""
        if now < self.paused_until:
            return self.paused_until - now, self.pause_reason
        wait: float | None = 0.0
        reason = ""
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            wait, reason = None, f"{self.max_in_flight} requests in flight"
        for window in self._windows:
            ends = window.ends
            while ends and ends[0] <= now - window.seconds:
                ends.popleft()
            if self.in_flight + len(ends) < window.limit:
                continue
            if len(ends) + self.in_flight - window.limit >= len(ends):
                # every place is held by a request in flight: wait for an answer
                if wait == 0.0:
                    wait, reason = None, f"{window.limit} requests per {window.seconds:g} s"
                continue
            # the oldest answers free their places when they leave the window
            index = self.in_flight + len(ends) - window.limit
            free_at = ends[index] + window.seconds
            if wait is not None and free_at - now > wait:
                wait, reason = free_at - now, f"{window.limit} requests per {window.seconds:g} s"
        if self._allowance is not None:
            left, until = self._allowance
            if now >= until:
                self._allowance = None
            elif left <= 0 and (wait is not None and until - now > wait):
                wait, reason = until - now, "the vendor's remaining requests are used up"
        return wait, reason

    def _take(self, now: float) -> Permit:
        self.in_flight += 1
        self.started += 1
        if self._allowance is not None:
            left, until = self._allowance
            self._allowance = (left - 1, until)
        return Permit(started=now)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            if not future.done():
                loop.call_soon_threadsafe(_settle, future)

    # -- the interface ----------------------------------------------------------------------

    async def acquire(
        self, *, stop: asyncio.Event | None = None, max_wait: float | None = None
    ) -> Permit:
        loop = asyncio.get_running_loop()
        while True:
            if stop is not None and stop.is_set():
                raise Interrupted
            with self._lock:
                now = self.clock()
                wait, reason = self._delay(now)
                if wait == 0.0:
                    return self._take(now)
                if wait is not None and max_wait is not None and wait > max_wait:
                    raise WaitTooLong(wait, reason)
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, future))
            await _wait(future, wait, stop)

    async def release(self, permit: Permit) -> None:
        with self._lock:
            self.in_flight = max(0, self.in_flight - 1)
            now = self.clock()
            for window in self._windows:
                window.ends.append(now)
            self._wake()

    async def penalize(self, seconds: float, reason: str = "the vendor asked to slow down") -> None:
        with self._lock:
            until = self.clock() + max(0.0, seconds)
            if until > self.paused_until:
                self.paused_until = until
                self.pause_reason = reason

    async def observe(self, *, remaining: int, reset_in: float) -> None:
        with self._lock:
            now = self.clock()
            # the vendor's count includes what other apps sent; ours may still be in flight
            left = remaining - self.in_flight
            own = [w.limit - self.in_flight - len(w.ends) for w in self._windows]
            if own and left >= min(own):
                return  # our own count is the stricter one: nothing to learn
            if self._allowance is None or left < self._allowance[0] or now >= self._allowance[1]:
                self._allowance = (left, now + max(0.0, reset_in))
            self._wake()

    def tighten(self, limits: Sequence[RateLimit], max_in_flight: int | None) -> None:
        with self._lock:
            for limit in limits:
                same = [w for w in self._windows if w.seconds == limit.per_seconds]
                if not same:
                    self._windows.append(_Window(limit.requests, limit.per_seconds))
                for window in same:
                    window.limit = min(window.limit, limit.requests)
            if max_in_flight is not None:
                self.max_in_flight = min(self.max_in_flight or max_in_flight, max_in_flight)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _wait(
    future: asyncio.Future[None], timeout: float | None, stop: asyncio.Event | None
) -> None:
    """Wait for ``future`` (a release), ``timeout`` seconds, or ``stop``; raise Interrupted."""
    waits: set[asyncio.Future[Any]] = {future}
    stopper: asyncio.Future[Any] | None = None
    if stop is not None:
        stopper = asyncio.ensure_future(stop.wait())
        waits.add(stopper)
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if stopper is not None:
            stopper.cancel()
        if not future.done():
            future.cancel()
    if stop is not None and stop.is_set():
        raise Interrupted


async def pause(seconds: float, stop: asyncio.Event | None) -> None:
    """Sleep ``seconds``, or until ``stop`` is set (then raise :class:`Interrupted`)."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    if stop.is_set():
        raise Interrupted
    sleeper = asyncio.ensure_future(asyncio.sleep(seconds))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        stopper.cancel()
    if stop.is_set():
        raise Interrupted


# -- the process-wide registry ------------------------------------------------------------

BudgetFactory = Callable[[str, Sequence[RateLimit], "int | None"], RateBudget]

_registry_lock = threading.Lock()
_budgets: dict[str, RateBudget] = {}
_factory: BudgetFactory | None = None


def set_budget_factory(factory: BudgetFactory | None) -> None:
    """Make budgets with ``factory`` from now on (a Redis-backed one); None: in-process."""
    global _factory
    with _registry_lock:
        _factory = factory
        _budgets.clear()


def budget_for(
    key: str, limits: Sequence[RateLimit], *, max_in_flight: int | None = None
) -> RateBudget:
    """The one budget of account ``key`` in this process (created on first use)."""
    with _registry_lock:
        found = _budgets.get(key)
        if found is None:
            make = _factory
            found = (
                make(key, limits, max_in_flight)
                if make is not None
                else LocalBudget(key, limits, max_in_flight=max_in_flight)
            )
            _budgets[key] = found
            return found
    found.tighten(limits, max_in_flight)
    return found


def forget_budgets() -> None:
    """Drop every budget (tests; a new process starts empty anyway)."""
    with _registry_lock:
        _budgets.clear()
