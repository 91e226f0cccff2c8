"""diff: compare the model with the snapshot of what the destination last accepted.

The snapshot keeps, per primary key, the last accepted *values* of the columns the sync
maps (not a hash), plus a fingerprint of the mapping that produced the payload. Both sides
are compared at diff time by value, so no library upgrade can change the outcome, and
``plan`` can show old -> new per field.

Engines implement :class:`DiffEngine`. The ``local`` engine keeps one DuckDB file per sync
under the state folder (it holds customer data: the folder is private to its user). A
``warehouse`` engine would run the same contract inside the source.

A run's change set (the *plan table*) is kept until the run ends, so a resumed run finishes
the same plan. The snapshot is folded from the state store's checkpoints, idempotently: the
checkpoints are the truth, the fold can be replayed.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from undertow.destinations.base import Operation
from undertow.errors import PlanError, PrimaryKeyError, StateError
from undertow.pipeline.plan import Plan
from undertow.sources.base import NativeLoad

META = "_ut_"


def q(name: str) -> str:
    """Quote an identifier for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


def lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class DiffSpec:
    """What to compare: the primary key and the columns the sync maps."""

    sync: str
    keys: list[str]
    columns: list[str]
    fingerprint: int

    @property
    def values(self) -> list[str]:
        return [c for c in self.columns if c not in self.keys]


@dataclass
class ChangeStats:
    extracted: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    invalid: int = 0
    planned: int = 0
    total_batches: int = 0
    snapshot: int = 0
    """Rows in the snapshot before this run (what the destination holds from this sync)."""
    deletes: int = 0
    """Planned rows whose operation deletes or removes (``delete``, ``remove``)."""
    settled: list[str] = field(default_factory=list)
    """Of the ``watch_keys`` given to ``build``: keys with nothing to send (their current
    values are already accepted, or the row left both the model and the snapshot)."""

    def as_counts(self) -> dict[str, int]:
        return {
            "extracted": self.extracted,
            "added": self.added,
            "changed": self.changed,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "invalid": self.invalid,
            "planned": self.planned,
        }


@dataclass
class PlannedChunk:
    """Planned rows of consecutive batches: ``frame`` has ``_ut_seq``, ``_ut_batch``,
    ``_ut_key``, ``_ut_op`` and the model columns (old values for removed rows)."""

    frame: pl.DataFrame
    batches: list[tuple[int, Operation]] = field(default_factory=list)


class DiffEngine(ABC):
    """The contract every diff engine keeps (see the module docstring)."""

    name: str
    pulls_model: bool = True
    """True: the run streams the model's rows to ``build``; False (the ``warehouse`` engine):
    ``build`` gets ``reader=None`` and reads the model inside the source."""

    @abstractmethod
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
        """Load the model, diff it against the snapshot and materialise the run's plan.

        ``only_keys`` restricts the plan to those row keys (``undertow retry``);
        ``watch_keys`` are reported in ``ChangeStats.settled`` when nothing is left to send.
        """

    @abstractmethod
    def has_plan(self, run_id: str) -> bool: ...

    @abstractmethod
    def invalid_rows(self, run_id: str, limit: int | None = None) -> list[tuple[str, str]]:
        """(key, reason) of rows rejected for a NULL or duplicate primary key."""

    @abstractmethod
    def chunks(
        self, run_id: str, *, skip: set[int], batches_per_chunk: int = 64
    ) -> Iterator[PlannedChunk]: ...

    @abstractmethod
    def changed_rows(self, run_id: str, limit: int) -> pl.DataFrame:
        """Changed rows with their new columns and ``_ut_old_<col>`` old ones (for plan)."""

    @abstractmethod
    def fold(self, run_id: str, spec: DiffSpec, done: set[int], not_accepted: Sequence[int]) -> int:
        """Fold the accepted rows of the done batches into the snapshot; return how many."""

    @abstractmethod
    def discard(self, run_id: str) -> None: ...

    @abstractmethod
    def discard_all_plans(self, keep: str | None = None) -> None:
        """Drop the change sets of every run of the sync but ``keep`` (left by dead runs)."""

    @abstractmethod
    def reset(self) -> None:
        """Forget the snapshot: the next run is a first run."""

    @abstractmethod
    def snapshot_rows(self) -> int: ...

    @abstractmethod
    def close(self) -> None: ...


