"""MySQL and MariaDB as a source (``type: mysql`` or ``type: mariadb``).

Two drivers, each for what it does best. PyMySQL (pure Python, small) connects for
:meth:`check` and :meth:`describe`: the model's SQL runs as ``SELECT * FROM (<sql>) LIMIT 0``,
which the server compiles without reading a row, and the result's column metadata (type
code, length, scale, flags, character set) gives the Arrow schema. connectorx (Rust) then
streams the rows into Arrow record batches of ``batch_rows`` rows.

Why connectorx: 1M rows of 11 columns from MariaDB on this project's machines measured
about 400k rows/s with connectorx, 108k with asyncmy, 32k with PyMySQL (Python tuples,
then Arrow); mysql-connector-python's C extension does not load on Debian 12 (it needs
OpenSSL 3.2) and mysqlclient ships no wheel. connectorx's own type mapping is not exact
for every type (DECIMAL goes through a 96-bit ``rust_decimal`` and panics past it), so the
extraction query casts such columns (DECIMAL to text, GEOMETRY to WKT) and each batch is
cast to the schema :meth:`describe` derived from the server's metadata.

Every connection sets ``time_zone = '+00:00'`` (TIMESTAMP values come out in UTC) and a
read-only transaction mode.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import quote, unquote, urlsplit

import pyarrow as pa
from pydantic import SecretStr, model_validator

from undertow.errors import ModelError, SourceError
from undertow.redact import redact, register_secret
from undertow.sources._mysql_access import access_problems
from undertow.sources._mysql_types import (
    MyColumn,
    arrow_schema,
    error_code,
    error_text,
    mysql_column,
    pymysql_module,
    quote_ident,
    typed_batch,
)
from undertow.sources.base import (
    DEFAULT_BATCH_ROWS,
    JSON_FIELD,
    AccessProblem,
    CursorSession,
    Source,
    SourceConfig,
    SqlSession,
    mark_fields,
    missing_driver,
    stream_reader,
)

_TRAILING = re.compile(r"[\s;]+$")
_DESCRIBE_HEAD = "SELECT * FROM (\n"
_DESCRIBE_TAIL = "\n) AS _ut_describe LIMIT 0"
_EXTRACT_HEAD = "SELECT {columns} FROM (\n"
_EXTRACT_TAIL = "\n) AS _ut_extract"
_SESSION = ["SET time_zone = '+00:00'", "SET SESSION TRANSACTION READ ONLY"]
_NEAR = re.compile(r"near '(.*)' at line (\d+)\s*$", re.S)
_NAMED = re.compile(r"^(?:Unknown column|Table) '([^']+)'")


class MySQLConfig(SourceConfig):
    """``type: mysql`` (or ``mariadb``): a URL, or host/port/user/password/database."""

    type: Literal["mysql", "mariadb"] = "mysql"
    url: SecretStr | None = None
    """mysql://user:password@host:port/database (a secret: use ``${ENV}``)."""
    host: str | None = None
    port: int = 3306
    user: str | None = None
    password: SecretStr | None = None
    database: str | None = None
    connect_timeout: int = 10
    """Seconds to wait for the server to answer a connection."""
    tinyint1_as_bool: bool = True
    """Read ``TINYINT(1)`` (what ``BOOLEAN`` is in MySQL) as bool: non-zero is true."""

    @model_validator(mode="after")
    def _one_way_to_connect(self) -> MySQLConfig:
        if self.url is None and self.host is None:
            raise ValueError("set either `url` or `host` (with port, user, password, database)")
        if self.url is not None and self.host is not None:
            raise ValueError("set either `url` or `host`, not both")
        if self.url is not None:
            parts = urlsplit(self.url.get_secret_value())
            if parts.scheme not in ("mysql", "mariadb"):
                raise ValueError("`url` must start with mysql:// or mariadb://")
        return self


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    user: str | None
    password: str | None
    database: str | None


