"""Shared delivery (pipeline/share.py) on the real PostgreSQL state store, without Celery: a
coordinator run and helpers in threads (each with a project of its own, as a worker
process has) deliver one run's parts; every row arrives once, the counters add up, the
snapshot holds every row. A part whose holder went silent is taken over after its lease
and its holder records nothing more; a run handed back mid-delivery is finished through its
parts by a plain `undertow run`. (tests/cluster/test_shared.py kills a real worker.)"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cluster_support import write_project, write_users

from undertow.errors import LockLostError
from undertow.pipeline.halt import Halt
from undertow.pipeline.run import SyncRun
from undertow.pipeline.share import Sharing, help_deliver, plan_ranges
from undertow.project import Project
from undertow.state.cluster import ClusterState, part_data, parts
from undertow.testing.server import serve_in_thread
from undertow.testing.webhook import WebhookReceiver

ROWS = 2000  # 40 batches of 50


def setup(folder: Path, state: str, url: str) -> None:
    write_users(folder, ROWS)
    write_project(
        folder,
        state=state,
        broker=None,
        destination=f'{{type: webhook, url: "{url}/hooks", batch_size: 50, max_concurrency: 2}}',
        syncs={"s": "users"},
    )


class Helpers:
    """Helper 'workers' in threads, each on a project (and state store) of its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.threads: list[threading.Thread] = []
        self.results: list[dict[str, object]] = []
        self.halt = Halt()

    def publish(self, run_id: str, _attempt: int, count: int) -> None:
        for i in range(count):
            thread = threading.Thread(target=self._help, args=(run_id, f"helper{i}"))
            thread.start()
            self.threads.append(thread)

    def _help(self, run_id: str, name: str) -> None:
        project = Project.load(str(self.folder))
        try:
            ctx = project.context("s")
            self.results.append(
                help_deliver(
                    ctx,
                    project.store,
                    run_id,
                    owner=f"{name}|elsewhere|1",
                    ttl=timedelta(seconds=20),
                    heartbeat=1.0,
                    halt=self.halt,
                )
            )
        finally:
            project.close()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=120)


def coordinator(project: Project, helpers: Helpers, workers: int = 3) -> SyncRun:
    sync_run = SyncRun(project.context("s"), project.store)
    sync_run.sharing = Sharing(
        workers=workers,
        owner="coordinator|elsewhere|2",
        ttl=timedelta(seconds=20),
        heartbeat=1.0,
        publish=helpers.publish,
    )
    return sync_run


def test_plan_ranges_split_the_batches_without_a_checkpoint() -> None:
    assert plan_ranges(0, set(), 4) == []
    assert plan_ranges(10, set(), 1) == [(0, 2), (3, 5), (6, 8), (9, 9)]
    assert plan_ranges(10, {0, 1, 5}, 1) == [(2, 3), (4, 6), (7, 8), (9, 9)]
    assert len(plan_ranges(10_000, set(), 2)) == 200  # at most 50 batches a part


def test_a_coordinator_and_helpers_deliver_every_row_once(tmp_path: Path, pg_database: str) -> None:
    hook = WebhookReceiver(delay=0.02)
    with serve_in_thread(hook.app) as server:
        setup(tmp_path, pg_database, server.url)
        project = Project.load(str(tmp_path))
        helpers = Helpers(tmp_path)
        try:
            record = coordinator(project, helpers).execute()
            helpers.join()
            assert str(record.status) == "succeeded", record.error
            assert (record.counts["sent"], record.counts["succeeded"]) == (ROWS, ROWS)
            stored = project.store.get_run(record.id)
            assert stored is not None and stored.counts["succeeded"] == ROWS
            ids = Counter(r["id"] for r in hook.records)
            assert len(ids) == ROWS and max(ids.values()) == 1
            keys = Counter(r.headers["idempotency-key"] for r in hook.requests)
            assert len(keys) == 40 and max(keys.values()) == 1  # no batch sent twice
            holders = {p.owner.split("|")[0] for p in ClusterState(project.store).parts(record.id)}
            assert "coordinator" in holders and holders - {"coordinator"}, holders
            assert all(p.state == "done" for p in ClusterState(project.store).parts(record.id))
            with project.store.engine.connect() as conn:  # the mapped data is dropped
                assert conn.execute(sa.select(sa.func.count()).select_from(part_data)).scalar() == 0
            # the snapshot holds every row: the next run sends nothing
            again = project.run(["s"])[0]
            assert str(again.status) == "succeeded" and again.counts["sent"] == 0
            assert len(hook.records) == ROWS
        finally:
            project.close()


