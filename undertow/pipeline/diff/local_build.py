"""The local engine's build: load the model into the sync's DuckDB file, diff it against
the snapshot and write the run's plan table.

Two steps against a snapshot: (1) *kinds* on narrow rows (the key and a hash of the mapped
values: the model's computed now, the snapshot's stored with the identity of the function
that computed it and recomputed from the accepted values when that is not today's, see
:mod:`~undertow.pipeline.diff.local_hash`); (2) the *values* of the planned keys only. A
first sync skips the join.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from undertow.errors import PlanError, PrimaryKeyError
from undertow.pipeline.diff.contract import META, ChangeStats, DiffSpec, batch_groups, lit, q
from undertow.pipeline.diff.local_hash import HASH, row_hash, snapshot_hash
from undertow.pipeline.plan import Plan
from undertow.sources.base import NativeLoad

if TYPE_CHECKING:
    from undertow.pipeline.diff.local import LocalDiffEngine


def key_text(keys: list[str], alias: str) -> str:
    """The row key as text: ``id``, or ``a=1, b=x`` for a composite key."""
    if len(keys) == 1:
        return f"coalesce(CAST({alias}.{q(keys[0])} AS VARCHAR), 'NULL')"
    parts = [f"{lit(k + '=')} || coalesce(CAST({alias}.{q(k)} AS VARCHAR), 'NULL')" for k in keys]
    return " || ', ' || ".join(parts)


def build(
    engine: LocalDiffEngine,
    run_id: str,
    reader: pa.RecordBatchReader | NativeLoad | None,
    spec: DiffSpec,
    plan: Plan,
    batch_size: int,
    *,
    only_keys: Collection[str] | None = None,
    watch_keys: Collection[str] | None = None,
) -> ChangeStats:
    """See :meth:`undertow.pipeline.diff.DiffEngine.build`."""
    if reader is None:
        raise TypeError("the local diff engine diffs the model's rows: pass a reader")
    con = engine.con
    keys, values = spec.keys, spec.values
    engine.discard(run_id)
    # each model row's hash is computed as the model is loaded, in the same pass
    hashed = f"{row_hash(values, '')} AS _ut_h"
    values_from: NativeLoad | None = None  # set when only keys and hashes were loaded
    if isinstance(reader, pa.RecordBatchReader):
        names = reader.schema.names
        if any(k not in names for k in keys):
            missing_keys(spec, names)
        con.register("_ut_src", reader)
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE model AS SELECT *, {hashed} FROM _ut_src")
        finally:
            con.unregister("_ut_src")
        con.execute("CREATE OR REPLACE TEMP TABLE model_shape AS SELECT * FROM model LIMIT 0")
    else:  # a source DuckDB reads natively loads the model itself (no Arrow round trip)
        reader(con, "model_shape", "*", "1 = 0")  # the model's columns and types
        con.execute(f"SET memory_limit={lit(engine.memory_limit)}")
        names = [r[0] for r in con.execute("DESCRIBE model_shape").fetchall()]
        if any(k not in names for k in keys):
            missing_keys(spec, names)
        if only_keys is None and "unchanged" not in plan.ops and engine._snapshot_rows():
            # against a snapshot, a diff plans few rows: load the keys and hashes only,
            # and the values of the planned keys once they are known (step 2 below)
            reader(con, "model", f"{', '.join(q(k) for k in keys)}, {hashed}", "")
            values_from = reader
        else:
            reader(con, "model", f"*, {hashed}", "")
    stats = ChangeStats()
    stats.extracted = int(engine._one("select count(*) from model"))
    for name, wanted in (("only_keys", only_keys), ("watch_keys", watch_keys)):
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} (k VARCHAR)")
        if wanted:
            con.register("_ut_keys", pa.table({"k": pa.array(sorted(wanted), pa.string())}))
            try:
                con.execute(f"INSERT INTO {name} SELECT k FROM _ut_keys")
            finally:
                con.unregister("_ut_keys")
    if only_keys is not None:
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE model_only AS SELECT m.* FROM model m
                WHERE {key_text(keys, "m")} IN (SELECT k FROM only_keys)"""
        )
        con.execute("DROP TABLE model; ALTER TABLE model_only RENAME TO model")

    if not engine._snapshot_exists():
        cols = ", ".join(q(c) for c in keys + values)
        target = "main.snapshot"
        con.execute(
            f"CREATE TABLE {target} AS SELECT {cols}, 0::BIGINT AS _ut_fp, {MARKS_SQL}, "
            f"NULL::UBIGINT AS {HASH} FROM model_shape"
        )
        engine.snapshot = target
    else:
        align_snapshot(engine, values, spec.sync, full=plan.full, keys=keys)
    snap = engine.snapshot
    left_at, seen = mark_columns(engine)
    snap_hash = snapshot_hash(engine, values)
    keeps_left = "removed" not in plan.ops  # the mode deletes nothing: a row leaves once
    holds_changes = "changed" not in plan.ops  # insert: a changed row is never sent
    stats.snapshot = int(engine._one(f"SELECT count(*) FROM {snap}"))
    only_snap = (
        f"WHERE {key_text(keys, 's')} IN (SELECT k FROM only_keys)" if only_keys is not None else ""
    )

    key_not_null = " AND ".join(f"{q(k)} IS NOT NULL" for k in keys)
    key_null = " OR ".join(f"m.{q(k)} IS NULL" for k in keys)
    key_cols = ", ".join(q(k) for k in keys)

    def on(a: str, b: str) -> str:
        return " AND ".join(f"{a}.{q(k)} = {b}.{q(k)}" for k in keys)

    def find_dups(grouped: str) -> None:
        """The duplicated keys, once: the invalid rows and their count come from them."""
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE dups AS
                SELECT {key_cols}, count(*) AS _ut_n FROM {grouped}
                GROUP BY {key_cols} HAVING count(*) > 1"""
        )
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE invalid AS
            SELECT {key_text(keys, "m")} AS _ut_key,
                   'NULL primary key (' || {lit(", ".join(keys))} || ')' AS reason
            FROM model m WHERE {key_null}
            UNION ALL
            SELECT {key_text(keys, "d")} AS _ut_key,
                   'duplicate primary key: ' || d._ut_n || ' rows share it' AS reason
            FROM dups d
            """
        )
        # rows (not keys) rejected: NULL-key rows plus every copy of a duplicated key
        dup_rows = engine._one("SELECT coalesce(sum(_ut_n), 0) FROM dups")
        stats.invalid = int(dup_rows) + int(null_rows)

    null_rows = engine._one(f"select count(*) from model m where {key_null}")

    # 1. kinds, on narrow rows: the key and a hash of the mapped values, computed on both
    #    sides now with the same function (the snapshot keeps values, so no stored hash
    #    can go stale); only the keys to plan are kept

    kinds_wanted = set(plan.ops)
    in_scope = stats.extracted  # the rows the diff covers: fewer with only_keys
    if only_keys is not None:
        in_scope = int(engine._one("select count(*) from model"))
    if stats.snapshot == 0:
        find_dups(f"model WHERE {key_not_null}")
        # a first sync: every valid row is added; no join with the empty snapshot. With no
        # invalid row that is the whole model: the change set is then a view of it, so the
        # rows are written once (into the plan), not twice
        null_olds = ", ".join(f"NULL AS {q(META + 'old_' + c)}" for c in values)
        changes_is = "VIEW" if not stats.invalid else "TABLE"
        valid_only = (
            ""
            if not stats.invalid
            else f"""ANTI JOIN dups d ON {on("m", "d")}
                     WHERE {" AND ".join(f"m.{q(k)} IS NOT NULL" for k in keys)}"""
        )
        con.execute(
            f"""CREATE OR REPLACE TEMP {changes_is} changes AS
                SELECT 'added' AS _ut_kind, {", ".join(f"m.{q(c)}" for c in keys + values)}
                       {", " + null_olds if null_olds else ""}
                FROM model m {valid_only}"""
        )
        valid = in_scope - stats.invalid
    else:
        m_keys = ", ".join(f"m.{q(k)} AS {q(META + 'm_' + k)}" for k in keys)
        s_keys = ", ".join(f"s.{q(k)} AS {q(META + 's_' + k)}" for k in keys)
        joined = " AND ".join(f"m.{q(META + 'm_' + k)} = s.{q(META + 's_' + k)}" for k in keys)
        key0 = keys[0]
        gone = "'removed'"
        if keeps_left:  # counted by the run that saw it leave; then state ('left')
            gone = "CASE WHEN s._ut_left_at IS NULL THEN 'removed' ELSE 'left' END"
        differs = "'changed'"
        if holds_changes:  # counted by the run that saw the change; then state ('held')
            differs = "CASE WHEN s._ut_seen = m._ut_h THEN 'held' ELSE 'changed' END"
        kind = f"""CASE WHEN s.{q(META + "s_" + key0)} IS NULL THEN 'added'
                        WHEN m.{q(META + "m_" + key0)} IS NULL THEN {gone}
                        WHEN m._ut_h IS DISTINCT FROM s._ut_h
                             OR s._ut_fp <> {spec.fingerprint}
                        THEN {differs} ELSE 'unchanged' END"""
        # every model row with a key meets the snapshot: a duplicated key that met it
        # comes out once per copy (or not at all if no copy changed)
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE kinds AS
            SELECT * FROM (
                SELECT {kind} AS _ut_kind,
                       {", ".join(f"m.{q(META + 'm_' + k)}" for k in keys)},
                       {", ".join(f"s.{q(META + 's_' + k)}" for k in keys)},
                       m._ut_h AS _ut_mh
                FROM (SELECT {m_keys}, m._ut_h FROM model m
                      WHERE {" AND ".join(f"m.{q(k)} IS NOT NULL" for k in keys)}) m
                FULL OUTER JOIN (SELECT {s_keys}, {snap_hash} AS _ut_h,
                                        s._ut_fp, {left_at} AS _ut_left_at,
                                        {seen} AS _ut_seen
                                 FROM {snap} s) s ON {joined}
            ) x
            {"" if "unchanged" in kinds_wanted else "WHERE x._ut_kind <> 'unchanged'"}
            """
        )
        raw = dict(con.execute("SELECT _ut_kind, count(*) FROM kinds GROUP BY 1").fetchall())
        met_rows = in_scope - int(null_rows) - int(raw.get("added", 0))
        m_key_cols = ", ".join(f"{q(META + 'm_' + k)} AS {q(k)}" for k in keys)
        if met_rows == stats.snapshot - int(raw.get("removed", 0)) - int(raw.get("left", 0)):
            # as many rows met the snapshot as keys were met: no met key is duplicated,
            # so only the added keys can be (grouping them skips a pass over the model)
            find_dups(f"(SELECT {m_key_cols} FROM kinds WHERE _ut_kind = 'added') a")
        else:
            find_dups(f"model WHERE {key_not_null}")
        if stats.invalid:
            m_on = " AND ".join(f"k.{q(META + 'm_' + k)} = d.{q(k)}" for k in keys)
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE kinds AS
                    SELECT k.* FROM kinds k ANTI JOIN dups d ON {m_on}"""
            )
        valid = in_scope - stats.invalid
        if only_keys is None:  # a retry's diff meets the whole snapshot: it marks nothing
            mark_rows(engine, stats, keys, keeps_left=keeps_left, holds_changes=holds_changes)

        # 2. values, for the planned keys only
        values_rel = "model"
        if values_from is not None:
            m_cols = [q(META + "m_" + k) for k in keys]
            wanted = (
                f"SELECT {', '.join(m_cols)} FROM kinds "
                "WHERE _ut_kind IN ('added', 'changed', 'unchanged')"
            )
            lhs = q(keys[0]) if len(keys) == 1 else f"({', '.join(q(k) for k in keys)})"
            values_from(con, "model_values", "*", f"{lhs} IN ({wanted})")
            values_rel = "model_values"
        new_cols = ", ".join(f"v.{q(c)}" for c in values)
        old_cols = ", ".join(f"s.{q(c)} AS {q(META + 'old_' + c)}" for c in values)
        null_new = ", ".join(f"NULL AS {q(c)}" for c in values)
        null_old = ", ".join(f"NULL AS {q(META + 'old_' + c)}" for c in values)
        sep = ", " if values else ""
        by_m = " AND ".join(f"v.{q(k)} = k.{q(META + 'm_' + k)}" for k in keys)
        by_s = " AND ".join(f"s.{q(k)} = k.{q(META + 's_' + k)}" for k in keys)
        parts = [
            f"""SELECT k._ut_kind, {", ".join(f"v.{q(k)}" for k in keys)}{sep}{new_cols}
                       {sep}{null_old}
                FROM kinds k JOIN {values_rel} v ON {by_m} WHERE k._ut_kind = 'added'""",
            # old values of changed rows are for `plan` (old -> new) only: a real run sends
            # new values, so it skips reading them out of the whole snapshot
            f"""SELECT k._ut_kind, {", ".join(f"v.{q(k)}" for k in keys)}{sep}{new_cols}
                       {sep}{old_cols}
                FROM kinds k JOIN {values_rel} v ON {by_m} JOIN {snap} s ON {by_s}
                WHERE k._ut_kind IN ('changed', 'unchanged')"""
            if engine.dry_run
            else f"""SELECT k._ut_kind, {", ".join(f"v.{q(k)}" for k in keys)}{sep}{new_cols}
                       {sep}{null_old}
                FROM kinds k JOIN {values_rel} v ON {by_m}
                WHERE k._ut_kind IN ('changed', 'unchanged')""",
            f"""SELECT k._ut_kind, {", ".join(f"s.{q(k)}" for k in keys)}
                       {sep}{null_new}{sep}{old_cols}
                FROM kinds k JOIN {snap} s ON {by_s} WHERE k._ut_kind = 'removed'
                {only_snap.replace("WHERE", "AND", 1)}""",
        ]
        con.execute("CREATE OR REPLACE TEMP TABLE changes AS " + " UNION ALL ".join(parts))
        con.execute("DROP TABLE IF EXISTS kinds; DROP TABLE IF EXISTS dups")
        changes_is = "TABLE"
    counts = dict(con.execute("select _ut_kind, count(*) from changes group by 1").fetchall())
    stats.added = int(counts.get("added", 0))
    stats.changed = int(counts.get("changed", 0))
    stats.removed = int(counts.get("removed", 0))
    stats.unchanged = valid - stats.added - stats.changed

    # plan: operation per kind, batches per (operation, kind-of-values) group
    groups = batch_groups(plan, {str(k): int(v) for k, v in counts.items()}, batch_size)
    stats.total_batches = groups.total_batches
    stats.planned = groups.planned
    stats.deletes = groups.deletes
    plan_table = engine._plan_table(run_id)
    # old values are kept for removed rows (a delete sends them) and, in a dry run, for
    # changed and unchanged rows (`plan` shows old -> new): a plan without such rows (a
    # first sync, a run with no deletes) leaves those columns out, which halves what is
    # written
    olds = [f"{META}old_{c}" for c in values]
    shown = engine.dry_run and (stats.changed or "unchanged" in kinds_wanted)
    drop_olds = (
        f"EXCLUDE ({', '.join(q(c) for c in olds)})"
        if olds and not (stats.removed or shown)
        else ""
    )
    con.execute(
        f"""CREATE TABLE {plan_table} AS
            SELECT 0::BIGINT AS _ut_seq, 0::BIGINT AS _ut_batch, ''::VARCHAR AS _ut_key,
                   0::BIGINT AS _ut_fp, ''::VARCHAR AS _ut_op, * {drop_olds}
            FROM changes LIMIT 0"""
    )
    for first, op, group_kinds in groups.inserts:
        kinds = ", ".join(lit(k) for k in group_kinds)
        # one INSERT per group: row_number() without a partition or a sort is cheap,
        # and the table ends up in (batch, seq) order for the chunked reads
        con.execute(
            f"""INSERT INTO {plan_table}
                SELECT {first * batch_size} + rn AS _ut_seq,
                       {first} + rn // {batch_size} AS _ut_batch,
                       {key_text(keys, "n")} AS _ut_key,
                       {spec.fingerprint}::BIGINT AS _ut_fp,
                       {lit(str(op))} AS _ut_op,
                       * EXCLUDE (rn{", " + ", ".join(q(c) for c in olds) if drop_olds else ""})
                FROM (SELECT *, row_number() OVER () - 1 AS rn FROM changes
                      WHERE _ut_kind IN ({kinds})) n"""
        )
    if watch_keys:
        settled = con.execute(
            f"""SELECT k FROM watch_keys
                WHERE k NOT IN (SELECT _ut_key FROM {plan_table})
                  AND k NOT IN (SELECT _ut_key FROM invalid) ORDER BY k"""
        ).fetchall()
        stats.settled = [str(k) for (k,) in settled]
    con.execute(f"DROP {changes_is} IF EXISTS changes; DROP TABLE IF EXISTS dups")
    con.execute("DROP TABLE IF EXISTS only_keys; DROP TABLE IF EXISTS watch_keys")
    con.execute(
        "DROP TABLE IF EXISTS model; DROP TABLE IF EXISTS valid; "
        "DROP TABLE IF EXISTS model_values; DROP TABLE IF EXISTS model_shape"
    )
    con.execute(f"CREATE OR REPLACE TABLE {q('invalid_' + run_id)} AS SELECT * FROM invalid")
    con.execute("DROP TABLE IF EXISTS invalid")
    if not engine.dry_run:
        con.execute("CHECKPOINT")
    return stats


