"""What the database-table destinations share (PostgreSQL, MySQL/MariaDB, DuckDB, Snowflake).

A batch of mapped records is written into one table, per operation, with a result per row:

- ``upsert``: insert or update by the sync's ``match`` columns (``ON CONFLICT``,
  ``ON DUPLICATE KEY UPDATE`` or ``MERGE``, per dialect);
- ``insert``: plain inserts; a row that breaks a constraint is rejected alone;
- ``update``: update by the match columns; a row with no matching row is *not found*
  (skipped by the pipeline: counted, not retried until it changes);
- ``delete``: delete by the match columns; a row already gone counts as deleted.

The parts that do not depend on the database are in ``_table_rows`` (re-exported here): the
rows of a batch with their match values (a null match value rejects the row), rows grouped
by the set of fields they carry (one statement per group), the column types
``create_table`` gives each field, a table's metadata. This module has the messages that
say what to do. :class:`SyncTable` is the whole write path for a
DB-API driver, run in a worker thread: one transaction per batch; when a row spoils it (a
bad value, a constraint), the batch is rolled back and replayed row by row so only the bad
rows are rejected, with the database's own message.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import Field

from undertow.destinations._table_rows import (  # the rows of a batch, re-exported here
    Group as Group,
)
from undertow.destinations._table_rows import Kind as Kind
from undertow.destinations._table_rows import NotFound as NotFound
from undertow.destinations._table_rows import TableInfo as TableInfo
from undertow.destinations._table_rows import arrow_of as arrow_of
from undertow.destinations._table_rows import column_kinds as column_kinds
from undertow.destinations._table_rows import group_rows as group_rows
from undertow.destinations._table_rows import infer_kind as infer_kind
from undertow.destinations._table_rows import json_param as json_param
from undertow.destinations._table_rows import not_found as not_found
from undertow.destinations._table_rows import prepare_rows as prepare_rows
from undertow.destinations._table_rows import result_of as result_of
from undertow.destinations._table_rows import text_param as text_param
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    ConfigT,
    Destination,
    DestinationConfig,
    Operation,
)
from undertow.errors import FatalDeliveryError

TABLE_OPERATIONS = frozenset(
    {Operation.UPSERT, Operation.INSERT, Operation.UPDATE, Operation.DELETE}
)


class TableConfig(DestinationConfig):
    """Keys every table destination takes."""

    table: str = Field(min_length=1)
    create_table: bool = False
    batch_size: int = Field(default=1000, ge=1, le=50_000)


class TableDestination(Destination[ConfigT]):
    """The shared checks of a table destination; dialects supply the SQL and the driver."""

    vendor: ClassVar[str]
    """The database's name in messages (``MariaDB/MySQL``, ``DuckDB``)."""
    needs_unique_index: ClassVar[bool] = True
    """Whether an upsert needs a unique index on exactly the match columns."""

    @property
    def table_config(self) -> TableConfig:
        assert isinstance(self.config, TableConfig)
        return self.config

    @property
    @abstractmethod
    def qualified(self) -> str:
        """The table's name as users write it (``schema.table``)."""

    def where(self, sync: str | None = None) -> str:
        """Who failed, for messages: the sync (when a batch is known), the destination, the table."""
        head = f"sync {sync!r}: " if sync else ""
        return f"{head}{self.name} destination {self.instance_name!r} (table {self.qualified})"

    def fatal(
        self, message: str, *, hint: str | None = None, sync: str | None = None
    ) -> FatalDeliveryError:
        """A fatal error about this table, naming the sync when it is known."""
        return FatalDeliveryError(
            f"{self.where(sync)}: {message}", hint=hint, sync=sync, destination=self.instance_name
        )

    def import_driver(self, module: str, package: str, extra: str, sync: str | None = None) -> Any:
        """Import the driver ``module``, or fail naming this destination and the extra to install."""
        import importlib

        try:
            return importlib.import_module(module)
        except ImportError:
            raise self.fatal(
                f"the {package!r} driver is not installed",
                hint=f'pip install "undertow[{extra}]"',
                sync=sync,
            ) from None

    capabilities: ClassVar[Capabilities] = Capabilities(
        operations=TABLE_OPERATIONS,
        max_batch_size=1000,  # the default `batch_size` (up to 50,000)
        max_concurrency=1,  # one connection, one transaction per batch
        per_record_results=True,
    )

    def capabilities_for(self, object: str | None) -> Capabilities:
        from dataclasses import replace

        return replace(self.capabilities, max_batch_size=self.table_config.batch_size)

    def unique_index_statement(self, match: Sequence[str]) -> str:
        return f"CREATE UNIQUE INDEX ON {self.qualified} ({', '.join(match)});"

    def unique_index_error(
        self, match: Sequence[str], sync: str | None = None
    ) -> FatalDeliveryError:
        return self.fatal(
            "upsert needs a unique index (or primary key) on exactly the "
            f"match column(s) ({', '.join(match)}), and the table has none",
            hint=f"run: {self.unique_index_statement(match)}  (or use mode insert)",
            sync=sync,
        )

    def missing_table(self, sync: str | None = None) -> FatalDeliveryError:
        return self.fatal(
            "the table does not exist",
            hint=self.missing_table_hint(),
            sync=sync,
        )

    def missing_table_hint(self) -> str:
        return "create it, or set `create_table: true` to create it from the first batch"

    def check_table(
        self,
        table: TableInfo | None,
        operation: Operation | None,
        match: Sequence[str],
        sync: str | None = None,
    ) -> None:
        """Raise what stops a sync on this table: missing table, columns, unique index."""
        if table is None:
            if self.table_config.create_table:
                return
            raise self.missing_table(sync)
        absent = [m for m in match if not _has(table.columns, m)]
        if absent:
            raise self.fatal(
                f"match column(s) {', '.join(absent)} are not columns of the table",
                hint=f"columns are: {', '.join(table.columns)}; fix the sync's `match:`",
                sync=sync,
            )
        upsert = operation in (None, Operation.UPSERT)
        if match and upsert and self.needs_unique_index:
            wanted = frozenset(m.lower() for m in match)
            if not any(frozenset(c.lower() for c in s) == wanted for s in table.unique_sets):
                raise self.unique_index_error(match, sync)

    def match_of(self, batch: Batch) -> list[str]:
        operation = batch.operation
        if operation not in TABLE_OPERATIONS:
            raise self.fatal(
                f"operation {operation.value!r} is not supported (upsert, insert, update, "
                "delete are)",
                sync=batch.sync,
            )
        match = list(batch.identifiers)
        if not match and operation is not Operation.INSERT:
            raise self.fatal(
                f"mode {operation.value} needs `match:` naming the key column(s) of the table",
                hint="add e.g. `match: {id: id}` to the sync",
                sync=batch.sync,
            )
        return match


