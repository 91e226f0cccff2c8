"""One scheduler: several ``undertow serve`` may run for availability; only the holder of
the ``scheduler`` lease in the state store starts or queues runs.

The leader renews the lease on every scheduler pass; a leader that dies (or stalls) stops
renewing, and after the lease's TTL (three passes, at least 15 s) the next ``serve`` to
look takes it over. The others keep serving the API. Leadership alone does not make a run
happen once: a due run is queued under an id derived from what made it due (the schedule
tick, the trigger ids, the unfinished run), so a new leader that queues it again queues
nothing (:func:`due_task_id`), and the sync's lock refuses a second runner anyway.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import TYPE_CHECKING

from undertow.state.cluster import ClusterState

if TYPE_CHECKING:
    from undertow.orchestration.service import Due
    from undertow.project import Project

LEASE = "scheduler"


class Leadership:
    def __init__(
        self,
        cluster: ClusterState,
        *,
        ttl: timedelta,
        name: str = LEASE,
        owner: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.ttl = ttl
        self.name = name
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        """One owner per process: a scheduler restarted in the same process leads at once;
        a lease whose holder died on this host is taken over at once too."""
        self.leading = False

    def check(self) -> bool:
        """Take or renew the lease; True while this process leads."""
        self.leading = self.cluster.acquire_lease(
            self.name, self.owner, ttl=self.ttl, host=socket.gethostname(), pid=os.getpid()
        )
        return self.leading

    def release(self) -> None:
        if self.leading:
            self.cluster.release_lease(self.name, self.owner)
            self.leading = False

    def holder(self) -> str | None:
        row = self.cluster.lease(self.name)
        return str(row["owner"]) if row else None


def due_task_id(project: Project, due: Due) -> str:
    """A ledger id that names what made ``due`` due: the same due run gets the same id."""
    name = due.sync
    if due.trigger_ids:
        key = "t" + "-".join(str(i) for i in sorted(due.trigger_ids))
    elif due.reason == "resume":
        run = project.store.unfinished_run(name)
        key = f"{run.id}-{run.attempt}" if run is not None else "none"
    else:
        row = project.orchestration.state.schedule(name, project.orchestration.now())
        at = row.next_run_at if due.reason == "schedule" else row.last_started_at
        key = at.isoformat() if at is not None else "first"
    return f"{name}:{due.reason[:40]}:{key}"