class MySQLSource(Source):
    """Runs models on MySQL or MariaDB; one connection per call, closed when the call ends."""

    name: ClassVar[str] = "mysql"
    Config: ClassVar[type[SourceConfig]] = MySQLConfig

    config: MySQLConfig

    def __init__(self, config: SourceConfig, *, name: str, base_dir: str = ".") -> None:
        super().__init__(config, name=name, base_dir=base_dir)
        self._target = _target(self.config)
        register_secret(self._target.password)
        if self.config.url is not None:
            register_secret(quote(self._target.password or "", safe=""))

    def quote_identifier(self, name: str) -> str:
        return quote_ident(name)

    # -- the Source interface ---------------------------------------------------------------

    def check(self) -> None:
        pymysql = pymysql_module()
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchall()
        except pymysql.MySQLError as exc:
            raise SourceError(
                f"source {self.instance_name!r} ({self._where()}) cannot run a query: {error_text(exc)}"
            ) from None
        finally:
            conn.close()

    def describe(self, sql: str, *, model: str) -> pa.Schema:
        columns = self._describe(sql, model=model)
        json = [c.name for c in columns if c.json]
        return mark_fields(arrow_schema(columns), json, JSON_FIELD)

    def extract(
        self, sql: str, *, model: str, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> pa.RecordBatchReader:
        if batch_rows <= 0:
            raise ValueError(f"batch_rows must be positive, got {batch_rows}")
        columns = self._describe(sql, model=model)
        cx = _connectorx()
        text = _TRAILING.sub("", sql)
        select = ", ".join(f"{c.expression} AS {quote_ident(c.name)}" for c in columns)
        tag = f"/* undertow {uuid.uuid4().hex} */ "
        query = tag + _EXTRACT_HEAD.format(columns=select) + text + _EXTRACT_TAIL
        try:
            reader = cx.read_sql(
                self._connectorx_url(),
                query,
                return_type="arrow_stream",
                batch_size=batch_rows,
                pre_execution_query=_SESSION,
            )
        except BaseException as exc:
            _reraise_interrupts(exc)
            raise self._stream_error(exc, model=model) from None
        batches = self._batches(reader, columns, tag, model=model)
        return stream_reader(arrow_schema(columns), batches)

    def check_access(
        self, relations: Sequence[str], *, scratch_schema: str | None = None
    ) -> list[AccessProblem]:
        """SELECT on each relation, probed with ``SELECT 1 FROM <relation> LIMIT 0`` (the
        server's own decision: roles and wildcard grants included); the scratch database's
        privileges read from SHOW GRANTS (see :func:`access_problems`)."""
        pymysql = pymysql_module()
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                return access_problems(
                    cur, self.instance_name, relations, scratch_schema, self._target.database
                )
        except pymysql.MySQLError as exc:
            raise SourceError(
                f"source {self.instance_name!r} ({self._where()}) cannot check privileges: "
                f"{error_text(exc)}"
            ) from None
        finally:
            conn.close()

    # -- connecting -----------------------------------------------------------------------

    def _where(self) -> str:
        return f"{self.config.type} at {self._target.host}:{self._target.port}"

    def _connect(self, *, read_only: bool = True) -> Any:
        pymysql = pymysql_module()
        t = self._target
        try:
            conn = pymysql.connect(
                host=t.host,
                port=t.port,
                user=t.user,
                password=t.password or "",
                database=t.database,
                connect_timeout=self.config.connect_timeout,
                charset="utf8mb4",
                autocommit=True,
            )
        except pymysql.MySQLError as exc:
            raise self._connect_error(exc) from None
        try:
            with conn.cursor() as cur:
                for statement in _SESSION if read_only else _SESSION[:1]:
                    cur.execute(statement)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_error(self, exc: BaseException) -> SourceError:
        t = self._target
        code = error_code(exc)
        text = error_text(exc)
        who = f"source {self.instance_name!r}"
        where = f"{self.config.type} at {t.host}:{t.port}"
        if code in (1045, 1698):
            return SourceError(
                f"{who}: {where} refused user {t.user or '(default user)'!r}: {text}",
                hint="check the user and password in the source config (the password is never "
                "shown) and that the user may connect from this host ('user'@'host' in "
                "mysql.user)",
            )
        if code == 1049:
            return SourceError(
                f"{who}: {text} on {where}",
                hint="check `database` (or the path of `url`); list them with SHOW DATABASES",
            )
        if code == 1044:
            return SourceError(
                f"{who}: {text} on {where}",
                hint=f"grant read access: GRANT SELECT ON `{t.database}`.* TO "
                f"'{t.user}'@'%'; (run as an administrator)",
            )
        if code in (2002, 2003, 2005, 2006, 2013):
            return SourceError(
                f"{who}: cannot connect to {where}: {text}",
                hint=f"check the server is running and reachable (mysqladmin ping -h {t.host} "
                f"-P {t.port}) and that host and port in the source config are right",
            )
        return SourceError(f"{who}: cannot connect to {where}: {text}")

    def _connectorx_url(self) -> str:
        t = self._target
        auth = quote(t.user or "", safe="")
        if t.password:
            auth += ":" + quote(t.password, safe="")
        host = f"[{t.host}]" if ":" in t.host else t.host
        database = quote(t.database or "", safe="")
        return f"mysql://{auth}@{host}:{t.port}/{database}"

    # -- compiling and reading --------------------------------------------------------------

    def _describe(self, sql: str, *, model: str) -> list[MyColumn]:
        pymysql = pymysql_module()
        text = _TRAILING.sub("", sql)
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute(_DESCRIBE_HEAD + text + _DESCRIBE_TAIL)
                fields = cur._result.fields  # the full metadata: flags and character set
                cur.fetchall()
        except pymysql.MySQLError as exc:
            raise self._model_error(exc, text, model=model) from None
        finally:
            conn.close()
        return [mysql_column(f, bool_tinyint=self.config.tinyint1_as_bool) for f in fields]

    def _batches(
        self, reader: pa.RecordBatchReader, columns: list[MyColumn], tag: str, *, model: str
    ) -> Generator[pa.RecordBatch, None, None]:
        schema = arrow_schema(columns)
        finished = False
        try:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    finished = True
                    return
                except BaseException as exc:
                    _reraise_interrupts(exc)
                    raise self._stream_error(exc, model=model) from None
                yield typed_batch(batch, schema)
        finally:
            reader.close()
            if not finished:
                self._kill(tag)

    def _kill(self, tag: str) -> None:
        """Stop the query tagged ``tag``: a reader closed early leaves connectorx's worker
        blocked on a full channel, its connection still streaming rows nobody reads."""
        pymysql = pymysql_module()
        try:
            conn = self._connect()
        except SourceError:
            return
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT id FROM information_schema.processlist WHERE info LIKE %s "
                    "AND id <> CONNECTION_ID()",
                    (tag.strip() + "%",),
                )
                for (thread,) in cur.fetchall():
                    cur.execute(f"KILL QUERY {int(thread)}")
        except pymysql.MySQLError:
            pass  # it finished meanwhile, or this user may not see it: nothing more to do
        finally:
            conn.close()

    def _model_error(self, exc: BaseException, text: str, *, model: str) -> ModelError:
        message = error_text(exc)
        return ModelError(
            message,
            model=model,
            source=self.instance_name,
            position=_position(message, text, len(_DESCRIBE_HEAD)),
        )

    def _stream_error(self, exc: BaseException, *, model: str) -> ModelError:
        message = redact(str(exc).strip().split("\n", 1)[0])
        found = re.search(r"ERROR (\d+) \(\w+\): (.*?) \}?$", message)
        if found:
            message = f"({found.group(1)}) {found.group(2)}"
        return ModelError(
            f"cannot read the rows: {message}",
            model=model,
            source=self.instance_name,
            hint="cast the column in the model (CAST(col AS CHAR)) if the server returns "
            "values Arrow cannot hold (zero dates, TIME beyond 24 hours)",
        )

    # -- the warehouse diff engine ----------------------------------------------------------

    sql_dialect: ClassVar[str | None] = "mysql"

    def session(self) -> SqlSession:
        """A read-write connection (autocommit, UTC). The scratch schema is a database."""
        return CursorSession(self._connect(read_only=False), "mysql", placeholder="%s")