def _has(columns: dict[str, str], name: str) -> bool:
    return name in columns or name.lower() in {c.lower() for c in columns}


class SyncTable(TableDestination[ConfigT]):
    """The write path for a DB-API driver, run in a worker thread (MySQL, DuckDB, Snowflake).

    A dialect implements the connection, the table's metadata, ``CREATE TABLE`` and the
    statement of each operation; this class runs one transaction per batch and replays a
    spoiled batch row by row.
    """

    savepoints: ClassVar[bool] = True
    """Replay inside one transaction with a savepoint per row (else each row on its own)."""

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        super().__init__(config, name=name)
        self._conn: Any = None
        self._table: TableInfo | None = None
        self._lock = asyncio.Lock()

    # -- what a dialect implements ---------------------------------------------------------

    @abstractmethod
    def connect(self, sync: str | None = None) -> Any:
        """A DB-API connection (autocommit off); raise Fatal/RetryableError with a hint,
        naming ``sync`` (the sync of the first batch; None for ``check``)."""

    @abstractmethod
    def load_table(self, conn: Any) -> TableInfo | None:
        """The table's columns and unique indexes, or None when it does not exist."""

    @abstractmethod
    def create_table(self, conn: Any, kinds: dict[str, Kind], match: list[str]) -> None: ...

    def statement(self, operation: Operation, fields: tuple[str, ...], match: list[str]) -> str:
        """One parameterised statement for rows carrying ``fields`` (what the default
        :meth:`apply` runs; a dialect that overrides :meth:`apply` may build its own)."""
        raise NotImplementedError(f"{type(self).__name__} has no statement()")

    @abstractmethod
    def driver_errors(self) -> tuple[type[BaseException], ...]:
        """Every error class of the driver (anything else is a bug and propagates)."""

    @abstractmethod
    def is_row_error(self, exc: BaseException) -> bool:
        """True for an error caused by a row's values (bad value, constraint)."""

    def is_connection_error(self, exc: BaseException) -> bool:
        """True when the connection failed (the batch is retried on a new one)."""
        return False

    def params(self, fields: tuple[str, ...], row: dict[str, Any]) -> list[Any]:
        return [json_param(row[f]) for f in fields]

    def row_message(self, exc: BaseException) -> str:
        return f"{self.vendor} refused the row: {' '.join(str(exc).split())}"

    def failure_hint(self, exc: BaseException) -> str:
        """What to do about a batch that failed with ``exc`` (not a row's fault)."""
        return "the batch was rolled back; fix the table or the sync and run again"

    def run_group(
        self, cur: Any, operation: Operation, group: Group, sql: str, match: list[str]
    ) -> list[int]:
        """Execute one group; return the indexes an update found no row for."""
        params = [self.params(group.fields, row) for row in group.rows]
        if operation is Operation.UPDATE:
            missing: list[int] = []
            for index, values in zip(group.indexes, params, strict=True):
                cur.execute(sql, values)
                if self.updated(cur) == 0:
                    missing.append(index)
            return missing
        cur.executemany(sql, params)
        return []

    def updated(self, cur: Any) -> int:
        """Rows an UPDATE matched (dialects whose rowcount says otherwise override it)."""
        return int(cur.rowcount)

    def begin(self, conn: Any) -> None:
        """Start a transaction (DB-API drivers start one implicitly)."""

    def cursor(self, conn: Any) -> Any:
        return conn.cursor()

    # -- the shared write path -------------------------------------------------------------

    async def open(self) -> None:
        """Nothing yet: the first batch connects, so a refused login names its sync and a
        transient connection failure is retried like any batch."""

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await asyncio.to_thread(_quiet_close, conn)

    async def check(self, *, operation: Operation | None = None, match: Sequence[str] = ()) -> None:
        """Connect, find the table, and with ``match`` check its columns and unique index."""
        async with self._lock:
            if self._conn is None:
                self._conn = await asyncio.to_thread(self.connect)
            try:
                table = await asyncio.to_thread(self._fresh_table, self._conn)
            except self.driver_errors() as exc:
                from undertow.redact import redact

                raise self.fatal(
                    f"cannot read the table's columns: {redact(' '.join(str(exc).split()))}",
                    hint=self.failure_hint(exc),
                ) from None
            self.check_table(table, operation, match)

    def _fresh_table(self, conn: Any) -> TableInfo | None:
        try:
            return self.load_table(conn)
        finally:
            _quiet_rollback(conn)  # end the read's implicit transaction, if any

    async def write_batch(self, batch: Batch) -> BatchResult:
        async with self._lock:
            if self._conn is None:
                self._conn = await asyncio.to_thread(self.connect, batch.sync)
            try:
                return await asyncio.to_thread(self._write, self._conn, batch)
            except self.driver_errors() as exc:
                if not self.is_connection_error(exc):
                    raise
                from undertow.errors import RetryableError
                from undertow.redact import redact

                conn, self._conn = self._conn, None
                await asyncio.to_thread(_quiet_close, conn)
                raise RetryableError(
                    f"{self.where(batch.sync)}: the connection failed during batch "
                    f"{batch.number}: {redact(' '.join(str(exc).split()))}",
                    hint="the batch was rolled back and is retried",
                    sync=batch.sync,
                    destination=self.instance_name,
                ) from None

    def _write(self, conn: Any, batch: Batch) -> BatchResult:
        from undertow.redact import redact

        operation = batch.operation
        match = self.match_of(batch)
        rejected: dict[int, str] = {}
        rows = prepare_rows(batch, match, rejected, self.qualified)
        try:
            if self._table is None:
                self._table = self._fresh_table(conn)
            if self._table is None:
                if not self.table_config.create_table:
                    raise self.missing_table(batch.sync)
                if operation is Operation.DELETE:
                    return BatchResult(rejected=rejected)  # nothing to delete
                self.begin(conn)
                self.create_table(conn, column_kinds([r for r in rows if r], match), match)
                conn.commit()
                self._table = self._fresh_table(conn)
                assert self._table is not None
            self.check_table(self._table, operation, match, batch.sync)
            groups = group_rows(
                operation, rows, match, self._table.columns, rejected, self.qualified
            )
            if groups:
                self.apply(conn, batch, groups, match, rejected)
            return result_of(rejected)
        except self.driver_errors() as exc:
            if self.is_connection_error(exc):
                raise
            _quiet_rollback(conn)
            self._table = None  # the table may have changed under us: look again
            raise self.fatal(
                f"batch {batch.number} ({operation.value}) failed: "
                f"{redact(' '.join(str(exc).split()))}",
                hint=self.failure_hint(exc),
                sync=batch.sync,
            ) from None

    def apply(
        self,
        conn: Any,
        batch: Batch,
        groups: list[Group],
        match: list[str],
        rejected: dict[int, str],
    ) -> None:
        """Write the groups in one transaction, adding to ``rejected`` the rows refused;
        when a row spoils the transaction, replay the batch row by row."""
        operation = batch.operation
        statements = [(g, self.statement(operation, g.fields, match)) for g in groups]
        try:
            self.begin(conn)
            cur = self.cursor(conn)
            for group, sql in statements:
                for index in self.run_group(cur, operation, group, sql, match):
                    rejected[index] = not_found(batch, index, match, self.qualified)
            conn.commit()
            return
        except self.driver_errors() as exc:
            if not self.is_row_error(exc):
                raise
            conn.rollback()
        # one row spoiled the batch: replay row by row to reject only the bad ones
        for group, _ in statements:
            for index in group.indexes:
                rejected.pop(index, None)
        self._replay(conn, batch, statements, match, rejected)

    def _replay(
        self,
        conn: Any,
        batch: Batch,
        statements: list[tuple[Group, str]],
        match: list[str],
        rejected: dict[int, str],
    ) -> None:
        operation = batch.operation
        self.begin(conn)
        cur = self.cursor(conn)
        for group, sql in statements:
            for index, row in zip(group.indexes, group.rows, strict=True):
                single = Group(group.fields, [index], [row])
                if self.savepoints:
                    cur.execute("SAVEPOINT undertow_row")
                try:
                    missing = self.run_group(cur, operation, single, sql, match)
                except self.driver_errors() as exc:
                    if not self.is_row_error(exc):
                        raise
                    if self.savepoints:
                        cur.execute("ROLLBACK TO SAVEPOINT undertow_row")
                    else:
                        conn.rollback()
                        self.begin(conn)
                    rejected[index] = self.row_message(exc)
                    continue
                if missing:
                    rejected[index] = not_found(batch, index, match, self.qualified)
                if not self.savepoints:
                    conn.commit()
                    self.begin(conn)
        conn.commit()


def _quiet_close(conn: Any) -> None:
    with contextlib.suppress(Exception):  # already broken
        conn.close()


def _quiet_rollback(conn: Any) -> None:
    with contextlib.suppress(Exception):  # already broken, or no transaction open
        conn.rollback()
