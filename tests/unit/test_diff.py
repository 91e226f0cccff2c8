"""diff: LocalDiffEngine on a temporary state folder, fed in-memory Arrow readers."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from undertow.config.models import Mode
from undertow.destinations.base import Capabilities, Operation
from undertow.pipeline.diff import ChangeStats, DiffSpec, LocalDiffEngine
from undertow.pipeline.plan import Plan, make_plan

pytestmark = pytest.mark.unit

CAPS = Capabilities(operations=frozenset(Operation), max_batch_size=10_000)
FP = 1234


def reader(rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> pa.RecordBatchReader:
    table = pa.Table.from_pylist(rows, schema=schema)
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=3))


def spec(
    columns: list[str] | None = None, keys: list[str] | None = None, fingerprint: int = FP
) -> DiffSpec:
    keys = keys or ["id"]
    return DiffSpec(
        sync="users_out",
        keys=keys,
        columns=keys + (columns or ["email", "plan"]),
        fingerprint=fingerprint,
    )


def plan(mode: Mode = Mode.MIRROR, *, full: bool = False) -> Plan:
    return make_plan(sync="users_out", mode=mode, destination="out", caps=CAPS, full=full)


def users(n: int, **overrides: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{"id": i, "email": f"u{i}@x.com", "plan": "free", "extra": 0} for i in range(n)]
    for row in rows:
        row.update(overrides.get(str(row["id"]), {}))
    return rows


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def engine(state: Path) -> Iterator[LocalDiffEngine]:
    eng = LocalDiffEngine(state, "users_out")
    yield eng
    eng.close()


def planned(engine: LocalDiffEngine, run_id: str, skip: set[int] | None = None) -> pl.DataFrame:
    frames = [c.frame for c in engine.chunks(run_id, skip=skip or set(), batches_per_chunk=2)]
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="vertical_relaxed")


def by_key(frame: pl.DataFrame) -> dict[str, dict[str, Any]]:
    if frame.is_empty():
        return {}
    return {row["_ut_key"]: row for row in frame.iter_rows(named=True)}


def all_batches(stats: ChangeStats) -> set[int]:
    return set(range(stats.total_batches))


def first_run(
    engine: LocalDiffEngine,
    rows: list[dict[str, Any]],
    s: DiffSpec | None = None,
    p: Plan | None = None,
    run_id: str = "r1",
) -> ChangeStats:
    """Build, then fold everything as accepted, then forget the plan."""
    s = s or spec()
    stats = engine.build(run_id, reader(rows), s, p or plan(), 100)
    engine.fold(run_id, s, all_batches(stats), [])
    engine.discard(run_id)
    return stats


# -- kinds ------------------------------------------------------------------------------------


def test_first_run_every_row_is_added(engine: LocalDiffEngine) -> None:
    stats = engine.build("r1", reader(users(7)), spec(), plan(), 3)
    assert (stats.extracted, stats.added, stats.changed, stats.removed, stats.unchanged) == (
        7,
        7,
        0,
        0,
        0,
    )
    assert stats.planned == 7
    assert stats.total_batches == 3
    rows = by_key(planned(engine, "r1"))
    assert set(rows) == {str(i) for i in range(7)}
    assert {r["_ut_kind"] for r in rows.values()} == {"added"}
    assert {r["_ut_op"] for r in rows.values()} == {"upsert"}
    assert rows["3"]["email"] == "u3@x.com"
    assert engine.snapshot_rows() == 0  # nothing accepted yet


def test_second_run_after_fold_sees_exactly_the_changes(engine: LocalDiffEngine) -> None:
    stats = first_run(engine, users(5))
    assert engine.snapshot_rows() == 5
    assert stats.added == 5

    now = users(5, **{"1": {"plan": "pro"}, "2": {"email": "new2@x.com"}})
    del now[3]  # id 3 removed
    now.append({"id": 9, "email": "u9@x.com", "plan": "team", "extra": 0})
    stats = engine.build("r2", reader(now), spec(), plan(), 100)
    assert (stats.added, stats.changed, stats.removed, stats.unchanged) == (1, 2, 1, 2)
    assert stats.planned == 4
    rows = by_key(planned(engine, "r2"))
    assert {k: (r["_ut_kind"], r["_ut_op"]) for k, r in rows.items()} == {
        "9": ("added", "upsert"),
        "1": ("changed", "upsert"),
        "2": ("changed", "upsert"),
        "3": ("removed", "delete"),
    }
    assert rows["1"]["plan"] == "pro"
    assert rows["2"]["email"] == "new2@x.com"


def test_removed_rows_carry_the_old_values(engine: LocalDiffEngine) -> None:
    first_run(engine, users(3, **{"2": {"plan": "pro"}}))
    engine.build("r2", reader(users(2)), spec(), plan(), 100)
    rows = by_key(planned(engine, "r2"))
    assert list(rows) == ["2"]
    assert rows["2"]["_ut_kind"] == "removed"
    assert (rows["2"]["id"], rows["2"]["email"], rows["2"]["plan"]) == (2, "u2@x.com", "pro")


def dry_changed_rows(
    engine: LocalDiffEngine, state: Path, rows: list[dict[str, Any]]
) -> pl.DataFrame:
    """What `plan` sees: a dry-run engine's changed rows (the real engine is closed first)."""
    engine.close()
    dry = LocalDiffEngine(state, "users_out", dry_run=True)
    try:
        dry.build("p1", reader(rows), spec(), plan(), 100)
        return dry.changed_rows("p1", 10)
    finally:
        dry.close()


