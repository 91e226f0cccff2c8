"""What a source is: a warehouse that compiles a model's SQL and streams its rows as Arrow.

A source module subclasses :class:`Source`, sets ``name`` and a pydantic ``Config``, and
implements :meth:`check`, :meth:`describe` and :meth:`extract`. Drivers are imported lazily;
a missing one raises :func:`missing_driver`, which prints the exact ``pip install``.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from undertow.errors import SourceError
from undertow.sources.statement import check_one_query, tokenizer_dialect

DEFAULT_BATCH_ROWS = 65_536

NativeLoad = Callable[[Any, str, str, str], None]
"""``load(con, table, select, where)``: create temp table ``table`` in DuckDB connection
``con`` as ``SELECT <select> FROM (<model>) WHERE <where>`` (``where`` ``""``: every row);
``where`` may read the connection's temp tables (see :meth:`Source.load_into_duckdb`)."""


INTEGER_FIELD = b"undertow.integer"
"""Arrow field metadata key: the (decimal) field holds integers wider than 64 bits, which
Arrow has no type for (DuckDB's HUGEINT is ``decimal128(38, 0)``); they are sent as JSON
numbers, where other decimals are sent as exact text."""


JSON_FIELD = b"undertow.json"
"""Arrow field metadata key: the (string) field holds JSON text of a JSON-typed column
(PostgreSQL ``json``/``jsonb``, DuckDB ``JSON``, MySQL ``JSON``); mapped directly it is sent
as the JSON value, as ``json:`` does."""


def mark_fields(schema: pa.Schema, names: Sequence[str], key: bytes) -> pa.Schema:
    """``schema`` with the fields ``names`` marked with ``key`` (:data:`INTEGER_FIELD`,
    :data:`JSON_FIELD`); a source's ``describe`` marks them, the map stage reads them."""
    for name in names:
        i = schema.get_field_index(name)
        field = schema.field(i)
        schema = schema.set(i, field.with_metadata({**(field.metadata or {}), key: b"1"}))
    return schema


