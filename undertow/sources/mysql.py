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
import pyarrow.compute as pc
from pydantic import SecretStr, model_validator

from undertow.errors import ModelError, SourceError
from undertow.redact import redact, register_secret
from undertow.sources.base import (
    DEFAULT_BATCH_ROWS,
    AccessProblem,
    CursorSession,
    Source,
    SourceConfig,
    SqlSession,
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
_BINARY_CHARSET = 63
_UNSIGNED = 32
_ENUM = 256
_SET = 2048

# MySQL column type codes (include/mysql_com.h, enum_field_types).
_DECIMAL, _TINY, _SHORT, _LONG, _FLOAT, _DOUBLE, _NULL, _TIMESTAMP = 0, 1, 2, 3, 4, 5, 6, 7
_LONGLONG, _INT24, _DATE, _TIME, _DATETIME, _YEAR, _NEWDATE, _VARCHAR, _BIT = range(8, 17)
_JSON, _NEWDECIMAL, _ENUM_TYPE, _SET_TYPE = 245, 246, 247, 248
_BLOBS = {249, 250, 251, 252}
_STRINGS = {_VARCHAR, 253, 254, _ENUM_TYPE, _SET_TYPE, *_BLOBS}
_GEOMETRY = 255
_INTEGERS = {
    _TINY: (pa.int8(), pa.uint8()),
    _SHORT: (pa.int16(), pa.uint16()),
    _INT24: (pa.int32(), pa.uint32()),
    _LONG: (pa.int32(), pa.uint32()),
    _LONGLONG: (pa.int64(), pa.uint64()),
}
_SIMPLE = {
    _FLOAT: pa.float32(),
    _DOUBLE: pa.float64(),
    _DATE: pa.date32(),
    _NEWDATE: pa.date32(),
    _TIME: pa.time64("us"),
    _DATETIME: pa.timestamp("us"),
    _TIMESTAMP: pa.timestamp("us", tz="UTC"),
    _YEAR: pa.int16(),
    _BIT: pa.binary(),
    _JSON: pa.string(),
    _GEOMETRY: pa.string(),
}


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


@dataclass(frozen=True)
class _Column:
    name: str
    arrow: pa.DataType
    expression: str
    """What the extraction query selects for it (a cast where connectorx is not exact)."""


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
        return _quote(name)

    # -- the Source interface ---------------------------------------------------------------

    def check(self) -> None:
        pymysql = _pymysql()
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchall()
        except pymysql.MySQLError as exc:
            raise SourceError(
                f"source {self.instance_name!r} ({self._where()}) cannot run a query: {_text(exc)}"
            ) from None
        finally:
            conn.close()

    def describe(self, sql: str, *, model: str) -> pa.Schema:
        return _schema(self._describe(sql, model=model))

    def extract(
        self, sql: str, *, model: str, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> pa.RecordBatchReader:
        if batch_rows <= 0:
            raise ValueError(f"batch_rows must be positive, got {batch_rows}")
        columns = self._describe(sql, model=model)
        cx = _connectorx()
        text = _TRAILING.sub("", sql)
        select = ", ".join(f"{c.expression} AS {_quote(c.name)}" for c in columns)
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
        return stream_reader(_schema(columns), batches)

    def check_access(
        self, relations: Sequence[str], *, scratch_schema: str | None = None
    ) -> list[AccessProblem]:
        """SELECT on each relation, probed with ``SELECT 1 FROM <relation> LIMIT 0`` (the
        server's own decision: roles and wildcard grants included); the scratch database's
        privileges read from SHOW GRANTS (see :func:`_access_problems`)."""
        pymysql = _pymysql()
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                return _access_problems(
                    cur, self.instance_name, relations, scratch_schema, self._target.database
                )
        except pymysql.MySQLError as exc:
            raise SourceError(
                f"source {self.instance_name!r} ({self._where()}) cannot check privileges: "
                f"{_text(exc)}"
            ) from None
        finally:
            conn.close()

    # -- connecting -----------------------------------------------------------------------

    def _where(self) -> str:
        return f"{self.config.type} at {self._target.host}:{self._target.port}"

    def _connect(self, *, read_only: bool = True) -> Any:
        pymysql = _pymysql()
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
        code = _code(exc)
        text = _text(exc)
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

    def _describe(self, sql: str, *, model: str) -> list[_Column]:
        pymysql = _pymysql()
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
        return [_column(f, bool_tinyint=self.config.tinyint1_as_bool) for f in fields]

    def _batches(
        self, reader: pa.RecordBatchReader, columns: list[_Column], tag: str, *, model: str
    ) -> Generator[pa.RecordBatch, None, None]:
        schema = _schema(columns)
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
                yield _typed(batch, schema)
        finally:
            reader.close()
            if not finished:
                self._kill(tag)

    def _kill(self, tag: str) -> None:
        """Stop the query tagged ``tag``: a reader closed early leaves connectorx's worker
        blocked on a full channel, its connection still streaming rows nobody reads."""
        pymysql = _pymysql()
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
        message = _text(exc)
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
        return CursorSession(self._connect(read_only=False), "mysql")


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


def _column(field: Any, *, bool_tinyint: bool) -> _Column:
    """The Arrow type and the extraction expression of one result column."""
    name: str = field.name
    code: int = field.type_code
    unsigned = bool(field.flags & _UNSIGNED)
    plain = _quote(name)
    if code in _INTEGERS:
        if code == _TINY and field.length == 1 and not unsigned and bool_tinyint:
            return _Column(name, pa.bool_(), plain)
        signed_type, unsigned_type = _INTEGERS[code]
        return _Column(name, unsigned_type if unsigned else signed_type, plain)
    if code in (_DECIMAL, _NEWDECIMAL):
        scale = int(field.scale)
        precision = int(field.length) - (1 if scale > 0 else 0) - (0 if unsigned else 1)
        precision = max(precision, scale, 1)
        arrow = pa.decimal128(precision, scale) if precision <= 38 else pa.string()
        return _Column(name, arrow, f"CAST({plain} AS CHAR)")
    if code == _GEOMETRY:
        return _Column(name, pa.string(), f"ST_AsText({plain})")
    if code == _NULL:
        return _Column(name, pa.string(), f"CAST({plain} AS CHAR)")
    if code in _SIMPLE:
        return _Column(name, _SIMPLE[code], plain)
    if code in _STRINGS:
        binary = field.charsetnr == _BINARY_CHARSET and not field.flags & (_ENUM | _SET)
        return _Column(name, pa.binary() if binary else pa.string(), plain)
    return _Column(name, pa.string(), f"CAST({plain} AS CHAR)")


def _schema(columns: list[_Column]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow) for c in columns])