def test_changed_rows_show_old_and_new(engine: LocalDiffEngine, state: Path) -> None:
    first_run(engine, users(3))
    frame = dry_changed_rows(engine, state, users(3, **{"1": {"plan": "pro"}}))
    assert frame.height == 1
    row = frame.row(0, named=True)
    assert (row["_ut_key"], row["plan"], row["_ut_old_plan"]) == ("1", "pro", "free")
    assert row["email"] == row["_ut_old_email"] == "u1@x.com"


def test_a_real_run_plans_no_old_values_of_changed_rows(engine: LocalDiffEngine) -> None:
    """They are for `plan` only; a removed row keeps its old values (a delete sends them)."""
    first_run(engine, users(3))
    engine.build("r2", reader(users(2, **{"1": {"plan": "pro"}})), spec(), plan(), 100)
    plan_rows = engine.con.execute(
        'SELECT _ut_key, _ut_kind, "_ut_old_plan" FROM "plan_r2" ORDER BY _ut_key'
    ).fetchall()
    assert plan_rows == [("1", "changed", None), ("2", "removed", "free")]
    changed = by_key(planned(engine, "r2"))["1"]
    assert (changed["email"], changed["plan"]) == ("u1@x.com", "pro")


def test_only_mapped_columns_are_compared(engine: LocalDiffEngine) -> None:
    first_run(engine, users(4))
    stats = engine.build("r2", reader(users(4, **{"2": {"extra": 99}})), spec(), plan(), 100)
    assert (stats.changed, stats.unchanged, stats.planned) == (0, 4, 0)
    assert planned(engine, "r2").is_empty()


def test_unchanged_rows_are_planned_only_with_full(engine: LocalDiffEngine) -> None:
    first_run(engine, users(4))
    stats = engine.build("r2", reader(users(4)), spec(), plan(Mode.UPSERT, full=True), 100)
    assert (stats.unchanged, stats.planned) == (4, 4)
    rows = by_key(planned(engine, "r2"))
    assert {(r["_ut_kind"], r["_ut_op"]) for r in rows.values()} == {("unchanged", "upsert")}


def test_mapping_fingerprint_change_marks_every_row_changed(engine: LocalDiffEngine) -> None:
    first_run(engine, users(4))
    other = spec(fingerprint=FP + 1)
    stats = engine.build("r2", reader(users(4)), other, plan(), 100)
    assert (stats.changed, stats.unchanged) == (4, 0)
    # accepted under the new fingerprint: the next run with it sees nothing
    engine.fold("r2", other, all_batches(stats), [])
    assert engine.build("r3", reader(users(4)), other, plan(), 100).planned == 0


