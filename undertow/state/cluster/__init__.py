"""Cluster state: workers and their heartbeats, the task ledger, leases, shared parts of a
run's delivery. Tables created by migration ``m0006_cluster``.

The broker (Celery on Redis or RabbitMQ) carries *messages*; this ledger is the truth about
*tasks*. A task is a row before its message is published, so publishing twice (two
schedulers, a sweeper and the broker both redelivering) is harmless: the first worker to
:meth:`ClusterState.claim` the row runs it, the others drop their copy. Every write that
only the task's current holder may make is fenced by ``(worker, attempts)``.

Task states::

    new -> queued -> running -> done | failed | dropped
       ^         |
       +---------+  handed back (a worker's shutdown), or lost (its worker died):
                    published again under the same id, resumed from its checkpoints

The rows' code is split by table: :mod:`.heartbeats` (workers), :mod:`.ledger` (tasks),
:mod:`.leadership` (leases) and :mod:`.sharing` (parts); :class:`ClusterState` is all four
on one store.
"""

from __future__ import annotations

from undertow.state.cluster.heartbeats import WorkerRow, Workers
from undertow.state.cluster.leadership import Leases
from undertow.state.cluster.ledger import FINAL_TASK_STATES, TaskRow, Tasks
from undertow.state.cluster.sharing import PART_STATES, PartRow, Parts, holder_dead
from undertow.state.cluster.tables import TABLES, leases, metadata, part_data, parts, tasks, workers

__all__ = [
    "FINAL_TASK_STATES",
    "PART_STATES",
    "TABLES",
    "ClusterState",
    "PartRow",
    "TaskRow",
    "WorkerRow",
    "holder_dead",
    "leases",
    "metadata",
    "part_data",
    "parts",
    "tasks",
    "workers",
]


class ClusterState(Workers, Tasks, Leases, Parts):
    """The cluster's rows in the project's state store (see the module docstring)."""
