"""record: after every batch, checkpoint it; at the end, fold what was accepted.

A checkpoint is one state-store transaction: the batch's row, its rejected and failed rows
with their reasons, the rows' failure history (``undertow_row_status``: opened or bumped
for a rejected or failed row, resolved when an open row is accepted), and the run's
counters. The checkpoints are the truth about what the
destination accepted; the snapshot is folded from them (``DiffEngine.fold``), which can be
replayed safely. So the snapshot only ever holds accepted rows, and a run that dies keeps
every checkpoint it wrote.

For an asynchronous job API the record side also keeps "batch N was submitted as job J"
(:meth:`Recorder.submitted`, before the first poll) and hands a resumed run its jobs
(:meth:`Recorder.submitted_jobs`), which it polls rather than submitting again. The same
table keeps the "being sent" marks of events a vendor does not deduplicate
(``pipeline/deliver.py``), which are not jobs to wait for (:meth:`Recorder.pending_jobs`).

A record the destination reports as not found (``BatchResult.not_found``) is read for its
operation (:func:`settle_not_found`): an ``update``'s row is *skipped*, a row error of kind
``skipped`` that opens no failure and is folded into the snapshot like an accepted row, so
it is not sent again until it changes, and it never counts as rejected (nor toward
``max_rejected_ratio``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa

from undertow.destinations.base import Batch, BatchResult, Job, Operation
from undertow.pipeline.deliver import SENDING
from undertow.state.store import Checkpoint, Lock, RowError, RunRecord, StateStore

if TYPE_CHECKING:
    from undertow.sync_logs import ChangelogSpool


SKIPPED = "skipped"
"""The row error kind (and run counter) of an update whose record the destination lacks."""


def settle_not_found(result: BatchResult, operation: Operation) -> BatchResult:
    """``result`` with its ``not_found`` records read for ``operation``: kept (skipped) for
    an update, accepted for a delete or remove (the record is gone already), rejected for
    any other operation (an upsert or insert names no record that must exist)."""
    if not result.not_found or operation is Operation.UPDATE:
        return result
    settled = BatchResult(rejected=dict(result.rejected), failed=dict(result.failed))
    if operation not in (Operation.DELETE, Operation.REMOVE):
        for index, reason in result.not_found.items():
            settled.rejected.setdefault(index, reason)
    return settled


@dataclass
class Work:
    """One planned batch after mapping: what to send, and which rows mapping refused."""

    number: int
    operation: Operation
    size: int
    seqs: list[int]
    """Sequence numbers of the rows sent, aligned with the batch's payloads."""
    keys: list[str]
    map_rejected: list[tuple[int, str, str]] = field(default_factory=list)
    """(seq, key, reason) of rows that could not be mapped: rejected, not sent."""


Finished = tuple[Work, BatchResult | None, int, str | None]
"""A batch to checkpoint: its work, its result (None: mapping refused every row), the
attempts it took and a note for the run's warning."""


