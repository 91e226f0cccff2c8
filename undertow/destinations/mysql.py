"""MySQL / MariaDB destination: upsert (``ON DUPLICATE KEY UPDATE``), insert, update or delete
rows of one table (PyMySQL), on the shared table write path (``_table.py``).

- ``upsert``: ``INSERT ... ON DUPLICATE KEY UPDATE col = VALUES(col)`` — needs a unique
  index (or the primary key) on exactly the match columns (else the batch fails with the
  ``CREATE UNIQUE INDEX`` to run). MySQL applies the update on *any* unique key the row
  collides with, so other unique indexes on the table act as match keys too.
  ``VALUES(col)`` works on MariaDB and MySQL (deprecated in MySQL 8.0.20+, still supported;
  https://dev.mysql.com/doc/refman/8.0/en/insert-on-duplicate.html).
- ``update`` counts *matched* rows (``CLIENT_FOUND_ROWS``), so an update that changes
  nothing is not mistaken for a missing row.

Values are sent as parameters; objects and lists as JSON text (a ``JSON`` column takes
them). One transaction per batch; a row that breaks a constraint or does not fit its column
(strict mode) is rejected alone, with the server's message, by replaying the batch with a
savepoint per row.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, model_validator

from undertow.destinations._table import Kind, SyncTable, TableConfig, TableInfo
from undertow.destinations.base import DestinationConfig, Operation
from undertow.errors import RetryableError
from undertow.redact import redact, register_secret
from undertow.sources.base import missing_driver

DUPLICATE_DOC = "https://mariadb.com/kb/en/insert-on-duplicate-key-update/"
_TYPES = {
    Kind.BOOLEAN: "BOOLEAN",
    Kind.INTEGER: "BIGINT",
    Kind.FLOAT: "DOUBLE",
    Kind.TEXT: "TEXT",
    Kind.JSON: "JSON",
}
_CONNECTION_CODES = {2002, 2003, 2005, 2006, 2013, 2014, 2055, 1927, 1053}
_AUTH_CODES = {1044, 1045, 1049, 1698}
_ROW_CODES = {
    1048,  # column cannot be null
    1062,  # duplicate entry
    1264,  # out of range
    1265,  # data truncated
    1292,  # incorrect datetime value
    1366,  # incorrect integer/string value
    1406,  # data too long
    1364,  # field has no default
    1451,  # foreign key (parent)
    1452,  # foreign key (child)
    3140,  # invalid JSON (MySQL)
    4025,  # CHECK constraint (MariaDB)
    3819,  # CHECK constraint (MySQL)
}


class MySQLConfig(TableConfig):
    type: Literal["mysql", "mariadb"] = "mysql"
    url: SecretStr | None = None
    """``mysql://user:password@host:3306/database`` (or the separate keys below)."""
    host: str | None = None
    port: int = 3306
    user: str | None = None
    password: SecretStr | None = None
    database: str | None = None
    connect_timeout: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _one_way_to_connect(self) -> MySQLConfig:
        separate = any(v is not None for v in (self.host, self.user, self.password, self.database))
        if self.url is not None and separate:
            raise ValueError("give either `url` or host/user/password/database, not both")
        if self.url is None and (self.host is None or self.database is None):
            raise ValueError("give `url` (mysql://...) or at least `host` and `database`")
        if self.url is not None:
            parts = urlsplit(self.url.get_secret_value())
            if parts.scheme not in ("mysql", "mariadb") or not parts.path.strip("/"):
                raise ValueError("`url` must look like mysql://user:password@host:3306/database")
        return self


