"""Prometheus metrics, read from the state store at scrape time.

Counters are totals over the run history kept in the state store, so they survive restarts
and agree between several ``serve`` processes on one store (use ``max`` not ``sum`` across
them). Gauges are computed from the project's status.

    undertow_runs_total{sync,status}              finished runs
    undertow_rows_total{sync,outcome}             rows by outcome: extracted, sent,
                                                  succeeded, rejected, failed
    undertow_run_duration_seconds{sync}           histogram of run durations
    undertow_sync_lag_seconds{sync}               time since the data of the last success
    undertow_sync_sla_seconds{sync}               the SLA (only syncs that have one)
    undertow_sync_sla_breached{sync}              1 while the SLA is breached
    undertow_sync_running{sync}, undertow_sync_paused{sync}
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from undertow.state.orchestration import finished_runs

if TYPE_CHECKING:
    from undertow.project import Project

BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
OUTCOMES = ("extracted", "sent", "succeeded", "rejected", "failed")


class ProjectCollector(Collector):
    def __init__(self, project: Project) -> None:
        self.project = project

    def collect(self) -> Iterator[Metric]:
        runs_total = CounterMetricFamily(
            "undertow_runs", "Finished runs by sync and status.", labels=["sync", "status"]
        )
        rows_total = CounterMetricFamily(
            "undertow_rows", "Rows by sync and outcome.", labels=["sync", "outcome"]
        )
        by_status: dict[tuple[str, str], int] = defaultdict(int)
        rows: dict[tuple[str, str], int] = defaultdict(int)
        durations: dict[str, list[float]] = defaultdict(list)
        for run in finished_runs(self.project.store):
            by_status[(run.sync, run.status)] += 1
            for outcome in OUTCOMES:
                rows[(run.sync, outcome)] += int(run.counts.get(outcome, 0))
            if run.duration_s is not None and run.status != "skipped":
                durations[run.sync].append(run.duration_s)
        for (sync, status), count in sorted(by_status.items()):
            runs_total.add_metric([sync, status], count)
        for (sync, outcome), count in sorted(rows.items()):
            rows_total.add_metric([sync, outcome], count)
        yield runs_total
        yield rows_total
        histogram = HistogramMetricFamily(
            "undertow_run_duration_seconds", "Run durations.", labels=["sync"]
        )
        for sync, values in sorted(durations.items()):
            buckets = [(str(b), sum(1 for v in values if v <= b)) for b in BUCKETS]
            buckets.append(("+Inf", len(values)))
            histogram.add_metric([sync], buckets, sum(values))
        yield histogram
        lag = GaugeMetricFamily(
            "undertow_sync_lag_seconds",
            "Seconds since the start of the last successful run (the age of the data the "
            "destination holds).",
            labels=["sync"],
        )
        sla = GaugeMetricFamily("undertow_sync_sla_seconds", "The sync's SLA.", labels=["sync"])
        breached = GaugeMetricFamily(
            "undertow_sync_sla_breached", "1 while the SLA is breached.", labels=["sync"]
        )
        running = GaugeMetricFamily(
            "undertow_sync_running", "1 while a run is in progress.", labels=["sync"]
        )
        paused = GaugeMetricFamily(
            "undertow_sync_paused", "1 while the sync is paused.", labels=["sync"]
        )
        for row in self.project.status():
            name = row["sync"]
            lag.add_metric([name], float(row["lag_s"]))
            if row["sla_s"] is not None:
                sla.add_metric([name], float(row["sla_s"]))
                breached.add_metric([name], 1.0 if row["sla_state"] == "breached" else 0.0)
            running.add_metric([name], 1.0 if row["running"] else 0.0)
            paused.add_metric([name], 1.0 if row["paused"] else 0.0)
        yield from (lag, sla, breached, running, paused)


def registry_for(project: Project) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProjectCollector(project))
    return registry
