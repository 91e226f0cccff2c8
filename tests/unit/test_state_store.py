"""The state store on SQLite. tests/integration/test_state_postgres.py runs these same tests
against PostgreSQL by overriding the ``state_url`` fixture."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from undertow.errors import SyncLockedError
from undertow.state import migrations
from undertow.state.schema import batches, locks, row_errors, runs, schema_version
from undertow.state.store import LOCK_TTL, RowError, RunRecord, RunStatus, StateStore

pytestmark = pytest.mark.unit


@pytest.fixture
def state_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def store(state_url: str) -> Iterator[StateStore]:
    opened = StateStore(state_url)
    yield opened
    opened.close()


def error(
    run: RunRecord,
    key: str,
    kind: str,
    seq: int | None,
    batch: int | None = None,
    reason: str = "bad email",
) -> RowError:
    return RowError(
        run_id=run.id,
        sync=run.sync,
        row_key=key,
        kind=kind,
        reason=reason,
        created_at=run.created_at,
        batch_no=batch,
        seq=seq,
        operation="upsert",
    )


def lock_row(store: StateStore, sync: str) -> dict[str, object]:
    return store.held_locks()[sync]


def set_lock(store: StateStore, sync: str, **values: object) -> None:
    with store.engine.begin() as conn:
        conn.execute(locks.update().where(locks.c.sync == sync).values(**values))


# -- migrations -------------------------------------------------------------------------------


def test_migrations_are_applied_once_and_recorded(state_url: str) -> None:
    latest = max(number for number, _ in migrations.available())
    first = StateStore(state_url)
    try:
        assert first.migrate() == latest
    finally:
        first.close()
    second = StateStore(state_url)  # opening again applies nothing twice
    try:
        assert second.migrate() == latest
        with second.engine.connect() as conn:
            versions = conn.execute(sa.select(schema_version.c.version)).scalars().all()
            tables = set(sa.inspect(conn).get_table_names())
        assert sorted(versions) == [n for n, _ in migrations.available()]
        assert {runs.name, batches.name, row_errors.name, locks.name} <= tables
    finally:
        second.close()


# -- runs -------------------------------------------------------------------------------------


def test_create_and_update_a_run(store: StateStore) -> None:
    run = store.create_run("users_out", full=True, trigger="schedule")
    assert run.status is RunStatus.PENDING
    loaded = store.get_run(run.id)
    assert loaded is not None
    assert (loaded.sync, loaded.status, loaded.full_resync, loaded.trigger, loaded.attempt) == (
        "users_out",
        RunStatus.PENDING,
        True,
        "schedule",
        1,
    )
    assert loaded.finished_at is None
    assert all(v == 0 for v in loaded.counts.values())

    run.counts["planned"] = 42
    run.batch_size, run.total_batches = 10, 5
    store.update_run(run, status=RunStatus.DELIVERING, bump_attempt=True)
    loaded = store.get_run(run.id)
    assert loaded is not None
    assert (loaded.status, loaded.counts["planned"], loaded.batch_size, loaded.total_batches) == (
        RunStatus.DELIVERING,
        42,
        10,
        5,
    )
    assert loaded.attempt == 2
    assert loaded.finished_at is None

    store.update_run(run, status=RunStatus.FAILED, error="boom")
    loaded = store.get_run(run.id)
    assert loaded is not None
    assert (loaded.status, loaded.error) == (RunStatus.FAILED, "boom")
    assert loaded.finished_at is not None
    assert loaded.finished_at.tzinfo is not None
    assert store.get_run("nope") is None
    assert [r.id for r in store.find_runs(run.id[:10])] == [run.id]


def test_unfinished_run_is_the_newest_not_final_one(store: StateStore) -> None:
    assert store.unfinished_run("users_out") is None
    done = store.create_run("users_out")
    store.update_run(done, status=RunStatus.SUCCEEDED)
    assert store.unfinished_run("users_out") is None
    crashed = store.create_run("users_out")
    store.update_run(crashed, status=RunStatus.DELIVERING)
    store.create_run("other")
    found = store.unfinished_run("users_out")
    assert found is not None and found.id == crashed.id
    assert found.status is RunStatus.DELIVERING
    for status in (RunStatus.CANCELLED, RunStatus.FAILED):
        store.update_run(crashed, status=status)
        assert store.unfinished_run("users_out") is None


def test_last_runs_and_list_runs(store: StateStore) -> None:
    made: dict[str, list[str]] = {"a": [], "b": []}
    for sync in ("a", "b", "a", "a", "b"):
        made[sync].append(store.create_run(sync).id)
        time.sleep(0.002)  # distinct created_at; ordering, not timing, is asserted
    last = store.last_runs()
    assert {s: r.id for s, r in last.items()} == {"a": made["a"][-1], "b": made["b"][-1]}
    assert [r.id for r in store.list_runs("a")] == made["a"][::-1]
    assert [r.id for r in store.list_runs("a", limit=2)] == made["a"][::-1][:2]
    assert len(store.list_runs()) == 5
    assert store.list_runs()[0].id == made["b"][-1]
    store.update_run(store.list_runs("a")[-1], status=RunStatus.SUCCEEDED)
    success = store.last_success("a")
    assert success is not None and success.id == made["a"][0]


# -- checkpoints ------------------------------------------------------------------------------


def test_checkpoint_records_batch_errors_and_counts(store: StateStore) -> None:
    run = store.create_run("users_out")
    run.counts.update(sent=4, succeeded=2, rejected=1, failed=1)
    store.checkpoint(
        run,
        batch_no=0,
        operation="upsert",
        size=5,
        sent=4,
        accepted=2,
        attempts=2,
        errors=[error(run, "7", "rejected", 3, 0), error(run, "8", "failed", 4, 0, "timeout")],
    )
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(batches)).mappings().one()
    assert (row["batch_no"], row["size"], row["sent"], row["accepted"]) == (0, 5, 4, 2)
    assert (row["rejected"], row["failed"], row["attempts"]) == (1, 1, 2)
    saved = store.row_errors(run.id)
    assert [(e.row_key, e.kind, e.reason, e.seq, e.batch_no) for e in saved] == [
        ("7", "rejected", "bad email", 3, 0),
        ("8", "failed", "timeout", 4, 0),
    ]
    loaded = store.get_run(run.id)
    assert loaded is not None
    assert (loaded.counts["sent"], loaded.counts["succeeded"], loaded.counts["failed"]) == (4, 2, 1)


def test_checkpoint_is_atomic(store: StateStore) -> None:
    run = store.create_run("users_out")
    run.counts["sent"] = 3
    broken = error(run, "7", "rejected", 3, 0)
    broken.row_key = None  # type: ignore[assignment]  # NOT NULL: the second insert fails
    with pytest.raises(sa.exc.IntegrityError):
        store.checkpoint(
            run,
            batch_no=0,
            operation="upsert",
            size=3,
            sent=3,
            accepted=2,
            attempts=1,
            errors=[broken],
        )
    assert store.done_batches(run.id) == set()
    assert store.row_errors(run.id) == []
    loaded = store.get_run(run.id)
    assert loaded is not None and loaded.counts["sent"] == 0


def test_done_batches_and_not_accepted_seqs(store: StateStore) -> None:
    run = store.create_run("users_out")
    other = store.create_run("users_out")
    store.add_row_errors([error(run, "NULL", "invalid_key", None)])  # never planned: no seq
    for number, errs in ((0, []), (2, [error(run, "5", "rejected", 11, 2)])):
        store.checkpoint(
            run,
            batch_no=number,
            operation="upsert",
            size=3,
            sent=3,
            accepted=3 - len(errs),
            errors=errs,
            attempts=1,
        )
    store.checkpoint(
        run,
        batch_no=3,
        operation="delete",
        size=2,
        sent=2,
        accepted=0,
        errors=[error(run, "6", "failed", 14, 3), error(run, "9", "failed", 15, 3)],
        attempts=6,
    )
    store.checkpoint(
        other,
        batch_no=1,
        operation="upsert",
        size=1,
        sent=1,
        accepted=0,
        errors=[error(other, "1", "rejected", 99, 1)],
        attempts=1,
    )
    assert store.done_batches(run.id) == {0, 2, 3}
    assert sorted(store.not_accepted_seqs(run.id)) == [11, 14, 15]
    assert store.done_batches(other.id) == {1}
    assert store.not_accepted_seqs(other.id) == [99]
    assert [e.kind for e in store.row_errors(run.id, limit=2)] == ["invalid_key", "rejected"]


# -- locks ------------------------------------------------------------------------------------


def test_second_acquire_names_the_holder(store: StateStore, state_url: str) -> None:
    lock = store.acquire_lock("users_out")
    other = StateStore(state_url)  # another process would open its own store
    try:
        with pytest.raises(SyncLockedError) as info:
            other.acquire_lock("users_out")
        text = str(info.value)
        assert "'users_out' is already running" in text
        assert f"process {os.getpid()} on {socket.gethostname()}" in text
        other.acquire_lock("another_sync").release()  # locks are per sync
    finally:
        other.close()
    lock.release()


def test_release_frees_the_lock(store: StateStore) -> None:
    lock = store.acquire_lock("users_out")
    assert "users_out" in store.held_locks()
    lock.release()
    assert "users_out" not in store.held_locks()
    store.acquire_lock("users_out").release()


def test_lock_of_a_dead_process_on_this_host_is_taken_over(store: StateStore) -> None:
    lock = store.acquire_lock("users_out")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    set_lock(store, "users_out", pid=child.pid)
    taken = store.acquire_lock("users_out", run_id="r2")
    row = lock_row(store, "users_out")
    assert (row["pid"], row["owner"], row["run_id"]) == (os.getpid(), taken.owner, "r2")
    lock.release()  # the old holder's late release does not free the new holder's lock
    assert lock_row(store, "users_out")["owner"] == taken.owner
    taken.release()
    assert store.held_locks() == {}


def test_live_process_on_another_host_is_not_taken_over(store: StateStore) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    store.acquire_lock("users_out")
    set_lock(store, "users_out", host="elsewhere.example", pid=child.pid)
    with pytest.raises(SyncLockedError, match=r"on elsewhere\.example"):
        store.acquire_lock("users_out")


def test_stale_heartbeat_is_taken_over(store: StateStore) -> None:
    lock = store.acquire_lock("users_out")
    fresh = datetime.now(UTC) - LOCK_TTL + timedelta(seconds=5)
    set_lock(store, "users_out", heartbeat_at=fresh)
    with pytest.raises(SyncLockedError):
        store.acquire_lock("users_out")  # a live holder, recent heartbeat
    stale = datetime.now(UTC) - LOCK_TTL - timedelta(seconds=1)
    set_lock(store, "users_out", heartbeat_at=stale)
    taken = store.acquire_lock("users_out")
    assert lock_row(store, "users_out")["owner"] == taken.owner
    assert taken.owner != lock.owner


def test_heartbeat_keeps_a_lock_fresh(store: StateStore) -> None:
    lock = store.acquire_lock("users_out")
    stale = datetime.now(UTC) - LOCK_TTL - timedelta(seconds=1)
    set_lock(store, "users_out", heartbeat_at=stale)
    lock.heartbeat()
    with pytest.raises(SyncLockedError):
        store.acquire_lock("users_out")
