"""The ``warehouse`` diff engine: the snapshot and the diff SQL live in the source.

Per sync, in a scratch schema the user names (default ``undertow``)::

    ut_snap_<sync>        (pk..., match columns..., _ut_hash, _ut_fp, _ut_synced_at)
    ut_left_<sync>,       the snapshot's marks: rows that left the model of a sync that
    ut_held_<sync>        deletes nothing, changes an insert sync counted (warehouse_build.MARKS)
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

A build is one pass over the model (see :func:`undertow.pipeline.diff.warehouse_build.build_change_set`): the hashed
model FULL JOIN the snapshot, writing only the rows that differ.

SQL is written once (PostgreSQL syntax), every identifier quoted by sqlglot, and
transpiled by sqlglot to the source's dialect. The model's own SQL is never re-rendered:
it replaces a sentinel table name after transpiling.

The change set is kept in the warehouse until the run ends (``discard``), so a resumed run
reads the same plan; ``fold`` replays idempotently from the state store's checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import polars as pl
import pyarrow as pa
from sqlglot import exp

from undertow.destinations.base import Operation
from undertow.errors import ModelError, PlanError, PrimaryKeyError, StateError, UndertowError
from undertow.pipeline.diff.contract import ChangeStats, DiffEngine, DiffSpec, PlannedChunk
from undertow.pipeline.diff.warehouse_build import build_change_set
from undertow.pipeline.diff.warehouse_sql import (
    ALL_META,
    HASH_ALGORITHM,
    HASH_ALGORITHMS,
    MD5_LENPREFIX,
    META_COLUMNS,
    MODEL,
    PG_HASH_RECORD,
    WORK_TABLES,
    Runner,
    Shape,
    empty_hash_sql,
    int_types_compatible,
    key_text_sql,
    row_hash_sql,
    slug,
    text_of,
)
from undertow.pipeline.frames import to_polars
from undertow.pipeline.plan import Plan
from undertow.redact import redact
from undertow.sources.base import NativeLoad, Source
from undertow.sources.scratch_sql import TEMPLATE, ident, lit, transpile

__all__ = [
    "HASH_ALGORITHM",
    "HASH_ALGORITHMS",
    "MD5_LENPREFIX",
    "PG_HASH_RECORD",
    "WarehouseDiffEngine",
    "empty_hash_sql",
    "key_text_sql",
    "row_hash_sql",
    "text_of",
]


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
        self.dialect: str = source.sql_dialect or TEMPLATE
        base = slug(sync, 24)
        self._snap = f"ut_snap_{base}"
        self._left = f"ut_left_{base}"
        self._held = f"ut_held_{base}"
        """The snapshot's marks (:data:`~undertow.pipeline.diff.warehouse_build.MARKS`)."""
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
        sentinel = exp.to_identifier(MODEL, quoted=True).sql(self.dialect)
        if sentinel in out:
            cols = ", ".join(
                exp.to_identifier(c, quoted=True).sql(self.dialect) for c in columns or ()
            )
            inner = exp.to_identifier("_ut_src", quoted=True).sql(self.dialect)
            model = f"(SELECT {cols} FROM (\n{self.model_sql}\n) AS {inner})"
            out = out.replace(sentinel, model)
        return out

    @contextmanager
    def _session(self) -> Iterator[Runner]:
        session = self.source.session()
        try:
            yield Runner(self, session)
        finally:
            session.close()

    # -- metadata ---------------------------------------------------------------------------

    def _catalog(self, view: str) -> str:
        """An ``information_schema`` view. BigQuery keeps one per dataset (the scratch
        dataset's lists its tables and columns), not one per project."""
        if self.dialect == "bigquery":
            return f"{ident(self.schema)}.INFORMATION_SCHEMA.{view.upper()}"
        return f"information_schema.{view}"

    def _schema_exists(self, run: Runner) -> bool:
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

    def _ensure_schema(self, run: Runner) -> None:
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

    def _has_table(self, run: Runner, table: str) -> bool:
        if self.dialect == "bigquery" and not self._schema_exists(run):
            return False
        rows = run.rows(
            f"SELECT COUNT(*) FROM {self._catalog('tables')} WHERE table_schema = "
            f"{lit(self.schema)} AND table_name = {lit(table)}"
        )
        return bool(rows[0][0])

    def _meta(self, run: Runner) -> dict[str, Any] | None:
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
        run: Runner,
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
            self.render(f"SELECT * FROM {ident(MODEL)} AS m", columns), model=self.model
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
                return build_change_set(
                    self,
                    run,
                    run_id,
                    spec,
                    plan,
                    batch_size,
                    Shape(meta, carry, types, algorithm),
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

    def _best_algorithm(self, run: Runner) -> str:
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
            if not int_types_compatible(old, new):
                raise PlanError(
                    f"sync {spec.sync!r}: mapped column {column!r} changed type from {old} to "
                    f"{new} since the last run; the warehouse diff engine keeps a hash of the "
                    "accepted values, not the values, so it cannot compare them under the new "
                    "type; nothing was sent",
                    hint=remedy,
                )

    def _widen(self, run: Runner, table: str, columns: Sequence[str]) -> None:
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

    def _drop(self, run: Runner, tables: Iterable[str]) -> None:
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
        frame = to_polars(table)
        upper = {c: c.lower() for c in frame.columns if c.lower() in ALL_META and c != c.lower()}
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
        return [str(r[0]) for r in rows if str(r[0]).lower() not in ALL_META]

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
        select = ", ".join([self._select_meta(META_COLUMNS), *(ident(c) for c in model_cols)])
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
            marks = [self._t(t) for t in (self._left, self._held) if self._has_table(run, t)]
            try:
                run.begin()
                run.execute(f"DELETE FROM {snap} WHERE {self._keys_in(keys, acc_t)}")
                for table in marks:  # an accepted row is marked no longer
                    run.execute(f"DELETE FROM {table} WHERE {self._keys_in(keys, acc_t)}")
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

    def _discard(self, run: Runner, run_id: str) -> None:
        names = [self._plan_name(run_id), self._inv_name(run_id)]
        names += [self._work_name(run_id, w) for w in WORK_TABLES]
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
            self._drop(run, [self._t(t) for t in (self._snap, self._left, self._held)])
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
