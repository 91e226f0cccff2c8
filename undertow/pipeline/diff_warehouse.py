"""The ``warehouse`` diff engine: the snapshot and the diff SQL live in the source.

Per sync, in a scratch schema the user names (default ``undertow``)::

    ut_snap_<sync>        (pk..., match columns..., _ut_hash, _ut_fp, _ut_synced_at)
    ut_plan_<sync>_<run>  the run's change set: _ut_seq, _ut_batch, _ut_key, _ut_fp,
                          _ut_op, _ut_kind, the model's mapped columns, _ut_hash
    ut_inv_<sync>_<run>   rows rejected for a NULL or duplicate primary key
    ut_snapshots          one row per sync: hash algorithm, key and match columns, types
    ut_plans              one row per live change set (written in the build's transaction)

Only the change set leaves the warehouse: the planned rows (added, changed, removed) with
their mapped columns, read batch by batch by ``chunks()``. The model itself never does.

**The snapshot keeps a hash, not the values** (unlike the ``local`` engine). A value-keeping
snapshot would double the model's size inside the warehouse and make the diff join wide
rows; a hash keeps it to the key plus 32 characters. What it costs:

- the hash is stored, so its definition is frozen: the algorithm is recorded with the
  snapshot (``ut_snapshots``) and kept for its life; an unknown one is refused (the remedy
  is ``undertow reset``) rather than silently resending everything;
- ``plan`` cannot show old -> new values of a changed row (only that it changed);
- a removed row's old payload is gone, so the snapshot also keeps the values of the
  sync's ``match`` columns: the destination needs them to find the record it deletes.
  Other mapped columns of a removed row arrive as NULL;
- a mapped column whose type changes cannot be compared under the new type: a change that
  keeps the text form (integer widening, text <-> varchar) is accepted, any other fails the
  run before sending, naming the column, with the ``--full`` / reset remedy.

Two hash algorithms (see :func:`row_hash_sql`), computed on the model at build time and
stored from the plan table when a row is accepted:

- ``pg-hash-record-v1`` (PostgreSQL 14+): ``hash_record_extended`` of the row, typed
  values hashed as values, the rest as text; no text conversion, so about 4x cheaper;
- ``md5-lenprefix-v1`` (everywhere else): MD5 over a canonical encoding of the mapped
  non-key values: each value becomes ``<length>:<text>`` (NULL becomes ``~``, which no
  length starts with) and the values are joined with ``|``. So ``NULL`` differs from
  ``''`` and ``('a,b', 'c')`` from ``('a', 'b,c')``. The text of a value is the
  warehouse's own cast to text, under a fixed session (UTC, ISO dates).

A build is one pass over the model (see :meth:`WarehouseDiffEngine._build`): the hashed
model FULL JOIN the snapshot, writing only the rows that differ.

SQL is written once (PostgreSQL syntax), every identifier quoted by sqlglot, and
transpiled by sqlglot to the source's dialect. The model's own SQL is never re-rendered:
it replaces a sentinel table name after transpiling.

The change set is kept in the warehouse until the run ends (``discard``), so a resumed run
reads the same plan; ``fold`` replays idempotently from the state store's checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa
from sqlglot import exp

from undertow.destinations.base import Operation
from undertow.errors import ModelError, PlanError, PrimaryKeyError, StateError, UndertowError
from undertow.pipeline.diff import ChangeStats, DiffEngine, DiffSpec, PlannedChunk
from undertow.pipeline.plan import Plan
from undertow.redact import redact
from undertow.sources.base import NativeLoad, Source, SqlSession
from undertow.sources.scratch_sql import TEMPLATE, ident, lit, rename_table_sql, transpile

MD5_LENPREFIX = "md5-lenprefix-v1"
"""Portable: MD5 over the length-prefixed text of each value (any dialect with MD5)."""
PG_HASH_RECORD = "pg-hash-record-v1"
"""PostgreSQL 14+: ``hash_record_extended`` over the row, no text conversion of typed values."""
HASH_ALGORITHMS = (MD5_LENPREFIX, PG_HASH_RECORD)
HASH_ALGORITHM = MD5_LENPREFIX
"""The algorithm of dialects without a faster one. Recorded with every snapshot, which keeps
the algorithm it was written with until it is reset: see the module docstring."""

# Arrow types whose PostgreSQL type has an extended hash function; others are hashed as text.
_PG_NATIVE_HASH = re.compile(r"^(u?int\d+|float|double|halffloat|decimal|bool|date|timestamp|time)")

_T = TEMPLATE  # the dialect the templates below are written in
_MODEL = "__ut_model__"  # sentinel replaced by the model's SQL after transpiling
_META = ("_ut_seq", "_ut_batch", "_ut_key", "_ut_op", "_ut_kind")
_ALL_META = (*_META, "_ut_fp", "_ut_hash")
_VALUES_PER_INSERT = 1000
_WORK_TABLES = ("chg", "dup", "only", "watch", "done", "bad", "acc")
_BEGIN = {
    # every statement of a build reads the same model; DDL is transactional in both
    "postgres": "BEGIN ISOLATION LEVEL REPEATABLE READ",
    "duckdb": "BEGIN TRANSACTION",
}


def text_of(column: str) -> str:
    return f"CAST({column} AS TEXT)"


def row_hash_sql(
    columns: Sequence[str],
    alias: str,
    *,
    algorithm: str = MD5_LENPREFIX,
    types: dict[str, str] | None = None,
) -> str:
    """The row hash of ``columns`` under ``algorithm`` (template dialect).

    ``md5-lenprefix-v1``: MD5 of the NULL-aware, length-prefixed encoding of the values.
    ``pg-hash-record-v1``: PostgreSQL's ``hash_record_extended`` of the row; a column whose
    Arrow type (``types``) is not a number, boolean, date or time is hashed as its text.
    """
    if algorithm == PG_HASH_RECORD:
        if not columns:
            return "CAST(0 AS BIGINT)"
        kinds = types or {}
        parts = [
            f"{alias}.{ident(c)}"
            if _PG_NATIVE_HASH.match(kinds.get(c, ""))
            else text_of(f"{alias}.{ident(c)}")
            for c in columns
        ]
        return f"HASH_RECORD_EXTENDED(ROW({', '.join(parts)}), 0)"
    if algorithm != MD5_LENPREFIX:
        raise ValueError(f"unknown row hash algorithm {algorithm!r}")
    if not columns:
        return "MD5('')"
    parts = []
    for c in columns:
        col = f"{alias}.{ident(c)}"
        parts.append(
            f"COALESCE(CAST(LENGTH({text_of(col)}) AS TEXT) || ':' || {text_of(col)}, '~')"
        )
    return "MD5(" + " || '|' || ".join(parts) + ")"


def empty_hash_sql(algorithm: str) -> str:
    """A constant of the algorithm's hash type (for an empty, typed snapshot)."""
    return row_hash_sql([], "m", algorithm=algorithm)


