"""Databricks SQL as a source (``type: databricks``), with databricks-sql-connector.

``describe()`` runs ``SELECT * FROM (<model>) AS _ut_describe LIMIT 0`` on the SQL
warehouse: it compiles the model and returns an empty Arrow result carrying the schema.
``extract()`` runs the model and fetches Arrow tables of ``batch_rows`` rows
(``cursor.fetchmany_arrow``); the connector downloads results as Arrow (Cloud Fetch for
large ones), so memory stays bounded by a download chunk plus one batch.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow as pa
from pydantic import Field, SecretStr, model_validator

from undertow.errors import ModelError, SourceError
from undertow.redact import register_secret
from undertow.sources import _access, _cloud
from undertow.sources.base import (
    DEFAULT_BATCH_ROWS,
    AccessProblem,
    CursorSession,
    Source,
    SourceConfig,
    SqlSession,
    stream_reader,
)

DIALECT = "databricks"
_AT = re.compile(r"line (\d+), pos (\d+)")


class DatabricksConfig(SourceConfig):
    """``type: databricks``: a SQL warehouse (``server_hostname`` + ``http_path``) and a
    personal access token (or an OAuth machine-to-machine token)."""

    type: Literal["databricks"] = "databricks"
    url: SecretStr | None = None
    """databricks://token:<access_token>@<server_hostname>?http_path=/sql/1.0/warehouses/..."""
    server_hostname: str | None = None
    """``dbc-xxxx.cloud.databricks.com`` (the workspace host, no https://)."""
    http_path: str | None = None
    """The SQL warehouse's HTTP path: ``/sql/1.0/warehouses/<id>``."""
    access_token: SecretStr | None = None
    catalog: str | None = None
    """Unqualified names resolve in this catalog (Unity Catalog) ..."""
    schema_: str | None = Field(default=None, alias="schema")
    """... and this schema."""

    @model_validator(mode="after")
    def _complete(self) -> DatabricksConfig:
        if self.url is not None:
            parts = urlsplit(self.url.get_secret_value())
            if parts.scheme != "databricks":
                raise ValueError("`url` must start with databricks://")
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            for key, value in (
                ("server_hostname", parts.hostname),
                ("http_path", query.get("http_path")),
                ("catalog", query.get("catalog")),
                ("schema_", query.get("schema")),
            ):
                if value is not None and getattr(self, key) is None:
                    object.__setattr__(self, key, value)
            if parts.password and self.access_token is None:
                object.__setattr__(self, "access_token", SecretStr(unquote(parts.password)))
        missing = [k for k in ("server_hostname", "http_path") if getattr(self, k) is None]
        if missing:
            raise ValueError(f"set {' and '.join(f'`{k}`' for k in missing)} (or a `url`)")
        if self.server_hostname and "://" in self.server_hostname:
            raise ValueError("`server_hostname` is the host alone, without https://")
        return self


