"""Upstream signals: a dbt project's run_results.json (rewritten to simulate dbt runs) and
authenticated webhook signals; the freshness check before anything is sent."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from orch_support import Workspace, rewrite_run_results

from undertow.orchestration.schedule import ManualClock
from undertow.state.store import RunStatus


def dbt_sync(path: Path, models: str = "") -> str:
    return f"""
        crm: {{model: active, destination: out_a, mappings: {{id: id, email: email}},
               after: [{{dbt: {{project_dir: "{path}"{models}}}}}]}}
        """


ACTIVE = '  active: {source: wh, sql: "select * from main.active_users", primary_key: id}\n'


def test_dbt_models_read_by_the_sql_come_from_the_manifest(
    ws: Workspace, clock: ManualClock, dbt_project: Path
) -> None:
    ws.sql("create table active_users as select * from users")
    ws.write(dbt_sync(dbt_project), models=ACTIVE)
    project = ws.load()
    sched = ws.scheduler(project, clock)
    # the fixture's run_results.json (real dbt-duckdb output) is older than anything here
    rewrite_run_results(
        dbt_project, {"orders": "success"}, at=clock.now(), invocation="only-orders"
    )
    assert sched.tick() == []  # dbt ran, but not the model the sync reads
    assert project.sync_status("crm")["waiting_for"] == ["dbt model active_users: never completed"]
    clock.advance(minutes=5)
    rewrite_run_results(
        dbt_project,
        {"stg_users": "success", "active_users": "error"},
        at=clock.now(),
        invocation="failed",
    )
    assert sched.tick() == []  # rebuilt, but failed: the sync must not send half-built data
    clock.advance(minutes=5)
    rewrite_run_results(
        dbt_project, {"active_users": "success"}, at=clock.now(), invocation="fixed"
    )
    assert sched.tick() == ["crm"]
    assert sched.records[-1].status == RunStatus.SUCCEEDED and sched.records[-1].trigger == "after"
    clock.advance(minutes=1)
    assert sched.tick() == []  # the same results again: nothing new
    clock.advance(minutes=5)
    rewrite_run_results(
        dbt_project, {"orders": "success"}, at=clock.now(), invocation="orders-again"
    )
    assert sched.tick() == []  # a later dbt run that skipped our model does not count
    clock.advance(minutes=5)
    rewrite_run_results(
        dbt_project, {"active_users": "success"}, at=clock.now(), invocation="again"
    )
    assert sched.tick() == ["crm"]


def test_dbt_models_named_explicitly_and_unknown_names(
    ws: Workspace, clock: ManualClock, dbt_project: Path
) -> None:
    ws.write(dbt_sync(dbt_project, ", models: [stg_users, active_user]"), models=ACTIVE)
    project = ws.load()
    sched = ws.scheduler(project, clock)
    rewrite_run_results(dbt_project, {"stg_users": "success"}, at=clock.now(), invocation="x")
    assert sched.tick() == []
    [waiting] = project.sync_status("crm")["waiting_for"]
    assert "unknown dbt model 'active_user'; did you mean 'active_users'?" in waiting


def test_webhook_signal_triggers_its_syncs(ws: Workspace, clock: ManualClock) -> None:
    ws.write(
        """
        crm: {model: users, destination: out_a, mappings: {id: id}, after: [{webhook: loaded}]}
        """,
        extra="webhooks:\n  loaded: {token: s3cret-token}\n",
    )
    project = ws.load()
    sched = ws.scheduler(project, clock)
    assert sched.tick() == []
    project.signal("loaded", {"tables": ["users"]})
    clock.advance(seconds=1)
    assert sched.tick() == ["crm"]
    assert sched.tick() == []
    assert project.signal_token("loaded") == "s3cret-token"


def test_stale_data_skips_the_run_and_sends_nothing(ws: Workspace, clock: ManualClock) -> None:
    ws.users(3, updated=clock.now() - timedelta(hours=5))
    ws.write(
        """
        crm: {model: users, destination: out_a, mappings: {id: id},
              freshness: {column: updated_at, max_age: 2h}}
        strict: {model: users, destination: out_b, mappings: {id: id},
              freshness: {sql: "select max(updated_at) from users", max_age: 2h, on_stale: fail}}
        """
    )
    project = ws.load()
    project.orchestration.clock = clock
    skipped, failed = project.run(["crm", "strict"])
    assert skipped.status == RunStatus.SKIPPED
    assert "stale data, nothing sent" in (skipped.error or "")
    assert "is 5h 00m old" in (skipped.error or "") and "max_age is 2h 00m" in (skipped.error or "")
    assert failed.status == RunStatus.FAILED
    assert ws.lines("a.jsonl") == [] and ws.lines("b.jsonl") == []
    # the loader catches up: fresh data is sent
    ws.users(3, updated=clock.now() - timedelta(minutes=10))
    fresh, also = project.run(["crm", "strict"])
    assert fresh.status == also.status == RunStatus.SUCCEEDED
    assert len(ws.lines("a.jsonl")) == 3


def test_freshness_on_an_empty_model_or_bad_column(ws: Workspace, clock: ManualClock) -> None:
    ws.sql("delete from users")
    ws.write(
        """
        crm: {model: users, destination: out_a, mappings: {id: id},
              freshness: {column: updated_at, max_age: 2h}}
        bad: {model: users, destination: out_b, mappings: {id: id},
              freshness: {column: email, max_age: 2h}}
        """
    )
    project = ws.load()
    empty, bad = project.run(["crm", "bad"])
    assert empty.status == RunStatus.SKIPPED and "has no data" in (empty.error or "")
    ws.users(1, updated=clock.now())
    [bad] = project.run(["bad"])
    assert bad.status == RunStatus.FAILED
    assert "not a timestamp" in (bad.error or "")


@pytest.mark.parametrize("max_age", ["0s", "-5m", "2 hours"])
def test_freshness_max_age_must_be_a_duration(ws: Workspace, max_age: str) -> None:
    from undertow.errors import ConfigError

    ws.write(
        f"""
        crm: {{model: users, destination: out_a, mappings: {{id: id}},
              freshness: {{column: updated_at, max_age: "{max_age}"}}}}
        """
    )
    with pytest.raises(ConfigError, match=r"syncs\.crm\.freshness\.max_age"):
        ws.load()