MARKS_SQL = "NULL::TIMESTAMPTZ AS _ut_left_at, NULL::UBIGINT AS _ut_seen"
"""The snapshot's marks, NULL on every accepted row (a fold writes them NULL):

``_ut_left_at``: when the row left the model of a sync that deletes nothing (``upsert``,
``insert``, ``update``): the run that sees it leave counts it as ``removed``, later runs as
state (``left``), and it is cleared when the row comes back. ``_ut_seen``: the model row's
hash when an ``insert`` sync (which never sends a change) counted it as ``changed``, so
later runs count the same values as state (``held``). A mark only decides what is counted,
never what is sent: a mode that deletes or sends changes ignores them, so switching to
``mirror`` deletes the rows that left and switching to ``upsert`` sends the held changes.
(``_ut_seen`` is DuckDB's ``hash()`` of the values: were a DuckDB upgrade to change it, a
held row would count as changed once more, and still not be sent.)"""


def mark_columns(engine: LocalDiffEngine) -> tuple[str, str]:
    """The snapshot's mark columns as SQL, added to a snapshot written before they existed
    (a dry run reads them as NULL instead of changing the file)."""
    have = {r[0] for r in engine.con.execute(f"DESCRIBE {engine.snapshot}").fetchall()}
    missing = {"_ut_left_at": "TIMESTAMPTZ", "_ut_seen": "UBIGINT"}
    for col in [c for c in missing if c in have]:
        missing.pop(col)
    if missing and not engine.dry_run:
        for col, sql_type in missing.items():
            engine.con.execute(f"ALTER TABLE {engine.snapshot} ADD COLUMN {col} {sql_type}")
        missing = {}
    return (
        f"NULL::{missing['_ut_left_at']}" if "_ut_left_at" in missing else "s._ut_left_at",
        f"NULL::{missing['_ut_seen']}" if "_ut_seen" in missing else "s._ut_seen",
    )