def test_a_newly_mapped_column_changes_the_rows_that_have_a_value(engine: LocalDiffEngine) -> None:
    first_run(engine, users(3))
    grown = spec(["email", "plan", "extra"])
    rows = users(3, **{"1": {"extra": None}})
    stats = engine.build("r2", reader(rows), grown, plan(), 100)
    # extra was not in the snapshot: NULL there; rows 0 and 2 now have a value, row 1 is NULL
    assert set(by_key(planned(engine, "r2"))) == {"0", "2"}
    assert stats.changed == 2


# -- keys -------------------------------------------------------------------------------------


def test_composite_key_of_int_and_text(engine: LocalDiffEngine) -> None:
    s = spec(["plan"], keys=["org_id", "email"])
    rows = [
        {"org_id": 1, "email": "a@x.com", "plan": "free"},
        {"org_id": 1, "email": "b@x.com", "plan": "free"},
        {"org_id": 2, "email": "a@x.com", "plan": "free"},
    ]
    first_run(engine, rows, s)
    rows[2]["plan"] = "pro"  # (2, a) changes; (1, a) shares a part of its key, not the key
    rows.append({"org_id": 2, "email": "b@x.com", "plan": "free"})
    stats = engine.build("r2", reader(rows), s, plan(), 100)
    assert (stats.added, stats.changed, stats.unchanged) == (1, 1, 2)
    kinds = {k: r["_ut_kind"] for k, r in by_key(planned(engine, "r2")).items()}
    assert kinds == {"org_id=2, email=a@x.com": "changed", "org_id=2, email=b@x.com": "added"}


def test_composite_key_with_a_date(engine: LocalDiffEngine) -> None:
    s = spec(["revenue"], keys=["day", "region"])
    rows = [
        {"day": dt.date(2024, 1, 1), "region": "eu", "revenue": 10},
        {"day": dt.date(2024, 1, 2), "region": "eu", "revenue": 20},
        {"day": dt.date(2024, 1, 1), "region": "us", "revenue": 30},
    ]
    first_run(engine, rows, s)
    rows[1]["revenue"] = 21
    del rows[2]
    engine.build("r2", reader(rows), s, plan(), 100)
    kinds = {k: r["_ut_kind"] for k, r in by_key(planned(engine, "r2")).items()}
    assert kinds == {"day=2024-01-02, region=eu": "changed", "day=2024-01-01, region=us": "removed"}


def test_null_and_duplicate_keys_are_rejected_by_name_and_the_rest_planned(
    engine: LocalDiffEngine,
) -> None:
    rows = users(5)
    rows.append({"id": None, "email": "nokey@x.com", "plan": "free", "extra": 0})
    rows.append({"id": 2, "email": "again@x.com", "plan": "pro", "extra": 0})
    rows.append({"id": 2, "email": "thrice@x.com", "plan": "pro", "extra": 0})
    stats = engine.build("r1", reader(rows), spec(), plan(), 100)
    assert stats.extracted == 8
    assert stats.invalid == 4  # the NULL-key row and all three rows sharing id 2
    assert (stats.added, stats.planned) == (4, 4)
    assert set(by_key(planned(engine, "r1"))) == {"0", "1", "3", "4"}
    invalid = dict(engine.invalid_rows("r1"))
    assert invalid == {
        "NULL": "NULL primary key (id)",
        "2": "duplicate primary key: 3 rows share it",
    }
    assert len(engine.invalid_rows("r1", limit=1)) == 1


def test_composite_key_with_a_null_part_names_every_part(engine: LocalDiffEngine) -> None:
    s = spec(["plan"], keys=["org_id", "email"])
    rows = [
        {"org_id": 1, "email": None, "plan": "free"},
        {"org_id": 1, "email": "a@x.com", "plan": "free"},
    ]
    stats = engine.build("r1", reader(rows), s, plan(), 100)
    assert (stats.invalid, stats.planned) == (1, 1)
    assert engine.invalid_rows("r1") == [
        ("org_id=1, email=NULL", "NULL primary key (org_id, email)")
    ]


