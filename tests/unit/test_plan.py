"""plan: the mode x kind table of plan.py's docstring, --full, list destinations, PlanError."""

from __future__ import annotations

import pytest

from undertow.config.models import Mode
from undertow.destinations.base import Capabilities, Operation
from undertow.errors import PlanError
from undertow.pipeline.plan import Plan, is_list_destination, make_plan

pytestmark = pytest.mark.unit

U, INS, UPD, D, A, R = (
    Operation.UPSERT,
    Operation.INSERT,
    Operation.UPDATE,
    Operation.DELETE,
    Operation.ADD,
    Operation.REMOVE,
)
EVERYTHING = Capabilities(operations=frozenset(Operation), max_batch_size=100)
LIST = Capabilities(operations=frozenset({A, R}), max_batch_size=100)

# kind -> operation per mode, straight from the docstring's table (None: not sent)
#            added changed unchanged(--full) removed
TABLE: dict[tuple[Mode, bool], tuple[Operation | None, ...]] = {
    (Mode.UPSERT, False): (U, U, U, None),
    (Mode.INSERT, False): (INS, None, INS, None),
    (Mode.UPDATE, False): (UPD, UPD, UPD, None),
    (Mode.MIRROR, False): (U, U, U, D),
    (Mode.MIRROR, True): (A, A, A, R),
    (Mode.ADD, False): (A, A, A, None),
    (Mode.REMOVE, False): (R, R, R, None),
    (Mode.ADD, True): (A, A, A, None),
    (Mode.REMOVE, True): (R, R, R, None),
}


def plan_for(mode: Mode, caps: Capabilities = EVERYTHING, *, full: bool = False) -> Plan:
    return make_plan(sync="users_out", mode=mode, destination="crm", caps=caps, full=full)


@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
@pytest.mark.parametrize(("mode", "listy"), list(TABLE), ids=lambda v: str(v))
def test_mode_kind_table(mode: Mode, listy: bool, full: bool) -> None:
    plan = plan_for(mode, LIST if listy else EVERYTHING, full=full)
    added, changed, unchanged, removed = TABLE[(mode, listy)]
    expected = {"added": added, "changed": changed, "removed": removed}
    if full:
        expected["unchanged"] = unchanged
    assert plan.ops == {k: v for k, v in expected.items() if v is not None}
    assert plan.mode is mode
    assert plan.full is full
    assert plan.operations == set(plan.ops.values())


def test_unchanged_rows_are_sent_only_with_full() -> None:
    for mode in Mode:
        caps = LIST if mode in (Mode.ADD, Mode.REMOVE) else EVERYTHING
        assert "unchanged" not in plan_for(mode, caps).ops
        assert "unchanged" in plan_for(mode, caps, full=True).ops


def test_list_destination_is_one_that_adds_but_cannot_upsert() -> None:
    assert is_list_destination(LIST)
    assert not is_list_destination(EVERYTHING)
    both = Capabilities(operations=frozenset({U, A, R, D}), max_batch_size=1)
    assert not is_list_destination(both)
    # a destination that can upsert mirrors with upsert/delete even if it can add too
    assert plan_for(Mode.MIRROR, both).ops == {"added": U, "changed": U, "removed": D}


@pytest.mark.parametrize(
    ("mode", "ops", "missing"),
    [
        (Mode.MIRROR, {U, INS, UPD}, "delete"),
        (Mode.UPSERT, {INS}, "upsert"),
        (Mode.UPDATE, {U}, "update"),
        (Mode.INSERT, {U}, "insert"),
        (Mode.ADD, {U, D}, "add"),
        (Mode.REMOVE, {A}, "remove"),
        (Mode.MIRROR, {A}, "remove"),  # a list destination that cannot remove members
        (Mode.UPSERT, {A, R}, "upsert"),  # upsert to an audience: no such operation
    ],
)
def test_plan_the_destination_cannot_carry_out_names_sync_mode_and_destination(
    mode: Mode, ops: set[Operation], missing: str
) -> None:
    caps = Capabilities(operations=frozenset(ops), max_batch_size=10)
    with pytest.raises(PlanError) as info:
        plan_for(mode, caps)
    text = str(info.value)
    assert "'users_out'" in text
    assert f"mode {str(mode)!r}" in text
    assert "'crm'" in text
    assert f"needs {missing}" in text
    assert "nothing was sent" in text
    for op in ops:  # it says what the destination can do
        assert str(op) in text.split("supports only:")[1]


def test_full_insert_needs_only_insert() -> None:
    caps = Capabilities(operations=frozenset({INS}), max_batch_size=10)
    assert plan_for(Mode.INSERT, caps, full=True).ops == {"added": INS, "unchanged": INS}
