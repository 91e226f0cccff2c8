"""The orchestration of one project: what is due, what it waits for, lag and SLA, what
happens before and after each run. The :class:`~undertow.project.Project` facade owns one
``Orchestration`` and is the only caller; the scheduler and the web app go through it.

Times come from one :class:`~undertow.orchestration.schedule.Clock` (tests move a manual
clock), and every event a decision depends on (a sync finished, dbt rebuilt a model, a
loader called the webhook) is a row in the state store, so a restarted server decides
exactly as the old one would have.
"""

from __future__ import annotations

import logging
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from undertow.errors import UndertowError
from undertow.orchestration.alerts import AlertManager, open_no_redirect
from undertow.orchestration.config import ScheduleSpec, Upstream, format_duration
from undertow.orchestration.freshness import check_freshness
from undertow.orchestration.schedule import Clock, SystemClock, describe, next_after
from undertow.orchestration.signals import (
    DbtProject,
    resolve_watch,
    sync_signal,
    webhook_signal,
)
from undertow.redact import redact, register_secret
from undertow.results import ScheduleOverview
from undertow.state.orchestration import OrchestrationState, ScheduleRow
from undertow.state.store import RunRecord, RunStatus, StateStore

if TYPE_CHECKING:
    from undertow.config.models import ProjectConfig, SyncConfig
    from undertow.pipeline.run import SyncContext

log = logging.getLogger("undertow.orchestration")

STALE = "stale data, nothing sent: "


@dataclass
class Due:
    """A sync the scheduler should start now, and why."""

    sync: str
    full: bool
    reason: str
    trigger_ids: list[int] = field(default_factory=list)
    advance: bool = False
    """True for a schedule tick: its next due time moves on when the run starts."""


@dataclass
class Readiness:
    ok: bool
    waiting: list[str] = field(default_factory=list)


def _status_word(status: RunStatus) -> str:
    return "success" if status == RunStatus.SUCCEEDED else str(status)