def _typed(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast connectorx's batch to the schema from the server's metadata."""
    arrays = []
    for array, field in zip(batch.columns, schema, strict=True):
        if array.type == field.type:
            arrays.append(array)
        elif pa.types.is_boolean(field.type) and pa.types.is_integer(array.type):
            arrays.append(pc.not_equal(array, 0))
        else:
            arrays.append(array.cast(field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


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


_SCRATCH_PRIVILEGES = ("CREATE", "DROP", "SELECT", "INSERT", "DELETE", "ALTER")
"""What the warehouse diff engine does in its scratch database: CREATE DATABASE IF NOT
EXISTS, CREATE TABLE (AS SELECT), INSERT, DELETE, ALTER TABLE ... RENAME, DROP TABLE."""
_GRANT_LINE = re.compile(
    r"^(GRANT|REVOKE) (.+?) ON (\*|`(?:[^`]|``)*`)\.(\*|`(?:[^`]|``)*`) (?:TO|FROM) ", re.S
)
_TABLE_DENIED, _NO_SUCH_TABLE, _NO_DATABASE_SELECTED, _NO_SUCH_DATABASE = 1142, 1146, 1046, 1049
_CONNECTION_GONE = {1053, 1317, 1927, 4031}


def _access_problems(
    cur: Any,
    source: str,
    relations: Sequence[str],
    scratch_schema: str | None,
    database: str | None,
) -> list[AccessProblem]:
    """The privileges the session's user lacks (see :meth:`MySQLSource.check_access`).

    Relations are probed rather than looked up: ``information_schema`` shows a user only its
    own grants, not those of its roles. The probe cannot tell a table the user may not read
    from one that does not exist (the server answers "SELECT command denied" for both), so
    only a user with some privilege there hears "does not exist". The scratch database's
    privileges come from ``SHOW GRANTS``: the user's global and database-level grants, and
    those of its active roles (MariaDB lists them; MySQL 8 with ``USING`` its active roles).
    """
    cur.execute("SELECT CURRENT_USER(), VERSION(), @@lower_case_table_names")
    current, version, lower_case = cur.fetchone()
    user, _, host = str(current).rpartition("@")
    who = f"{_string(user)}@{_string(host)}"
    problems: list[AccessProblem] = []
    for relation in relations:
        problem = _read_problem(cur, source, relation, database, who)
        if problem is not None and problem not in problems:
            problems.append(problem)
    if scratch_schema is None:
        return problems
    grants = _show_grants(cur, mariadb="mariadb" in str(version).lower())
    have = _database_privileges(grants, scratch_schema, ignore_case=bool(int(lower_case)))
    missing = [p for p in _SCRATCH_PRIVILEGES if p not in have]
    if missing:
        cur.execute(
            "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (scratch_schema,)
        )
        where = f"database {scratch_schema!r}"
        if not cur.fetchall():
            where += " (not there yet, the engine creates it, or not visible to this user)"
        pattern = _quote(re.sub(r"([\\_%])", r"\\\1", scratch_schema))
        problems.append(
            AccessProblem(
                f"source {source!r}: the warehouse diff engine keeps its tables in {where}, "
                f"where user {who} lacks {_and(missing)}",
                (f"GRANT {', '.join(_SCRATCH_PRIVILEGES)} ON {pattern}.* TO {who};",),
            )
        )
    return problems


def _read_problem(
    cur: Any, source: str, relation: str, database: str | None, who: str
) -> AccessProblem | None:
    """Why the user cannot read ``relation`` (``[db.]name``), or None if it can."""
    pymysql = _pymysql()
    parts = relation.split(".")
    name, schema = parts[-1], (parts[-2] if len(parts) > 1 else database)
    target = f"{_quote(schema)}.{_quote(name)}" if schema else _quote(name)
    shown = f"{schema}.{name}" if schema else name
    try:
        cur.execute(f"SELECT 1 FROM {target} LIMIT 0")
        cur.fetchall()
    except pymysql.MySQLError as exc:
        code = _code(exc)
        if code is None or not 1000 <= code < 2000 or code in _CONNECTION_GONE:
            raise
        if code == _TABLE_DENIED:
            return AccessProblem(
                f"source {source!r}: user {who} cannot read {shown} (missing SELECT, or no such "
                "table: the server does not tell a user without privileges on it)",
                (f"GRANT SELECT ON {target} TO {who};",),
            )
        if code in (_NO_SUCH_TABLE, _NO_SUCH_DATABASE):
            return AccessProblem(f"source {source!r}: table or view {shown} does not exist")
        if code == _NO_DATABASE_SELECTED:
            return AccessProblem(
                f"source {source!r}: {name} names no database and the source config sets none "
                f"(qualify it as <database>.{name} or set `database`)"
            )
        return AccessProblem(f"source {source!r}: user {who} cannot read {shown}: {_text(exc)}")
    return None


def _show_grants(cur: Any, *, mariadb: bool) -> list[str]:
    """The GRANT statements of the current user and of its active roles.

    MariaDB's ``SHOW GRANTS`` includes those of the enabled roles; MySQL 8's lists the roles
    only, and expands them with ``USING`` (MySQL 5.7, without roles, has no CURRENT_ROLE()).
    """
    pymysql = _pymysql()
    if not mariadb:
        try:
            cur.execute("SELECT CURRENT_ROLE()")
            (roles,) = cur.fetchone()
            if roles and roles != "NONE":
                cur.execute(f"SHOW GRANTS FOR CURRENT_USER() USING {roles}")
                return [str(row[0]) for row in cur.fetchall()]
        except pymysql.MySQLError as exc:
            code = _code(exc)
            if code is None or not 1000 <= code < 2000 or code in _CONNECTION_GONE:
                raise
    cur.execute("SHOW GRANTS")
    return [str(row[0]) for row in cur.fetchall()]


def _database_privileges(grants: list[str], database: str, *, ignore_case: bool) -> set[str]:
    """The privileges ``grants`` give on every table of ``database``: global ones and those
    on database patterns it matches (``_`` and ``%`` are wildcards, ``\\`` escapes), less
    MySQL's partial revokes. A union: where several patterns match, the server uses only the
    most specific, so this may see more than the server grants."""
    have: set[str] = set()
    revoked: set[str] = set()
    for line in grants:
        found = _GRANT_LINE.match(line)
        if found is None or found.group(4) != "*":
            continue  # roles, proxies, routines, single tables
        verb, privileges, on = found.group(1), found.group(2), found.group(3)
        if on != "*" and not _like(on[1:-1].replace("``", "`"), database, ignore_case):
            continue
        names = {p.strip().upper() for p in privileges.split(",")}
        if any(n.startswith("ALL") for n in names):
            names = set(_SCRATCH_PRIVILEGES)
        (have if verb == "GRANT" else revoked).update(names)
    return have - revoked


def _like(pattern: str, name: str, ignore_case: bool) -> bool:
    """Whether database ``name`` matches the database pattern of a grant."""
    regex = []
    escaped = False
    for char in pattern:
        if escaped:
            regex.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            regex.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
    flags = re.S | (re.I if ignore_case else 0)
    return re.fullmatch("".join(regex), name, flags) is not None


def _string(value: str) -> str:
    """``value`` as a string literal (the user and host of a GRANT)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _reraise_interrupts(exc: BaseException) -> None:
    """connectorx raises a Rust panic as a BaseException: convert it, but not Ctrl-C."""
    if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
        raise exc


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _code(exc: BaseException) -> int | None:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _text(exc: BaseException) -> str:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        return redact(f"({args[0]}) {args[1]}")
    return redact(str(exc).strip().split("\n", 1)[0])


def _pymysql() -> Any:
    try:
        import pymysql
    except ImportError:
        raise missing_driver("PyMySQL", "mysql") from None
    return pymysql


def _connectorx() -> Any:
    try:
        import connectorx
    except ImportError:
        raise missing_driver("connectorx", "mysql") from None
    return connectorx
