"""The in-memory destination with seeded faults (dlt's dummy destination): for tests.

    destinations:
      mem: {type: memory, store: users, batch_size: 10, faults: {seed: 7, rates: {"503": 0.1}}}

Every instance with the same ``store`` name writes into one :class:`MemoryStore` of this
process (:func:`store`), which a test reads and scripts::

    box = memory.store("users")
    box.reject["42"] = "the vendor refuses row 42"    # by row key
    box.fail.add("7")                                 # a transient failure for row 7
    box.crash_on_call = 3                             # raise box.crash on the 3rd write
    ... run the sync ...
    box.state          # identity -> last record (a delete removes it; an update of an
                       # identity it lacks is not found: nothing is created)
    box.received       # every record of every write, in order

Identity is the record's match value(s) when the sync has ``match``, else its row key.
Faults (``faults:``) are the seeded ones of :mod:`undertow.testing.faults`, decided per
batch from the seed and the batch's body: ``500``/``502``/``503`` and ``429``/``429-bare``
raise ``RetryableError`` with nothing applied; ``timeout``/``drop`` apply the batch, then
raise ``RetryableError`` (the answer was lost: the batch is sent again); ``partial``
rejects some records and applies the rest; ``slow`` waits first.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    Destination,
    DestinationConfig,
    Operation,
    RateLimit,
    RecordKind,
)
from undertow.errors import RetryableError


class FaultConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    rates: dict[str, float] = Field(default_factory=dict)
    retry_after: float = 0.01
    slow_delay: float = 0.01
    partial_share: float = 0.1


class MemoryConfig(DestinationConfig):
    type: Literal["memory"] = "memory"
    store: str = "default"
    """Instances with the same name share one :class:`MemoryStore` in this process."""
    operations: list[Operation] | None = None
    batch_size: int = Field(default=1000, ge=1)
    max_concurrency: int = Field(default=4, ge=1)
    rate_limit: tuple[int, float] | None = None
    """``[requests, per_seconds]``: paced by the deliver stage."""
    requires_match: bool = False
    objects: list[str] | None = None
    kind: RecordKind = RecordKind.PROFILES
    """What a record is (``profiles``, ``membership``, ``events``: see ``pipeline/plan.py``)."""
    event_id: str | None = None
    """On ``kind: events``, the field the vendor deduplicates by (None: at most once)."""
    faults: FaultConfig | None = None


class Received(NamedTuple):
    """One record of one write."""

    idempotency_key: str
    batch: int
    operation: str
    key: str
    record: dict[str, Any]


Behaviour = Callable[["MemoryDestination", Batch], Awaitable[BatchResult | None]]


@dataclass
class MemoryStore:
    """What every ``memory`` destination of one ``store`` name wrote, and its script."""

    name: str
    state: dict[Hashable, dict[str, Any]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    applied: Counter[Hashable] = field(default_factory=Counter)
    """How many times each identity was written (duplicates show as counts above 1)."""
    reject: dict[str, str] = field(default_factory=dict)
    """Row key -> the reason the destination refuses it."""
    fail: set[str] = field(default_factory=set)
    """Row keys that fail transiently (not applied)."""
    operations: frozenset[Operation] | None = None
    """When set, overrides the config's operations (capabilities change at run time)."""
    crash_on_call: int | None = None
    crash: BaseException | type[BaseException] = RuntimeError
    behaviour: Behaviour | None = None
    """Called first for every write; a BatchResult it returns is the answer."""
    calls: int = 0
    writes: list[int] = field(default_factory=list)
    """Batch numbers in the order of the calls."""
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def keys(self) -> list[str]:
        """Row keys received, in order."""
        return [r.key for r in self.received]

    def sorted_keys(self) -> list[str]:
        return sorted(self.keys(), key=int)

    def sent(self) -> list[tuple[str, str]]:
        """(operation, row key) per record received, in order."""
        return [(r.operation, r.key) for r in self.received]

    def ops(self, operation: str) -> list[str]:
        """Row keys received with ``operation``, in key order."""
        return sorted((r.key for r in self.received if r.operation == operation), key=int)

    def duplicates(self) -> dict[Hashable, int]:
        return {k: n for k, n in self.applied.items() if n > 1}


_stores: dict[str, MemoryStore] = {}
_stores_lock = threading.Lock()


