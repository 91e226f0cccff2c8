"""Workers and their heartbeats (``undertow worker``, the sweeper's view of who is alive)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from undertow.state.cluster.base import ClusterBase
from undertow.state.cluster.tables import workers
from undertow.state.records import as_aware, utc_now


@dataclass
class WorkerRow:
    name: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    version: str
    state: str
    metrics_url: str | None
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    alive: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "queues": self.queues,
            "concurrency": self.concurrency,
            "version": self.version,
            "state": self.state if self.alive or self.state == "stopped" else "lost",
            "alive": self.alive,
            "metrics_url": self.metrics_url,
            "started_at": self.started_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat(),
            "stopped_at": self.stopped_at.isoformat() if self.stopped_at else None,
        }


class Workers(ClusterBase):
    """The ``undertow_workers`` rows."""

    def register_worker(
        self,
        name: str,
        *,
        host: str,
        pid: int,
        queues: list[str],
        concurrency: int,
        version: str,
        metrics_url: str | None = None,
    ) -> None:
        now = utc_now()
        values = {
            "host": host,
            "pid": pid,
            "queues": json.dumps(queues),
            "concurrency": concurrency,
            "version": version,
            "state": "running",
            "metrics_url": metrics_url,
            "started_at": now,
            "heartbeat_at": now,
            "stopped_at": None,
        }
        with self._tx() as conn:
            done = conn.execute(workers.update().where(workers.c.name == name).values(**values))
            if done.rowcount == 0:
                conn.execute(workers.insert().values(name=name, **values))

    def worker_heartbeat(self, name: str, *, state: str | None = None) -> None:
        values: dict[str, Any] = {"heartbeat_at": utc_now()}
        if state is not None:
            values["state"] = state
        with self._tx() as conn:
            conn.execute(workers.update().where(workers.c.name == name).values(**values))

    def worker_stopped(self, name: str) -> None:
        now = utc_now()
        with self._tx() as conn:
            conn.execute(
                workers.update()
                .where(workers.c.name == name)
                .values(state="stopped", stopped_at=now, heartbeat_at=now)
            )

    def workers(self, *, ttl: timedelta, include_stopped: bool = True) -> list[WorkerRow]:
        """Every worker seen, newest first; ``alive``: heartbeat within ``ttl``, not stopped."""
        now = utc_now()
        with self._tx() as conn:
            rows = (
                conn.execute(sa.select(workers).order_by(workers.c.started_at.desc()))
                .mappings()
                .all()
            )
        out = []
        for r in rows:
            beat = as_aware(r["heartbeat_at"]) or now
            alive = r["state"] != "stopped" and now - beat <= ttl
            if not include_stopped and r["state"] == "stopped":
                continue
            out.append(
                WorkerRow(
                    name=r["name"],
                    host=r["host"],
                    pid=int(r["pid"]),
                    queues=list(json.loads(r["queues"])),
                    concurrency=int(r["concurrency"]),
                    version=r["version"],
                    state=r["state"],
                    metrics_url=r["metrics_url"],
                    started_at=as_aware(r["started_at"]) or now,
                    heartbeat_at=beat,
                    stopped_at=as_aware(r["stopped_at"]),
                    alive=alive,
                )
            )
        return out
