"""ClickHouse as a source (``type: clickhouse``): a server through clickhouse-connect, or
in-process through chDB (``path:``), which runs the same ClickHouse engine.

``describe()`` runs ``DESCRIBE (<model>)``: ClickHouse analyses the query and returns each
column's type without reading a row; those types give the Arrow schema (see
docs/sources/clickhouse.md). ``extract()`` selects the model's columns with the conversions
Arrow needs done in ClickHouse (``DateTime`` is a ``UInt32`` in ClickHouse's Arrow output:
it is selected as ``toDateTime64(col, 6, 'UTC')``; ``UUID``, ``Int128``, ``Map``, ``Tuple``,
``Enum``... as their text) and streams the result block by block (``query_arrow_stream``,
or chDB's streaming query), each block cut to ``batch_rows`` rows and cast to the schema.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow as pa
from pydantic import SecretStr, model_validator

from undertow.errors import ModelError, SourceError
from undertow.redact import register_secret
from undertow.sources import _access, _cloud
from undertow.sources.base import (
    DEFAULT_BATCH_ROWS,
    AccessProblem,
    Source,
    SourceConfig,
    SqlSession,
    stream_reader,
)

DIALECT = "clickhouse"
DESCRIBE_HEAD = "DESCRIBE (\n"
DESCRIBE_TAIL = "\n)"
_SETTINGS = {"output_format_arrow_string_as_string": 1, "session_timezone": "UTC"}
# The warehouse diff engine's session: an outer join fills a missing side with NULLs (not
# the type's default), and the work tables it creates with CREATE TABLE ... AS SELECT are
# MergeTree tables (lightweight DELETE needs them) without a sorting key.
_ENGINE_SETTINGS: dict[str, object] = {
    "join_use_nulls": 1,
    "default_table_engine": "MergeTree",
    "create_table_empty_primary_key_by_default": 1,
}
_POSITION = re.compile(r"failed at position (\d+)")
_WRAPPER = re.compile(r"^(Nullable|LowCardinality)\((.*)\)$")
_DECIMAL = re.compile(r"^Decimal(32|64|128|256)?\((\d+)(?:,\s*(\d+))?\)$")
_DATETIME64 = re.compile(r"^DateTime64\((\d+)")
_ARRAY = re.compile(r"^Array\((.*)\)$")
_INTS = {
    "Int8": pa.int8(),
    "Int16": pa.int16(),
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "UInt8": pa.uint8(),
    "UInt16": pa.uint16(),
    "UInt32": pa.uint32(),
    "UInt64": pa.uint64(),
}
_NATIVE: dict[str, pa.DataType] = {
    **_INTS,
    "Float32": pa.float32(),
    "Float64": pa.float64(),
    "Bool": pa.bool_(),
    "String": pa.string(),
    "Date": pa.date32(),
    "Date32": pa.date32(),
}
_DECIMAL_DEFAULT_PRECISION = {"32": 9, "64": 18, "128": 38, "256": 76}


class ClickHouseConfig(SourceConfig):
    """``type: clickhouse``: a server (``url``, or host/port/user/password/database/secure),
    or chDB in-process (``path``: a data folder, or ``:memory:``)."""

    type: Literal["clickhouse"] = "clickhouse"
    url: SecretStr | None = None
    """clickhouse://user:password@host:port/database?secure=true (a secret: use ``${ENV}``)."""
    host: str | None = None
    port: int | None = None
    """Default 8443 with ``secure``, 8123 without (the HTTP interface)."""
    user: str = "default"
    password: SecretStr | None = None
    database: str | None = None
    secure: bool = False
    """TLS (ClickHouse Cloud needs it)."""
    connect_timeout: int = 10
    path: str | None = None
    """Run in-process with chDB instead of a server: its data folder, or ``:memory:``."""

    @model_validator(mode="after")
    def _one_way_to_connect(self) -> ClickHouseConfig:
        if self.url is not None:
            parts = urlsplit(self.url.get_secret_value())
            if parts.scheme not in ("clickhouse", "clickhouses"):
                raise ValueError("`url` must start with clickhouse:// (or clickhouses:// for TLS)")
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            fields = {
                "host": parts.hostname,
                "port": parts.port,
                "database": unquote(parts.path.strip("/")) or None,
            }
            for key, value in fields.items():
                if value is not None and getattr(self, key) is None:
                    object.__setattr__(self, key, value)
            if parts.username and "user" not in self.model_fields_set:
                object.__setattr__(self, "user", unquote(parts.username))
            if parts.password and self.password is None:
                object.__setattr__(self, "password", SecretStr(unquote(parts.password)))
            secure = parts.scheme == "clickhouses" or query.get("secure", "").lower() in (
                "1",
                "true",
            )
            if secure and "secure" not in self.model_fields_set:
                object.__setattr__(self, "secure", True)
        if self.host is None and self.path is None:
            raise ValueError("set `url` or `host` (a server), or `path` (chDB in-process)")
        if self.host is not None and self.path is not None:
            raise ValueError("set `host` (a server) or `path` (chDB in-process), not both")
        return self


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    """The ClickHouse type, as DESCRIBE names it."""
    arrow: pa.DataType
    expression: str
    """What the extraction query selects for it."""


