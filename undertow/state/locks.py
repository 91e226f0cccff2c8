"""Locks: one per sync, taken over when its holder died (on this host) or stopped sending
heartbeats for its TTL (the holder's own, stored with the lock; ``LOCK_TTL`` by default).

A lock is also a fence: a run's checkpoints and status updates are written only while it
still holds its lock (:meth:`LockStore.fence`, in the same transaction), so a run whose lock
was taken over (it was silent longer than its TTL, and another worker resumed it) writes
nothing more, even if it wakes up and carries on.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from undertow.errors import LockLostError, SyncLockedError
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


def _ttl(row: Any) -> timedelta:
    seconds = row.get("ttl_seconds")
    return timedelta(seconds=int(seconds)) if seconds else LOCK_TTL


def _alive(row: Any, now: datetime, host: str) -> bool:
    """Whether the lock's holder still counts: a fresh heartbeat, and not dead on this host."""
    heartbeat = as_aware(row["heartbeat_at"]) or now
    if now - heartbeat > _ttl(row):
        return False
    return not (row["host"] == host and not _pid_alive(int(row["pid"])))


_REFRESH = (
    locks.update()
    .where(locks.c.sync == sa.bindparam("lock_sync"), locks.c.owner == sa.bindparam("lock_owner"))
    .values(heartbeat_at=sa.bindparam("beat"))
)
"""Built once: every checkpoint runs it (building it each time was half a checkpoint's CPU)."""


def fence(conn: sa.Connection, lock: Lock, *, raise_lost: bool = True) -> bool:
    """In the caller's transaction: refresh ``lock`` and check it is still ours.

    Raises :class:`~undertow.errors.LockLostError` (rolling the transaction back) when
    another process took the lock over; with ``raise_lost=False`` returns False instead.
    """
    done = conn.execute(
        _REFRESH, {"lock_sync": lock.sync, "lock_owner": lock.owner, "beat": utc_now()}
    )
    if done.rowcount == 1:
        return True
    if raise_lost:
        raise LockLostError(
            f"sync {lock.sync!r}: this run's lock was taken over by another process (its "
            "heartbeat stopped for longer than its TTL); it stops and records nothing more",
            hint="the process that took the lock resumes the run from its checkpoints; "
            "check why this one stalled (CPU starvation, a paused VM, a slow state store)",
        )
    return False


class LockStore(StoreConnection):
    """The sync locks of the state store."""

    def acquire_lock(
        self,
        sync: str,
        *,
        run_id: str | None = None,
        ttl: timedelta | None = None,
        worker: str | None = None,
    ) -> Lock:
        """Take the sync's lock or raise SyncLockedError naming its holder.

        A lock held by a dead process on this host, or whose heartbeat is older than
        ``LOCK_TTL``, is taken over: a crashed run never blocks its sync for ever.
        """
        host = socket.gethostname()
        pid = os.getpid()
        owner = f"{host}:{pid}:{uuid.uuid4().hex[:8]}"
        now = utc_now()
        ttl_seconds = int(ttl.total_seconds()) if ttl is not None else None
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
                            ttl_seconds=ttl_seconds,
                            worker=worker,
                        )
                    )
                except sa.exc.IntegrityError as exc:
                    raise SyncLockedError(
                        f"sync {sync!r} is already running (another process took its lock "
                        "at the same moment)",
                        hint="wait for it to finish; `undertow status` shows running syncs",
                    ) from exc
                return Lock(sync=sync, owner=owner, store=self)
            if _alive(row, now, host):
                where = f" (worker {row['worker']})" if row.get("worker") else ""
                raise SyncLockedError(
                    f"sync {sync!r} is already running: process {row['pid']} on "
                    f"{row['host']}{where} holds its lock since {as_aware(row['acquired_at'])}",
                    hint="wait for that run to finish (`undertow status`); a lock whose "
                    "holder died is taken over at once on this host, after "
                    f"{int(_ttl(row).total_seconds())}s without a heartbeat elsewhere",
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
                    ttl_seconds=ttl_seconds,
                    worker=worker,
                )
            )
            if taken.rowcount != 1:
                raise SyncLockedError(f"sync {sync!r} is already running (lock just taken)")
        return Lock(sync=sync, owner=owner, store=self)

    def heartbeat(self, lock: Lock) -> bool:
        """Refresh the lock; False when it is no longer ours (it was taken over)."""
        with self._tx() as conn:
            return fence(conn, lock, raise_lost=False)

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
        return {r["sync"]: dict(r) for r in rows if _alive(r, now, host)}
