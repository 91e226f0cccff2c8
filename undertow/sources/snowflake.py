"""Snowflake as a source (``type: snowflake``), with snowflake-connector-python.

``describe()`` sends the model as a *describe-only* request (``cursor.describe``): Snowflake
compiles it and returns the result's column metadata without running it (no warehouse is
resumed for it). ``extract()`` runs the model and streams the result chunks Snowflake
prepared, as Arrow (``cursor.fetch_arrow_batches``): the connector downloads one chunk at a
time, so memory stays bounded by a chunk (tens of MB) plus one batch of ``batch_rows``.
Each batch is cast to the schema derived from the column metadata (see docs/sources/snowflake.md).

Every session sets ``TIMEZONE = 'UTC'`` (LTZ timestamps come out in UTC) and
``QUOTED_IDENTIFIERS_IGNORE_CASE = FALSE`` (the warehouse diff engine quotes every
identifier and relies on quoted names keeping their case).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal

import pyarrow as pa

from undertow.errors import ModelError, SourceError
from undertow.sources import _access, _cloud
from undertow.sources import _snowflake_login as _login
from undertow.sources._snowflake_login import SnowflakeConnection
from undertow.sources.base import (
    DEFAULT_BATCH_ROWS,
    AccessProblem,
    CursorSession,
    Source,
    SourceConfig,
    SqlSession,
    stream_reader,
)

DIALECT = "snowflake"
_AT = re.compile(r"line (\d+) at position (\d+)")

# snowflake.connector.constants.FIELD_TYPES: type_code -> name
_FIXED, _REAL, _TEXT, _DATE, _TIMESTAMP, _VARIANT = 0, 1, 2, 3, 4, 5
_TIMESTAMP_LTZ, _TIMESTAMP_TZ, _TIMESTAMP_NTZ, _OBJECT, _ARRAY, _BINARY = 6, 7, 8, 9, 10, 11
_TIME, _BOOLEAN, _GEOGRAPHY, _GEOMETRY, _VECTOR = 12, 13, 14, 15, 16


class SnowflakeConfig(SnowflakeConnection, SourceConfig):
    """``type: snowflake``: the connection keys the Snowflake destination shares
    (:class:`~undertow.sources._snowflake_login.SnowflakeConnection`)."""

    type: Literal["snowflake"] = "snowflake"


class SnowflakeSource(Source):
    """Runs models on Snowflake; one connection per call, closed when the call ends."""

    name: ClassVar[str] = "snowflake"
    Config: ClassVar[type[SourceConfig]] = SnowflakeConfig
    sql_dialect: ClassVar[str | None] = DIALECT

    config: SnowflakeConfig

    def __init__(self, config: SourceConfig, *, name: str, base_dir: str = ".") -> None:
        super().__init__(config, name=name, base_dir=base_dir)
        self.config.register_secrets()

    def quote_identifier(self, name: str) -> str:
        return _cloud.quote(name, DIALECT)

    # -- the Source interface ---------------------------------------------------------------

    def check(self) -> None:
        sf = _snowflake()
        conn = self._connect()
        try:
            cur = conn.cursor()
            try:
                cur.execute("SELECT 1").fetchall()
            except sf.errors.Error as exc:
                raise SourceError(
                    f"source {self.instance_name!r} (snowflake account {self.config.account}) "
                    f"cannot run a query: {_cloud.first_line(exc)}"
                ) from None
            try:
                role, warehouse = cur.execute(
                    "SELECT CURRENT_ROLE(), CURRENT_WAREHOUSE()"
                ).fetchone()
            except sf.errors.ProgrammingError:
                return  # an emulator without these functions: nothing more to check
        finally:
            conn.close()
        if not warehouse:
            raise SourceError(
                f"source {self.instance_name!r}: role {role!r} has no warehouse to run models on",
                hint="set `warehouse:` in the source config, and grant it: GRANT USAGE ON "
                f"WAREHOUSE <name> TO ROLE {role or '<role>'};",
            )

    def describe(self, sql: str, *, model: str) -> pa.Schema:
        sf = _snowflake()
        text = _cloud.model_text(sql)
        conn = self._connect()
        try:
            metadata = conn.cursor().describe(text)
        except sf.errors.ProgrammingError as exc:
            raise self._model_error(exc, text, model=model) from None
        finally:
            conn.close()
        return schema_of(metadata)

    def extract(
        self, sql: str, *, model: str, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> pa.RecordBatchReader:
        if batch_rows <= 0:
            raise ValueError(f"batch_rows must be positive, got {batch_rows}")
        sf = _snowflake()
        text = _cloud.model_text(sql)
        conn = self._connect()
        try:
            cur = conn.cursor()
            cur.execute(text)
            schema = schema_of(cur.description)
            pieces = cur.fetch_arrow_batches()
        except sf.errors.ProgrammingError as exc:
            conn.close()
            raise self._model_error(exc, text, model=model) from None
        except BaseException:
            conn.close()
            raise
        batches = _cloud.closing(
            _cloud.conformed(
                self._guarded(pieces, model), schema, batch_rows, self._cast_error(model)
            ),
            conn.close,
        )
        return stream_reader(schema, batches)

    # -- the warehouse diff engine --------------------------------------------------------

    def session(self) -> SqlSession:
        """A read-write connection (autocommit; ``BEGIN`` ... ``COMMIT`` for transactions)."""
        return CursorSession(self._connect(), DIALECT)

    def check_access(
        self, relations: Sequence[str], *, scratch_schema: str | None = None
    ) -> list[AccessProblem]:
        """Probed as the source's role (see :mod:`undertow.sources._access`)."""
        return _access.check_access(SnowflakeAccess(self), relations, scratch_schema)

    # -- helpers ----------------------------------------------------------------------------

    def connect_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``snowflake.connector.connect`` (secrets included)."""
        return _login.connect_kwargs(
            self.config, base_dir=self.base_dir, who=self._who(), error=_source_error
        )

    def _who(self) -> str:
        return f"source {self.instance_name!r}"

    def _connect(self) -> Any:
        sf = _snowflake()
        try:
            return sf.connect(**self.connect_kwargs())
        except sf.errors.Error as exc:
            raise self._connect_error(exc) from None

    def _connect_error(self, exc: BaseException) -> SourceError:
        problem = _login.login_problem(exc, self.config, self._who())
        return SourceError(problem.message, hint=problem.hint)

    def _model_error(self, exc: BaseException, text: str, *, model: str) -> ModelError:
        message = " ".join(
            line.strip() for line in str(getattr(exc, "msg", None) or exc).splitlines()
        )
        at = _AT.search(message)
        where = _cloud.position(text, int(at.group(1)), int(at.group(2)), base=0) if at else None
        hint = None
        if "does not exist or not authorized" in message:
            hint = (
                "check the name, or grant the source's role read access: GRANT USAGE ON "
                "DATABASE/SCHEMA and GRANT SELECT ON the table (see docs/sources/snowflake.md)"
            )
        elif "no active warehouse" in message.lower():
            hint = "set `warehouse:` in the source config, and GRANT USAGE ON WAREHOUSE to its role"
        return ModelError(
            _cloud.first_line(message),
            model=model,
            source=self.instance_name,
            position=where,
            hint=hint,
        )

    def _guarded(self, pieces: Iterator[Any], model: str) -> Iterator[Any]:
        sf = _snowflake()
        try:
            yield from pieces
        except sf.errors.Error as exc:
            raise ModelError(
                f"cannot read the rows: {_cloud.first_line(exc)}",
                model=model,
                source=self.instance_name,
            ) from None

    def _cast_error(self, model: str) -> Any:
        def error(exc: BaseException) -> BaseException:
            return ModelError(
                f"cannot convert the rows to Arrow: {_cloud.first_line(exc)}",
                model=model,
                source=self.instance_name,
                hint="cast the column in the model (col::VARCHAR) if it holds values the "
                "documented Arrow type cannot (NUMBER(38,0) beyond 64 bits, dates before 1677 "
                "in a TIMESTAMP(9))",
            )

        return error


def arrow_type(type_code: int, precision: int | None, scale: int | None) -> pa.DataType:
    """The Arrow type of a Snowflake result column (docs/sources/snowflake.md, Types)."""
    if type_code == _FIXED:
        if not scale:  # NUMBER(38, 0) is how Snowflake declares every integer column
            return pa.int64()
        return pa.decimal128(precision or 38, scale)
    fraction = 9 if scale is None else scale
    unit: Literal["us", "ns"] = "ns" if fraction > 6 else "us"
    simple: dict[int, pa.DataType] = {
        _REAL: pa.float64(),
        _TEXT: pa.string(),
        _DATE: pa.date32(),
        _TIMESTAMP: pa.timestamp(unit),
        _TIMESTAMP_NTZ: pa.timestamp(unit),
        _TIMESTAMP_LTZ: pa.timestamp(unit, tz="UTC"),
        _TIMESTAMP_TZ: pa.timestamp(unit, tz="UTC"),
        _BINARY: pa.binary(),
        _TIME: pa.time64(unit),
        _BOOLEAN: pa.bool_(),
        _VECTOR: pa.list_(pa.float64()),
    }
    return simple.get(type_code, pa.string())  # VARIANT/OBJECT/ARRAY/GEO*: JSON or WKT text


def schema_of(metadata: Any) -> pa.Schema:
    """The Arrow schema of a cursor's ``description`` (``ResultMetadata`` items)."""
    return pa.schema(
        pa.field(m.name, arrow_type(m.type_code, m.precision, m.scale)) for m in metadata
    )