def test_a_silent_holders_part_is_taken_over_after_its_lease_and_it_records_nothing(
    tmp_path: Path, pg_database: str
) -> None:
    setup(tmp_path, pg_database, "http://127.0.0.1:9")
    project = Project.load(str(tmp_path))
    try:
        cluster = ClusterState(project.store)
        run = project.store.create_run("s")
        ttl = timedelta(seconds=20)
        assert cluster.create_parts(run.id, [(0, 1), (2, 3)])
        assert not cluster.create_parts(run.id, [(0, 3)])  # planned once
        # a new part (not mapped yet) is nobody's to claim
        assert cluster.claim_part(run.id, owner="a|elsewhere|1", worker="a", ttl=ttl) is None
        cluster.open_part(run.id, 1, b"y", batches=2, rows=100)
        first = cluster.claim_part(run.id, owner="a|elsewhere|1", worker="a", ttl=ttl)
        assert first is not None and first.part_no == 1
        # held by a live holder: nobody else gets it
        assert cluster.claim_part(run.id, owner="b|x|2", worker="b", ttl=ttl) is None
        with project.store.engine.begin() as conn:  # a silent holder: 30 s without a beat
            conn.execute(
                parts.update()
                .where(parts.c.part_no == 1)
                .values(heartbeat_at=sa.func.now() - sa.text("interval '30 seconds'"))
            )
        second = cluster.claim_part(run.id, owner="b|x|2", worker="b", ttl=ttl)
        assert second is not None and second.part_no == 1
        assert second.attempts == first.attempts + 1
        # the first holder wakes up: it can neither checkpoint, beat nor finish the part
        with pytest.raises(LockLostError), project.store.engine.begin() as conn:
            cluster.fence_part(conn, first)
        assert not cluster.part_heartbeat(first)
        assert not cluster.finish_part(first)
        assert cluster.finish_part(second)
        assert [p.state for p in cluster.parts(run.id)] == ["new", "done"]
    finally:
        project.close()


def test_a_run_handed_back_mid_delivery_is_finished_through_its_parts(
    tmp_path: Path, pg_database: str
) -> None:
    hook = WebhookReceiver(delay=0.05)
    with serve_in_thread(hook.app) as server:
        setup(tmp_path, pg_database, server.url)
        project = Project.load(str(tmp_path))
        helpers = Helpers(tmp_path)
        try:
            sync_run = coordinator(project, helpers, workers=2)

            def stop_after_some() -> None:  # a worker's shutdown, once 8 batches are in
                while len(hook.requests) < 8:
                    threading.Event().wait(0.02)
                sync_run.halt.request("SIGTERM", handback=True)
                helpers.halt.request("SIGTERM", handback=True)

            stopper = threading.Thread(target=stop_after_some)
            stopper.start()
            record = sync_run.execute()
            stopper.join()
            helpers.join()
            assert str(record.status) == "delivering", record
            states = Counter(p.state for p in ClusterState(project.store).parts(record.id))
            assert states["open"] or states["new"], states  # work left, nobody holds it
            assert not states["taken"], states
            # `undertow run` on a laptop (no workers): resumes the run, through its parts
            again = project.run(["s"])[0]
            assert again.id == record.id and str(again.status) == "succeeded", again.error
            assert again.counts["succeeded"] == ROWS
            ids = Counter(r["id"] for r in hook.records)
            assert len(ids) == ROWS and max(ids.values()) == 1
            keys = Counter(r.headers["idempotency-key"] for r in hook.requests)
            assert max(keys.values()) == 1  # a handback sends nothing twice
        finally:
            project.close()
