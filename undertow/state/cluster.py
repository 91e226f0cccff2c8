"""Cluster state: workers and their heartbeats, the task ledger, leases, shared parts of a
run's delivery. Tables created by migration ``m0006_cluster``.

The broker (Celery on Redis or RabbitMQ) carries *messages*; this ledger is the truth about
*tasks*. A task is a row before its message is published, so publishing twice (two
schedulers, a sweeper and the broker both redelivering) is harmless: the first worker to
:meth:`ClusterState.claim` the row runs it, the others drop their copy. Every write that
only the task's current holder may make is fenced by ``(worker, attempts)``.

Task states::

    new -> queued -> running -> done | failed | dropped
       ^         |
       +---------+  handed back (a worker's shutdown), or lost (its worker died):
                    published again under the same id, resumed from its checkpoints
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from undertow.state.locks import _pid_alive
from undertow.state.records import as_aware, utc_now
from undertow.state.store import StateStore

metadata = sa.MetaData()

workers = sa.Table(
    "undertow_workers",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("queues", sa.Text, nullable=False),
    sa.Column("concurrency", sa.Integer, nullable=False),
    sa.Column("version", sa.String(40), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("metrics_url", sa.String(400)),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("stopped_at", sa.DateTime(timezone=True)),
)

tasks = sa.Table(
    "undertow_tasks",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("sync", sa.String(200), nullable=False, index=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("full_resync", sa.Boolean, nullable=False),
    sa.Column("trigger", sa.String(40), nullable=False),
    sa.Column("state", sa.String(20), nullable=False, index=True),
    sa.Column("run_id", sa.String(40)),
    sa.Column("part_no", sa.Integer),
    sa.Column("worker", sa.String(200)),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reserved_by", sa.String(200)),
    sa.Column("reserved_at", sa.DateTime(timezone=True)),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("result", sa.Text),
)

leases = sa.Table(
    "undertow_leases",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("ttl_seconds", sa.Integer, nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
)

parts = sa.Table(
    "undertow_parts",
    metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("part_no", sa.Integer, primary_key=True),
    sa.Column("first_batch", sa.Integer, nullable=False),
    sa.Column("last_batch", sa.Integer, nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("owner", sa.String(200)),
    sa.Column("worker", sa.String(200)),
    sa.Column("ttl_seconds", sa.Integer),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("error", sa.Text),  # m0007: why the part stopped (state ``failed``)
)

part_data = sa.Table(
    "undertow_part_data",
    metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("part_no", sa.Integer, primary_key=True),
    sa.Column("batches", sa.Integer, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
)

TABLES = (workers, tasks, leases, parts, part_data)

PART_STATES = ("new", "open", "taken", "done", "failed")
"""A part is ``new`` (its range is planned, its batches not mapped yet), ``open`` (mapped,
waiting for a worker), ``taken`` (leased by a worker: ``owner``, refreshed at
``heartbeat_at``, expired after ``ttl_seconds``), ``done`` (every batch checkpointed) or
``failed`` (a fatal delivery error: ``error``)."""

FINAL_TASK_STATES = ("done", "failed", "dropped")


@dataclass
class TaskRow:
    id: str
    sync: str
    kind: str
    full: bool
    trigger: str
    state: str
    run_id: str | None
    part_no: int | None
    worker: str | None
    attempts: int
    enqueued_at: datetime
    reserved_by: str | None
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None

    @property
    def final(self) -> bool:
        return self.state in FINAL_TASK_STATES


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


def _task(row: sa.RowMapping) -> TaskRow:
    return TaskRow(
        id=row["id"],
        sync=row["sync"],
        kind=row["kind"],
        full=bool(row["full_resync"]),
        trigger=row["trigger"],
        state=row["state"],
        run_id=row["run_id"],
        part_no=row["part_no"],
        worker=row["worker"],
        attempts=int(row["attempts"]),
        enqueued_at=as_aware(row["enqueued_at"]) or utc_now(),
        reserved_by=row["reserved_by"],
        started_at=as_aware(row["started_at"]),
        finished_at=as_aware(row["finished_at"]),
        result=json.loads(row["result"]) if row["result"] else None,
    )


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


class ClusterState:
    """The cluster's rows in the project's state store (see the module docstring)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def _tx(self) -> Any:
        return self.store._tx()

    # -- workers ----------------------------------------------------------------------------

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

    # -- the task ledger --------------------------------------------------------------------

    def add_task(
        self,
        task_id: str,
        *,
        sync: str,
        kind: str = "run",
        full: bool = False,
        trigger: str = "manual",
        run_id: str | None = None,
        part_no: int | None = None,
    ) -> bool:
        """Record a task before its message is published; False if that id exists already
        (the same due run enqueued twice: publish nothing)."""
        try:
            with self._tx() as conn:
                conn.execute(
                    tasks.insert().values(
                        id=task_id,
                        sync=sync,
                        kind=kind,
                        full_resync=full,
                        trigger=trigger[:40],
                        state="new",
                        run_id=run_id,
                        part_no=part_no,
                        attempts=0,
                        enqueued_at=utc_now(),
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    def mark_published(self, task_id: str) -> None:
        """Its message is on the broker (a ``new`` task whose publish failed is published
        again by the sweeper)."""
        with self._tx() as conn:
            conn.execute(
                tasks.update()
                .where(tasks.c.id == task_id, tasks.c.state == "new")
                .values(state="queued")
            )

    def task(self, task_id: str) -> TaskRow | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).mappings().first()
        return _task(row) if row else None

    def tasks(
        self, ids: list[str] | None = None, *, states: tuple[str, ...] | None = None
    ) -> list[TaskRow]:
        query = sa.select(tasks).order_by(tasks.c.enqueued_at)
        if ids is not None:
            query = query.where(tasks.c.id.in_(ids))
        if states is not None:
            query = query.where(tasks.c.state.in_(states))
        with self._tx() as conn:
            return [_task(r) for r in conn.execute(query).mappings().all()]

    def reserve(self, task_id: str, worker: str) -> None:
        """A worker received the task's message (it may wait there for a free process)."""
        with self._tx() as conn:
            conn.execute(
                tasks.update()
                .where(tasks.c.id == task_id, tasks.c.state.in_(("new", "queued")))
                .values(reserved_by=worker, reserved_at=utc_now())
            )

    def claim(self, task_id: str, worker: str, *, takeover: bool) -> TaskRow | None:
        """Take the task to run it: a queued task, or (``takeover``: the caller checked that
        its holder is gone) a running one. None when someone else has it or it is over."""
        with self._tx() as conn:
            row = conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).mappings().first()
            if row is None:
                return None
            if row["state"] not in ("new", "queued", "running") or (
                row["state"] == "running" and not takeover
            ):
                return None
            now = utc_now()
            done = conn.execute(
                tasks.update()
                .where(tasks.c.id == task_id, tasks.c.attempts == row["attempts"])
                .values(
                    state="running",
                    worker=worker,
                    attempts=row["attempts"] + 1,
                    started_at=now,
                    reserved_by=None,
                )
            )
            if done.rowcount != 1:
                return None  # another worker claimed it at the same moment
        claimed = self.task(task_id)
        return claimed if claimed is not None and claimed.worker == worker else None

    def set_run(self, task: TaskRow, run_id: str) -> None:
        with self._tx() as conn:
            conn.execute(
                tasks.update()
                .where(tasks.c.id == task.id, tasks.c.attempts == task.attempts)
                .values(run_id=run_id)
            )

    def finish(self, task: TaskRow, *, state: str, result: dict[str, Any]) -> bool:
        """End the task, fenced: only its current holder (same worker and attempt) may."""
        with self._tx() as conn:
            done = conn.execute(
                tasks.update()
                .where(
                    tasks.c.id == task.id,
                    tasks.c.worker == task.worker,
                    tasks.c.attempts == task.attempts,
                    tasks.c.state == "running",
                )
                .values(
                    state=state,
                    finished_at=utc_now(),
                    result=json.dumps(result, default=str),
                    run_id=result.get("run_id") or task.run_id,
                )
            )
        return bool(done.rowcount == 1)

    def requeue(self, task: TaskRow, *, why: str, holder: bool = False) -> bool:
        """Put a task back to ``queued`` (then publish it again); fenced by its attempts.

        ``holder``: the caller is the task's holder handing it back (a shutdown); otherwise
        a sweeper that found its holder gone."""
        with self._tx() as conn:
            query = tasks.update().where(
                tasks.c.id == task.id,
                tasks.c.attempts == task.attempts,
                tasks.c.state.in_(("running", "queued", "new")),
            )
            if holder:
                query = query.where(tasks.c.worker == task.worker)
            done = conn.execute(
                query.values(
                    state="queued",
                    reserved_by=None,
                    reserved_at=None,
                    result=json.dumps({"requeued": why}),
                    attempts=task.attempts + (0 if holder else 1),
                )
            )
        return bool(done.rowcount == 1)

    # -- leases (one leader among several `serve`) -------------------------------------------

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

    # -- parts of a shared delivery (pipeline/share.py) --------------------------------------

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
