"""The distributing half of the :class:`~undertow.project.Project` facade: workers, the
task queue (``executor: {type: celery}``) and a run's delivery shared among workers.

A run in a cluster project (a worker's or a laptop's) beats and expires on the cluster's
clock (``executor.heartbeat``, ``executor.lock_ttl``), so that a dead one is picked up within
the bound it promises. :class:`Project` inherits :class:`Distribution`, so callers still use
one facade object; the machinery lives in :mod:`undertow.workers`,
:mod:`undertow.state.cluster` and :mod:`undertow.pipeline.share`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from undertow.errors import UndertowError
from undertow.pipeline.halt import Halt
from undertow.pipeline.run import SyncContext, SyncRun
from undertow.state.store import RunRecord, StateStore

if TYPE_CHECKING:
    from undertow.config.models import ProjectConfig, SyncConfig
    from undertow.debugger import DebugRecorder
    from undertow.workers.executor import QueueExecutor

__all__ = ["Distribution"]


class Distribution:
    """Mixed into :class:`~undertow.project.Project` (which provides the attributes below)."""

    if TYPE_CHECKING:
        config: ProjectConfig

        @property
        def store(self) -> StateStore: ...

        @property
        def debugger(self) -> DebugRecorder: ...

        def sync(self, name: str) -> SyncConfig: ...

        def context(self, name: str) -> SyncContext: ...

        @property
        def executor(self) -> QueueExecutor: ...

    def workers(self) -> list[dict[str, Any]]:
        """Every worker seen (``undertow worker``), newest first: alive, draining, lost or
        stopped, its last heartbeat, and the runs it executes now (sync, since when)."""
        from undertow.state.cluster import ClusterState

        cluster = ClusterState(self.store)
        running = cluster.tasks(states=("running",))
        out = []
        for worker in cluster.workers(ttl=self.config.executor.lock_ttl):
            row = worker.as_dict()
            row["runs"] = [
                {
                    "sync": t.sync,
                    "task": t.id,
                    "since": t.started_at.isoformat() if t.started_at else None,
                    "attempt": t.attempts,
                }
                for t in running
                if (t.worker or "").split("|", 1)[0] == worker.name
            ]
            out.append(row)
        return out

    def share_budgets(self) -> None:
        """With ``executor.rate_budget`` (or a Redis broker), every request of this process
        draws from the budgets in Redis that every worker shares; else from in-process ones."""
        executor = self.config.executor
        if executor.budget_url is not None:
            from undertow.workers.budget import install

            install(executor.budget_url, prefix=executor.prefix)

    def _cluster_settings(self, sync_run: SyncRun, worker: str | None) -> None:
        """In a cluster project every run (a worker's or a laptop's) beats and expires on the
        cluster's clock, so that a dead one is picked up within the bound it promises."""
        executor = self.config.executor
        sync_run.worker = worker
        if executor.queued:
            sync_run.heartbeat_seconds = executor.heartbeat.total_seconds()
            sync_run.lock_ttl = executor.lock_ttl
            if worker is not None and executor.delivery_workers > 1:
                from undertow.pipeline.share import Sharing

                sync_run.sharing = Sharing(
                    workers=executor.delivery_workers,
                    owner=worker,
                    ttl=executor.lock_ttl,
                    heartbeat=executor.heartbeat.total_seconds(),
                    publish=functools.partial(self._queue_helpers, sync_run.ctx.name),
                )

    def _queue_helpers(self, sync: str, run_id: str, attempt: int, count: int) -> None:
        """Queue ``count`` helper tasks for a run that shares its delivery."""
        cluster = self.executor.cluster
        for i in range(count):
            task_id = f"{sync}:{run_id}:part:{attempt}:{i}"
            if cluster.add_task(task_id, sync=sync, kind="part", trigger="share", run_id=run_id):
                self.executor.publish(task_id)

    def help_deliver(self, name: str, run_id: str, *, halt: Halt, worker: str) -> dict[str, Any]:
        """A worker's helper task: deliver parts of run ``run_id`` of sync ``name`` (see
        ``pipeline/share.py``) until none is left to claim."""
        from undertow.pipeline.share import help_deliver

        self.sync(name)
        self.share_budgets()
        executor = self.config.executor
        ctx = self.context(name)
        try:
            with self.debugger.recording():
                return help_deliver(
                    ctx,
                    self.store,
                    run_id,
                    owner=worker,
                    ttl=executor.lock_ttl,
                    heartbeat=executor.heartbeat.total_seconds(),
                    halt=halt,
                )
        finally:
            ctx.source.close()

    def enqueue(
        self, names: list[str], *, full: bool = False, trigger: str = "manual"
    ) -> list[str]:
        """Queue a run of each sync for the workers; return the task ids (``run --queue``)."""
        for name in names:
            self.sync(name)
        ids = []
        for name in names:
            task_id = self.executor.submit(name, full=full, trigger=trigger)
            assert task_id is not None  # a fresh id is never taken
            ids.append(task_id)
        return ids

    def wait_queued(
        self, ids: list[str], *, timeout: float | None = None
    ) -> list[RunRecord | UndertowError]:
        """Wait for queued tasks; each one's run, or the error that ended it."""
        from undertow.workers.outcome import outcome_of

        return [outcome_of(self.store, task) for task in self.executor.wait(ids, timeout=timeout)]
