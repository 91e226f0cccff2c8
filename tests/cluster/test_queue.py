"""Runs queued to real Celery workers on the real Redis and RabbitMQ: `undertow run --queue`
waits and prints as `undertow run` does; the work is spread over the workers; a due run
queued twice runs once; errors cross the process boundary with their fields; a worker on
older code refuses a newer store."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cluster_support import Broker, Workers, make_broker, run_cli, write_project, write_users

from undertow.project import Project
from undertow.state.cluster import ClusterState
from undertow.testing.server import serve_in_thread
from undertow.testing.webhook import WebhookReceiver

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    yield from make_broker(request.param)


@pytest.fixture
def redis_broker() -> Iterator[Broker]:
    """The tests below do not depend on the broker: one is enough (the rest of make test)."""
    yield from make_broker("redis")


def test_run_queue_spreads_syncs_over_workers_and_prints_the_runs(
    tmp_path: Path, broker: Broker, pg_database: str
) -> None:
    write_users(tmp_path, 3000)
    hook = WebhookReceiver(delay=0.01)
    syncs = {f"s{i}": "users" for i in range(4)}
    workers = Workers(tmp_path)
    with serve_in_thread(hook.app) as server:
        write_project(
            tmp_path,
            state=pg_database,
            broker=broker,
            destination=f'{{type: webhook, url: "{server.url}/hooks", batch_size: 200, max_concurrency: 2}}',
            syncs=syncs,
        )
        try:
            for name in ("wa", "wb"):
                workers.wait_ready(workers.start(name))
            done = run_cli(tmp_path, "run", *syncs, "--queue", "--json", timeout=180)
            assert done.returncode == 0, done.stdout + done.stderr
            lines = [orjson.loads(line) for line in done.stdout.splitlines() if line.strip()]
            assert sorted(line["sync"] for line in lines) == sorted(syncs)
            assert {line["status"] for line in lines} == {"succeeded"}
            assert all(line["sent"] == 3000 for line in lines)
            # every record of every sync arrived once
            per_sync = Counter(r["sync"] for r in hook.records)
            assert per_sync == dict.fromkeys(syncs, 3000)
            assert len({(r["sync"], r["id"]) for r in hook.records}) == 12_000
            project = Project.load(str(tmp_path))
            try:
                tasks = ClusterState(project.store).tasks()
                holders = Counter((t.worker or "").split("|")[0] for t in tasks)
                assert set(holders) == {"wa", "wb"}, holders  # both workers took some
                assert {t.state for t in tasks} == {"done"}
            finally:
                project.close()
            text = run_cli(tmp_path, "run", "s0", "--queue")
            assert text.returncode == 0 and "succeeded s0 run" in text.stdout, text.stderr
            health = run_cli(tmp_path, "status", "--workers", "--json")
            assert health.returncode == 0, health.stderr
            seen = {w["name"]: w for w in orjson.loads(health.stdout)}
            assert set(seen) == {"wa", "wb"}
            assert all(w["state"] == "running" and w["alive"] for w in seen.values())
            assert all(
                w["concurrency"] == 1 and w["queues"] == [broker.queue] for w in seen.values()
            )
            table = run_cli(tmp_path, "status")
            assert table.returncode == 0 and "wa" in table.stdout and "running" in table.stdout
        finally:
            workers.stop_all()


def test_a_due_run_queued_twice_runs_once(
    tmp_path: Path, redis_broker: Broker, pg_database: str
) -> None:
    write_users(tmp_path, 500)
    hook = WebhookReceiver()
    workers = Workers(tmp_path)
    with serve_in_thread(hook.app) as server:
        write_project(
            tmp_path,
            state=pg_database,
            broker=redis_broker,
            destination=f'{{type: webhook, url: "{server.url}/hooks", batch_size: 100}}',
            syncs={"s": "users"},
        )
        project = Project.load(str(tmp_path))
        try:
            first = project.executor.submit("s", trigger="schedule", task_id="s:schedule:t1")
            again = project.executor.submit("s", trigger="schedule", task_id="s:schedule:t1")
            assert (first, again) == ("s:schedule:t1", None)
            project.executor.publish("s:schedule:t1")  # and its message twice on the broker
            workers.wait_ready(workers.start("w1", concurrency=2))
            [task] = project.executor.wait(["s:schedule:t1"], timeout=120)
            assert task.state == "done", task
            assert len(project.store.list_runs("s")) == 1
            assert len(hook.records) == 500
        finally:
            project.close()
            workers.stop_all()


def test_errors_cross_the_process_boundary_with_their_fields(
    tmp_path: Path, redis_broker: Broker, pg_database: str
) -> None:
    write_users(tmp_path, 10)
    workers = Workers(tmp_path)
    write_project(
        tmp_path,
        state=pg_database,
        broker=redis_broker,
        destination="{type: file, path: out.jsonl, format: jsonl}",
        syncs={"good": "users"},
        extra="  bad: {model: broken, destination: out, mappings: {id: id}}\n",
    )
    text = (
        (tmp_path / "undertow.yml")
        .read_text()
        .replace(
            "syncs:",
            "  broken: {source: wh, sql: 'select id from nosuchtable', primary_key: id}\nsyncs:",
        )
    )
    (tmp_path / "undertow.yml").write_text(text)
    try:
        workers.wait_ready(workers.start("w1"))
        done = run_cli(tmp_path, "run", "good", "bad", "--queue", "--json", timeout=120)
        assert done.returncode == 1, done.stdout + done.stderr
        lines = [orjson.loads(line) for line in done.stdout.splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line and "run_id" not in line]
        runs = [line for line in lines if "run_id" in line]
        assert [r["sync"] for r in runs if r["status"] == "succeeded"] == ["good"]
        failed = [r for r in runs if r["status"] == "failed"] + errors
        assert failed, lines
        assert any("nosuchtable" in (r.get("error") or "") for r in failed), failed
    finally:
        workers.stop_all()


def test_a_worker_refuses_a_store_migrated_by_a_newer_undertow(
    tmp_path: Path, redis_broker: Broker, pg_database: str
) -> None:
    import sqlalchemy as sa

    from undertow.state.connection import SCHEMA_VERSION
    from undertow.state.records import normalise_url, utc_now
    from undertow.state.schema import schema_version
    from undertow.state.store import StateStore

    write_users(tmp_path, 10)
    write_project(
        tmp_path,
        state=pg_database,
        broker=redis_broker,
        destination="{type: file, path: out.jsonl, format: jsonl}",
        syncs={"s": "users"},
    )
    StateStore(pg_database).close()
    engine = sa.create_engine(normalise_url(pg_database))
    with engine.begin() as conn:
        conn.execute(
            schema_version.insert().values(version=SCHEMA_VERSION + 1, applied_at=utc_now())
        )
    engine.dispose()
    done = run_cli(tmp_path, "worker", "-c", "1", timeout=60)
    assert done.returncode == 1
    assert f"schema version {SCHEMA_VERSION + 1}" in done.stdout + done.stderr
    assert "upgrade Undertow" in done.stdout + done.stderr
