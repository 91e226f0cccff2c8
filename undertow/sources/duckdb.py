"""DuckDB as a source: a ``.duckdb`` file, plus any Parquet, CSV or JSON files a model reads.

The database is opened for each call and closed after it, read-only by default, so another
process (dbt, a loader) can write the file between runs. Relative paths, both the database
``path`` and the files a model's SQL reads (``select * from 'data/*.parquet'``), resolve
against the project folder. Rows stream out of DuckDB as Arrow record batches of about
``batch_rows`` rows: memory stays bounded by DuckDB's ``memory_limit`` plus one batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from undertow.errors import ModelError, SourceError
from undertow.sources.base import (
    DEFAULT_BATCH_ROWS,
    INTEGER_FIELD,
    JSON_FIELD,
    AccessProblem,
    NativeLoad,
    Source,
    SourceConfig,
    SqlSession,
    mark_fields,
    missing_driver,
    stream_reader,
)

if TYPE_CHECKING:
    import duckdb

MEMORY = ":memory:"
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PROBE = "PREPARE undertow_probe AS "
_LOCATION = re.compile(r"^LINE (\d+): (\.\.\.)?(.*)$")


SESSION_MEMORY_LIMIT = "1536MB"
"""DuckDB's memory limit for the warehouse diff engine's session, unless ``settings`` sets one."""


class DuckDBConfig(SourceConfig):
    """``type: duckdb``: a database file (or ``:memory:`` to read only files)."""

    type: Literal["duckdb"] = "duckdb"
    path: str = MEMORY
    """The database file; a relative path resolves against the project folder."""
    read_only: bool = True
    """Open the file read-only (the default): models cannot write, other readers can share it."""
    attach: dict[str, str] = Field(default_factory=dict)
    """More databases to ATTACH, by alias: ``{crm: other.duckdb}``; read-only when ``read_only``."""
    settings: dict[str, str | int] = Field(default_factory=dict)
    """DuckDB settings applied with SET on each connection: ``{memory_limit: 2GB, threads: 4}``."""


class DuckDBSource(Source):
    """Runs models on DuckDB; one connection per call, closed when the call (or its reader) ends."""

    name: ClassVar[str] = "duckdb"
    Config: ClassVar[type[SourceConfig]] = DuckDBConfig

    config: DuckDBConfig

    # -- the Source interface ---------------------------------------------------------------

    def check(self) -> None:
        con = self._connect()
        try:
            con.sql("select 1").fetchall()
        except _duckdb().Error as exc:
            raise SourceError(
                f"source {self.instance_name!r} (duckdb {self._db_label()}) cannot run a query: "
                f"{_message(exc)}"
            ) from None
        finally:
            con.close()

    def describe(self, sql: str, *, model: str) -> pa.Schema:
        con = self._connect()
        try:
            relation = self._relation(con, sql, model=model)
            schema: pa.Schema = relation.limit(0).to_arrow_table().schema
            types = dict(zip(relation.columns, map(str, relation.types), strict=True))
            # Arrow carries HUGEINT as decimal128(38, 0) and JSON as a string: say what they are
            wide = [n for n, t in types.items() if t in ("HUGEINT", "UHUGEINT")]
            json = [n for n, t in types.items() if t == "JSON"]
            return mark_fields(mark_fields(schema, wide, INTEGER_FIELD), json, JSON_FIELD)
        except _duckdb().Error as exc:
            raise self._model_error(exc, sql, model=model) from None
        finally:
            con.close()

    def extract(
        self, sql: str, *, model: str, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> pa.RecordBatchReader:
        if batch_rows <= 0:
            raise ValueError(f"batch_rows must be positive, got {batch_rows}")
        con = self._connect()
        try:
            relation = self._relation(con, sql, model=model)
            reader: pa.RecordBatchReader = relation.to_arrow_reader(batch_rows)
        except _duckdb().Error as exc:
            con.close()
            raise self._model_error(exc, sql, model=model) from None
        except BaseException:
            con.close()
            raise
        # Read the first batch now so that a query that fails as it starts raises a ModelError
        # here; an error further into the stream comes out of the reader (see stream_reader).
        batches = self._batches(con, reader, sql, model=model)
        return stream_reader(reader.schema, batches)

    def load_into_duckdb(self, sql: str, *, model: str) -> NativeLoad | None:
        """Run the model inside the diff engine's DuckDB connection: the source's database
        attached read-only (and its ``attach`` aliases, settings and file search path), so
        the rows never go through Arrow between two DuckDB instances."""
        path = self._db_path()
        if "://" in path:
            return None  # e.g. MotherDuck: stream Arrow as usual

        def load(
            con: duckdb.DuckDBPyConnection, table: str, select: str = "*", where: str = ""
        ) -> None:
            ddb = _duckdb()
            before = con.execute("SELECT current_database()").fetchall()[0][0]
            attached: list[str] = []
            try:
                if path != MEMORY:
                    if not os.path.isfile(path):
                        self._connect().close()  # raises the SourceError with its fix
                    con.execute(f"ATTACH {_literal(path)} AS _ut_source (READ_ONLY)")
                    attached.append("_ut_source")
                self._prepare(con, read_only=True)
                attached.extend(self.config.attach)
                if path != MEMORY:
                    con.execute("USE _ut_source")
                self._relation(con, sql, model=model)  # exactly one SELECT, or a ModelError
                body = f"SELECT {select} FROM ({sql}) AS _ut_model"
                if where:
                    body += f" WHERE {where}"
                con.execute(f'CREATE OR REPLACE TEMP TABLE "{table}" AS {body}')
            except ddb.InterruptException:
                raise KeyboardInterrupt from None  # Ctrl-C / SIGTERM during the query
            except RuntimeError as exc:
                if "interrupted" in str(exc).lower():  # DuckDB's own Ctrl-C handling
                    raise KeyboardInterrupt from None
                raise
            except ddb.Error as exc:
                raise self._model_error(exc, sql, model=model) from None
            finally:
                with contextlib.suppress(ddb.Error):
                    con.execute(f'USE "{before}"')
                    con.execute("SET errors_as_json = false")
                for alias in attached:
                    with contextlib.suppress(ddb.Error):
                        con.execute(f"DETACH {alias}")

        return load

    # -- helpers --------------------------------------------------------------------------

    def _batches(
        self,
        con: duckdb.DuckDBPyConnection,
        reader: pa.RecordBatchReader,
        sql: str,
        *,
        model: str,
    ) -> Generator[pa.RecordBatch, None, None]:
        """Yield the reader's batches; close the reader, then the connection, whatever happens."""
        try:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                except (_duckdb().Error, pa.ArrowException, OSError) as exc:
                    raise self._model_error(exc, sql, model=model) from None
                yield batch
        finally:
            reader.close()
            con.close()

    def _db_path(self) -> str:
        if self.config.path == MEMORY:
            return MEMORY
        return self._resolve(self.config.path)

    def _db_label(self) -> str:
        path = self._db_path()
        return "in memory" if path == MEMORY else f"at {path}"

    def _resolve(self, path: str) -> str:
        expanded = os.path.expanduser(path)
        if os.path.isabs(expanded) or "://" in expanded:
            return expanded
        return os.path.abspath(os.path.join(self.base_dir, expanded))

    def _connect(self) -> duckdb.DuckDBPyConnection:
        ddb = _duckdb()
        path = self._db_path()
        if path != MEMORY and "://" not in path and not os.path.isfile(path):
            raise SourceError(
                f"source {self.instance_name!r}: the DuckDB database file {path} does not exist "
                f"(path {self.config.path!r}, relative to the project folder "
                f"{os.path.abspath(self.base_dir)})",
                hint="fix `path` in the source's config, or create the file first (for example "
                "by running the dbt project or the loader that builds it); use path: ':memory:' "
                "to read only Parquet/CSV/JSON files",
            )
        read_only = self.config.read_only and path != MEMORY
        try:
            con: duckdb.DuckDBPyConnection = ddb.connect(path, read_only=read_only)
        except ddb.Error as exc:
            raise SourceError(
                f"source {self.instance_name!r}: cannot open the DuckDB database {path}: "
                f"{_message(exc)}",
                hint="another process may hold a write lock on the file; retry once it is done, "
                "or check the file is a DuckDB database of a compatible version",
            ) from None
        try:
            self._prepare(con, read_only=read_only)
        except BaseException:
            con.close()
            raise
        return con

    def _prepare(self, con: duckdb.DuckDBPyConnection, *, read_only: bool) -> None:
        """Settings, the project folder as the file search path, then the attached databases."""
        ddb = _duckdb()
        settings: dict[str, str | int] = {
            "file_search_path": os.path.abspath(self.base_dir),
            # timestamptz columns come out as timestamp[us, tz=UTC], as from every source.
            "TimeZone": "UTC",
            "errors_as_json": "true",
        }
        settings.update(self.config.settings)
        for key, value in settings.items():
            if not _SETTING_NAME.match(key):
                raise SourceError(
                    f"source {self.instance_name!r}: {key!r} is not a DuckDB setting name",
                    hint="settings keys are names such as memory_limit or threads",
                )
            try:
                con.execute(f"SET {key} = {_literal(value)}")
            except ddb.Error as exc:
                raise SourceError(
                    f"source {self.instance_name!r}: cannot apply setting {key} = {value!r}: "
                    f"{_message(exc)}",
                    hint="see https://duckdb.org/docs/stable/configuration/overview for the "
                    "settings DuckDB knows",
                ) from None
        for alias, target in self.config.attach.items():
            if not _ALIAS.match(alias):
                raise SourceError(
                    f"source {self.instance_name!r}: attach alias {alias!r} is not a plain name",
                    hint="use letters, digits and underscores",
                )
            path = self._resolve(target)
            if "://" not in path and not os.path.isfile(path):
                raise SourceError(
                    f"source {self.instance_name!r}: database {path} to attach as {alias!r} "
                    "does not exist",
                    hint="fix the path under `attach` (relative paths resolve against the "
                    "project folder)",
                )
            options = " (READ_ONLY)" if read_only else ""
            try:
                con.execute(f"ATTACH {_literal(path)} AS {alias}{options}")
            except ddb.Error as exc:
                raise SourceError(
                    f"source {self.instance_name!r}: cannot attach {path} as {alias!r}: "
                    f"{_message(exc)}"
                ) from None

    def _relation(
        self, con: duckdb.DuckDBPyConnection, sql: str, *, model: str
    ) -> duckdb.DuckDBPyRelation:
        """The model's one SELECT statement as a lazy relation; nothing else runs."""
        statements = con.extract_statements(sql)
        if len(statements) != 1 or statements[0].type.name != "SELECT":
            kinds = ", ".join(s.type.name for s in statements) or "none"
            raise ModelError(
                f"a model must be exactly one SELECT statement (found: {kinds})",
                model=model,
                source=self.instance_name,
                hint="remove the other statements; build tables upstream (dbt) and select here",
            )
        relation = con.sql(sql)
        if relation is None:  # pragma: no cover - a SELECT always gives a relation
            raise ModelError(
                "the query returned no relation", model=model, source=self.instance_name
            )
        return relation

    def _model_error(self, exc: BaseException, sql: str, *, model: str) -> ModelError:
        """A ModelError with DuckDB's message and the 1-based character position in ``sql``."""
        message, position = _details(exc, sql)
        if position is None and isinstance(exc, _duckdb().Error):
            # The relation API drops the location; preparing the text again reports it.
            message, position = self._probe(sql, fallback=message)
        return ModelError(message, model=model, source=self.instance_name, position=position)

    def _probe(self, sql: str, *, fallback: str) -> tuple[str, int | None]:
        ddb = _duckdb()
        try:
            con = self._connect()
        except SourceError:
            return fallback, None
        try:
            con.execute(_PROBE + sql)
        except ddb.Error as exc:
            message, position = _details(exc, _PROBE + sql)
            if position is not None:
                position -= len(_PROBE)
                if position < 1:
                    position = None
            return message, position
        finally:
            con.close()
        return fallback, None

    # -- the warehouse diff engine and access checks ------------------------------------

    sql_dialect: ClassVar[str | None] = "duckdb"

    def session(self) -> SqlSession:
        """A read-write connection to the database file (the scratch schema lives in it)."""
        if self._db_path() == MEMORY:
            raise SourceError(
                f"source {self.instance_name!r}: the warehouse diff engine keeps its tables in "
                "the DuckDB database, and this source has none (path: ':memory:')",
                hint="set `path:` to a database file, or use `diff: {engine: local}`",
            )
        update = {"read_only": False}
        writable = DuckDBSource(
            self.config.model_copy(update=update), name=self.instance_name, base_dir=self.base_dir
        )
        con = writable._connect()
        if "memory_limit" not in self.config.settings:
            # the diff works on whole models: bound it (it spills to disk past the limit)
            con.execute(f"SET memory_limit = {_literal(SESSION_MEMORY_LIMIT)}")
        return _DuckDBSession(con)

    def check_access(
        self, relations: Sequence[str], *, scratch_schema: str | None = None
    ) -> list[AccessProblem]:
        """DuckDB has no grants: the file's permissions are the privileges."""
        path = self._db_path()
        if path == MEMORY or "://" in path:
            return []
        problems = []
        if not os.access(path, os.R_OK):
            problems.append(
                AccessProblem(
                    f"source {self.instance_name!r}: the DuckDB file {path} is not readable by "
                    "this user",
                    (f"chmod u+r {shlex.quote(path)}",),
                )
            )
        folder = os.path.dirname(path) or "."
        if scratch_schema is not None and not (
            os.access(path, os.W_OK) and os.access(folder, os.W_OK)
        ):
            problems.append(
                AccessProblem(
                    f"source {self.instance_name!r}: the warehouse diff engine writes its tables "
                    f"into schema {scratch_schema!r} of {path}, which this user cannot write "
                    "(the file and its folder, for the write-ahead log, must be writable)",
                    (f"chmod u+w {shlex.quote(path)} {shlex.quote(folder)}",),
                )
            )
        return problems


