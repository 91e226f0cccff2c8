"""Rejected rows across runs (``undertow_row_status``) and ``undertow retry``, on SQLite and on
the real PostgreSQL of this machine as the state store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from project_support import Script, run_one, users_project, warehouse

from undertow.errors import PlanError
from undertow.project import Project
from undertow.state.store import RunRecord, RunStatus, StateStore, normalise_url

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("script")]


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url


def build(folder: Path, state: str, n: int = 5, *, mode: str = "mirror") -> Project:
    return users_project(
        folder,
        [(i, f"u{i}@x.com") for i in range(1, n + 1)],
        name="history",
        state=state,
        syncs=f"""  users_sync:
    model: users
    destination: dest
    mode: {mode}
    mappings: {{id: id, email: email}}
    max_rejected_ratio: 1
""",
    )


def run(project: Project) -> RunRecord:
    return run_one(project, "users_sync")


def test_rejected_rows_keep_a_history_and_retry_sends_only_them(
    tmp_path: Path, state_url: str, script: Script
) -> None:
    project = build(tmp_path / "p", state_url)
    try:
        script.reject = {"2": "INVALID_EMAIL: u2", "4": "INVALID_EMAIL: u4"}
        first = run(project)
        assert first.status is RunStatus.SUCCEEDED and first.warning is not None
        waiting = {r.row_key: r for r in project.rejected_rows("users_sync")}
        assert set(waiting) == {"2", "4"}
        assert all(r.attempts == 1 and r.last_run_id == first.id for r in waiting.values())
        assert waiting["2"].last_reason == "INVALID_EMAIL: u2"
        assert waiting["2"].first_failed_at == waiting["2"].last_failed_at
        first_failed = waiting["4"].first_failed_at

        # the user fixes row 2 in the destination; meanwhile the warehouse changes row 3
        script.reject = {"4": "INVALID_EMAIL: still"}
        warehouse(tmp_path / "p", "update users set email = 'three@x.com' where id = 3")
        script.received.clear()
        time.sleep(0.01)
        retried = project.retry("users_sync")
        assert retried is not None
        assert retried.trigger == "retry" and retried.status is RunStatus.SUCCEEDED
        assert script.sorted_keys() == ["2", "4"], "only the rejected rows, not the changed row 3"
        assert (retried.counts["sent"], retried.counts["succeeded"]) == (2, 1)

        [row4] = project.rejected_rows("users_sync")
        assert row4.row_key == "4" and row4.attempts == 2
        assert row4.first_failed_at == first_failed and row4.last_failed_at > first_failed
        assert row4.last_reason == "INVALID_EMAIL: still" and row4.last_run_id == retried.id

        # `undertow errors RUN` shows each row's first and last failure and its attempts
        errors = {e.row_key: e for e in project.errors(first.id)}
        assert errors["4"].attempts == 2 and errors["4"].first_failed_at == first_failed
        assert errors["2"].resolved_at is not None and errors["2"].attempts == 1

        # a normal run sends the warehouse change and (again) the rejected row
        script.received.clear()
        normal = run(project)
        assert script.sorted_keys() == ["3", "4"]
        assert normal.trigger == "manual"
        assert [r.attempts for r in project.rejected_rows("users_sync")] == [3]

        script.reject.clear()
        script.received.clear()
        fixed = project.retry("users_sync")
        assert fixed is not None and fixed.status is RunStatus.SUCCEEDED
        assert fixed.warning is None
        assert script.sorted_keys() == ["4"]
        assert project.rejected_rows("users_sync") == []
        assert project.retry("users_sync") is None, "nothing waits: no run at all"
        history = project.store.row_statuses("users_sync", include_resolved=True)
        assert {(r.row_key, r.resolved_at is not None) for r in history} == {
            ("2", True),
            ("4", True),
        }
        script.received.clear()
        assert run(project).counts["sent"] == 0
    finally:
        project.close()


def test_a_rejected_row_that_leaves_the_model_is_resolved_without_sending(
    tmp_path: Path, state_url: str, script: Script
) -> None:
    project = build(tmp_path / "p", state_url, mode="upsert")
    try:
        script.reject = {"5": "bad"}
        run(project)
        assert [r.row_key for r in project.rejected_rows("users_sync")] == ["5"]
        warehouse(tmp_path / "p", "delete from users where id = 5")
        script.received.clear()
        record = project.retry("users_sync")
        assert record is not None and record.counts["planned"] == 0
        assert script.received == []
        assert project.rejected_rows("users_sync") == []
    finally:
        project.close()


def test_retry_refuses_to_leave_an_unfinished_run_behind(
    tmp_path: Path, state_url: str, script: Script
) -> None:
    project = build(tmp_path / "p", state_url)
    try:
        script.reject = {"1": "bad"}
        run(project)
        stuck = project.store.create_run("users_sync")
        project.store.update_run(stuck, status=RunStatus.DIFFING)
        with pytest.raises(PlanError, match="unfinished run") as info:
            project.retry("users_sync")
        assert "undertow run users_sync" in str(info.value)
        assert project.store.held_locks() == {}
    finally:
        project.close()


def test_m0002_upgrades_a_version_1_store(tmp_path: Path, state_url: str) -> None:
    """A store written before m0002: undertow_runs without `warning`, no row history."""
    from undertow.state import schema

    engine = sa.create_engine(normalise_url(state_url))
    old = sa.MetaData()
    for table in (schema.schema_version, schema.batches, schema.row_errors, schema.locks):
        table.to_metadata(old)
    runs = schema.runs.to_metadata(old)
    runs._columns.remove(runs.c.warning)  # the runs table as m0001 first created it
    with engine.begin() as conn:
        old.create_all(conn)
        conn.execute(schema.schema_version.insert().values(version=1, applied_at=sa.func.now()))
    engine.dispose()

    store = StateStore(state_url, migrate=True)  # `undertow migrate`
    try:
        assert store.migrate() >= 2
        run = store.create_run("s")
        store.update_run(run, status=RunStatus.SUCCEEDED, warning="1 of 9 rejected")
        got = store.get_run(run.id)
        assert got is not None and got.warning == "1 of 9 rejected"
        assert store.open_row_keys("s") == set()
    finally:
        store.close()