def test_a_key_that_becomes_duplicated_is_not_deleted(engine: LocalDiffEngine) -> None:
    first_run(engine, users(3))
    rows = [*users(3), {"id": 1, "email": "dup@x.com", "plan": "free", "extra": 0}]
    stats = engine.build("r2", reader(rows), spec(), plan(), 100)
    assert (stats.removed, stats.invalid, stats.planned) == (0, 2, 0)


# -- what the snapshot holds --------------------------------------------------------------------


def test_rows_not_accepted_come_back_next_run(engine: LocalDiffEngine) -> None:
    s = spec()
    first_run(engine, users(6))
    now = users(7, **{"0": {"plan": "pro"}, "1": {"plan": "pro"}, "2": {"plan": "pro"}})
    stats = engine.build("r2", reader(now), s, plan(), 2)
    rows = by_key(planned(engine, "r2"))
    assert set(rows) == {"0", "1", "2", "6"}
    refused = [rows["1"]["_ut_seq"], rows["6"]["_ut_seq"]]  # rejected or failed
    never_sent = rows["2"]["_ut_batch"]  # its batch has no checkpoint (crash, stop)
    done = all_batches(stats) - {never_sent}
    accepted = {k for k, r in rows.items() if r["_ut_batch"] in done} - {"1", "6"}
    assert "2" not in accepted
    assert engine.fold("r2", s, done, refused) == len(accepted)
    engine.discard("r2")

    engine.build("r3", reader(now), s, plan(), 2)
    again = {k: r["_ut_kind"] for k, r in by_key(planned(engine, "r3")).items()}
    expected = {"1": "changed", "6": "added"} | {k: "changed" for k in {"0", "2"} - accepted}
    assert again == expected


def test_a_rejected_change_keeps_the_old_values_in_the_snapshot(
    engine: LocalDiffEngine, state: Path
) -> None:
    s = spec()
    first_run(engine, users(2))
    now = users(2, **{"1": {"plan": "pro"}})
    engine.build("r2", reader(now), s, plan(), 100)
    seq = by_key(planned(engine, "r2"))["1"]["_ut_seq"]
    engine.fold("r2", s, {0}, [seq])
    engine.discard("r2")
    frame = dry_changed_rows(engine, state, now)
    assert frame.get_column("_ut_old_plan").to_list() == ["free"]


def test_an_accepted_removal_leaves_the_snapshot_a_rejected_one_stays(
    engine: LocalDiffEngine,
) -> None:
    s = spec()
    first_run(engine, users(3))
    engine.build("r2", reader(users(1)), s, plan(), 1)
    rows = by_key(planned(engine, "r2"))
    assert {r["_ut_kind"] for r in rows.values()} == {"removed"}
    engine.fold("r2", s, {0, 1}, [rows["2"]["_ut_seq"]])
    assert engine.snapshot_rows() == 2  # 0 and the refused delete of 2
    engine.discard("r2")
    engine.build("r3", reader(users(1)), s, plan(), 1)
    assert {k: r["_ut_kind"] for k, r in by_key(planned(engine, "r3")).items()} == {"2": "removed"}


def test_fold_can_be_replayed(engine: LocalDiffEngine) -> None:
    s = spec()
    stats = engine.build("r1", reader(users(5)), s, plan(), 2)
    engine.fold("r1", s, {0}, [])
    engine.fold("r1", s, {0, 1, 2}, [])
    engine.fold("r1", s, all_batches(stats), [])
    assert engine.snapshot_rows() == 5
    engine.discard("r1")
    assert engine.build("r2", reader(users(5)), s, plan(), 2).planned == 0


# -- batches ----------------------------------------------------------------------------------