def mark_rows(
    engine: LocalDiffEngine,
    stats: ChangeStats,
    keys: list[str],
    *,
    keeps_left: bool,
    holds_changes: bool,
) -> None:
    """Count the rows shown as state (``left``, ``held``) and write the marks of this
    diff's ``removed`` and ``changed`` rows (see :data:`MARKS_SQL`); a dry run writes none."""
    con, snap = engine.con, engine.snapshot
    found = dict(
        con.execute(
            "SELECT _ut_kind, count(*) FROM kinds WHERE _ut_kind IN ('left', 'held') GROUP BY 1"
        ).fetchall()
    )
    stats.left, stats.held = int(found.get("left", 0)), int(found.get("held", 0))
    if not engine.dry_run:
        by_s = " AND ".join(f"t.{q(k)} = k.{q(META + 's_' + k)}" for k in keys)
        if keeps_left:
            # back in the model: no longer left; then this diff's leavers, from now on
            in_model = " AND ".join(f"t.{q(k)} = m.{q(k)}" for k in keys)
            con.execute(
                f"""UPDATE {snap} AS t SET _ut_left_at = NULL WHERE t._ut_left_at IS NOT NULL
                    AND EXISTS (SELECT 1 FROM model m WHERE {in_model})"""
            )
            con.execute(
                f"""UPDATE {snap} AS t SET _ut_left_at = now() FROM kinds k
                    WHERE k._ut_kind = 'removed' AND {by_s}"""
            )
        if holds_changes:
            con.execute(
                f"""UPDATE {snap} AS t SET _ut_seen = k._ut_mh FROM kinds k
                    WHERE k._ut_kind = 'changed' AND {by_s}"""
            )
    if stats.left:
        since = con.execute(
            f"SELECT min(_ut_left_at) FROM kinds k JOIN {snap} t ON "
            + " AND ".join(f"t.{q(k)} = k.{q(META + 's_' + k)}" for k in keys)
            + " WHERE k._ut_kind = 'left'"
        ).fetchone()
        stats.left_since = since[0] if since else None


