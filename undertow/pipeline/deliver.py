"""deliver: send batches concurrently within the destination's limits, with retries.

Batches go out at most ``concurrency`` at a time, paced by a token bucket when the
destination declares a rate limit. A ``RetryableError`` (429, 5xx, timeouts) is retried with
exponential backoff and full jitter, never sooner than the ``Retry-After`` the destination
asked for. A ``RejectedBatchError`` rejects every record of the batch. A
``FatalDeliveryError``, or a batch that still fails after the last attempt, stops the
delivery: batches in flight finish and are recorded, nothing new is sent, and the rows not
sent stay undelivered for the next run.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from undertow.destinations import capture
from undertow.destinations.base import Batch, BatchResult, Destination, RateLimit
from undertow.errors import (
    DeliveryError,
    FatalDeliveryError,
    RejectedBatchError,
    RetryableError,
    UndertowError,
)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        wait = random.uniform(backoff / 2, backoff)
        return max(wait, retry_after or 0.0)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` banked; ``acquire`` waits for one."""

    def __init__(self, limit: RateLimit | None) -> None:
        self.rate = limit.rate if limit else 0.0
        self.burst = float(limit.requests) if limit else 0.0
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.rate <= 0:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


@dataclass
class Outcome:
    """How one batch ended: its result, the attempts it took, and whether it stops the run."""

    batch: Batch
    result: BatchResult
    attempts: int
    sent: bool
    error: UndertowError | None = None


@dataclass
class DeliveryReport:
    stopped: UndertowError | None = None
    cancelled: bool = False


async def send_with_retries(
    destination: Destination,
    batch: Batch,
    bucket: TokenBucket,
    policy: RetryPolicy,
    stop: asyncio.Event,
) -> Outcome:
    attempt = 0
    while True:
        attempt += 1
        await bucket.acquire()
        try:
            with capture.context(
                sync=batch.sync,
                destination=destination.instance_name,
                batch=batch.number,
                operation=str(batch.operation),
                keys=tuple(batch.keys),
                attempt=attempt,
            ):
                result = await destination.write_batch(batch)
            return Outcome(batch, result, attempt, sent=True)
        except RejectedBatchError as exc:
            return Outcome(batch, BatchResult.all_rejected(len(batch), str(exc)), attempt, True)
        except RetryableError as exc:
            if attempt >= policy.max_attempts:
                failed = DeliveryError(
                    f"batch {batch.number} of sync {batch.sync!r} still failing after "
                    f"{attempt} attempts: {exc}",
                    hint="the rows stay undelivered and the next run retries them",
                )
                return Outcome(
                    batch, BatchResult.all_failed(len(batch), str(exc)), attempt, True, failed
                )
            delay = policy.delay(attempt, exc.retry_after)
            if stop.is_set() and delay > 5:
                # shutting down: do not hold the run for a long backoff
                return Outcome(
                    batch,
                    BatchResult.all_failed(len(batch), f"cancelled during retry: {exc}"),
                    attempt,
                    True,
                )
            await asyncio.sleep(delay)
        except FatalDeliveryError as exc:
            return Outcome(batch, BatchResult.all_failed(len(batch), str(exc)), attempt, True, exc)


async def deliver(
    destination: Destination,
    batches: AsyncIterator[Batch],
    *,
    concurrency: int,
    rate_limit: RateLimit | None,
    on_outcome: Callable[[Outcome], Awaitable[None] | None],
    stop: asyncio.Event,
    policy: RetryPolicy | None = None,
) -> DeliveryReport:
    """Send every batch from ``batches``; call ``on_outcome`` once per batch, in the loop.

    An exception from ``on_outcome`` (a checkpoint that cannot be written) or from the
    destination beyond the ``DeliveryError`` family stops the delivery like a fatal error,
    and is raised once the batches in flight have finished.
    """
    policy = policy or RetryPolicy()
    bucket = TokenBucket(rate_limit)
    slots = asyncio.Semaphore(max(1, concurrency))
    report = DeliveryReport()
    tasks: set[asyncio.Task[None]] = set()
    crashed: list[BaseException] = []

    async def run_one(batch: Batch) -> None:
        try:
            outcome = await send_with_retries(destination, batch, bucket, policy, stop)
            if outcome.error is not None and report.stopped is None:
                report.stopped = outcome.error
                stop.set()
            maybe = on_outcome(outcome)
            if maybe is not None:
                await maybe
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # e.g. a checkpoint that failed: send nothing more
            crashed.append(exc)
            stop.set()
        finally:
            slots.release()

    try:
        async for batch in batches:
            await slots.acquire()
            if stop.is_set():
                slots.release()
                break
            task = asyncio.create_task(run_one(batch))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        if tasks:
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for item in results:
                if isinstance(item, BaseException) and not isinstance(item, asyncio.CancelledError):
                    raise item
    if crashed:
        raise crashed[0]
    if stop.is_set() and report.stopped is None:
        report.cancelled = True
    return report
