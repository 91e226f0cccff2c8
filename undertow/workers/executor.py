"""Where runs happen: in the calling process (no ``executor:``), or queued to Celery workers.

:class:`QueueExecutor` is what ``undertow run --queue`` and ``undertow serve`` use with
``executor: {type: celery}``: it writes the task to the ledger first, then publishes its
message, and waits on the ledger (never on a result backend) for the outcome.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from undertow.errors import UndertowError
from undertow.state.cluster import ClusterState, TaskRow
from undertow.workers.app import make_app, publish

if TYPE_CHECKING:
    from celery import Celery

    from undertow.project import Project


class QueueExecutor:
    def __init__(self, project: Project, *, app: Celery | None = None) -> None:
        config = project.config.executor
        if not config.queued:
            raise UndertowError(
                "this project runs syncs in-process: it has no `executor: {type: celery}`",
                hint="add `executor: {type: celery, broker: redis://...}` to undertow.yml "
                "(docs/deployment.md), or run without --queue",
            )
        self.project = project
        self.config = config
        self.cluster = ClusterState(project.store)
        self.app = app or make_app(project.config.name, config)

    def publish(self, task_id: str) -> None:
        publish(self.app, self.project.config.name, self.config.queue, task_id)
        self.cluster.mark_published(task_id)

    def submit(
        self, sync: str, *, full: bool = False, trigger: str = "manual", task_id: str | None = None
    ) -> str | None:
        """Queue a run of ``sync``; return its task id, or None when a task with that id
        exists already (a due run enqueued twice is queued once)."""
        task_id = task_id or f"{sync}:{trigger}:{uuid.uuid4().hex[:12]}"
        if not self.cluster.add_task(task_id, sync=sync, full=full, trigger=trigger):
            return None
        self.publish(task_id)
        return task_id

    def busy(self) -> set[str]:
        """Syncs with a run task not yet over (the scheduler queues nothing more for them)."""
        return {
            t.sync
            for t in self.cluster.tasks(states=("new", "queued", "running"))
            if t.kind == "run"
        }

    def wait(
        self,
        ids: list[str],
        *,
        timeout: float | None = None,
        poll: float = 0.25,
        on_wait: Callable[[list[TaskRow]], None] | None = None,
    ) -> list[TaskRow]:
        """Wait until every task is over; return them in the order of ``ids``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rows = {t.id: t for t in self.cluster.tasks(ids)}
            pending = [rows[i] for i in ids if i in rows and not rows[i].final]
            if not pending:
                return [rows[i] for i in ids if i in rows]
            if on_wait is not None:
                on_wait(pending)
            if deadline is not None and time.monotonic() > deadline:
                names = ", ".join(f"{t.sync} ({t.state})" for t in pending)
                raise UndertowError(
                    f"queued runs not finished after {timeout:g}s: {names}",
                    hint="they stay queued and run when a worker is free: start one with "
                    "`undertow worker`; `undertow status` shows the workers",
                )
            time.sleep(poll)
