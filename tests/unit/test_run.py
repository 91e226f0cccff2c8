"""The run end to end: Project + SyncRun with DuckDB, the `file` destination and a fake one."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import project_support as support
import pytest
from project_support import Script, SimulatedCrash

from undertow.destinations.base import Operation
from undertow.errors import PlanError
from undertow.project import Project
from undertow.state.store import RunRecord, RunStatus

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("script")]

Row = tuple[int | None, str, str]
COLUMNS = "id integer, email varchar, plan varchar"
MAPPINGS = "{id: id, email: email, plan: plan, greeting: {template: 'Hi {{ email }}'}}"


def users(n: int, start: int = 1) -> list[Row]:
    return [(i, f"u{i}@x.com", "free") for i in range(start, start + n)]


def write_users(folder: Path, rows: list[Row]) -> None:
    support.write_users(folder, rows, columns=COLUMNS)


def sql(folder: Path, statement: str) -> None:
    support.warehouse(folder, statement)


def make_project(
    folder: Path, rows: list[Row], *, fake_mode: str = "mirror", fake_batch: int = 10
) -> Project:
    return support.users_project(
        folder,
        rows,
        name="p1",
        columns=COLUMNS,
        destinations="out: {type: file, path: out.jsonl, format: jsonl}\nfake: " + support.SCRIPTED,
        syncs=f"""  users_out:
    model: users
    destination: out
    mode: mirror
    mappings: {MAPPINGS}
    max_rejected_ratio: 1  # single rejected rows here; the ratio has its own tests
  users_fake:
    model: users
    destination: fake
    mode: {fake_mode}
    batch_size: {fake_batch}
    mappings: {MAPPINGS}
    max_rejected_ratio: 1
