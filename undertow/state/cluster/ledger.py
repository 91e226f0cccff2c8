"""The task ledger: a task is a row before its message is published (module docstring of
:mod:`undertow.state.cluster`); writes only its holder may make are fenced by
``(worker, attempts)``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from undertow.state.cluster.base import ClusterBase
from undertow.state.cluster.tables import tasks
from undertow.state.records import as_aware, utc_now

FINAL_TASK_STATES = ("done", "failed", "dropped")


@dataclass
class TaskRow:
    id: str
    sync: str
    kind: str
    full: bool
    trigger: str
    state: str
    run_id: str | None
    part_no: int | None
    worker: str | None
    attempts: int
    enqueued_at: datetime
    reserved_by: str | None
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None

    @property
    def final(self) -> bool:
        return self.state in FINAL_TASK_STATES


def _task(row: sa.RowMapping) -> TaskRow:
    return TaskRow(
        id=row["id"],
        sync=row["sync"],
        kind=row["kind"],
        full=bool(row["full_resync"]),
        trigger=row["trigger"],
        state=row["state"],
        run_id=row["run_id"],
        part_no=row["part_no"],
        worker=row["worker"],
        attempts=int(row["attempts"]),
        enqueued_at=as_aware(row["enqueued_at"]) or utc_now(),
        reserved_by=row["reserved_by"],
        started_at=as_aware(row["started_at"]),
        finished_at=as_aware(row["finished_at"]),
        result=json.loads(row["result"]) if row["result"] else None,
    )


class Tasks(ClusterBase):
    """The ``undertow_tasks`` rows."""

    def add_task(
        self,
        task_id: str,
        *,
        sync: str,
        kind: str = "run",
        full: bool = False,
        trigger: str = "manual",
        run_id: str | None = None,
        part_no: int | None = None,
    ) -> bool:
        """Record a task before its message is published; False if that id exists already
        (the same due run enqueued twice: publish nothing)."""
        try:
            with self._tx() as conn:
                conn.execute(
                    tasks.insert().values(
                        id=task_id,
                        sync=sync,
                        kind=kind,
                        full_resync=full,
                        trigger=trigger[:40],
                        state="new",
                        run_id=run_id,
                        part_no=part_no,
                        attempts=0,
                        enqueued_at=utc_now(),
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    def mark_published(self, task_id: str) -> None:
        """Its message is on the broker (a ``new`` task whose publish failed is published
        again by the sweeper)."""
        with self._tx() as conn:
            conn.execute(
                tasks.update()
                .where(tasks.c.id == task_id, tasks.c.state == "new")
                .values(state="queued")
            )

    def task(self, task_id: str) -> TaskRow | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).mappings().first()
        return _task(row) if row else None

    def tasks(
        self, ids: list[str] | None = None, *, states: tuple[str, ...] | None = None
    ) -> list[TaskRow]:
        query = sa.select(tasks).order_by(tasks.c.enqueued_at)
        if ids is not None:
            query = query.where(tasks.c.id.in_(ids))
        if states is not None:
            query = query.where(tasks.c.state.in_(states))
        with self._tx() as conn:
            return [_task(r) for r in conn.execute(query).mappings().all()]

    def reserve(self, task_id: str, worker: str) -> None:
        """A worker received the task's message (it may wait there for a free process)."""
        with self._tx() as conn:
            conn.execute(
                tasks.update()
                .where(tasks.c.id == task_id, tasks.c.state.in_(("new", "queued")))
                .values(reserved_by=worker, reserved_at=utc_now())
            )

    def claim(self, task_id: str, worker: str, *, takeover: bool) -> TaskRow | None:
        """Take the task to run it: a queued task, or (``takeover``: the caller checked that
        its holder is gone) a running one. None when someone else has it or it is over."""
        with self._tx() as conn:
            row = conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).mappings().first()
            if row is None:
                return None
            if row["state"] not in ("new", "queued", "running") or (
                row["state"] == "running" and not takeover
            ):
                return None
            now = utc_now()
            done = conn.execute(
                tasks.update()
                .where(tasks.c.id == task_id, tasks.c.attempts == row["attempts"])
                .values(
                    state="running",
                    worker=worker,
                    attempts=row["attempts"] + 1,
                    started_at=now,
                    reserved_by=None,
                )
            )
            if done.rowcount != 1:
                return None  # another worker claimed it at the same moment
        claimed = self.task(task_id)
        return claimed if claimed is not None and claimed.worker == worker else None

    def set_run(self, task: TaskRow, run_id: str) -> None:
        with self._tx() as conn:
            conn.execute(
                tasks.update()
                .where(tasks.c.id == task.id, tasks.c.attempts == task.attempts)
                .values(run_id=run_id)
            )

    def finish(self, task: TaskRow, *, state: str, result: dict[str, Any]) -> bool:
        """End the task, fenced: only its current holder (same worker and attempt) may."""
        with self._tx() as conn:
            done = conn.execute(
                tasks.update()
                .where(
                    tasks.c.id == task.id,
                    tasks.c.worker == task.worker,
                    tasks.c.attempts == task.attempts,
                    tasks.c.state == "running",
                )
                .values(
                    state=state,
                    finished_at=utc_now(),
                    result=json.dumps(result, default=str),
                    run_id=result.get("run_id") or task.run_id,
                )
            )
        return bool(done.rowcount == 1)

    def requeue(self, task: TaskRow, *, why: str, holder: bool = False) -> bool:
        """Put a task back to ``queued`` (then publish it again); fenced by its attempts.

        ``holder``: the caller is the task's holder handing it back (a shutdown); otherwise
        a sweeper that found its holder gone."""
        with self._tx() as conn:
            query = tasks.update().where(
                tasks.c.id == task.id,
                tasks.c.attempts == task.attempts,
                tasks.c.state.in_(("running", "queued", "new")),
            )
            if holder:
                query = query.where(tasks.c.worker == task.worker)
            done = conn.execute(
                query.values(
                    state="queued",
                    reserved_by=None,
                    reserved_at=None,
                    result=json.dumps({"requeued": why}),
                    attempts=task.attempts + (0 if holder else 1),
                )
            )
        return bool(done.rowcount == 1)