class LocalDiffEngine(DiffEngine):
    """One DuckDB file per sync: ``<state_dir>/syncs/<sync>.duckdb``.

    ``dry_run=True`` works in memory against a read-only attach of the file, so ``plan``
    changes no state.
    """

    name = "local"

    def __init__(
        self, state_dir: Path, sync: str, *, dry_run: bool = False, memory_limit: str = "1536MB"
    ) -> None:
        folder = Path(state_dir) / "syncs"
        self.path = folder / (re.sub(r"[^A-Za-z0-9_.-]", "_", sync) + ".duckdb")
        self.dry_run = dry_run
        try:
            if dry_run:
                self.con = duckdb.connect()
                if self.path.exists():
                    self.con.execute(f"ATTACH {lit(str(self.path))} AS snap (READ_ONLY)")
                    self.snapshot = "snap.main.snapshot"
                else:
                    self.snapshot = "main.snapshot"
            else:
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.chmod(folder, 0o700)
                self.con = duckdb.connect(str(self.path))
                os.chmod(self.path, 0o600)
                self.snapshot = "main.snapshot"
        except duckdb.IOException as exc:
            raise StateError(
                f"cannot open the diff file of sync {sync!r} at {self.path}: {exc}",
                hint="another process may be running this sync; wait for it, or check "
                "the state folder's permissions",
            ) from exc
        tmp = folder / "tmp"
        self.memory_limit = memory_limit
        self.con.execute(f"SET memory_limit={lit(memory_limit)}")
        self.con.execute(f"SET temp_directory={lit(str(tmp))}")

    # -- helpers ----------------------------------------------------------------------------

    def _plan_table(self, run_id: str) -> str:
        return q(f"plan_{run_id}")

    def _one(self, sql: str, params: list[Any] | None = None) -> Any:
        """The first value of a one-row query, draining the result so the connection is free."""
        rows = self.con.execute(sql, params or []).fetchall()
        return rows[0][0] if rows else None

    def _exists(self, table: str, catalog: str | None = None) -> bool:
        sql = "select count(*) from duckdb_tables() where table_name = ?"
        params: list[Any] = [table]
        if catalog:
            sql += " and database_name = ?"
            params.append(catalog)
        return bool(self._one(sql, params))

    def _snapshot_rows(self) -> int:
        return (
            int(self._one(f"SELECT count(*) FROM {self.snapshot}"))
            if self._snapshot_exists()
            else 0
        )

    def _snapshot_exists(self) -> bool:
        catalog, _, rest = self.snapshot.partition(".")
        if rest.count(".") == 0:  # "main.snapshot": the connection's own database
            catalog = str(self._one("select current_database()"))
        return self._exists(self.snapshot.rsplit(".", 1)[-1], catalog)

    @staticmethod
    def _key_text(keys: list[str], alias: str) -> str:
        if len(keys) == 1:
            return f"coalesce(CAST({alias}.{q(keys[0])} AS VARCHAR), 'NULL')"
        parts = [
            f"{lit(k + '=')} || coalesce(CAST({alias}.{q(k)} AS VARCHAR), 'NULL')" for k in keys
        ]
        return " || ', ' || ".join(parts)

    # -- build ------------------------------------------------------------------------------

    @staticmethod
    def _row_hash(values: Sequence[str], alias: str) -> str:
        """DuckDB's ``hash()`` of the mapped values: computed on both sides at diff time
        (the snapshot keeps values, so no stored hash can go stale across DuckDB versions)."""
        if not values:
            return "0::UBIGINT"
        return f"hash({', '.join((f'{alias}.' if alias else '') + q(c) for c in values)})"

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
        if reader is None:
            raise TypeError("the local diff engine diffs the model's rows: pass a reader")
        con = self.con
        keys, values = spec.keys, spec.values
        self.discard(run_id)
        # each model row's hash is computed as the model is loaded, in the same pass
        hashed = f"{self._row_hash(values, '')} AS _ut_h"
        values_from: NativeLoad | None = None  # set when only keys and hashes were loaded
        if isinstance(reader, pa.RecordBatchReader):
            names = reader.schema.names
            if any(k not in names for k in keys):
                self._missing_keys(spec, names)
            con.register("_ut_src", reader)
            try:
                con.execute(
                    f"CREATE OR REPLACE TEMP TABLE model AS SELECT *, {hashed} FROM _ut_src"
                )
            finally:
                con.unregister("_ut_src")
            con.execute("CREATE OR REPLACE TEMP TABLE model_shape AS SELECT * FROM model LIMIT 0")
        else:  # a source DuckDB reads natively loads the model itself (no Arrow round trip)
            reader(con, "model_shape", "*", "1 = 0")  # the model's columns and types
            con.execute(f"SET memory_limit={lit(self.memory_limit)}")
            names = [r[0] for r in con.execute("DESCRIBE model_shape").fetchall()]
            if any(k not in names for k in keys):
                self._missing_keys(spec, names)
            if only_keys is None and "unchanged" not in plan.ops and self._snapshot_rows():
                # against a snapshot, a diff plans few rows: load the keys and hashes only,
                # and the values of the planned keys once they are known (step 2 below)
                reader(con, "model", f"{', '.join(q(k) for k in keys)}, {hashed}", "")
                values_from = reader
            else:
                reader(con, "model", f"*, {hashed}", "")
        stats = ChangeStats()
        stats.extracted = int(self._one("select count(*) from model"))
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
                    WHERE {self._key_text(keys, "m")} IN (SELECT k FROM only_keys)"""
            )
            con.execute("DROP TABLE model; ALTER TABLE model_only RENAME TO model")

        if not self._snapshot_exists():
            cols = ", ".join(q(c) for c in keys + values)
            target = "main.snapshot"
            con.execute(
                f"CREATE TABLE {target} AS SELECT {cols}, 0::BIGINT AS _ut_fp FROM model_shape"
            )
            self.snapshot = target
        else:
            self._align_snapshot(values, spec.sync, full=plan.full)
        snap = self.snapshot
        stats.snapshot = int(self._one(f"SELECT count(*) FROM {snap}"))
        only_snap = (
            f"WHERE {self._key_text(keys, 's')} IN (SELECT k FROM only_keys)"
            if only_keys is not None
            else ""
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
                SELECT {self._key_text(keys, "m")} AS _ut_key,
                       'NULL primary key (' || {lit(", ".join(keys))} || ')' AS reason
                FROM model m WHERE {key_null}
                UNION ALL
                SELECT {self._key_text(keys, "d")} AS _ut_key,
                       'duplicate primary key: ' || d._ut_n || ' rows share it' AS reason
                FROM dups d
                """
            )
            # rows (not keys) rejected: NULL-key rows plus every copy of a duplicated key
            dup_rows = self._one("SELECT coalesce(sum(_ut_n), 0) FROM dups")
            stats.invalid = int(dup_rows) + int(null_rows)

        null_rows = self._one(f"select count(*) from model m where {key_null}")

        # 1. kinds, on narrow rows: the key and a hash of the mapped values, computed on both
        #    sides now with the same function (the snapshot keeps values, so no stored hash
        #    can go stale); only the keys to plan are kept

        kinds_wanted = set(plan.ops)
        in_scope = stats.extracted  # the rows the diff covers: fewer with only_keys
        if only_keys is not None:
            in_scope = int(self._one("select count(*) from model"))
        if stats.snapshot == 0:
            find_dups(f"model WHERE {key_not_null}")
            # a first sync: every valid row is added; no join with the empty snapshot
            null_olds = ", ".join(f"NULL AS {q(META + 'old_' + c)}" for c in values)
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE changes AS
                    SELECT 'added' AS _ut_kind, {", ".join(f"m.{q(c)}" for c in keys + values)}
                           {", " + null_olds if null_olds else ""}
                    FROM model m ANTI JOIN dups d ON {on("m", "d")}
                    WHERE {" AND ".join(f"m.{q(k)} IS NOT NULL" for k in keys)}"""
            )
            con.execute("DROP TABLE IF EXISTS dups")
            valid = in_scope - stats.invalid
        else:
            m_keys = ", ".join(f"m.{q(k)} AS {q(META + 'm_' + k)}" for k in keys)
            s_keys = ", ".join(f"s.{q(k)} AS {q(META + 's_' + k)}" for k in keys)
            joined = " AND ".join(f"m.{q(META + 'm_' + k)} = s.{q(META + 's_' + k)}" for k in keys)
            key0 = keys[0]
            kind = f"""CASE WHEN s.{q(META + "s_" + key0)} IS NULL THEN 'added'
                            WHEN m.{q(META + "m_" + key0)} IS NULL THEN 'removed'
                            WHEN m._ut_h <> s._ut_h OR s._ut_fp <> {spec.fingerprint}
                            THEN 'changed' ELSE 'unchanged' END"""
            # every model row with a key meets the snapshot: a duplicated key that met it
            # comes out once per copy (or not at all if no copy changed)
            con.execute(
                f"""
                CREATE OR REPLACE TEMP TABLE kinds AS
                SELECT * FROM (
                    SELECT {kind} AS _ut_kind,
                           {", ".join(f"m.{q(META + 'm_' + k)}" for k in keys)},
                           {", ".join(f"s.{q(META + 's_' + k)}" for k in keys)}
                    FROM (SELECT {m_keys}, m._ut_h FROM model m
                          WHERE {" AND ".join(f"m.{q(k)} IS NOT NULL" for k in keys)}) m
                    FULL OUTER JOIN (SELECT {s_keys}, {self._row_hash(values, "s")} AS _ut_h,
                                            s._ut_fp
                                     FROM {snap} s) s ON {joined}
                ) x
                {"" if "unchanged" in kinds_wanted else "WHERE x._ut_kind <> 'unchanged'"}
                """
            )
            raw = dict(con.execute("SELECT _ut_kind, count(*) FROM kinds GROUP BY 1").fetchall())
            met_rows = in_scope - int(null_rows) - int(raw.get("added", 0))
            m_key_cols = ", ".join(f"{q(META + 'm_' + k)} AS {q(k)}" for k in keys)
            if met_rows == stats.snapshot - int(raw.get("removed", 0)):
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
                f"""SELECT k._ut_kind, {", ".join(f"v.{q(k)}" for k in keys)}{sep}{new_cols}
                           {sep}{old_cols}
                    FROM kinds k JOIN {values_rel} v ON {by_m} JOIN {snap} s ON {by_s}
                    WHERE k._ut_kind IN ('changed', 'unchanged')""",
                f"""SELECT k._ut_kind, {", ".join(f"s.{q(k)}" for k in keys)}
                           {sep}{null_new}{sep}{old_cols}
                    FROM kinds k JOIN {snap} s ON {by_s} WHERE k._ut_kind = 'removed'
                    {only_snap.replace("WHERE", "AND", 1)}""",
            ]
            con.execute("CREATE OR REPLACE TEMP TABLE changes AS " + " UNION ALL ".join(parts))
            con.execute("DROP TABLE IF EXISTS kinds; DROP TABLE IF EXISTS dups")
        counts = dict(con.execute("select _ut_kind, count(*) from changes group by 1").fetchall())
        stats.added = int(counts.get("added", 0))
        stats.changed = int(counts.get("changed", 0))
        stats.removed = int(counts.get("removed", 0))
        stats.unchanged = valid - stats.added - stats.changed

        # plan: operation per kind, batches per (operation, kind-of-values) group
        groups: list[tuple[str, Operation, int]] = []
        for kind in ("removed", "added", "changed", "unchanged"):
            op = plan.ops.get(kind)
            n = int(counts.get(kind, 0))
            if op is not None and n:
                groups.append((kind, op, n))
        # rows of one operation share batches unless some carry old values (removed)
        order: list[tuple[str, Operation]] = []
        sizes: dict[tuple[str, Operation], int] = {}
        for kind, op, n in groups:
            gid = ("old" if kind == "removed" else "new", op)
            if gid not in sizes:
                order.append(gid)
                sizes[gid] = 0
            sizes[gid] += n
        base: dict[tuple[str, Operation], int] = {}
        next_batch = 0
        for gid in order:
            base[gid] = next_batch
            next_batch += -(-sizes[gid] // batch_size)
        stats.total_batches = next_batch
        stats.planned = sum(sizes.values())
        stats.deletes = sum(n for _, op, n in groups if op in (Operation.DELETE, Operation.REMOVE))

        kinds_of: dict[tuple[str, Operation], list[str]] = {gid: [] for gid in order}
        for kind, op, _ in groups:
            kinds_of[("old" if kind == "removed" else "new", op)].append(kind)
        plan_table = self._plan_table(run_id)
        # old values exist only for changed, unchanged and removed rows: a plan of added rows
        # only (a first sync) leaves those columns out, which halves what is written
        olds = [f"{META}old_{c}" for c in values]
        drop_olds = (
            f"EXCLUDE ({', '.join(q(c) for c in olds)})"
            if olds and not (stats.changed or stats.removed or "unchanged" in kinds_wanted)
            else ""
        )
        con.execute(
            f"""CREATE TABLE {plan_table} AS
                SELECT 0::BIGINT AS _ut_seq, 0::BIGINT AS _ut_batch, ''::VARCHAR AS _ut_key,
                       0::BIGINT AS _ut_fp, ''::VARCHAR AS _ut_op, * {drop_olds}
                FROM changes LIMIT 0"""
        )
        for gid in order:
            first = base[gid]
            kinds = ", ".join(lit(k) for k in kinds_of[gid])
            # one INSERT per group: row_number() without a partition or a sort is cheap,
            # and the table ends up in (batch, seq) order for the chunked reads
            con.execute(
                f"""INSERT INTO {plan_table}
                    SELECT {first * batch_size} + rn AS _ut_seq,
                           {first} + rn // {batch_size} AS _ut_batch,
                           {self._key_text(keys, "n")} AS _ut_key,
                           {spec.fingerprint}::BIGINT AS _ut_fp,
                           {lit(str(gid[1]))} AS _ut_op,
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
        con.execute("DROP TABLE IF EXISTS only_keys; DROP TABLE IF EXISTS watch_keys")
        con.execute(
            "DROP TABLE IF EXISTS model; DROP TABLE IF EXISTS valid; "
            "DROP TABLE IF EXISTS model_values; DROP TABLE IF EXISTS model_shape"
        )
        con.execute("DROP TABLE IF EXISTS changes")
        con.execute(f"CREATE OR REPLACE TABLE {q('invalid_' + run_id)} AS SELECT * FROM invalid")
        con.execute("DROP TABLE IF EXISTS invalid")
        con.execute("CHECKPOINT") if not self.dry_run else None
        return stats

    @staticmethod
    def _missing_keys(spec: DiffSpec, names: list[str]) -> None:
        missing = [k for k in spec.keys if k not in names]
        raise PrimaryKeyError(
            f"sync {spec.sync!r}: primary key column(s) {', '.join(map(repr, missing))} "
            f"not in the model's columns ({', '.join(names)})",
            hint="fix `primary_key:` of the model or add the column to its SQL",
        )

    def _align_snapshot(self, values: list[str], sync: str = "", *, full: bool = False) -> None:
        """Add mapped columns the snapshot lacks (the mapping grew): NULL until accepted.
        Cast columns whose type changed to the new type (see :meth:`_check_retype`); with
        ``full`` (every row is resent) a column that cannot be cast starts again as NULL."""
        existing = {r[0]: r[1] for r in self.con.execute(f"DESCRIBE {self.snapshot}").fetchall()}
        model_types = dict(
            (r[0], r[1]) for r in self.con.execute("DESCRIBE model_shape").fetchall()
        )
        retyped = [c for c in values if c in existing and existing[c] != model_types[c]]
        try:
            self._check_retype(retyped, existing, model_types, sync)
        except PlanError:
            if not full:
                raise
            for col in retyped:
                if not self.dry_run:
                    self.con.execute(f"ALTER TABLE {self.snapshot} DROP COLUMN {q(col)}")
                existing.pop(col)
            retyped = []
        for col in values:
            if col not in existing and not self.dry_run:
                self.con.execute(
                    f"ALTER TABLE {self.snapshot} ADD COLUMN {q(col)} {model_types[col]}"
                )
        for col in retyped if not self.dry_run else ():
            self.con.execute(
                f"ALTER TABLE {self.snapshot} ALTER COLUMN {q(col)} TYPE {model_types[col]}"
            )
        if self.dry_run:
            missing = [c for c in values if c not in existing]
            if missing or retyped:
                # compare against NULLs / cast values in memory, leaving the file untouched
                star = "s.*"
                if retyped:
                    casts = ", ".join(
                        f"CAST({q(c)} AS {model_types[c]}) AS {q(c)}" for c in retyped
                    )
                    star = f"s.* REPLACE ({casts})"
                cols = ", ".join([star] + [f"NULL::{model_types[c]} AS {q(c)}" for c in missing])
                self.con.execute(
                    f"CREATE OR REPLACE TEMP TABLE snapshot_view AS SELECT {cols} "
                    f"FROM {self.snapshot} s"
                )
                self.snapshot = "temp.main.snapshot_view"

    def _check_retype(
        self, columns: list[str], old: dict[str, str], new: dict[str, str], sync: str
    ) -> None:
        """A mapped column changed type: its accepted values are compared cast to the new
        type when every one survives the cast and casts back to itself; otherwise the run
        fails before sending (comparing would resend or skip rows at random)."""
        for col in columns:
            c = q(col)
            lossy = self._one(
                f"SELECT count(*) FROM {self.snapshot} WHERE {c} IS NOT NULL AND "
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

    # -- reading the plan --------------------------------------------------------------------

    def has_plan(self, run_id: str) -> bool:
        return self._exists(f"plan_{run_id}")

    def _columns(self, run_id: str) -> list[str]:
        rows = self.con.execute(f"DESCRIBE {self._plan_table(run_id)}").fetchall()
        return [r[0] for r in rows]

    def invalid_rows(self, run_id: str, limit: int | None = None) -> list[tuple[str, str]]:
        table = q("invalid_" + run_id)
        if not self._exists("invalid_" + run_id):
            return []
        sql = f"SELECT _ut_key, reason FROM {table} ORDER BY _ut_key"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [(str(k), str(r)) for k, r in self.con.execute(sql).fetchall()]

    def _select_values(self, run_id: str) -> str:
        cols = self._columns(run_id)
        meta = {"_ut_seq", "_ut_batch", "_ut_key", "_ut_op", "_ut_kind", "_ut_fp"}
        model_cols = [c for c in cols if c not in meta and not c.startswith(META + "old_")]
        select = []
        for c in model_cols:
            old = META + "old_" + c
            if old in cols:
                select.append(
                    f"CASE WHEN _ut_kind = 'removed' THEN {q(old)} ELSE {q(c)} END AS {q(c)}"
                )
            else:
                select.append(q(c))
        return ", ".join(["_ut_seq", "_ut_batch", "_ut_key", "_ut_op", "_ut_kind", *select])

    def chunks(
        self, run_id: str, *, skip: set[int], batches_per_chunk: int = 64
    ) -> Iterator[PlannedChunk]:
        table = self._plan_table(run_id)
        top = self._one(f"SELECT max(_ut_batch) FROM {table}")
        if top is None:
            return
        last = int(top)
        select = self._select_values(run_id)
        start = 0
        while start <= last:
            todo = [
                b for b in range(start, min(start + batches_per_chunk, last + 1)) if b not in skip
            ]
            start += batches_per_chunk
            if not todo:
                continue
            arrow = self.con.sql(
                f"SELECT {select} FROM {table} "
                f"WHERE _ut_batch BETWEEN {int(todo[0])} AND {int(todo[-1])} ORDER BY _ut_seq"
            ).to_arrow_table()
            frame = pl.from_arrow(arrow)
            assert isinstance(frame, pl.DataFrame)
            if skip:
                frame = frame.filter(pl.col("_ut_batch").is_in(todo))
            ops = frame.select("_ut_batch", "_ut_op").unique(
                subset="_ut_batch", maintain_order=True
            )
            yield PlannedChunk(
                frame=frame,
                batches=[(int(b), Operation(o)) for b, o in ops.iter_rows()],
            )

    def changed_rows(self, run_id: str, limit: int) -> pl.DataFrame:
        arrow = self.con.sql(
            f"SELECT * FROM {self._plan_table(run_id)} WHERE _ut_kind = 'changed' "
            f"ORDER BY _ut_seq LIMIT {int(limit)}"
        ).to_arrow_table()
        frame = pl.from_arrow(arrow)
        assert isinstance(frame, pl.DataFrame)
        return frame

    # -- record -----------------------------------------------------------------------------

    def fold(self, run_id: str, spec: DiffSpec, done: set[int], not_accepted: Sequence[int]) -> int:
        """Fold the accepted rows of done batches not folded before; return how many.

        Each batch is folded once (``_ut_folded`` records it in the same transaction), so a
        fold replayed after a crash, or a resumed run's second fold, changes nothing twice.
        Rows *added* by the diff are not in the snapshot, so only the others are deleted
        before the insert.
        """
        if not done or self.dry_run or not self.has_plan(run_id):
            return 0
        con = self.con
        keys = spec.keys
        con.execute("CREATE TABLE IF NOT EXISTS _ut_folded (run_id VARCHAR, batch BIGINT)")
        before = {
            int(b)
            for (b,) in con.execute(
                "SELECT batch FROM _ut_folded WHERE run_id = ?", [run_id]
            ).fetchall()
        }
        new = sorted(set(done) - before)
        if not new:
            return 0
        bad = sorted(set(not_accepted))
        snap_cols = [r[0] for r in con.execute(f"DESCRIBE {self.snapshot}").fetchall()]
        value_cols = [c for c in snap_cols if c not in keys and c != "_ut_fp"]
        plan_cols = set(self._columns(run_id))
        plan_table = self._plan_table(run_id)
        total = int(self._one(f"SELECT count(DISTINCT _ut_batch) FROM {plan_table}") or 0)
        filters = []
        registered = []
        if before or len(new) < total:
            con.register("_ut_done", pa.table({"b": pa.array(new, pa.int64())}))
            registered.append("_ut_done")
            filters.append("SEMI JOIN _ut_done d ON p._ut_batch = d.b")
        if bad:
            con.register("_ut_bad", pa.table({"s": pa.array(bad, pa.int64())}))
            registered.append("_ut_bad")
            filters.append("ANTI JOIN _ut_bad x ON p._ut_seq = x.s")
        accepted = f"{plan_table} p {' '.join(filters)}"
        on = " AND ".join(f"snap.{q(k)} = acc.{q(k)}" for k in keys)
        select = ", ".join(
            [f"p.{q(k)}" for k in keys]
            + [f"p.{q(c)}" if c in plan_cols else f"NULL AS {q(c)}" for c in value_cols]
            + ["p._ut_fp"]
        )
        # the same column order as `select` (a column added by _align_snapshot comes after
        # _ut_fp in the table, so the table's own order would misalign them)
        insert_cols = ", ".join(q(c) for c in [*keys, *value_cols, "_ut_fp"])
        try:
            con.execute("BEGIN")
            con.execute(
                f"DELETE FROM {self.snapshot} AS snap USING "
                f"(SELECT {', '.join(f'p.{q(k)}' for k in keys)} FROM {accepted} "
                f"WHERE p._ut_kind <> 'added') acc WHERE {on}"
            )
            con.execute(
                f"INSERT INTO {self.snapshot} ({insert_cols}) "
                f"SELECT {select} FROM {accepted} WHERE p._ut_kind <> 'removed'"
            )
            folded = int(self._one(f"SELECT count(*) FROM {accepted}"))
            con.execute("INSERT INTO _ut_folded SELECT ?, unnest(?::BIGINT[])", [run_id, new])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        finally:
            for name in registered:
                con.unregister(name)
        return folded

    def discard(self, run_id: str) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS {self._plan_table(run_id)}")
        self.con.execute(f"DROP TABLE IF EXISTS {q('invalid_' + run_id)}")
        if not self.dry_run and self._exists("_ut_folded"):
            self.con.execute("DELETE FROM _ut_folded WHERE run_id = ?", [run_id])

    def discard_all_plans(self, keep: str | None = None) -> None:
        for (name,) in self.con.execute(
            "select table_name from duckdb_tables() where database_name = current_database() "
            "and (table_name like 'plan_%' or table_name like 'invalid_%')"
        ).fetchall():
            if keep is None or not name.endswith(keep):
                self.con.execute(f"DROP TABLE IF EXISTS {q(name)}")

    def reset(self) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS {self.snapshot}")
        self.discard_all_plans()

    def snapshot_rows(self) -> int:
        if not self._snapshot_exists():
            return 0
        return int(self._one(f"SELECT count(*) FROM {self.snapshot}"))

    def close(self) -> None:
        self.con.close()
