"""Prometheus metrics of one worker (``undertow worker --metrics-port``), read from the
ledger at scrape time, labelled with the worker's name:

    undertow_worker_up{worker}                      1 while it runs
    undertow_worker_concurrency{worker}             processes
    undertow_worker_running{worker,sync}            runs it executes now
    undertow_worker_tasks_total{worker,state}       tasks it finished (done, failed)
    undertow_worker_rows_total{worker,outcome}      rows of the runs it finished: sent,
                                                    succeeded, rejected, failed
    undertow_worker_heartbeat_age_seconds{worker}   since its last heartbeat in the store

The project-wide metrics stay on ``undertow serve``'s /metrics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from undertow.state.cluster import ClusterState
from undertow.state.records import utc_now

OUTCOMES = ("sent", "succeeded", "rejected", "failed")


class WorkerCollector(Collector):
    def __init__(self, cluster: ClusterState, worker: str, concurrency: int) -> None:
        self.cluster = cluster
        self.worker = worker
        self.concurrency = concurrency

    def collect(self) -> Iterator[Metric]:
        mine = [
            t
            for t in self.cluster.tasks()
            if t.worker is not None and t.worker.split("|", 1)[0] == self.worker
        ]
        up = GaugeMetricFamily("undertow_worker_up", "1 while the worker runs", labels=["worker"])
        up.add_metric([self.worker], 1.0)
        yield up
        conc = GaugeMetricFamily(
            "undertow_worker_concurrency", "processes of the worker", labels=["worker"]
        )
        conc.add_metric([self.worker], float(self.concurrency))
        yield conc
        running = GaugeMetricFamily(
            "undertow_worker_running", "runs the worker executes now", labels=["worker", "sync"]
        )
        for sync, n in Counter(t.sync for t in mine if t.state == "running").items():
            running.add_metric([self.worker, sync], float(n))
        yield running
        finished = CounterMetricFamily(
            "undertow_worker_tasks", "tasks the worker finished", labels=["worker", "state"]
        )
        for state, n in Counter(t.state for t in mine if t.final).items():
            finished.add_metric([self.worker, state], float(n))
        yield finished
        rows = CounterMetricFamily(
            "undertow_worker_rows", "rows of the runs the worker finished",
            labels=["worker", "outcome"],
        )  # fmt: skip
        totals: Counter[str] = Counter()
        for task in mine:
            if task.state == "done" and task.result:
                for outcome in OUTCOMES:
                    value = task.result.get(outcome)
                    if isinstance(value, int):
                        totals[outcome] += value
        for outcome in OUTCOMES:
            rows.add_metric([self.worker, outcome], float(totals[outcome]))
        yield rows
        age = GaugeMetricFamily(
            "undertow_worker_heartbeat_age_seconds",
            "seconds since the worker's last heartbeat in the state store",
            labels=["worker"],
        )
        for row in self.cluster.workers(ttl=utc_now() - utc_now()):
            if row.name == self.worker:
                age.add_metric([self.worker], (utc_now() - row.heartbeat_at).total_seconds())
        yield age


def worker_registry(cluster: ClusterState, worker: str, concurrency: int) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(cluster, worker, concurrency))
    return registry
