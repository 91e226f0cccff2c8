"""The spool of the sync logs: each checkpointed batch's outcome, appended to a file of the
private state folder as the run delivers (point 1 of :mod:`undertow.sync_logs`).

``sync_logs/<sync>/<run>.<attempt>.arrow``, Arrow IPC, flushed per batch *before* the batch's
checkpoint: a crash between them leaves a batch spooled twice, never one checkpointed and not
spooled. A resumed run adds a segment; :func:`read_spool` keeps the last outcome of a batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from undertow.redact import redact

if TYPE_CHECKING:
    from undertow.destinations.base import BatchResult
    from undertow.pipeline.record import Work
    from undertow.state.store import RunRecord
    from undertow.sync_logs import LiveChangelog

SPOOL_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("row_key", pa.string()),
        ("operation", pa.string()),
        ("status", pa.string()),
        ("message", pa.string()),
        ("batch_no", pa.int32()),
        ("at", pa.timestamp("us", tz="UTC")),
    ]
)


def spool_dir(state_dir: Path, sync: str) -> Path:
    digest = hashlib.sha1(sync.encode()).hexdigest()[:10]
    return state_dir / "sync_logs" / f"{re.sub(r'[^A-Za-z0-9_-]', '_', sync)[:40]}-{digest}"


class ChangelogSpool:
    """Appends each checkpointed batch's outcome to the run's spool (see the module doc)."""

    def __init__(self, folder: Path, run: RunRecord, live: LiveChangelog | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = folder / f"{run.id}.{run.attempt:04d}.arrow"
        self._sink = self.path.open("wb")
        self._writer = pa.ipc.new_stream(self._sink, SPOOL_SCHEMA)
        self.live = live
        """Also handed each batch, to write into the warehouse while the run delivers."""
        if live is not None:
            live.start(run, self.path)

    def add(self, work: Work, result: BatchResult | None) -> None:
        """Spool one checkpointed batch: the records sent (with their outcome) and those the
        mapping refused. Built from the batch's lists in C (no loop over records but the
        few refused ones)."""
        refused = bool(
            result is not None and (result.rejected or result.failed or result.not_found)
        )
        seqs, keys = list(work.seqs), list(work.keys)
        if refused or work.map_rejected:
            statuses: list[str] = ["succeeded"] * len(seqs)
            messages: list[str | None] = [None] * len(seqs)
            if result is not None:
                outcomes = (
                    ("rejected", result.rejected),
                    ("failed", result.failed),
                    ("skipped", result.not_found),  # an update's record the vendor lacks
                )
                for kind, items in outcomes:
                    for index, reason in items.items():
                        statuses[index] = kind
                        messages[index] = redact(reason)
            for seq, key, reason in work.map_rejected:
                seqs.append(seq)
                keys.append(key)
                statuses.append("rejected")
                messages.append(redact(reason))
            status_array = pa.array(statuses, pa.string())
            message_array = pa.array(messages, pa.string())
        else:  # the common case: every record accepted
            status_array = pa.repeat(pa.scalar("succeeded"), len(seqs))
            message_array = pa.nulls(len(seqs), pa.string())
        total = len(seqs)
        if not total:
            return
        now = pa.scalar(datetime.now(UTC), pa.timestamp("us", tz="UTC"))
        batch = pa.record_batch(
            [
                pa.array(seqs, pa.int64()),
                pa.array(keys, pa.string()),
                pa.repeat(pa.scalar(str(work.operation)), total),
                status_array,
                message_array,
                pa.repeat(pa.scalar(work.number, pa.int32()), total),
                pa.repeat(now, total),
            ],
            schema=SPOOL_SCHEMA,
        )
        self._writer.write_batch(batch)
        self._sink.flush()  # a kill -9 keeps every batch written so far
        if self.live is not None:
            self.live.add(batch)

    def close(self, done: set[int] | None = None) -> None:
        """The delivery is over; ``done``, the batches the state store checkpointed (None
        when the run lost its lock), lets the live writer commit now (:meth:`LiveChangelog.end`)."""
        with contextlib.suppress(Exception):
            self._writer.close()
        self._sink.close()
        if self.live is not None:
            self.live.end(done)


def read_spool(folder: Path, run_id: str, done: set[int]) -> pa.Table:
    """The run's outcomes from every segment, done batches only, the last spooling of each
    batch winning (a batch is spooled whole, once per time it was sent)."""
    latest: dict[int, pa.RecordBatch] = {}
    for path in sorted(folder.glob(f"{run_id}.*.arrow")):
        with path.open("rb") as source, contextlib.suppress(pa.ArrowInvalid, OSError):
            for batch in pa.ipc.open_stream(source):  # a torn last message: keep the rest
                if batch.num_rows:
                    number = batch.column("batch_no")[0].as_py()
                    if number in done:
                        latest[number] = batch
    if not latest:
        return SPOOL_SCHEMA.empty_table()
    return pa.Table.from_batches([latest[n] for n in sorted(latest)], schema=SPOOL_SCHEMA)
