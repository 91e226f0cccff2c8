"""batching.Ahead: the mapped batches are produced in a thread of their own, a bounded number
ahead of the event loop; the source's failure reaches the loop, and once closed nothing reads
the source any more (the diff engine's connection is the fold's next)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from undertow.pipeline.batching import Ahead

pytestmark = pytest.mark.unit


class Source:
    """Counts the items taken from it, and from which thread."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at = n, fail_at
        self.taken = 0
        self.threads: set[str] = set()

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            if i == self.fail_at:
                raise ValueError(f"item {i} is broken")
            self.taken += 1
            self.threads.add(threading.current_thread().name)
            yield i


def test_every_item_arrives_in_order_from_another_thread() -> None:
    source = Source(300)

    async def main() -> list[int]:
        ahead = Ahead(iter(source), limit=8)
        try:
            return [i async for i in ahead]
        finally:
            await ahead.close()

    assert asyncio.run(main()) == list(range(300))
    assert source.threads == {"undertow-map"}


def test_it_runs_at_most_its_limit_ahead_and_stops_reading_once_closed() -> None:
    source = Source(1000)

    async def main() -> tuple[int, int, int]:
        ahead = Ahead(iter(source), limit=5)
        first = await ahead.__anext__()
        await asyncio.sleep(0.3)  # room for the producer to run on, were it unbounded
        held = source.taken
        await ahead.close()
        after_close = source.taken
        time.sleep(0.2)
        return first, held, after_close

    first, held, after_close = asyncio.run(main())
    assert first == 0
    assert held <= 1 + 5 + 1  # the one taken, the limit, the one waiting for room
    assert source.taken == after_close  # nothing read after close returned


def test_a_failure_of_the_source_is_raised_where_the_items_are_taken() -> None:
    async def main() -> list[int]:
        got: list[int] = []
        ahead = Ahead(iter(Source(10, fail_at=4)))
        try:
            with pytest.raises(ValueError, match="item 4 is broken"):
                async for i in ahead:
                    got.append(i)
            with pytest.raises(StopAsyncIteration):  # and then it has ended
                await ahead.__anext__()
        finally:
            await ahead.close()
        return got

    assert asyncio.run(main()) == [0, 1, 2, 3]
