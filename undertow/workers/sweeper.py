"""Pickup: every worker (and the leading ``serve``) looks every ``sweep_every`` for tasks
whose holder is gone, and publishes them again.

* ``running`` whose holder is gone (its process died on this host, or its worker sent no
  heartbeat for ``lock_ttl``) and whose sync's lock has expired too: back to ``queued`` and
  published; the next worker resumes the run from its checkpoints.
* ``queued`` and received by a worker that is gone (a message in a dead worker's prefetch,
  which Redis would return only after its visibility timeout): published again.
* ``new`` for longer than ``sweep_every`` (publishing failed, the broker was down): published.

So a run whose worker died is resumed within ``lock_ttl + sweep_every`` of the worker's last
heartbeat, plus the time a free worker takes to start it (20 s + 5 s by default: under 30 s
while a worker is free). Several sweepers may find the same task: the ledger's compare on
``attempts`` lets exactly one of them publish it.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from undertow.state.cluster import ClusterState
from undertow.state.records import utc_now
from undertow.workers.tasks import Publish, holder_gone

log = logging.getLogger("undertow.sweeper")


def sweep(
    cluster: ClusterState, *, ttl: timedelta, every: timedelta, publish: Publish
) -> list[str]:
    """One pass; return the ids published again."""
    workers = {w.name: w for w in cluster.workers(ttl=ttl)}
    now = utc_now()
    again = []
    locked: set[str] | None = None
    for task in cluster.tasks(states=("new", "queued", "running")):
        if task.kind != "run":
            continue  # a shared delivery's part: the run's coordinator finishes what is left
        why = None
        if task.state == "running" and holder_gone(task.worker, workers):
            if locked is None:
                locked = set(cluster.store.held_locks())
            if task.sync in locked:
                continue  # its run's lock has not expired yet (or someone else runs the sync)
            why = f"its holder {task.worker} is gone"
        elif task.state == "queued" and task.reserved_by and holder_gone(task.reserved_by, workers):
            why = f"the worker that received it ({task.reserved_by}) is gone"
        elif task.state == "new" and now - task.enqueued_at > every:
            why = "its message was never published"
        if why is None:
            continue
        if task.state == "new":
            publish(task.id)
            cluster.mark_published(task.id)
            again.append(task.id)
        elif cluster.requeue(task, why=why):
            log.warning("task %s (sync %s): %s; publishing it again", task.id, task.sync, why)
            publish(task.id)
            cluster.mark_published(task.id)
            again.append(task.id)
    return again


class Sweeper:
    """:func:`sweep` every ``every`` in a thread until :meth:`stop`."""

    def __init__(
        self, cluster: ClusterState, *, ttl: timedelta, every: timedelta, publish: Publish
    ) -> None:
        self.cluster = cluster
        self.ttl = ttl
        self.every = every
        self.publish = publish
        self.published: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="undertow-sweeper", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every.total_seconds()):
            try:
                self.published += sweep(
                    self.cluster, ttl=self.ttl, every=self.every, publish=self.publish
                )
            except Exception:  # the state store or the broker blinked: next pass
                log.exception("sweep failed")

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
