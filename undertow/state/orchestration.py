"""Orchestration state: schedules (paused, next run), queued triggers, upstream signal
events and alert states. Tables created by migration ``m0003_orchestration``.

Everything the scheduler needs to survive a restart lives here: a trigger queued over HTTP
is a row until a run takes it; a paused sync stays paused; an alert that fired is not sent
again after a restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from undertow.state.store import StateStore

metadata = sa.MetaData()

schedules = sa.Table(
    "undertow_schedules",
    metadata,
    sa.Column("sync", sa.String(200), primary_key=True),
    sa.Column("paused", sa.Boolean, nullable=False, default=False),
    sa.Column("next_run_at", sa.DateTime(timezone=True)),
    sa.Column("last_started_at", sa.DateTime(timezone=True)),
    sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

triggers = sa.Table(
    "undertow_triggers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sync", sa.String(200), nullable=False, index=True),
    sa.Column("full_resync", sa.Boolean, nullable=False, default=False),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("taken_at", sa.DateTime(timezone=True)),
)

signals = sa.Table(
    "undertow_signals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(400), nullable=False, index=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("name", "at", name="uq_undertow_signals_name_at"),
)

alert_states = sa.Table(
    "undertow_alert_states",
    metadata,
    sa.Column("key", sa.String(400), primary_key=True),
    sa.Column("sync", sa.String(200), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

TABLES = (schedules, triggers, signals, alert_states)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class ScheduleRow:
    sync: str
    paused: bool
    next_run_at: datetime | None
    first_seen_at: datetime
    last_started_at: datetime | None = None


@dataclass
class QueuedTrigger:
    id: int
    sync: str
    full: bool
    reason: str
    requested_at: datetime


@dataclass
class SignalEvent:
    name: str
    status: str
    at: datetime
    detail: dict[str, Any]


@dataclass
class AlertState:
    key: str
    sync: str
    state: str
    since: datetime
    detail: str | None


class OrchestrationState:
    """Reader and writer of the orchestration tables, on the project's state store."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def _tx(self) -> Any:
        return self.store._tx()

    # -- schedules --------------------------------------------------------------------------

    def schedule(self, sync: str, now: datetime) -> ScheduleRow:
        """The sync's row, created (first seen now) when missing."""
        with self._tx() as conn:
            row = conn.execute(sa.select(schedules).where(schedules.c.sync == sync)).mappings()
            found = row.first()
            if found is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            schedules.insert().values(
                                sync=sync, paused=False, first_seen_at=now, updated_at=now
                            )
                        )
                except sa.exc.IntegrityError:
                    pass
                found = (
                    conn.execute(sa.select(schedules).where(schedules.c.sync == sync))
                    .mappings()
                    .one()
                )
        return ScheduleRow(
            sync=sync,
            paused=bool(found["paused"]),
            next_run_at=_aware(found["next_run_at"]),
            first_seen_at=_aware(found["first_seen_at"]) or now,
            last_started_at=_aware(found["last_started_at"]),
        )

    def set_next_run(self, sync: str, at: datetime | None, now: datetime) -> None:
        self.schedule(sync, now)
        with self._tx() as conn:
            conn.execute(
                schedules.update()
                .where(schedules.c.sync == sync)
                .values(next_run_at=at, updated_at=now)
            )

    def set_started(self, sync: str, now: datetime) -> None:
        self.schedule(sync, now)
        with self._tx() as conn:
            conn.execute(
                schedules.update()
                .where(schedules.c.sync == sync)
                .values(last_started_at=now, updated_at=now)
            )

    def set_paused(self, sync: str, paused: bool, now: datetime) -> None:
        self.schedule(sync, now)
        with self._tx() as conn:
            conn.execute(
                schedules.update()
                .where(schedules.c.sync == sync)
                .values(paused=paused, updated_at=now)
            )

    # -- triggers ---------------------------------------------------------------------------

    def enqueue(self, sync: str, *, full: bool, reason: str, now: datetime) -> int:
        with self._tx() as conn:
            result = conn.execute(
                triggers.insert().values(
                    sync=sync, full_resync=full, reason=reason[:200], requested_at=now
                )
            )
            key = result.inserted_primary_key
            return int(key[0]) if key else 0

    def pending(self) -> list[QueuedTrigger]:
        with self._tx() as conn:
            rows = (
                conn.execute(
                    sa.select(triggers).where(triggers.c.taken_at.is_(None)).order_by(triggers.c.id)
                )
                .mappings()
                .all()
            )
        return [
            QueuedTrigger(
                id=r["id"],
                sync=r["sync"],
                full=bool(r["full_resync"]),
                reason=r["reason"],
                requested_at=_aware(r["requested_at"]) or datetime.now(UTC),
            )
            for r in rows
        ]

    def take(self, ids: list[int], now: datetime) -> None:
        if not ids:
            return
        with self._tx() as conn:
            conn.execute(triggers.update().where(triggers.c.id.in_(ids)).values(taken_at=now))

    # -- signals ----------------------------------------------------------------------------

    def record_signal(
        self, name: str, *, status: str, at: datetime, detail: dict[str, Any], now: datetime
    ) -> bool:
        """Record one upstream event; False when the same (name, at) was already recorded."""
        with self._tx() as conn:
            exists = conn.execute(
                sa.select(signals.c.id).where(signals.c.name == name, signals.c.at == at)
            ).first()
            if exists is not None:
                return False
            conn.execute(
                signals.insert().values(
                    name=name[:400],
                    status=status,
                    at=at,
                    detail=json.dumps(detail, default=str),
                    received_at=now,
                )
            )
        return True

    def last_signal(self, name: str, *, success_only: bool) -> SignalEvent | None:
        query = sa.select(signals).where(signals.c.name == name)
        if success_only:
            query = query.where(signals.c.status == "success")
        with self._tx() as conn:
            row = conn.execute(query.order_by(signals.c.at.desc()).limit(1)).mappings().first()
        if row is None:
            return None
        return SignalEvent(
            name=row["name"],
            status=row["status"],
            at=_aware(row["at"]) or datetime.now(UTC),
            detail=json.loads(row["detail"] or "{}"),
        )

    # -- alert states -----------------------------------------------------------------------

    def alert_state(self, key: str) -> AlertState | None:
        with self._tx() as conn:
            row = (
                conn.execute(sa.select(alert_states).where(alert_states.c.key == key))
                .mappings()
                .first()
            )
        if row is None:
            return None
        return AlertState(
            key=row["key"],
            sync=row["sync"],
            state=row["state"],
            since=_aware(row["since"]) or datetime.now(UTC),
            detail=row["detail"],
        )

    def set_alert_state(
        self, key: str, *, sync: str, state: str, since: datetime, detail: str | None
    ) -> None:
        values = {
            "sync": sync,
            "state": state,
            "since": since,
            "detail": detail,
            "updated_at": since,
        }
        with self._tx() as conn:
            done = conn.execute(
                alert_states.update().where(alert_states.c.key == key).values(**values)
            )
            if done.rowcount == 0:
                conn.execute(alert_states.insert().values(key=key, **values))


@dataclass
class FinishedRun:
    sync: str
    status: str
    counts: dict[str, int]
    duration_s: float | None


def finished_runs(store: StateStore) -> list[FinishedRun]:
    """Every finished run's sync, status, counts and duration (for /metrics)."""
    from undertow.state.schema import runs

    query = sa.select(
        runs.c.sync, runs.c.status, runs.c.counts, runs.c.created_at, runs.c.finished_at
    ).where(runs.c.finished_at.is_not(None))
    with store._tx() as conn:
        rows = conn.execute(query).all()
    out = []
    for sync, status, counts, created, finished in rows:
        start, end = _aware(created), _aware(finished)
        out.append(
            FinishedRun(
                sync=sync,
                status=status,
                counts=json.loads(counts or "{}"),
                duration_s=(end - start).total_seconds() if start and end else None,
            )
        )
    return out