class _DuckDBSession:
    dialect = "duckdb"

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def execute(self, sql: str) -> None:
        self.con.execute(sql).fetchall()

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return list(self.con.execute(sql).fetchall())

    def insert_arrow(self, table: str, columns: str, data: pa.Table) -> None:
        """Bulk insert (``sources.base.insert_arrow``): DuckDB reads the Arrow table itself."""
        self.con.register("_ut_rows", data)
        try:
            self.con.execute(f"INSERT INTO {table} ({columns}) SELECT * FROM _ut_rows")
        finally:
            self.con.unregister("_ut_rows")

    def close(self) -> None:
        self.con.close()


def _duckdb() -> Any:
    try:
        import duckdb
    except ImportError:  # pragma: no cover - duckdb is a core dependency
        raise missing_driver("duckdb", "duckdb") from None
    return duckdb


def _literal(value: str | int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _message(exc: BaseException) -> str:
    return _details(exc, "")[0]


def _details(exc: BaseException, sql: str) -> tuple[str, int | None]:
    """DuckDB's message and the 1-based character position of the error in ``sql``.

    With ``errors_as_json`` DuckDB reports ``{"exception_message": ..., "position": "<byte
    offset>"}``; otherwise the message may end with ``LINE n: <text>`` and a caret line.
    """
    text = str(exc)
    kind, sep, rest = text.partition(": ")
    if sep and rest.startswith("{"):
        try:
            data = json.loads(rest)
        except ValueError:
            data = None
        if isinstance(data, dict) and "exception_message" in data:
            message = f"{kind}: {data['exception_message']}"
            raw = data.get("position")
            if raw is None or not sql or not str(raw).isdigit():
                return message, None
            offset = int(str(raw))
            prefix = sql.encode("utf-8")[:offset].decode("utf-8", errors="ignore")
            return message, len(prefix) + 1
    return _from_caret(text, sql)


def _from_caret(text: str, sql: str) -> tuple[str, int | None]:
    """Parse DuckDB's human-readable ``LINE n: ...`` / ``^^^`` context, when there is one."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        found = _LOCATION.match(line)
        if found is None or i + 1 >= len(lines) or "^" not in lines[i + 1]:
            continue
        message = "\n".join(lines[:i]).strip()
        number, truncated, shown = int(found.group(1)), found.group(2), found.group(3)
        source_lines = sql.split("\n")
        if not sql or number > len(source_lines):
            return message, None
        column = lines[i + 1].index("^") - (len(line) - len(shown))
        shown = shown.removesuffix("...")
        start = source_lines[number - 1].find(shown) if truncated else 0
        if start < 0 or column < 0:
            return message, None
        before = sum(len(s) + 1 for s in source_lines[: number - 1])
        return message, before + start + column + 1
    return text, None