class ClickHouseSource(Source):
    """Runs models on ClickHouse (or chDB); one client per call, closed when the call ends."""

    name: ClassVar[str] = "clickhouse"
    Config: ClassVar[type[SourceConfig]] = ClickHouseConfig
    sql_dialect: ClassVar[str | None] = DIALECT

    config: ClickHouseConfig

    def __init__(self, config: SourceConfig, *, name: str, base_dir: str = ".") -> None:
        super().__init__(config, name=name, base_dir=base_dir)
        config = self.config
        register_secret(config.password.get_secret_value() if config.password else None)

    def quote_identifier(self, name: str) -> str:
        return _cloud.quote(name, DIALECT)

    # -- the Source interface ---------------------------------------------------------------

    def check(self) -> None:
        client = self._client()
        try:
            client.rows("SELECT 1")
        except Exception as exc:
            raise SourceError(
                f"source {self.instance_name!r} ({self._where()}) cannot run a query: "
                f"{_cloud.first_line(exc)}"
            ) from None
        finally:
            client.close()

    def describe(self, sql: str, *, model: str) -> pa.Schema:
        return pa.schema(pa.field(c.name, c.arrow) for c in self._describe(sql, model=model))

    def extract(
        self, sql: str, *, model: str, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> pa.RecordBatchReader:
        if batch_rows <= 0:
            raise ValueError(f"batch_rows must be positive, got {batch_rows}")
        columns = self._describe(sql, model=model)
        schema = pa.schema(pa.field(c.name, c.arrow) for c in columns)
        query = extract_sql(sql, columns)
        client = self._client()
        try:
            pieces = client.stream(query, batch_rows)
        except Exception as exc:
            client.close()
            raise self._model_error(exc, model=model) from None
        batches = _cloud.closing(
            _cloud.conformed(
                self._guarded(pieces, model), schema, batch_rows, self._read_error(model)
            ),
            client.close,
        )
        return stream_reader(schema, batches)

    # -- the warehouse diff engine ----------------------------------------------------------

    def session(self) -> SqlSession:
        """Statements through one client, with the settings of ``_ENGINE_SETTINGS``.

        ClickHouse has no multi-statement transactions: the engine runs without them
        (see docs/sources/clickhouse.md)."""
        return _ClickHouseSession(self._client(_ENGINE_SETTINGS))

    def check_access(
        self, relations: Sequence[str], *, scratch_schema: str | None = None
    ) -> list[AccessProblem]:
        """Probed as the source's user (see :mod:`undertow.sources._access`)."""
        return _access.check_access(ClickHouseAccess(self), relations, scratch_schema)

    # -- helpers ----------------------------------------------------------------------------

    def _where(self) -> str:
        if self.config.path is not None:
            return f"chDB at {self.config.path}"
        return f"clickhouse at {self.config.host}:{self._port()}"

    def _port(self) -> int:
        return self.config.port or (8443 if self.config.secure else 8123)

    def _client(self, extra: dict[str, object] | None = None) -> _Client:
        c = self.config
        if c.path is not None:
            chdb = _cloud.driver("chdb", "chdb", "warehouse-emulators")
            path = c.path
            if path != ":memory:":
                path = os.path.join(self.base_dir, os.path.expanduser(path))
            client = _ChdbClient(chdb.connect(path))
            for key, value in (extra or {}).items():
                client.execute(f"SET {key} = {_literal(value)}")
            return client
        cc = _cloud.driver("clickhouse_connect", "clickhouse-connect", "clickhouse")
        try:
            client = cc.get_client(
                host=c.host,
                port=self._port(),
                username=c.user,
                password=c.password.get_secret_value() if c.password else "",
                database=c.database,
                secure=c.secure,
                connect_timeout=c.connect_timeout,
                settings={**_SETTINGS, **(extra or {})},
            )
        except Exception as exc:
            raise self._connect_error(exc) from None
        return _ConnectClient(client)

    def _connect_error(self, exc: BaseException) -> SourceError:
        text = _cloud.first_line(exc)
        who = f"source {self.instance_name!r}"
        if "AUTHENTICATION_FAILED" in text or "Code: 516" in text:
            return SourceError(
                f"{who}: {self._where()} refused user {self.config.user!r}: {text}",
                hint="check `user` and `password` in the source config (the password is never "
                "shown)",
            )
        if "UNKNOWN_DATABASE" in text or "Code: 81" in text:
            return SourceError(
                f"{who}: {text}",
                hint="check `database` (or the path of `url`); list them with SHOW DATABASES",
            )
        return SourceError(
            f"{who}: cannot connect to {self._where()}: {text}",
            hint=f"check the server is running and reachable (curl http"
            f"{'s' if self.config.secure else ''}://{self.config.host}:{self._port()}/ping), "
            "and `secure: true` for ClickHouse Cloud",
        )

    def _describe(self, sql: str, *, model: str) -> list[Column]:
        client = self._client()
        try:
            rows = client.rows(describe_sql(sql))
        except Exception as exc:
            raise self._model_error(exc, model=model, offset=len(DESCRIBE_HEAD)) from None
        finally:
            client.close()
        return [column(str(r[0]), str(r[1])) for r in rows]

    def _model_error(self, exc: BaseException, *, model: str, offset: int = 0) -> ModelError:
        message = _cloud.first_line(exc)
        found = _POSITION.search(message)
        where = int(found.group(1)) - offset if found and offset else None
        hint = None
        if "ACCESS_DENIED" in message or "Code: 497" in message:
            hint = "grant read access: GRANT SELECT ON <database>.* TO <user>"
        return ModelError(
            message,
            model=model,
            source=self.instance_name,
            position=where if where and where > 0 else None,
            hint=hint,
        )

    def _guarded(self, pieces: Iterator[Any], model: str) -> Iterator[Any]:
        try:
            yield from pieces
        except Exception as exc:
            raise self._model_error(exc, model=model) from None

    def _read_error(self, model: str) -> Any:
        def error(exc: BaseException) -> BaseException:
            return ModelError(
                f"cannot convert the rows to Arrow: {_cloud.first_line(exc)}",
                model=model,
                source=self.instance_name,
                hint="cast the column in the model (toString(col)) if it holds values Arrow "
                "cannot hold as the documented type",
            )

        return error


def describe_sql(sql: str) -> str:
    """``DESCRIBE (<sql>)``: the result's columns and types; no row is read."""
    return DESCRIBE_HEAD + _cloud.model_text(sql) + DESCRIBE_TAIL


def extract_sql(sql: str, columns: list[Column]) -> str:
    """The model with each column converted as :func:`column` says."""
    return _cloud.projection_sql(sql, [(c.name, c.expression) for c in columns], DIALECT)


def column(name: str, ch_type: str) -> Column:
    """The Arrow type of a ClickHouse column and the expression that selects it."""
    ref = _cloud.quote(name, DIALECT)
    inner = ch_type
    while found := _WRAPPER.match(inner):
        inner = found.group(2)
    if inner in _NATIVE:
        return Column(name, ch_type, _NATIVE[inner], ref)
    if decimal := _DECIMAL.match(inner):
        bits, first, second = decimal.groups()
        if second is None and bits:  # Decimal64(S)
            precision, scale = _DECIMAL_DEFAULT_PRECISION[bits], int(first)
        else:
            precision, scale = int(first), int(second or 0)
        if precision <= 38:
            return Column(name, ch_type, pa.decimal128(precision, scale), ref)
        return Column(name, ch_type, pa.string(), f"toString({ref})")
    if inner == "DateTime" or inner.startswith("DateTime("):
        return Column(name, ch_type, pa.timestamp("us", tz="UTC"), f"toDateTime64({ref}, 6, 'UTC')")
    if precision64 := _DATETIME64.match(inner):
        digits = 9 if int(precision64.group(1)) > 6 else 6
        unit: Literal["us", "ns"] = "ns" if digits == 9 else "us"
        return Column(
            name, ch_type, pa.timestamp(unit, tz="UTC"), f"toDateTime64({ref}, {digits}, 'UTC')"
        )
    if array := _ARRAY.match(inner):
        element = array.group(1)
        while found := _WRAPPER.match(element):
            element = found.group(2)
        if element in _NATIVE:
            return Column(name, ch_type, pa.list_(_NATIVE[element]), ref)
    # FixedString, UUID, Enum, IPv4/6, Int128/256, Map, Tuple, JSON, nested arrays, ...
    return Column(name, ch_type, pa.string(), f"toString({ref})")


class _Client:
    """What the source needs of a ClickHouse connection, over either driver."""

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def execute(self, sql: str) -> None:
        raise NotImplementedError

    def stream(self, sql: str, batch_rows: int) -> Iterator[pa.RecordBatch | pa.Table]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _ChdbClient(_Client):
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        settings = ", ".join(f"{k} = {_literal(v)}" for k, v in _SETTINGS.items())
        self.settings = f"\nSETTINGS {settings}"

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        table = self.conn.query(sql + self.settings, "ArrowTable")
        return [tuple(r.values()) for r in table.to_pylist()]

    def execute(self, sql: str) -> None:
        self.conn.query(sql)

    def stream(self, sql: str, batch_rows: int) -> Iterator[pa.RecordBatch | pa.Table]:
        result = self.conn.send_query(sql + self.settings, "Arrow")
        reader = result.record_batch(rows_per_batch=batch_rows)

        def pieces() -> Iterator[pa.RecordBatch]:
            try:
                yield from reader
            finally:
                result.close()

        return pieces()

    def close(self) -> None:
        self.conn.close()


class _ConnectClient(_Client):
    def __init__(self, client: Any) -> None:
        self.client = client

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.client.query(sql).result_rows]

    def execute(self, sql: str) -> None:
        self.client.command(sql)

    def stream(self, sql: str, batch_rows: int) -> Iterator[pa.RecordBatch | pa.Table]:
        context = self.client.query_arrow_stream(sql, use_strings=True)

        def pieces() -> Iterator[pa.Table]:
            with context as stream:
                yield from stream

        return pieces()

    def close(self) -> None:
        self.client.close()


