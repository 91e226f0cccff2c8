"""The contract every diff engine keeps: what to compare, what a build counts, the planned
chunks it hands to map and deliver, and how planned rows are numbered into batches.

See :mod:`undertow.pipeline.diff` for what the snapshot keeps and how a run's change set
lives until the run ends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl
import pyarrow as pa

from undertow.destinations.base import Operation
from undertow.pipeline.plan import Plan
from undertow.sources.base import NativeLoad

META = "_ut_"


def q(name: str) -> str:
    """Quote an identifier for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


def lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class DiffSpec:
    """What to compare: the primary key and the columns the sync maps."""

    sync: str
    keys: list[str]
    columns: list[str]
    fingerprint: int

    @property
    def values(self) -> list[str]:
        return [c for c in self.columns if c not in self.keys]


@dataclass
class ChangeStats:
    extracted: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    invalid: int = 0
    planned: int = 0
    total_batches: int = 0
    snapshot: int = 0
    """Rows in the snapshot before this run (what the destination holds from this sync)."""
    deletes: int = 0
    """Planned rows whose operation deletes or removes (``delete``, ``remove``)."""
    left: int = 0
    """Rows that left the model in an earlier run of a sync that deletes nothing (counted as
    ``removed`` then, state now); ``left_since``: when the first of them left."""
    left_since: datetime | None = None
    held: int = 0
    """Rows of an ``insert`` sync whose change an earlier run counted (never sent)."""
    settled: list[str] = field(default_factory=list)
    """Of the ``watch_keys`` given to ``build``: keys with nothing to send (their current
    values are already accepted, or the row left both the model and the snapshot)."""

    def as_counts(self) -> dict[str, int]:
        return {
            "extracted": self.extracted,
            "added": self.added,
            "changed": self.changed,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "invalid": self.invalid,
            "planned": self.planned,
            "left": self.left,
            "held": self.held,
            **({"left_since": int(self.left_since.timestamp())} if self.left_since else {}),
        }


@dataclass
class PlannedChunk:
    """Planned rows of consecutive batches: ``frame`` has ``_ut_seq``, ``_ut_batch``,
    ``_ut_key``, ``_ut_op`` and the model columns (old values for removed rows)."""

    frame: pl.DataFrame
    batches: list[tuple[int, Operation]] = field(default_factory=list)


class DiffEngine(ABC):
    """The contract every diff engine keeps (see the module docstring)."""

    name: str
    pulls_model: bool = True
    """True: the run streams the model's rows to ``build``; False (the ``warehouse`` engine):
    ``build`` gets ``reader=None`` and reads the model inside the source."""

    @abstractmethod
    def build(
        self,
        run_id: str,
        reader: pa.RecordBatchReader | NativeLoad | None,
        spec: DiffSpec,
        plan: Plan,
        batch_size: int,
        *,
        only_keys: Collection[str] | None = None,
        watch_keys: Collection[str] | None = None,
    ) -> ChangeStats:
        """Load the model, diff it against the snapshot and materialise the run's plan.

        ``only_keys`` restricts the plan to those row keys (``undertow retry``);
        ``watch_keys`` are reported in ``ChangeStats.settled`` when nothing is left to send.
        """

    @abstractmethod
    def has_plan(self, run_id: str) -> bool: ...

    @abstractmethod
    def invalid_rows(self, run_id: str, limit: int | None = None) -> list[tuple[str, str]]:
        """(key, reason) of rows rejected for a NULL or duplicate primary key."""

    @abstractmethod
    def chunks(
        self, run_id: str, *, skip: set[int], batches_per_chunk: int = 64
    ) -> Iterator[PlannedChunk]: ...

    @abstractmethod
    def changed_rows(self, run_id: str, limit: int) -> pl.DataFrame:
        """Changed rows with their new columns and ``_ut_old_<col>`` old ones (for plan: a
        real run's plan may leave the old values of changed rows out, as it never sends them)."""

    @abstractmethod
    def fold(self, run_id: str, spec: DiffSpec, done: set[int], not_accepted: Sequence[int]) -> int:
        """Fold the accepted rows of the done batches into the snapshot; return how many."""

    @abstractmethod
    def discard(self, run_id: str) -> None: ...

    @abstractmethod
    def discard_all_plans(self, keep: str | None = None) -> None:
        """Drop the change sets of every run of the sync but ``keep`` (left by dead runs)."""

    @abstractmethod
    def reset(self) -> None:
        """Forget the snapshot: the next run is a first run."""

    @abstractmethod
    def snapshot_rows(self) -> int: ...

    @abstractmethod
    def close(self) -> None: ...


@dataclass
class BatchGroups:
    """How a plan's rows are numbered into batches (both engines number them the same way).

    Rows of one operation share batches unless some carry old values (removed rows), so a
    batch never mixes operations, or old and new values."""

    inserts: list[tuple[int, Operation, list[str]]] = field(default_factory=list)
    """(first batch, operation, kinds) per group, in plan order."""
    total_batches: int = 0
    planned: int = 0
    deletes: int = 0
    """Planned rows whose operation deletes or removes (``delete``, ``remove``)."""


def batch_groups(plan: Plan, counts: dict[str, int], batch_size: int) -> BatchGroups:
    """Batches per (operation, old-or-new values) group, kinds in the order removed, added,
    changed, unchanged; ``counts`` are the rows of each kind."""
    out = BatchGroups()
    order: list[tuple[str, Operation]] = []
    sizes: dict[tuple[str, Operation], int] = {}
    kinds_of: dict[tuple[str, Operation], list[str]] = {}
    for kind in ("removed", "added", "changed", "unchanged"):
        op = plan.ops.get(kind)
        n = int(counts.get(kind, 0))
        if op is None or not n:
            continue
        gid = ("old" if kind == "removed" else "new", op)
        if gid not in sizes:
            order.append(gid)
            sizes[gid] = 0
            kinds_of[gid] = []
        sizes[gid] += n
        kinds_of[gid].append(kind)
        if op in (Operation.DELETE, Operation.REMOVE):
            out.deletes += n
    for gid in order:
        out.inserts.append((out.total_batches, gid[1], kinds_of[gid]))
        out.total_batches += -(-sizes[gid] // batch_size)
    out.planned = sum(sizes.values())
    return out


def batch_sequences(groups: BatchGroups) -> dict[int, tuple[int, int]]:
    """Batch number -> ``(n, of)``: its place (from 1) among the plan's ``of`` batches of its
    operation. A pure function of the numbering, so a resumed run gives each batch the same
    place (``Batch.sequence``: Facebook's replace session numbers its requests by it)."""
    bounds = [first for first, _, _ in groups.inserts] + [groups.total_batches]
    numbers: dict[Operation, list[int]] = {}
    for (first, op, _), end in zip(groups.inserts, bounds[1:], strict=True):
        numbers.setdefault(op, []).extend(range(first, end))
    return {n: (place, len(ns)) for ns in numbers.values() for place, n in enumerate(ns, 1)}