class Orchestration:
    def __init__(
        self,
        *,
        config: ProjectConfig,
        root: Path,
        store: StateStore,
        model_sql: dict[str, str],
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.root = root
        self.store = store
        self.model_sql = model_sql
        self.clock: Clock = clock or SystemClock()
        self.state = OrchestrationState(store)
        self.alerts = AlertManager(
            config.alerts, self.state, project=config.name, link_base=config.server.url
        )
        self._dbt: dict[str, DbtProject] = {}
        self.waiting: dict[str, list[str]] = {}
        """What each sync due but for its ``after:`` parents waited for at the last pass."""
        self._watched: dict[tuple[str, int], list[str]] = {}
        for secret in self._secrets():
            register_secret(secret)

    def _secrets(self) -> list[str]:
        found = []
        if self.config.server.token is not None:
            found.append(self.config.server.token.get_secret_value())
        for hook in self.config.webhooks.values():
            if hook.token is not None:
                found.append(hook.token.get_secret_value())
        for channel in self.config.alerts.channels.values():
            for name in ("url", "secret", "password"):
                value = getattr(channel, name, None)
                if value is not None and hasattr(value, "get_secret_value"):
                    found.append(value.get_secret_value())
        return found

    def now(self) -> datetime:
        return self.clock.now()

    # -- before and after a run -------------------------------------------------------------

    def before_run(self, ctx: SyncContext, *, trigger: str) -> RunRecord | None:
        """Mark the start; run the freshness check. A stale model returns its skipped run."""
        now = self.now()
        self.state.set_started(ctx.name, now)
        freshness = ctx.sync.freshness
        if freshness is None or self.store.unfinished_run(ctx.name) is not None:
            return None  # a resumed run finishes the plan it made when the data was checked
        try:
            result = check_freshness(
                ctx.source,
                sync=ctx.name,
                model=ctx.model_name,
                model_sql=ctx.sql,
                freshness=freshness,
                now=now,
            )
        except UndertowError as exc:
            run = self.store.create_run(ctx.name, trigger=trigger)
            self.store.update_run(run, status=RunStatus.FAILED, error=str(exc))
            return run
        for index, rule in self.alerts.rules_for(ctx.name, "freshness"):
            self.alerts.update(
                index,
                rule,
                ctx.name,
                firing=not result.ok,
                now=now,
                detail=result.message,
                command=f"undertow runs {ctx.name}",
            )
        if result.ok:
            return None
        run = self.store.create_run(ctx.name, trigger=trigger)
        status = RunStatus.SKIPPED if freshness.on_stale == "skip" else RunStatus.FAILED
        self.store.update_run(run, status=status, error=STALE + result.message)
        return run

    def after_run(self, record: RunRecord) -> list[str]:
        """Record the outcome, update alerts, call ``then`` webhooks; return downstream syncs."""
        now = self.now()
        name = record.sync
        sync = self.config.syncs[name]
        row = self.state.schedule(name, now)
        detail = {
            "run_id": record.id,
            "started_at": (row.last_started_at or now).isoformat(),
        }
        at = now
        while not self.state.record_signal(
            sync_signal(name), status=_status_word(record.status), at=at, detail=detail, now=now
        ):
            at += timedelta(microseconds=1)  # two runs at the same instant of a manual clock
        stale = (record.error or "").startswith(STALE)
        if not stale:
            self._run_alerts(record, now)
        if record.status != RunStatus.SUCCEEDED:
            return []
        downstream = []
        for action in sync.then:
            if action.sync is not None:
                downstream.append(action.sync)
            elif action.webhook is not None:
                self._call(
                    action.webhook.url, action.webhook.method, action.webhook.headers, record
                )
        return downstream

    def _call(self, url: str, method: str, headers: dict[str, str], record: RunRecord) -> None:
        body = orjson.dumps({"event": "sync.succeeded", **record.as_dict()}, default=str)
        request = urllib.request.Request(url, data=None if method == "GET" else body, method=method)
        request.add_header("Content-Type", "application/json")
        for key, value in headers.items():
            request.add_header(key, value)
        try:
            open_no_redirect(request, 30)  # a 3xx is a failure, never followed
        except Exception as exc:
            log.warning("`then` webhook of sync %s failed: %s", record.sync, redact(f"{exc}"))

    def _run_alerts(self, record: RunRecord, now: datetime) -> None:
        name = record.sync
        finished = record.status in (RunStatus.SUCCEEDED, RunStatus.FAILED)
        if not finished:
            return
        counts = record.counts
        errors_cmd = f"undertow errors {record.id}"
        for index, rule in self.alerts.rules_for(name, "run_failed"):
            self.alerts.update(
                index,
                rule,
                name,
                firing=record.status == RunStatus.FAILED,
                now=now,
                detail=(f"run {record.id} failed: {record.error}")
                if record.status == RunStatus.FAILED
                else f"run {record.id} succeeded",
                command=f"undertow runs {name}",
                run_id=record.id,
            )
        for index, rule in self.alerts.rules_for(name, "rejected_ratio"):
            planned = counts.get("planned", 0) + counts.get("invalid", 0)
            ratio = counts.get("rejected", 0) / planned if planned else 0.0
            self.alerts.update(
                index,
                rule,
                name,
                firing=ratio > rule.limit,
                now=now,
                detail=f"run {record.id} rejected {counts.get('rejected', 0):,} of "
                f"{planned:,} row(s) ({ratio:.1%}; threshold {rule.limit:.1%})",
                command=errors_cmd,
                run_id=record.id,
                extra={"ratio": ratio},
            )
        for index, rule in self.alerts.rules_for(name, "slow_run"):
            took = record.duration_s or 0.0
            limit = rule.slower_than.total_seconds() if rule.slower_than else 0.0
            self.alerts.update(
                index,
                rule,
                name,
                firing=took > limit,
                now=now,
                detail=f"run {record.id} took {format_duration(took)} "
                f"(alert above {format_duration(limit)})",
                command=f"undertow runs {name}",
                run_id=record.id,
                extra={"duration_s": took},
            )
        for index, rule in self.alerts.rules_for(name, "row_count"):
            if record.status != RunStatus.SUCCEEDED:
                continue
            previous = [
                r.counts.get("extracted", 0)
                for r in self.store.list_runs(name, limit=rule.window + 20)
                if r.id != record.id and r.status == RunStatus.SUCCEEDED
            ][: rule.window]
            if len(previous) < 2:
                continue
            average = sum(previous) / len(previous)
            rows = counts.get("extracted", 0)
            deviation = abs(rows - average) / average if average else (1.0 if rows else 0.0)
            self.alerts.update(
                index,
                rule,
                name,
                firing=deviation > rule.limit,
                now=now,
                detail=f"run {record.id} read {rows:,} row(s); the average of the last "
                f"{len(previous)} runs is {average:,.0f} ({deviation:.0%} off; "
                f"threshold {rule.limit:.0%})",
                command=f"undertow runs {name}",
                run_id=record.id,
                extra={"rows": rows, "average": average},
            )

    # -- lag and SLA ------------------------------------------------------------------------

    def lag(self, name: str, now: datetime | None = None) -> tuple[timedelta, datetime | None]:
        """How far the destination may be behind: time since the start of the last success
        (the data it sent was read then). Never succeeded: since the sync was first seen."""
        now = now or self.now()
        last = self.state.last_signal(sync_signal(name), success_only=True)
        if last is not None:
            started = last.detail.get("started_at")
            base = datetime.fromisoformat(started) if isinstance(started, str) else last.at
            return now - base, base
        row = self.state.schedule(name, now)
        return now - row.first_seen_at, None

    def sla_state(self, name: str, now: datetime | None = None) -> str:
        sla = self.config.syncs[name].sla
        if sla is None:
            return "none"
        lag, _ = self.lag(name, now)
        return "breached" if lag > sla else "ok"

    def check_slas(self) -> None:
        now = self.now()
        for name, sync in self.config.syncs.items():
            if sync.sla is None:
                continue
            lag, base = self.lag(name, now)
            breached = lag > sync.sla
            since = (
                f"last successful data from {base.isoformat(timespec='seconds')}"
                if base
                else ("never synced successfully")
            )
            for index, rule in self.alerts.rules_for(name, "sla"):
                self.alerts.update(
                    index,
                    rule,
                    name,
                    firing=breached,
                    now=now,
                    detail=f"lag {format_duration(lag)} against an SLA of "
                    f"{format_duration(sync.sla)} ({since})",
                    command="undertow status",
                    extra={"lag_s": lag.total_seconds(), "sla_s": sync.sla.total_seconds()},
                )

    # -- upstreams --------------------------------------------------------------------------

    def dbt(self, item: Upstream, sync: SyncConfig) -> DbtProject:
        assert item.dbt is not None
        watch = resolve_watch(item.dbt, self.config.models[sync.model])
        project = DbtProject(self.root, watch)
        key = f"{project.key}|{watch.target_path}|{','.join(watch.models)}"
        return self._dbt.setdefault(key, project)

    def poll_signals(self) -> int:
        """Read every watched dbt project's run_results.json; return how many events are new."""
        now = self.now()
        new = 0
        seen: set[str] = set()
        for sync in self.config.syncs.values():
            for item in sync.after:
                if item.dbt is None:
                    continue
                try:
                    project = self.dbt(item, sync)
                except UndertowError:
                    continue  # readiness reports it for the sync
                if project.key in seen:
                    continue
                seen.add(project.key)
                new += project.poll(self.state, now)
        return new

    def record_webhook(self, name: str, detail: dict[str, Any]) -> datetime:
        now = self.now()
        at = now
        while not self.state.record_signal(
            webhook_signal(name), status="success", at=at, detail=detail, now=now
        ):
            at += timedelta(microseconds=1)
        return at

    def _upstream_events(
        self, name: str, sync: SyncConfig, item: Upstream
    ) -> list[tuple[str, datetime | None]]:
        success = item.on == "success"
        if item.sync is not None:
            ev = self.state.last_signal(sync_signal(item.sync), success_only=success)
            return [(item.label, ev.at if ev else None)]
        if item.webhook is not None:
            ev = self.state.last_signal(webhook_signal(item.webhook), success_only=False)
            return [(item.label, ev.at if ev else None)]
        project = self.dbt(item, sync)
        ref = self.config.models[sync.model].dbt
        models = project.watched(name, self.model_sql[sync.model], ref)
        out: list[tuple[str, datetime | None]] = []
        for model in models:
            ev = self.state.last_signal(project.signal_name(model.unique_id), success_only=success)
            out.append((f"dbt model {model.name}", ev.at if ev else None))
        return out

    def readiness(self, name: str, now: datetime | None = None) -> Readiness:
        """Whether every ``after:`` upstream completed since this sync's last start."""
        now = now or self.now()
        sync = self.config.syncs[name]
        if not sync.after:
            return Readiness(ok=True)
        row = self.state.schedule(name, now)
        reference = row.last_started_at
        waiting = []
        for item in sync.after:
            try:
                events = self._upstream_events(name, sync, item)
            except UndertowError as exc:
                waiting.append(f"{item.label}: {exc}")
                continue
            for label, at in events:
                if at is None:
                    waiting.append(f"{label}: never completed")
                elif reference is not None and at <= reference:
                    waiting.append(f"{label}: not completed since the last run")
                elif item.within is not None and now - at > item.within:
                    waiting.append(
                        f"{label}: completed {format_duration(now - at)} ago, more than "
                        f"`within: {format_duration(item.within)}`"
                    )
        return Readiness(ok=not waiting, waiting=waiting)

    # -- what is due ------------------------------------------------------------------------

    def _first_due(self, schedule: ScheduleSpec, row: ScheduleRow, now: datetime) -> datetime:
        if schedule.every is not None:
            if row.last_started_at is not None:
                return row.last_started_at + schedule.every
            return now
        return next_after(schedule, now, None)

    def next_run(self, name: str, now: datetime | None = None) -> datetime | None:
        now = now or self.now()
        sync = self.config.syncs[name]
        if sync.schedule is None:
            return None
        row = self.state.schedule(name, now)
        if row.next_run_at is None:
            nxt = self._first_due(sync.schedule, row, now)
            self.state.set_next_run(name, nxt, now)
            return nxt
        return row.next_run_at

    def due(self, running: set[str]) -> list[Due]:
        now = self.now()
        self.waiting = {}
        busy = set(running) | set(self.store.held_locks())
        out: dict[str, Due] = {}
        stale_ids = []
        for queued in self.state.pending():
            if queued.sync not in self.config.syncs:
                stale_ids.append(queued.id)  # the sync was removed from the project
                continue
            if queued.sync in busy:
                continue  # it stays queued until the current run ends
            item = out.setdefault(queued.sync, Due(queued.sync, False, queued.reason))
            item.full = item.full or queued.full
            item.trigger_ids.append(queued.id)
        self.state.take(stale_ids, now)
        for name, sync in self.config.syncs.items():
            if name in out or name in busy:
                continue
            if self.store.unfinished_run(name) is not None:
                out[name] = Due(name, False, "resume")
                continue
            row = self.state.schedule(name, now)
            if row.paused:
                continue
            if sync.schedule is not None:
                nxt = self.next_run(name, now)
                if nxt is None or now < nxt:
                    continue
                if sync.after and not self._ready(name, now):
                    continue  # the tick stays due until the upstreams have completed
                out[name] = Due(name, False, "schedule", advance=True)
            elif sync.after and self._ready(name, now):
                out[name] = Due(name, False, "after")
        return list(out.values())

    def _ready(self, name: str, now: datetime) -> bool:
        """Readiness of ``name``; what it waits for is kept in :attr:`waiting` (the log)."""
        ready = self.readiness(name, now)
        if not ready.ok:
            self.waiting[name] = ready.waiting
        return ready.ok

    def launched(self, due: Due) -> None:
        """The scheduler started ``due``: take its queued triggers, move its schedule on."""
        now = self.now()
        self.state.take(due.trigger_ids, now)
        self.state.set_started(due.sync, now)
        sync = self.config.syncs[due.sync]
        if due.advance and sync.schedule is not None:
            row = self.state.schedule(due.sync, now)
            self.state.set_next_run(due.sync, next_after(sync.schedule, now, row.next_run_at), now)

    # -- control ----------------------------------------------------------------------------

    def enqueue(self, name: str, *, full: bool, reason: str) -> int:
        return self.state.enqueue(name, full=full, reason=reason, now=self.now())

    def set_paused(self, name: str, paused: bool) -> None:
        self.state.set_paused(name, paused, self.now())

    def overview(self, name: str, now: datetime | None = None) -> ScheduleOverview:
        """Schedule, next run, lag and SLA state of one sync (for `status` and the API)."""
        now = now or self.now()
        sync = self.config.syncs[name]
        row = self.state.schedule(name, now)
        lag, base = self.lag(name, now)
        nxt = self.next_run(name, now)
        ready = self.readiness(name, now) if sync.after else Readiness(ok=True)
        return {
            "schedule": describe(sync.schedule),
            "after": [item.label for item in sync.after],
            "waiting_for": ready.waiting,
            "paused": row.paused,
            "next_run_at": nxt.isoformat() if nxt and not row.paused else None,
            "lag_s": round(lag.total_seconds(), 3),
            "last_success_data_at": base.isoformat() if base else None,
            "sla_s": sync.sla.total_seconds() if sync.sla else None,
            "sla_state": self.sla_state(name, now),
        }
