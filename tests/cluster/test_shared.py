"""One run's delivery shared by two real workers (``executor.delivery_workers: 2``): the
worker that takes the run (the coordinator) queues a helper task, and both deliver its
parts. kill -9 of the helper's machine mid-part: the coordinator takes the part over (its
holder is a dead process on this host; elsewhere, after the lease) and sends only what has
no checkpoint; every row arrives exactly once (the receiver honours the batches'
Idempotency-Key), no batch checkpointed before the kill is sent again."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cluster_support import Broker, Workers, make_broker, wait_until, write_project, write_users

from undertow.project import Project
from undertow.state.cluster import ClusterState
from undertow.state.schema import batches
from undertow.testing.server import serve_in_thread
from undertow.testing.webhook import WebhookReceiver

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

ROWS = 6000  # 60 batches of 100, 2 in flight per worker, 0.1 s each


@pytest.fixture
def broker() -> Iterator[Broker]:
    yield from make_broker("redis")


def checkpointed(project: Project) -> set[int]:
    with project.store.engine.connect() as conn:
        return set(conn.execute(sa.select(batches.c.batch_no)).scalars())


def test_a_helper_killed_mid_part_loses_nothing_and_sends_nothing_twice(
    tmp_path: Path, broker: Broker, pg_database: str
) -> None:
    hook = WebhookReceiver(delay=0.1)
    pool = Workers(tmp_path)
    with serve_in_thread(hook.app) as server:
        write_users(tmp_path, ROWS)
        write_project(
            tmp_path,
            state=pg_database,
            broker=broker,
            destination=f'{{type: webhook, url: "{server.url}/hooks", batch_size: 100, max_concurrency: 2}}',
            syncs={"s": "users"},
            executor_extra={"delivery_workers": 2, "heartbeat": "1s", "lock_ttl": "4s"},
        )
        project = Project.load(str(tmp_path))
        try:
            live = {name: pool.start(name) for name in ("wa", "wb")}
            for worker in live.values():
                pool.wait_ready(worker)
            task_id = project.executor.submit("s")
            assert task_id is not None
            cluster = ClusterState(project.store)

            def helper_mid_part() -> bool:
                task = cluster.task(task_id)
                run = project.store.unfinished_run("s")
                if task is None or run is None:
                    return False
                coordinator = (task.worker or "").split("|")[0]
                done = checkpointed(project)
                return any(
                    p.state == "taken"
                    and (p.owner or "").split("|")[0] != coordinator
                    and any(n in done for n in p.batches())
                    for p in cluster.parts(run.id)
                )

            wait_until(helper_mid_part, 90, "the helper delivering a part", step=0.02)
            task = cluster.task(task_id)
            run = project.store.unfinished_run("s")
            assert task is not None and run is not None
            coordinator = (task.worker or "").split("|")[0]
            [helper] = [name for name in live if name != coordinator]
            pool.kill_machine(live[helper])
            done_at_kill = {f"{run.id}-{n}" for n in checkpointed(project)}
            [finished] = project.executor.wait([task_id], timeout=120)
            assert finished.state == "done", finished
            run = project.store.get_run(run.id)
            assert run is not None and str(run.status) == "succeeded", run
            assert run.counts["sent"] >= ROWS and run.counts["succeeded"] == ROWS
            parts = cluster.parts(run.id)
            assert {p.state for p in parts} == {"done"}
            assert any(p.attempts > 1 for p in parts)  # the helper's part was taken over
            # every row arrived exactly once; only batches in flight at the kill went twice
            ids = Counter(r["id"] for r in hook.records)
            assert len(ids) == ROWS and max(ids.values()) == 1
            keys = Counter(r.headers["idempotency-key"] for r in hook.requests)
            twice = {k for k, n in keys.items() if n > 1}
            assert not twice & done_at_kill, twice
            assert len(twice) <= 2, twice  # the helper's max_concurrency
            print(
                f"\nshared delivery: {len(parts)} parts, helper {helper} killed, "
                f"{len(twice)} batch(es) sent twice"
            )
        finally:
            project.close()
            pool.stop_all()
