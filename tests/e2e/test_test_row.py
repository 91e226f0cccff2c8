"""`undertow test` and `undertow debug` on a sample project, through the real CLI."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.e2e.conftest import Receiver, SampleProject

SECRET = "whk-secret-5d1f0c9a"


def setup(project: SampleProject, receiver: Receiver, extra: str = "") -> None:
    project.users([(1, "a@x.com", "free"), (2, "b@x.com", "pro"), (42, "c@x.com", "pro")])
    project.write(
        f"""
        name: e2e
        sources:
          warehouse: {{type: duckdb, path: warehouse.duckdb}}
        destinations:
          hook:
            type: webhook
            url: "{receiver.url}"
            headers: {{Authorization: "Bearer ${{HOOK_TOKEN}}"}}
        models:
          users: {{source: warehouse, sql: "select id, email, plan from users", primary_key: id}}
        syncs:
          users_to_hook:
            model: users
            destination: hook
            mappings: {{id: id, email: email, plan: plan}}
        """
        + extra
    )
    project.env["HOOK_TOKEN"] = SECRET


def test_test_sends_one_row_for_real_and_records_nothing(
    project: SampleProject, receiver: Receiver
) -> None:
    setup(project, receiver)
    result = project.run("test", "users_to_hook", "--key", "id=42")
    assert result.code == 0, result
    assert "upsert of row 42: accepted" in result.out
    assert "POST " in result.out and "→ 200" in result.out and '"c@x.com"' in result.out
    assert SECRET not in result.text
    assert [r["id"] for r in receiver.records()] == [42]
    # nothing recorded: no run, and the next run sends every row, 42 included
    assert project.run("runs", "users_to_hook", "--json").json() == []
    receiver.fake.reset()
    assert project.run("run", "users_to_hook").code == 0
    assert sorted(r["id"] for r in receiver.records()) == [1, 2, 42]

    # the debugger kept the test's request (no run id) and the run's, findable by key
    shown = project.run("debug", "users_to_hook", "--key", "42", "--json")
    entries = [json.loads(line) for line in shown.out.splitlines()]
    assert [e["run_id"] is None for e in entries] == [True, False]
    assert all("42" in e["keys"] and e["status"] == 200 for e in entries)
    assert entries[0]["request_headers"]["authorization"] == "***"
    listed = project.run("debug", "users_to_hook")
    assert listed.code == 0 and "POST" in listed.out and SECRET not in listed.text


def test_test_dry_run_sends_nothing_and_shows_the_record(
    project: SampleProject, receiver: Receiver
) -> None:
    setup(project, receiver)
    result = project.run("test", "users_to_hook", "--key", "id=2", "--dry-run", "--json")
    assert result.code == 0, result
    data = result.json()
    assert data["outcome"] == "dry run" and data["sent"] is False
    assert data["payload"] == {"id": 2, "email": "b@x.com", "plan": "pro"}
    assert receiver.fake.requests == []
    # the request that would carry it, built by the connector and stopped before it left
    [request] = data["exchanges"]
    assert request["method"] == "POST" and request["status"] is None
    assert "not sent: dry run" in request["error"]
    assert request["request_headers"]["authorization"] == "***"
    assert json.loads(request["request_body"])["records"][0]["email"] == "b@x.com"
    assert SECRET not in result.text
    # in the terminal too; and the debugger keeps only what was sent
    shown = project.run("test", "users_to_hook", "--key", "id=2", "--dry-run")
    assert shown.code == 0, shown
    assert "POST " in shown.out and "not sent: dry run" in shown.out and "b@x.com" in shown.out
    assert "authorization: ***" in shown.out and SECRET not in shown.text
    assert project.run("debug", "users_to_hook", "--json").out.strip() == ""
    assert receiver.fake.requests == []


def test_test_reports_the_vendors_refusal_and_exits_1(
    project: SampleProject, receiver: Receiver
) -> None:
    setup(project, receiver)
    receiver.fake.queue_response(400, {"error": "plan is read-only"})
    result = project.run("test", "users_to_hook", "--key", "id=1")
    assert result.code == 1, result
    assert "rejected" in result.out and "plan is read-only" in result.out
    assert "→ 400" in result.out


def test_test_names_a_wrong_key_column_and_a_missing_row(
    project: SampleProject, receiver: Receiver
) -> None:
    setup(project, receiver)
    wrong = project.run("test", "users_to_hook", "--key", "idd=1")
    assert wrong.code == 1 and "'idd' is not a primary key column" in wrong.err, wrong
    assert "did you mean" in wrong.err and "Traceback" not in wrong.text
    missing = project.run("test", "users_to_hook", "--key", "id=7")
    assert missing.code == 1 and "no row of model 'users' has key id=7" in missing.err, missing
    bad = project.run("test", "users_to_hook", "--key", "id")
    assert bad.code == 2 and "COLUMN=VALUE" in bad.text
    # a value with quotes is text, never SQL
    sneaky = project.run("test", "users_to_hook", "--key", "id=1' or '1'='1")
    assert sneaky.code == 1 and "no row of model 'users'" in sneaky.err, sneaky
    assert receiver.fake.requests == []


def test_debug_masks_payload_values_when_the_sync_says_so(
    project: SampleProject, receiver: Receiver
) -> None:
    setup(project, receiver, "    debugger: {payloads: masked}\n")
    assert project.run("run", "users_to_hook").code == 0
    shown = project.run("debug", "users_to_hook", "--key", "1", "--json")
    [entry] = [json.loads(line) for line in shown.out.splitlines()]
    assert entry["masked"] is True
    assert "a@x.com" not in shown.out and '"***"' in entry["request_body"]
    state = (project.root / ".undertow" / "state.db").read_bytes()
    assert b"a@x.com" not in state and SECRET.encode() not in state