def test_batches_are_contiguous_per_operation_and_within_size(engine: LocalDiffEngine) -> None:
    first_run(engine, users(10))
    now = users(14, **{str(i): {"plan": "pro"} for i in range(3)})
    del now[5:9]  # 4 removed
    stats = engine.build("r2", reader(now), spec(), plan(), 3)
    # 4 deletes -> 2 batches, 3 changed + 4 added = 7 upserts -> 3 batches
    assert (stats.removed, stats.changed, stats.added, stats.planned) == (4, 3, 4, 11)
    assert stats.total_batches == 5
    chunks = list(engine.chunks("r2", skip=set(), batches_per_chunk=2))
    frame = pl.concat([c.frame for c in chunks])
    declared = [b for c in chunks for b in c.batches]
    assert [b for b, _ in declared] == [0, 1, 2, 3, 4]
    sizes: dict[int, int] = {}
    ops: dict[int, set[str]] = {}
    for row in frame.iter_rows(named=True):
        sizes[row["_ut_batch"]] = sizes.get(row["_ut_batch"], 0) + 1
        ops.setdefault(row["_ut_batch"], set()).add(row["_ut_op"])
    assert all(len(o) == 1 for o in ops.values())
    assert [ops[b].pop() for b in range(5)] == [str(op) for _, op in declared]
    assert sum(1 for _, op in declared if op is Operation.DELETE) == 2
    assert all(size <= 3 for size in sizes.values())
    assert sum(sizes.values()) == 11
    # one operation's batches are consecutive numbers
    order = [str(op) for _, op in declared]
    assert order == sorted(order, key=order.index)
    assert order.index("upsert") > order.index("delete")
    assert sorted(set(order)) == ["delete", "upsert"]
    assert [b for b, op in declared if op is Operation.UPSERT] == [2, 3, 4]
    # sequence numbers are unique and in batch order
    seqs = frame.get_column("_ut_seq").to_list()
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_batch_sizes_are_respected_exactly(engine: LocalDiffEngine) -> None:
    stats = engine.build("r1", reader(users(25)), spec(), plan(), 10)
    assert stats.total_batches == 3
    counts = planned(engine, "r1").group_by("_ut_batch").len().sort("_ut_batch")
    assert counts.get_column("len").to_list() == [10, 10, 5]


def test_a_resumed_plan_is_read_again_skipping_done_batches(state: Path) -> None:
    first = LocalDiffEngine(state, "users_out")
    try:
        stats = first.build("r1", reader(users(9)), spec(), plan(), 2)
        every = by_key(planned(first, "r1"))
    finally:
        first.close()
    assert stats.total_batches == 5
    again = LocalDiffEngine(state, "users_out")
    try:
        assert again.has_plan("r1")
        assert not again.has_plan("r2")
        rest = planned(again, "r1", skip={0, 2, 3})
        assert sorted(set(rest.get_column("_ut_batch").to_list())) == [1, 4]
        expected = {k for k, r in every.items() if r["_ut_batch"] in (1, 4)}
        assert set(rest.get_column("_ut_key").to_list()) == expected
        chunks = list(again.chunks("r1", skip={0, 1, 2, 3, 4}))
        assert chunks == []
    finally:
        again.close()


def test_discard_all_plans_keeps_the_named_run(engine: LocalDiffEngine) -> None:
    engine.build("r1", reader(users(2)), spec(), plan(), 10)
    engine.build("r2", reader(users(2)), spec(), plan(), 10)
    engine.discard_all_plans(keep="r2")
    assert not engine.has_plan("r1")
    assert engine.has_plan("r2")


# -- dry run and reset --------------------------------------------------------------------------


def fingerprint_of(path: Path) -> tuple[int, str]:
    return path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def test_dry_run_changes_nothing_on_disk(state: Path) -> None:
    real = LocalDiffEngine(state, "users_out")
    first_run(real, users(4))
    real.close()
    before = fingerprint_of(real.path)
    listing = sorted(p.name for p in real.path.parent.iterdir())

    dry = LocalDiffEngine(state, "users_out", dry_run=True)
    try:
        now = users(5, **{"0": {"plan": "pro"}})
        del now[1]
        stats = dry.build("preview", reader(now), spec(["email", "plan", "extra"]), plan(), 100)
        # extra is newly mapped, so all rows with a value differ; 1 removed, 4 added
        assert (stats.added, stats.removed) == (1, 1)
        assert stats.changed == 3
        assert dry.has_plan("preview")
        dry.discard("preview")
    finally:
        dry.close()
    assert fingerprint_of(real.path) == before
    assert sorted(p.name for p in real.path.parent.iterdir()) == listing

    again = LocalDiffEngine(state, "users_out")
    try:
        assert again.snapshot_rows() == 4
        assert again.build("r2", reader(users(4)), spec(), plan(), 100).planned == 0
    finally:
        again.close()