class DatabricksSource(Source):
    """Runs models on a Databricks SQL warehouse; one connection per call."""

    name: ClassVar[str] = "databricks"
    Config: ClassVar[type[SourceConfig]] = DatabricksConfig
    sql_dialect: ClassVar[str | None] = DIALECT

    config: DatabricksConfig

    def __init__(self, config: SourceConfig, *, name: str, base_dir: str = ".") -> None:
        super().__init__(config, name=name, base_dir=base_dir)
        config = self.config
        token = config.access_token
        register_secret(token.get_secret_value() if token else None)

    def quote_identifier(self, name: str) -> str:
        return _cloud.quote(name, DIALECT)

    # -- the Source interface ---------------------------------------------------------------

    def check(self) -> None:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchall()
        except Exception as exc:
            raise SourceError(
                f"source {self.instance_name!r} (databricks {self.config.server_hostname}) "
                f"cannot run a query: {_cloud.first_line(exc)}",
                hint="check the token's owner has CAN USE on the SQL warehouse",
            ) from None
        finally:
            conn.close()

    def describe(self, sql: str, *, model: str) -> pa.Schema:
        text = _cloud.model_text(sql)
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute(describe_sql(text))
                table = cur.fetchall_arrow()
        except Exception as exc:
            raise self._model_error(exc, text, model=model, line_offset=1) from None
        finally:
            conn.close()
        return plain_schema(table.schema)

    def extract(
        self, sql: str, *, model: str, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> pa.RecordBatchReader:
        if batch_rows <= 0:
            raise ValueError(f"batch_rows must be positive, got {batch_rows}")
        text = _cloud.model_text(sql)
        conn = self._connect()
        try:
            cur = conn.cursor(arraysize=batch_rows)
            cur.execute(text)
            head = cur.fetchmany_arrow(batch_rows)
        except Exception as exc:
            conn.close()
            raise self._model_error(exc, text, model=model) from None
        schema = plain_schema(head.schema)

        def pieces() -> Iterator[pa.Table]:
            table = head
            while table.num_rows:
                yield table
                try:
                    table = cur.fetchmany_arrow(batch_rows)
                except Exception as exc:
                    raise self._model_error(exc, text, model=model) from None

        batches = _cloud.closing(
            _cloud.conformed(pieces(), schema, batch_rows, self._read_error(model)),
            cur.close,
            conn.close,
        )
        return stream_reader(schema, batches)

    # -- the warehouse diff engine ----------------------------------------------------------

    def session(self) -> SqlSession:
        """Statements on one connection (Databricks SQL autocommits each statement)."""
        return CursorSession(self._connect(), DIALECT)

    def check_access(
        self, relations: Sequence[str], *, scratch_schema: str | None = None
    ) -> list[AccessProblem]:
        """Probed as the token's principal (see :mod:`undertow.sources._access`)."""
        return _access.check_access(DatabricksAccess(self), relations, scratch_schema)

    # -- helpers ----------------------------------------------------------------------------

    def connect_kwargs(self) -> dict[str, Any]:
        c = self.config
        kwargs: dict[str, Any] = {
            "server_hostname": c.server_hostname,
            "http_path": c.http_path,
            "catalog": c.catalog,
            "schema": c.schema_,
            "user_agent_entry": "undertow",
            "session_configuration": {"TIMEZONE": "UTC", "ANSI_MODE": "true"},
        }
        if c.access_token is not None:
            kwargs["access_token"] = c.access_token.get_secret_value()
        return {k: v for k, v in kwargs.items() if v is not None}

    def _connect(self) -> Any:
        sql = _cloud.driver("databricks.sql", "databricks-sql-connector", "databricks")
        try:
            return sql.connect(**self.connect_kwargs())
        except Exception as exc:
            text = _cloud.first_line(exc)
            hint = (
                "check `server_hostname` and `http_path` (SQL warehouse > Connection details) "
                "and that `access_token` is a valid personal access token"
            )
            raise SourceError(
                f"source {self.instance_name!r}: cannot connect to databricks "
                f"{self.config.server_hostname}: {text}",
                hint=hint,
            ) from None

    def _model_error(
        self, exc: BaseException, text: str, *, model: str, line_offset: int = 0
    ) -> ModelError:
        return model_error(
            exc, text, model=model, source=self.instance_name, line_offset=line_offset
        )

    def _read_error(self, model: str) -> Any:
        def error(exc: BaseException) -> BaseException:
            return ModelError(
                f"cannot convert the rows to Arrow: {_cloud.first_line(exc)}",
                model=model,
                source=self.instance_name,
                hint="cast the column in the model (CAST(col AS STRING))",
            )

        return error


def describe_sql(sql: str) -> str:
    return _cloud.describe_sql(sql, DIALECT)


def model_error(
    exc: BaseException, sql: str, *, model: str, source: str, line_offset: int = 0
) -> ModelError:
    """A Databricks error (``(line L, pos P)``, P 0-based) as a ModelError with a position."""
    message = " ".join(str(exc).split())
    found = _AT.search(message)
    where = None
    if found:
        where = _cloud.position(
            sql, int(found.group(1)), int(found.group(2)), line_offset=line_offset, base=0
        )
    hint = None
    if "INSUFFICIENT_PERMISSIONS" in message or "PERMISSION_DENIED" in message:
        hint = "grant USE CATALOG, USE SCHEMA and SELECT to the token's owner (docs/sources/databricks.md)"
    elif "TABLE_OR_VIEW_NOT_FOUND" in message:
        hint = "qualify the table (catalog.schema.table) or set `catalog` and `schema`"
    return ModelError(
        _cloud.first_line(message), model=model, source=source, position=where, hint=hint
    )


def plain_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with every field nullable and no metadata (what every source announces)."""
    return pa.schema(pa.field(f.name, f.type) for f in schema)


class DatabricksAccess(_access.WarehouseAccess):
    """Unity Catalog grants go to the principal the token belongs to (``current_user()``:
    a user's e-mail, a service principal's application ID); ``<principal>`` when the
    warehouse does not say."""

    warehouse = "Databricks"
    source: DatabricksSource

    def find_principal(self) -> _access.Principal:
        config = self.source.config
        user, catalog, schema = None, config.catalog, config.schema_
        try:
            session = self.source.session()
            try:
                row = session.rows("SELECT current_user(), current_catalog(), current_schema()")
            finally:
                session.close()
            user = row[0][0] or None
            catalog, schema = row[0][1] or catalog, row[0][2] or schema
        except Exception:
            pass
        missing = [
            k for k, v in (("principal", user), ("catalog", catalog), ("schema", schema)) if not v
        ]
        note = None
        if missing:
            note = (
                ", ".join(f"<{k}>" for k in missing)
                + ": the warehouse did not say (current_user(), current_catalog(), "
                "current_schema()); replace them with the token's user, service principal "
                "or group, and the catalog and schema (or set `catalog` and `schema`)"
            )
        grantee = "`<principal>`" if user is None else self.source.quote_identifier(str(user))
        who = "the token's principal" if user is None else f"principal {str(user)!r}"
        return _access.Principal(grantee, who, (catalog or "<catalog>", schema or "<schema>"), note)

    def reason(self, said: str) -> str:
        if any(w in said for w in ("PERMISSION_DENIED", "INSUFFICIENT_PERMISSIONS")):
            return "missing a privilege: the server says so"
        if any(w in said for w in ("TABLE_OR_VIEW_NOT_FOUND", "SCHEMA_NOT_FOUND", "NOT_FOUND")):
            return (
                "not found: no such table, or one hidden from a principal without USE "
                "CATALOG / USE SCHEMA"
            )
        return super().reason(said)

    def read_grants(self, qualified: tuple[str, ...]) -> tuple[str, ...]:
        to = f"TO {self.principal.grantee}"
        if len(qualified) != 3:
            return (f"GRANT SELECT ON TABLE {self.dotted(qualified)} {to};",)
        catalog, schema, table = (self.name(p) for p in qualified)
        return (
            f"GRANT USE CATALOG ON CATALOG {catalog} {to};",
            f"GRANT USE SCHEMA ON SCHEMA {catalog}.{schema} {to};",
            f"GRANT SELECT ON TABLE {catalog}.{schema}.{table} {to};",
        )

    def scratch_grants(self, schema: str) -> tuple[str, ...]:
        to = f"TO {self.principal.grantee}"
        parts = self.scratch_parts(schema)
        grants = [
            f"GRANT USE SCHEMA, CREATE TABLE, SELECT, MODIFY ON SCHEMA {self.dotted(parts)} {to};"
        ]
        if len(parts) == 2:
            grants.insert(0, f"GRANT USE CATALOG ON CATALOG {self.name(parts[0])} {to};")
        return tuple(grants)
