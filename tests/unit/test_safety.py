"""Safety rails: delete limits (max_deletes, max_delete_ratio) and the rejected-row ratio."""

from __future__ import annotations

from pathlib import Path

import pytest
from project_support import Script, run_one, users_project, warehouse

from undertow.destinations.base import Operation
from undertow.pipeline.diff import LocalDiffEngine
from undertow.project import Project
from undertow.state.store import RunRecord, RunStatus

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("script")]


def build(folder: Path, ids: list[int | None], *, mode: str = "mirror", extra: str = "") -> Project:
    return users_project(
        folder,
        [(i, f"u{i}@x.com") for i in ids],
        name="guard",
        syncs=f"""  users_sync:
    model: users
    destination: dest
    mode: {mode}
    mappings: {{id: id, email: email}}
{extra}""",
    )


def run(project: Project, **kwargs: bool) -> RunRecord:
    return run_one(project, "users_sync", **kwargs)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "guard"


# -- delete limits ----------------------------------------------------------------------------


def test_an_empty_model_deletes_nothing_until_allowed_once(folder: Path, script: Script) -> None:
    project = build(folder, list(range(1, 11)))
    try:
        assert run(project).status is RunStatus.SUCCEEDED
        warehouse(folder, "delete from users")  # the model suddenly returns 0 rows
        script.received.clear()

        refused = run(project)
        assert refused.status is RunStatus.FAILED
        assert refused.error is not None
        for needle in (
            "sync 'users_sync'",
            "would delete 10 of the 10 row(s) it has sent (100%)",
            "max_delete_ratio 0.5 (50%)",
            "nothing was sent",
            "undertow run users_sync --allow-deletes",
            "undertow plan users_sync",
        ):
            assert needle in refused.error, refused.error
        assert script.received == [], "fails after the diff and before anything is sent"
        assert (refused.counts["removed"], refused.counts["sent"]) == (10, 0)
        engine = LocalDiffEngine(project.loaded.state_dir, "users_sync")
        try:
            assert not engine.has_plan(refused.id), "the change set is discarded"
            assert engine.snapshot_rows() == 10
        finally:
            engine.close()
        assert project.store.unfinished_run("users_sync") is None
        assert project.store.held_locks() == {}

        again = run(project)  # diffs again, refuses again
        assert again.status is RunStatus.FAILED and again.id != refused.id
        assert script.received == []

        allowed = run(project, allow_deletes=True)
        assert allowed.status is RunStatus.SUCCEEDED, allowed.error
        assert script.ops("delete") == [str(i) for i in range(1, 11)]

        script.received.clear()
        warehouse(folder, "insert into users values (11, 'u11@x.com')")
        after = run(project)  # the override was for one run only; nothing left to delete
        assert after.status is RunStatus.SUCCEEDED
        assert script.sent() == [("upsert", "11")]
    finally:
        project.close()


def test_deletes_up_to_the_ratio_go_through(folder: Path, script: Script) -> None:
    project = build(folder, list(range(1, 11)))
    try:
        run(project)
        warehouse(folder, "delete from users where id <= 5")  # 50%: not more than the limit
        record = run(project)
        assert record.status is RunStatus.SUCCEEDED, record.error
        assert script.ops("delete") == ["1", "2", "3", "4", "5"]
    finally:
        project.close()


def test_max_deletes_caps_the_count_and_the_ratio_is_configurable(
    folder: Path, script: Script
) -> None:
    project = build(
        folder, list(range(1, 21)), extra="    max_deletes: 3\n    max_delete_ratio: 1\n"
    )
    try:
        run(project)
        warehouse(folder, "delete from users where id <= 4")
        refused = run(project)
        assert refused.status is RunStatus.FAILED
        assert refused.error is not None
        assert "would delete 4 row(s), more than max_deletes 3" in refused.error
        assert script.ops("delete") == []
        warehouse(folder, "insert into users values (1, 'u1@x.com')")
        record = run(project)  # 3 deletes: at the limit
        assert record.status is RunStatus.SUCCEEDED, record.error
        assert script.ops("delete") == ["2", "3", "4"]
    finally:
        project.close()


def test_list_removals_count_as_deletes(folder: Path, script: Script) -> None:
    script.operations = frozenset({Operation.ADD, Operation.REMOVE})
    project = build(folder, list(range(1, 5)))
    try:
        run(project)
        assert script.ops("add") == ["1", "2", "3", "4"]
        warehouse(folder, "delete from users where id > 1")
        refused = run(project)
        assert refused.status is RunStatus.FAILED
        assert refused.error is not None
        assert "would remove from the list 3 of the 4 row(s)" in refused.error
        assert script.ops("remove") == []
    finally:
        project.close()


