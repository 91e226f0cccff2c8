"""The run: the only module that knows the order of the six stages.

    extract -> diff -> plan -> map -> deliver -> record

The stages live in their own modules (``extract.py`` with the diff's build, ``batching.py``
mapping the change set batch by batch, ``deliver.py``, ``record.py``, ``verdict.py`` for how
a delivered run ends); :class:`SyncRun` calls them in order and moves the run's status.
What a run is given (:class:`SyncContext`, :func:`compile_for`) is in ``context.py``.

A run is a state machine persisted in the state store::

    pending -> extracting -> diffing -> delivering -> succeeded | failed | cancelled

A run that dies (kill -9, power loss) is resumed by the next run of its sync: if it had
reached ``delivering``, its change set is still in the diff file and the batches without a
checkpoint are sent (those in flight at the crash may be sent twice, with the same
idempotency key); if not, it starts again from extract under the same run id.

A run installs no signal handler: its owner sets its :class:`~undertow.pipeline.halt.Halt`
(see that module). Halted before delivery, it ends ``cancelled`` (nothing was sent);
during delivery it stops after the batches in flight, which are checkpointed, and ends
``cancelled`` — or, for a worker's shutdown (``halt.handback``), stays ``delivering`` so
that another worker resumes it from its checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from undertow.destinations import capture
from undertow.destinations.base import Batch, RunEnd
from undertow.errors import (
    LockLostError,
    PlanError,
    StageCrash,
    StateError,
    UndertowError,
    crash_message,
    is_crash,
)
from undertow.gcpolicy import batch_collection
from undertow.pipeline import share
from undertow.pipeline.batching import Ahead, works
from undertow.pipeline.context import NullReporter, Reporter, SyncContext, compile_for
from undertow.pipeline.deliver import DeliveryReport, Outcome, deliver
from undertow.pipeline.diff import DiffEngine, DiffSpec
from undertow.pipeline.diff.contract import batch_groups, batch_sequences
from undertow.pipeline.engines import make_engine
from undertow.pipeline.extract import extract_and_diff, projected_sql
from undertow.pipeline.halt import POLL_SECONDS, Halt, LockHeartbeat
from undertow.pipeline.map import CompiledMapping
from undertow.pipeline.map.limits import TemplateCancelled
from undertow.pipeline.plan import Plan
from undertow.pipeline.record import CheckpointWriter, Recorder, Work
from undertow.pipeline.share import Sharing
from undertow.pipeline.verdict import judge_rejections
from undertow.state.store import Lock, RunRecord, RunStatus, StateStore

if TYPE_CHECKING:
    from undertow.sync_logs import LiveChangelog

__all__ = [
    "NullReporter",
    "Reporter",
    "SyncContext",
    "SyncRun",
    "compile_for",
    "projected_sql",
]

HEARTBEAT_SECONDS = 15.0


class SyncRun:
    """Runs one sync once: resumes an unfinished run or starts a new one."""

    def __init__(
        self,
        ctx: SyncContext,
        store: StateStore,
        reporter: Reporter | None = None,
        *,
        trigger: str = "manual",
        allow_deletes: bool = False,
        only_keys: Collection[str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.store = store
        self.reporter: Reporter = reporter or NullReporter()
        self.trigger = trigger
        self.stop = asyncio.Event()
        self.halt = Halt()
        """Set by the process's owner (a signal, a shutdown) or another thread: stop after the
        batches in flight (see :mod:`undertow.pipeline.halt`)."""
        self.allow_deletes = allow_deletes
        """Skip the sync's max_deletes / max_delete_ratio for this run (``--allow-deletes``)."""
        self.only_keys = only_keys
        """Plan only these row keys (``undertow retry``); None plans every change."""
        self.open_keys: set[str] = set()
        """Keys of rows whose latest outcome was rejected or failed, when the run started."""
        self.changelog_dir: Path | None = None
        """Set (``sync_logs:``): each batch's outcome is spooled here for the sync logs."""
        self.changelog_live: LiveChangelog | None = None
        """Set with ``changelog_dir``: writes the spooled outcomes into the warehouse while
        the run delivers (:mod:`undertow.sync_logs`)."""
        self.heartbeat_seconds = HEARTBEAT_SECONDS
        self.lock_ttl: timedelta | None = None
        """How long the lock outlives a silent holder (None: the store's ``LOCK_TTL``)."""
        self.worker: str | None = None
        """The worker running this (shown with the lock by ``undertow status``)."""
        self.lock: Lock | None = None
        self.sharing: Sharing | None = None
        """Set for a worker's run with ``executor.delivery_workers`` > 1: its delivery is
        shared with other workers (``pipeline/share.py``)."""

    def execute(self, *, full: bool = False) -> RunRecord:
        ctx = self.ctx
        plan = ctx.plan(full=full)  # fails before anything is sent or locked
        batch_size = ctx.batch_size()
        lock = self.store.acquire_lock(ctx.name, ttl=self.lock_ttl, worker=self.worker)
        self.lock = lock
        try:
            # batches of records live for seconds: the collector walks them less often
            with (
                LockHeartbeat(lock.heartbeat, self.halt, self.heartbeat_seconds),
                batch_collection(),
            ):
                return self._execute_locked(plan, batch_size, full)
        finally:
            lock.release()

    def _update(self, run: RunRecord, **changes: Any) -> None:
        """``store.update_run``, fenced by the run's lock (nothing written once it is lost)."""
        self.store.update_run(run, fence=self.lock, **changes)

    def _execute_locked(self, plan: Plan, batch_size: int, full: bool) -> RunRecord:
        ctx = self.ctx
        run = self.store.unfinished_run(ctx.name)
        if run is not None and self.only_keys is not None:
            raise PlanError(
                f"sync {ctx.name!r} has an unfinished run {run.id} ({run.status}); a retry "
                "would leave it behind",
                hint=f"finish it first with `undertow run {ctx.name}`, then retry",
            )
        self.open_keys = self.store.open_row_keys(ctx.name)
        resumed = run is not None
        if run is None:
            run = self.store.create_run(ctx.name, full=full, trigger=self.trigger)
        else:
            self.reporter.note(ctx.name, f"resuming run {run.id} (was {run.status})")
            plan = ctx.plan(full=run.full_resync)
            full = run.full_resync
        engine: DiffEngine | None = None
        try:
            engine = make_engine(ctx, note=lambda text: self.reporter.note(ctx.name, text))
            engine.discard_all_plans(keep=run.id)
            mapping, spec = compile_for(ctx)
            if resumed and run.status == RunStatus.DELIVERING and not engine.has_plan(run.id):
                # its checkpoints refer to a change set that is gone (the diff file was
                # deleted): close it and start afresh; the snapshot still holds only
                # accepted rows, so nothing is lost
                self._update(
                    run,
                    status=RunStatus.FAILED,
                    error="its change set was lost (diff file removed); superseded by a new run",
                )
                run = self.store.create_run(ctx.name, full=full, trigger=self.trigger)
                resumed = False
            if resumed and run.status == RunStatus.DELIVERING:
                # its counters as they are in the store: workers sharing its delivery may
                # still be adding to them
                self._update(run, bump_attempt=True, keep_counts=True)
                batch_size = run.batch_size or batch_size
            else:
                if resumed:
                    self._update(run, bump_attempt=True)
                self._extract_and_diff(run, engine, spec, plan, batch_size)
            return self._deliver_and_record(run, engine, mapping, spec, batch_size)
        except KeyboardInterrupt:
            # interrupted outside delivery (delivery stops gracefully by itself). Before
            # delivering nothing was sent: the run ends cancelled. Once delivering it stays
            # unfinished, so the next run resumes it and folds its checkpoints.
            if run.status == RunStatus.DELIVERING:
                raise
            return self._cancel(run)
        except LockLostError:
            self.halt.request("its lock was taken over", lock_lost=True)
            raise  # another process resumes the run: write nothing more
        except StateError as exc:
            if run.status == RunStatus.DELIVERING:
                # the store failed mid-delivery: its checkpoints may not be folded into the
                # snapshot yet, so the run must not end here; the next run resumes it
                raise
            self._update(run, status=RunStatus.FAILED, error=str(exc))
            return run
        except UndertowError as exc:
            if self.halt.is_set() and run.status != RunStatus.DELIVERING:
                return self._cancel(run)  # the interrupted stream surfaced as a source error
            self._update(run, status=RunStatus.FAILED, error=str(exc))
            return run
        except BaseException as exc:
            if not is_crash(exc):
                raise  # a process exit (or a simulated kill): resumed by the next run
            if self.halt.is_set() and run.status != RunStatus.DELIVERING:
                return self._cancel(run)
            # A bug, a driver error or a panic in a native library (a pyo3 PanicException is
            # a BaseException): the run ends failed, its change set is dropped, so the next
            # run starts afresh instead of resuming into the same crash. The checkpoints of
            # the batches accepted before it were folded by _deliver_and_record already.
            self._update(run, status=RunStatus.FAILED, error=crash_message(exc))
            if engine is not None:
                with contextlib.suppress(Exception):
                    engine.discard(run.id)
            raise StageCrash(crash_message(exc)) from exc
        finally:
            if engine is not None:
                engine.close()

    def _cancel(self, run: RunRecord) -> RunRecord:
        why = self.halt.reason or "interrupted"
        if self.halt.handback:
            # a worker's shutdown: leave the run unfinished; the next worker starts it again
            # from extract under the same id (nothing was sent)
            run.error = f"handed back while {run.status} ({why}); nothing was sent"
            self._update(run)
            return run
        self._update(
            run,
            status=RunStatus.CANCELLED,
            error=f"cancelled while {run.status} ({why}): nothing was sent; the next run "
            "starts again",
        )
        return run

    # -- extract + diff + plan (pipeline/extract.py) -----------------------------------------

    def _extract_and_diff(
        self, run: RunRecord, engine: DiffEngine, spec: DiffSpec, plan: Plan, batch_size: int
    ) -> None:
        extract_and_diff(self, run, engine, spec, plan, batch_size)

    # -- map + deliver + record -------------------------------------------------------------

    def _works(
        self,
        run: RunRecord,
        engine: DiffEngine,
        mapping: CompiledMapping,
        skip: set[int],
        sequences: dict[int, tuple[int, int]] | None = None,
    ) -> Iterator[tuple[Work, Batch | None]]:
        """The run's batches not in ``skip``, mapped (:func:`~undertow.pipeline.batching.works`)."""
        return works(self.ctx, run, engine, mapping, skip, sequences)

    def _deliver_and_record(
        self,
        run: RunRecord,
        engine: DiffEngine,
        mapping: CompiledMapping,
        spec: DiffSpec,
        batch_size: int,
    ) -> RunRecord:
        ctx = self.ctx
        sharing = share.resumed(self, run)  # a run that shared its delivery goes on so
        if sharing is None and self.sharing is not None:
            why = share.refusal(ctx, self)
            sharing = self.sharing if why is None else None
            if why is not None:
                self.reporter.note(ctx.name, f"delivering alone: {why}")
        if sharing is not None:
            return share.deliver_shared(self, run, engine, mapping, spec, sharing)
        done = self.store.done_batches(run.id)
        spool = None
        if self.changelog_dir is not None:
            from undertow.sync_logs import ChangelogSpool

            spool = ChangelogSpool(self.changelog_dir, run, live=self.changelog_live)
        recorder = Recorder(
            self.store, run, open_keys=self.open_keys, changelog=spool, fence=self.lock
        )
        remaining = run.counts.get("planned", 0)
        self.reporter.stage(ctx.name, "deliver", total=remaining)
        error: UndertowError | None = None
        cancelled = False
        try:
            plan = ctx.plan(full=run.full_resync)
            sequences = batch_sequences(batch_groups(plan, run.counts, batch_size))
            report = asyncio.run(self._deliver(run, engine, mapping, done, recorder, sequences))
            error = report.stopped
            cancelled = report.cancelled
        except LockLostError:
            self.halt.request("its lock was taken over", lock_lost=True)
            raise
        finally:
            if not self.halt.lock_lost:  # else the new holder folds, from the same checkpoints
                done = self.store.done_batches(run.id)
            if spool is not None:  # the sync logs may commit now, while the run folds
                spool.close(None if self.halt.lock_lost else done)
            if not self.halt.lock_lost:
                self.reporter.stage(ctx.name, "record")
                engine.fold(run.id, spec, done, self.store.not_accepted_seqs(run.id))
        return self._conclude(run, engine, recorder, done, error=error, cancelled=cancelled)

    def _conclude(
        self,
        run: RunRecord,
        engine: DiffEngine,
        recorder: Recorder,
        done: set[int],
        *,
        error: UndertowError | None,
        cancelled: bool,
    ) -> RunRecord:
        """End the run after its delivery (its checkpoints folded): succeeded, failed,
        cancelled, or left unfinished for a vendor job or a worker's shutdown."""
        complete = len(done) >= (run.total_batches or 0)
        warning: str | None = None
        pending = recorder.pending_jobs(done)
        if pending and (error is not None or cancelled):
            # a vendor job runs on: the run stays unfinished, so the next run resumes it and
            # polls the job instead of submitting its batch again (its plan is kept)
            why = str(error) if error is not None else "stopped"
            self._update(
                run,
                error=f"{why}; batch(es) {', '.join(map(str, pending))} still running at the "
                "vendor as submitted jobs: the next run resumes this run and polls them",
            )
            return run
        if self.halt.handback and (cancelled or not complete) and error is None:
            # a worker's shutdown: the run stays delivering with its change set, and the
            # worker queues it again; whoever resumes it sends only what has no checkpoint
            run.error = f"handed back ({self.halt.reason}): {len(done)} of "
            run.error += f"{run.total_batches or 0} batches done"
            self._update(run)
            return run
        if error is not None:
            status = RunStatus.FAILED
            message: str | None = str(error)
        elif cancelled or not complete:
            status = RunStatus.CANCELLED
            message = "cancelled: batches sent so far are recorded; the next run sends the rest"
        elif run.counts.get("failed", 0):
            status = RunStatus.FAILED
            message = (
                f"{run.counts['failed']} row(s) could not be delivered (transient failures); "
                "the next run retries them"
            )
        else:
            status, message, warning = judge_rejections(run, self.ctx.sync.max_rejected_ratio)
        if self.ctx.destination.finishes_runs:
            try:
                asyncio.run(self._finish(run, status))
            except UndertowError as exc:
                status = RunStatus.FAILED
                message = f"{message}; {exc}" if message else str(exc)
        self._update(run, status=status, error=message, warning=recorder.warning(warning))
        engine.discard(run.id)
        return run

    async def _finish(self, run: RunRecord, status: RunStatus) -> None:
        """The destination's end-of-run work (files and their manifest, a digest), once
        every batch is recorded; a kill -9 during it leaves the run delivering, so the
        resumed run calls it again."""
        ctx = self.ctx
        end = RunEnd(ctx.name, run.id, str(status), dict(run.counts), ctx.sync.object)
        await ctx.destination.open()
        try:
            with capture.context(run_id=run.id):
                await ctx.destination.finish_run(end)
        finally:
            await ctx.destination.close()

    async def _deliver(
        self,
        run: RunRecord,
        engine: DiffEngine,
        mapping: CompiledMapping,
        done: set[int],
        recorder: Recorder,
        sequences: dict[int, tuple[int, int]] | None = None,
    ) -> DeliveryReport:
        ctx = self.ctx
        works: dict[int, Work] = {}
        mapping.cancel = self.halt  # Ctrl-C / SIGTERM stop a template rendering in the thread
        writer = CheckpointWriter(recorder)  # off the event loop; a batch keeps its slot

        async def batches() -> AsyncIterator[Batch]:
            if self.stop.is_set() or self.halt.is_set():
                return
            try:
                async for work, batch in source:
                    if batch is None:
                        await writer.checkpoint(work, None, 0)
                        self.reporter.advance(ctx.name, work.size)
                    else:
                        works[work.number] = work
                        yield batch
                    if self.stop.is_set() or self.halt.is_set():
                        return
            except TemplateCancelled:  # Ctrl-C while mapping: no more batches
                return

        async def on_outcome(outcome: Outcome) -> None:
            work = works.pop(outcome.batch.number)
            if outcome.pending:
                return  # its job runs on at the vendor: no checkpoint, the next run polls it
            # until its checkpoint is written, the batch holds its slot in the deliver stage
            await writer.checkpoint(work, outcome.result, outcome.attempts, outcome.note)
            self.reporter.advance(ctx.name, work.size)

        async def watch() -> None:
            while not self.halt.is_set():
                await asyncio.sleep(POLL_SECONDS)
            self.stop.set()

        watcher = asyncio.create_task(watch())
        await ctx.destination.open()
        # mapped in a thread of its own, ahead of the sending (batching.Ahead)
        source = Ahead(self._works(run, engine, mapping, done, sequences))
        try:
            with (
                capture.context(run_id=run.id),
                self.halt.delivery(),
            ):  # the debugger files each request by run
                return await deliver(
                    ctx.destination,
                    batches(),
                    concurrency=ctx.caps.max_concurrency,
                    rate_limit=ctx.caps.rate_limit,
                    rate_limits=ctx.caps.rate_limits,
                    on_outcome=on_outcome,
                    stop=self.stop,
                    policy=ctx.retry,
                    jobs=recorder.submitted_jobs(),
                    on_submitted=recorder.submitted,
                )
        finally:
            watcher.cancel()
            try:
                await source.close()  # nothing reads the diff engine once this returns
                await writer.drain()
            finally:
                writer.close()
                await ctx.destination.close()
