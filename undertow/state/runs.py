"""Runs: create, read and update the persisted run state machine."""

from __future__ import annotations

import json
import uuid
from typing import Any

import sqlalchemy as sa

from undertow.redact import redact
from undertow.state.connection import StoreConnection
from undertow.state.locks import fence as fence_lock
from undertow.state.records import Lock, RunRecord, RunStatus, as_aware, empty_counts, utc_now
from undertow.state.schema import runs


class RunStore(StoreConnection):
    """The runs of the state store."""

    def create_run(self, sync: str, *, full: bool = False, trigger: str = "manual") -> RunRecord:
        now = utc_now()
        run_id = now.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        counts = empty_counts()
        stages = {str(RunStatus.PENDING): now.isoformat()}
        with self._tx() as conn:
            conn.execute(
                runs.insert().values(
                    id=run_id,
                    sync=sync,
                    status=str(RunStatus.PENDING),
                    full_resync=full,
                    trigger=trigger,
                    counts=json.dumps(counts),
                    created_at=now,
                    updated_at=now,
                    attempt=1,
                    stages=json.dumps(stages),
                )
            )
        return RunRecord(
            id=run_id,
            sync=sync,
            status=RunStatus.PENDING,
            full_resync=full,
            trigger=trigger,
            counts=counts,
            created_at=now,
            updated_at=now,
            stages=stages,
        )

    def _record(self, row: sa.RowMapping) -> RunRecord:
        return RunRecord(
            id=row["id"],
            sync=row["sync"],
            status=RunStatus(row["status"]),
            full_resync=bool(row["full_resync"]),
            trigger=row["trigger"],
            counts={**empty_counts(), **json.loads(row["counts"] or "{}")},
            created_at=as_aware(row["created_at"]) or utc_now(),
            updated_at=as_aware(row["updated_at"]) or utc_now(),
            finished_at=as_aware(row["finished_at"]),
            error=row["error"],
            batch_size=row["batch_size"],
            total_batches=row["total_batches"],
            attempt=row["attempt"],
            warning=row.get("warning"),
            stages=json.loads(row.get("stages") or "{}"),
        )

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
        return self._record(row) if row else None

    def find_runs(self, prefix: str) -> list[RunRecord]:
        with self._tx() as conn:
            rows = (
                # autoescape: a prefix is text, never a LIKE pattern (`%` matches no run)
                conn.execute(
                    sa.select(runs).where(runs.c.id.startswith(prefix, autoescape=True)).limit(5)
                )
                .mappings()
                .all()
            )
        return [self._record(r) for r in rows]

    def unfinished_run(self, sync: str) -> RunRecord | None:
        finals = [str(s) for s in RunStatus if s.final]
        with self._tx() as conn:
            row = (
                conn.execute(
                    sa.select(runs)
                    .where(runs.c.sync == sync, runs.c.status.not_in(finals))
                    .order_by(runs.c.created_at.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return self._record(row) if row else None

    def list_runs(self, sync: str | None = None, *, limit: int = 20) -> list[RunRecord]:
        query = sa.select(runs).order_by(runs.c.created_at.desc()).limit(limit)
        if sync is not None:
            query = query.where(runs.c.sync == sync)
        with self._tx() as conn:
            return [self._record(r) for r in conn.execute(query).mappings().all()]

    def last_runs(self) -> dict[str, RunRecord]:
        """The newest run of every sync."""
        latest = (
            sa.select(runs.c.sync, sa.func.max(runs.c.created_at).label("at"))
            .group_by(runs.c.sync)
            .subquery()
        )
        query = sa.select(runs).join(
            latest, sa.and_(runs.c.sync == latest.c.sync, runs.c.created_at == latest.c.at)
        )
        with self._tx() as conn:
            return {r["sync"]: self._record(r) for r in conn.execute(query).mappings().all()}

    def last_success(self, sync: str) -> RunRecord | None:
        with self._tx() as conn:
            row = (
                conn.execute(
                    sa.select(runs)
                    .where(runs.c.sync == sync, runs.c.status == str(RunStatus.SUCCEEDED))
                    .order_by(runs.c.created_at.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return self._record(row) if row else None

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
    ) -> None:
        """Persist the run's status, counts and plan facts (one transaction); with ``fence``
        only while the run still holds that lock (:class:`~undertow.errors.LockLostError`).
        ``keep_counts``: leave the counters in the store as they are (other workers add to
        them while they share the run's delivery)."""
        now = utc_now()
        if status is not None:
            if status != run.status or not run.stages:
                run.stages.setdefault(str(status), now.isoformat())
            run.status = status
        if error is not None:
            run.error = redact(error)  # the state store never holds a secret
        if warning is not None:
            run.warning = redact(warning)
        if bump_attempt:
            run.attempt += 1
        values: dict[str, Any] = {
            "status": str(run.status),
            "counts": json.dumps(run.counts),
            "updated_at": now,
            "error": run.error,
            "warning": run.warning,
            "batch_size": run.batch_size,
            "total_batches": run.total_batches,
            "attempt": run.attempt,
            "stages": json.dumps(run.stages),
        }
        if keep_counts:
            del values["counts"]
        if run.status.final:
            run.finished_at = now
            values["finished_at"] = now
        run.updated_at = now
        with self._tx() as conn:
            if fence is not None:
                fence_lock(conn, fence)
            conn.execute(runs.update().where(runs.c.id == run.id).values(**values))
