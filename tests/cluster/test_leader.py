"""One scheduler: several `serve` on one state store, only the lease holder queues runs;
when it dies the next takes over after the lease's TTL, and a due run it had queued is not
queued again (its ledger id names what made it due)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cluster_support import Broker, make_broker, write_project, write_users

from undertow.orchestration.scheduler import Scheduler
from undertow.project import Project
from undertow.state.cluster import ClusterState, leases
from undertow.workers.leader import Leadership

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


@pytest.fixture
def broker() -> Iterator[Broker]:
    yield from make_broker("redis")


def scheduler(folder: Path, owner: str) -> Scheduler:
    project = Project.load(str(folder))
    sched = Scheduler(project, inline=True)
    sched.leadership = Leadership(
        ClusterState(project.store), ttl=timedelta(seconds=15), owner=owner
    )
    return sched


def test_only_the_leader_queues_and_a_new_leader_queues_nothing_twice(
    tmp_path: Path, broker: Broker, pg_database: str
) -> None:
    write_users(tmp_path, 10)
    write_project(
        tmp_path,
        state=pg_database,
        broker=broker,
        destination="{type: file, path: out.jsonl, format: jsonl}",
        syncs={"a": "users", "b": "users"},
    )
    text = (
        (tmp_path / "undertow.yml")
        .read_text()
        .replace("sync: {const: a}}}", "sync: {const: a}}, schedule: {every: 1h}}")
        .replace("sync: {const: b}}}", "sync: {const: b}}, schedule: {every: 1h}}")
    )
    (tmp_path / "undertow.yml").write_text(text)
    one, two = scheduler(tmp_path, "serve-1"), scheduler(tmp_path, "serve-2")
    try:
        store = one.project.store
        with store.engine.begin() as conn:  # the schedules as they are before the first pass
            one.project.orchestration.next_run("a")
            one.project.orchestration.next_run("b")
            before = [
                dict(r)
                for r in conn.execute(sa.text("select * from undertow_schedules")).mappings()
            ]
        assert sorted(one.tick()) == ["a", "b"]
        assert two.tick() == []  # not the leader: it queues nothing
        assert one.leadership.leading and not two.leadership.leading
        cluster = ClusterState(store)
        assert sorted(t.sync for t in cluster.tasks()) == ["a", "b"]
        # the leader queued both, then died before its `launched` was written, and the
        # workers ran both: the schedules say a and b are still due
        with store.engine.begin() as conn:
            conn.execute(sa.text("update undertow_tasks set state = 'done'"))
            conn.execute(sa.text("delete from undertow_schedules"))
            for row in before:
                conn.execute(
                    sa.text(
                        "insert into undertow_schedules (sync, paused, next_run_at, "
                        "last_started_at, first_seen_at, updated_at) values (:sync, :paused, "
                        ":next_run_at, :last_started_at, :first_seen_at, :updated_at)"
                    ),
                    row,
                )
            conn.execute(leases.update().values(heartbeat_at=sa.func.now() - timedelta(minutes=1)))
        assert sorted(two.tick()) == ["a", "b"]  # the new leader finds them due...
        assert two.leadership.leading
        assert len(cluster.tasks()) == 2  # ...and queues nothing: the same ids exist
        assert one.tick() == [] and not one.leadership.leading
    finally:
        one.project.close()
        two.project.close()


def test_the_api_lists_the_workers_with_their_health(tmp_path: Path, pg_database: str) -> None:
    """GET /api/workers: a live worker, a lost one (silent past lock_ttl), a stopped one, and
    the run each executes."""
    import urllib.request

    import orjson

    from undertow.server.app import create_app
    from undertow.testing.server import serve_in_thread

    write_users(tmp_path, 1)
    write_project(
        tmp_path,
        state=pg_database,
        broker=None,
        destination="{type: file, path: out.jsonl, format: jsonl}",
        syncs={"a": "users"},
    )
    project = Project.load(str(tmp_path))
    try:
        cluster = ClusterState(project.store)
        for name in ("live", "lost", "gone"):
            cluster.register_worker(
                name, host="h", pid=1, queues=["q"], concurrency=2, version="test"
            )
        cluster.worker_stopped("gone")
        with project.store.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "update undertow_workers set heartbeat_at = now() - interval '5 minutes' "
                    "where name = 'lost'"
                )
            )
        assert cluster.add_task("t1", sync="a")
        assert cluster.claim("t1", "live|h|1", takeover=False) is not None
        app = create_app(project, token="tok-12345678")
        with serve_in_thread(app) as server:
            request = urllib.request.Request(
                f"{server.url}/api/workers", headers={"Authorization": "Bearer tok-12345678"}
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                body = orjson.loads(answer.read())
            denied = urllib.request.Request(f"{server.url}/api/workers")
            try:
                urllib.request.urlopen(denied, timeout=10)
                raise AssertionError("the workers endpoint answered without a token")
            except urllib.error.HTTPError as exc:
                assert exc.code == 401
        states = {w["name"]: (w["state"], w["alive"]) for w in body}
        assert states == {
            "live": ("running", True),
            "lost": ("lost", False),
            "gone": ("stopped", False),
        }
        [live] = [w for w in body if w["name"] == "live"]
        assert [r["sync"] for r in live["runs"]] == ["a"] and live["concurrency"] == 2
    finally:
        project.close()
