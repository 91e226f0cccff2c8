"""SQLite as a source: a database file read with Python's own ``sqlite3`` (no extra needed).

SQLite values are dynamically typed: a column declared ``INTEGER`` may hold a text value.
The Arrow type of each result column comes from its *declared* type, found by compiling the
model as a temporary view (``PRAGMA table_info`` of the view gives each column's declared
type; nothing is read). Declared types map by SQLite's own affinity rules, plus the common
names SQLite stores as text or numbers (``BOOLEAN``, ``DATE``, ``DATETIME``,
``DECIMAL(p, s)``). A column with no declared type (an expression such as ``count(*)``) is
typed from the storage classes of its first 100 rows, and is a string when they say nothing.
A value that does not fit its column's type fails the extract with a ``ModelError`` naming
the column, never silently coerced.

Why the stdlib and not ADBC: ``adbc-driver-sqlite`` reads 1M rows of 11 columns about 4x
faster (786k rows/s against 185k), but it infers each column's type from the values of its
first batch and fails on a later batch whose values differ (a column NULL in the first 64k
rows, text after), which dynamically typed data does. Reading rows is rarely what limits a
sync from SQLite, the embedded default for small projects.

The file opens read-only (``mode=ro``) for each call and closes when the call (or its
reader) ends; a relative ``path`` resolves against the project folder.
"""

from __future__ import annotations

import os
import re
import sqlite3
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from undertow.errors import ModelError, SourceError
from undertow.redact import redact
from undertow.sources import _access
from undertow.sources.base import (
    DEFAULT_BATCH_ROWS,
    AccessProblem,
    Source,
    SourceConfig,
    stream_reader,
)

_TRAILING = re.compile(r"[\s;]+$")
_DECIMAL = re.compile(r"^\s*(?:DECIMAL|NUMERIC)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)", re.I)
_TOKEN = re.compile(r'(?:near "([^"]*)"|no such (?:column|table|function): (\S+))')
_SAMPLE_ROWS = 100


class SQLiteConfig(SourceConfig):
    """``type: sqlite``: a database file."""

    type: Literal["sqlite"] = "sqlite"
    path: str
    """The database file; a relative path resolves against the project folder."""
    timeout: float = 5.0
    """Seconds to wait for a writer's lock before failing."""


@dataclass(frozen=True)
class _Column:
    name: str
    arrow: pa.DataType
    expression: str
    """What the extraction query selects (text for strings and decimals)."""


