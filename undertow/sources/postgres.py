"""PostgreSQL as a source (Redshift later): a model's SELECT streamed out as Arrow batches.

How rows move. Every call runs in its own READ ONLY transaction. The model's SQL is first
declared as a cursor (``DECLARE ... CURSOR FOR <sql>``), which parses and plans it without
reading a row; describing that portal gives each column's type OID and modifier, hence the
Arrow schema. The rows then come out with ``COPY (<sql>) TO STDOUT (FORMAT csv)`` and are
parsed by Arrow's C++ CSV reader in blocks of a few MiB, typed from that schema.

Why COPY and CSV: converting psycopg's Python tuples into Arrow measured 160k rows/s for
1M rows of 11 columns (most of the time is spent creating Python ``datetime`` and
``Decimal`` objects); COPY parsed by Arrow measured several times that. Columns Arrow's CSV
parser cannot read (arrays, bytea, time, ...) arrive as text and are converted with
psycopg's own text loaders, a batch at a time.

When every column has a type ADBC maps exactly, the rows are read by ADBC instead (COPY in
binary format, about twice as fast): see :mod:`undertow.sources._postgres_adbc`.

Memory stays bounded: COPY sends one message per row; at most ``batch_rows`` rows (and at
most ``max_chunk_bytes``) are held as text, then parsed into one Arrow batch; the server
streams COPY output and never materialises the result.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Sequence
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import SecretStr, model_validator

from undertow.errors import ModelError, SourceError
from undertow.redact import redact, register_secret
from undertow.sources import _postgres_adbc as _adbc
from undertow.sources._postgres_access import PostgresSession, access_problems
from undertow.sources._postgres_types import (
    JSON_OIDS,
    PgColumn,
    arrow_schema,
    first_line,
    last_line,
    max_chunk_bytes,
    pg_column,
    psycopg_module,
    text_loader,
    typed_batch,
)
from undertow.sources.base import (
    DEFAULT_BATCH_ROWS,
    JSON_FIELD,
    AccessProblem,
    Source,
    SourceConfig,
    SqlSession,
    mark_fields,
    missing_driver,
    stream_reader,
)

_CURSOR = "undertow_model"
_DECLARE = f"DECLARE {_CURSOR} NO SCROLL CURSOR FOR "
_COPY_HEAD = "COPY (\n"
_COPY_TAIL = "\n) TO STDOUT (FORMAT csv)"
_TRAILING = re.compile(r"[\s;]+$")

# Session settings that make COPY's text output what the CSV parser expects.
_SESSION = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "3",
    "bytea_output": "hex",
}
# The warehouse diff engine's session: its joins hash the model's keys and the snapshot's
# (about 90 MB for 1M rows), which the default work_mem (4 MB) sends to disk; and its
# statements run once, so JIT compilation is time lost.
_DIFF_SESSION = {**_SESSION, "work_mem": "128MB", "jit": "off"}


class PostgresConfig(SourceConfig):
    """``type: postgres``: a URL, or host/port/user/password/database."""

    type: Literal["postgres", "postgresql", "redshift"] = "postgres"
    url: SecretStr | None = None
    """postgresql://user:password@host:port/database (a secret: use ``${ENV}``)."""
    host: str | None = None
    port: int = 5432
    user: str | None = None
    password: SecretStr | None = None
    database: str | None = None
    sslmode: str | None = None
    schema_search_path: list[str] | None = None
    """Schemas searched for unqualified table names, in order."""
    connect_timeout: int = 10
    """Seconds to wait for the server to answer a connection."""
    reader: Literal["auto", "adbc", "copy"] = "auto"
    """How rows are read: ADBC when every column's type allows (auto), or COPY as CSV."""

    @model_validator(mode="after")
    def _one_way_to_connect(self) -> PostgresConfig:
        if self.url is None and self.host is None:
            raise ValueError("set either `url` or `host` (with port, user, password, database)")
        if self.url is not None and self.host is not None:
            raise ValueError("set either `url` or `host`, not both")
        return self


