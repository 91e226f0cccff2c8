"""The warehouse engine's build: the change set in one pass over the model, inside the
source (see :func:`build_change_set`), and the snapshot rebuild when ``match`` changes."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from undertow.pipeline.diff.contract import ChangeStats, DiffSpec, batch_groups
from undertow.pipeline.diff.warehouse_sql import (
    MODEL,
    Runner,
    Shape,
    empty_hash_sql,
    key_text_sql,
    row_hash_sql,
)
from undertow.pipeline.plan import Plan
from undertow.sources.scratch_sql import ident, lit, rename_table_sql

if TYPE_CHECKING:
    from undertow.pipeline.diff.warehouse import WarehouseDiffEngine


def build_change_set(
    engine: WarehouseDiffEngine,
    run: Runner,
    run_id: str,
    spec: DiffSpec,
    plan: Plan,
    batch_size: int,
    shape: Shape,
    only_keys: Collection[str] | None,
    watch_keys: Collection[str] | None,
) -> ChangeStats:
    """The change set in one pass over the model: a full join with the snapshot.

    Statements, in one transaction where the warehouse has them (so every statement
    reads the same model):

    1. count the model's rows and the snapshot's;
    2. ``chg``: the model (with each row's hash) FULL JOIN the snapshot on the key,
       keeping the rows that were added, removed or whose hash or fingerprint differs
       (every row under ``--full``); an unchanged row is never written;
    3. duplicate keys. Inside a transaction, when the model's rows that met a snapshot
       row are as many as the snapshot rows they met, no met key is duplicated, so only
       the added rows are grouped; otherwise the model's keys are grouped;
    4. the invalid rows (NULL or duplicate key) leave ``chg`` for ``ut_inv_*``;
    5. the plan table numbers ``chg``'s rows into batches, as the local engine does.
    """
    keys, values = spec.keys, spec.values
    columns = keys + values
    meta, carry, types, algorithm = shape.meta, shape.carry, shape.types, shape.algorithm
    stats = ChangeStats()
    plan_t, inv_t = engine._t(engine._plan_name(run_id)), engine._t(engine._inv_name(run_id))
    chg, dup = (
        engine._t(engine._work_name(run_id, "chg")),
        engine._t(engine._work_name(run_id, "dup")),
    )
    only_t = engine._t(engine._work_name(run_id, "only"))
    watch_t = engine._t(engine._work_name(run_id, "watch"))
    work = [chg, dup, only_t, watch_t]
    engine._drop(run, [plan_t, inv_t, *work])
    run.execute(
        f"DELETE FROM {engine._t('ut_plans')} WHERE sync = {lit(engine.sync)} "
        f"AND run_id = {lit(run_id)}"
    )
    fp = int(spec.fingerprint)
    snap = engine._t(engine._snap)
    empty = empty_hash_sql(algorithm)
    snapshot_exists = meta is not None
    if not snapshot_exists and not engine.dry_run:
        run.execute(
            f"""CREATE TABLE {snap} AS SELECT {", ".join(f"m.{ident(c)}" for c in keys + carry)},
                    {empty} AS _ut_hash, CAST(0 AS BIGINT) AS _ut_fp,
                    CURRENT_TIMESTAMP AS _ut_synced_at
                FROM {ident(MODEL)} AS m WHERE 1 = 0""",
            columns,
        )
        engine._widen(run, snap, ["_ut_fp"])
        snapshot_exists = True
    elif snapshot_exists and meta is not None and meta["match"] != carry:
        recarry(engine, run, spec, meta["match"], carry, columns)
    if snapshot_exists and not engine.dry_run:
        engine._write_meta(run, keys, carry, {c: types[c] for c in columns}, algorithm)
    if snapshot_exists and (engine.dry_run and meta is not None and meta["match"] != carry):
        old = set(meta["match"])
        picks = [f"s.{ident(k)}" for k in keys] + [
            f"s.{ident(c)}" if c in old else f"CAST(NULL AS TEXT) AS {ident(c)}" for c in carry
        ]
        snap_rel = f"(SELECT {', '.join(picks)}, s._ut_hash, s._ut_fp FROM {snap} AS s)"
    elif snapshot_exists:
        snap_rel = snap
    else:  # a dry run before any run: an empty snapshot shaped like the model
        picks = [f"m.{ident(c)}" for c in keys + carry]
        snap_rel = (
            f"(SELECT {', '.join(picks)}, {empty} AS _ut_hash, CAST(0 AS BIGINT) AS _ut_fp "
            f"FROM {ident(MODEL)} AS m WHERE 1 = 0)"
        )
    keeps_left = "removed" not in plan.ops  # the mode deletes nothing: a row leaves once
    holds_changes = "changed" not in plan.ops  # insert: a changed row is never sent
    left_t, held_t = engine._t(engine._left), engine._t(engine._held)
    marked = snapshot_exists and ensure_marks(engine, run, keys)
    if marked:
        snap_rel = (
            f"(SELECT s.*, l._ut_left_at, h._ut_seen FROM {snap_rel} AS s "
            f"LEFT JOIN {left_t} AS l ON {on_keys(keys, 's', 'l')} "
            f"LEFT JOIN {held_t} AS h ON {on_keys(keys, 's', 'h')})"
        )
    else:  # a dry run of a snapshot from before the marks (or of none): no row is marked
        snap_rel = (
            f"(SELECT s.*, CAST(NULL AS TIMESTAMP) AS _ut_left_at, "
            f"CASE WHEN 1 = 0 THEN s._ut_hash END AS _ut_seen FROM {snap_rel} AS s)"
        )
    for table, wanted in ((only_t, only_keys), (watch_t, watch_keys)):
        run.execute(f"CREATE TABLE {table} (k TEXT)")
        run.insert_values(table, sorted(wanted or ()))

    def scope(alias: str) -> str:
        if only_keys is None:
            return ""
        return f" WHERE {key_text_sql(keys, alias)} IN (SELECT k FROM {only_t})"

    def on(a: str, b: str) -> str:
        return " AND ".join(f"{a}.{ident(k)} = {b}.{ident(k)}" for k in keys)

    consistent = run.begin()
    in_scope = run.scalar(f"SELECT COUNT(*) FROM {ident(MODEL)} AS m{scope('m')}", columns)
    stats.extracted = in_scope  # as the local engine counts: the whole model's rows
    if only_keys is not None:
        stats.extracted = run.scalar(f"SELECT COUNT(*) FROM {ident(MODEL)} AS m", columns)
    stats.snapshot = run.scalar(f"SELECT COUNT(*) FROM {snap_rel} AS s", columns)
    met_snapshot = stats.snapshot
    if only_keys is not None:
        met_snapshot = run.scalar(f"SELECT COUNT(*) FROM {snap_rel} AS s{scope('s')}", columns)

    gone, new = "c._ut_in IS NULL", "s._ut_fp IS NULL"
    differs = f"(c._ut_hash <> s._ut_hash OR s._ut_fp <> {fp})"
    picks = [
        f"CASE WHEN {gone} THEN s.{ident(c)} ELSE c.{ident(c)} END AS {ident(c)}"
        if c in keys or c in carry
        else f"c.{ident(c)}"
        for c in columns
    ]
    hashed = row_hash_sql(values, "m", algorithm=algorithm, types=types)
    full = "unchanged" in plan.ops
    # marks (see MARKS): a row that left before is 'left', a change counted before 'held'
    removed = "CASE WHEN s._ut_left_at IS NULL THEN 'removed' ELSE 'left' END"
    changed = "CASE WHEN s._ut_seen = c._ut_hash THEN 'held' ELSE 'changed' END"
    back = " OR s._ut_left_at IS NOT NULL" if keeps_left else ""  # its mark is cleared
    run.execute(
        f"""{engine._work_table} {chg} AS
            SELECT CAST(CASE WHEN {gone} THEN {removed if keeps_left else "'removed'"}
                             WHEN {new} THEN 'added'
                             WHEN {differs} THEN {changed if holds_changes else "'changed'"}
                             ELSE 'unchanged' END
                        AS TEXT) AS _ut_kind,
                   CASE WHEN {gone} THEN {key_text_sql(keys, "s")}
                        ELSE {key_text_sql(keys, "c")} END AS _ut_key,
                   {", ".join(picks)},
                   CASE WHEN {gone} THEN s._ut_hash ELSE c._ut_hash END AS _ut_hash,
                   s._ut_left_at AS _ut_left_at
            FROM (SELECT m.*, {hashed} AS _ut_hash, 1 AS _ut_in
                  FROM {ident(MODEL)} AS m{scope("m")}) AS c
            FULL OUTER JOIN (SELECT * FROM {snap_rel} AS s{scope("s")}) AS s
              ON {on("c", "s")}
            {"" if full else f"WHERE {gone} OR {new} OR {differs}{back}"}""",
        columns,
    )

    def kind_counts() -> dict[str, int]:
        rows = run.rows(f"SELECT _ut_kind, COUNT(*) FROM {chg} GROUP BY _ut_kind")
        return {str(k): int(v) for k, v in rows}

    counts = kind_counts()
    key_cols = ", ".join(ident(k) for k in keys)
    not_null = " AND ".join(f"{ident(k)} IS NOT NULL" for k in keys)
    any_null = " OR ".join(f"{ident(k)} IS NULL" for k in keys)
    met_rows = in_scope - counts.get("added", 0)
    if consistent and met_rows == met_snapshot - counts.get("removed", 0) - counts.get("left", 0):
        # no key that met the snapshot is duplicated: only added keys can be
        grouped, model_cols = f"{chg} WHERE _ut_kind = 'added' AND {not_null}", None
    else:
        grouped = f"{ident(MODEL)} AS m WHERE {not_null}"
        if only_keys is not None:
            grouped += f" AND {key_text_sql(keys, 'm')} IN (SELECT k FROM {only_t})"
        model_cols = columns
    run.execute(
        f"""{engine._work_table} {dup} AS SELECT {key_cols}, COUNT(*) AS _ut_n
            FROM {grouped} GROUP BY {key_cols} HAVING COUNT(*) > 1""",
        model_cols,
    )
    run.execute(
        f"""CREATE TABLE {inv_t} AS
            SELECT _ut_key, {lit("NULL primary key (" + ", ".join(keys) + ")")} AS reason
            FROM {chg} WHERE _ut_kind = 'added' AND ({any_null})
            UNION ALL
            SELECT {key_text_sql(keys, "d")} AS _ut_key,
                   'duplicate primary key: ' || CAST(d._ut_n AS TEXT) || ' rows share it'
            FROM {dup} AS d"""
    )
    null_rows = run.scalar(f"SELECT COUNT(*) FROM {chg} WHERE {any_null}")
    dup_rows = run.scalar(f"SELECT COALESCE(SUM(_ut_n), 0) FROM {dup}")
    stats.invalid = null_rows + dup_rows
    if stats.invalid:
        run.execute(
            f"""DELETE FROM {chg} WHERE {" OR ".join(f"{ident(k)} IS NULL" for k in keys)}
                OR {engine._keys_in(keys, dup)}"""
        )
        counts = kind_counts()
    stats.added = counts.get("added", 0)
    stats.changed = counts.get("changed", 0)
    stats.removed = counts.get("removed", 0)
    stats.unchanged = in_scope - stats.invalid - stats.added - stats.changed
    stats.left, stats.held = counts.get("left", 0), counts.get("held", 0)
    if stats.left:
        since = run.rows(f"SELECT MIN(_ut_left_at) FROM {chg} WHERE _ut_kind = 'left'")
        stats.left_since = as_utc(since[0][0] if since else None)
    if marked and not engine.dry_run:
        mark_rows(run, chg, left_t if keeps_left else None, held_t if holds_changes else None, keys)

    groups = batch_groups(plan, counts, batch_size)
    stats.total_batches = groups.total_batches
    stats.planned = groups.planned
    stats.deletes = groups.deletes
    meta_cols = (
        "CAST(0 AS BIGINT) AS _ut_seq, CAST(0 AS BIGINT) AS _ut_batch, "
        "CAST('' AS VARCHAR(16)) AS _ut_op, CAST(0 AS BIGINT) AS _ut_fp"
    )
    body = f"_ut_kind, _ut_key, {', '.join(ident(c) for c in columns)}, _ut_hash"
    run.execute(f"CREATE TABLE {plan_t} AS SELECT {meta_cols}, {body} FROM {chg} WHERE 1 = 0")
    engine._widen(run, plan_t, ["_ut_seq", "_ut_batch", "_ut_fp"])
    for first, op, kinds in groups.inserts:
        run.execute(
            f"""INSERT INTO {plan_t}
                SELECT {first * batch_size} + n._ut_rn,
                       {first} + CAST(DIV(n._ut_rn, {int(batch_size)}) AS BIGINT),
                       {lit(str(op))}, {fp}, {body}
                FROM (SELECT x.*, ROW_NUMBER() OVER () - 1 AS _ut_rn FROM {chg} AS x
                      WHERE x._ut_kind IN ({", ".join(lit(k) for k in kinds)})) AS n"""
        )
    if watch_keys:
        settled = run.rows(
            f"""SELECT k FROM {watch_t}
                WHERE k NOT IN (SELECT _ut_key FROM {plan_t})
                  AND k NOT IN (SELECT _ut_key FROM {inv_t}) ORDER BY k"""
        )
        stats.settled = [str(k) for (k,) in settled]
    engine._drop(run, work)
    run.execute(
        f"""INSERT INTO {engine._t("ut_plans")} VALUES ({lit(engine.sync)}, {lit(run_id)},
            {lit(engine._plan_name(run_id))}, {lit(engine._inv_name(run_id))}, CURRENT_TIMESTAMP)"""
    )
    run.commit()
    return stats


MARKS = """The snapshot's marks, kept beside it in two small tables (a row only while marked):

``ut_left_<sync>`` (key, ``_ut_left_at``): the row left the model of a sync that deletes
nothing; the run that saw it leave counted it as ``removed``, later runs count it as state
(``left``), and the mark goes when the row comes back. ``ut_held_<sync>`` (key,
``_ut_seen``): the model row's hash when an ``insert`` sync (which never sends a change)
counted it as ``changed``; later runs count the same values as state (``held``). An
accepted row loses its marks (``fold``). A mark decides only what is counted, never what
is sent: a mode that deletes or sends changes ignores it."""


def on_keys(keys: list[str], a: str, b: str) -> str:
    return " AND ".join(f"{a}.{ident(k)} = {b}.{ident(k)}" for k in keys)


def ensure_marks(engine: WarehouseDiffEngine, run: Runner, keys: list[str]) -> bool:
    """Create the mark tables (:data:`MARKS`) a snapshot lacks; False when a dry run finds
    them missing (it reads every row as unmarked and writes nothing)."""
    have = [engine._has_table(run, t) for t in (engine._left, engine._held)]
    if all(have):
        return True
    if engine.dry_run:
        return False
    snap = engine._t(engine._snap)
    cols = ", ".join(f"s.{ident(k)}" for k in keys)
    if not have[0]:
        run.execute(
            f"CREATE TABLE {engine._t(engine._left)} AS SELECT {cols}, "
            f"s._ut_synced_at AS _ut_left_at FROM {snap} AS s WHERE 1 = 0"
        )
    if not have[1]:
        run.execute(
            f"CREATE TABLE {engine._t(engine._held)} AS SELECT {cols}, "
            f"s._ut_hash AS _ut_seen FROM {snap} AS s WHERE 1 = 0"
        )
    return True


def mark_rows(
    run: Runner, chg: str, left_t: str | None, held_t: str | None, keys: list[str]
) -> None:
    """Write this diff's marks: rows back in the model lose their ``left`` mark, rows that
    left now get one; changed rows of an ``insert`` sync get their hash as ``held``."""
    key = key_text_sql(keys, "")
    cols = ", ".join(ident(k) for k in keys)
    if left_t is not None:
        run.execute(
            f"""DELETE FROM {left_t} WHERE {key} IN
                (SELECT _ut_key FROM {chg} WHERE _ut_kind NOT IN ('removed', 'left'))"""
        )
        run.execute(
            f"""INSERT INTO {left_t} ({cols}, _ut_left_at)
                SELECT {cols}, CURRENT_TIMESTAMP FROM {chg} WHERE _ut_kind = 'removed'"""
        )
    if held_t is not None:
        run.execute(
            f"""DELETE FROM {held_t} WHERE {key} IN
                (SELECT _ut_key FROM {chg} WHERE _ut_kind = 'changed')"""
        )
        run.execute(
            f"""INSERT INTO {held_t} ({cols}, _ut_seen)
                SELECT {cols}, _ut_hash FROM {chg} WHERE _ut_kind = 'changed'"""
        )


def as_utc(value: object) -> datetime | None:
    """A timestamp as the warehouse's driver returns it, as an aware UTC datetime."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)  # chDB answers epoch seconds
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def recarry(
    engine: WarehouseDiffEngine,
    run: Runner,
    spec: DiffSpec,
    old: list[str],
    carry: list[str],
    columns: list[str],
) -> None:
    """The sync's match columns changed: rebuild the snapshot with the new ones.

    Their values come from the model now (the fingerprint changed with ``match``, so
    every row is planned again anyway); rows no longer in the model keep the old
    columns' values where a column stayed, NULL otherwise.
    """
    keys = spec.keys
    snap = engine._t(engine._snap)
    tmp = engine._t(engine._snap + "_new")
    on = " AND ".join(f"m.{ident(k)} = s.{ident(k)}" for k in keys)
    picks = [f"s.{ident(k)}" for k in keys] + [
        f"COALESCE(m.{ident(c)}, s.{ident(c)}) AS {ident(c)}" if c in old else f"m.{ident(c)}"
        for c in carry
    ]
    engine._drop(run, [tmp])
    run.execute(
        f"""CREATE TABLE {tmp} AS SELECT {", ".join(picks)}, s._ut_hash, s._ut_fp,
                   s._ut_synced_at
            FROM {snap} AS s LEFT JOIN {ident(MODEL)} AS m ON {on}""",
        columns,
    )
    engine._drop(run, [snap])
    run.session.execute(
        rename_table_sql(engine.dialect, engine.schema, engine._snap + "_new", engine._snap)
    )
