"""deliver: concurrency, pacing, retries and stopping, against the in-memory destination."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from undertow.destinations.base import Batch, BatchResult, Operation, RateLimit
from undertow.destinations.memory import MemoryConfig, MemoryDestination
from undertow.errors import (
    DeliveryError,
    FatalDeliveryError,
    RejectedBatchError,
    RetryableError,
    StateError,
)
from undertow.pipeline.deliver import DeliveryReport, Outcome, RetryPolicy, deliver

pytestmark = pytest.mark.unit

FAST = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.002)
Behaviour = Callable[[MemoryDestination, Batch], Awaitable[BatchResult | None]]


async def accept(dest: MemoryDestination, batch: Batch) -> BatchResult:
    return BatchResult()


def fake(behaviour: Behaviour = accept) -> MemoryDestination:
    """The in-memory destination, answering each batch with ``behaviour``."""
    dest = MemoryDestination(MemoryConfig(store=f"deliver-{uuid.uuid4().hex}"), name="fake")
    dest.box.behaviour = behaviour
    return dest


def make_batch(number: int, size: int = 3) -> Batch:
    return Batch(
        sync="users_out",
        operation=Operation.UPSERT,
        number=number,
        idempotency_key=f"run-{number}",
        keys=[f"{number}.{i}" for i in range(size)],
        payloads=[f'{{"id":{i}}}' for i in range(size)],
    )


async def batches_of(count: int) -> AsyncIterator[Batch]:
    for number in range(count):
        yield make_batch(number)


def run_delivery(
    dest: MemoryDestination,
    count: int,
    *,
    concurrency: int = 1,
    rate_limit: RateLimit | None = None,
    policy: RetryPolicy = FAST,
    stop: asyncio.Event | None = None,
    on_outcome: Callable[[Outcome], Any] | None = None,
) -> tuple[DeliveryReport, dict[int, Outcome]]:
    outcomes: dict[int, Outcome] = {}

    def record(outcome: Outcome) -> Any:
        assert outcome.batch.number not in outcomes, "one outcome per batch"
        outcomes[outcome.batch.number] = outcome
        return on_outcome(outcome) if on_outcome else None

    async def main() -> DeliveryReport:
        return await deliver(
            dest,
            batches_of(count),
            concurrency=concurrency,
            rate_limit=rate_limit,
            on_outcome=record,
            stop=stop or asyncio.Event(),
            policy=policy,
        )

    return asyncio.run(main()), outcomes


class SleepRecorder:
    """Replaces asyncio.sleep: records each delay, advances a fake clock, yields once."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.now = 1000.0
        self._real = asyncio.sleep

    async def __call__(self, delay: float, result: Any = None) -> Any:
        self.delays.append(delay)
        self.now += delay
        await self._real(0)
        return result

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def fake_sleep(monkeypatch: pytest.MonkeyPatch) -> SleepRecorder:
    recorder = SleepRecorder()
    monkeypatch.setattr(asyncio, "sleep", recorder)
    return recorder


# -- concurrency and pacing -------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3, 8])
def test_concurrency_never_exceeds_the_limit(limit: int) -> None:
    async def slow(dest: MemoryDestination, batch: Batch) -> BatchResult:
        for _ in range(5):
            await asyncio.sleep(0.001)
        return BatchResult()

    dest = fake(slow)
    report, outcomes = run_delivery(dest, 20, concurrency=limit)
    assert dest.box.max_in_flight == limit  # reached, never passed
    assert sorted(outcomes) == list(range(20))
    assert report.stopped is None and not report.cancelled
    assert all(o.sent and o.attempts == 1 and not o.result.failed for o in outcomes.values())


def test_rate_limit_is_never_exceeded_in_any_rolling_window() -> None:
    spans: list[tuple[float, float]] = []

    async def stamp(dest: MemoryDestination, batch: Batch) -> BatchResult:
        started = time.monotonic()
        await asyncio.sleep(0.01)
        spans.append((started, time.monotonic()))
        return BatchResult()

    limit = RateLimit(requests=3, per_seconds=0.3)
    run_delivery(fake(stamp), 10, concurrency=4, rate_limit=limit)
    assert len(spans) == 10
    starts = sorted(start for start, _ in spans)
    # a sliding log: the 4th request starts only after the 1st answer left the window
    for i in range(len(starts) - 3):
        assert starts[i + 3] - starts[i] >= 0.3, starts
    assert starts[:3][-1] - starts[0] < 0.05  # the first three go out at once


def test_no_rate_limit_means_no_waiting(fake_sleep: SleepRecorder) -> None:
    run_delivery(fake(), 10, concurrency=2)
    assert fake_sleep.delays == []


# -- retries ----------------------------------------------------------------------------------


def test_retryable_error_is_retried_honouring_retry_after(fake_sleep: SleepRecorder) -> None:
    async def flaky(dest: MemoryDestination, batch: Batch) -> BatchResult:
        if dest.box.writes.count(batch.number) <= 2:
            raise RetryableError("429 Too Many Requests", retry_after=7.0)
        return BatchResult()

    report, outcomes = run_delivery(fake(flaky), 1)
    assert fake_sleep.delays == [7.0, 7.0]
    assert outcomes[0].attempts == 3
    assert outcomes[0].result == BatchResult()
    assert report.stopped is None and not report.cancelled