def missing_keys(spec: DiffSpec, names: list[str]) -> None:
    missing = [k for k in spec.keys if k not in names]
    raise PrimaryKeyError(
        f"sync {spec.sync!r}: primary key column(s) {', '.join(map(repr, missing))} "
        f"not in the model's columns ({', '.join(names)})",
        hint="fix `primary_key:` of the model or add the column to its SQL",
    )


def align_snapshot(
    engine: LocalDiffEngine,
    values: list[str],
    sync: str = "",
    *,
    full: bool = False,
    keys: Sequence[str] = (),
) -> None:
    """Add mapped columns the snapshot lacks (the mapping grew): NULL until accepted.
    Cast columns whose type changed to the new type (see :func:`check_retype`); with
    ``full`` (every row is resent) a column that cannot be cast starts again as NULL."""
    existing = {r[0]: r[1] for r in engine.con.execute(f"DESCRIBE {engine.snapshot}").fetchall()}
    model_types = dict((r[0], r[1]) for r in engine.con.execute("DESCRIBE model_shape").fetchall())
    check_key_types(existing, model_types, keys, sync)
    retyped = [c for c in values if c in existing and existing[c] != model_types[c]]
    try:
        check_retype(engine, retyped, existing, model_types, sync)
    except PlanError:
        if not full:
            raise
        for col in retyped:
            if not engine.dry_run:
                engine.con.execute(f"ALTER TABLE {engine.snapshot} DROP COLUMN {q(col)}")
            existing.pop(col)
        retyped = []
    for col in values:
        if col not in existing and not engine.dry_run:
            engine.con.execute(
                f"ALTER TABLE {engine.snapshot} ADD COLUMN {q(col)} {model_types[col]}"
            )
    for col in retyped if not engine.dry_run else ():
        engine.con.execute(
            f"ALTER TABLE {engine.snapshot} ALTER COLUMN {q(col)} TYPE {model_types[col]}"
        )
    if engine.dry_run:
        missing = [c for c in values if c not in existing]
        if missing or retyped:
            # compare against NULLs / cast values in memory, leaving the file untouched
            star = "s.*"
            if retyped:
                casts = ", ".join(f"CAST({q(c)} AS {model_types[c]}) AS {q(c)}" for c in retyped)
                star = f"s.* REPLACE ({casts})"
            cols = ", ".join([star] + [f"NULL::{model_types[c]} AS {q(c)}" for c in missing])
            engine.con.execute(
                f"CREATE OR REPLACE TEMP TABLE snapshot_view AS SELECT {cols} "
                f"FROM {engine.snapshot} s"
            )
            engine.snapshot = "temp.main.snapshot_view"


