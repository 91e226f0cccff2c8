"""The state store: runs as a persisted state machine, batch checkpoints, row errors, locks.

SQLAlchemy Core over SQLite (default, one file in the project's state folder) or PostgreSQL
(``state: postgresql://...``) for teams. The schema moves only through numbered migrations
(``undertow/state/migrations``), applied on open.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from undertow.errors import StateError, SyncLockedError
from undertow.redact import redact_url
from undertow.state import migrations
from undertow.state.schema import batches, locks, row_errors, row_status, runs, schema_version

LOCK_TTL = timedelta(seconds=60)
"""A lock whose holder has not sent a heartbeat for this long is considered abandoned."""


class RunStatus(StrEnum):
    PENDING = "pending"
    EXTRACTING = "extracting"
    DIFFING = "diffing"
    DELIVERING = "delivering"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    """The freshness check found stale data: nothing was extracted or sent."""

    @property
    def final(self) -> bool:
        return self in (
            RunStatus.SUCCEEDED,
            RunStatus.FAILED,
            RunStatus.CANCELLED,
            RunStatus.SKIPPED,
        )


COUNT_KEYS = (
    "extracted",
    "added",
    "changed",
    "removed",
    "unchanged",
    "invalid",
    "planned",
    "rejected",
    "sent",
    "succeeded",
    "failed",
)


def empty_counts() -> dict[str, int]:
    return dict.fromkeys(COUNT_KEYS, 0)


@dataclass
class RunRecord:
    id: str
    sync: str
    status: RunStatus
    full_resync: bool
    trigger: str
    counts: dict[str, int]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    batch_size: int | None = None
    total_batches: int | None = None
    attempt: int = 1
    warning: str | None = None
    """Set on a run that succeeded with some rows rejected (below ``max_rejected_ratio``)."""

    @property
    def duration_s(self) -> float | None:
        end = self.finished_at or self.updated_at
        return (end - self.created_at).total_seconds() if end else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "run_id": self.id,
            "status": str(self.status),
            "full": self.full_resync,
            "trigger": self.trigger,
            **{k: self.counts.get(k, 0) for k in COUNT_KEYS},
            "started_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_s": round(self.duration_s, 3) if self.duration_s is not None else None,
            "attempt": self.attempt,
            "error": self.error,
            "warning": self.warning,
        }


@dataclass
class RowError:
    run_id: str
    sync: str
    row_key: str
    kind: str
    reason: str
    created_at: datetime
    batch_no: int | None = None
    seq: int | None = None
    operation: str | None = None
    first_failed_at: datetime | None = None
    """From the row's history (``undertow_row_status``): when its current run of failures
    began, when it last failed, in how many runs, and when it was accepted (if it was)."""
    last_failed_at: datetime | None = None
    attempts: int | None = None
    resolved_at: datetime | None = None


@dataclass
class RowStatus:
    """One row of a sync that a run did not get accepted, across runs."""

    sync: str
    row_key: str
    first_failed_at: datetime
    last_failed_at: datetime
    attempts: int
    last_kind: str
    last_reason: str
    last_run_id: str
    resolved_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "key": self.row_key,
            "kind": self.last_kind,
            "reason": self.last_reason,
            "attempts": self.attempts,
            "first_failed_at": self.first_failed_at.isoformat(),
            "last_failed_at": self.last_failed_at.isoformat(),
            "last_run_id": self.last_run_id,
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
        }


@dataclass
class Lock:
    sync: str
    owner: str
    store: StateStore = field(repr=False)

    def heartbeat(self) -> None:
        self.store.heartbeat(self)

    def release(self) -> None:
        self.store.release_lock(self)


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and use the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class StateStore:
    """Reader and writer of the state store. One per process; thread-safe via the engine."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self.display_url = redact_url(url)
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"future": True}
        if self.is_sqlite:
            database = parsed.database
            if database and database != ":memory:":
                # the state folder holds row keys and reasons: private to its user
                folder = Path(database).parent
                if not folder.exists():
                    folder.mkdir(parents=True, mode=0o700)
                Path(database).touch(mode=0o600, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["connect_args"] = {"connect_timeout": 10}
        try:
            self.engine = sa.create_engine(self.url, **kwargs)
        except ModuleNotFoundError as exc:
            raise StateError(
                f"the driver for state store {self.display_url} is not installed ({exc.name})",
                hint='pip install "undertow[postgres]"',
            ) from exc
        if self.is_sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.migrate()

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.OperationalError as exc:
            raise StateError(
                f"the state store {self.display_url} failed: {exc.orig}",
                hint="check that the state database is running and reachable; "
                "nothing was marked delivered by the failed write",
            ) from exc

    def close(self) -> None:
        self.engine.dispose()

    def migrate(self) -> int:
        """Apply pending numbered migrations; return the schema version.

        Two processes opening a new store at once may race: the loser's transaction fails
        (on the version's primary key, or on a table the winner created), and it tries again
        until it reads the version the winner wrote. The winner may still be inside its
        transaction when the loser retries, so the loser waits a little longer each time.
        """
        attempts = 8
        for attempt in range(attempts):
            try:
                return self._migrate()
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError, StateError):
                if attempt == attempts - 1:
                    raise
                time.sleep(0.02 * 2**attempt)
        raise AssertionError("unreachable")

    def _migrate(self) -> int:
        with self._tx() as conn:
            schema_version.create(conn, checkfirst=True)
            current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
            current = int(current or 0)
            for number, upgrade in migrations.available():
                if number > current:
                    upgrade(conn)
                    conn.execute(schema_version.insert().values(version=number, applied_at=_now()))
                    current = number
        return current

    # -- locks ------------------------------------------------------------------------------

    def acquire_lock(self, sync: str, *, run_id: str | None = None) -> Lock:
        """Take the sync's lock or raise SyncLockedError naming its holder.

        A lock held by a dead process on this host, or whose heartbeat is older than
        ``LOCK_TTL``, is taken over: a crashed run never blocks its sync for ever.
        """
        host = socket.gethostname()
        pid = os.getpid()
        owner = f"{host}:{pid}:{uuid.uuid4().hex[:8]}"
        now = _now()
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
            heartbeat = _aware(row["heartbeat_at"]) or now
            stale = now - heartbeat > LOCK_TTL
            dead = row["host"] == host and not _pid_alive(int(row["pid"]))
            if not (stale or dead):
                raise SyncLockedError(
                    f"sync {sync!r} is already running: process {row['pid']} on "
                    f"{row['host']} holds its lock since {_aware(row['acquired_at'])}",
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
                .values(heartbeat_at=_now())
            )

    def release_lock(self, lock: Lock) -> None:
        with self._tx() as conn:
            conn.execute(
                locks.delete().where(locks.c.sync == lock.sync, locks.c.owner == lock.owner)
            )

    def held_locks(self) -> dict[str, dict[str, Any]]:
        """Locks held now; a lock whose holder died (or went silent) is left out."""
        host = socket.gethostname()
        now = _now()
        with self._tx() as conn:
            rows = conn.execute(sa.select(locks)).mappings().all()
        held = {}
        for r in rows:
            stale = now - (_aware(r["heartbeat_at"]) or now) > LOCK_TTL
            dead = r["host"] == host and not _pid_alive(int(r["pid"]))
            if not (stale or dead):
                held[r["sync"]] = dict(r)
        return held

    # -- runs -------------------------------------------------------------------------------

    def create_run(self, sync: str, *, full: bool = False, trigger: str = "manual") -> RunRecord:
        now = _now()
        run_id = now.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        counts = empty_counts()
        with self._tx() as conn:
            conn.execute(
                runs.insert().values(
                    id=run_id,
                    sync=sync,
                    status=str(RunStatus.PENDING),
                    full_resync=full,
                    trigger=trigger,
                    counts=json.dumps(counts),
                    created_at=now,
                    updated_at=now,
                    attempt=1,
                )
            )
        return RunRecord(
            id=run_id,
            sync=sync,
            status=RunStatus.PENDING,
            full_resync=full,
            trigger=trigger,
            counts=counts,
            created_at=now,
            updated_at=now,
        )

    def _record(self, row: sa.RowMapping) -> RunRecord:
        return RunRecord(
            id=row["id"],
            sync=row["sync"],
            status=RunStatus(row["status"]),
            full_resync=bool(row["full_resync"]),
            trigger=row["trigger"],
            counts={**empty_counts(), **json.loads(row["counts"] or "{}")},
            created_at=_aware(row["created_at"]) or _now(),
            updated_at=_aware(row["updated_at"]) or _now(),
            finished_at=_aware(row["finished_at"]),
            error=row["error"],
            batch_size=row["batch_size"],
            total_batches=row["total_batches"],
            attempt=row["attempt"],
            warning=row.get("warning"),
        )

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
        return self._record(row) if row else None

    def find_runs(self, prefix: str) -> list[RunRecord]:
        with self._tx() as conn:
            rows = (
                conn.execute(sa.select(runs).where(runs.c.id.startswith(prefix)).limit(5))
                .mappings()
                .all()
            )
        return [self._record(r) for r in rows]

    def unfinished_run(self, sync: str) -> RunRecord | None:
        finals = [str(s) for s in RunStatus if s.final]
        with self._tx() as conn:
            row = (
                conn.execute(
                    sa.select(runs)
                    .where(runs.c.sync == sync, runs.c.status.not_in(finals))
                    .order_by(runs.c.created_at.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return self._record(row) if row else None

    def list_runs(self, sync: str | None = None, *, limit: int = 20) -> list[RunRecord]:
        query = sa.select(runs).order_by(runs.c.created_at.desc()).limit(limit)
        if sync is not None:
            query = query.where(runs.c.sync == sync)
        with self._tx() as conn:
            return [self._record(r) for r in conn.execute(query).mappings().all()]

    def last_runs(self) -> dict[str, RunRecord]:
        """The newest run of every sync."""
        latest = (
            sa.select(runs.c.sync, sa.func.max(runs.c.created_at).label("at"))
            .group_by(runs.c.sync)
            .subquery()
        )
        query = sa.select(runs).join(
            latest, sa.and_(runs.c.sync == latest.c.sync, runs.c.created_at == latest.c.at)
        )
        with self._tx() as conn:
            return {r["sync"]: self._record(r) for r in conn.execute(query).mappings().all()}

    def last_success(self, sync: str) -> RunRecord | None:
        with self._tx() as conn:
            row = (
                conn.execute(
                    sa.select(runs)
                    .where(runs.c.sync == sync, runs.c.status == str(RunStatus.SUCCEEDED))
                    .order_by(runs.c.created_at.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return self._record(row) if row else None

    def update_run(
        self,
        run: RunRecord,
        *,
        status: RunStatus | None = None,
        error: str | None = None,
        bump_attempt: bool = False,
        warning: str | None = None,
    ) -> None:
        """Persist the run's status, counts and plan facts (one transaction)."""
        now = _now()
        if status is not None:
            run.status = status
        if error is not None:
            run.error = error
        if warning is not None:
            run.warning = warning
        if bump_attempt:
            run.attempt += 1
        values: dict[str, Any] = {
            "status": str(run.status),
            "counts": json.dumps(run.counts),
            "updated_at": now,
            "error": run.error,
            "warning": run.warning,
            "batch_size": run.batch_size,
            "total_batches": run.total_batches,
            "attempt": run.attempt,
        }
        if run.status.final:
            run.finished_at = now
            values["finished_at"] = now
        run.updated_at = now
        with self._tx() as conn:
            conn.execute(runs.update().where(runs.c.id == run.id).values(**values))

    # -- checkpoints and row errors ----------------------------------------------------------

    def checkpoint(
        self,
        run: RunRecord,
        *,
        batch_no: int,
        operation: str,
        size: int,
        sent: int,
        accepted: int,
        errors: Sequence[RowError],
        attempts: int,
        resolved_keys: Sequence[str] = (),
    ) -> None:
        """Record one finished batch, its row errors and the run's counters atomically.

        In the same transaction, the rows' history (``undertow_row_status``): each rejected
        or failed row gets a failure (a new one, or one more attempt of an open one), and
        ``resolved_keys`` (rows of the batch the destination accepted that had an open
        failure) are marked resolved.
        """
        now = _now()
        rejected = sum(1 for e in errors if e.kind != "failed")
        failed = sum(1 for e in errors if e.kind == "failed")
        with self._tx() as conn:
            conn.execute(
                _INSERT_BATCH,
                {
                    "run_id": run.id,
                    "batch_no": batch_no,
                    "operation": operation,
                    "size": size,
                    "sent": sent,
                    "accepted": accepted,
                    "rejected": rejected,
                    "failed": failed,
                    "attempts": attempts,
                    "finished_at": now,
                },
            )
            if errors:
                conn.execute(row_errors.insert(), [_error_row(e, now) for e in errors])
                self._record_failures(conn, errors, now)
            if resolved_keys:
                for chunk in _chunks(list(resolved_keys), 500):
                    conn.execute(
                        row_status.update()
                        .where(
                            row_status.c.sync == run.sync,
                            row_status.c.resolved_at.is_(None),
                            row_status.c.row_key.in_(chunk),
                        )
                        .values(resolved_at=now)
                    )
            conn.execute(_UPDATE_COUNTS, {"rid": run.id, "c": json.dumps(run.counts), "u": now})

    def _record_failures(
        self, conn: sa.Connection, errors: Sequence[RowError], now: datetime
    ) -> None:
        """Upsert one failure per (sync, key): a new episode, or one more attempt of it."""
        latest: dict[tuple[str, str], RowError] = {}
        for error in errors:
            if error.kind in ("rejected", "failed"):
                latest[(error.sync, error.row_key)] = error
        if not latest:
            return
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
        stmt = insert(row_status)
        open_ = row_status.c.resolved_at.is_(None)
        stmt = stmt.on_conflict_do_update(
            index_elements=[row_status.c.sync, row_status.c.row_key],
            set_={
                "first_failed_at": sa.case(
                    (open_, row_status.c.first_failed_at), else_=stmt.excluded.first_failed_at
                ),
                "attempts": sa.case((open_, row_status.c.attempts + 1), else_=1),
                "last_failed_at": stmt.excluded.last_failed_at,
                "last_kind": stmt.excluded.last_kind,
                "last_reason": stmt.excluded.last_reason,
                "last_run_id": stmt.excluded.last_run_id,
                "resolved_at": None,
            },
        )
        conn.execute(
            stmt,
            [
                {
                    "sync": e.sync,
                    "row_key": e.row_key,
                    "first_failed_at": now,
                    "last_failed_at": now,
                    "attempts": 1,
                    "last_kind": e.kind,
                    "last_reason": e.reason,
                    "last_run_id": e.run_id,
                    "resolved_at": None,
                }
                for e in latest.values()
            ],
        )

    def add_row_errors(self, errors: Sequence[RowError]) -> None:
        if not errors:
            return
        now = _now()
        with self._tx() as conn:
            conn.execute(row_errors.insert(), [_error_row(e, now) for e in errors])

    def done_batches(self, run_id: str) -> set[int]:
        with self._tx() as conn:
            return set(
                conn.execute(
                    sa.select(batches.c.batch_no).where(batches.c.run_id == run_id)
                ).scalars()
            )

    def not_accepted_seqs(self, run_id: str) -> list[int]:
        """Sequence numbers of planned rows a checkpoint recorded as rejected or failed."""
        with self._tx() as conn:
            return [
                int(s)
                for s in conn.execute(
                    sa.select(row_errors.c.seq).where(
                        row_errors.c.run_id == run_id, row_errors.c.seq.is_not(None)
                    )
                ).scalars()
            ]

    def row_errors(self, run_id: str, *, limit: int | None = None) -> list[RowError]:
        """The run's row errors, each with its row's history across runs (if it has one)."""
        history = sa.and_(
            row_status.c.sync == row_errors.c.sync, row_status.c.row_key == row_errors.c.row_key
        )
        query = (
            sa.select(
                row_errors,
                row_status.c.first_failed_at,
                row_status.c.last_failed_at,
                row_status.c.attempts,
                row_status.c.resolved_at,
            )
            .select_from(row_errors.outerjoin(row_status, history))
            .where(row_errors.c.run_id == run_id)
            .order_by(row_errors.c.id)
        )
        if limit is not None:
            query = query.limit(limit)
        with self._tx() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            RowError(
                run_id=r["run_id"],
                sync=r["sync"],
                row_key=r["row_key"],
                kind=r["kind"],
                reason=r["reason"],
                created_at=_aware(r["created_at"]) or _now(),
                batch_no=r["batch_no"],
                seq=r["seq"],
                operation=r["operation"],
                first_failed_at=_aware(r["first_failed_at"]),
                last_failed_at=_aware(r["last_failed_at"]),
                attempts=r["attempts"],
                resolved_at=_aware(r["resolved_at"]),
            )
            for r in rows
        ]

    # -- row history ------------------------------------------------------------------------

    def open_row_keys(self, sync: str) -> set[str]:
        """Keys of the sync's rows whose latest outcome was rejected or failed."""
        with self._tx() as conn:
            return set(
                conn.execute(
                    sa.select(row_status.c.row_key).where(
                        row_status.c.sync == sync, row_status.c.resolved_at.is_(None)
                    )
                ).scalars()
            )

    def row_statuses(
        self, sync: str, *, include_resolved: bool = False, limit: int | None = None
    ) -> list[RowStatus]:
        """The sync's rows with a failure history, most recently failed first."""
        query = (
            sa.select(row_status)
            .where(row_status.c.sync == sync)
            .order_by(row_status.c.last_failed_at.desc(), row_status.c.row_key)
        )
        if not include_resolved:
            query = query.where(row_status.c.resolved_at.is_(None))
        if limit is not None:
            query = query.limit(limit)
        with self._tx() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            RowStatus(
                sync=r["sync"],
                row_key=r["row_key"],
                first_failed_at=_aware(r["first_failed_at"]) or _now(),
                last_failed_at=_aware(r["last_failed_at"]) or _now(),
                attempts=int(r["attempts"]),
                last_kind=r["last_kind"],
                last_reason=r["last_reason"],
                last_run_id=r["last_run_id"],
                resolved_at=_aware(r["resolved_at"]),
            )
            for r in rows
        ]

    def resolve_rows(self, sync: str, keys: Sequence[str]) -> None:
        """Close the open failures of ``keys`` (rows with nothing left to send)."""
        if not keys:
            return
        now = _now()
        with self._tx() as conn:
            for chunk in _chunks(list(keys), 500):
                conn.execute(
                    row_status.update()
                    .where(
                        row_status.c.sync == sync,
                        row_status.c.resolved_at.is_(None),
                        row_status.c.row_key.in_(chunk),
                    )
                    .values(resolved_at=now)
                )


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# prebuilt statements of the hot path (one checkpoint per batch)
_INSERT_BATCH = batches.insert()
_UPDATE_COUNTS = (
    runs.update()
    .where(runs.c.id == sa.bindparam("rid"))
    .values(counts=sa.bindparam("c"), updated_at=sa.bindparam("u"))
)


def _error_row(error: RowError, now: datetime) -> dict[str, Any]:
    return {
        "run_id": error.run_id,
        "sync": error.sync,
        "batch_no": error.batch_no,
        "seq": error.seq,
        "row_key": error.row_key,
        "kind": error.kind,
        "operation": error.operation,
        "reason": error.reason,
        "created_at": now,
    }


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
