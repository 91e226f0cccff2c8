"""The checkpoint writer: checkpoints off the event loop, the ones that queue up while a
transaction is written share the next one, and a failed transaction fails every batch of
it (none is recorded); the deliver stage keeps a batch's slot until its checkpoint is in."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.memory import MemoryConfig, MemoryDestination
from undertow.errors import StateError
from undertow.pipeline.deliver import Outcome, deliver
from undertow.pipeline.record import CheckpointWriter, Recorder, Work
from undertow.state.store import Checkpoint, RunRecord, StateStore

pytestmark = pytest.mark.unit


class SlowStore(StateStore):
    """A real SQLite store whose transactions wait for ``gate`` (one at a time)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gate = threading.Event()
        self.gate.set()
        self.groups: list[list[int]] = []
        self.fail = False

    def checkpoints(self, run: RunRecord, done: Sequence[Checkpoint], **kwargs: Any) -> None:
        self.gate.wait(10)
        self.groups.append([c.batch_no for c in done])
        if self.fail:
            raise StateError("the state store failed: disk full")
        super().checkpoints(run, done, **kwargs)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SlowStore]:
    s = SlowStore(f"sqlite:///{tmp_path / 'state.db'}")
    yield s
    s.close()


def work(number: int, size: int = 10) -> Work:
    seqs = list(range(number * size, (number + 1) * size))
    return Work(number, Operation.UPSERT, size, seqs, [str(s) for s in seqs])


def test_checkpoints_that_queue_up_share_one_transaction(store: SlowStore) -> None:
    run = store.create_run("s")
    writer = CheckpointWriter(Recorder(store, run))

    async def main() -> None:
        store.gate.clear()  # the first transaction waits: the next four queue behind it
        first = asyncio.ensure_future(writer.checkpoint(work(0), BatchResult(), 1))
        await asyncio.sleep(0.05)
        rest = [
            asyncio.ensure_future(writer.checkpoint(work(n), BatchResult(), 1))
            for n in (1, 2, 3, 4)
        ]
        await asyncio.sleep(0.05)
        assert not first.done() and not any(t.done() for t in rest)
        store.gate.set()
        await asyncio.gather(first, *rest)

    try:
        asyncio.run(main())
    finally:
        writer.close()
    assert store.groups == [[0], [1, 2, 3, 4]]
    assert store.done_batches(run.id) == {0, 1, 2, 3, 4}
    stored = store.get_run(run.id)
    assert stored is not None and (stored.counts["sent"], stored.counts["succeeded"]) == (50, 50)


def test_a_failed_transaction_fails_each_of_its_batches_and_records_none(
    store: SlowStore,
) -> None:
    run = store.create_run("s")
    writer = CheckpointWriter(Recorder(store, run))

    async def main() -> list[BaseException | None]:
        store.fail = True
        calls = [writer.checkpoint(work(n), BatchResult(), 1) for n in range(3)]
        return list(await asyncio.gather(*calls, return_exceptions=True))

    try:
        results = asyncio.run(main())
    finally:
        writer.close()
    assert all(isinstance(r, StateError) for r in results)
    assert store.done_batches(run.id) == set()


def test_no_more_batches_than_the_concurrency_are_ever_sent_without_a_checkpoint(
    store: SlowStore,
) -> None:
    run = store.create_run("s")
    writer = CheckpointWriter(Recorder(store, run))
    destination = MemoryDestination(MemoryConfig(store=f"writer-{uuid.uuid4().hex}"), name="m")
    widest: list[int] = []

    async def batches() -> AsyncIterator[Batch]:
        for n in range(40):
            unrecorded = destination.box.calls - len(store.done_batches(run.id))
            widest.append(unrecorded)
            yield Batch(
                sync="s",
                operation=Operation.UPSERT,
                number=n,
                idempotency_key=f"{run.id}-{n}",
                keys=[str(n)],
                payloads=['{"id": 1}'],
            )

    async def on_outcome(outcome: Outcome) -> None:
        await writer.checkpoint(work(outcome.batch.number, 1), outcome.result, outcome.attempts)

    async def main() -> None:
        store.gate.clear()
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, store.gate.set)  # the store is slow at first
        await deliver(
            destination,
            batches(),
            concurrency=3,
            rate_limit=None,
            on_outcome=on_outcome,
            stop=asyncio.Event(),
        )
        await writer.drain()

    try:
        asyncio.run(main())
    finally:
        writer.close()
    assert max(widest) <= 3
    assert store.done_batches(run.id) == set(range(40))