class SQLiteSource(Source):
    """Runs models on a SQLite file; one read-only connection per call."""

    name: ClassVar[str] = "sqlite"
    Config: ClassVar[type[SourceConfig]] = SQLiteConfig

    config: SQLiteConfig

    # -- the Source interface ---------------------------------------------------------------

    def check(self) -> None:
        conn = self._connect()
        try:
            conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()
        except sqlite3.Error as exc:
            raise SourceError(
                f"source {self.instance_name!r}: cannot read the SQLite database "
                f"{self._path()}: {exc}",
                hint="check the file is a SQLite database and that this user may read it",
            ) from None
        finally:
            conn.close()

    def describe(self, sql: str, *, model: str) -> pa.Schema:
        conn = self._connect()
        try:
            return _schema(self._columns(conn, sql, model=model))
        finally:
            conn.close()

    def extract(
        self, sql: str, *, model: str, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> pa.RecordBatchReader:
        if batch_rows <= 0:
            raise ValueError(f"batch_rows must be positive, got {batch_rows}")
        conn = self._connect()
        try:
            columns = self._columns(conn, sql, model=model)
            select = ", ".join(f"{c.expression} AS {_quote(c.name)}" for c in columns)
            text = _TRAILING.sub("", sql)
            cursor = conn.execute(f"SELECT {select} FROM (\n{text}\n)")
        except sqlite3.Error as exc:
            conn.close()
            raise self._model_error(exc, sql, model=model) from None
        except BaseException:
            conn.close()
            raise
        batches = self._batches(conn, cursor, columns, model=model, batch_rows=batch_rows)
        return stream_reader(_schema(columns), batches)

    def check_access(
        self, relations: Sequence[str], *, scratch_schema: str | None = None
    ) -> list[AccessProblem]:
        """SQLite has no grants: the file must be there and readable (opened read-only, its
        schema read) and each relation must exist in it; the warehouse diff engine cannot
        run on SQLite, so a scratch schema is a problem too."""
        try:
            self.check()
        except SourceError as exc:
            hint = f"; {exc.hint}" if exc.hint else ""
            problems = [AccessProblem(redact(exc.raw_message + hint))]
        else:
            problems = _access.check_access(SQLiteAccess(self), relations, None)
        if scratch_schema is not None:
            problem = _access.scratch_problem(SQLiteAccess(self), scratch_schema)
            if problem is not None:
                problems.append(problem)
        return problems

    # -- helpers --------------------------------------------------------------------------

    def _path(self) -> str:
        path = os.path.expanduser(self.config.path)
        if not os.path.isabs(path):
            path = os.path.abspath(os.path.join(self.base_dir, path))
        return path

    def _connect(self) -> sqlite3.Connection:
        path = self._path()
        if not os.path.isfile(path):
            raise SourceError(
                f"source {self.instance_name!r}: the SQLite database file {path} does not exist "
                f"(path {self.config.path!r}, relative to the project folder "
                f"{os.path.abspath(self.base_dir)})",
                hint="fix `path` in the source's config, or create the file first",
            )
        try:
            return sqlite3.connect(
                f"file:{quote(path)}?mode=ro",
                uri=True,
                timeout=self.config.timeout,
                check_same_thread=False,  # a reader may be consumed on another thread
            )
        except sqlite3.Error as exc:
            raise SourceError(
                f"source {self.instance_name!r}: cannot open the SQLite database {path}: {exc}",
                hint="check that this user may read the file and its folder",
            ) from None

    def _columns(self, conn: sqlite3.Connection, sql: str, *, model: str) -> list[_Column]:
        """Compile ``sql`` as a temporary view; each column's declared type gives its type."""
        text = _TRAILING.sub("", sql)
        view = f"_ut_{uuid.uuid4().hex}"
        try:
            conn.execute(f"CREATE TEMP VIEW {view} AS\n{text}")
            info = conn.execute(f"PRAGMA temp.table_info({view})").fetchall()
            conn.execute(f"DROP VIEW temp.{view}")
            columns = [_declared(str(row[1]), str(row[2] or "")) for row in info]
            undeclared = [i for i, c in enumerate(columns) if c is None]
            if undeclared:
                sampled = self._sample(conn, text, [str(info[i][1]) for i in undeclared])
                for i, column in zip(undeclared, sampled, strict=True):
                    columns[i] = column
        except sqlite3.Error as exc:
            raise self._model_error(exc, sql, model=model) from None
        return [c for c in columns if c is not None]

    def _sample(self, conn: sqlite3.Connection, text: str, names: list[str]) -> list[_Column]:
        """Types of undeclared columns from the storage classes of their first rows."""
        kinds = ", ".join(
            f"group_concat(DISTINCT typeof({_quote(n)}))" for n in names
        )  # e.g. 'integer,null'
        query = f"SELECT {kinds} FROM (SELECT * FROM (\n{text}\n) LIMIT {_SAMPLE_ROWS})"
        row = conn.execute(query).fetchone() or [None] * len(names)
        out = []
        for name, found in zip(names, row, strict=True):
            classes = set(str(found or "").split(",")) - {"null", ""}
            if classes == {"integer"}:
                out.append(_Column(name, pa.int64(), _quote(name)))
            elif classes and classes <= {"integer", "real"}:
                out.append(_Column(name, pa.float64(), _quote(name)))
            elif classes == {"blob"}:
                out.append(_Column(name, pa.binary(), _quote(name)))
            else:
                out.append(_Column(name, pa.string(), f"CAST({_quote(name)} AS TEXT)"))
        return out

    def _batches(
        self,
        conn: sqlite3.Connection,
        cursor: sqlite3.Cursor,
        columns: list[_Column],
        *,
        model: str,
        batch_rows: int,
    ) -> Generator[pa.RecordBatch, None, None]:
        schema = _schema(columns)
        try:
            while True:
                try:
                    rows = cursor.fetchmany(batch_rows)
                except sqlite3.Error as exc:
                    raise self._model_error(exc, "", model=model) from None
                if not rows:
                    return
                arrays = [
                    self._array(column, [row[i] for row in rows], model=model)
                    for i, column in enumerate(columns)
                ]
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        finally:
            cursor.close()
            conn.close()

    def _array(self, column: _Column, values: list[object], *, model: str) -> pa.Array:
        target = column.arrow
        try:
            if pa.types.is_boolean(target):
                return pc.not_equal(pa.array(values, pa.int64()), 0)
            if (
                pa.types.is_date(target)
                or pa.types.is_timestamp(target)
                or pa.types.is_decimal(target)
            ):
                return pa.array(values, pa.string()).cast(target)
            return pa.array(values, target)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            bad = _first_misfit(values, target)
            raise ModelError(
                f"column {column.name!r} is declared as {target} but holds "
                f"{bad or 'a value that does not fit'}: {exc}",
                model=model,
                source=self.instance_name,
                hint=f"SQLite does not enforce declared types: fix the data, or declare "
                f"the column as TEXT in the model (CAST({column.name} AS TEXT) is a string)",
            ) from None

    def _model_error(self, exc: BaseException, sql: str, *, model: str) -> ModelError:
        message = str(exc)
        if isinstance(exc, sqlite3.ProgrammingError) and "one statement" in message:
            return ModelError(
                "a model must be exactly one SELECT statement",
                model=model,
                source=self.instance_name,
                hint="remove the other statements",
            )
        return ModelError(
            message, model=model, source=self.instance_name, position=_position(message, sql)
        )


def _declared(name: str, declared: str) -> _Column | None:
    """The Arrow type of a declared SQLite type; None when nothing is declared."""
    plain = _quote(name)
    upper = declared.upper()
    if not upper:
        return None
    if "INT" in upper:  # SQLite rule 1: INTEGER affinity
        return _Column(name, pa.int64(), plain)
    if any(word in upper for word in ("CHAR", "CLOB", "TEXT")):  # rule 2: TEXT
        return _Column(name, pa.string(), f"CAST({plain} AS TEXT)")
    if "BLOB" in upper:  # rule 3: BLOB
        return _Column(name, pa.binary(), plain)
    if any(word in upper for word in ("REAL", "FLOA", "DOUB")):  # rule 4: REAL
        return _Column(name, pa.float64(), plain)
    # rule 5: NUMERIC affinity; the names that say more than "a number"
    if "BOOL" in upper:
        return _Column(name, pa.bool_(), plain)
    if "DATETIME" in upper or "TIMESTAMP" in upper:
        return _Column(name, pa.timestamp("us"), f"CAST({plain} AS TEXT)")
    if "DATE" in upper:
        return _Column(name, pa.date32(), f"CAST({plain} AS TEXT)")
    found = _DECIMAL.match(upper)
    if found:
        precision, scale = int(found.group(1)), int(found.group(2) or 0)
        if 1 <= precision <= 38 and scale <= precision:
            return _Column(name, pa.decimal128(precision, scale), f"CAST({plain} AS TEXT)")
    return _Column(name, pa.float64(), plain)


def _first_misfit(values: list[object], target: pa.DataType) -> str | None:
    """A short description of the first value that cannot be ``target``."""
    for value in values:
        if value is None:
            continue
        kind = type(value).__name__
        if pa.types.is_integer(target) or pa.types.is_boolean(target):
            if not isinstance(value, int):
                return f"a {kind} value {str(value)[:40]!r}"
        elif pa.types.is_floating(target):
            if not isinstance(value, int | float):
                return f"a {kind} value {str(value)[:40]!r}"
        elif pa.types.is_binary(target):
            if not isinstance(value, bytes | str):
                return f"a {kind} value"
        else:
            try:
                pa.array([value], pa.string()).cast(target)
            except (pa.ArrowException, TypeError):
                return f"the value {str(value)[:40]!r}"
    return None


def _schema(columns: list[_Column]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow) for c in columns])