def store(name: str = "default") -> MemoryStore:
    """The store of that name (created empty on first use)."""
    with _stores_lock:
        found = _stores.get(name)
        if found is None:
            found = _stores[name] = MemoryStore(name)
        return found


def drop(name: str) -> None:
    """Forget a store (a test cleaning up after itself)."""
    with _stores_lock:
        _stores.pop(name, None)


class MemoryDestination(Destination[MemoryConfig]):
    """Writes into an in-process :class:`MemoryStore`; for tests and trying modes out."""

    name: ClassVar[str] = "memory"
    capabilities: ClassVar[Capabilities] = Capabilities(
        operations=frozenset(Operation), max_batch_size=1000, per_record_results=True
    )

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        super().__init__(config, name=name)
        self.box = store(self.config.store)
        self.objects = tuple(self.config.objects) if self.config.objects else None  # type: ignore[misc]
        self._plan: Any = None
        faults = self.config.faults
        if faults is not None:
            from undertow.testing.faults import FaultPlan

            self._plan = FaultPlan(
                faults.seed,
                faults.rates,
                retry_after=faults.retry_after,
                slow_delay=faults.slow_delay,
                timeout_delay=0.0,
                partial_share=faults.partial_share,
            )

    @property
    def fault_plan(self) -> Any:
        """The seeded :class:`~undertow.testing.faults.FaultPlan` (None without ``faults:``)."""
        return self._plan

    def capabilities_for(self, object: str | None) -> Capabilities:
        config = self.config
        operations = self.box.operations or (
            frozenset(config.operations) if config.operations else frozenset(Operation)
        )
        limit = RateLimit(*config.rate_limit) if config.rate_limit else None
        return replace(
            self.capabilities,
            operations=operations,
            max_batch_size=config.batch_size,
            max_concurrency=config.max_concurrency,
            rate_limit=limit,
            requires_match=config.requires_match,
            kind=config.kind,
            event_id=config.event_id,
        )

    async def check(self) -> None:
        pass

    def identity(self, batch: Batch, index: int) -> Hashable:
        if batch.identifiers:
            values = tuple(str(v[index]) for _, v in sorted(batch.identifiers.items()))
            return (batch.object, *values)
        return (batch.object, batch.keys[index])

    async def write_batch(self, batch: Batch) -> BatchResult:
        box = self.box
        with box.lock:
            box.calls += 1
            call = box.calls
            box.writes.append(batch.number)
            box.in_flight += 1
            box.max_in_flight = max(box.max_in_flight, box.in_flight)
        try:
            if box.behaviour is not None:
                answer = await box.behaviour(self, batch)
                if answer is not None:
                    return answer
            fate = None
            if self._plan is not None:
                body = batch.operation.value.encode() + batch.json_array()
                fate = self._plan.decide(body, len(batch))
                if not fate.applies:
                    raise RetryableError(
                        f"memory destination {self.instance_name!r}: injected {fate.fault}",
                        retry_after=fate.retry_after,
                    )
                await fate.before()
            result = self._apply(batch, fate.rejected if fate is not None else frozenset())
            if box.crash_on_call == call:
                raise box.crash
            if fate is not None and fate.lost:
                raise RetryableError(
                    f"memory destination {self.instance_name!r}: injected {fate.fault} "
                    "(applied, answer lost)"
                )
            return result
        finally:
            with box.lock:
                box.in_flight -= 1

    def _apply(self, batch: Batch, refused: frozenset[int]) -> BatchResult:
        box = self.box
        result = BatchResult()
        with box.lock:
            for index, (key, record) in enumerate(zip(batch.keys, batch.records(), strict=True)):
                if key in box.fail:
                    result.failed[index] = "connection reset while writing"
                    continue
                box.received.append(
                    Received(
                        batch.idempotency_key,
                        batch.number,
                        str(batch.operation),
                        key,
                        record,
                    )
                )
                if key in box.reject:
                    result.rejected[index] = box.reject[key]
                    continue
                if index in refused:
                    result.rejected[index] = "injected per-record rejection"
                    continue
                identity = self.identity(batch, index)
                if batch.operation is Operation.UPDATE and identity not in box.state:
                    # an update names a record that must exist (HubSpot's OBJECT_NOT_FOUND)
                    result.not_found[index] = f"no record of row {key!r} to update"
                    continue
                if batch.operation in (Operation.DELETE, Operation.REMOVE):
                    box.state.pop(identity, None)
                else:
                    box.state[identity] = record
                    box.applied[identity] += 1
        return result
