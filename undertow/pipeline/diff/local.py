"""The ``local`` diff engine: one DuckDB file per sync under the state folder.

The file holds the snapshot (the last accepted values of the mapped columns, per key, with
the fingerprint of the mapping), each live run's plan table and rejected keys, and
``_ut_folded`` (which batches were folded). The build lives in
:mod:`undertow.pipeline.diff.local_build`; this module opens the file, reads the plan in
chunks and folds accepted rows back.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from undertow.destinations.base import Operation
from undertow.errors import StateError
from undertow.pipeline.diff import local_build
from undertow.pipeline.diff.contract import (
    META,
    ChangeStats,
    DiffEngine,
    DiffSpec,
    PlannedChunk,
    lit,
    q,
)
from undertow.pipeline.diff.local_hash import HASH, insert_hash
from undertow.pipeline.frames import to_polars
from undertow.pipeline.plan import Plan
from undertow.sources.base import NativeLoad
from undertow.state.files import private_dir, private_file, sync_file

ADOPTED = "_ut_adopted"
"""The runs whose plan table became the snapshot (:meth:`LocalDiffEngine._adopt`), until
each run ends."""
MARKS = ("_ut_left_at", "_ut_seen")
"""The snapshot's mark columns (``local_build.MARKS_SQL``), not in a plan."""


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
        self.path = sync_file(folder, sync, ".duckdb")
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
                private_dir(folder)
                self.con = duckdb.connect(str(self.path))
                private_file(self.path)
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
        return local_build.build(
            self,
            run_id,
            reader,
            spec,
            plan,
            batch_size,
            only_keys=only_keys,
            watch_keys=watch_keys,
        )

    # -- reading the plan --------------------------------------------------------------------

    def has_plan(self, run_id: str) -> bool:
        return self._exists(f"plan_{run_id}") or self._adopted(run_id)

    def _adopted(self, run_id: str) -> bool:
        """Whether the run's plan table became the snapshot (see :meth:`_adopt`)."""
        return self._exists(ADOPTED) and bool(
            self._one(f"SELECT count(*) FROM {ADOPTED} WHERE run_id = ?", [run_id])
        )

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
        if not self._exists(f"plan_{run_id}"):
            return  # adopted as the snapshot: every batch was delivered and folded
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
            # the plan was written in (batch, seq) order and DuckDB keeps the insertion order
            # (preserve_insertion_order) of a scan without ORDER BY, which would sort every
            # chunk again (half the cost of reading it); a chunk out of order is sorted here
            arrow = self.con.sql(
                f"SELECT {select} FROM {table} "
                f"WHERE _ut_batch BETWEEN {int(todo[0])} AND {int(todo[-1])}"
            ).to_arrow_table()
            frame = to_polars(arrow)
            if not frame.get_column("_ut_seq").is_sorted():
                frame = frame.sort("_ut_seq")
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
        return to_polars(arrow)

    # -- record -----------------------------------------------------------------------------

    def fold(self, run_id: str, spec: DiffSpec, done: set[int], not_accepted: Sequence[int]) -> int:
        """Fold the accepted rows of done batches not folded before; return how many.

        Each batch is folded once (``_ut_folded`` records it in the same transaction), so a
        fold replayed after a crash, or a resumed run's second fold, changes nothing twice.
        Rows *added* by the diff are not in the snapshot, so only the others are deleted
        before the insert. A first sync whose every row was accepted adopts its plan table
        as the snapshot instead of copying it (:meth:`_adopt`).
        """
        if not done or self.dry_run or not self._exists(f"plan_{run_id}"):
            return 0  # no plan left: none, or adopted as the snapshot (all folded then)
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
        snap_types = {
            str(r[0]): str(r[1]) for r in con.execute(f"DESCRIBE {self.snapshot}").fetchall()
        }
        value_cols = [c for c in snap_types if c not in keys and c not in ("_ut_fp", HASH)]
        plan_cols = set(self._columns(run_id))
        # a plan lacking a mapped column (none should) stores NULL: the row counts as changed
        stored_hash = (
            insert_hash(snap_types, spec.values, "p")
            if all(c in plan_cols for c in spec.values)
            else None
        )
        plan_table = self._plan_table(run_id)
        total = int(self._one(f"SELECT count(DISTINCT _ut_batch) FROM {plan_table}") or 0)
        if not before and not bad and len(new) == total and self._can_adopt(run_id, snap_types):
            self._adopt(run_id, snap_types, new, spec.values)
            return int(self._one(f"SELECT count(*) FROM {self.snapshot}"))
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
            + ([stored_hash or f"NULL::UBIGINT AS {HASH}"] if HASH in snap_types else [])
        )
        # the same column order as `select` (a column added by _align_snapshot comes after
        # _ut_fp in the table, so the table's own order would misalign them)
        hashed = [HASH] if HASH in snap_types else []
        insert_cols = ", ".join(q(c) for c in [*keys, *value_cols, "_ut_fp", *hashed])
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

    def _can_adopt(self, run_id: str, snap_types: dict[str, str]) -> bool:
        """Whether the run's plan can become the snapshot as it is: the snapshot is empty
        (a first sync, or one after ``reset``), every planned row is an added one, and the
        plan has every column of the snapshot, of the same type (the marks aside)."""
        if self.snapshot != "main.snapshot" or self._snapshot_rows():
            return False
        table = self._plan_table(run_id)
        plan_types = {r[0]: r[1] for r in self.con.execute(f"DESCRIBE {table}").fetchall()}
        own = (*MARKS, HASH)  # the snapshot's own columns, added by the adoption
        if any(plan_types.get(c) != t for c, t in snap_types.items() if c not in own):
            return False
        return not self._one(f"SELECT count(*) FROM {table} WHERE _ut_kind <> 'added'")

    def _adopt(
        self, run_id: str, snap_types: dict[str, str], new: list[int], values: Sequence[str]
    ) -> None:
        """Fold a whole first sync by making its plan table the snapshot, in one transaction.

        Every row of the plan was accepted, and the empty snapshot had nothing to delete, so
        the plan's rows are exactly the snapshot to be: the plan's own columns (``_ut_seq``,
        ``_ut_key``, old values ...) are dropped, the table renamed, and the marks added
        (NULL), which DuckDB does without rewriting the rows; only the stored hashes
        (``_ut_h``, :func:`~undertow.pipeline.diff.local_hash.insert_hash`) are computed.
        Copying the rows instead wrote a second million-row table. ``ADOPTED`` records it, so :meth:`has_plan` still answers
        True for a run that dies before it ends: the resumed run finds every batch folded.
        """
        con, table = self.con, self._plan_table(run_id)
        plan_cols = self._columns(run_id)
        try:
            con.execute("BEGIN")
            con.execute(f"DROP TABLE {self.snapshot}")
            for col in plan_cols:
                if col not in snap_types:
                    con.execute(f"ALTER TABLE {table} DROP COLUMN {q(col)}")
            con.execute(f"ALTER TABLE {table} RENAME TO snapshot")
            for col in MARKS:
                if col in snap_types:
                    con.execute(f"ALTER TABLE {self.snapshot} ADD COLUMN {col} {snap_types[col]}")
            if HASH in snap_types:
                con.execute(f"ALTER TABLE {self.snapshot} ADD COLUMN {HASH} UBIGINT")
                stored = insert_hash(snap_types, values, self.snapshot)
                if stored is not None:
                    con.execute(f"UPDATE {self.snapshot} SET {HASH} = {stored}")
            con.execute(f"CREATE TABLE IF NOT EXISTS {ADOPTED} (run_id VARCHAR)")
            con.execute(f"INSERT INTO {ADOPTED} VALUES (?)", [run_id])
            con.execute("INSERT INTO _ut_folded SELECT ?, unnest(?::BIGINT[])", [run_id, new])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise

    def discard(self, run_id: str) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS {self._plan_table(run_id)}")
        self.con.execute(f"DROP TABLE IF EXISTS {q('invalid_' + run_id)}")
        if not self.dry_run and self._exists("_ut_folded"):
            self.con.execute("DELETE FROM _ut_folded WHERE run_id = ?", [run_id])
        if not self.dry_run and self._exists(ADOPTED):
            self.con.execute(f"DELETE FROM {ADOPTED} WHERE run_id = ?", [run_id])

    def discard_all_plans(self, keep: str | None = None) -> None:
        for (name,) in self.con.execute(
            "select table_name from duckdb_tables() where database_name = current_database() "
            "and (table_name like 'plan_%' or table_name like 'invalid_%')"
        ).fetchall():
            if keep is None or not name.endswith(keep):
                self.con.execute(f"DROP TABLE IF EXISTS {q(name)}")
        if not self.dry_run and self._exists(ADOPTED):
            self.con.execute(f"DELETE FROM {ADOPTED} WHERE run_id IS DISTINCT FROM ?", [keep])

    def reset(self) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS {self.snapshot}")
        self.discard_all_plans()

    def snapshot_rows(self) -> int:
        if not self._snapshot_exists():
            return 0
        return int(self._one(f"SELECT count(*) FROM {self.snapshot}"))

    def close(self) -> None:
        self.con.close()