def _pymysql() -> Any:
    try:
        import pymysql
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise missing_driver("PyMySQL", "mysql") from exc
    return pymysql


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class MySQLDestination(SyncTable[MySQLConfig]):
    """Write rows into a MySQL or MariaDB table."""

    name: ClassVar[str] = "mysql"
    vendor: ClassVar[str] = "MariaDB/MySQL"
    docs_url: ClassVar[str | None] = DUPLICATE_DOC

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        super().__init__(config, name=name)
        cfg = self.config
        if cfg.url is not None:
            parts = urlsplit(cfg.url.get_secret_value())
            register_secret(unquote(parts.password) if parts.password else None)
            self._params: dict[str, Any] = {
                "host": parts.hostname or "localhost",
                "port": parts.port or 3306,
                "user": unquote(parts.username or "root"),
                "password": unquote(parts.password or ""),
                "database": parts.path.strip("/"),
            }
        else:
            if cfg.password is not None:
                register_secret(cfg.password.get_secret_value())
            self._params = {
                "host": cfg.host,
                "port": cfg.port,
                "user": cfg.user or "root",
                "password": cfg.password.get_secret_value() if cfg.password else "",
                "database": cfg.database,
            }

    @property
    def qualified(self) -> str:
        return f"{self._params['database']}.{self.config.table}"

    def unique_index_statement(self, match: Any) -> str:
        cols = ", ".join(_q(m) for m in match)
        return f"CREATE UNIQUE INDEX undertow_match ON {_q(self.config.table)} ({cols});"

    def connect(self, sync: str | None = None) -> Any:
        pymysql = _pymysql()
        from pymysql.constants import CLIENT

        try:
            return pymysql.connect(
                **self._params,
                autocommit=False,
                charset="utf8mb4",
                connect_timeout=self.config.connect_timeout,
                client_flag=CLIENT.FOUND_ROWS,
            )
        except pymysql.err.OperationalError as exc:
            code = exc.args[0] if exc.args else None
            text = redact(" ".join(str(exc).split()))
            if code in _AUTH_CODES:
                raise self.fatal(
                    f"cannot log in or use the database: {text}",
                    hint="check the user, password and database in the destination's config, "
                    "and the user's GRANTs",
                    sync=sync,
                ) from None
            raise RetryableError(
                f"{self.where(sync)}: cannot connect: {text}",
                hint="check the host and port, and that the server is running and reachable",
                sync=sync,
                destination=self.instance_name,
            ) from None

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        return (_pymysql().err.Error,)

    def is_row_error(self, exc: BaseException) -> bool:
        pymysql = _pymysql()
        if isinstance(exc, pymysql.err.IntegrityError | pymysql.err.DataError):
            return True
        code = exc.args[0] if getattr(exc, "args", None) else None
        return code in _ROW_CODES

    def is_connection_error(self, exc: BaseException) -> bool:
        pymysql = _pymysql()
        if isinstance(exc, pymysql.err.InterfaceError):
            return True
        code = exc.args[0] if getattr(exc, "args", None) else None
        return code in _CONNECTION_CODES

    def row_message(self, exc: BaseException) -> str:
        code, text = (*exc.args, "")[:2] if getattr(exc, "args", None) else ("?", str(exc))
        return f"{self.vendor} refused the row ({code}): {redact(' '.join(str(text).split()))}"

    def load_table(self, conn: Any) -> TableInfo | None:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT column_name, column_type FROM information_schema.columns"
                " WHERE table_schema = DATABASE() AND table_name = %s ORDER BY ordinal_position",
                (self.config.table,),
            )
            columns = {str(n): str(t) for n, t in cur.fetchall()}
            if not columns:
                return None
            cur.execute(
                "SELECT index_name, column_name FROM information_schema.statistics"
                " WHERE table_schema = DATABASE() AND table_name = %s AND non_unique = 0"
                " ORDER BY index_name, seq_in_index",
                (self.config.table,),
            )
            indexes: dict[str, set[str]] = {}
            for index, column in cur.fetchall():
                indexes.setdefault(str(index), set()).add(str(column))
        return TableInfo(columns, [frozenset(s) for s in indexes.values()])

    def create_table(self, conn: Any, kinds: dict[str, Kind], match: list[str]) -> None:
        columns = []
        for name, kind in kinds.items():
            sql_type = _TYPES[kind]
            if name in match and kind in (Kind.TEXT, Kind.JSON):
                sql_type = "VARCHAR(255)"  # a key cannot be TEXT
            columns.append(f"{_q(name)} {sql_type}")
        if match:
            columns.append(f"PRIMARY KEY ({', '.join(_q(m) for m in match)})")
        with conn.cursor() as cur:
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {_q(self.config.table)} ({', '.join(columns)})"
                " CHARACTER SET utf8mb4"
            )

    def statement(self, operation: Operation, fields: tuple[str, ...], match: list[str]) -> str:
        table = _q(self.config.table)
        where = " AND ".join(f"{_q(m)} = %s" for m in match)
        if operation is Operation.DELETE:
            return f"DELETE FROM {table} WHERE {where}"
        rest = [f for f in fields if f not in match]
        if operation is Operation.UPDATE:
            sets = ", ".join(f"{_q(f)} = %s" for f in rest) or f"{_q(match[0])} = {_q(match[0])}"
            return f"UPDATE {table} SET {sets} WHERE {where}"
        insert = (
            f"INSERT INTO {table} ({', '.join(_q(f) for f in fields)}) "
            f"VALUES ({', '.join(['%s'] * len(fields))})"
        )
        if operation is Operation.INSERT:
            return insert
        updates = ", ".join(f"{_q(f)} = VALUES({_q(f)})" for f in rest) or (
            f"{_q(match[0])} = {_q(match[0])}"
        )
        return f"{insert} ON DUPLICATE KEY UPDATE {updates}"