def key_text_sql(keys: Sequence[str], alias: str) -> str:
    """The row key as text, as the local engine writes it (``id`` or ``a=1, b=x``).

    ``alias`` qualifies the key columns; ``""`` leaves them unqualified."""

    def col(k: str) -> str:
        return f"{alias}.{ident(k)}" if alias else ident(k)

    if len(keys) == 1:
        return f"COALESCE({text_of(col(keys[0]))}, 'NULL')"
    return " || ', ' || ".join(
        f"{lit(k + '=')} || COALESCE({text_of(col(k))}, 'NULL')" for k in keys
    )


def _slug(text: str, size: int) -> str:
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return re.sub(r"[^a-z0-9_]", "_", text.lower())[:size] + "_" + digest


def _int_types_compatible(old: str, new: str) -> bool:
    """A type change whose values keep their text form (so their hashes)."""
    ints = re.compile(r"^u?int(8|16|32|64)$")
    texts = {"string", "large_string", "string_view"}
    return bool(ints.match(old) and ints.match(new)) or (old in texts and new in texts)


class WarehouseDiffEngine(DiffEngine):
    """The diff run inside the source; see the module docstring for the tables it keeps."""

    name = "warehouse"
    pulls_model = False

    def __init__(
        self,
        source: Source,
        sync: str,
        *,
        sql: str,
        model: str,
        schema: str = "undertow",
        match_columns: Sequence[str] = (),
        dry_run: bool = False,
    ) -> None:
        if source.sql_dialect is None:
            source.session()  # raises the source's "cannot run the warehouse engine" error
        self.source = source
        self.sync = sync
        self.model_sql = re.sub(r"[\s;]+$", "", sql)
        self.model = model
        self.schema = schema
        self.match_columns = list(match_columns)
        self.dry_run = dry_run
        self.dialect: str = source.sql_dialect or _T
        base = _slug(sync, 24)
        self._snap = f"ut_snap_{base}"
        self._base = base
        self._previews: set[str] = set()
        # work tables live for one build or fold: PostgreSQL need not WAL-log them
        self._work_table = "CREATE UNLOGGED TABLE" if self.dialect == "postgres" else "CREATE TABLE"

    # -- SQL --------------------------------------------------------------------------------

    def _t(self, table: str) -> str:
        return f"{ident(self.schema)}.{ident(table)}"

    def _plan_name(self, run_id: str) -> str:
        return f"ut_plan_{self._base}_{hashlib.sha1(run_id.encode()).hexdigest()[:10]}"

    def _inv_name(self, run_id: str) -> str:
        return f"ut_inv_{self._base}_{hashlib.sha1(run_id.encode()).hexdigest()[:10]}"

    def _work_name(self, run_id: str, what: str) -> str:
        return f"ut_work_{self._base}_{hashlib.sha1(run_id.encode()).hexdigest()[:10]}_{what}"

    def render(self, template: str, columns: Sequence[str] | None = None) -> str:
        """Transpile ``template`` to the source's dialect; splice in the projected model."""
        out = transpile(template, self.dialect)
        sentinel = exp.to_identifier(_MODEL, quoted=True).sql(self.dialect)
        if sentinel in out:
            cols = ", ".join(
                exp.to_identifier(c, quoted=True).sql(self.dialect) for c in columns or ()
            )
            inner = exp.to_identifier("_ut_src", quoted=True).sql(self.dialect)
            model = f"(SELECT {cols} FROM (\n{self.model_sql}\n) AS {inner})"
            out = out.replace(sentinel, model)
        return out

    @contextmanager
    def _session(self) -> Iterator[_Runner]:
        session = self.source.session()
        try:
            yield _Runner(self, session)
        finally:
            session.close()

    # -- metadata ---------------------------------------------------------------------------

    def _catalog(self, view: str) -> str:
        """An ``information_schema`` view. BigQuery keeps one per dataset (the scratch
        dataset's lists its tables and columns), not one per project."""
        if self.dialect == "bigquery":
            return f"{ident(self.schema)}.INFORMATION_SCHEMA.{view.upper()}"
        return f"information_schema.{view}"

    def _schema_exists(self, run: _Runner) -> bool:
        if self.dialect == "bigquery":  # SCHEMATA is per region, which the engine need not know
            try:
                run.rows(f"SELECT COUNT(*) FROM {self._catalog('tables')} WHERE 1 = 0")
            except Exception:  # "Not found: Dataset ..."
                return False
            return True
        found = run.rows(
            f"SELECT COUNT(*) FROM {self._catalog('schemata')} WHERE schema_name = "
            + lit(self.schema)
        )
        return bool(found[0][0])

    def _ensure_schema(self, run: _Runner) -> None:
        if not self._schema_exists(run):
            current = None
            if self.dialect == "snowflake":  # CREATE SCHEMA makes it the session's schema
                current = run.session.rows("SELECT CURRENT_DATABASE(), CURRENT_SCHEMA()")[0]
            run.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(self.schema)}")
            if current is not None and current[1] is not None:
                path = ".".join(
                    exp.to_identifier(str(p), quoted=True).sql("snowflake") for p in current
                )
                run.session.execute(f"USE SCHEMA {path}")
        run.execute(
            f"""CREATE TABLE IF NOT EXISTS {self._t("ut_snapshots")} (
                    sync VARCHAR(255), snapshot_table VARCHAR(255), hash_algorithm VARCHAR(64),
                    key_columns TEXT, match_columns TEXT, column_types TEXT,
                    created_at TIMESTAMP)"""
        )
        run.execute(
            f"""CREATE TABLE IF NOT EXISTS {self._t("ut_plans")} (
                    sync VARCHAR(255), run_id VARCHAR(255), plan_table VARCHAR(255),
                    invalid_table VARCHAR(255), created_at TIMESTAMP)"""
        )

    def _has_table(self, run: _Runner, table: str) -> bool:
        if self.dialect == "bigquery" and not self._schema_exists(run):
            return False
        rows = run.rows(
            f"SELECT COUNT(*) FROM {self._catalog('tables')} WHERE table_schema = "
            f"{lit(self.schema)} AND table_name = {lit(table)}"
        )
        return bool(rows[0][0])

    def _meta(self, run: _Runner) -> dict[str, Any] | None:
        if not self._has_table(run, "ut_snapshots"):
            return None
        rows = run.rows(
            f"""SELECT hash_algorithm, key_columns, match_columns, column_types
                FROM {self._t("ut_snapshots")} WHERE sync = {lit(self.sync)}"""
        )
        if not rows or not self._has_table(run, self._snap):
            return None
        alg, keys, match, types = rows[0]
        return {
            "hash_algorithm": alg,
            "keys": json.loads(keys),
            "match": json.loads(match),
            "types": json.loads(types),
        }

    def _write_meta(
        self,
        run: _Runner,
        keys: list[str],
        carry: list[str],
        types: dict[str, str],
        algorithm: str,
    ) -> None:
        run.execute(f"DELETE FROM {self._t('ut_snapshots')} WHERE sync = {lit(self.sync)}")
        values = ", ".join(
            lit(v)
            for v in (
                self.sync,
                self._snap,
                algorithm,
                json.dumps(keys),
                json.dumps(carry),
                json.dumps(types, sort_keys=True),
            )
        )
        run.execute(f"INSERT INTO {self._t('ut_snapshots')} VALUES ({values}, CURRENT_TIMESTAMP)")

    # -- build ------------------------------------------------------------------------------

    def build(
        self,
        run_id: str,
        reader: pa.RecordBatchReader | NativeLoad | None,
        spec: DiffSpec,
        plan: Plan,
        batch_size: int,
        *,
        only_keys: Collection[str] | None = None,
        watch_keys: Collection[str] | None = None,
    ) -> ChangeStats:
        if isinstance(reader, pa.RecordBatchReader):
            reader.close()  # this engine reads the model inside the warehouse
        keys, values = spec.keys, spec.values
        columns = keys + values
        carry = [c for c in self.match_columns if c in values]
        described = self.source.describe(
            self.render(f"SELECT * FROM {ident(_MODEL)} AS m", columns), model=self.model
        )
        missing = [k for k in keys if k not in described.names]
        if missing:
            raise PrimaryKeyError(
                f"sync {spec.sync!r}: primary key column(s) {', '.join(map(repr, missing))} "
                f"not in the model's columns ({', '.join(described.names)})",
                hint="fix `primary_key:` of the model or add the column to its SQL",
            )
        types = {f.name: str(f.type) for f in described}
        if self.dry_run:
            self._previews.add(run_id)
        with self._session() as run:
            self._ensure_schema(run)
            meta = self._meta(run)
            if meta is not None:
                self._check_snapshot(meta, spec, types, plan)
                algorithm = str(meta["hash_algorithm"])
            else:
                algorithm = self._best_algorithm(run)
            try:
                return self._build(
                    run,
                    run_id,
                    spec,
                    plan,
                    batch_size,
                    _Shape(meta, carry, types, algorithm),
                    only_keys,
                    watch_keys,
                )
            except UndertowError:
                run.rollback_quietly()
                raise
            except Exception as exc:
                run.rollback_quietly()
                raise ModelError(
                    redact(str(exc)).strip().splitlines()[0],
                    model=self.model,
                    source=self.source.instance_name,
                    hint="fix the model's SQL; nothing was sent and the snapshot is unchanged",
                ) from exc

    def _best_algorithm(self, run: _Runner) -> str:
        """The fastest row hash this warehouse offers, for a new snapshot."""
        if self.dialect == "postgres" and run.scalar(
            "SELECT COUNT(*) FROM pg_catalog.pg_proc WHERE proname = 'hash_record_extended'"
        ):
            return PG_HASH_RECORD  # PostgreSQL 14+ (not Redshift)
        return MD5_LENPREFIX

    def _check_snapshot(
        self, meta: dict[str, Any], spec: DiffSpec, types: dict[str, str], plan: Plan
    ) -> None:
        remedy = (
            f"run `undertow run {spec.sync} --full` to resend every row (the snapshot is "
            f"rebuilt as the destination accepts them), or `undertow reset {spec.sync}`"
        )
        if meta["keys"] != spec.keys:
            raise StateError(
                f"sync {spec.sync!r}: the model's primary key changed from "
                f"{', '.join(meta['keys'])} to {', '.join(spec.keys)} since the snapshot in "
                f"schema {self.schema!r} was written; nothing was sent",
                hint=f"run `undertow reset {spec.sync}` (the next run is a first run)",
            )
        if meta["hash_algorithm"] not in HASH_ALGORITHMS:
            raise StateError(
                f"sync {spec.sync!r}: the snapshot in schema {self.schema!r} was hashed with "
                f"{meta['hash_algorithm']!r}, which this version does not know "
                f"({', '.join(HASH_ALGORITHMS)}); its rows cannot be compared, and nothing "
                "was sent",
                hint=f"run `undertow reset {spec.sync}` (the next run is a first run)",
            )
        if plan.full:
            return  # every row is planned: the snapshot is rewritten under the new types
        for column, old in meta["types"].items():
            new = types.get(column)
            if new is None or new == old or column not in spec.values:
                continue
            if not _int_types_compatible(old, new):
                raise PlanError(
                    f"sync {spec.sync!r}: mapped column {column!r} changed type from {old} to "
                    f"{new} since the last run; the warehouse diff engine keeps a hash of the "
                    "accepted values, not the values, so it cannot compare them under the new "
                    "type; nothing was sent",
                    hint=remedy,
                )

    def _build(
        self,
        run: _Runner,
        run_id: str,
        spec: DiffSpec,
        plan: Plan,
        batch_size: int,
        shape: _Shape,
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
        plan_t, inv_t = self._t(self._plan_name(run_id)), self._t(self._inv_name(run_id))
        chg, dup = self._t(self._work_name(run_id, "chg")), self._t(self._work_name(run_id, "dup"))
        only_t = self._t(self._work_name(run_id, "only"))
        watch_t = self._t(self._work_name(run_id, "watch"))
        work = [chg, dup, only_t, watch_t]
        self._drop(run, [plan_t, inv_t, *work])
        run.execute(
            f"DELETE FROM {self._t('ut_plans')} WHERE sync = {lit(self.sync)} "
            f"AND run_id = {lit(run_id)}"
        )
        fp = int(spec.fingerprint)
        snap = self._t(self._snap)
        empty = empty_hash_sql(algorithm)
        snapshot_exists = meta is not None
        if not snapshot_exists and not self.dry_run:
            run.execute(
                f"""CREATE TABLE {snap} AS SELECT {", ".join(f"m.{ident(c)}" for c in keys + carry)},
                        {empty} AS _ut_hash, CAST(0 AS BIGINT) AS _ut_fp,
                        CURRENT_TIMESTAMP AS _ut_synced_at
                    FROM {ident(_MODEL)} AS m WHERE 1 = 0""",
                columns,
            )
            self._widen(run, snap, ["_ut_fp"])
            snapshot_exists = True
        elif snapshot_exists and meta is not None and meta["match"] != carry:
            self._recarry(run, spec, meta["match"], carry, columns)
        if snapshot_exists and not self.dry_run:
            self._write_meta(run, keys, carry, {c: types[c] for c in columns}, algorithm)
        if snapshot_exists and (self.dry_run and meta is not None and meta["match"] != carry):
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
                f"FROM {ident(_MODEL)} AS m WHERE 1 = 0)"
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
        in_scope = run.scalar(f"SELECT COUNT(*) FROM {ident(_MODEL)} AS m{scope('m')}", columns)
        stats.extracted = in_scope  # as the local engine counts: the whole model's rows
        if only_keys is not None:
            stats.extracted = run.scalar(f"SELECT COUNT(*) FROM {ident(_MODEL)} AS m", columns)
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
        run.execute(
            f"""{self._work_table} {chg} AS
                SELECT CAST(CASE WHEN {gone} THEN 'removed' WHEN {new} THEN 'added'
                                 WHEN {differs} THEN 'changed' ELSE 'unchanged' END
                            AS TEXT) AS _ut_kind,
                       CASE WHEN {gone} THEN {key_text_sql(keys, "s")}
                            ELSE {key_text_sql(keys, "c")} END AS _ut_key,
                       {", ".join(picks)},
                       CASE WHEN {gone} THEN s._ut_hash ELSE c._ut_hash END AS _ut_hash
                FROM (SELECT m.*, {hashed} AS _ut_hash, 1 AS _ut_in
                      FROM {ident(_MODEL)} AS m{scope("m")}) AS c
                FULL OUTER JOIN (SELECT * FROM {snap_rel} AS s{scope("s")}) AS s
                  ON {on("c", "s")}
                {"" if full else f"WHERE {gone} OR {new} OR {differs}"}""",
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
        if consistent and met_rows == met_snapshot - counts.get("removed", 0):
            # no key that met the snapshot is duplicated: only added keys can be
            grouped, model_cols = f"{chg} WHERE _ut_kind = 'added' AND {not_null}", None
        else:
            grouped = f"{ident(_MODEL)} AS m WHERE {not_null}"
            if only_keys is not None:
                grouped += f" AND {key_text_sql(keys, 'm')} IN (SELECT k FROM {only_t})"
            model_cols = columns
        run.execute(
            f"""{self._work_table} {dup} AS SELECT {key_cols}, COUNT(*) AS _ut_n
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
                    OR {self._keys_in(keys, dup)}"""
            )
            counts = kind_counts()
        stats.added = counts.get("added", 0)
        stats.changed = counts.get("changed", 0)
        stats.removed = counts.get("removed", 0)
        stats.unchanged = in_scope - stats.invalid - stats.added - stats.changed

        groups = _groups(plan, counts, batch_size)
        stats.total_batches = groups.total_batches
        stats.planned = groups.planned
        stats.deletes = groups.deletes
        meta_cols = (
            "CAST(0 AS BIGINT) AS _ut_seq, CAST(0 AS BIGINT) AS _ut_batch, "
            "CAST('' AS VARCHAR(16)) AS _ut_op, CAST(0 AS BIGINT) AS _ut_fp"
        )
        body = f"_ut_kind, _ut_key, {', '.join(ident(c) for c in columns)}, _ut_hash"
        run.execute(f"CREATE TABLE {plan_t} AS SELECT {meta_cols}, {body} FROM {chg} WHERE 1 = 0")
        self._widen(run, plan_t, ["_ut_seq", "_ut_batch", "_ut_fp"])
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
        self._drop(run, work)
        run.execute(
            f"""INSERT INTO {self._t("ut_plans")} VALUES ({lit(self.sync)}, {lit(run_id)},
                {lit(self._plan_name(run_id))}, {lit(self._inv_name(run_id))}, CURRENT_TIMESTAMP)"""
        )
        run.commit()
        return stats

    def _recarry(
        self, run: _Runner, spec: DiffSpec, old: list[str], carry: list[str], columns: list[str]
    ) -> None:
        """The sync's match columns changed: rebuild the snapshot with the new ones.

        Their values come from the model now (the fingerprint changed with ``match``, so
        every row is planned again anyway); rows no longer in the model keep the old
        columns' values where a column stayed, NULL otherwise.
        """
        keys = spec.keys
        snap = self._t(self._snap)
        tmp = self._t(self._snap + "_new")
        on = " AND ".join(f"m.{ident(k)} = s.{ident(k)}" for k in keys)
        picks = [f"s.{ident(k)}" for k in keys] + [
            f"COALESCE(m.{ident(c)}, s.{ident(c)}) AS {ident(c)}" if c in old else f"m.{ident(c)}"
            for c in carry
        ]
        self._drop(run, [tmp])
        run.execute(
            f"""CREATE TABLE {tmp} AS SELECT {", ".join(picks)}, s._ut_hash, s._ut_fp,
                       s._ut_synced_at
                FROM {snap} AS s LEFT JOIN {ident(_MODEL)} AS m ON {on}""",
            columns,
        )
        self._drop(run, [snap])
        run.session.execute(
            rename_table_sql(self.dialect, self.schema, self._snap + "_new", self._snap)
        )

    def _widen(self, run: _Runner, table: str, columns: Sequence[str]) -> None:
        """Make integer columns of a table just created from constants 64-bit: MySQL and
        MariaDB type ``CAST(0 AS SIGNED)`` as a narrow INT, too small for a fingerprint."""
        if self.dialect == "mysql":
            for column in columns:
                run.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE BIGINT")

    def _keys_in(self, keys: Sequence[str], table: str) -> str:
        """The (unqualified) key of the row is among ``table``'s keys: an uncorrelated IN,
        which ClickHouse accepts (it has no correlated subqueries); BigQuery, which has no
        tuple IN, compares a composite key as text."""
        cols = ", ".join(ident(k) for k in keys)
        if len(keys) == 1:
            return f"{cols} IN (SELECT {cols} FROM {table})"
        if self.dialect == "bigquery":
            return (
                f"{key_text_sql(keys, '')} IN (SELECT {key_text_sql(keys, 'k')} FROM {table} AS k)"
            )
        return f"({cols}) IN (SELECT {cols} FROM {table})"

    def _drop(self, run: _Runner, tables: Iterable[str]) -> None:
        for table in tables:
            run.execute(f"DROP TABLE IF EXISTS {table}")

    # -- reading the plan -------------------------------------------------------------------

    def has_plan(self, run_id: str) -> bool:
        with self._session() as run:
            if not self._has_table(run, "ut_plans"):
                return False
            return bool(
                run.scalar(
                    f"""SELECT COUNT(*) FROM {self._t("ut_plans")}
                        WHERE sync = {lit(self.sync)} AND run_id = {lit(run_id)}"""
                )
            )

    def invalid_rows(self, run_id: str, limit: int | None = None) -> list[tuple[str, str]]:
        with self._session() as run:
            if not self._has_table(run, self._inv_name(run_id)):
                return []
            sql = f"SELECT _ut_key, reason FROM {self._t(self._inv_name(run_id))} ORDER BY _ut_key"
            if limit is not None:
                sql += f" LIMIT {int(limit)}"
            return [(str(k), str(r)) for k, r in run.rows(sql)]

    def _read(self, sql: str) -> pl.DataFrame:
        """Read rows of the scratch schema through the source's own Arrow extraction."""
        reader = self.source.extract(self.render(sql), model=f"{self.model} (change set)")
        try:
            table = reader.read_all()
        finally:
            reader.close()
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        upper = {c: c.lower() for c in frame.columns if c.lower() in _ALL_META and c != c.lower()}
        return frame.rename(upper) if upper else frame

    def _plan_columns(self, run_id: str) -> list[str]:
        """The model's columns in the plan table, in order (the ``_ut_*`` ones left out)."""
        with self._session() as run:
            rows = run.rows(
                f"""SELECT column_name FROM {self._catalog("columns")}
                    WHERE table_schema = {lit(self.schema)}
                      AND table_name = {lit(self._plan_name(run_id))}
                    ORDER BY ordinal_position"""
            )
        # the _ut_* names are written unquoted: Snowflake keeps them upper-case
        return [str(r[0]) for r in rows if str(r[0]).lower() not in _ALL_META]

    @staticmethod
    def _select_meta(names: Sequence[str]) -> str:
        """The ``_ut_*`` columns by their unquoted names (``_read`` names them lower-case)."""
        return ", ".join(names)

    def chunks(
        self, run_id: str, *, skip: set[int], batches_per_chunk: int = 64
    ) -> Iterator[PlannedChunk]:
        table = self._t(self._plan_name(run_id))
        with self._session() as run:
            top = run.rows(f"SELECT MAX(_ut_batch) FROM {table}")[0][0]
        if top is None:
            return
        model_cols = self._plan_columns(run_id)
        select = ", ".join([self._select_meta(_META), *(ident(c) for c in model_cols)])
        start, last = 0, int(top)
        while start <= last:
            todo = [
                b for b in range(start, min(start + batches_per_chunk, last + 1)) if b not in skip
            ]
            start += batches_per_chunk
            if not todo:
                continue
            frame = self._read(
                f"SELECT {select} FROM {table} WHERE _ut_batch BETWEEN {int(todo[0])} "
                f"AND {int(todo[-1])} ORDER BY _ut_seq"
            )
            if skip:
                frame = frame.filter(pl.col("_ut_batch").is_in(todo))
            if frame.is_empty():
                continue
            ops = frame.select("_ut_batch", "_ut_op").unique(
                subset="_ut_batch", maintain_order=True
            )
            yield PlannedChunk(
                frame=frame, batches=[(int(b), Operation(o)) for b, o in ops.iter_rows()]
            )

    def changed_rows(self, run_id: str, limit: int) -> pl.DataFrame:
        """Changed rows, new values only: the snapshot keeps hashes, not old values."""
        select = ", ".join(
            [
                self._select_meta(
                    ("_ut_seq", "_ut_batch", "_ut_op", "_ut_fp", "_ut_kind", "_ut_key")
                ),
                *(ident(c) for c in self._plan_columns(run_id)),
            ]
        )
        return self._read(
            f"SELECT {select} FROM {self._t(self._plan_name(run_id))} "
            f"WHERE _ut_kind = 'changed' ORDER BY _ut_seq LIMIT {int(limit)}"
        )

    # -- record -----------------------------------------------------------------------------

    def fold(self, run_id: str, spec: DiffSpec, done: set[int], not_accepted: Sequence[int]) -> int:
        if not done or self.dry_run or not self.has_plan(run_id):
            return 0
        keys = spec.keys
        plan_t, snap = self._t(self._plan_name(run_id)), self._t(self._snap)
        done_t = self._t(self._work_name(run_id, "done"))
        bad_t = self._t(self._work_name(run_id, "bad"))
        acc_t = self._t(self._work_name(run_id, "acc"))
        with self._session() as run:
            meta = self._meta(run)
            carry = list(meta["match"]) if meta else []
            self._drop(run, [done_t, bad_t, acc_t])
            run.execute(f"CREATE TABLE {done_t} (n BIGINT)")
            run.execute(f"CREATE TABLE {bad_t} (n BIGINT)")
            run.insert_values(done_t, sorted(done))
            run.insert_values(bad_t, sorted(set(not_accepted)))
            snap_cols = [*keys, *carry]
            run.execute(
                f"""{self._work_table} {acc_t} AS
                    SELECT {", ".join(f"p.{ident(c)}" for c in snap_cols)}, p._ut_kind,
                           p._ut_hash, p._ut_fp
                    FROM {plan_t} AS p
                    WHERE p._ut_batch IN (SELECT n FROM {done_t})
                      AND p._ut_seq NOT IN (SELECT n FROM {bad_t})"""
            )
            try:
                run.begin()
                run.execute(f"DELETE FROM {snap} WHERE {self._keys_in(keys, acc_t)}")
                names = ", ".join(ident(c) for c in snap_cols)
                run.execute(
                    f"""INSERT INTO {snap} ({names}, _ut_hash, _ut_fp, _ut_synced_at)
                        SELECT {names}, _ut_hash, _ut_fp, CURRENT_TIMESTAMP FROM {acc_t}
                        WHERE _ut_kind <> 'removed'"""
                )
                run.commit()
            except Exception:
                run.rollback_quietly()
                raise
            folded = run.scalar(f"SELECT COUNT(*) FROM {acc_t}")
            self._drop(run, [done_t, bad_t, acc_t])
        return folded

    def discard(self, run_id: str) -> None:
        with self._session() as run:
            self._discard(run, run_id)

    def _discard(self, run: _Runner, run_id: str) -> None:
        names = [self._plan_name(run_id), self._inv_name(run_id)]
        names += [self._work_name(run_id, w) for w in _WORK_TABLES]
        self._drop(run, [self._t(n) for n in names])
        if self._has_table(run, "ut_plans"):
            run.execute(
                f"""DELETE FROM {self._t("ut_plans")}
                    WHERE sync = {lit(self.sync)} AND run_id = {lit(run_id)}"""
            )

    def discard_all_plans(self, keep: str | None = None) -> None:
        with self._session() as run:
            if not self._has_table(run, "ut_plans"):
                return
            for (run_id,) in run.rows(
                f"SELECT run_id FROM {self._t('ut_plans')} WHERE sync = {lit(self.sync)}"
            ):
                if run_id != keep:
                    self._discard(run, str(run_id))

    def reset(self) -> None:
        with self._session() as run:
            self._drop(run, [self._t(self._snap)])
            if self._has_table(run, "ut_snapshots"):
                run.execute(f"DELETE FROM {self._t('ut_snapshots')} WHERE sync = {lit(self.sync)}")
        self.discard_all_plans()

    def snapshot_rows(self) -> int:
        with self._session() as run:
            if not self._has_table(run, self._snap):
                return 0
            return run.scalar(f"SELECT COUNT(*) FROM {self._t(self._snap)}")

    def close(self) -> None:
        previews, self._previews = self._previews, set()
        if previews:
            with self._session() as run:
                for run_id in previews:
                    self._discard(run, run_id)


class _Runner:
    """A session that renders each statement for the source's dialect before sending it."""

    def __init__(self, engine: WarehouseDiffEngine, session: SqlSession) -> None:
        self.engine = engine
        self.session = session
        self.in_transaction = False

    def execute(self, template: str, columns: Sequence[str] | None = None) -> None:
        self.session.execute(self.engine.render(template, columns))

    def rows(self, template: str, columns: Sequence[str] | None = None) -> list[tuple[Any, ...]]:
        return self.session.rows(self.engine.render(template, columns))

    def scalar(self, template: str, columns: Sequence[str] | None = None) -> int:
        value = self.rows(template, columns)[0][0]
        return int(value or 0)

    def insert_values(self, table: str, values: Sequence[int | str]) -> None:
        for start in range(0, len(values), _VALUES_PER_INSERT):
            part = values[start : start + _VALUES_PER_INSERT]
            rows = ", ".join(f"({lit(v) if isinstance(v, str) else int(v)})" for v in part)
            self.execute(f"INSERT INTO {table} VALUES {rows}")

    def begin(self) -> bool:
        """Open a transaction where the dialect has them; False where each statement commits.

        Without one (ClickHouse, BigQuery, Databricks) a build's statements may read
        different states of a changing model, and a fold is two statements; a fold is
        replayed from the checkpoints by the next run, so an interrupted one is repaired.
        """
        statement = _BEGIN.get(self.engine.dialect)
        if statement is None:
            return False
        self.session.execute(statement)
        self.in_transaction = True
        return True

    def commit(self) -> None:
        if self.in_transaction:
            self.session.execute("COMMIT")
            self.in_transaction = False

    def rollback_quietly(self) -> None:
        if not self.in_transaction:
            return
        self.in_transaction = False
        with contextlib.suppress(Exception):  # the connection may be gone
            self.session.execute("ROLLBACK")


@dataclass(frozen=True)
class _Shape:
    """What a build knows of the snapshot before it starts."""

    meta: dict[str, Any] | None
    carry: list[str]
    types: dict[str, str]
    algorithm: str


class _Groups:
    def __init__(self) -> None:
        self.inserts: list[tuple[int, Operation, list[str]]] = []
        self.total_batches = 0
        self.planned = 0
        self.deletes = 0


def _groups(plan: Plan, counts: dict[str, int], batch_size: int) -> _Groups:
    """Batches per (operation, old-or-new values) group, as the local engine numbers them."""
    out = _Groups()
    order: list[tuple[str, Operation]] = []
    sizes: dict[tuple[str, Operation], int] = {}
    kinds_of: dict[tuple[str, Operation], list[str]] = {}
    for kind in ("removed", "added", "changed", "unchanged"):
        op = plan.ops.get(kind)
        n = counts.get(kind, 0)
        if op is None or not n:
            continue
        gid = ("old" if kind == "removed" else "new", op)
        if gid not in sizes:
            order.append(gid)
            sizes[gid] = 0
            kinds_of[gid] = []
        sizes[gid] += n
        kinds_of[gid].append(kind)
        if op in (Operation.DELETE, Operation.REMOVE):
            out.deletes += n
    for gid in order:
        out.inserts.append((out.total_batches, gid[1], kinds_of[gid]))
        out.total_batches += -(-sizes[gid] // batch_size)
    out.planned = sum(sizes.values())
    return out