def test_backoff_without_retry_after_grows_with_jitter(fake_sleep: SleepRecorder) -> None:
    async def flaky(dest: MemoryDestination, batch: Batch) -> BatchResult:
        if len(dest.box.writes) <= 3:
            raise RetryableError("503")
        return BatchResult()

    policy = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=3.0)
    run_delivery(fake(flaky), 1, policy=policy)
    assert len(fake_sleep.delays) == 3
    for attempt, delay in enumerate(fake_sleep.delays, start=1):
        backoff = min(3.0, 2 ** (attempt - 1))
        assert backoff / 2 <= delay <= backoff


def test_exhausted_retries_fail_the_batch_and_stop_delivery(fake_sleep: SleepRecorder) -> None:
    async def down(dest: MemoryDestination, batch: Batch) -> BatchResult:
        raise RetryableError("502 Bad Gateway")

    dest = fake(down)
    report, outcomes = run_delivery(dest, 5, policy=RetryPolicy(max_attempts=3))
    assert dest.box.writes == [0, 0, 0]  # three attempts at batch 0, nothing after it
    assert list(outcomes) == [0]
    assert outcomes[0].attempts == 3
    assert outcomes[0].result.failed == dict.fromkeys(range(3), "502 Bad Gateway")
    assert isinstance(report.stopped, DeliveryError)
    assert "batch 0 of sync 'users_out' still failing after 3 attempts" in str(report.stopped)
    assert len(fake_sleep.delays) == 2


def test_rejected_batch_rejects_every_row_and_delivery_continues() -> None:
    async def picky(dest: MemoryDestination, batch: Batch) -> BatchResult:
        if batch.number == 1:
            raise RejectedBatchError("422: field 'plan' is unknown")
        return BatchResult(rejected={0: "bad email"} if batch.number == 2 else {})

    dest = fake(picky)
    report, outcomes = run_delivery(dest, 4)
    assert sorted(outcomes) == [0, 1, 2, 3]
    assert outcomes[1].result.rejected == dict.fromkeys(range(3), "422: field 'plan' is unknown")
    assert outcomes[1].attempts == 1  # not retried
    assert outcomes[2].result.rejected == {0: "bad email"}
    assert outcomes[0].result.accepted(3) == 3
    assert report.stopped is None and not report.cancelled
    assert dest.box.writes == [0, 1, 2, 3]


def test_fatal_error_stops_delivery() -> None:
    async def fatal(dest: MemoryDestination, batch: Batch) -> BatchResult:
        if batch.number == 1:
            raise FatalDeliveryError("401 Unauthorized: the token was revoked")
        return BatchResult()

    dest = fake(fatal)
    report, outcomes = run_delivery(dest, 6)
    assert dest.box.writes == [0, 1]
    assert sorted(outcomes) == [0, 1]
    assert outcomes[1].result.failed == dict.fromkeys(range(3), str(report.stopped))
    assert isinstance(report.stopped, FatalDeliveryError)
    assert outcomes[1].attempts == 1


# -- stopping ---------------------------------------------------------------------------------


def test_stop_event_sends_nothing_new_and_records_batches_in_flight() -> None:
    stop = asyncio.Event()

    async def stopper(dest: MemoryDestination, batch: Batch) -> BatchResult:
        if batch.number == 1:
            stop.set()  # e.g. SIGTERM while batches 0 and 1 are in flight
        await asyncio.sleep(0.001)
        return BatchResult()

    dest = fake(stopper)
    report, outcomes = run_delivery(dest, 10, concurrency=2, stop=stop)
    assert sorted(dest.box.writes) == [0, 1]
    assert sorted(outcomes) == [0, 1]  # both in-flight batches recorded
    assert all(o.result.accepted(3) == 3 for o in outcomes.values())
    assert report.cancelled and report.stopped is None


def test_stop_before_start_sends_nothing() -> None:
    stop = asyncio.Event()
    stop.set()
    dest = fake()
    report, outcomes = run_delivery(dest, 3, stop=stop)
    assert dest.box.writes == [] and outcomes == {}
    assert report.cancelled


def test_a_long_backoff_is_not_waited_for_after_stop(fake_sleep: SleepRecorder) -> None:
    stop = asyncio.Event()

    async def throttled(dest: MemoryDestination, batch: Batch) -> BatchResult:
        stop.set()
        raise RetryableError("429", retry_after=120.0)

    report, outcomes = run_delivery(fake(throttled), 3, stop=stop)
    assert fake_sleep.delays == []
    assert list(outcomes) == [0]
    assert len(outcomes[0].result.failed) == 3  # stays undelivered for the next run
    assert report.cancelled


def test_a_failing_record_step_stops_delivery_and_is_raised() -> None:
    """If a checkpoint cannot be written, nothing more may be sent."""

    def broken_store(outcome: Outcome) -> None:
        raise StateError("the state store is down")

    dest = fake()
    with pytest.raises(StateError, match="state store is down"):
        run_delivery(dest, 10, concurrency=1, on_outcome=broken_store)
    assert dest.box.writes == [0]


def test_async_on_outcome_is_awaited() -> None:
    seen: list[int] = []

    async def record(outcome: Outcome) -> None:
        await asyncio.sleep(0)
        seen.append(outcome.batch.number)

    run_delivery(fake(), 4, concurrency=2, on_outcome=record)
    assert sorted(seen) == [0, 1, 2, 3]
