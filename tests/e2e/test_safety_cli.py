"""The safety rails from the command line: a warning run, `errors --sync`, `retry`, and the
delete limit with `--allow-deletes`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import Receiver, SampleProject

pytestmark = pytest.mark.e2e


def test_warning_errors_retry_and_the_delete_limit(
    project: SampleProject, receiver: Receiver
) -> None:
    project.users([(i, f"u{i}@example.com", "free") for i in range(1, 11)])
    project.write(
        f"""
        name: rails
        sources:
          warehouse: {{type: duckdb, path: warehouse.duckdb}}
        destinations:
          hook: {{type: webhook, url: "{receiver.url}", max_concurrency: 1}}
        models:
          users: {{source: warehouse, sql: select * from users, primary_key: id}}
        syncs:
          users_to_hook:
            model: users
            destination: hook
            mode: mirror
            mappings: {{id: id, email: email}}
        """
    )
    # the receiver refuses one record of ten: 10%, within the default max_rejected_ratio
    receiver.fake.queue_response(200, {"errors": [{"index": 0, "message": "bounced"}]})
    r = project.run("run", "users_to_hook")
    assert r.code == 0, r
    assert "succeeded with warning" in r.out and "1 of 10 row(s) rejected (10%)" in r.out, r
    r = project.run("runs", "users_to_hook", "--json")
    (run,) = r.json()
    assert run["status"] == "succeeded" and "1 of 10" in run["warning"]

    r = project.run("errors", "--sync", "users_to_hook", "--json")
    assert r.code == 0, r
    (row,) = r.json()
    assert row["attempts"] == 1 and row["kind"] == "rejected"
    assert "bounced" in row["reason"] and row["first_failed_at"] == row["last_failed_at"]
    key = row["key"]
    r = project.run("errors", run["run_id"])
    assert r.code == 0 and "first failed" in r.out and "attempts" in r.out, r
    r = project.run("errors", "--sync", "users_to_hook")
    assert r.code == 0 and key in r.out and "undertow retry users_to_hook" in r.out, r
    r = project.run("errors")
    assert r.code == 2 and "--sync" in r.err, r

    # retry: only that row, now
    project.sql("UPDATE users SET email = 'changed@example.com' WHERE id = 10")
    receiver.fake.reset()
    r = project.run("retry", "users_to_hook", "--json")
    assert r.code == 0, r
    retried = r.json()
    assert (retried["trigger"], retried["sent"], retried["succeeded"]) == ("retry", 1, 1)
    assert [str(rec["id"]) for rec in receiver.fake.records] == [key]
    r = project.run("errors", "--sync", "users_to_hook", "--json")
    assert r.code == 0 and r.json() == [], r
    r = project.run("retry", "users_to_hook")
    assert r.code == 0 and "no rejected or failed rows to retry" in r.out, r
    r = project.run("retry", "users_to_hok")
    assert r.code == 1 and "did you mean 'users_to_hook'?" in r.err, r

    # the model breaks and returns no rows: the run refuses to delete everything
    project.sql("DELETE FROM users")
    receiver.fake.reset()
    r = project.run("run", "users_to_hook")
    assert r.code == 1, r
    for needle in (
        "sync 'users_to_hook': this run would delete 10 of the 10 row(s)",
        "max_delete_ratio 0.5 (50%)",
        "undertow run users_to_hook --allow-deletes",
    ):
        assert needle in r.err, r
    assert receiver.fake.requests == []
    r = project.run("run", "users_to_hook", "--allow-deletes", "--json")
    assert r.code == 0, r
    assert (r.json()["removed"], r.json()["succeeded"]) == (10, 10)
