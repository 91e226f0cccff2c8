"""Parts of a shared delivery (:mod:`undertow.pipeline.share`): a run's batches cut into
ranges that workers lease, deliver and checkpoint; every write of a part's holder is fenced
by its lease (owner and attempts)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from undertow.state.cluster.base import ClusterBase
from undertow.state.cluster.tables import part_data, parts, tasks
from undertow.state.locks import _pid_alive
from undertow.state.records import as_aware, utc_now

PART_STATES = ("new", "open", "taken", "done", "failed")
"""A part is ``new`` (its range is planned, its batches not mapped yet), ``open`` (mapped,
waiting for a worker), ``taken`` (leased by a worker: ``owner``, refreshed at
``heartbeat_at``, expired after ``ttl_seconds``), ``done`` (every batch checkpointed) or
``failed`` (a fatal delivery error: ``error``)."""


@dataclass
class PartRow:
    run_id: str
    part_no: int
    first_batch: int
    last_batch: int
    state: str
    owner: str | None
    worker: str | None
    attempts: int
    error: str | None = None
    heartbeat_at: datetime | None = None

    def batches(self) -> range:
        return range(self.first_batch, self.last_batch + 1)


def holder_dead(owner: str | None) -> bool:
    """Whether a holder ``name|host|pid`` is a dead process on this host (then its lease
    need not run out: its part is taken over at once)."""
    if not owner:
        return False
    _, _, rest = owner.partition("|")
    host, _, pid = rest.partition("|")
    return host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))


def _part(row: sa.RowMapping) -> PartRow:
    return PartRow(
        run_id=row["run_id"],
        part_no=int(row["part_no"]),
        first_batch=int(row["first_batch"]),
        last_batch=int(row["last_batch"]),
        state=row["state"],
        owner=row["owner"],
        worker=row["worker"],
        attempts=int(row["attempts"]),
        error=row.get("error"),
        heartbeat_at=as_aware(row.get("heartbeat_at")),
    )


class Parts(ClusterBase):
    """The ``undertow_parts`` and ``undertow_part_data`` rows."""

    def create_parts(self, run_id: str, ranges: list[tuple[int, int]]) -> bool:
        """Plan a run's parts as ``new`` (once: a resumed run keeps the parts it had);
        False when the run has parts already."""
        with self._tx() as conn:
            have = conn.execute(
                sa.select(sa.func.count()).select_from(parts).where(parts.c.run_id == run_id)
            ).scalar()
            if have:
                return False
            if ranges:
                conn.execute(
                    parts.insert(),
                    [
                        {
                            "run_id": run_id,
                            "part_no": i,
                            "first_batch": lo,
                            "last_batch": hi,
                            "state": "new",
                            "attempts": 0,
                        }
                        for i, (lo, hi) in enumerate(ranges)
                    ],
                )
        return True

    def open_part(self, run_id: str, part_no: int, body: bytes, *, batches: int, rows: int) -> None:
        """Store a ``new`` part's mapped batches and open it to the workers (one transaction:
        a part is open only with its data)."""
        with self._tx() as conn:
            conn.execute(
                part_data.delete().where(
                    part_data.c.run_id == run_id, part_data.c.part_no == part_no
                )
            )
            conn.execute(
                part_data.insert().values(
                    run_id=run_id, part_no=part_no, batches=batches, rows=rows, body=body
                )
            )
            conn.execute(
                parts.update()
                .where(parts.c.run_id == run_id, parts.c.part_no == part_no, parts.c.state == "new")
                .values(state="open")
            )

    def part_body(self, part: PartRow) -> bytes:
        with self._tx() as conn:
            body = conn.execute(
                sa.select(part_data.c.body).where(
                    part_data.c.run_id == part.run_id, part_data.c.part_no == part.part_no
                )
            ).scalar()
        if body is None:
            raise LookupError(f"part {part.part_no} of run {part.run_id} has no data")
        return bytes(body)

    def parts(self, run_id: str) -> list[PartRow]:
        with self._tx() as conn:
            rows = (
                conn.execute(
                    sa.select(parts).where(parts.c.run_id == run_id).order_by(parts.c.part_no)
                )
                .mappings()
                .all()
            )
        return [_part(r) for r in rows]

    def claim_part(
        self, run_id: str, *, owner: str, worker: str | None, ttl: timedelta
    ) -> PartRow | None:
        """Lease the next part nobody delivers: ``open``, or ``taken`` by a holder that is
        gone (silent for its TTL, or a dead process on this host). The compare on
        ``attempts`` makes two claimers of one part agree on one winner."""
        now = utc_now()
        with self._tx() as conn:
            rows = (
                conn.execute(
                    sa.select(parts)
                    .where(parts.c.run_id == run_id, parts.c.state.in_(("open", "taken")))
                    .order_by(parts.c.part_no)
                )
                .mappings()
                .all()
            )
            for r in rows:
                if r["state"] == "taken":
                    beat = as_aware(r["heartbeat_at"]) or now
                    expired = now - beat > timedelta(seconds=int(r["ttl_seconds"] or 60))
                    if not expired and not holder_dead(r["owner"]):
                        continue
                done = conn.execute(
                    parts.update()
                    .where(
                        parts.c.run_id == run_id,
                        parts.c.part_no == r["part_no"],
                        parts.c.attempts == r["attempts"],
                        parts.c.state.in_(("open", "taken")),
                    )
                    .values(
                        state="taken",
                        owner=owner,
                        worker=worker,
                        ttl_seconds=max(1, int(ttl.total_seconds())),
                        heartbeat_at=now,
                        attempts=r["attempts"] + 1,
                    )
                )
                if done.rowcount == 1:
                    claimed = dict(r)
                    claimed.update(state="taken", owner=owner, worker=worker, heartbeat_at=now)
                    claimed["attempts"] = r["attempts"] + 1
                    return _part(claimed)  # type: ignore[arg-type]
        return None

    def _held(self, part: PartRow) -> Any:
        return sa.and_(
            parts.c.run_id == part.run_id,
            parts.c.part_no == part.part_no,
            parts.c.owner == part.owner,
            parts.c.attempts == part.attempts,
            parts.c.state == "taken",
        )

    def fence_part(self, conn: sa.Connection, part: PartRow) -> None:
        """In the caller's transaction: refresh the part's lease and check it is still
        ``part``'s holder's (:class:`~undertow.errors.LockLostError` otherwise, rolling the
        transaction back: a holder whose part was taken over records nothing more)."""
        done = conn.execute(parts.update().where(self._held(part)).values(heartbeat_at=utc_now()))
        if done.rowcount != 1:
            from undertow.errors import LockLostError

            raise LockLostError(
                f"part {part.part_no} of run {part.run_id} was taken over by another worker "
                "(this one was silent longer than its lease); it records nothing more",
                hint="the worker that took the part over delivers what has no checkpoint",
            )

    def part_heartbeat(self, part: PartRow) -> bool:
        with self._tx() as conn:
            done = conn.execute(
                parts.update().where(self._held(part)).values(heartbeat_at=utc_now())
            )
        return bool(done.rowcount == 1)

    def finish_part(self, part: PartRow, *, error: str | None = None) -> bool:
        """Every batch of the part is checkpointed (``done``), or a fatal error stopped it
        (``failed`` with ``error``); fenced by the lease."""
        with self._tx() as conn:
            done = conn.execute(
                parts.update()
                .where(self._held(part))
                .values(state="failed" if error else "done", finished_at=utc_now(), error=error)
            )
        return bool(done.rowcount == 1)

    def release_part(self, part: PartRow) -> None:
        """Give a part back unfinished (a shutdown): the next claimer takes it at once."""
        with self._tx() as conn:
            conn.execute(
                parts.update()
                .where(self._held(part))
                .values(state="open", owner=None, worker=None, heartbeat_at=None)
            )

    def end_parts(self, run_id: str) -> None:
        """The run is over: drop its parts' data, and its helper tasks still in the ledger
        (a helper that wakes up finds nothing to claim)."""
        with self._tx() as conn:
            conn.execute(part_data.delete().where(part_data.c.run_id == run_id))
            conn.execute(
                tasks.update()
                .where(
                    tasks.c.run_id == run_id,
                    tasks.c.kind == "part",
                    tasks.c.state.in_(("new", "queued", "running")),
                )
                .values(state="dropped", finished_at=utc_now())
            )
