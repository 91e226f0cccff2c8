"""Leases: one leader among several ``undertow serve`` (the scheduler runs in one of them).

A lease whose holder sent no heartbeat for its TTL, or whose holder is a dead process on
this host, is taken over; the compare on the previous owner and heartbeat makes two
contenders agree on one winner."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from undertow.state.cluster.base import ClusterBase
from undertow.state.cluster.tables import leases
from undertow.state.locks import _pid_alive
from undertow.state.records import as_aware, utc_now


class Leases(ClusterBase):
    """The ``undertow_leases`` rows."""

    def acquire_lease(self, name: str, owner: str, *, ttl: timedelta, host: str, pid: int) -> bool:
        """Take or keep lease ``name`` for ``owner``; True while ``owner`` holds it.

        A lease whose holder sent no heartbeat for its TTL is taken over. The compare on the
        previous owner and heartbeat makes two contenders agree on one winner."""
        now = utc_now()
        seconds = max(1, int(ttl.total_seconds()))
        if self.lease(name) is None:
            try:
                with self._tx() as conn:
                    conn.execute(
                        leases.insert().values(
                            name=name,
                            owner=owner,
                            host=host,
                            pid=pid,
                            ttl_seconds=seconds,
                            acquired_at=now,
                            heartbeat_at=now,
                        )
                    )
                return True
            except sa.exc.IntegrityError:
                return False  # another contender inserted it first
        with self._tx() as conn:
            row = conn.execute(sa.select(leases).where(leases.c.name == name)).mappings().first()
            if row is None:
                return False  # released meanwhile: the next attempt inserts it
            beat = as_aware(row["heartbeat_at"]) or now
            if row["owner"] == owner:
                conn.execute(
                    leases.update()
                    .where(leases.c.name == name, leases.c.owner == owner)
                    .values(heartbeat_at=now)
                )
                return True
            dead = row["host"] == host and not _pid_alive(int(row["pid"]))
            if not dead and now - beat <= timedelta(seconds=int(row["ttl_seconds"])):
                return False
            done = conn.execute(
                leases.update()
                .where(
                    leases.c.name == name,
                    leases.c.owner == row["owner"],
                    leases.c.heartbeat_at == row["heartbeat_at"],
                )
                .values(
                    owner=owner,
                    host=host,
                    pid=pid,
                    ttl_seconds=seconds,
                    acquired_at=now,
                    heartbeat_at=now,
                )
            )
            return bool(done.rowcount == 1)

    def release_lease(self, name: str, owner: str) -> None:
        with self._tx() as conn:
            conn.execute(leases.delete().where(leases.c.name == name, leases.c.owner == owner))

    def lease(self, name: str) -> dict[str, Any] | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(leases).where(leases.c.name == name)).mappings().first()
        return dict(row) if row else None
