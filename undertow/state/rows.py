"""Rows: batch checkpoints, row errors and the per-row history of each sync."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from undertow.state.connection import StoreConnection
from undertow.state.locks import fence as fence_lock
from undertow.state.records import (
    Checkpoint,
    Lock,
    RowError,
    RowStatus,
    RunRecord,
    as_aware,
    utc_now,
)
from undertow.state.schema import batches, row_errors, row_status, runs


class RowStore(StoreConnection):
    """Checkpoints, row errors and row history of the state store."""

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
    ) -> None:
        """Record one finished batch, its row errors and the run's counters atomically
        (:meth:`checkpoints` with one batch)."""
        one = Checkpoint(batch_no, operation, size, sent, accepted, errors, attempts, resolved_keys)
        self.checkpoints(run, [one], fence=fence, fence_with=fence_with, add_counts=add_counts)

    def checkpoints(
        self,
        run: RunRecord,
        done: Sequence[Checkpoint],
        *,
        fence: Lock | None = None,
        fence_with: Callable[[sa.Connection], None] | None = None,
        add_counts: Mapping[str, int] | None = None,
    ) -> None:
        """Record finished batches, their row errors and the run's counters in one
        transaction: all of them or none.

        In the same transaction, the rows' history (``undertow_row_status``): each rejected
        or failed row gets a failure (a new one, or one more attempt of an open one), and
        ``resolved_keys`` (rows of the batch the destination accepted that had an open
        failure) are marked resolved. With ``fence``, nothing is written unless the run still
        holds that lock (:class:`~undertow.errors.LockLostError` otherwise); ``fence_with``
        is any other such check (a shared delivery's part lease).

        ``run.counts`` is written as it is (it must already count these batches);
        ``add_counts``: several processes checkpoint the run at once (a shared delivery), so
        instead of writing ``run.counts`` the transaction adds these to the counters the
        store holds, reading them under a row lock.
        """
        now = utc_now()
        rows = []
        errors: list[RowError] = []
        resolved: list[str] = []
        for c in done:
            rows.append(
                {
                    "run_id": run.id,
                    "batch_no": c.batch_no,
                    "operation": c.operation,
                    "size": c.size,
                    "sent": c.sent,
                    "accepted": c.accepted,
                    "rejected": sum(1 for e in c.errors if e.kind not in ("failed", "skipped")),
                    "failed": sum(1 for e in c.errors if e.kind == "failed"),
                    "attempts": c.attempts,
                    "finished_at": now,
                }
            )
            errors.extend(c.errors)
            resolved.extend(c.resolved_keys)
        with self._tx() as conn:
            if fence is not None:
                fence_lock(conn, fence)
            if fence_with is not None:
                fence_with(conn)
            conn.execute(_INSERT_BATCH, rows)
            if errors:
                conn.execute(row_errors.insert(), [_error_row(e, now) for e in errors])
                self._record_failures(conn, errors, now)
            for chunk in _chunks(resolved, 500):
                conn.execute(
                    row_status.update()
                    .where(
                        row_status.c.sync == run.sync,
                        row_status.c.resolved_at.is_(None),
                        row_status.c.row_key.in_(chunk),
                    )
                    .values(resolved_at=now)
                )
            counts = run.counts
            if add_counts is not None:
                held = conn.execute(
                    sa.select(runs.c.counts).where(runs.c.id == run.id).with_for_update()
                ).scalar()
                counts = json.loads(held or "{}")
                for key, value in add_counts.items():
                    counts[key] = counts.get(key, 0) + value
            conn.execute(_UPDATE_COUNTS, {"rid": run.id, "c": json.dumps(counts), "u": now})

    def _record_failures(
        self, conn: sa.Connection, errors: Sequence[RowError], now: datetime
    ) -> None:
        """Upsert one failure per (sync, key): a new episode, or one more attempt of it."""
        latest: dict[tuple[str, str], RowError] = {}
        for error in errors:
            if error.kind in ("rejected", "failed"):
                latest[(error.sync, error.row_key)] = error
        if not latest:
            return
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
        stmt = insert(row_status)
        open_ = row_status.c.resolved_at.is_(None)
        stmt = stmt.on_conflict_do_update(
            index_elements=[row_status.c.sync, row_status.c.row_key],
            set_={
                "first_failed_at": sa.case(
                    (open_, row_status.c.first_failed_at), else_=stmt.excluded.first_failed_at
                ),
                "attempts": sa.case((open_, row_status.c.attempts + 1), else_=1),
                "last_failed_at": stmt.excluded.last_failed_at,
                "last_kind": stmt.excluded.last_kind,
                "last_reason": stmt.excluded.last_reason,
                "last_run_id": stmt.excluded.last_run_id,
                "resolved_at": None,
            },
        )
        conn.execute(
            stmt,
            [
                {
                    "sync": e.sync,
                    "row_key": e.row_key,
                    "first_failed_at": now,
                    "last_failed_at": now,
                    "attempts": 1,
                    "last_kind": e.kind,
                    "last_reason": e.reason,
                    "last_run_id": e.run_id,
                    "resolved_at": None,
                }
                for e in latest.values()
            ],
        )

    def add_row_errors(self, errors: Sequence[RowError]) -> None:
        if not errors:
            return
        now = utc_now()
        with self._tx() as conn:
            conn.execute(row_errors.insert(), [_error_row(e, now) for e in errors])

    def done_batches(self, run_id: str) -> set[int]:
        with self._tx() as conn:
            return set(
                conn.execute(
                    sa.select(batches.c.batch_no).where(batches.c.run_id == run_id)
                ).scalars()
            )

    def not_accepted_seqs(self, run_id: str) -> list[int]:
        """Sequence numbers of planned rows a checkpoint recorded as rejected or failed
        (a ``skipped`` row, an update the destination had no record for, is folded like an
        accepted one: it is not sent again until it changes)."""
        with self._tx() as conn:
            return [
                int(s)
                for s in conn.execute(
                    sa.select(row_errors.c.seq).where(
                        row_errors.c.run_id == run_id,
                        row_errors.c.seq.is_not(None),
                        row_errors.c.kind != "skipped",
                    )
                ).scalars()
            ]

    def row_errors(self, run_id: str, *, limit: int | None = None) -> list[RowError]:
        """The run's row errors, each with its row's history across runs (if it has one)."""
        history = sa.and_(
            row_status.c.sync == row_errors.c.sync, row_status.c.row_key == row_errors.c.row_key
        )
        query = (
            sa.select(
                row_errors,
                row_status.c.first_failed_at,
                row_status.c.last_failed_at,
                row_status.c.attempts,
                row_status.c.resolved_at,
            )
            .select_from(row_errors.outerjoin(row_status, history))
            .where(row_errors.c.run_id == run_id)
            .order_by(row_errors.c.id)
        )
        if limit is not None:
            query = query.limit(limit)
        with self._tx() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            RowError(
                run_id=r["run_id"],
                sync=r["sync"],
                row_key=r["row_key"],
                kind=r["kind"],
                reason=r["reason"],
                created_at=as_aware(r["created_at"]) or utc_now(),
                batch_no=r["batch_no"],
                seq=r["seq"],
                operation=r["operation"],
                first_failed_at=as_aware(r["first_failed_at"]),
                last_failed_at=as_aware(r["last_failed_at"]),
                attempts=r["attempts"],
                resolved_at=as_aware(r["resolved_at"]),
            )
            for r in rows
        ]

    # -- row history ------------------------------------------------------------------------

    def open_row_keys(self, sync: str) -> set[str]:
        """Keys of the sync's rows whose latest outcome was rejected or failed."""
        with self._tx() as conn:
            return set(
                conn.execute(
                    sa.select(row_status.c.row_key).where(
                        row_status.c.sync == sync, row_status.c.resolved_at.is_(None)
                    )
                ).scalars()
            )

    def row_statuses(
        self, sync: str, *, include_resolved: bool = False, limit: int | None = None
    ) -> list[RowStatus]:
        """The sync's rows with a failure history, most recently failed first."""
        query = (
            sa.select(row_status)
            .where(row_status.c.sync == sync)
            .order_by(row_status.c.last_failed_at.desc(), row_status.c.row_key)
        )
        if not include_resolved:
            query = query.where(row_status.c.resolved_at.is_(None))
        if limit is not None:
            query = query.limit(limit)
        with self._tx() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            RowStatus(
                sync=r["sync"],
                row_key=r["row_key"],
                first_failed_at=as_aware(r["first_failed_at"]) or utc_now(),
                last_failed_at=as_aware(r["last_failed_at"]) or utc_now(),
                attempts=int(r["attempts"]),
                last_kind=r["last_kind"],
                last_reason=r["last_reason"],
                last_run_id=r["last_run_id"],
                resolved_at=as_aware(r["resolved_at"]),
            )
            for r in rows
        ]

    def resolve_rows(self, sync: str, keys: Sequence[str]) -> None:
        """Close the open failures of ``keys`` (rows with nothing left to send)."""
        if not keys:
            return
        now = utc_now()
        with self._tx() as conn:
            for chunk in _chunks(list(keys), 500):
                conn.execute(
                    row_status.update()
                    .where(
                        row_status.c.sync == sync,
                        row_status.c.resolved_at.is_(None),
                        row_status.c.row_key.in_(chunk),
                    )
                    .values(resolved_at=now)
                )


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# prebuilt statements of the hot path (one checkpoint per batch)
_INSERT_BATCH = batches.insert()
_UPDATE_COUNTS = (
    runs.update()
    .where(runs.c.id == sa.bindparam("rid"))
    .values(counts=sa.bindparam("c"), updated_at=sa.bindparam("u"))
)


def _error_row(error: RowError, now: datetime) -> dict[str, Any]:
    return {
        "run_id": error.run_id,
        "sync": error.sync,
        "batch_no": error.batch_no,
        "seq": error.seq,
        "row_key": error.row_key,
        "kind": error.kind,
        "operation": error.operation,
        "reason": error.reason,
        "created_at": now,
    }