def _target(cfg: MySQLConfig) -> _Target:
    if cfg.url is None:
        return _Target(
            host=cfg.host or "localhost",
            port=cfg.port,
            user=cfg.user,
            password=cfg.password.get_secret_value() if cfg.password else None,
            database=cfg.database,
        )
    parts = urlsplit(cfg.url.get_secret_value())
    return _Target(
        host=parts.hostname or "localhost",
        port=parts.port or 3306,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        database=unquote(parts.path.lstrip("/")) or None,
    )


def _position(message: str, text: str, offset: int) -> int | None:
    """The 1-based character in ``text`` that MariaDB/MySQL's error points at, if it says.

    Syntax errors say ``near '<rest of the statement>' at line N`` (lines of the statement
    sent, whose model text starts at character ``offset``); unknown columns and tables are
    found by their name in the text.
    """
    near = _NEAR.search(message)
    if near:
        rest, line = near.group(1), int(near.group(2))
        sent = _DESCRIBE_HEAD + text + _DESCRIBE_TAIL
        start = 0
        for _ in range(line - 1):
            start = sent.find("\n", start) + 1
            if start == 0:
                return None
        at = sent.find(rest, start) if rest else len(sent)
        if at < 0:
            return None
        return max(1, min(at - offset, len(text)) + 1)
    named = _NAMED.match(message.split(") ", 1)[-1])
    if named:
        name = named.group(1).rsplit(".", 1)[-1]
        found = re.search(r"(?<![\w$`])`?" + re.escape(name) + r"`?(?![\w$])", text, re.I)
        if found:
            return found.start() + 1
    return None


def _reraise_interrupts(exc: BaseException) -> None:
    """connectorx raises a Rust panic as a BaseException: convert it, but not Ctrl-C."""
    if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
        raise exc


def _connectorx() -> Any:
    try:
        import connectorx
    except ImportError:
        raise missing_driver("connectorx", "mysql") from None
    return connectorx
