"""deliver: send batches concurrently within the destination's limits, with retries.

Batches go out at most ``concurrency`` at a time. A destination that paces its own requests
(the HTTP kit: every request draws from the account's rate budget) is not paced again here;
any other one with a rate limit draws one place per batch from the same shared budget
(``undertow.destinations.rate``: an exact sliding log, shared by every sync on the account).
A ``RetryableError`` (429, 5xx, timeouts) is retried with exponential backoff and full
jitter, never sooner than the ``Retry-After`` the destination asked for and never longer
than the destination's ``max_wait`` (a vendor asking for more stops the run, saying so). A
``RejectedBatchError`` rejects every record of the batch. A ``FatalDeliveryError``, or a
batch that still fails after the last attempt (also a ``FatalDeliveryError``), stops the
delivery: batches in flight finish and are recorded, nothing new is sent, and the rows not
sent stay undelivered for the next run. Every wait ends at once when ``stop`` is set
(Ctrl-C, SIGTERM): the batch stays undelivered and the run ends cancelled.

The batches run inside :func:`undertow.destinations.retry.delivery`, so a kit destination's
own request retries use the sync's policy, ``max_wait`` and stop event.

Asynchronous job APIs (``Destination.async_jobs``): a batch is submitted, the job is handed
to ``on_submitted`` (the run records "batch N submitted as job J" in the state store) before
anything else happens, and only then polled until its results are known; a retry after a
failed poll polls again, never submits again. A batch found in ``jobs`` (a resumed run's
recorded jobs) is polled, not submitted. Stopping while a job runs leaves it recorded and
unfinished: the next run polls it.

A batch the destination says goes ``after_the_rest`` (the last request of a vendor session)
is sent only once every batch in flight has its answer; a batch that stopped the delivery
on the way means it is not sent at all.

Events a vendor does not deduplicate (``Capabilities.at_most_once``: Braze counts a custom
event sent twice twice): ``on_submitted`` records the batch as
:data:`SENDING`, right before the request leaves (a kit destination runs the mark from
``retry.DeliveryContext.sending``). Its checkpoint follows the answer; a run that died in
between leaves the mark without a checkpoint, and the resumed run does not send that batch
again: its rows count as delivered and the run says so in its warning
(:attr:`Outcome.note`). At most one copy of each event, rather than a duplicate; a batch in
flight whose request had not reached the vendor is the price (every batch in flight at a
crash is in doubt).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from undertow.destinations import capture, retry
from undertow.destinations.base import Batch, BatchResult, Destination, Job, RateLimit
from undertow.destinations.rate import (
    Interrupted,
    LocalBudget,
    RateBudget,
    WaitTooLong,
    budget_for,
    pause,
)
from undertow.destinations.retry import RetryPolicy
from undertow.errors import (
    FatalDeliveryError,
    InterruptedDelivery,
    RejectedBatchError,
    RetryableError,
    UndertowError,
)

__all__ = [
    "SENDING",
    "DeliveryReport",
    "Outcome",
    "Pacer",
    "RetryPolicy",
    "TokenBucket",
    "deliver",
    "send_with_retries",
]


class Pacer:
    """One place per batch in a rate budget (for destinations that do not pace requests)."""

    def __init__(self, budget: RateBudget | None, max_wait: float, destination: str) -> None:
        self.budget = budget
        self.max_wait = max_wait
        self.destination = destination

    async def acquire(self, stop: asyncio.Event) -> object:
        if self.budget is None:
            return None
        try:
            return await self.budget.acquire(stop=stop, max_wait=self.max_wait)
        except WaitTooLong as exc:
            raise retry.too_long(
                self.destination, exc.seconds, f"the rate budget ({exc.reason})", self.max_wait
            ) from None

    async def release(self, permit: object) -> None:
        if self.budget is not None and permit is not None:
            await self.budget.release(permit)  # type: ignore[arg-type]

    async def penalize(self, seconds: float) -> None:
        if self.budget is not None:
            await self.budget.penalize(seconds)


class TokenBucket(Pacer):
    """One unshared sliding-log budget for ``limit`` (kept for callers of the old name)."""

    def __init__(self, limit: RateLimit | None, max_wait: float = 900.0) -> None:
        budget = LocalBudget("unshared", [limit]) if limit is not None else None
        super().__init__(budget, max_wait, "destination")


def _budget(destination: Destination, limits: Sequence[RateLimit]) -> RateBudget | None:
    if destination.paces_requests or not limits:
        return None
    return budget_for(destination.account_key(), limits)


@dataclass
class Outcome:
    """How one batch ended: its result, the attempts it took, and whether it stops the run."""

    batch: Batch
    result: BatchResult
    attempts: int
    sent: bool
    error: UndertowError | None = None
    pending: bool = False
    """An asynchronous job was submitted for the batch and its result is not known (the run
    stopped, or the job outlived its timeout): no checkpoint; the next run polls the job."""
    note: str | None = None
    """Something the run's warning should say about this batch (a batch in doubt)."""