def _position(message: str, sql: str) -> int | None:
    """SQLite names the token it stopped at (``near "frm"``, ``no such column: x``)."""
    found = _TOKEN.search(message)
    if not found or not sql:
        return None
    token = found.group(1) if found.group(1) is not None else found.group(2)
    if not token:
        return len(_TRAILING.sub("", sql)) + 1  # near "": the statement ended too soon
    name = token.rsplit(".", 1)[-1] if found.group(2) else token
    hit = re.search(r"(?<![\w$])" + re.escape(name) + r"(?![\w$])", sql, re.I)
    if hit is None:
        hit = re.search(re.escape(name), sql, re.I)
    return hit.start() + 1 if hit else None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SQLiteAccess(_access.WarehouseAccess):
    """The read probe of :mod:`undertow.sources._access` without grants: the file's own
    permissions, checked by opening it, are the only privilege."""

    warehouse = "SQLite"
    source: SQLiteSource

    def find_principal(self) -> _access.Principal:
        return _access.Principal(grantee="", who="this user")

    def refusal(self, shown: str, said: str) -> str:
        if said.startswith("no such table"):
            return f"table or view {shown} does not exist in {self.source._path()} ({said})"
        return f"cannot read {shown} from {self.source._path()}: {said}"

    def read_grants(self, qualified: tuple[str, ...]) -> tuple[str, ...]:
        return ()

    def scratch_grants(self, schema: str) -> tuple[str, ...]:
        return ()
