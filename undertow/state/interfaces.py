"""What the state store offers, split by who may use it (after sqlmesh's ``StateReader`` and
``StateSync``):

* :class:`StateReader` — everything that only reads: runs, checkpoints, row errors, row
  history, locks held, schema version. ``undertow status | runs | errors``, the HTTP API and
  the web UI get this (``Project.reader``), so a read path cannot write by mistake: mypy
  refuses the call.
* :class:`StateWriter` — a reader that also writes: creating and updating runs, checkpoints,
  row errors, locks. Only runs (``SyncRun`` and the record stage), ``reset`` and the
  scheduler hold one.

:class:`~undertow.state.store.StateStore` implements both; the test at the bottom of
``tests/unit/test_state_interfaces.py`` checks that it still does, method by method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Protocol, runtime_checkable

import sqlalchemy as sa

from undertow.state.records import Checkpoint, Lock, RowError, RowStatus, RunRecord, RunStatus


@runtime_checkable
class StateReader(Protocol):
    display_url: str
    version: int

    def get_run(self, run_id: str) -> RunRecord | None: ...
    def find_runs(self, prefix: str) -> list[RunRecord]: ...
    def unfinished_run(self, sync: str) -> RunRecord | None: ...
    def list_runs(self, sync: str | None = None, *, limit: int = 20) -> list[RunRecord]: ...
    def last_runs(self) -> dict[str, RunRecord]: ...
    def last_success(self, sync: str) -> RunRecord | None: ...
    def done_batches(self, run_id: str) -> set[int]: ...
    def not_accepted_seqs(self, run_id: str) -> list[int]: ...
    def row_errors(self, run_id: str, *, limit: int | None = None) -> list[RowError]: ...
    def open_row_keys(self, sync: str) -> set[str]: ...
    def row_statuses(
        self, sync: str, *, include_resolved: bool = False, limit: int | None = None
    ) -> list[RowStatus]: ...
    def held_locks(self) -> dict[str, dict[str, Any]]: ...
    def schema_version(self) -> int: ...


@runtime_checkable
class StateWriter(StateReader, Protocol):
    def create_run(
        self, sync: str, *, full: bool = False, trigger: str = "manual"
    ) -> RunRecord: ...
    def update_run(
        self,
        run: RunRecord,
        *,
        status: RunStatus | None = None,
        error: str | None = None,
        bump_attempt: bool = False,
        warning: str | None = None,
        fence: Lock | None = None,
        keep_counts: bool = False,
    ) -> None: ...
    def checkpoint(
        self,
        run: RunRecord,
        *,
        batch_no: int,
        operation: str,
        size: int,
        sent: int,
        accepted: int,
        errors: Sequence[RowError],
        attempts: int,
        resolved_keys: Sequence[str] = (),
        fence: Lock | None = None,
        fence_with: Callable[[sa.Connection], None] | None = None,
        add_counts: Mapping[str, int] | None = None,
    ) -> None: ...
    def checkpoints(
        self,
        run: RunRecord,
        done: Sequence[Checkpoint],
        *,
        fence: Lock | None = None,
        fence_with: Callable[[sa.Connection], None] | None = None,
        add_counts: Mapping[str, int] | None = None,
    ) -> None: ...
    def add_row_errors(self, errors: Sequence[RowError]) -> None: ...
    def resolve_rows(self, sync: str, keys: Sequence[str]) -> None: ...
    def acquire_lock(
        self,
        sync: str,
        *,
        run_id: str | None = None,
        ttl: timedelta | None = None,
        worker: str | None = None,
    ) -> Lock: ...
    def heartbeat(self, lock: Lock) -> bool: ...
    def release_lock(self, lock: Lock) -> None: ...