class Recorder:
    def __init__(
        self,
        store: StateStore,
        run: RunRecord,
        *,
        open_keys: set[str] | None = None,
        changelog: ChangelogSpool | None = None,
        fence: Lock | None = None,
        fence_with: Callable[[sa.Connection], None] | None = None,
    ) -> None:
        self.store = store
        self.run = run
        self.changelog = changelog
        """Where each batch's outcome is spooled for the sync logs (``sync_logs:``), first."""
        self.fence = fence
        """The run's lock: a checkpoint is written only while the run holds it."""
        self.fence_with = fence_with
        """A shared delivery's part lease (``pipeline/share.py``): a checkpoint is written only
        while this worker holds the part, and adds to the run's counters in the store (other
        workers checkpoint the same run at the same time) instead of writing them."""
        self.notes: list[str] = []
        """What the run's warning says about its batches (a batch in doubt)."""
        self.open_keys = open_keys or set()
        """Rows with an open failure (``undertow_row_status``): accepted now, they resolve."""

    def submitted(self, batch: Batch, job: Job) -> None:
        """An asynchronous API accepted the batch as ``job``: recorded before any poll, so a
        run resumed after a crash polls the job instead of submitting the batch again."""
        self.store.record_job(self.run.id, batch.number, job.id, job.data)

    def submitted_jobs(self) -> dict[int, Job]:
        """The jobs this run submitted so far (a resumed run polls them)."""
        return {n: Job(r.job_id, r.data) for n, r in self.store.jobs(self.run.id).items()}

    def pending_jobs(self, done: set[int]) -> list[int]:
        """Batches whose vendor job runs on (submitted, no checkpoint), marks left out."""
        jobs = self.store.jobs(self.run.id)
        return sorted(n for n, r in jobs.items() if n not in done and r.job_id != SENDING)

    def warning(self, warning: str | None) -> str | None:
        """The run's warning with what it must say about its batches added."""
        return "; ".join([w for w in [warning, *self.notes] if w]) or None

    def checkpoint(
        self, work: Work, result: BatchResult | None, attempts: int, note: str | None = None
    ) -> None:
        """Checkpoint one batch (one state-store transaction)."""
        self.checkpoint_many([(work, result, attempts, note)])

    def checkpoint_many(self, items: Sequence[Finished]) -> None:
        """Checkpoint several batches in one state-store transaction: all or none."""
        done: list[Checkpoint] = []
        total: dict[str, int] = {}
        for work, result, attempts, note in items:
            if note:
                self.notes.append(note)
            one, delta = self._checkpoint_of(work, result, attempts)
            done.append(one)
            for key, value in delta.items():
                total[key] = total.get(key, 0) + value
            if self.changelog is not None:  # before the checkpoint: a crash between them is a
                self.changelog.add(work, result)  # batch spooled twice, never one not spooled
        for key, value in total.items():
            self.run.counts[key] = self.run.counts.get(key, 0) + value
        self.store.checkpoints(
            self.run,
            done,
            fence=self.fence,
            fence_with=self.fence_with,
            add_counts=total if self.fence_with is not None else None,
        )

    def _checkpoint_of(
        self, work: Work, result: BatchResult | None, attempts: int
    ) -> tuple[Checkpoint, dict[str, int]]:
        """The checkpoint of one batch and what it adds to the run's counters."""
        errors = [
            RowError(
                run_id=self.run.id,
                sync=self.run.sync,
                row_key=key,
                kind="rejected",
                reason=reason,
                created_at=self.run.updated_at,
                batch_no=work.number,
                seq=seq,
                operation=str(work.operation),
            )
            for seq, key, reason in work.map_rejected
        ]
        sent = len(work.seqs)
        accepted = 0
        resolved: list[str] = []
        if result is not None:
            result = settle_not_found(result, work.operation)
            accepted = result.accepted(sent)
            if self.open_keys:
                refused = result.rejected.keys() | result.failed.keys()
                resolved = [
                    key
                    for index, key in enumerate(work.keys)
                    if key in self.open_keys and index not in refused
                ]
            outcomes = (
                ("rejected", result.rejected),
                ("failed", result.failed),
                (SKIPPED, result.not_found),
            )
            for kind, items in outcomes:
                for index, reason in items.items():
                    if kind == SKIPPED:
                        reason = f"not found in the destination, so not updated: {reason}"
                    errors.append(
                        RowError(
                            run_id=self.run.id,
                            sync=self.run.sync,
                            row_key=work.keys[index],
                            kind=kind,
                            reason=reason,
                            created_at=self.run.updated_at,
                            batch_no=work.number,
                            seq=work.seqs[index],
                            operation=str(work.operation),
                        )
                    )
        delta = {
            "sent": sent,
            "succeeded": accepted,
            "rejected": len(work.map_rejected) + (len(result.rejected) if result else 0),
            "failed": len(result.failed) if result else 0,
            SKIPPED: len(result.not_found) if result else 0,
        }
        one = Checkpoint(
            batch_no=work.number,
            operation=str(work.operation),
            size=work.size,
            sent=sent,
            accepted=accepted,
            errors=errors,
            attempts=attempts,
            resolved_keys=resolved,
        )
        return one, delta


class CheckpointWriter:
    """Checkpoints written off the event loop, several in one transaction when they queue.

    ``await writer.checkpoint(...)`` returns once the batch's checkpoint is in the state
    store (or raises what the store raised). The deliver stage holds a batch's slot until
    then, so no more batches than its concurrency are ever sent without a checkpoint: a
    kill -9 loses no more than before. While one transaction is being written in the
    writer's thread the event loop goes on sending, and the batches that finish meanwhile
    share the next transaction (one fence, one counters update for all of them).
    """

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self._waiting: list[tuple[Finished, asyncio.Future[None]]] = []
        self._writing: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="undertow-checkpoint")

    async def checkpoint(
        self, work: Work, result: BatchResult | None, attempts: int, note: str | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        written: asyncio.Future[None] = loop.create_future()
        self._waiting.append(((work, result, attempts, note), written))
        if self._writing is None:
            self._writing = loop.create_task(self._write(loop))
        await asyncio.shield(written)  # a cancelled sender does not undo its checkpoint

    async def _write(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                try:
                    await loop.run_in_executor(
                        self._thread, self.recorder.checkpoint_many, [item for item, _ in group]
                    )
                except BaseException as exc:
                    for _, written in group:
                        if not written.done():
                            written.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for _, written in group:
                        if not written.done():
                            written.set_result(None)
        finally:
            self._writing = None

    async def drain(self) -> None:
        """Wait until every checkpoint handed over so far is written (or has failed)."""
        while self._writing is not None:
            await asyncio.wait([self._writing])

    def close(self) -> None:
        self._thread.shutdown(wait=True)