@dataclass
class DeliveryReport:
    stopped: UndertowError | None = None
    cancelled: bool = False


Submitted = Callable[[Batch, Job], None]

SENDING = "undertow:sending"
"""The job id of a mark "this batch is being sent" (events the vendor does not deduplicate)."""


def _once(action: Callable[[], None]) -> Callable[[], None]:
    """``action`` the first time only (a batch's retries share one mark)."""
    done: list[bool] = []

    def run() -> None:
        if not done:
            done.append(True)
            action()

    return run


def _in_doubt(destination: Destination, batch: Batch) -> Outcome:
    """A marked batch with no checkpoint: a run died after sending it, before its answer."""
    first = ", ".join(batch.keys[:3]) + (", ..." if len(batch) > 3 else "")
    note = (
        f"batch {batch.number} ({len(batch):,} row(s): {first}) was being sent to "
        f"{destination.instance_name!r} when an earlier attempt of this run died; its events "
        "are not sent again, since the vendor does not deduplicate events and would count "
        "them twice: they most likely arrived (the request had left), check them there"
    )
    return Outcome(batch, BatchResult(), 0, sent=False, note=note)


async def _through_job(
    destination: Destination,
    batch: Batch,
    jobs: dict[int, Job],
    on_submitted: Submitted | None,
    stop: asyncio.Event,
) -> BatchResult:
    """Submit (unless a job is recorded for the batch), record the job, poll to the end."""
    job = jobs.get(batch.number)
    if job is None:
        answer = await destination.submit_batch(batch)
        if isinstance(answer, BatchResult):
            return answer
        job = answer
        if on_submitted is not None:
            on_submitted(batch, job)  # in the state store before the first poll
        jobs[batch.number] = job
    started = asyncio.get_running_loop().time()
    while True:
        result = await destination.poll_job(job, batch)
        if result is not None:
            return result
        waited = asyncio.get_running_loop().time() - started
        if waited > destination.job_timeout:
            raise FatalDeliveryError(
                f"destination {destination.instance_name!r}: job {job.id} of batch "
                f"{batch.number} still running after {waited:,.0f} s",
                hint="the next run polls the same job again (it is not submitted twice)",
            )
        try:
            await pause(destination.poll_interval, stop)
        except Interrupted:
            raise InterruptedDelivery(
                f"stopped while job {job.id} of batch {batch.number} runs",
                hint="the next run polls the same job",
            ) from None


async def send_with_retries(
    destination: Destination,
    batch: Batch,
    pacer: Pacer,
    policy: RetryPolicy,
    stop: asyncio.Event,
    *,
    jobs: dict[int, Job] | None = None,
    on_submitted: Submitted | None = None,
) -> Outcome:
    jobs = jobs if jobs is not None else {}
    outcome, known = await _send(destination, batch, pacer, policy, stop, jobs, on_submitted)
    if not known and destination.async_jobs and batch.number in jobs:
        outcome.pending = True
    return outcome


