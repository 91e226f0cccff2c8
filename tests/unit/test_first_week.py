"""What a first week of use trips over, through the Project facade (issue 15, part 2): each
test failed before its fix."""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson
import pytest
from project_support import Script, run_one, users_project

from undertow.project import Project

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("script")]


def test_relative_destination_paths_resolve_against_the_project_not_the_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "proj"
    elsewhere = tmp_path / "shell"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # `undertow run --project ../proj` from another folder
    users_project(
        folder,
        [(1, "a@x.com")],
        destinations="""inbox: {type: webhook, url: "local://inbox.jsonl"}
file: {type: file, path: out/users.jsonl, format: jsonl}""",
        syncs="""  to_inbox: {model: users, destination: inbox, mode: upsert}
  to_file: {model: users, destination: file, mode: upsert}
""",
    ).close()
    (folder / "out").mkdir()
    project = Project.load(str(folder))
    try:
        assert project.validate() == []
        for sync in ("to_inbox", "to_file"):
            record = run_one(project, sync)
            assert str(record.status) == "succeeded", record.error
    finally:
        project.close()
    assert not list(elsewhere.iterdir()), "nothing lands in the shell's folder"
    [posted] = [orjson.loads(x) for x in (folder / "inbox.jsonl").read_bytes().splitlines()]
    assert "a@x.com" in orjson.dumps(posted).decode()
    assert (folder / "out" / "users.jsonl").read_text().count("a@x.com") == 1


def test_an_object_typo_offers_the_closest_object(tmp_path: Path) -> None:
    project = users_project(
        tmp_path / "p",
        [(1, "a@x.com")],
        destinations='crm: {type: hubspot, token: "pat-test"}',
        syncs="""  to_crm:
    model: users
    destination: crm
    object: contcts
    mode: upsert
    match: {email: email}
""",
    )
    try:
        [problem] = project.validate(connect=False)
    finally:
        project.close()
    assert "no object 'contcts'" in problem.message
    assert "did you mean 'contacts'?" in problem.message


def test_key_errors_point_at_the_model_not_at_retry(tmp_path: Path) -> None:
    """Rows with a NULL or duplicate key are rejected by the diff; `undertow retry` would skip
    them again, so the message must not send the user there."""
    folder = tmp_path / "p"
    project = users_project(
        folder,
        [(1, "a@x.com"), (2, "b@x.com"), (2, "b2@x.com"), (None, "n@x.com")],
        syncs="""  users_sync:
    model: users
    destination: dest
    mode: upsert
    max_rejected_ratio: 0.1
""",
    )
    try:
        failed = run_one(project, "users_sync")
        assert str(failed.status) == "failed"
        assert failed.error is not None and "undertow retry" not in failed.error
        assert "primary key" in failed.error and "NULL or duplicate" in failed.error
        with duckdb.connect(str(folder / "wh.duckdb")) as con:
            con.execute("delete from users where email in ('b2@x.com', 'n@x.com')")
        assert str(run_one(project, "users_sync").status) == "succeeded"
    finally:
        project.close()


def test_other_rejections_still_point_at_retry(tmp_path: Path, script: Script) -> None:
    script.reject = {"1": "INVALID_EMAIL", "2": "INVALID_EMAIL"}
    project = users_project(
        tmp_path / "p",
        [(1, "a@x.com"), (2, "b@x.com"), (3, "c@x.com")],
        syncs="""  users_sync:
    model: users
    destination: dest
    mode: upsert
    max_rejected_ratio: 0.1
""",
    )
    try:
        failed = run_one(project, "users_sync")
        assert failed.error is not None and "undertow retry users_sync" in failed.error
    finally:
        project.close()


def test_plan_warns_when_the_delete_guard_will_refuse_the_run(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    project = users_project(
        folder,
        [(i, f"u{i}@x.com") for i in range(1, 11)],
        syncs="  users_sync: {model: users, destination: dest, mode: mirror}\n",
    )
    try:
        assert str(run_one(project, "users_sync").status) == "succeeded"
        assert project.plan("users_sync").warnings == []
        with duckdb.connect(str(folder / "wh.duckdb")) as con:
            con.execute("delete from users where id > 2")  # 80% of the rows leave the model
        preview = project.plan("users_sync")
        [warning] = preview.warnings
        assert "will refuse this plan" in warning and "delete 8 of the 10" in warning
        assert "--allow-deletes" in warning
        assert preview.as_dict()["warnings"] == [warning]
        assert str(run_one(project, "users_sync").status) == "failed"  # as plan said
    finally:
        project.close()


def test_plan_counts_rows_the_destination_shaping_rejects(tmp_path: Path) -> None:
    """HubSpot takes flat properties: a nested object is refused by the connector itself,
    so plan counts those rows as rejected, as run will (Destination.preview says so)."""
    rows = [(i, f"u{i}@x.com", '{"city": "Paris"}' if i % 2 else '"Paris"') for i in range(1, 9)]
    project = users_project(
        tmp_path / "p",
        rows,
        columns="id integer, email varchar, address varchar",
        destinations='crm: {type: hubspot, token: "pat-test"}',
        syncs="""  to_crm:
    model: users
    destination: crm
    object: contacts
    mode: upsert
    match: {email: email}
    mappings:
      email: email
      address: {json: address}          # an object on odd rows, a string on even ones
""",
    )
    try:
        preview = project.plan("to_crm", limit=2)
    finally:
        project.close()
    counts = preview.as_dict()["counts"]
    assert preview.shape_rejected == 4 and counts["rejected"] == 4 and counts["to_send"] == 4
    shown = [r for r in preview.rejected if r["kind"] == "destination"]
    assert len(shown) == 2 and all("nested object" in r["reason"] for r in shown)
    assert len(preview.samples) == 2 and all(
        "rejected" not in s["payload"] for s in preview.samples
    )
