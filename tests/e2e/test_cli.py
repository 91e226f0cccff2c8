"""The ``undertow`` command end to end: real subprocesses, real files, real sockets.

Each test is one user story on a sample project (see ``conftest.py``). Subprocesses cost
about a second each, so a test walks a whole story and asserts a lot at every step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from undertow.testing.hubspot import HubSpotFake
from undertow.testing.server import free_port, serve_in_thread
from undertow.testing.webhook import WebhookReceiver

if TYPE_CHECKING:
    from tests.e2e.conftest import Receiver, Result, SampleProject

pytestmark = pytest.mark.e2e

RUN_KEYS = {
    "sync", "run_id", "status", "extracted", "added", "changed", "removed", "rejected",
    "sent", "succeeded", "failed",
}  # fmt: skip
USERS = [
    (1, "ada@example.com", "free"),
    (2, "bob@example.com", "free"),
    (3, "cy@example.com", "pro"),
]
SECRET = "whk-live-7f3a9c2e11d04b-wrong"


def hook_project(
    project: SampleProject, url: str, *, mode: str = "mirror", extra: str = ""
) -> None:
    """One webhook sync of the users model, plus ``extra`` YAML appended under the root."""
    project.write(
        f"""
        name: e2e
        sources:
          warehouse: {{type: duckdb, path: warehouse.duckdb}}
        destinations:
          hook: {{type: webhook, url: "{url}", max_concurrency: 2}}
        models:
          users:
            source: warehouse
            sql: select id, email, plan from users
            primary_key: id
        syncs:
          users_to_hook:
            model: users
            destination: hook
            mode: {mode}
            mappings: {{id: id, email: email, plan: plan}}
        """
        + extra
    )


def expect_fail(result: Result, *needles: str) -> None:
    """Exit 1 and every needle in the output (stdout + stderr), with no traceback."""
    assert result.code == 1, result
    for needle in needles:
        assert needle in result.text, f"{needle!r} missing from:\n{result}"
    assert "Traceback" not in result.text, result


def sent_ids(receiver: Receiver, operation: str | None = None) -> list[int]:
    """Record ids the receiver accepted (optionally of one operation), in arrival order."""
    ids: list[int] = []
    for request in receiver.fake.requests:
        body = request.body
        accepted = 200 <= request.status < 300 and not request.replayed
        if accepted and isinstance(body, dict) and operation in (None, body.get("operation")):
            ids.extend(r["id"] for r in body["records"])
    return ids


# -- the happy path ---------------------------------------------------------------------------


def test_happy_path_validate_plan_run_change_history_reset(
    project: SampleProject, receiver: Receiver
) -> None:
    project.users(USERS)
    hook_project(project, receiver.url)

    r = project.run("validate")
    assert r.code == 0 and "valid" in r.out, r

    r = project.run("plan", "users_to_hook", "--json")
    assert r.code == 0, r
    preview = r.json()
    assert preview["counts"]["added"] == 3 and preview["counts"]["to_send"] == 3
    assert {s["key"] for s in preview["samples"]} == {"1", "2", "3"}
    assert receiver.fake.requests == [], "plan must send nothing"

    r = project.run("run", "users_to_hook", "--json")
    assert r.code == 0, r
    first = r.json()
    assert set(first) >= RUN_KEYS, f"missing keys: {RUN_KEYS - set(first)}"
    assert first["sync"] == "users_to_hook" and first["status"] == "succeeded"
    counts = {k: first[k] for k in RUN_KEYS - {"sync", "run_id", "status"}}
    assert counts == dict(
        extracted=3, added=3, changed=0, removed=0, rejected=0, sent=3, succeeded=3, failed=0
    )
    assert sorted(sent_ids(receiver)) == [1, 2, 3]
    assert all("idempotency-key" in q.headers for q in receiver.fake.requests)

    # the loader changes the warehouse: one update, one delete, one insert
    project.sql(
        "UPDATE users SET plan = 'enterprise' WHERE id = 2",
        "DELETE FROM users WHERE id = 3",
        "INSERT INTO users VALUES (4, 'dee@example.com', 'free')",
    )
    r = project.run("plan", "users_to_hook")
    assert r.code == 0, r
    assert "+1 added" in r.out and "~1 changed" in r.out and "-1 removed" in r.out, r
    assert "2: plan: 'free' → 'enterprise'" in r.out, r

    receiver.fake.reset()
    r = project.run("run", "users_to_hook", "--json")
    assert r.code == 0, r
    second = r.json()
    assert (second["added"], second["changed"], second["removed"]) == (1, 1, 1)
    assert (second["sent"], second["succeeded"], second["failed"]) == (3, 3, 0)
    assert sorted(sent_ids(receiver, "upsert")) == [2, 4]
    assert sent_ids(receiver, "delete") == [3]

    r = project.run("status", "--json")
    assert r.code == 0, r
    (row,) = r.json()
    assert row["sync"] == "users_to_hook" and row["running"] is False
    assert row["last_run"]["run_id"] == second["run_id"]
    assert row["last_run"]["status"] == "succeeded"

    r = project.run("runs", "users_to_hook", "--json")
    assert r.code == 0, r
    assert [x["run_id"] for x in r.json()] == [second["run_id"], first["run_id"]]

    r = project.run("errors", second["run_id"], "--json")
    assert r.code == 0 and r.json() == [], r

    # reset asks for confirmation; without a terminal it refuses and changes nothing
    r = project.run("reset", "users_to_hook")
    expect_fail(r, "--yes")
    r = project.run("reset", "users_to_hook", "--yes", "--json")
    assert r.code == 0, r
    assert r.json() == {"sync": "users_to_hook", "forgotten_rows": 3}

    receiver.fake.reset()
    r = project.run("run", "users_to_hook")
    assert r.code == 0 and "succeeded" in r.out, r
    assert sorted(sent_ids(receiver, "upsert")) == [1, 2, 4], "a reset resends every row"


def test_file_destination_path_is_relative_to_the_project(
    project: SampleProject, tmp_path: Path
) -> None:
    project.users(USERS)
    project.write(
        """
        name: e2e
        sources:
          warehouse: {type: duckdb, path: warehouse.duckdb}
        destinations:
          out: {type: file, path: out/users.jsonl}
        models:
          users: {source: warehouse, sql: select * from users, primary_key: id}
        syncs:
          users_to_file:
            model: users
            destination: out
            mappings: {id: id, email: email, plan: plan}
        """
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = project.run("run", "users_to_file", "--json", cwd=elsewhere)
    assert r.code == 0 and r.json()["succeeded"] == 3, r
    assert [row["id"] for row in project.jsonl("users.jsonl")] == [1, 2, 3]
    assert project.jsonl("users.jsonl")[0] == {
        "operation": "upsert", "id": 1, "email": "ada@example.com", "plan": "free"
    }  # fmt: skip
    assert not (elsewhere / "out").exists()


def test_run_all_json_is_one_object_per_run(project: SampleProject, receiver: Receiver) -> None:
    project.users(USERS)
    hook_project(project, receiver.url)
    text = (project.root / "undertow.yml").read_text()
    text = text.replace(
        "destinations:\n", "destinations:\n  out: {type: file, path: out/ids.jsonl}\n"
    )
    text += "  users_to_file: {model: users, destination: out, mappings: {id: id}}\n"
    (project.root / "undertow.yml").write_text(text)
    r = project.run("run", "--all", "--json")
    assert r.code == 0, r
    # JSON Lines: one object per run, as documented in the README
    lines = [json.loads(line) for line in r.out.splitlines()]
    assert [x["sync"] for x in lines] == ["users_to_hook", "users_to_file"]


# -- configuration errors ---------------------------------------------------------------------


def test_yaml_typo_names_the_file_and_line(project: SampleProject) -> None:
    project.write(
        """
        name: e2e
        sources:
          warehouse: {type: duckdb, path: warehouse.duckdb}
        destinations:
          out: {type: file, path: out/users.jsonl}
           hook: {type: webhook, url: "http://127.0.0.1:9/x"}
        """
    )
    r = project.run("validate")
    expect_fail(r, "undertow.yml:6", "not valid YAML", "indentation")
    assert r.out == "", "errors go to stderr"


def test_validate_reports_every_config_problem_at_once(project: SampleProject) -> None:
    project.users(USERS)
    project.write(
        """
        name: e2e
        sources:
          warehouse: {type: duckdb, path: warehouse.duckdb}
        destinations:
          hook:
            type: webhook
            url: http://127.0.0.1:9/x
            headers: {Authorization: "Bearer ${HOOK_TOKEN}"}
        models:
          users: {source: warehous, sql: select * from users, primary_key: id}
        syncs:
          users_to_hook:
            model: users
            destination: hook
            mode: upsrt
            mapings: {id: id}
        """
    )
    r = project.run("validate")
    expect_fail(
        r,
        "problem(s)",
        # a missing secret: the variable, where it is used, and how to set it
        "undertow.yml:8 destinations.hook.headers.Authorization",
        "HOOK_TOKEN is not set",
        "export HOOK_TOKEN=",
        ".env",
        # an unknown reference
        "undertow.yml:10 models.users.source",
        "did you mean 'warehouse'?",
        # an unknown key, with the allowed keys
        "undertow.yml:16 syncs.users_to_hook.mapings",
        "unknown key 'mapings'; did you mean 'mappings'?",
        # a bad value with the allowed values
        "undertow.yml:15 syncs.users_to_hook.mode",
        "did you mean 'upsert'?",
    )

    r = project.run("validate", "--json")
    assert r.code == 1, r
    body = r.json()
    assert "HOOK_TOKEN" in json.dumps(body) and "mapings" in json.dumps(body)


def test_validate_compiles_models_and_checks_connections(project: SampleProject) -> None:
    project.users(USERS)
    closed = free_port()
    project.write(
        f"""
        name: e2e
        sources:
          warehouse: {{type: duckdb, path: warehouse.duckdb}}
        destinations:
          hook: {{type: webhook, url: "http://127.0.0.1:{closed}/x"}}
        models:
          broken:
            source: warehouse
            sql: select id, email fro users
            primary_key: id
          keyless:
            source: warehouse
            sql: select email, plan from users
            primary_key: id
        syncs:
          broken_to_hook: {{model: broken, destination: hook}}
          keyless_to_hook: {{model: keyless, destination: hook, mappings: {{email: email}}}}
        """
    )
    r = project.run("validate", "--json")
    assert r.code == 1, r
    body = r.json()
    assert body["ok"] is False
    problems = {p["key"]: p for p in body["problems"]}
    assert problems["destinations.hook"]["line"] == 5
    assert f"cannot connect to 127.0.0.1:{closed}" in problems["destinations.hook"]["message"]
    broken = problems["models.broken"]
    assert broken["file"].endswith("undertow.yml") and broken["line"] == 7
    # `select id, email fro users`: the parser stops at `users`, character 22
    assert "model 'broken'" in broken["message"] and "at character 22" in broken["message"]
    keyless = problems["syncs.keyless_to_hook"]
    assert keyless["line"] == 17
    assert "primary key column(s) 'id' not among its columns" in keyless["message"]
    assert "primary_key" in keyless["message"], "says how to fix"

    # the same problems from the commands that use the models; --debug adds the traceback
    r = project.run("run", "keyless_to_hook")
    expect_fail(r, "keyless_to_hook", "model 'keyless'", "primary key", "fix `primary_key:`")
    r = project.run("plan", "broken_to_hook", "--debug")
    assert r.code == 1, r
    assert "Traceback (most recent call last)" in r.err and "ModelError" in r.err, r
    assert "model 'broken' on source 'warehouse' failed at character 22" in r.err, r


def test_unknown_sync_offers_the_closest_name(project: SampleProject, receiver: Receiver) -> None:
    project.users(USERS)
    hook_project(project, receiver.url)
    r = project.run("run", "users_to_hook", "user_to_hok")
    expect_fail(r, "unknown sync 'user_to_hok'", "did you mean 'users_to_hook'?")
    assert receiver.fake.requests == [], "unknown names fail before anything runs"

    r = project.run("plan", "user_to_hok", "--json")
    assert r.code == 1 and r.err == "", r
    body = r.json()
    assert body["type"] == "ConfigError" and "did you mean 'users_to_hook'?" in body["error"]


# -- bad rows ---------------------------------------------------------------------------------


def test_duplicate_and_null_keys_are_rejected_and_the_rest_delivered(
    project: SampleProject, receiver: Receiver
) -> None:
    project.users([*USERS, (2, "bob2@example.com", "pro"), (None, "nokey@example.com", "free")])
    hook_project(project, receiver.url, mode="upsert")
    text = (project.root / "undertow.yml").read_text()  # 3 of 5 rows rejected: allow it here
    text = text.replace("mode: upsert", "mode: upsert\n    max_rejected_ratio: 1")
    (project.root / "undertow.yml").write_text(text)
    r = project.run("run", "users_to_hook", "--json")
    assert r.code == 0, r
    run = r.json()
    assert run["status"] == "succeeded"
    assert run["extracted"] == 5
    assert run["rejected"] == 3 and run["succeeded"] == 2, run
    assert sorted(sent_ids(receiver)) == [1, 3]

    r = project.run("errors", run["run_id"], "--json")
    assert r.code == 0, r
    errors = r.json()
    reasons = {e["key"]: e["reason"] for e in errors}
    assert set(reasons) == {"2", "NULL"}, errors
    assert "duplicate primary key" in reasons["2"] and "2 rows" in reasons["2"]
    assert "NULL primary key (id)" in reasons["NULL"]
    assert {e["kind"] for e in errors} == {"invalid_key"}

    # nothing left to send: plan says so (and lists the bad keys), the next run sends nothing
    r = project.run("plan", "users_to_hook")
    assert r.code == 0 and "0 to send" in r.out, r
    assert "NULL: NULL primary key (id)" in r.out, r
    receiver.fake.reset()
    r = project.run("run", "users_to_hook")
    assert r.code == 0, r
    assert "rejected 3" in r.out and "undertow errors" in r.out, r
    assert sent_ids(receiver) == []


def test_rows_a_destination_rejects_are_listed_with_its_message(project: SampleProject) -> None:
    fake = HubSpotFake("pat-e2e-token")
    project.users([(1, "ada@example.com", "free"), (2, "not-an-email", "pro")])
    with serve_in_thread(fake.app) as server:
        project.write(
            f"""
            name: e2e
            sources:
              warehouse: {{type: duckdb, path: warehouse.duckdb}}
            destinations:
              crm: {{type: hubspot, token: "${{HUBSPOT_TOKEN}}", base_url: "{server.url}"}}
            models:
              users: {{source: warehouse, sql: select * from users, primary_key: id}}
            syncs:
              users_to_crm:
                model: users
                destination: crm
                object: contacts
                match: {{email: email}}
                mappings: {{email: email, plan: plan}}
                max_rejected_ratio: 1
              members_to_crm:
                model: users
                destination: crm
                object: contacts
                mode: add
                match: {{email: email}}
                mappings: {{email: email}}
            """
        )
        env = {"HUBSPOT_TOKEN": "pat-e2e-token"}
        r = project.run("run", "users_to_crm", "--json", env=env)
        assert r.code == 0, r
        run = r.json()
        assert (run["succeeded"], run["rejected"]) == (1, 1), run
        contact = fake.objects["contacts"].by_email("ada@example.com")
        assert contact is not None and contact["plan"] == "free"
        assert r.out.count("\n") == 1, "--json prints one line"

        r = project.run("errors", run["run_id"], "--json", env=env)
        assert r.code == 0, r
        (error,) = r.json()
        assert error["key"] == "2" and error["kind"] == "rejected"
        assert "not-an-email is invalid" in error["reason"] or "INVALID_EMAIL" in error["reason"]
        assert "pat-e2e-token" not in r.text

        # a mode the destination cannot carry out fails before anything is sent
        before = len(fake.requests)
        r = project.run("run", "members_to_crm", env=env)
        expect_fail(
            r,
            "sync 'members_to_crm': mode 'add'",
            "destination 'crm'",
            "nothing was sent",
            "choose a mode the destination supports",
        )
        assert len(fake.requests) == before


# -- delivery failures ------------------------------------------------------------------------


def test_unreachable_destination_fails_and_the_next_run_sends_everything(
    project: SampleProject,
) -> None:
    project.users(USERS)
    port = free_port()
    hook_project(project, f"http://127.0.0.1:{port}/hook")

    # the run retries with backoff, then fails and says the next run retries (a second run
    # refused while one retries is tests/chaos/test_locks.py's: there the receiver holds the
    # holder's answers, where here a loaded machine could start the second run too late)
    r = project.run("run", "users_to_hook")
    assert r.code == 1, r
    assert "cannot connect" in r.err and f"127.0.0.1:{port}" in r.err, r
    assert "next run" in r.err, "says what happens next"
    assert "Traceback" not in r.text, r

    fake = WebhookReceiver()
    with serve_in_thread(fake.app, port=port):
        r = project.run("run", "users_to_hook", "--json")
        assert r.code == 0, r
        assert r.json()["succeeded"] == 3
        ids = [rec["id"] for rec in fake.records]
    assert sorted(ids) == [1, 2, 3], "nothing was marked delivered by the failed run"


def test_bad_credentials_stop_the_run_and_never_print_the_token(project: SampleProject) -> None:
    fake = WebhookReceiver(token="the-right-token")
    project.users(USERS)
    with serve_in_thread(fake.app) as server:
        hook_project(project, server.url + "/hook")
        text = (project.root / "undertow.yml").read_text()
        text = text.replace(
            "max_concurrency: 2}",
            'max_concurrency: 2, headers: {Authorization: "Bearer ${HOOK_TOKEN}"}}',
        )
        (project.root / "undertow.yml").write_text(text)
        env = {"HOOK_TOKEN": SECRET}
        r = project.run("run", "users_to_hook", env=env)
        expect_fail(r, "not authorised", "401", "credentials")
        assert SECRET not in r.text, r
        assert len(fake.requests) == 1, "a 401 is fatal: not retried"
        assert fake.records == []

        r = project.run("runs", "users_to_hook", "--json", env=env)
        assert r.code == 0, r
        (run,) = r.json()
        assert run["status"] == "failed" and run["succeeded"] == 0
        assert "401" in run["error"] and SECRET not in r.text


def test_a_429_storm_with_retry_after_still_delivers_every_row_once(
    project: SampleProject, receiver: Receiver
) -> None:
    project.users([(i, f"u{i}@example.com", "free") for i in range(1, 7)])
    hook_project(project, receiver.url, mode="upsert")
    text = (project.root / "undertow.yml").read_text()
    (project.root / "undertow.yml").write_text(
        text.replace("mode: upsert", "mode: upsert\n    batch_size: 2")
    )
    receiver.fake.queue_response(429, {"error": "slow down"}, headers={"Retry-After": "1"}, times=4)
    r = project.run("run", "users_to_hook", "--json")
    assert r.code == 0, r
    run = r.json()
    assert (run["status"], run["succeeded"], run["failed"]) == ("succeeded", 6, 0)
    assert sum(q.status == 429 for q in receiver.fake.requests) == 4
    assert sorted(rec["id"] for rec in receiver.fake.records) == [1, 2, 3, 4, 5, 6]


# -- human output -----------------------------------------------------------------------------


def test_runs_table_shows_whole_run_ids_in_a_pipe(project: SampleProject) -> None:
    project.users(USERS)
    project.write(
        """
        name: e2e
        sources:
          warehouse: {type: duckdb, path: warehouse.duckdb}
        destinations:
          out: {type: file, path: out/users.jsonl}
        models:
          users: {source: warehouse, sql: select * from users, primary_key: id}
        syncs:
          users_to_file: {model: users, destination: out, mappings: {id: id}}
        """
    )
    r = project.run("run", "users_to_file", "--json")
    assert r.code == 0, r
    run_id = r.json()["run_id"]
    r = project.run("runs", "users_to_file")
    assert r.code == 0 and run_id in r.out, r


# -- the demo ---------------------------------------------------------------------------------


def test_demo_syncs_a_sample_warehouse_into_a_fake_hubspot(
    project: SampleProject, tmp_path: Path
) -> None:
    demo = tmp_path / "demo"
    r = project.run("demo", "--dir", str(demo), "--customers", "300", project=False, cwd=tmp_path)
    assert r.code == 0, r
    assert "the second run sent only the" in r.out, r
    assert (demo / "undertow.yml").exists() and (demo / "warehouse.duckdb").exists()

    explore = ["runs", "customers_to_hubspot", "--project", str(demo), "--json"]
    r = project.run(*explore, project=False, env={"HUBSPOT_TOKEN": "any"})
    assert r.code == 0, r
    second, first = r.json()
    assert first["status"] == second["status"] == "succeeded"
    assert first["added"] == first["succeeded"] > 0
    assert 0 < second["sent"] < first["sent"], "the second run sends only the changes"

    # the command the demo suggests at its end must work as printed, in a fresh shell
    r = project.run(*explore, project=False)
    assert r.code == 0, f"the demo's suggested command fails in a fresh shell:\n{r}"
