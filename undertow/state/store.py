"""The state store: runs as a persisted state machine, batch checkpoints, row errors, locks.

SQLAlchemy Core over SQLite (default, one file in the project's state folder) or PostgreSQL
(``state: postgresql://...``) for teams. The schema moves only through numbered migrations
(``undertow/state/migrations``), applied on open.
"""

from undertow.state.connection import StoreConnection
from undertow.state.jobs import JobRecord, JobStore
from undertow.state.locks import LockStore
from undertow.state.records import (
    COUNT_KEYS,
    LOCK_TTL,
    Checkpoint,
    Lock,
    RowError,
    RowStatus,
    RunRecord,
    RunStatus,
    empty_counts,
    normalise_url,
)
from undertow.state.rows import RowStore
from undertow.state.runs import RunStore

__all__ = [
    "COUNT_KEYS",
    "LOCK_TTL",
    "Checkpoint",
    "JobRecord",
    "Lock",
    "RowError",
    "RowStatus",
    "RunRecord",
    "RunStatus",
    "StateStore",
    "StoreConnection",
    "empty_counts",
    "normalise_url",
]


class StateStore(LockStore, RunStore, RowStore, JobStore):
    """Reader and writer of the state store. One per process; thread-safe via the engine.

    Its parts live apart (:mod:`~undertow.state.locks`, :mod:`~undertow.state.runs`,
    :mod:`~undertow.state.rows`, :mod:`~undertow.state.jobs`, over :mod:`~undertow.state.connection`); this class is the
    one API every caller uses."""