class PostgresSource(Source):
    """Runs models on PostgreSQL; one connection per call, closed when the call ends."""

    name: ClassVar[str] = "postgres"
    Config: ClassVar[type[SourceConfig]] = PostgresConfig

    config: PostgresConfig

    def __init__(self, config: SourceConfig, *, name: str, base_dir: str = ".") -> None:
        super().__init__(config, name=name, base_dir=base_dir)
        self._register_secrets()

    # -- the Source interface ---------------------------------------------------------------

    def check(self) -> None:
        psycopg = psycopg_module()
        conn = self._connect()
        try:
            conn.execute("select 1").fetchall()
        except psycopg.Error as exc:
            raise SourceError(
                f"source {self.instance_name!r} ({self._where()}) cannot run a query: "
                f"{first_line(exc)}"
            ) from None
        finally:
            conn.close()

    def describe(self, sql: str, *, model: str) -> pa.Schema:
        conn = self._connect()
        try:
            columns = self._declare(conn, sql, model=model)
            json = [c.name for c in columns if c.oid in JSON_OIDS]
            return mark_fields(arrow_schema(columns), json, JSON_FIELD)
        finally:
            conn.close()  # ends the read-only transaction: nothing was read or written

    def extract(
        self, sql: str, *, model: str, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> pa.RecordBatchReader:
        if batch_rows <= 0:
            raise ValueError(f"batch_rows must be positive, got {batch_rows}")
        conn = self._connect()
        try:
            columns = self._declare(conn, sql, model=model)
            conn.execute(f"CLOSE {_CURSOR}")
        except BaseException:
            conn.close()
            raise
        if self._use_adbc(columns):
            conn.close()
            batches = self._adbc_batches(sql, columns, model=model, batch_rows=batch_rows)
        else:
            batches = self._batches(conn, sql, columns, model=model, batch_rows=batch_rows)
        return stream_reader(arrow_schema(columns), batches)

    # -- the warehouse diff engine and access checks ------------------------------------

    sql_dialect: ClassVar[str | None] = "postgres"

    def session(self) -> SqlSession:
        """A read-write connection (autocommit) with the settings of ``_DIFF_SESSION``."""
        conn = self._connect()
        sql = psycopg_module().sql
        for key, value in _DIFF_SESSION.items():
            conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(key), value))
        return PostgresSession(conn)

    def check_access(
        self, relations: Sequence[str], *, scratch_schema: str | None = None
    ) -> list[AccessProblem]:
        """has_schema_privilege / has_table_privilege for each relation and the scratch schema."""
        conn = self._connect()
        try:
            return access_problems(
                conn, self.instance_name, relations, scratch_schema, self.config.schema_search_path
            )
        finally:
            conn.close()

    # -- the ADBC read path (see _postgres_adbc) ------------------------------------------

    def _use_adbc(self, columns: list[PgColumn]) -> bool:
        reader = self.config.reader
        if reader == "copy":
            return False
        fits = all(c.oid in _adbc.SAFE_OIDS for c in columns)
        if reader == "adbc":
            if not _adbc.available():
                raise missing_driver("adbc-driver-postgresql", "postgres")
            return fits
        return fits and _adbc.available()

    def _adbc_batches(
        self, sql: str, columns: list[PgColumn], *, model: str, batch_rows: int
    ) -> Generator[pa.RecordBatch, None, None]:
        psycopg = psycopg_module()
        params = self._params()
        conninfo = psycopg.conninfo.make_conninfo(params.pop("conninfo"), **params)
        settings: dict[str, str] = {}
        if self.config.schema_search_path:
            path = ", ".join(
                psycopg.sql.Identifier(s).as_string(None) for s in self.config.schema_search_path
            )
            settings["search_path"] = f"SET LOCAL search_path TO {path}"

        def on_error(exc: BaseException) -> BaseException:
            return self._adbc_error(exc, model=model)

        return _adbc.batches(
            conninfo,
            _TRAILING.sub("", sql),
            arrow_schema(columns),
            settings=settings,
            batch_rows=batch_rows,
            on_error=on_error,
        )

    def _adbc_error(self, exc: BaseException, *, model: str) -> ModelError:
        text = redact(str(exc))
        found = re.search(r"ERROR:\s+(.*)", text)
        message = found.group(1).strip() if found else text.strip().split("\n", 1)[0]
        if isinstance(exc, pa.ArrowException):
            return ModelError(
                f"cannot convert the rows to Arrow: {message}",
                model=model,
                source=self.instance_name,
                hint="cast the column to text in the model (col::text) if PostgreSQL returns "
                "values Arrow cannot hold (NaN numerics, infinite dates)",
            )
        return ModelError(message, model=model, source=self.instance_name)

    # -- connecting -----------------------------------------------------------------------

    def _register_secrets(self) -> None:
        cfg = self.config
        if cfg.password is not None:
            register_secret(cfg.password.get_secret_value())
        if cfg.url is not None:
            url = cfg.url.get_secret_value()
            found = re.match(r"^[a-z][a-z0-9+.-]*://[^/@:]*:([^@/]*)@", url, flags=re.I)
            if found:
                from urllib.parse import unquote

                register_secret(found.group(1))
                register_secret(unquote(found.group(1)))

    def _params(self) -> dict[str, Any]:
        cfg = self.config
        params: dict[str, Any] = {"connect_timeout": cfg.connect_timeout}
        if cfg.url is not None:
            params["conninfo"] = cfg.url.get_secret_value()
        else:
            params["conninfo"] = ""
            params.update(host=cfg.host, port=cfg.port)
            if cfg.user is not None:
                params["user"] = cfg.user
            if cfg.password is not None:
                params["password"] = cfg.password.get_secret_value()
            if cfg.database is not None:
                params["dbname"] = cfg.database
        if cfg.sslmode is not None:
            params["sslmode"] = cfg.sslmode
        params["application_name"] = "undertow"
        return params

    def _target(self) -> tuple[str, str, str]:
        """host, port and user as the connection would use them (for messages)."""
        cfg = self.config
        if cfg.url is None:
            return str(cfg.host), str(cfg.port), cfg.user or "(default user)"
        psycopg = psycopg_module()
        try:
            info = psycopg.conninfo.conninfo_to_dict(cfg.url.get_secret_value())
        except psycopg.Error:
            return "?", "?", "?"
        return (
            str(info.get("host") or "localhost"),
            str(info.get("port") or 5432),
            str(info.get("user") or "(default user)"),
        )

    def _where(self) -> str:
        host, port, _ = self._target()
        return f"postgres at {host}:{port}"

    def _connect(self) -> Any:
        psycopg = psycopg_module()
        params = self._params()
        conninfo = params.pop("conninfo")
        try:
            return psycopg.connect(conninfo, autocommit=True, **params)
        except psycopg.Error as exc:
            raise self._connect_error(exc) from None

    def _connect_error(self, exc: BaseException) -> SourceError:
        host, port, user = self._target()
        text = redact(str(exc))
        sqlstate = getattr(exc, "sqlstate", None)
        lowered = text.lower()
        who = f"source {self.instance_name!r}"
        if (
            sqlstate in ("28P01", "28000")
            or "authentication failed" in lowered
            or ("role" in lowered and "does not exist" in lowered)
        ):
            return SourceError(
                f"{who}: PostgreSQL at {host}:{port} refused user {user!r}: {last_line(text)}",
                hint="check the user and password in the source config (the password is never "
                "shown) and that pg_hba.conf allows this user from this machine",
            )
        if sqlstate == "3D000" or ("database" in lowered and "does not exist" in lowered):
            return SourceError(
                f"{who}: {last_line(text)} on PostgreSQL at {host}:{port}",
                hint="check `database` (or the path of `url`); list databases with psql -l",
            )
        if "refused" in lowered or "timeout" in lowered or "could not" in lowered:
            return SourceError(
                f"{who}: cannot connect to PostgreSQL at {host}:{port}: {last_line(text)}",
                hint=f"check the server is running and reachable (pg_isready -h {host} -p {port})"
                " and that host and port in the source config are right",
            )
        return SourceError(f"{who}: cannot connect to PostgreSQL at {host}:{port}: {text}")

    def _session(self, conn: Any) -> None:
        """Settings for this transaction only: text formats COPY must use, the search path."""
        sql = psycopg_module().sql
        for key, value in _SESSION.items():
            conn.execute(sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(key), value))
        if self.config.schema_search_path:
            path = sql.SQL(", ").join(sql.Identifier(s) for s in self.config.schema_search_path)
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(path))

    # -- compiling and reading --------------------------------------------------------------

    def _declare(self, conn: Any, sql: str, *, model: str) -> list[PgColumn]:
        """Parse and plan ``sql`` as a cursor (no row is read); its columns and Arrow types."""
        psycopg = psycopg_module()
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            conn.execute("BEGIN READ ONLY")
            self._session(conn)
        text = _TRAILING.sub("", sql)
        try:
            conn.execute(_DECLARE + text)
        except psycopg.Error as exc:
            raise self._model_error(exc, offset=len(_DECLARE), model=model) from None
        result = conn.pgconn.describe_portal(_CURSOR.encode())
        encoding = conn.info.encoding
        columns = []
        for i in range(result.nfields):
            name = (result.fname(i) or b"").decode(encoding)
            columns.append(pg_column(name, result.ftype(i), result.fmod(i)))
        return columns

    def _batches(
        self, conn: Any, sql: str, columns: list[PgColumn], *, model: str, batch_rows: int
    ) -> Generator[pa.RecordBatch, None, None]:
        """COPY the rows out, parse them with Arrow, yield batches; always close ``conn``."""
        import pyarrow.csv as csv

        psycopg = psycopg_module()
        names = [f"c{i}" for i in range(len(columns))]
        loaders = [None if c.direct else text_loader(conn, c) for c in columns]
        schema = arrow_schema(columns)
        read_options = csv.ReadOptions(column_names=names, use_threads=False)
        convert = csv.ConvertOptions(
            column_types={
                n: (c.arrow if c.direct else pa.string())
                for n, c in zip(names, columns, strict=True)
            },
            true_values=["t"],
            false_values=["f"],
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )
        parse = csv.ParseOptions(newlines_in_values=True)
        max_bytes = max_chunk_bytes(batch_rows)

        def parsed(rows: list[Any]) -> pa.RecordBatch:
            table = csv.read_csv(
                pa.BufferReader(b"".join(rows)),
                read_options=read_options,
                parse_options=parse,
                convert_options=convert,
            ).combine_chunks()
            raw = table.to_batches()[0] if table.num_rows else None
            if raw is None:  # pragma: no cover - rows is never empty
                return schema.empty_table().to_batches()[0]
            return typed_batch(raw, loaders, schema)

        text = _TRAILING.sub("", sql)
        copy_sql = _COPY_HEAD + text + _COPY_TAIL
        error: BaseException | None = None
        finished = False
        try:
            with conn.cursor() as cur, cur.copy(copy_sql) as copy:
                try:
                    # COPY sends one message per row: cut the stream into chunks of at most
                    # batch_rows rows (and max_bytes bytes), each parsed by Arrow in one call.
                    rows: list[Any] = []
                    size = 0
                    for row in copy:
                        rows.append(row)
                        size += len(row)
                        if len(rows) >= batch_rows or size >= max_bytes:
                            chunk, rows, size = rows, [], 0
                            yield parsed(chunk)
                    finished = True
                    if rows:
                        yield parsed(rows)
                except Exception as exc:
                    error = self._read_error(exc, model=model)
                finally:
                    if not finished:
                        # Leaving COPY early (an error, or the reader was closed): drop the
                        # connection rather than read the remaining rows.
                        conn.pgconn.finish()
        except psycopg.Error as exc:
            if error is None and not conn.closed:
                error = self._model_error(exc, offset=len(_COPY_HEAD), model=model)
        finally:
            conn.close()
        if error is not None:
            raise error

    def _read_error(self, exc: BaseException, *, model: str) -> ModelError:
        if isinstance(exc, ModelError):
            return exc
        if isinstance(exc, psycopg_module().Error) and getattr(exc, "sqlstate", None):
            return self._model_error(exc, offset=len(_COPY_HEAD), model=model)
        return ModelError(
            f"cannot convert the rows to Arrow: {first_line(exc)}",
            model=model,
            source=self.instance_name,
            hint="cast the column to text in the model (col::text) if PostgreSQL returns values "
            "Arrow cannot hold (NaN numerics, infinite dates, multi-dimensional arrays)",
        )

    def _model_error(self, exc: BaseException, *, offset: int, model: str) -> ModelError:
        diag = getattr(exc, "diag", None)
        position: int | None = None
        raw = getattr(diag, "statement_position", None)
        if raw and str(raw).isdigit():
            position = int(raw) - offset
            if position < 1:
                position = None
        message = first_line(exc)
        detail = getattr(diag, "message_hint", None)
        return ModelError(
            message,
            model=model,
            source=self.instance_name,
            position=position,
            hint=redact(detail) if detail else None,
        )
