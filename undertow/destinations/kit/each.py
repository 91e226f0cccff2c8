"""Per-record work that takes more than one request: look the record up, then write it.

Vendors with no batch endpoint and no upsert (Intercom contacts, Pipedrive, Stripe) need a
lookup before each write: find the vendor's id for the record's match value, then create,
update or delete. :func:`for_each` runs such work for every item of a call, at most the
destination's ``max_concurrency`` at once, each step through ``HttpDestination.send`` (so
pacing, slow-down signals, retries and redaction are the kit's)::

    async def upsert(call: Call) -> BatchResult:          # a call of one item
        found = await self.find_id(call)                   # GET .../search?term=...
        if found is None:
            return await self.call(CREATE, call)
        return await self.call(UPDATE, call.with_path(id=found))

    await for_each(self, call, result, upsert)

A step refuses its record by raising :class:`~undertow.errors.RejectedBatchError` (the
record is rejected with the message) or returns a :class:`BatchResult` for its one item
(``failed`` when the write is not confirmed). A fatal error (credentials, a wait beyond
``max_wait``, an interrupted run) stops every item in flight and propagates: the records
not yet written stay undelivered for the next run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from undertow.destinations import capture
from undertow.destinations.base import BatchResult
from undertow.destinations.kit.endpoints import Call, Item
from undertow.errors import RejectedBatchError, UndertowError

Work = Callable[[Call], Awaitable[BatchResult]]
"""What to do for one record: a call of one item in, its result (index 0) out."""


async def for_each(concurrency: int, call: Call, result: BatchResult, work: Work) -> None:
    """Run ``work`` for every item of ``call`` (``concurrency`` at once) into ``result``."""
    slots = asyncio.Semaphore(max(1, concurrency))

    keys = call.batch.keys

    async def one(item: Item) -> None:
        async with slots:
            # each request carries this one record: the debugger and the capture hook see
            # its key, not the whole batch's
            key = (keys[item.index],) if item.index < len(keys) else ()
            try:
                with capture.context(keys=key):
                    sub = await work(call.subset([item]))
            except RejectedBatchError as exc:
                sub = BatchResult.all_rejected(1, str(exc))
            result.merge(sub, [item.index])

    try:
        async with asyncio.TaskGroup() as group:
            for item in call.items:
                group.create_task(one(item))
    except* UndertowError as failures:
        raise failures.exceptions[0] from None
