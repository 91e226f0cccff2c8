"""diff: compare the model with the snapshot of what the destination last accepted.

The snapshot keeps, per primary key, the last accepted *values* of the columns the sync
maps (not a hash), plus a fingerprint of the mapping that produced the payload. Both sides
are compared at diff time by value, so no library upgrade can change the outcome, and
``plan`` can show old -> new per field.

Engines implement :class:`DiffEngine`. The ``local`` engine keeps one DuckDB file per sync
under the state folder (it holds customer data: the folder is private to its user). A
``warehouse`` engine would run the same contract inside the source.

A run's change set (the *plan table*) is kept until the run ends, so a resumed run finishes
the same plan. The snapshot is folded from the state store's checkpoints, idempotently: the
checkpoints are the truth, the fold can be replayed.
"""

from undertow.pipeline.diff.contract import (
    META,
    BatchGroups,
    ChangeStats,
    DiffEngine,
    DiffSpec,
    PlannedChunk,
    batch_groups,
    lit,
    q,
)
from undertow.pipeline.diff.local import LocalDiffEngine

__all__ = [
    "META",
    "BatchGroups",
    "ChangeStats",
    "DiffEngine",
    "DiffSpec",
    "LocalDiffEngine",
    "PlannedChunk",
    "batch_groups",
    "lit",
    "q",
]