def _literal(value: object) -> str:
    return str(value) if isinstance(value, int) else "'" + str(value).replace("'", "\\'") + "'"


class _ClickHouseSession:
    dialect = DIALECT

    def __init__(self, client: _Client) -> None:
        self.client = client

    def execute(self, sql: str) -> None:
        self.client.execute(sql)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.client.rows(sql)

    def close(self) -> None:
        self.client.close()


class ClickHouseAccess(_access.WarehouseAccess):
    """ClickHouse's grants go to the configured ``user`` (``default`` unless set)."""

    warehouse = "ClickHouse"
    source: ClickHouseSource

    def find_principal(self) -> _access.Principal:
        user = self.source.config.user
        database = self.source.config.database
        if database is None:
            try:
                session = self.source.session()
                try:
                    database = str(session.rows("SELECT currentDatabase()")[0][0])
                finally:
                    session.close()
            except Exception:
                database = "default"
        return _access.Principal(self.name(user), f"user {user!r}", (database,))

    def name(self, part: str) -> str:
        """Bare when plain: ClickHouse reads a keyword as a name there (``TO default``)."""
        if _access.PLAIN.fullmatch(part) or _access.placeholder(part):
            return part
        return self.source.quote_identifier(part)

    def reason(self, said: str) -> str:
        if "ACCESS_DENIED" in said or "Code: 497" in said or "Not enough privileges" in said:
            return "missing SELECT: the server says so"
        if any(code in said for code in ("UNKNOWN_TABLE", "UNKNOWN_DATABASE", "Code: 60.")):
            return "no such table or database: the server says it does not exist"
        return super().reason(said)

    def scratch_refusal(self, said: str) -> str:
        if "READONLY" in said or "Code: 164." in said:
            return (
                " (a `readonly` user may not write whatever its grants: the engine needs a "
                f"user without it, e.g. ALTER USER {self.principal.grantee} SETTINGS "
                "readonly = 0)"
            )
        return ""

    def read_grants(self, qualified: tuple[str, ...]) -> tuple[str, ...]:
        return (f"GRANT SELECT ON {self.dotted(qualified)} TO {self.principal.grantee};",)

    def scratch_grants(self, schema: str) -> tuple[str, ...]:
        return (
            f"GRANT {', '.join(SCRATCH_PRIVILEGES)} ON {self.name(schema)}.* "
            f"TO {self.principal.grantee};",
        )

    def create_schema_grants(self, schema: str) -> tuple[str, ...]:
        return ()  # CREATE DATABASE on it is among the scratch grants


SCRATCH_PRIVILEGES = (
    "SELECT",
    "INSERT",
    "ALTER DELETE",
    "CREATE TABLE",
    "DROP TABLE",
    "CREATE DATABASE",
)
"""What the warehouse diff engine does in its database: read and write its tables,
lightweight ``DELETE`` (ALTER DELETE), ``RENAME TABLE`` (SELECT and DROP TABLE on the old
name, CREATE TABLE and INSERT on the new), and create the database when it is missing."""
