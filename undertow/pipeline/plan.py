"""plan: turn the change set's kinds of rows into operations for the sync's mode.

    kind \\ mode   upsert   insert   update   mirror           add    remove
    added         upsert   insert   update   upsert | add     add    remove
    changed       upsert   -        update   upsert | add     add    remove
    unchanged*    upsert   insert   update   upsert | add     add    remove
    removed       -        -        -        delete | remove  -      -

    * only with ``--full``, which resends every row of the model.

``mirror`` on a list destination (a ``membership`` object, or one that can
``add``/``remove`` members but not ``upsert``) adds and removes members: a row joins the list
when it enters the model and leaves it when it leaves the model.

An ``events`` object (``Capabilities.kind``) takes ``insert`` only: each new row is one
event, sent once; a changed row is not an event (the snapshot keeps what was sent, so it is
never sent again), and ``--full`` is refused, since it would send every event again.

A plan the destination cannot carry out fails here, before anything is sent, naming the
sync, the mode and the destination.
"""

from __future__ import annotations

from dataclasses import dataclass

from undertow.config.models import Mode
from undertow.destinations.base import Capabilities, Operation, RecordKind
from undertow.errors import DeleteLimitError, PlanError

KINDS = ("added", "changed", "unchanged", "removed")


@dataclass(frozen=True)
class Plan:
    """Which operation each kind of row becomes (kinds absent are not sent)."""

    mode: Mode
    ops: dict[str, Operation]
    full: bool

    @property
    def operations(self) -> set[Operation]:
        return set(self.ops.values())


def is_list_destination(caps: Capabilities) -> bool:
    if caps.kind is RecordKind.MEMBERSHIP:
        return True
    return Operation.ADD in caps.operations and Operation.UPSERT not in caps.operations


MODES_OF = {
    RecordKind.MEMBERSHIP: "add, remove or mirror (join when a row enters the model, leave "
    "when it leaves it)",
    RecordKind.EVENTS: "insert (each new row is one event, sent once)",
}


def make_plan(
    *, sync: str, mode: Mode, destination: str, caps: Capabilities, full: bool = False
) -> Plan:
    if caps.kind is RecordKind.EVENTS and full:
        raise PlanError(
            f"sync {sync!r} sends events to {destination!r}: each new row is sent once, and "
            "--full would send every event again; nothing was sent",
            hint=f"run without --full; to send every event again on purpose, `undertow reset "
            f"{sync}` first (where the vendor deduplicates, it drops the repeats)",
        )
    listy = is_list_destination(caps)
    write = Operation.ADD if listy else Operation.UPSERT
    table: dict[Mode, dict[str, Operation]] = {
        Mode.UPSERT: {"added": Operation.UPSERT, "changed": Operation.UPSERT},
        Mode.INSERT: {"added": Operation.INSERT},
        Mode.UPDATE: {"added": Operation.UPDATE, "changed": Operation.UPDATE},
        Mode.MIRROR: {
            "added": write,
            "changed": write,
            "removed": Operation.REMOVE if listy else Operation.DELETE,
        },
        Mode.ADD: {"added": Operation.ADD, "changed": Operation.ADD},
        Mode.REMOVE: {"added": Operation.REMOVE, "changed": Operation.REMOVE},
    }
    ops = dict(table[mode])
    if full:
        ops["unchanged"] = ops.get("changed", ops["added"])
    missing = sorted(str(op) for op in set(ops.values()) - caps.operations)
    if missing:
        supported = ", ".join(sorted(str(o) for o in caps.operations))
        hint = "choose a mode the destination supports (see its page under docs/destinations/)"
        what = ""
        if caps.kind in MODES_OF:
            what = f" (it takes {caps.kind})"
            hint = f"a sync of {caps.kind} takes mode {MODES_OF[caps.kind]}; " + hint
        raise PlanError(
            f"sync {sync!r}: mode {str(mode)!r} needs {', '.join(missing)} on destination "
            f"{destination!r}{what}, which supports only: {supported}; nothing was sent",
            hint=hint,
        )
    return Plan(mode=mode, ops=ops, full=full)


def delete_limit_exceeded(
    *,
    sync: str,
    plan: Plan,
    deletes: int,
    removed: int,
    snapshot: int,
    max_deletes: int | None,
    max_delete_ratio: float,
) -> str | None:
    """What a plan that deletes more than the sync allows would do (``delete 8 of the 10
    row(s) it has sent ...``), or None when it stays within the limits.

    ``deletes`` counts every planned ``delete`` or ``remove``; ``max_deletes`` limits it.
    ``max_delete_ratio`` limits the rows leaving the model (``removed``, in ``mirror`` mode)
    as a share of the ``snapshot``: an empty or broken model would otherwise delete every
    row the sync ever sent. (In ``remove`` mode the rows removed were not sent by the sync,
    so only ``max_deletes`` applies.)
    """
    verb = "remove from the list" if Operation.REMOVE in plan.operations else "delete"
    removing = removed if "removed" in plan.ops else 0
    if max_deletes is not None and deletes > max_deletes:
        what = f"{verb} {deletes:,} row(s), more than max_deletes {max_deletes:,}"
    elif snapshot and removing / snapshot > max_delete_ratio:
        share = percent(removing / snapshot)
        what = (
            f"{verb} {removing:,} of the {snapshot:,} row(s) it has sent ({share}), more than "
            f"max_delete_ratio {max_delete_ratio:g} ({percent(max_delete_ratio)})"
        )
    else:
        return None
    return what


def check_deletes(
    *,
    sync: str,
    plan: Plan,
    deletes: int,
    removed: int,
    snapshot: int,
    max_deletes: int | None,
    max_delete_ratio: float,
) -> None:
    """Refuse a plan that deletes more than the sync allows, before anything is sent (see
    :func:`delete_limit_exceeded`)."""
    what = delete_limit_exceeded(
        sync=sync,
        plan=plan,
        deletes=deletes,
        removed=removed,
        snapshot=snapshot,
        max_deletes=max_deletes,
        max_delete_ratio=max_delete_ratio,
    )
    if what is None:
        return
    raise DeleteLimitError(
        f"sync {sync!r}: this run would {what}; nothing was sent and the change set is "
        "discarded (the next run diffs again)",
        hint=f"check the model first (`undertow plan {sync}`); if the deletes are meant, run "
        f"`undertow run {sync} --allow-deletes` once, or raise max_deletes / max_delete_ratio "
        "in the sync",
    )


def percent(share: float) -> str:
    """0.1 -> '10%', 0.005 -> '0.5%', 1/3 -> '33.3%'."""
    return f"{share * 100:.3g}%"