def test_dry_run_works_before_any_run(state: Path) -> None:
    dry = LocalDiffEngine(state, "users_out", dry_run=True)
    try:
        stats = dry.build("preview", reader(users(3)), spec(), plan(), 2)
        assert (stats.added, stats.total_batches) == (3, 2)
        assert set(by_key(planned(dry, "preview"))) == {"0", "1", "2"}
        assert dry.snapshot_rows() == 0
    finally:
        dry.close()
    assert not dry.path.exists()


def test_reset_forgets_the_snapshot(engine: LocalDiffEngine) -> None:
    first_run(engine, users(3))
    engine.build("r2", reader(users(3)), spec(), plan(), 100)
    engine.reset()
    assert engine.snapshot_rows() == 0
    assert not engine.has_plan("r2")
    stats = engine.build("r3", reader(users(3)), spec(), plan(), 100)
    assert (stats.added, stats.removed, stats.planned) == (3, 0, 3)


# -- values -----------------------------------------------------------------------------------


def test_null_is_not_the_empty_string(engine: LocalDiffEngine) -> None:
    s = spec(["name"])
    schema = pa.schema([("id", pa.int64()), ("name", pa.string())])
    before = [{"id": 1, "name": None}, {"id": 2, "name": ""}, {"id": 3, "name": None}]
    first_run(engine, before, s)
    after = [{"id": 1, "name": ""}, {"id": 2, "name": None}, {"id": 3, "name": None}]
    engine.build("r2", reader(after, schema), s, plan(), 100)
    kinds = {k: r["_ut_kind"] for k, r in by_key(planned(engine, "r2")).items()}
    assert kinds == {"1": "changed", "2": "changed"}


@pytest.mark.parametrize(
    ("arrow_type", "old", "same", "different"),
    [
        (pa.float64(), float("nan"), float("nan"), 1.0),
        (pa.float64(), 1.5, 1.5, None),
        (pa.decimal128(12, 2), Decimal("1.10"), Decimal("1.1"), Decimal("1.11")),
        (
            pa.timestamp("us"),
            dt.datetime(2024, 5, 1, 12, 0, 0, 1),
            dt.datetime(2024, 5, 1, 12, 0, 0, 1),
            dt.datetime(2024, 5, 1, 12, 0, 0, 2),
        ),
        (
            pa.timestamp("us", tz="UTC"),
            dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC),
            dt.datetime(2024, 5, 1, 14, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            dt.datetime(2024, 5, 1, 14, tzinfo=dt.UTC),
        ),
        (pa.date32(), dt.date(2024, 2, 29), dt.date(2024, 2, 29), dt.date(2024, 3, 1)),
        (pa.bool_(), False, False, None),
    ],
    ids=["nan", "null-float", "decimal", "timestamp", "timestamptz", "date", "bool-null"],
)
def test_values_compare_by_value(
    engine: LocalDiffEngine, arrow_type: pa.DataType, old: Any, same: Any, different: Any
) -> None:
    s = spec(["v"])
    schema = pa.schema([("id", pa.int64()), ("v", arrow_type)])
    first_run(engine, [{"id": 1, "v": old}, {"id": 2, "v": old}], s)
    stats = engine.build(
        "r2", reader([{"id": 1, "v": same}, {"id": 2, "v": different}], schema), s, plan(), 100
    )
    kinds = {k: r["_ut_kind"] for k, r in by_key(planned(engine, "r2")).items()}
    assert kinds == {"2": "changed"}
    assert stats.unchanged == 1