_INTEGERS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT"}
_INTEGERS |= {"U" + t for t in _INTEGERS}


def check_key_types(
    old: dict[str, str], new: dict[str, str], keys: Sequence[str], sync: str
) -> None:
    """A primary key column whose type changed since the snapshot was written (other than
    between integer widths) cannot be matched to the accepted rows: fail before sending."""
    for key in keys:
        was, now = old.get(key), new.get(key)
        if was is None or now is None or was == now or {was, now} <= _INTEGERS:
            continue
        raise PlanError(
            f"sync {sync!r}: primary key column {key!r} changed type from {was} to {now} "
            "since the last run, so the model's rows cannot be matched to the rows the "
            "destination accepted; nothing was sent",
            hint=f"cast it back in the model's SQL (e.g. CAST({key} AS {was})), or, if the "
            f"keys really changed, `undertow reset {sync}` so the next run sends every row "
            "as new",
        )


def check_retype(
    engine: LocalDiffEngine, columns: list[str], old: dict[str, str], new: dict[str, str], sync: str
) -> None:
    """A mapped column changed type: its accepted values are compared cast to the new
    type when every one survives the cast and casts back to itself; otherwise the run
    fails before sending (comparing would resend or skip rows at random)."""
    for col in columns:
        c = q(col)
        lossy = engine._one(
            f"SELECT count(*) FROM {engine.snapshot} WHERE {c} IS NOT NULL AND "
            f"(TRY_CAST({c} AS {new[col]}) IS NULL OR "
            f"TRY_CAST(TRY_CAST({c} AS {new[col]}) AS {old[col]}) IS DISTINCT FROM {c})"
        )
        if lossy:
            raise PlanError(
                f"sync {sync!r}: mapped column {col!r} changed type from {old[col]} to "
                f"{new[col]}, and {lossy} accepted value(s) do not convert to the new type "
                "without loss, so the snapshot cannot tell which rows changed; nothing "
                "was sent",
                hint=f"run `undertow run {sync} --full` to resend every row, or "
                f"`undertow reset {sync}`",
            )
