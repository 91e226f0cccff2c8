"""What each mode counts, run after run: an update of a record the destination lacks is
*skipped* (counted once, never toward ``max_rejected_ratio``, not sent again until the row
changes); an ``insert`` sync counts a changed row once; rows that leave the model of a sync
that does not delete are counted as removed once, then shown as state."""

from __future__ import annotations

import json
from pathlib import Path

import project_support as support
import pytest
from project_support import Script

from undertow.project import Project
from undertow.state.store import RunStatus

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("script")]


@pytest.fixture(params=["local", "warehouse"])
def engine(request: pytest.FixtureRequest) -> str:
    """Both diff engines keep the marks (the warehouse one inside the DuckDB source)."""
    return str(request.param)


def project_with(folder: Path, mode: str, engine: str, rows: int = 5) -> Project:
    return support.users_project(
        folder,
        [(i, f"u{i}@x.com") for i in range(1, rows + 1)],
        syncs=f"""  users:
    model: users
    destination: dest
    mode: {mode}
    mappings: {{email: email}}
    diff: {{engine: {engine}}}
""",
    )


def test_an_update_of_a_record_the_destination_lacks_is_skipped_not_rejected(
    tmp_path: Path, script: Script, engine: str
) -> None:
    project = project_with(tmp_path, "update", engine)
    try:
        for key in ("1", "2"):  # the destination has two of the five rows
            script.state[(None, key)] = {"email": f"old{key}@x.com"}

        first = support.run_one(project, "users")

        # 3 of 5 missing would be 60% rejected, over the default max_rejected_ratio 0.1
        assert first.status is RunStatus.SUCCEEDED, first.error
        assert first.warning is None
        assert first.counts["skipped"] == 3
        assert first.counts["succeeded"] == 2
        assert first.counts["rejected"] == 0
        assert first.as_dict()["skipped"] == 3
        assert set(script.state) == {(None, "1"), (None, "2")}  # update created nothing
        skipped = project.errors(first.id)
        assert sorted(e.row_key for e in skipped) == ["3", "4", "5"]
        assert {e.kind for e in skipped} == {"skipped"}
        assert "not found in the destination" in skipped[0].reason
        assert project.rejected_rows("users") == []  # no failure opened: retry sends nothing
        assert project.retry("users") is None

        second = support.run_one(project, "users")  # nothing changed: nothing is sent again
        assert second.status is RunStatus.SUCCEEDED
        assert second.counts["sent"] == 0
        assert second.counts["skipped"] == 0

        support.warehouse(tmp_path, "update users set email = 'new3@x.com' where id = 3")
        third = support.run_one(project, "users")  # the row changed: it is tried again
        assert third.counts["sent"] == 1
        assert third.counts["skipped"] == 1

        script.state[(None, "3")] = {"email": "made@x.com"}  # the record now exists
        support.warehouse(tmp_path, "update users set email = 'newer3@x.com' where id = 3")
        fourth = support.run_one(project, "users")
        assert fourth.counts["succeeded"] == 1
        assert fourth.counts["skipped"] == 0
        assert script.state[(None, "3")]["email"] == "newer3@x.com"
    finally:
        project.close()


def test_an_insert_sync_counts_a_changed_row_once(
    tmp_path: Path, script: Script, engine: str
) -> None:
    project = project_with(tmp_path, "insert", engine)
    try:
        support.run_one(project, "users")
        support.warehouse(tmp_path, "update users set email = 'new2@x.com' where id = 2")

        seen = support.run_one(project, "users")
        assert seen.counts["changed"] == 1  # the run that sees the change counts it
        assert seen.counts["sent"] == 0  # insert never sends a change

        again = support.run_one(project, "users")
        assert again.counts["changed"] == 0  # the same change is not counted again
        assert again.counts["held"] == 1  # but shown as state
        assert again.counts["sent"] == 0

        support.warehouse(tmp_path, "update users set email = 'newer2@x.com' where id = 2")
        changed_again = support.run_one(project, "users")
        assert changed_again.counts["changed"] == 1  # a new change is counted, once
        assert [r.key for r in script.received] == ["1", "2", "3", "4", "5"]
    finally:
        project.close()


def test_an_insert_syncs_held_changes_are_sent_once_the_mode_sends_changes(
    tmp_path: Path, script: Script, engine: str
) -> None:
    project = project_with(tmp_path, "insert", engine)
    try:
        support.run_one(project, "users")
        support.warehouse(tmp_path, "update users set email = 'new2@x.com' where id = 2")
        support.run_one(project, "users")
        support.run_one(project, "users")
    finally:
        project.close()
    upsert = project_with(tmp_path, "upsert", engine)
    support.warehouse(tmp_path, "update users set email = 'new2@x.com' where id = 2")
    try:
        record = support.run_one(upsert, "users")
        assert record.counts["changed"] == 1  # the mark decides what is counted, not sent
        assert script.state[(None, "2")]["email"] == "new2@x.com"
    finally:
        upsert.close()