""",
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "p1"


@pytest.fixture
def project(folder: Path) -> Iterator[Project]:
    proj = make_project(folder, users(5))
    yield proj
    proj.close()


def run(project: Project, sync: str = "users_out", *, full: bool = False) -> RunRecord:
    [record] = project.run([sync], full=full)
    return record


def output(folder: Path) -> list[dict[str, Any]]:
    path = folder / "out.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def digest(path: Path) -> tuple[int, str]:
    return path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


# -- file destination: what is sent ------------------------------------------------------------


def test_first_run_sends_everything_and_the_next_nothing(project: Project, folder: Path) -> None:
    first = run(project)
    assert first.status is RunStatus.SUCCEEDED, first.error
    assert {k: first.counts[k] for k in ("extracted", "added", "planned", "sent", "succeeded")} == {
        "extracted": 5,
        "added": 5,
        "planned": 5,
        "sent": 5,
        "succeeded": 5,
    }
    sent = output(folder)
    assert sorted(r["id"] for r in sent) == [1, 2, 3, 4, 5]
    assert sent[0] == {
        "operation": "upsert",
        "id": sent[0]["id"],
        "email": f"u{sent[0]['id']}@x.com",
        "plan": "free",
        "greeting": f"Hi u{sent[0]['id']}@x.com",
    }

    second = run(project)
    assert second.status is RunStatus.SUCCEEDED
    assert second.id != first.id
    assert (second.counts["unchanged"], second.counts["planned"], second.counts["sent"]) == (
        5,
        0,
        0,
    )
    assert len(output(folder)) == 5


def test_changes_and_removals_are_sent_exactly(project: Project, folder: Path) -> None:
    run(project)
    sql(folder, "update users set plan = 'pro' where id = 2")
    sql(folder, "update users set email = 'new3@x.com' where id = 3")
    sql(folder, "delete from users where id = 5")
    sql(folder, "insert into users values (6, 'u6@x.com', 'team')")
    record = run(project)
    assert record.status is RunStatus.SUCCEEDED
    assert (record.counts["added"], record.counts["changed"], record.counts["removed"]) == (1, 2, 1)
    new = output(folder)[5:]
    assert sorted((r["operation"], r["id"]) for r in new) == [
        ("delete", 5),
        ("upsert", 2),
        ("upsert", 3),
        ("upsert", 6),
    ]
    by_id = {r["id"]: r for r in new}
    assert by_id[2]["plan"] == "pro"
    assert by_id[3]["greeting"] == "Hi new3@x.com"
    assert by_id[5] == {  # a delete carries the last values the destination accepted
        "operation": "delete",
        "id": 5,
        "email": "u5@x.com",
        "plan": "free",
        "greeting": "Hi u5@x.com",
    }
    assert run(project).counts["sent"] == 0


def test_full_resends_every_row(project: Project, folder: Path) -> None:
    run(project)
    record = run(project, full=True)
    assert record.status is RunStatus.SUCCEEDED
    assert record.full_resync
    assert (record.counts["unchanged"], record.counts["planned"], record.counts["sent"]) == (
        5,
        5,
        5,
    )
    assert sorted(r["id"] for r in output(folder)[5:]) == [1, 2, 3, 4, 5]
    assert run(project).counts["sent"] == 0


def test_duplicate_and_null_keys_are_recorded_while_other_rows_sync(folder: Path) -> None:
    rows: list[Row] = [*users(4), (2, "dup@x.com", "pro"), (None, "nokey@x.com", "free")]
    project = make_project(folder, rows)
    try:
        record = run(project)
        assert record.status is RunStatus.SUCCEEDED, record.error
        assert (record.counts["invalid"], record.counts["rejected"]) == (3, 3)
        assert sorted(r["id"] for r in output(folder)) == [1, 3, 4]
        errors = {(e.row_key, e.kind, e.reason) for e in project.errors(record.id)}
        assert errors == {
            ("2", "invalid_key", "duplicate primary key: 2 rows share it"),
            ("NULL", "invalid_key", "NULL primary key (id)"),
        }
        sql(folder, "delete from users where email = 'dup@x.com'")
        again = run(project)
        assert (again.counts["invalid"], again.counts["added"], again.counts["sent"]) == (1, 1, 1)
        assert output(folder)[-1]["id"] == 2
    finally:
        project.close()


def test_reset_makes_the_next_run_a_first_run(project: Project, folder: Path) -> None:
    run(project)
    assert project.reset("users_out") == 5
    record = run(project)
    assert (record.counts["added"], record.counts["sent"]) == (5, 5)
    assert len(output(folder)) == 10


def test_reset_cancels_an_unfinished_run(project: Project) -> None:
    stuck = project.store.create_run("users_out")
    project.store.update_run(stuck, status=RunStatus.DELIVERING)
    project.reset("users_out")
    cancelled = project.store.get_run(stuck.id)
    assert cancelled is not None and cancelled.status is RunStatus.CANCELLED
    assert run(project).id != stuck.id


# -- plan -------------------------------------------------------------------------------------


def test_plan_sends_nothing_changes_no_state_and_shows_old_and_new(
    project: Project, folder: Path
) -> None:
    first = run(project)
    sql(folder, "update users set plan = 'pro' where id = 2")
    sql(folder, "update users set email = 'new3@x.com' where id = 3")
    sql(folder, "delete from users where id = 5")
    diff_file = project.loaded.state_dir / "syncs" / "users_out.duckdb"
    before = (digest(diff_file), digest(folder / "out.jsonl"))
    runs_before = [(r.id, r.status, r.counts) for r in project.store.list_runs()]

    preview = project.plan("users_out").as_dict()
    again = project.plan("users_out").as_dict()  # a second preview sees the same

    assert preview["counts"] == again["counts"]
    assert preview["counts"] == {
        "extracted": 4,
        "added": 0,
        "changed": 2,
        "removed": 1,
        "unchanged": 2,
        "rejected": 0,
        "to_send": 3,
    }
    assert preview["operations"] == {"added": "upsert", "changed": "upsert", "removed": "delete"}
    changes = {c["key"]: c["fields"] for c in preview["changes"]}
    assert changes == {
        "2": {"plan": {"old": "free", "new": "pro"}},
        "3": {
            "email": {"old": "u3@x.com", "new": "new3@x.com"},
            "greeting": {"old": "Hi u3@x.com", "new": "Hi new3@x.com"},
        },
    }
    assert {(s["operation"], s["key"]) for s in preview["samples"]} == {
        ("delete", "5"),
        ("upsert", "2"),
        ("upsert", "3"),
    }
    assert (digest(diff_file), digest(folder / "out.jsonl")) == before
    assert [(r.id, r.status, r.counts) for r in project.store.list_runs()] == runs_before
    assert project.store.unfinished_run("users_out") is None

    record = run(project)  # the real run still sees every change
    assert record.counts["sent"] == 3
    assert record.id != first.id


def test_plan_before_any_run_creates_no_state(project: Project, folder: Path) -> None:
    preview = project.plan("users_out").as_dict()
    assert preview["counts"]["added"] == 5
    assert not (project.loaded.state_dir / "syncs" / "users_out.duckdb").exists()
    assert not (folder / "out.jsonl").exists()


# -- a destination that cannot, rejects or fails ------------------------------------------------


def test_mode_the_destination_cannot_do_fails_before_anything_is_sent(
    project: Project, script: Script
) -> None:
    script.operations = frozenset({Operation.UPSERT, Operation.INSERT})
    with pytest.raises(PlanError) as info:
        run(project, "users_fake")
    text = str(info.value)
    assert "'users_fake'" in text and "'mirror'" in text and "'fake'" in text
    assert "delete" in text
    assert script.calls == 0
    assert project.store.list_runs() == []
    assert project.store.held_locks() == {}


def test_rejected_rows_are_recorded_and_retried_next_run(project: Project, script: Script) -> None:
    script.reject = {"3": "email domain is blocked"}
    first = run(project, "users_fake")
    assert first.status is RunStatus.SUCCEEDED
    assert (first.counts["sent"], first.counts["succeeded"], first.counts["rejected"]) == (5, 4, 1)
    errors = project.errors(first.id)
    assert [(e.row_key, e.kind, e.reason, e.operation) for e in errors] == [
        ("3", "rejected", "email domain is blocked", "upsert")
    ]

    script.received.clear()
    second = run(project, "users_fake")  # the warehouse row did not change: retried anyway
    assert script.keys() == ["3"]
    assert second.counts["added"] == 1 and second.counts["rejected"] == 1
    assert [e.row_key for e in project.errors(second.id)] == ["3"]

    script.reject.clear()
    script.received.clear()
    third = run(project, "users_fake")
    assert script.keys() == ["3"]
    assert (third.counts["succeeded"], third.counts["rejected"]) == (1, 0)
    assert project.errors(third.id) == []
    script.received.clear()
    assert run(project, "users_fake").counts["sent"] == 0
    assert script.received == []


def test_transiently_failed_rows_fail_the_run_and_are_retried(
    project: Project, script: Script
) -> None:
    script.fail = {"2", "4"}
    first = run(project, "users_fake")
    assert first.status is RunStatus.FAILED
    assert first.error is not None and "2 row(s) could not be delivered" in first.error
    assert (first.counts["succeeded"], first.counts["failed"]) == (3, 2)
    assert {(e.row_key, e.kind) for e in project.errors(first.id)} == {
        ("2", "failed"),
        ("4", "failed"),
    }
    script.fail.clear()
    script.received.clear()
    second = run(project, "users_fake")
    assert second.status is RunStatus.SUCCEEDED
    assert sorted(script.keys()) == ["2", "4"]


# -- resume ---------------------------------------------------------------------------------


def test_a_crashed_run_is_resumed_and_sends_only_the_rest(folder: Path, script: Script) -> None:
    project = make_project(folder, users(95), fake_batch=10)  # 10 batches, 2 in flight
    try:
        script.crash_on_call = 4
        with pytest.raises(SimulatedCrash):
            run(project, "users_fake")
        crashed = project.store.unfinished_run("users_fake")
        assert crashed is not None and crashed.status is RunStatus.DELIVERING
        assert project.store.held_locks() == {}
        done = project.store.done_batches(crashed.id)
        tried = {number for _, number, _, _, _ in script.received}
        in_flight = tried - done
        assert 1 <= len(in_flight) <= 2  # max_concurrency of the fake
        assert len(done) < 10
        first_keys = Counter(script.keys())

        script.crash_on_call = None
        resumed_from = len(script.received)
        record = run(project, "users_fake")
        assert record.id == crashed.id
        assert record.status is RunStatus.SUCCEEDED, record.error
        assert record.attempt == 2
        # counted once: the batch in flight at the crash had no checkpoint
        assert (record.counts["planned"], record.counts["sent"], record.counts["succeeded"]) == (
            95,
            95,
            95,
        )
        second = {n for _, n, _, _, _ in script.received[resumed_from:]}
        assert second == set(range(10)) - done

        counts = Counter(script.keys())
        assert set(counts) == {str(i) for i in range(1, 96)}
        twice = {k for k, c in counts.items() if c == 2}
        in_flight_keys = {key for _, n, _, key, _ in script.received if n in in_flight}
        assert twice == in_flight_keys
        assert all(c <= 2 for c in counts.values())
        assert all(first_keys[k] == 1 for k in in_flight_keys)
        # the resent batches carry the same idempotency key
        idem = {n: {i for i, b, _, _, _ in script.received if b == n} for n in in_flight}
        assert all(len(keys) == 1 for keys in idem.values())

        script.received.clear()
        after = run(project, "users_fake")
        assert after.id != crashed.id and after.counts["sent"] == 0
        assert script.received == []
    finally:
        project.close()


def test_a_run_that_died_before_delivering_starts_again_under_its_id(
    project: Project, folder: Path
) -> None:
    stuck = project.store.create_run("users_out")
    project.store.update_run(stuck, status=RunStatus.DIFFING)
    record = run(project)
    assert (record.id, record.status, record.attempt) == (stuck.id, RunStatus.SUCCEEDED, 2)
    assert record.counts["sent"] == 5
    assert len(output(folder)) == 5