def _snowflake() -> Any:
    return _login.connector()


def _source_error(message: str, hint: str | None) -> SourceError:
    return SourceError(message, hint=hint)


class SnowflakeAccess(_access.WarehouseAccess):
    """Snowflake's grants go to a role: the configured ``role``, else ``CURRENT_ROLE()``."""

    warehouse = "Snowflake"
    source: SnowflakeSource

    def find_principal(self) -> _access.Principal:
        config = self.source.config
        role = _upper(config.role)
        database, schema = _upper(config.database), _upper(config.schema_)
        try:
            session = self.source.session()
            try:
                row = session.rows("SELECT CURRENT_ROLE(), CURRENT_DATABASE(), CURRENT_SCHEMA()")
            finally:
                session.close()
            current_role, current_database, current_schema = row[0]
            role = role or current_role
            database = current_database or database
            schema = current_schema or schema
        except Exception:  # an emulator without these functions, a refused query
            pass
        given = (("role", role), ("database", database), ("schema", schema))
        missing = [key for key, value in given if not value]
        note = None
        if missing:
            note = (
                ", ".join(f"<{k}>" for k in missing)
                + ": set `role`, `database` and `schema` in the source config, or replace them"
            )
        role = role or "<role>"
        return _access.Principal(
            grantee=f"ROLE {self.name(role)}",
            who=f"role {self.name(role)}",
            namespace=(database or "<database>", schema or "<schema>"),
            note=note,
        )

    def spellings(self, parts: Sequence[str]) -> list[tuple[str, ...]]:
        """Unquoted, Snowflake resolves a name upper-case; quoted, as written. The relation
        list does not say which the model did: upper-case first, then as written."""
        upper = tuple(p.upper() if _access.PLAIN.fullmatch(p) else p for p in parts)
        return [upper] if upper == tuple(parts) else [upper, tuple(parts)]

    def name(self, part: str) -> str:
        if part != part.upper() and not _access.placeholder(part):
            return self.source.quote_identifier(part)  # lower case survives only quoted
        return super().name(part)

    def reason(self, said: str) -> str:
        if "insufficient privileges" in said.lower():
            return "missing a privilege on it"
        if "does not exist" in said or "002003" in said:
            return "no such object, or the role may not see it: Snowflake answers the same for both"
        return super().reason(said)

    def read_grants(self, qualified: tuple[str, ...]) -> tuple[str, ...]:
        to = f"TO {self.principal.grantee}"
        if len(qualified) != 3:
            return (f"GRANT SELECT ON TABLE {self.dotted(qualified)} {to};",)
        database, schema, table = (self.name(p) for p in qualified)
        return (
            f"GRANT USAGE ON DATABASE {database} {to};",
            f"GRANT USAGE ON SCHEMA {database}.{schema} {to};",
            f"GRANT SELECT ON TABLE {database}.{schema}.{table} {to};",
        )

    def scratch_grants(self, schema: str) -> tuple[str, ...]:
        to = f"TO {self.principal.grantee}"
        database, scratch = self.scratch_parts(schema)
        return (
            f"GRANT USAGE ON DATABASE {self.name(database)} {to};",
            f"GRANT USAGE, CREATE TABLE ON SCHEMA {self.dotted((database, scratch))} {to};",
        )


def _upper(name: str | None) -> str | None:
    """A name given in the config, as Snowflake resolves it (unquoted: upper-case)."""
    if name is None or not _access.PLAIN.fullmatch(name):
        return name
    return name.upper()
