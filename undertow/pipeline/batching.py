"""map, batch by batch: the run's change set read back from the diff engine in chunks,
mapped to payloads and cut into the batches the plan numbered.

Each batch is one :class:`~undertow.pipeline.record.Work` (what the recorder checkpoints:
its row sequences, keys and the rows the mapping refused) and, unless the mapping refused
every row of it, one :class:`~undertow.destinations.base.Batch` to deliver. A batch's
idempotency key is ``<run id>-<batch number>``: a batch sent again after a crash carries the
key it had the first time.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import TYPE_CHECKING

from undertow.destinations.base import Batch
from undertow.pipeline.diff import DiffEngine
from undertow.pipeline.map import CompiledMapping
from undertow.pipeline.record import Work
from undertow.state.store import RunRecord

if TYPE_CHECKING:
    from undertow.pipeline.context import SyncContext

__all__ = ["works"]

_INTERNAL = ["_ut_seq", "_ut_batch", "_ut_key", "_ut_op", "_ut_kind"]
"""The diff engine's bookkeeping columns of a chunk: never mapped."""


def works(
    ctx: SyncContext,
    run: RunRecord,
    engine: DiffEngine,
    mapping: CompiledMapping,
    skip: set[int],
    sequences: dict[int, tuple[int, int]] | None = None,
) -> Iterator[tuple[Work, Batch | None]]:
    """Every batch of ``run`` not in ``skip`` (checkpointed already), in batch order."""
    sequences = sequences or {}
    for chunk in engine.chunks(run.id, skip=skip):
        frame = chunk.frame
        mapped = mapping.map(frame.drop(_INTERNAL))
        seqs = frame.get_column("_ut_seq").to_list()
        keys = frame.get_column("_ut_key").to_list()
        # rows arrive in batch order, so each batch is one contiguous slice of the chunk
        sizes = frame.get_column("_ut_batch").rle().struct.field("len").to_list()
        index = mapped.index
        whole = len(index) == frame.height  # no row refused by the mapping: index == range
        rejected = sorted(mapped.rejected)
        start = lo = r = 0
        for (number, op), size in zip(chunk.batches, sizes, strict=True):
            end = start + size
            hi = end if whole else bisect.bisect_left(index, end, lo)
            work = Work(
                number=number,
                operation=op,
                size=size,
                seqs=seqs[start:end] if whole else [seqs[p] for p in index[lo:hi]],
                keys=keys[start:end] if whole else [keys[p] for p in index[lo:hi]],
            )
            while r < len(rejected) and rejected[r][0] < end:
                pos, reason = rejected[r]
                work.map_rejected.append((seqs[pos], keys[pos], reason))
                r += 1
            batch = None
            if work.seqs:
                batch = Batch(
                    sync=ctx.name,
                    operation=op,
                    number=number,
                    idempotency_key=f"{run.id}-{number}",
                    keys=work.keys,
                    payloads=mapped.payloads[lo:hi],
                    identifiers={f: v[lo:hi] for f, v in mapped.identifiers.items()},
                    object=ctx.sync.object,
                    run_id=run.id,
                    full=run.full_resync,
                    sequence=sequences.get(number),
                )
            start, lo = end, hi
            yield work, batch