def test_remove_mode_is_capped_by_max_deletes_only(folder: Path, script: Script) -> None:
    project = build(folder, list(range(1, 8)), mode="remove", extra="    max_deletes: 5\n")
    try:
        refused = run(project)  # a model of 7 people to take out; the snapshot is empty
        assert refused.status is RunStatus.FAILED
        assert refused.error is not None and "remove from the list 7 row(s)" in refused.error
        assert script.received == []
        warehouse(folder, "delete from users where id > 5")
        assert run(project).status is RunStatus.SUCCEEDED
        assert script.ops("remove") == ["1", "2", "3", "4", "5"]
    finally:
        project.close()


def test_the_allow_deletes_flag_of_the_cli_reaches_the_run(folder: Path) -> None:
    from typer.testing import CliRunner

    from undertow.cli import app

    project = build(folder, [1, 2])
    try:
        run(project)
    finally:
        project.close()
    warehouse(folder, "delete from users")
    cli = CliRunner()
    refused = cli.invoke(app, ["run", "users_sync", "--project", str(folder)])
    assert refused.exit_code == 1
    assert "--allow-deletes" in refused.output
    allowed = cli.invoke(app, ["run", "users_sync", "--allow-deletes", "--project", str(folder)])
    assert allowed.exit_code == 0, allowed.output
    assert "succeeded" in allowed.output


# -- rejected-row ratio -----------------------------------------------------------------------


def test_rejections_within_the_ratio_warn_and_above_it_fail(folder: Path, script: Script) -> None:
    project = build(folder, list(range(1, 11)))
    try:
        script.reject = {"3": "invalid email"}
        warned = run(project)  # 1 of 10 = 10%: not more than the default 0.1
        assert warned.status is RunStatus.SUCCEEDED, warned.error
        assert warned.warning is not None
        assert "1 of 10 row(s) rejected (10%)" in warned.warning
        assert f"undertow errors {warned.id}" in warned.warning
        stored = project.store.get_run(warned.id)
        assert stored is not None and stored.warning == warned.warning
        assert stored.as_dict()["warning"] == warned.warning

        script.reject = {"3": "invalid email", "4": "invalid email"}
        warehouse(folder, "update users set email = 'new4@x.com' where id = 4")
        failed = run(project)  # 2 of 10 = 20%
        assert failed.status is RunStatus.FAILED
        assert failed.error is not None
        assert "2 of 10 row(s) rejected (20%), more than max_rejected_ratio 0.1" in failed.error
        assert "undertow retry users_sync" in failed.error
        assert failed.warning is None

        script.reject.clear()
        clean = run(project)
        assert clean.status is RunStatus.SUCCEEDED and clean.warning is None
        assert clean.counts["succeeded"] == 2
    finally:
        project.close()


def test_max_rejected_ratio_zero_fails_on_any_rejection_and_keys_count(
    folder: Path, script: Script
) -> None:
    project = build(folder, [1, 2, 2, 3], extra="    max_rejected_ratio: 0\n")
    try:
        record = run(project)  # the duplicated key 2 rejects two rows
        assert record.status is RunStatus.FAILED
        assert record.error is not None and "2 of 4 row(s) rejected (50%)" in record.error
        assert script.sorted_keys() == ["1", "3"], "the other rows are sent"
    finally:
        project.close()


# -- regressions found by the bad-input catalogue ----------------------------------------------


def test_a_mapping_that_grows_a_column_folds_into_the_snapshot(
    folder: Path, script: Script
) -> None:
    """The snapshot gains the new column after ``_ut_fp``; the fold must not misalign them."""
    project = build(folder, [1, 2])
    try:
        run(project)
    finally:
        project.close()
    text = (folder / "undertow.yml").read_text()
    text = text.replace("sql: select * from users", "sql: \"select *, 'gold' as tier from users\"")
    text = text.replace("mappings: {id: id, email: email}", "mappings: {id: id, tier: tier}")
    (folder / "undertow.yml").write_text(text)
    project = Project.load(str(folder))
    try:
        script.received.clear()
        grown = run(project)
        assert grown.status is RunStatus.SUCCEEDED, grown.error
        assert script.ops("upsert") == ["1", "2"]  # the payload changed: sent again
        script.received.clear()
        assert run(project).counts["sent"] == 0, "and folded: not sent a third time"
    finally:
        project.close()
