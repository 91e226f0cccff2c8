"""A worker that dies mid-run (kill -9 of its whole session, as a machine dying) has its run
resumed from its checkpoints by another worker within the bound (lock_ttl + sweep_every
after the last heartbeat); only batches in flight at the kill arrive twice. A worker sent
SIGTERM finishes its batches in flight, checkpoints them, and hands the run back: another
worker finishes it and nothing arrives twice."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cluster_support import Broker, Workers, make_broker, wait_until, write_project, write_users

from undertow.project import Project
from undertow.state.cluster import ClusterState, tasks, workers
from undertow.state.records import as_aware
from undertow.state.schema import batches, locks, runs
from undertow.testing.server import serve_in_thread
from undertow.testing.webhook import WebhookReceiver

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

ROWS = 6000  # 60 batches of 100, 2 in flight, 0.15 s each: ~5 s of delivery


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    yield from make_broker(request.param)


def checkpointed(project: Project) -> set[str]:
    with project.store.engine.connect() as conn:
        return {
            f"{r}-{b}" for r, b in conn.execute(sa.select(batches.c.run_id, batches.c.batch_no))
        }


def setup(tmp_path: Path, broker: Broker, pg: str, url: str) -> None:
    write_users(tmp_path, ROWS)
    write_project(
        tmp_path,
        state=pg,
        broker=broker,
        destination=f'{{type: webhook, url: "{url}/hooks", batch_size: 100, max_concurrency: 2}}',
        syncs={"s": "users"},
    )


@pytest.fixture
def kind_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    yield from make_broker(request.param)


# the silent-machine path is the sweeper's, the same for both brokers: measured on Redis
@pytest.mark.parametrize(
    ("kind_broker", "machine"),
    [("redis", "same-host"), ("rabbitmq", "same-host"), ("redis", "other-host")],
    indirect=["kind_broker"],
)
def test_a_killed_workers_run_is_resumed_by_another_within_the_bound(
    tmp_path: Path, kind_broker: Broker, pg_database: str, machine: str
) -> None:
    broker = kind_broker
    hook = WebhookReceiver(delay=0.15)
    pool = Workers(tmp_path)
    with serve_in_thread(hook.app) as server:
        setup(tmp_path, broker, pg_database, server.url)
        project = Project.load(str(tmp_path))
        try:
            a = pool.start("wa")
            pool.wait_ready(a)
            task_id = project.executor.submit("s")
            assert task_id is not None
            wait_until(lambda: len(checkpointed(project)) >= 8, 90, "8 checkpoints on wa")
            pool.kill_machine(a)
            done_at_kill = checkpointed(project)
            with project.store.engine.begin() as conn:
                [(beat, run_id)] = conn.execute(
                    sa.select(locks.c.heartbeat_at, locks.c.run_id)
                ).all()
                if machine == "other-host":
                    # the dead worker was on another machine: no pid to look at, only silence
                    conn.execute(locks.update().values(host="other-machine"))
                    conn.execute(
                        tasks.update().values(worker=sa.func.replace(tasks.c.worker, "|", "|x"))
                    )
                    conn.execute(
                        workers.update().where(workers.c.name == "wa").values(host="other-machine")
                    )
            last_beat = as_aware(beat)
            b = pool.start("wb")
            pool.wait_ready(b)
            [task] = project.executor.wait([task_id], timeout=120)
            assert task.state == "done", task
            assert (task.worker or "").startswith("wb|")
            with project.store.engine.connect() as conn:
                [(attempt, status)] = conn.execute(sa.select(runs.c.attempt, runs.c.status)).all()
            assert status == "succeeded" and attempt >= 2
            # the resumed attempt started within the bound of the last heartbeat
            resumed = ClusterState(project.store).task(task_id)
            assert resumed is not None and resumed.started_at is not None and last_beat is not None
            pickup = (resumed.started_at - last_beat).total_seconds()
            ttl = project.config.executor.lock_ttl.total_seconds()
            sweep = project.config.executor.sweep_every.total_seconds()
            assert pickup < 30, pickup
            if machine == "other-host":
                assert pickup >= ttl - 1  # it waited for the silence, not less
            assert pickup <= ttl + sweep + 10 if machine == "other-host" else pickup < 15
            # every row arrived; only batches in flight at the kill arrived twice
            keys = Counter(r.headers["idempotency-key"] for r in hook.requests)
            twice = {k for k, n in keys.items() if n > 1}
            # (the receiver logs a request once answered: those in flight were not yet seen)
            assert not twice & done_at_kill, twice
            assert len(twice) <= 2, twice  # max_concurrency: the batches in flight at the kill
            assert len({r["id"] for r in hook.records}) == ROWS
            print(
                f"\npickup[{broker.kind},{machine}]: {pickup:.1f}s after the last heartbeat; "
                f"{len(twice)} batch(es) sent twice; run {run_id} attempt {attempt}"
            )
        finally:
            project.close()
            pool.stop_all()


def test_sigterm_hands_the_run_back_and_nothing_arrives_twice(
    tmp_path: Path, broker: Broker, pg_database: str
) -> None:
    hook = WebhookReceiver(delay=0.15)
    pool = Workers(tmp_path)
    with serve_in_thread(hook.app) as server:
        setup(tmp_path, broker, pg_database, server.url)
        project = Project.load(str(tmp_path))
        try:
            a = pool.start("wa")
            pool.wait_ready(a)
            task_id = project.executor.submit("s")
            assert task_id is not None
            wait_until(lambda: len(checkpointed(project)) >= 8, 90, "8 checkpoints on wa")
            signalled = time.monotonic()
            a.proc.send_signal(signal.SIGTERM)
            assert a.proc.wait(timeout=60) == 0, a.text()[-3000:]
            stopped = time.monotonic() - signalled
            row = ClusterState(project.store).task(task_id)
            assert row is not None and row.state == "queued", row  # handed back
            assert project.store.unfinished_run("s") is not None
            assert project.store.held_locks() == {}
            # every batch wa sent was checkpointed before it stopped
            sent = {r.headers["idempotency-key"] for r in hook.requests}
            assert sent <= checkpointed(project)
            b = pool.start("wb")
            pool.wait_ready(b)
            [task] = project.executor.wait([task_id], timeout=120)
            assert task.state == "done" and (task.worker or "").startswith("wb|")
            keys = Counter(r.headers["idempotency-key"] for r in hook.requests)
            assert max(keys.values()) == 1
            assert len(hook.records) == ROWS
            print(f"\nsigterm[{broker.kind}]: worker stopped {stopped:.1f}s after SIGTERM")
        finally:
            project.close()
            pool.stop_all()