class SourceConfig(BaseModel):
    """Base of every source's config model: ``type`` selects the connector."""

    model_config = ConfigDict(extra="forbid")
    type: str
    diff: dict[str, Any] | None = None
    """The diff engine of the syncs reading this source unless a sync sets its own:
    ``{engine: local|warehouse, schema: undertow}`` (a ``DiffConfig``)."""
    sync_logs: dict[str, Any] | None = None
    """Sync logs of the syncs reading this source unless a sync sets its own:
    ``{schema: undertow_audit}`` (a ``SyncLogsConfig``, see docs/sync-logs.md)."""

    @field_validator("sync_logs")
    @classmethod
    def _sync_logs(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        from undertow.config.models import SyncLogsConfig

        try:
            return SyncLogsConfig.model_validate(value).model_dump(by_alias=True)
        except ValidationError as exc:
            errors = "; ".join(str(e["msg"]) for e in exc.errors())
            raise ValueError(f"sync_logs: {errors} (e.g. `sync_logs: {{schema: audit}}`)") from None

    @field_validator("diff")
    @classmethod
    def _diff(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        from undertow.config.models import DiffConfig  # config imports sources: lazily

        try:
            return DiffConfig.model_validate(value).model_dump(by_alias=True)
        except ValidationError as exc:
            errors = "; ".join(str(e["msg"]) for e in exc.errors())
            raise ValueError(f"diff: {errors} (e.g. `diff: {{engine: warehouse}}`)") from None


class SqlSession(Protocol):
    """A read-write connection to the warehouse, for the ``warehouse`` diff engine.

    Statements run in autocommit unless the caller sends ``BEGIN`` ... ``COMMIT``.
    """

    dialect: str
    """The sqlglot dialect the SQL sent must be written in."""

    def execute(self, sql: str) -> None: ...
    def rows(self, sql: str) -> list[tuple[Any, ...]]: ...
    def close(self) -> None: ...


class CursorSession:
    """A :class:`SqlSession` over a DB-API connection: one cursor per statement.

    ``placeholder`` (``%s`` for PyMySQL and the Snowflake connector) enables the bulk insert
    of :func:`insert_arrow` through ``executemany``, which both drivers send as multi-row
    INSERTs with values escaped by the driver."""

    def __init__(self, conn: Any, dialect: str, *, placeholder: str | None = None) -> None:
        self.conn = conn
        self.dialect = dialect
        self.placeholder = placeholder

    def execute(self, sql: str) -> None:
        cur = self.conn.cursor()
        try:
            cur.execute(sql)
        finally:
            cur.close()

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        cur = self.conn.cursor()
        try:
            cur.execute(sql)
            return [tuple(r) for r in cur.fetchall()]
        finally:
            cur.close()

    def close(self) -> None:
        self.conn.close()

    def insert_many(self, table: str, columns: str, data: pa.Table) -> bool:
        """``executemany`` of the rows when the driver takes parameters; False otherwise."""
        if self.placeholder is None:
            return False
        marks = ", ".join([self.placeholder] * data.num_columns)
        cur = self.conn.cursor()
        try:
            for batch in data.to_batches(max_chunksize=5000):
                rows = [tuple(r.values()) for r in batch.to_pylist()]
                cur.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
        finally:
            cur.close()
        return True


_BACKSLASH_DIALECTS = frozenset({"mysql", "snowflake", "clickhouse", "bigquery", "databricks"})
"""Dialects whose string literals treat ``\\`` as an escape character."""


def sql_value(value: Any, dialect: str) -> str:
    """A Python value (None, bool, int, float, str, datetime) as a SQL literal of ``dialect``."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if hasattr(value, "isoformat"):
        text = value.isoformat(sep=" ") if hasattr(value, "hour") else value.isoformat()
        return f"CAST('{text}' AS TIMESTAMP)"
    text = str(value)
    if dialect in _BACKSLASH_DIALECTS:
        text = (
            text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
        )
        return f"'{text}'"
    return "'" + text.replace("'", "''") + "'"


def insert_arrow(
    session: SqlSession, table: str, columns: list[str], data: pa.Table, *, chunk: int = 1000
) -> None:
    """Insert every row of ``data`` into ``table`` (quoted, qualified) in bulk.

    The session's own bulk path when it has one (DuckDB reads Arrow, PostgreSQL ``COPY``,
    ``executemany`` on drivers that take parameters); else multi-row ``INSERT ... VALUES``
    of ``chunk`` rows each, the values written as literals of the session's dialect.
    """
    from sqlglot import exp

    if data.num_rows == 0:
        return
    names = ", ".join(exp.to_identifier(c, quoted=True).sql(session.dialect) for c in columns)
    fast = getattr(session, "insert_arrow", None)
    if fast is not None:
        fast(table, names, data)
        return
    many = getattr(session, "insert_many", None)
    if many is not None and many(table, names, data):
        return
    for batch in data.to_batches(max_chunksize=chunk):
        rows = batch.to_pylist()
        values = ", ".join(
            "(" + ", ".join(sql_value(v, session.dialect) for v in row.values()) + ")"
            for row in rows
        )
        session.execute(f"INSERT INTO {table} ({names}) VALUES {values}")


@dataclass(frozen=True)
class AccessProblem:
    """A privilege the source's user lacks: what it blocks, and the statements that grant it."""

    message: str
    grants: tuple[str, ...] = ()


_CHECKED = ("describe", "extract", "load_into_duckdb")
"""The methods that send a model's SQL: every source class gets the one-query check."""


def _one_query_first(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def checked(self: Source, sql: str, *args: Any, model: str, **kwargs: Any) -> Any:
        check_one_query(
            sql,
            dialect=tokenizer_dialect(self.sql_dialect, self.name),
            model=model,
            source=self.instance_name,
        )
        return method(self, sql, *args, model=model, **kwargs)

    checked.__undertow_checked__ = True  # type: ignore[attr-defined]
    return checked


class Source(ABC):
    """Base of every source connector. Not thread-safe: one instance per run.

    Every subclass's ``describe``, ``extract`` and ``load_into_duckdb`` refuse SQL that is
    not exactly one query before it is sent (:mod:`undertow.sources.statement`).
    """

    name: ClassVar[str]
    Config: ClassVar[type[SourceConfig]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for attr in _CHECKED:
            method = cls.__dict__.get(attr)
            if callable(method) and not getattr(method, "__undertow_checked__", False):
                setattr(cls, attr, _one_query_first(method))

    def __init__(self, config: SourceConfig, *, name: str, base_dir: str = ".") -> None:
        if not isinstance(config, self.Config):  # a generic SourceConfig: validate as ours
            config = self.Config.model_validate(config.model_dump(by_alias=True))
        self.config = config
        self.instance_name = name
        self.base_dir = base_dir

    @abstractmethod
    def check(self) -> None:
        """Connect and run a trivial query; raise SourceError saying how to fix it."""

    @abstractmethod
    def describe(self, sql: str, *, model: str) -> pa.Schema:
        """Compile ``sql`` without reading its rows; raise ModelError with the position."""

    @abstractmethod
    def extract(
        self, sql: str, *, model: str, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> pa.RecordBatchReader:
        """Run ``sql`` and stream its rows; memory stays bounded by ``batch_rows``."""

    def quote_identifier(self, name: str) -> str:
        """``name`` as a quoted identifier of this source's SQL (standard double quotes)."""
        return '"' + name.replace('"', '""') + '"'

    def load_into_duckdb(self, sql: str, *, model: str) -> NativeLoad | None:
        """A way to load the model straight into a DuckDB connection, or None.

        Sources DuckDB reads natively (DuckDB files, Parquet, CSV) return one, and the local
        diff engine then skips the Arrow round trip between two DuckDB instances; the
        others return None and stream Arrow through :meth:`extract`.
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    sql_dialect: ClassVar[str | None] = None
    """The sqlglot dialect of the warehouse; None: the ``warehouse`` diff engine cannot run."""

    def session(self) -> SqlSession:
        """A read-write session for the ``warehouse`` diff engine (scratch schema only)."""
        raise SourceError(
            f"source {self.instance_name!r} (type {self.name}) cannot run the warehouse diff "
            "engine",
            hint="use `diff: {engine: local}` for the syncs of this source",
        )

    def check_access(
        self, relations: Sequence[str], *, scratch_schema: str | None = None
    ) -> list[AccessProblem]:
        """Privileges missing to read ``relations`` and (``scratch_schema``: for the
        ``warehouse`` diff engine) to create and write tables in that schema only."""
        return []


for _name in _CHECKED:  # the base's own (a source that keeps load_into_duckdb's None)
    setattr(Source, _name, _one_query_first(getattr(Source, _name)))


def missing_driver(package: str, extra: str) -> SourceError:
    """The error for a driver that is not installed, with the exact command to fix it."""
    return SourceError(
        f"the {package!r} driver is not installed",
        hint=f'pip install "undertow[{extra}]"',
    )


def stream_reader(schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> pa.RecordBatchReader:
    """Read the first batch now, so a query that fails as it starts raises here (with the
    source's own error), then stream the rest; ``close()`` closes ``batches``."""
    try:
        first = next(batches, None)
    except BaseException:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
        raise
    return closing_reader(schema, first, batches)


def closing_reader(
    schema: pa.Schema, first: pa.RecordBatch | None, rest: Iterator[pa.RecordBatch]
) -> pa.RecordBatchReader:
    """A reader over ``first`` then ``rest`` whose ``close()`` also closes ``rest``.

    ``from_batches`` alone ignores ``close()``; going through the Arrow C stream interface
    makes ``close()`` release the iterator, which runs its ``finally`` (closing the
    connection). The price: an exception raised while reading arrives as ``pa.ArrowInvalid``
    carrying the original message.
    """

    def chain() -> Iterator[pa.RecordBatch]:
        try:
            if first is not None:
                yield first
                yield from rest
        finally:
            close = getattr(rest, "close", None)
            if close is not None:
                close()

    return pa.RecordBatchReader.from_stream(pa.RecordBatchReader.from_batches(schema, chain()))
