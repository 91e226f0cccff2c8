"""What the database-table destinations share (PostgreSQL, MySQL/MariaDB, DuckDB, Snowflake).

A batch of mapped records is written into one table, per operation, with a result per row:

- ``upsert``: insert or update by the sync's ``match`` columns (``ON CONFLICT``,
  ``ON DUPLICATE KEY UPDATE`` or ``MERGE``, per dialect);
- ``insert``: plain inserts; a row that breaks a constraint is rejected alone;
- ``update``: update by the match columns; a row with no matching row is *not found*
  (skipped by the pipeline: counted, not retried until it changes);
- ``delete``: delete by the match columns; a row already gone counts as deleted.

This module holds the parts that do not depend on the database: the rows of a batch with
their match values (a null match value rejects the row), rows grouped by the set of fields
they carry (one statement per group), the column types ``create_table`` gives each field,
and the messages that say what to do. :class:`SyncTable` is the whole write path for a
DB-API driver, run in a worker thread: one transaction per batch; when a row spoils it (a
bad value, a constraint), the batch is rolled back and replayed row by row so only the bad
rows are rejected, with the database's own message.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import orjson
from pydantic import Field

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


class Kind(StrEnum):
    """The logical type ``create_table`` gives a field (each dialect names it)."""

    BOOLEAN = "boolean"
    INTEGER = "integer"
    FLOAT = "float"
    TEXT = "text"
    JSON = "json"


def infer_kind(values: Sequence[Any]) -> Kind:
    """From a field's JSON values in the batch: booleans, integers, numbers, strings, objects
    and lists; a mix of strings and other scalars, or only nulls, is text."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return Kind.TEXT
    if kinds <= {dict, list}:
        return Kind.JSON
    if kinds == {bool}:
        return Kind.BOOLEAN
    if kinds == {int}:
        return Kind.INTEGER
    if kinds <= {int, float}:
        return Kind.FLOAT
    if kinds & {dict, list}:
        return Kind.JSON
    return Kind.TEXT


def column_kinds(rows: Sequence[dict[str, Any]], match: Sequence[str]) -> dict[str, Kind]:
    """Each field of the rows (in first-seen order, match fields included) and its kind."""
    values: dict[str, list[Any]] = {}
    for row in rows:
        for name, value in row.items():
            values.setdefault(name, []).append(value)
    for name in match:
        values.setdefault(name, [])
    return {name: infer_kind(vals) for name, vals in values.items()}


def text_param(value: Any) -> str | None:
    """A value as text (the database converts it to the column's type); JSON for objects."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def json_param(value: Any) -> Any:
    """Scalars as they are, objects and lists as JSON text (drivers with typed parameters)."""
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


@dataclass
class TableInfo:
    columns: dict[str, str]
    """Column name -> its type, in table order."""
    unique_sets: list[frozenset[str]]
    """Column sets of the plain unique indexes (and the primary key)."""
    privileges: dict[str, bool] | None = None
    """INSERT/UPDATE/DELETE -> granted (None: not checked by this dialect)."""


@dataclass
class Group:
    """Rows carrying the same fields: one statement, one parameter list each."""

    fields: tuple[str, ...]
    indexes: list[int]
    rows: list[dict[str, Any]]


def prepare_rows(
    batch: Batch, match: list[str], rejected: dict[int, str], qualified: str
) -> list[dict[str, Any] | None]:
    """Each record with its match values folded in; None for a record rejected here."""
    operation = batch.operation
    records: list[dict[str, Any]] = (
        [{} for _ in batch.payloads] if operation is Operation.DELETE else batch.records()
    )
    rows: list[dict[str, Any] | None] = []
    for index, record in enumerate(records):
        row = dict(record)
        for name in match:
            row[name] = batch.identifiers[name][index]
        if operation is not Operation.INSERT:
            nulls = [f for f in match if row[f] is None]
            if nulls:
                rejected[index] = (
                    f"match field(s) {', '.join(nulls)} are null, so the row cannot be "
                    f"matched in table {qualified}"
                )
                rows.append(None)
                continue
        rows.append(row)
    return rows


def group_rows(
    operation: Operation,
    rows: list[dict[str, Any] | None],
    match: list[str],
    columns: dict[str, str],
    rejected: dict[int, str],
    qualified: str,
) -> list[Group]:
    """Group rows by their fields; a field that is not a column rejects its row."""
    groups: dict[tuple[str, ...], Group] = {}
    known = {c.lower(): c for c in columns}
    for index, row in enumerate(rows):
        if row is None:
            continue
        if operation is Operation.DELETE:
            fields: tuple[str, ...] = tuple(match)
        else:
            unknown = [f for f in row if f not in columns and f.lower() not in known]
            if unknown:
                rejected[index] = (
                    f"field(s) {', '.join(unknown)} are not columns of table {qualified}; add "
                    "the column(s) or drop the field(s) from the sync's mappings"
                )
                continue
            if operation is Operation.UPDATE:
                fields = tuple(f for f in row if f not in match) + tuple(match)
            else:
                fields = tuple(row)
        group = groups.get(fields)
        if group is None:
            group = groups[fields] = Group(fields, [], [])
        group.indexes.append(index)
        group.rows.append(row)
    return list(groups.values())


class NotFound(str):
    """The reason of an update that matched no row: :func:`result_of` files it under
    ``BatchResult.not_found``, which the pipeline counts as *skipped* in update mode."""


def not_found(batch: Batch, index: int, match: Sequence[str], qualified: str) -> str:
    key = batch.keys[index] if index < len(batch.keys) else "?"
    return NotFound(
        f"no row with key {key} (matched on {', '.join(match)}) in table {qualified}; "
        "update does not create rows (use mode upsert for that)"
    )


def result_of(refused: dict[int, str]) -> BatchResult:
    """A table write's result: the rows an update found no row for are ``not_found``
    (skipped, see ``pipeline.record.settle_not_found``), the rest ``rejected``."""
    missing = {i: str(r) for i, r in refused.items() if isinstance(r, NotFound)}
    return BatchResult(
        rejected={i: r for i, r in refused.items() if i not in missing}, not_found=missing
    )


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


def arrow_of(fields: list[str], rows: list[dict[str, Any]]) -> Any:
    """The rows as an Arrow table, a column per field; objects and lists as JSON text.

    A column whose values Arrow cannot type as one (a mix of numbers and text, an integer
    beyond 64 bits) goes as text; a database casts it to its column's type or rejects the row.
    """
    import pyarrow as pa

    arrays = []
    for name in fields:
        values = [json_param(row[name]) for row in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            arrays.append(pa.array([text_param(v) for v in values], pa.string()))
    return pa.Table.from_arrays(arrays, names=fields)
