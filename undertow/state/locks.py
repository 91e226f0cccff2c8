"""Locks: one per sync, taken over when its holder died (on this host) or stopped sending
heartbeats for ``LOCK_TTL``.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import sqlalchemy as sa

from undertow.errors import SyncLockedError
from undertow.state.connection import StoreConnection
from undertow.state.records import LOCK_TTL, Lock, as_aware, utc_now
from undertow.state.schema import locks


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LockStore(StoreConnection):
    """The sync locks of the state store."""

    def acquire_lock(self, sync: str, *, run_id: str | None = None) -> Lock:
        """Take the sync's lock or raise SyncLockedError naming its holder.

        A lock held by a dead process on this host, or whose heartbeat is older than
        ``LOCK_TTL``, is taken over: a crashed run never blocks its sync for ever.
        """
        host = socket.gethostname()
        pid = os.getpid()
        owner = f"{host}:{pid}:{uuid.uuid4().hex[:8]}"
        now = utc_now()
        with self._tx() as conn:
            row = conn.execute(sa.select(locks).where(locks.c.sync == sync)).mappings().first()
            if row is None:
                try:
                    conn.execute(
                        locks.insert().values(
                            sync=sync,
                            owner=owner,
                            host=host,
                            pid=pid,
                            run_id=run_id,
                            acquired_at=now,
                            heartbeat_at=now,
                        )
                    )
                except sa.exc.IntegrityError as exc:
                    raise SyncLockedError(
                        f"sync {sync!r} is already running (another process took its lock "
                        "at the same moment)",
                        hint="wait for it to finish; `undertow status` shows running syncs",
                    ) from exc
                return Lock(sync=sync, owner=owner, store=self)
            heartbeat = as_aware(row["heartbeat_at"]) or now
            stale = now - heartbeat > LOCK_TTL
            dead = row["host"] == host and not _pid_alive(int(row["pid"]))
            if not (stale or dead):
                raise SyncLockedError(
                    f"sync {sync!r} is already running: process {row['pid']} on "
                    f"{row['host']} holds its lock since {as_aware(row['acquired_at'])}",
                    hint="wait for that run to finish (`undertow status`); a lock whose "
                    f"holder died is taken over at once on this host, after {int(LOCK_TTL.seconds)}s "
                    "elsewhere",
                )
            taken = conn.execute(
                locks.update()
                .where(locks.c.sync == sync, locks.c.owner == row["owner"])
                .values(
                    owner=owner,
                    host=host,
                    pid=pid,
                    run_id=run_id,
                    acquired_at=now,
                    heartbeat_at=now,
                )
            )
            if taken.rowcount != 1:
                raise SyncLockedError(f"sync {sync!r} is already running (lock just taken)")
        return Lock(sync=sync, owner=owner, store=self)

    def heartbeat(self, lock: Lock) -> None:
        with self._tx() as conn:
            conn.execute(
                locks.update()
                .where(locks.c.sync == lock.sync, locks.c.owner == lock.owner)
                .values(heartbeat_at=utc_now())
            )

    def release_lock(self, lock: Lock) -> None:
        with self._tx() as conn:
            conn.execute(
                locks.delete().where(locks.c.sync == lock.sync, locks.c.owner == lock.owner)
            )

    def held_locks(self) -> dict[str, dict[str, Any]]:
        """Locks held now; a lock whose holder died (or went silent) is left out."""
        host = socket.gethostname()
        now = utc_now()
        with self._tx() as conn:
            rows = conn.execute(sa.select(locks)).mappings().all()
        held = {}
        for r in rows:
            stale = now - (as_aware(r["heartbeat_at"]) or now) > LOCK_TTL
            dead = r["host"] == host and not _pid_alive(int(r["pid"]))
            if not (stale or dead):
                held[r["sync"]] = dict(r)
        return held