async def _send(
    destination: Destination,
    batch: Batch,
    pacer: Pacer,
    policy: RetryPolicy,
    stop: asyncio.Event,
    jobs: dict[int, Job],
    on_submitted: Submitted | None,
) -> tuple[Outcome, bool]:
    """The batch's outcome, and whether its result is known (False on every error path)."""
    attempt = 0
    max_wait = pacer.max_wait
    mark: Callable[[], None] | None = None
    if destination.capabilities_for(batch.object).at_most_once:
        found = jobs.get(batch.number)
        if found is not None and found.id == SENDING:
            return _in_doubt(destination, batch), True
        if on_submitted is not None:
            mark = _once(lambda: on_submitted(batch, Job(SENDING, {"keys": len(batch)})))
    while True:
        attempt += 1
        try:
            permit = await pacer.acquire(stop)
        except Interrupted:
            return (
                _cancelled(batch, attempt - 1, "stopped while waiting for the rate limit"),
                False,
            )
        except FatalDeliveryError as exc:
            return (
                Outcome(batch, BatchResult.all_failed(len(batch), str(exc)), attempt, False, exc),
                False,
            )
        try:
            with (
                capture.context(
                    sync=batch.sync,
                    destination=destination.instance_name,
                    batch=batch.number,
                    operation=str(batch.operation),
                    keys=tuple(batch.keys),
                    attempt=attempt,
                ),
                retry.delivery(
                    policy=policy,
                    stop=stop,
                    max_wait=max_wait,
                    # in the state store before the first byte: a kit destination runs it
                    # right before its request, any other one now
                    before_send=mark if destination.paces_requests else None,
                ),
            ):
                if mark is not None and not destination.paces_requests:
                    mark()
                if destination.async_jobs:
                    result = await _through_job(destination, batch, jobs, on_submitted, stop)
                else:
                    result = await destination.write_batch(batch)
            return Outcome(batch, result, attempt, sent=True), True
        except RejectedBatchError as exc:
            return Outcome(
                batch, BatchResult.all_rejected(len(batch), str(exc)), attempt, True
            ), True
        except InterruptedDelivery as exc:
            return (_cancelled(batch, attempt, str(exc)), False)
        except RetryableError as exc:
            if attempt >= policy.max_attempts:
                failed = FatalDeliveryError(
                    f"batch {batch.number} of sync {batch.sync!r} still failing after "
                    f"{attempt} attempts: {exc}",
                    hint="the rows stay undelivered and the next run retries them",
                )
                return (
                    Outcome(
                        batch, BatchResult.all_failed(len(batch), str(exc)), attempt, True, failed
                    ),
                    False,
                )
            delay = policy.delay(attempt, exc.retry_after)
            if delay > max_wait:
                why = "the destination" if exc.retry_after else "the retry backoff"
                too_long = retry.too_long(destination.instance_name, delay, why, max_wait, str(exc))
                return (
                    Outcome(
                        batch, BatchResult.all_failed(len(batch), str(exc)), attempt, True, too_long
                    ),
                    False,
                )
            if exc.retry_after:
                await pacer.penalize(delay)  # every sync on the account waits too
            try:
                await pause(delay, stop)
            except Interrupted:
                return (_cancelled(batch, attempt, f"cancelled during retry: {exc}"), False)
        except FatalDeliveryError as exc:
            return (
                Outcome(batch, BatchResult.all_failed(len(batch), str(exc)), attempt, True, exc),
                False,
            )
        finally:
            await pacer.release(permit)


def _cancelled(batch: Batch, attempts: int, reason: str) -> Outcome:
    """Stopped while waiting: the batch stays undelivered, the run ends cancelled."""
    return Outcome(batch, BatchResult.all_failed(len(batch), reason), attempts, attempts > 0)


async def deliver(
    destination: Destination,
    batches: AsyncIterator[Batch],
    *,
    concurrency: int,
    rate_limit: RateLimit | None,
    on_outcome: Callable[[Outcome], Awaitable[None] | None],
    stop: asyncio.Event,
    policy: RetryPolicy | None = None,
    max_wait: float | None = None,
    rate_limits: Sequence[RateLimit] = (),
    jobs: dict[int, Job] | None = None,
    on_submitted: Submitted | None = None,
) -> DeliveryReport:
    """Send every batch from ``batches``; call ``on_outcome`` once per batch, in the loop.

    An exception from ``on_outcome`` (a checkpoint that cannot be written) or from the
    destination beyond the ``DeliveryError`` family stops the delivery like a fatal error,
    and is raised once the batches in flight have finished.
    """
    policy = policy or RetryPolicy()
    jobs = jobs if jobs is not None else {}
    if max_wait is None:
        max_wait = float(getattr(getattr(destination, "config", None), "max_wait", 900.0))
    limits = ((rate_limit,) if rate_limit else ()) + tuple(rate_limits)
    pacer = Pacer(_budget(destination, limits), max_wait, destination.instance_name)
    slots = asyncio.Semaphore(max(1, concurrency))
    report = DeliveryReport()
    tasks: set[asyncio.Task[None]] = set()
    crashed: list[BaseException] = []

    async def run_one(batch: Batch) -> None:
        try:
            outcome = await send_with_retries(
                destination, batch, pacer, policy, stop, jobs=jobs, on_submitted=on_submitted
            )
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
            if tasks and destination.after_the_rest(batch):
                # a session's last request: every earlier batch has its answer first
                await asyncio.gather(*list(tasks), return_exceptions=True)
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
