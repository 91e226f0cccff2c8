"""map, batch by batch: the run's change set read back from the diff engine in chunks,
mapped to payloads and cut into the batches the plan numbered.

Each batch is one :class:`~undertow.pipeline.record.Work` (what the recorder checkpoints:
its row sequences, keys and the rows the mapping refused) and, unless the mapping refused
every row of it, one :class:`~undertow.destinations.base.Batch` to deliver. A batch's
idempotency key is ``<run id>-<batch number>``: a batch sent again after a crash carries the
key it had the first time.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import contextvars
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from undertow.destinations.base import Batch
from undertow.pipeline.diff import DiffEngine
from undertow.pipeline.map import CompiledMapping
from undertow.pipeline.record import Work
from undertow.state.store import RunRecord

if TYPE_CHECKING:
    from undertow.pipeline.context import SyncContext

__all__ = ["Ahead", "works"]

T = TypeVar("T")

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


AHEAD = 128
"""How many mapped batches the worker thread may hold ready before delivery takes them (two
chunks of the diff engine's 64: the next chunk is read and mapped while one is sent)."""

_END = object()


class Ahead(Generic[T]):
    """Runs a blocking iterator in a thread of its own, up to ``limit`` items ahead of the
    event loop that consumes them (``async for``).

    Mapping the next chunk of the change set (DuckDB and Polars, which release the GIL) then
    goes on while the batches before it are sent, instead of the loop waiting for it at every
    chunk. An exception of the iterator is raised by the ``async for``; :meth:`close` (always
    call it) stops the thread after the item it is on and waits for it, so that nothing reads
    the diff engine's connection once it returns.
    """

    def __init__(self, source: Iterator[T], *, limit: int = AHEAD) -> None:
        self._source = source
        self._room = threading.Semaphore(limit)
        self._stopping = threading.Event()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # the run's capture context, as to_thread did
        self._thread = threading.Thread(
            target=context.run, args=(self._produce,), name="undertow-map", daemon=True
        )
        self._thread.start()

    def _put(self, item: object) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _produce(self) -> None:
        try:
            for item in self._source:
                while not self._room.acquire(timeout=0.1):
                    if self._stopping.is_set():
                        return
                if self._stopping.is_set():
                    return
                self._put(item)
        except BaseException as exc:  # raised again by the consumer
            self._put(_Failed(exc))
        finally:
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                self._put(_END)

    def __aiter__(self) -> Ahead[T]:
        return self

    async def __anext__(self) -> T:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # every later call ends too
            raise StopAsyncIteration
        if isinstance(item, _Failed):
            self._queue.put_nowait(_END)
            raise item.exc
        self._room.release()
        return item  # type: ignore[return-value]

    async def close(self) -> None:
        self._stopping.set()
        await asyncio.to_thread(self._thread.join)


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
