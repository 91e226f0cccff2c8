"""A first sync whose every row was accepted adopts its plan table as the snapshot.

The snapshot it leaves must be the one a copy would have left (same keys, values and
fingerprint, marks NULL), later diffs must see exactly the changes, a first sync with a
refused row must still fold by copy, and a run that dies between the adoption and its end
must be resumed to success without sending anything again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import project_support as support
import pyarrow as pa
import pytest
from project_support import Script, SimulatedCrash

from undertow.config.models import Mode
from undertow.destinations.base import Capabilities, Operation
from undertow.pipeline.diff import DiffSpec, LocalDiffEngine
from undertow.pipeline.plan import Plan, make_plan
from undertow.pipeline.run import SyncRun
from undertow.state.store import RunRecord, RunStatus

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("script")]

CAPS = Capabilities(operations=frozenset(Operation), max_batch_size=10_000)
SPEC = DiffSpec(sync="s", keys=["id"], columns=["id", "email", "plan"], fingerprint=77)


def plan(mode: Mode = Mode.UPSERT) -> Plan:
    return make_plan(sync="s", mode=mode, destination="out", caps=CAPS, full=False)


def reader(rows: list[dict[str, Any]]) -> pa.RecordBatchReader:
    table = pa.Table.from_pylist(rows)
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=4))


def users(n: int, **changed: str) -> list[dict[str, Any]]:
    rows = [{"id": i, "email": f"u{i}@x.com", "plan": "free", "extra": i} for i in range(n)]
    for row in rows:
        row["plan"] = changed.get(str(row["id"]), row["plan"])
    return rows


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def engine(state: Path) -> Iterator[LocalDiffEngine]:
    eng = LocalDiffEngine(state, "s")
    yield eng
    eng.close()


def snapshot(engine: LocalDiffEngine) -> tuple[list[str], list[tuple[Any, ...]]]:
    columns = [r[0] for r in engine.con.execute(f"DESCRIBE {engine.snapshot}").fetchall()]
    rows = engine.con.execute(
        f"SELECT id, email, plan, _ut_fp, _ut_left_at, _ut_seen, _ut_h FROM {engine.snapshot} "
        "ORDER BY id"
    ).fetchall()
    return sorted(columns), rows


def test_a_wholly_accepted_first_sync_adopts_its_plan_as_the_snapshot(
    engine: LocalDiffEngine, state: Path
) -> None:
    stats = engine.build("r1", reader(users(10)), SPEC, plan(), 3)
    assert engine.fold("r1", SPEC, set(range(stats.total_batches)), []) == 10
    assert engine._adopted("r1") and engine.has_plan("r1")
    assert list(engine.chunks("r1", skip=set())) == []  # nothing left to read or send
    assert engine.fold("r1", SPEC, set(range(stats.total_batches)), []) == 0  # replayed

    # the same snapshot as a fold by copy leaves (a refused row forces the copy)
    other = LocalDiffEngine(state, "copied")
    try:
        done = set(range(other.build("c1", reader(users(11)), SPEC, plan(), 3).total_batches))
        refused = [
            int(s)
            for (s,) in other.con.execute(
                f"SELECT _ut_seq FROM {other._plan_table('c1')} WHERE _ut_key = '10'"
            ).fetchall()
        ]
        assert other.fold("c1", SPEC, done, refused) == 10
        assert not other._adopted("c1")
        assert snapshot(other) == snapshot(engine)
    finally:
        other.close()
    engine.discard("r1")
    assert not engine.has_plan("r1")

    # later diffs see exactly the changes; the marks work on the adopted table
    again = engine.build("r2", reader(users(10, **{"3": "pro"})[:-1]), SPEC, plan(), 3)
    assert (again.added, again.changed, again.removed, again.unchanged) == (0, 1, 1, 8)
    done = set(range(again.total_batches))
    engine.fold("r2", SPEC, done, [])
    engine.discard("r2")
    later = engine.build("r3", reader(users(10, **{"3": "pro"})[:-1]), SPEC, plan(), 3)
    assert (later.planned, later.left) == (0, 1)  # row 9 left once, then it is state


def test_a_first_sync_with_a_refused_or_missing_batch_folds_by_copy(
    engine: LocalDiffEngine,
) -> None:
    stats = engine.build("r1", reader(users(9)), SPEC, plan(), 3)
    assert stats.total_batches == 3
    assert engine.fold("r1", SPEC, {0, 2}, []) == 6  # batch 1 never got its answer
    assert not engine._adopted("r1")
    assert engine.fold("r1", SPEC, {0, 1, 2}, []) == 3  # resumed: the rest, by copy
    assert engine.snapshot_rows() == 9
    engine.discard("r1")
    assert engine.build("r2", reader(users(9)), SPEC, plan(), 3).planned == 0


def test_the_marker_of_an_adopted_plan_goes_with_its_run(engine: LocalDiffEngine) -> None:
    stats = engine.build("r1", reader(users(4)), SPEC, plan(), 2)
    engine.fold("r1", SPEC, set(range(stats.total_batches)), [])
    engine.discard_all_plans(keep="r1")
    assert engine.has_plan("r1")
    engine.discard_all_plans()
    assert not engine.has_plan("r1")


def test_a_run_that_dies_after_adopting_its_plan_is_resumed_to_success(
    tmp_path: Path, script: Script, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = support.users_project(
        tmp_path / "p",
        [(i, f"u{i}@x.com") for i in range(25)],
        syncs="""  users:
    model: users
    destination: dest
    mode: upsert
    batch_size: 10
    mappings: {id: id, email: email}
""",
    )
    real_conclude = SyncRun._conclude

    def die(self: SyncRun, *args: Any, **kwargs: Any) -> RunRecord:
        raise SimulatedCrash  # the process dies once the plan became the snapshot

    try:
        monkeypatch.setattr(SyncRun, "_conclude", die)
        with pytest.raises(SimulatedCrash):
            support.run_one(project, "users")
        died = project.store.unfinished_run("users")
        assert died is not None and died.status is RunStatus.DELIVERING
        assert len(script.received) == 25 and script.calls == 3  # records, in 3 batches

        monkeypatch.setattr(SyncRun, "_conclude", real_conclude)
        resumed = support.run_one(project, "users")
        assert (resumed.id, resumed.status, resumed.attempt) == (died.id, "succeeded", 2)
        assert resumed.counts["succeeded"] == 25
        assert script.calls == 3  # nothing sent again
        quiet = support.run_one(project, "users")
        assert quiet.counts["planned"] == 0 and script.calls == 3
    finally:
        project.close()
