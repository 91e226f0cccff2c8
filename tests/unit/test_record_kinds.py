"""The three kinds of sync through a whole project on the in-memory destination: events (each
new row once, never again when it changes, --full refused, at most once where the vendor does
not deduplicate), membership (mirror joins and leaves), and the plan that says which."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from project_support import SimulatedCrash, users_project, warehouse

from undertow.config.models import Mode
from undertow.destinations import memory
from undertow.destinations.base import Capabilities, Operation, RecordKind
from undertow.errors import PlanError
from undertow.pipeline.plan import make_plan
from undertow.state.store import RunStatus

pytestmark = pytest.mark.unit

EVENTS = "{type: memory, store: scripted, kind: events, operations: [insert], batch_size: 10}"
LIST = "{type: memory, store: scripted, kind: membership, operations: [add, remove]}"


def sync(mode: str, extra: str = "") -> str:
    return f"""  out:
    model: users
    destination: dest
    mode: {mode}
    mappings: {{email: email, plan: plan{extra}}}
"""


def rows(n: int, start: int = 1) -> list[tuple[int, str, str]]:
    return [(i, f"u{i}@x.com", "a") for i in range(start, start + n)]


COLUMNS = "id integer, email varchar, plan varchar"


def test_events_send_each_new_row_once_and_a_changed_row_is_not_an_event(
    tmp_path: Path, script: memory.MemoryStore
) -> None:
    project = users_project(
        tmp_path, rows(25), syncs=sync("insert"), columns=COLUMNS, destinations=f"dest: {EVENTS}"
    )
    try:
        assert project.run(["out"])[0].counts["sent"] == 25
        warehouse(tmp_path, "update users set plan = 'b' where id <= 5")
        warehouse(tmp_path, "insert into users values (26, 'u26@x.com', 'a')")
        preview = project.plan("out").as_dict()
        assert preview["kind"] == "events"
        assert (preview["counts"]["changed"], preview["counts"]["to_send"]) == (5, 1)
        record = project.run(["out"])[0]
        assert record.status is RunStatus.SUCCEEDED and record.counts["sent"] == 1
        assert [r.key for r in script.received[25:]] == ["26"]
        # a third run: the changed rows are still not events
        assert project.run(["out"])[0].counts["sent"] == 0
        assert Counter(script.keys()) == {str(i): 1 for i in range(1, 27)}
        with pytest.raises(PlanError, match="--full would send every event again"):
            project.run(["out"], full=True)
    finally:
        project.close()


def test_an_events_object_takes_insert_only_and_says_so() -> None:
    caps = Capabilities(
        operations=frozenset({Operation.INSERT}), max_batch_size=10, kind=RecordKind.EVENTS
    )
    with pytest.raises(PlanError) as caught:
        make_plan(sync="out", mode=Mode.UPSERT, destination="braze", caps=caps)
    assert "(it takes events)" in str(caught.value)
    assert "insert (each new row is one event, sent once)" in (caught.value.hint or "")
    assert make_plan(sync="out", mode=Mode.INSERT, destination="b", caps=caps).ops == {
        "added": Operation.INSERT
    }


def test_a_membership_object_refuses_upsert_naming_its_modes() -> None:
    caps = Capabilities(
        operations=frozenset({Operation.ADD, Operation.REMOVE}),
        max_batch_size=10,
        kind=RecordKind.MEMBERSHIP,
    )
    with pytest.raises(PlanError) as caught:
        make_plan(sync="out", mode=Mode.UPSERT, destination="klaviyo", caps=caps)
    assert "add, remove or mirror" in (caught.value.hint or "")


def test_declarations_that_contradict_the_kind_are_problems() -> None:
    upserting_events = Capabilities(
        operations=frozenset({Operation.UPSERT}), max_batch_size=1, kind=RecordKind.EVENTS
    )
    assert any("insert only" in p for p in upserting_events.problems())
    no_remove = Capabilities(
        operations=frozenset({Operation.ADD}), max_batch_size=1, kind=RecordKind.MEMBERSHIP
    )
    assert any("add and remove" in p for p in no_remove.problems())
    stray = Capabilities(operations=frozenset({Operation.UPSERT}), max_batch_size=1, event_id="x")
    assert any("event_id" in p for p in stray.problems())


def test_membership_mirror_adds_members_then_removes_those_that_leave_the_model(
    tmp_path: Path, script: memory.MemoryStore
) -> None:
    project = users_project(
        tmp_path,
        rows(100),
        syncs=sync("mirror", ", list_id: {const: L1}"),
        columns=COLUMNS,
        destinations=f"dest: {LIST}",
    )
    try:
        first = project.run(["out"])[0]
        assert first.counts["sent"] == 100 and script.ops("add") == [str(i) for i in range(1, 101)]
        warehouse(tmp_path, "delete from users where id > 90")
        assert project.plan("out").as_dict()["operations"] == {
            "added": "add",
            "changed": "add",
            "removed": "remove",
        }
        second = project.run(["out"])[0]
        assert second.status is RunStatus.SUCCEEDED, second.error
        assert script.ops("remove") == [str(i) for i in range(91, 101)]
        assert len(script.state) == 90
        # a removed row carries its list, from the snapshot
        assert {r.record["list_id"] for r in script.received if r.operation == "remove"} == {"L1"}
    finally:
        project.close()


@pytest.mark.parametrize("dedupes", [False, True], ids=["at-most-once", "vendor-dedupes"])
def test_a_crash_mid_send_never_sends_an_event_batch_twice_unless_the_vendor_dedupes(
    tmp_path: Path, script: memory.MemoryStore, dedupes: bool
) -> None:
    dest = EVENTS.replace("}", ", event_id: event_id}") if dedupes else EVENTS
    dest = dest.replace("batch_size: 10", "batch_size: 10, max_concurrency: 1")
    project = users_project(
        tmp_path, rows(50), syncs=sync("insert"), columns=COLUMNS, destinations=f"dest: {dest}"
    )
    try:
        script.crash_on_call = 3  # batch 2 is applied, then the process "dies"
        with pytest.raises(SimulatedCrash):
            project.run(["out"])
        crashed = project.store.unfinished_run("out")
        assert crashed is not None and crashed.status is RunStatus.DELIVERING
        assert project.store.done_batches(crashed.id) == {0, 1}
        script.crash_on_call = None
        record = project.run(["out"])[0]
        assert record.status is RunStatus.SUCCEEDED, record.error
        counts = Counter(script.keys())
        assert set(counts) == {str(i) for i in range(1, 51)}
        twice = sorted((k for k, c in counts.items() if c > 1), key=int)
        if dedupes:
            # the vendor drops the repeats by event id: resending the batch is safe
            assert twice == [str(i) for i in range(21, 31)]
            assert record.warning is None
        else:
            assert twice == []
            assert record.warning and "batch 2 (10 row(s): 21, 22, 23, ...)" in record.warning
            assert "not sent again" in record.warning
            assert record.counts["succeeded"] == 50
    finally:
        project.close()