@pytest.mark.parametrize("mode", ["upsert", "insert", "update"])
def test_rows_that_left_the_model_of_a_sync_that_deletes_nothing_are_removed_once(
    tmp_path: Path, script: Script, mode: str, engine: str
) -> None:
    project = project_with(tmp_path, mode, engine)
    try:
        for key in "12345":  # so that update finds every record
            script.state[(None, key)] = {"email": "x"}
        support.run_one(project, "users")
        support.warehouse(tmp_path, "delete from users where id in (4, 5)")

        left = support.run_one(project, "users")
        assert left.counts["removed"] == 2
        assert left.counts["left"] == 0

        later = support.run_one(project, "users")
        assert later.status is RunStatus.SUCCEEDED
        assert later.counts["removed"] == 0  # not counted again
        assert later.counts["left"] == 2  # but shown as state, with since when
        summary = later.as_dict()
        assert summary["left"] == 2
        assert summary["left_since"] is not None
        assert summary["left_since"][:4] == str(left.created_at.year)

        support.warehouse(tmp_path, "insert into users values (5, 'u5@x.com')")
        back = support.run_one(project, "users")  # back with its values: nothing to send
        assert back.counts["left"] == 1
        assert back.counts["sent"] == 0
        support.warehouse(tmp_path, "delete from users where id = 5")
        gone_again = support.run_one(project, "users")
        assert gone_again.counts["removed"] == 1  # it left again: counted again, once
        assert gone_again.counts["left"] == 1
    finally:
        project.close()


def test_a_mirror_sync_still_deletes_rows_that_left_while_it_did_not_delete(
    tmp_path: Path, script: Script, engine: str
) -> None:
    project = project_with(tmp_path, "upsert", engine)
    try:
        support.run_one(project, "users")
        support.warehouse(tmp_path, "delete from users where id = 5")
        support.run_one(project, "users")
        support.run_one(project, "users")
    finally:
        project.close()
    mirror = support.users_project(
        tmp_path,
        [(i, f"u{i}@x.com") for i in range(1, 5)],
        syncs=f"""  users:
    model: users
    destination: dest
    mode: mirror
    mappings: {{email: email}}
    max_delete_ratio: 1
    diff: {{engine: {engine}}}
""",
    )
    try:
        record = support.run_one(mirror, "users")
        assert record.counts["removed"] == 1
        assert (None, "5") not in script.state
    finally:
        mirror.close()


def test_a_retry_marks_no_other_row_as_left(tmp_path: Path, script: Script, engine: str) -> None:
    project = project_with(tmp_path, "upsert", engine)
    try:
        script.reject["2"] = "the vendor refuses row 2"
        project_run = support.run_one(project, "users")
        assert project_run.counts["rejected"] == 1
        support.warehouse(tmp_path, "delete from users where id = 4")
        del script.reject["2"]

        retried = project.retry("users")  # the rows waiting only: row 2
        assert retried is not None and retried.counts["succeeded"] == 1

        after = support.run_one(project, "users")
        assert after.counts["removed"] == 1  # row 4 left: this run is the first to see it
        assert after.counts["left"] == 0
    finally:
        project.close()


def test_undertow_runs_shows_the_rows_that_left_as_state_and_the_skipped_count(
    tmp_path: Path, script: Script
) -> None:
    from typer.testing import CliRunner

    from undertow.cli import app

    project = project_with(tmp_path, "update", "local")
    try:
        script.state[(None, "1")] = {"email": "x"}
        support.run_one(project, "users")  # rows 2-5: skipped
        support.warehouse(tmp_path, "delete from users where id = 1")
        support.run_one(project, "users")  # row 1 leaves: removed
        support.run_one(project, "users")  # then state
    finally:
        project.close()
    cli = CliRunner()
    shown = cli.invoke(app, ["runs", "users", "--project", str(tmp_path)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "skipped" in shown.output
    assert "state: 1 row(s) have left the model since 20" in shown.output
    as_json = cli.invoke(app, ["runs", "users", "--json", "--project", str(tmp_path)])
    runs = json.loads(as_json.output)
    assert [r["skipped"] for r in runs] == [0, 0, 4]  # newest first
    assert runs[0]["left"] == 1 and runs[0]["state"]
