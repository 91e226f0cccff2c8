"""The live debugger's store: the last requests each sync's destination made, and answers.

One row per HTTP exchange (``undertow_debug_exchanges``, migration ``m0004``), written by
:class:`undertow.debugger.DebugRecorder` from the capture hook, already redacted, trimmed
and (``debugger: {payloads: masked}``) masked. Each sync keeps its newest ``keep`` rows and
none older than ``days``: :meth:`DebugLog.add` prunes in the same transaction.

A record key is found by its JSON spelling in the ``keys`` list (``"42"`` never matches
``"142"``), so "why did row 42 fail?" is one indexed query per sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from undertow.state.store import StateStore

metadata = sa.MetaData()

exchanges = sa.Table(
    "undertow_debug_exchanges",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sync", sa.String(200), nullable=False),
    sa.Column("run_id", sa.String(40)),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("method", sa.String(16), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("status", sa.Integer),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("request_id", sa.String(200)),
    sa.Column("error", sa.Text),
    sa.Column("batch_no", sa.Integer),
    sa.Column("operation", sa.String(20)),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("key_count", sa.Integer, nullable=False),
    sa.Column("keys", sa.Text, nullable=False),
    sa.Column("request_headers", sa.Text, nullable=False),
    sa.Column("request_body", sa.Text),
    sa.Column("response_headers", sa.Text, nullable=False),
    sa.Column("response_body", sa.Text),
    sa.Column("masked", sa.Boolean, nullable=False, default=False),
    sa.Index("ix_undertow_debug_sync_id", "sync", "id"),
)

TABLES = (exchanges,)

STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error")
"""What the status filter takes: a class of answers, or ``error`` (no answer at all)."""


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class DebugEntry:
    """One stored exchange, as the API and the UI show it."""

    id: int
    sync: str
    run_id: str | None
    at: datetime
    method: str
    url: str
    status: int | None
    duration_ms: float
    request_id: str | None
    error: str | None
    batch: int | None
    operation: str | None
    attempt: int
    keys: list[str]
    key_count: int
    request_headers: dict[str, str] = field(default_factory=dict)
    request_body: str | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: str | None = None
    masked: bool = False

    @property
    def status_class(self) -> str:
        return "error" if self.status is None else f"{self.status // 100}xx"

    def as_dict(self, *, bodies: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "sync": self.sync,
            "run_id": self.run_id,
            "at": self.at.isoformat(),
            "method": self.method,
            "url": self.url,
            "status": self.status,
            "status_class": self.status_class,
            "duration_ms": round(self.duration_ms, 1),
            "request_id": self.request_id,
            "error": self.error,
            "batch": self.batch,
            "operation": self.operation,
            "attempt": self.attempt,
            "key_count": self.key_count,
            "keys": self.keys,
            "masked": self.masked,
        }
        if bodies:
            out.update(
                request_headers=self.request_headers,
                request_body=self.request_body,
                response_headers=self.response_headers,
                response_body=self.response_body,
            )
        return out


class DebugLog:
    """Reads and writes the debugger's rows in a project's state store."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def add(self, rows: Sequence[dict[str, Any]], *, keep: dict[str, tuple[int, float]]) -> None:
        """Insert ``rows`` (column -> value) and prune each of their syncs to
        ``keep[sync] = (newest rows kept, days kept)``, in one transaction."""
        if not rows:
            return
        now = datetime.now(UTC)
        with self.store._tx() as conn:
            conn.execute(exchanges.insert(), list(rows))
            for sync in {r["sync"] for r in rows}:
                count, days = keep.get(sync, (100, 7.0))
                newest = (
                    sa.select(exchanges.c.id)
                    .where(exchanges.c.sync == sync)
                    .order_by(exchanges.c.id.desc())
                    .limit(count)
                    .subquery()
                )
                oldest_kept = sa.select(sa.func.min(newest.c.id)).scalar_subquery()
                conn.execute(
                    exchanges.delete().where(
                        exchanges.c.sync == sync,
                        sa.or_(
                            exchanges.c.id < oldest_kept,
                            exchanges.c.at < now - timedelta(days=days),
                        ),
                    )
                )

    def entries(
        self,
        sync: str,
        *,
        status: str | None = None,
        key: str | None = None,
        run_id: str | None = None,
        after_id: int | None = None,
        limit: int = 100,
        bodies: bool = False,
    ) -> list[DebugEntry]:
        """The sync's exchanges, newest first (oldest first with ``after_id``: what is new)."""
        columns = list(exchanges.c)
        if not bodies:
            heavy = ("request_headers", "request_body", "response_headers", "response_body")
            columns = [c for c in columns if c.name not in heavy]
        query = sa.select(*columns).where(exchanges.c.sync == sync)
        if status:
            query = query.where(_status_filter(status))
        if key:
            query = query.where(
                exchanges.c["keys"].contains(orjson.dumps(key).decode(), autoescape=True)
            )
        if run_id:
            query = query.where(exchanges.c.run_id == run_id)
        if after_id is not None:
            query = query.where(exchanges.c.id > after_id).order_by(exchanges.c.id.asc())
        else:
            query = query.order_by(exchanges.c.id.desc())
        with self.store._tx() as conn:
            rows = conn.execute(query.limit(limit)).mappings().all()
        return [_entry(r) for r in rows]

    def entry(self, entry_id: int) -> DebugEntry | None:
        with self.store._tx() as conn:
            row = (
                conn.execute(sa.select(exchanges).where(exchanges.c.id == entry_id))
                .mappings()
                .first()
            )
        return _entry(row) if row else None

    def last_id(self, sync: str) -> int:
        with self.store._tx() as conn:
            value = conn.execute(
                sa.select(sa.func.max(exchanges.c.id)).where(exchanges.c.sync == sync)
            ).scalar()
        return int(value or 0)


def _status_filter(status: str) -> sa.ColumnElement[bool]:
    if status == "error":
        return exchanges.c.status.is_(None)
    if status in STATUS_CLASSES:
        low = int(status[0]) * 100
        return sa.and_(exchanges.c.status >= low, exchanges.c.status < low + 100)
    if status.isdigit():
        return exchanges.c.status == int(status)
    raise ValueError(
        f"unknown status filter {status!r}: use a status code (429) or one of "
        + ", ".join(STATUS_CLASSES)
    )


def _entry(row: Any) -> DebugEntry:
    def loads(name: str) -> Any:
        value = row.get(name)
        return orjson.loads(value) if value else {}

    return DebugEntry(
        id=int(row["id"]),
        sync=row["sync"],
        run_id=row["run_id"],
        at=_aware(row["at"]),
        method=row["method"],
        url=row["url"],
        status=row["status"],
        duration_ms=float(row["duration_ms"]),
        request_id=row["request_id"],
        error=row["error"],
        batch=row["batch_no"],
        operation=row["operation"],
        attempt=int(row["attempt"]),
        keys=list(orjson.loads(row["keys"])),
        key_count=int(row["key_count"]),
        request_headers=loads("request_headers"),
        request_body=row.get("request_body"),
        response_headers=loads("response_headers"),
        response_body=row.get("response_body"),
        masked=bool(row["masked"]),
    )
