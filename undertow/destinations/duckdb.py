"""DuckDB destination: upsert (``INSERT ... ON CONFLICT``), insert, update or delete rows of
a table in a DuckDB file, on the shared table write path (``_table.py``).

- ``upsert`` needs a primary key or unique constraint on exactly the match columns
  (https://duckdb.org/docs/stable/sql/statements/insert#on-conflict-clause); without one the
  batch fails with the statement to fix it. ``create_table: true`` makes the match columns
  the primary key.
- A batch goes in as one Arrow table registered on the connection: one ``INSERT ... SELECT
  ... ON CONFLICT``, ``UPDATE ... FROM`` or ``DELETE ... USING`` per group of rows, each
  value cast to its column's type inside DuckDB (``executemany`` of one ``INSERT`` per row
  ran at about 330 rows/s; see docs/destinations/duckdb.md for the figure now).
- DuckDB has no savepoints: a batch that a row spoils is rolled back and replayed one row
  per transaction, so the good rows of that batch land and the bad ones are rejected with
  DuckDB's message.

One process at a time may write a DuckDB file (https://duckdb.org/docs/stable/connect/
concurrency): a destination file that another process holds open fails the batch as
retryable. ``path`` is relative to the project folder.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from undertow.destinations._table import (
    Group,
    Kind,
    SyncTable,
    TableConfig,
    TableInfo,
    arrow_of,
)
from undertow.destinations.base import Capabilities, DestinationConfig, Operation
from undertow.errors import RetryableError

UPSERT_DOC = "https://duckdb.org/docs/stable/sql/statements/insert#on-conflict-clause"
_TYPES = {
    Kind.BOOLEAN: "BOOLEAN",
    Kind.INTEGER: "BIGINT",
    Kind.FLOAT: "DOUBLE",
    Kind.TEXT: "VARCHAR",
    Kind.JSON: "JSON",
}


class DuckDBConfig(TableConfig):
    type: Literal["duckdb"] = "duckdb"
    path: str = Field(min_length=1)
    """The database file (created if missing); relative to the project folder."""
    schema_: str = Field(default="main", alias="schema")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DuckDBDestination(SyncTable[DuckDBConfig]):
    """Write rows into a table of a DuckDB file."""

    name: ClassVar[str] = "duckdb"
    vendor: ClassVar[str] = "DuckDB"
    savepoints: ClassVar[bool] = False
    docs_url: ClassVar[str | None] = UPSERT_DOC
    capabilities: ClassVar[Capabilities] = replace(
        SyncTable.capabilities, shared_delivery=False
    )  # a file one process writes at a time

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        super().__init__(config, name=name)

    @property
    def path(self) -> Path:
        path = Path(self.config.path)
        return path if path.is_absolute() else Path(self.base_dir) / path

    @property
    def qualified(self) -> str:
        return f"{self.config.schema_}.{self.config.table}"

    def _target(self) -> str:
        return f"{_q(self.config.schema_)}.{_q(self.config.table)}"

    def unique_index_statement(self, match: Any) -> str:
        cols = ", ".join(_q(m) for m in match)
        return f"CREATE UNIQUE INDEX undertow_match ON {self._target()} ({cols});"

    def connect(self, sync: str | None = None) -> Any:
        import duckdb

        if not self.path.parent.is_dir():
            raise self.fatal(
                f"folder {str(self.path.parent)!r} does not exist",
                hint=f"create it (mkdir -p {self.path.parent}) or fix `path`",
                sync=sync,
            )
        try:
            conn = duckdb.connect(str(self.path))
        except duckdb.IOException as exc:
            raise RetryableError(
                f"{self.where(sync)}: cannot open {self.path}: {exc}",
                hint="another process may hold the file open (DuckDB allows one writer)",
                sync=sync,
                destination=self.instance_name,
            ) from None
        return conn

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN TRANSACTION")

    def cursor(self, conn: Any) -> Any:
        return conn  # a DuckDB cursor is another connection, outside this transaction

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        import duckdb

        return (duckdb.Error,)

    def is_row_error(self, exc: BaseException) -> bool:
        import duckdb

        return isinstance(
            exc,
            duckdb.ConstraintException | duckdb.ConversionException | duckdb.InvalidInputException,
        )

    def is_connection_error(self, exc: BaseException) -> bool:
        import duckdb

        return isinstance(exc, duckdb.IOException)

    def load_table(self, conn: Any) -> TableInfo | None:
        rows = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [self.config.schema_, self.config.table],
        ).fetchall()
        if not rows:
            return None
        unique = conn.execute(
            "SELECT constraint_column_names FROM duckdb_constraints()"
            " WHERE schema_name = ? AND table_name = ?"
            " AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')",
            [self.config.schema_, self.config.table],
        ).fetchall()
        indexes = conn.execute(
            "SELECT expressions FROM duckdb_indexes() WHERE schema_name = ? AND table_name = ?"
            " AND is_unique",
            [self.config.schema_, self.config.table],
        ).fetchall()
        sets = [frozenset(cols) for (cols,) in unique]
        for (expressions,) in indexes:
            names = [str(e).strip('"') for e in (expressions or [])]
            if names:
                sets.append(frozenset(names))
        return TableInfo({str(n): str(t) for n, t in rows}, sets)

    def create_table(self, conn: Any, kinds: dict[str, Kind], match: list[str]) -> None:
        columns = [f"{_q(n)} {_TYPES[k]}" for n, k in kinds.items()]
        if match:
            columns.append(f"PRIMARY KEY ({', '.join(_q(m) for m in match)})")
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_q(self.config.schema_)}")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {self._target()} ({', '.join(columns)})")

    def updated(self, cur: Any) -> int:
        row = cur.fetchone()
        return int(row[0]) if row else 0

    def run_group(
        self, cur: Any, operation: Operation, group: Group, sql: str, match: list[str]
    ) -> list[int]:
        """One group as an Arrow table: a single set-based statement, values cast in DuckDB."""
        assert self._table is not None
        columns = {c.lower(): (c, t) for c, t in self._table.columns.items()}
        fields = list(group.fields)
        batch = _arrow(fields, group.rows)
        view = "undertow_batch"
        cur.register(view, batch)
        try:

            def col(f: str) -> str:
                return _q(columns[f.lower()][0])

            def val(f: str) -> str:
                return f"CAST(b.{_q(f)} AS {columns[f.lower()][1]})"

            table = self._target()
            on = " AND ".join(f"t.{col(m)} = {val(m)}" for m in match)
            if operation is Operation.DELETE:
                cur.execute(f"DELETE FROM {table} AS t USING {view} AS b WHERE {on}")
                return []
            rest = [f for f in fields if f not in match]
            if operation is Operation.UPDATE:
                found = cur.execute(
                    f"SELECT b.{_q(_INDEX)} FROM {view} AS b ANTI JOIN {table} AS t ON {on}"
                ).fetchall()
                if rest:
                    sets = ", ".join(f"{col(f)} = {val(f)}" for f in rest)
                    cur.execute(f"UPDATE {table} AS t SET {sets} FROM {view} AS b WHERE {on}")
                return [group.indexes[int(i)] for (i,) in found]
            names = ", ".join(col(f) for f in fields)
            select = f"SELECT {', '.join(val(f) for f in fields)} FROM {view} AS b"
            insert = f"INSERT INTO {table} ({names}) {select}"
            if operation is Operation.UPSERT:
                conflict = ", ".join(col(m) for m in match)
                if rest:
                    updates = ", ".join(f"{col(f)} = excluded.{col(f)}" for f in rest)
                    insert += f" ON CONFLICT ({conflict}) DO UPDATE SET {updates}"
                else:
                    insert += f" ON CONFLICT ({conflict}) DO NOTHING"
            cur.execute(insert)
            return []
        finally:
            with contextlib.suppress(Exception):  # an aborted transaction refuses it: the
                cur.unregister(view)  # next register replaces the view anyway

    def statement(self, operation: Operation, fields: tuple[str, ...], match: list[str]) -> str:
        table = self._target()
        where = " AND ".join(f"{_q(m)} = ?" for m in match)
        if operation is Operation.DELETE:
            return f"DELETE FROM {table} WHERE {where}"
        rest = [f for f in fields if f not in match]
        if operation is Operation.UPDATE:
            sets = ", ".join(f"{_q(f)} = ?" for f in rest) or f"{_q(match[0])} = {_q(match[0])}"
            return f"UPDATE {table} SET {sets} WHERE {where}"
        insert = (
            f"INSERT INTO {table} ({', '.join(_q(f) for f in fields)}) "
            f"VALUES ({', '.join(['?'] * len(fields))})"
        )
        if operation is Operation.INSERT:
            return insert
        conflict = ", ".join(_q(m) for m in match)
        if not rest:
            return f"{insert} ON CONFLICT ({conflict}) DO NOTHING"
        updates = ", ".join(f"{_q(f)} = excluded.{_q(f)}" for f in rest)
        return f"{insert} ON CONFLICT ({conflict}) DO UPDATE SET {updates}"


_INDEX = "__undertow_index"


def _arrow(fields: list[str], rows: list[dict[str, Any]]) -> Any:
    """The rows as an Arrow table plus each row's position in the group."""
    import pyarrow as pa

    table = arrow_of(fields, rows)
    return table.append_column(_INDEX, pa.array(range(len(rows)), pa.int64()))
