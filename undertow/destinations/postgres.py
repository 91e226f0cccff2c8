"""PostgreSQL destination: upsert, insert, update or delete rows of one table (psycopg 3).

The match key is the sync's ``match`` (``Batch.identifiers``): those fields are columns of
the table. Per operation, in one transaction per batch:

- ``upsert``: ``INSERT ... ON CONFLICT (match) DO UPDATE`` — needs a unique index (or
  primary key) on exactly the match columns; without one the batch fails with the
  ``CREATE UNIQUE INDEX`` statement to run.
- ``insert``: plain ``INSERT``; a row that breaks a unique constraint is rejected alone.
- ``update``: ``UPDATE ... WHERE match``; a row with no matching row is rejected.
- ``delete``: ``DELETE ... WHERE match``; a row already gone counts as deleted.

Values are sent as text and converted by PostgreSQL to each column's type (so an ISO
string lands in a ``timestamptz`` column, an object in a ``jsonb`` one). When a row does not
fit (a bad value, a NOT NULL or CHECK violation, a duplicate), the batch is replayed row by
row, each in a savepoint, so only that row is rejected, with PostgreSQL's message.

Connection errors are retryable; bad credentials and missing privileges are fatal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, SecretStr, model_validator

from undertow.destinations._table import (
    Kind,
    infer_kind,
    not_found,
    prepare_rows,
    result_of,
    text_param,
)
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    Destination,
    DestinationConfig,
    Operation,
)
from undertow.errors import FatalDeliveryError, RetryableError
from undertow.redact import redact, register_secret
from undertow.sources.base import missing_driver

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

_AUTH_HINTS = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "pg_hba.conf",
    'role "',
    "does not exist",
    "permission denied",
)
_PRIVILEGE_NEEDS: dict[Operation | None, tuple[str, ...]] = {
    Operation.UPSERT: ("INSERT", "UPDATE"),
    Operation.INSERT: ("INSERT",),
    Operation.UPDATE: ("UPDATE",),
    Operation.DELETE: ("DELETE",),
    None: ("INSERT", "UPDATE", "DELETE"),
}


class PostgresConfig(DestinationConfig):
    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True)

    type: Literal["postgres"] = "postgres"
    url: SecretStr | str | None = None
    """``postgresql://user:password@host:port/database`` (or use the separate keys below)."""
    host: str | None = None
    port: int = 5432
    user: str | None = None
    password: SecretStr | None = None
    database: str | None = None
    schema_: str = Field(default="public", alias="schema")
    table: str
    create_table: bool = False
    batch_size: int = Field(default=1000, ge=1, le=50_000)
    connect_timeout: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _one_way_to_connect(self) -> PostgresConfig:
        separate = any(v is not None for v in (self.host, self.user, self.password, self.database))
        if self.url is not None and separate:
            raise ValueError("give either `url` or host/user/password/database, not both")
        if self.url is None and (self.host is None or self.database is None):
            raise ValueError("give `url` (postgresql://...) or at least `host` and `database`")
        if isinstance(self.url, str):
            self.url = SecretStr(self.url)
        if self.url is not None and not self.url.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("`url` must start with postgresql://")
        return self


@dataclass
class _Table:
    oid: int
    columns: dict[str, str]
    """Column name -> its type, in table order."""
    unique_sets: list[frozenset[str]]
    """Column sets of the plain (no expression, no predicate) unique indexes."""
    privileges: dict[str, bool]


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise missing_driver("psycopg", "postgres") from exc
    return psycopg


class PostgresDestination(Destination[PostgresConfig]):
    """Write rows into a PostgreSQL table."""

    name: ClassVar[str] = "postgres"
    capabilities: ClassVar[Capabilities] = Capabilities(
        operations=frozenset(
            {Operation.UPSERT, Operation.INSERT, Operation.UPDATE, Operation.DELETE}
        ),
        max_batch_size=1000,
        max_concurrency=1,  # one connection, one transaction per batch
        per_record_results=True,
    )

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        super().__init__(config, name=name)
        config = self.config
        if config.password is not None:
            register_secret(config.password.get_secret_value())
        if config.url is not None:
            url_password = urlsplit(_plain(config.url)).password
            register_secret(url_password)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._table: _Table | None = None
        self._lock = asyncio.Lock()

    # -- naming and messages ---------------------------------------------------------------

    @property
    def qualified(self) -> str:
        return f"{self.config.schema_}.{self.config.table}"

    def _where(self) -> str:
        return f"postgres destination {self.instance_name!r} (table {self.qualified})"

    def _ident(self) -> sql.Identifier:
        from psycopg import sql

        return sql.Identifier(self.config.schema_, self.config.table)

    def capabilities_for(self, object: str | None) -> Capabilities:
        caps = self.capabilities
        return Capabilities(
            operations=caps.operations,
            max_batch_size=self.config.batch_size,
            max_concurrency=1,
            per_record_results=True,
        )

    # -- connections -----------------------------------------------------------------------

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        pg = _import_psycopg()
        cfg = self.config
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": cfg.connect_timeout}
        if cfg.url is not None:
            conninfo = _plain(cfg.url)
        else:
            conninfo = ""
            kwargs.update(host=cfg.host, port=cfg.port, dbname=cfg.database)
            if cfg.user is not None:
                kwargs["user"] = cfg.user
            if cfg.password is not None:
                kwargs["password"] = cfg.password.get_secret_value()
        try:
            conn: psycopg.AsyncConnection[Any] = await pg.AsyncConnection.connect(
                conninfo, **kwargs
            )
        except pg.OperationalError as exc:
            text = " ".join(str(exc).split())
            if any(h in text for h in _AUTH_HINTS):
                raise FatalDeliveryError(
                    f"{self._where()}: cannot log in: {redact(text)}",
                    hint="check the user, password and database name in the destination's "
                    "config, and that pg_hba.conf lets this machine in",
                ) from None
            raise RetryableError(
                f"{self._where()}: cannot connect: {redact(text)}",
                hint="check the host and port, and that PostgreSQL is running and reachable",
            ) from None
        return conn

    async def open(self) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = await self._connect()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        self._conn = None

    # -- table metadata --------------------------------------------------------------------

    async def _load_table(self, conn: psycopg.AsyncConnection[Any]) -> _Table | None:
        cur = await conn.execute(
            "SELECT c.oid::int, has_table_privilege(c.oid, 'INSERT'),"
            " has_table_privilege(c.oid, 'UPDATE'), has_table_privilege(c.oid, 'DELETE')"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            (self.config.schema_, self.config.table),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        oid = row[0]
        privileges = {"INSERT": row[1], "UPDATE": row[2], "DELETE": row[3]}
        cur = await conn.execute(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (oid,),
        )
        columns = {name: kind for name, kind in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT array_agg(a.attname::text) FROM pg_index i"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL"
            " AND i.indexprs IS NULL GROUP BY i.indexrelid",
            (oid,),
        )
        unique_sets = [frozenset(cols) for (cols,) in await cur.fetchall()]
        return _Table(oid, columns, unique_sets, privileges)

    def _unique_index_error(self, match: Sequence[str], conn: Any) -> FatalDeliveryError:
        from psycopg import sql

        statement = sql.SQL("CREATE UNIQUE INDEX ON {} ({});").format(
            self._ident(), sql.SQL(", ").join(sql.Identifier(m) for m in match)
        )
        cols = ", ".join(match)
        return FatalDeliveryError(
            f"{self._where()}: upsert needs a unique index (or primary key) on exactly the "
            f"match column(s) ({cols}), and the table has none",
            hint=f"run: {statement.as_string(conn)}  (or use mode insert)",
        )

    # -- check -----------------------------------------------------------------------------

    async def check(self, *, operation: Operation | None = None, match: Sequence[str] = ()) -> None:
        """Connect, find the table and check the privileges the operation(s) need.

        Without ``operation`` every privilege a sync may need (INSERT, UPDATE, DELETE) is
        checked. With ``match`` (the sync's match columns) the columns and, for upserts,
        the unique index on them are checked too.
        """
        reuse = self._conn is not None and not self._conn.closed
        conn = self._conn if reuse and self._conn is not None else await self._connect()
        try:
            table = await self._load_table(conn)
            if table is None:
                if self.config.create_table:
                    return
                raise FatalDeliveryError(
                    f"{self._where()}: the table does not exist",
                    hint="create it, or set `create_table: true` to create it from the first batch",
                )
            needed = _PRIVILEGE_NEEDS[operation]
            missing = [p for p in needed if not table.privileges[p]]
            if missing:
                from psycopg import sql

                grant = sql.SQL("GRANT {} ON {} TO CURRENT_USER;").format(
                    sql.SQL(", ").join(sql.SQL(p) for p in missing), self._ident()
                )
                raise FatalDeliveryError(
                    f"{self._where()}: the connecting user lacks the "
                    f"{', '.join(missing)} privilege(s) on the table",
                    hint=f"as the table owner, run: {grant.as_string(conn)} "
                    "(with the destination's user in place of CURRENT_USER)",
                )
            absent = [m for m in match if m not in table.columns]
            if absent:
                raise FatalDeliveryError(
                    f"{self._where()}: match column(s) {', '.join(absent)} are not columns "
                    "of the table",
                    hint=f"columns are: {', '.join(table.columns)}",
                )
            upsert = operation in (None, Operation.UPSERT)
            if match and upsert and frozenset(match) not in table.unique_sets:
                raise self._unique_index_error(match, conn)
        finally:
            if not reuse:
                await conn.close()

    # -- writing ---------------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> BatchResult:
        pg = _import_psycopg()
        async with self._lock:
            await self.open()
            assert self._conn is not None
            conn = self._conn
            try:
                return await self._write(conn, batch)
            except pg.errors.InsufficientPrivilege as exc:
                raise FatalDeliveryError(
                    f"{self._where()}: {batch.operation.value} was refused: "
                    f"{redact(exc.diag.message_primary or exc)}",
                    hint="grant the destination's user the privilege on the table",
                ) from None
            except pg.OperationalError as exc:
                await self.close()
                raise RetryableError(
                    f"{self._where()}: the connection failed during batch {batch.number}: "
                    f"{redact(' '.join(str(exc).split()))}",
                    hint="the batch was rolled back and is retried",
                ) from None
            except pg.Error as exc:
                self._table = None  # the table may have changed under us: look again
                raise FatalDeliveryError(
                    f"{self._where()}: batch {batch.number} ({batch.operation.value}) failed: "
                    f"{redact(' '.join(str(exc).split()))}",
                    hint="the batch was rolled back; fix the table or the sync and run again",
                ) from None

    async def _write(self, conn: psycopg.AsyncConnection[Any], batch: Batch) -> BatchResult:
        operation = batch.operation
        if operation not in self.capabilities.operations:
            raise FatalDeliveryError(
                f"{self._where()}: operation {operation.value!r} is not supported "
                "(upsert, insert, update, delete are)"
            )
        match = list(batch.identifiers)
        if not match and operation is not Operation.INSERT:
            raise FatalDeliveryError(
                f"{self._where()}: sync {batch.sync!r} in mode {operation.value} needs "
                "`match:` naming the key column(s) of the table",
                hint="add e.g. `match: {id: id}` to the sync",
            )
        rejected: dict[int, str] = {}
        rows = self._rows(batch, match, rejected)

        if self._table is None:
            self._table = await self._load_table(conn)
        if self._table is None:
            if not self.config.create_table:
                raise FatalDeliveryError(
                    f"{self._where()}: the table does not exist",
                    hint="create it, or set `create_table: true`",
                )
            if operation is Operation.DELETE:
                return BatchResult(rejected=rejected)  # nothing to delete
            await self._create_table(conn, [r for r in rows if r is not None], match)
            self._table = await self._load_table(conn)
            assert self._table is not None
        table = self._table

        absent = [m for m in match if m not in table.columns]
        if absent:
            raise FatalDeliveryError(
                f"{self._where()}: match column(s) {', '.join(absent)} are not columns of "
                "the table",
                hint=f"columns are: {', '.join(table.columns)}; fix the sync's `match:`",
            )
        if operation is Operation.UPSERT and frozenset(match) not in table.unique_sets:
            self._table = table = await self._load_table(conn) or table  # created since?
            if frozenset(match) not in table.unique_sets:
                raise self._unique_index_error(match, conn)

        statements = self._statements(batch, rows, match, table, rejected)
        if not statements:
            return BatchResult(rejected=rejected)
        try:
            async with conn.transaction(), conn.cursor() as cur:
                for query, indexes, params in statements:
                    if operation is Operation.UPDATE:
                        await cur.executemany(query, params, returning=True)
                        for index in indexes:
                            if cur.rowcount == 0:
                                rejected[index] = self._not_found(batch, index, match)
                            cur.nextset()
                    else:
                        await cur.executemany(query, params)
            return result_of(rejected)
        except _pg().errors.InvalidColumnReference:
            raise self._unique_index_error(match, conn) from None
        except _row_errors():
            pass
        # One row spoiled the batch: replay row by row to reject only the bad ones.
        for index in [i for _, indexes, _ in statements for i in indexes]:
            rejected.pop(index, None)
        async with conn.transaction():
            for query, indexes, params in statements:
                for index, values in zip(indexes, params, strict=True):
                    try:
                        async with conn.transaction():
                            cur = await conn.execute(query, values)
                    except _row_errors() as exc:
                        rejected[index] = _row_message(exc)
                        continue
                    if operation is Operation.UPDATE and cur.rowcount == 0:
                        rejected[index] = self._not_found(batch, index, match)
        return result_of(rejected)

    def _not_found(self, batch: Batch, index: int, match: list[str]) -> str:
        return not_found(batch, index, match, self.qualified)

    def _rows(
        self, batch: Batch, match: list[str], rejected: dict[int, str]
    ) -> list[dict[str, Any] | None]:
        """Each record with its match values; None for a record rejected here."""
        return prepare_rows(batch, match, rejected, self.qualified)

    def _statements(
        self,
        batch: Batch,
        rows: list[dict[str, Any] | None],
        match: list[str],
        table: _Table,
        rejected: dict[int, str],
    ) -> list[tuple[sql.Composed, list[int], list[list[str | None]]]]:
        """Group rows by their set of fields; one statement (and parameter list) per group."""
        operation = batch.operation
        groups: dict[tuple[str, ...], tuple[list[int], list[list[str | None]]]] = {}
        for index, row in enumerate(rows):
            if row is None:
                continue
            if operation is Operation.DELETE:
                fields: tuple[str, ...] = tuple(match)
            else:
                unknown = [f for f in row if f not in table.columns]
                if unknown:
                    rejected[index] = (
                        f"field(s) {', '.join(unknown)} are not columns of table "
                        f"{self.qualified}; add the column(s) or drop the field(s) from the "
                        "sync's mappings"
                    )
                    continue
                if operation is Operation.UPDATE:
                    fields = tuple(f for f in row if f not in match) + tuple(match)
                else:
                    fields = tuple(row)
            indexes, params = groups.setdefault(fields, ([], []))
            indexes.append(index)
            params.append([_param(row[f]) for f in fields])
        return [
            (self._statement(operation, fields, match), indexes, params)
            for fields, (indexes, params) in groups.items()
        ]

    def _statement(
        self, operation: Operation, fields: tuple[str, ...], match: list[str]
    ) -> sql.Composed:
        from psycopg import sql

        target = self._ident()
        where = sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier(m), sql.Placeholder()) for m in match
        )
        if operation is Operation.DELETE:
            return sql.SQL("DELETE FROM {} WHERE {}").format(target, where)
        if operation is Operation.UPDATE:
            rest = [f for f in fields if f not in match]
            if rest:
                assignments = sql.SQL(", ").join(
                    sql.SQL("{} = {}").format(sql.Identifier(f), sql.Placeholder()) for f in rest
                )
            else:  # only the key: touch the row so RETURNING tells whether it exists
                assignments = sql.SQL("{0} = {0}").format(sql.Identifier(match[0]))
            return sql.SQL("UPDATE {} SET {} WHERE {} RETURNING 1").format(
                target, assignments, where
            )
        insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            target,
            sql.SQL(", ").join(sql.Identifier(f) for f in fields),
            sql.SQL(", ").join(sql.Placeholder() * len(fields)),
        )
        if operation is Operation.INSERT:
            return insert
        rest = [f for f in fields if f not in match]
        conflict = sql.SQL(", ").join(sql.Identifier(m) for m in match)
        if not rest:
            return sql.SQL("{} ON CONFLICT ({}) DO NOTHING").format(insert, conflict)
        updates = sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(f)) for f in rest
        )
        return sql.SQL("{} ON CONFLICT ({}) DO UPDATE SET {}").format(insert, conflict, updates)

    async def _create_table(
        self, conn: psycopg.AsyncConnection[Any], rows: list[dict[str, Any]], match: list[str]
    ) -> None:
        from psycopg import sql

        values: dict[str, list[Any]] = {}
        for row in rows:
            for name, value in row.items():
                values.setdefault(name, []).append(value)
        for name in match:
            values.setdefault(name, [])
        columns = [
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(infer_type(vals)))
            for name, vals in values.items()
        ]
        if match:
            columns.append(
                sql.SQL("PRIMARY KEY ({})").format(
                    sql.SQL(", ").join(sql.Identifier(m) for m in match)
                )
            )
        await conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                self._ident(), sql.SQL(", ").join(columns)
            )
        )


_PG_TYPES = {
    Kind.BOOLEAN: "boolean",
    Kind.INTEGER: "bigint",
    Kind.FLOAT: "double precision",
    Kind.TEXT: "text",
    Kind.JSON: "jsonb",
}


def infer_type(values: Sequence[Any]) -> str:
    """The column type ``create_table`` gives a field, from its JSON values in the batch
    (the shared rule, ``_table.infer_kind``): boolean, bigint, double precision, text, jsonb."""
    return _PG_TYPES[infer_kind(values)]


def _param(value: Any) -> str | None:
    """Values go as text of unknown type: PostgreSQL parses them as the column's type."""
    return text_param(value)


def _plain(value: SecretStr | str) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _pg() -> Any:
    return _import_psycopg()


def _row_errors() -> tuple[type[Exception], ...]:
    """Errors caused by a row's values (bad value, constraint), not by the connection."""
    pg = _pg()
    return (pg.errors.DataError, pg.errors.IntegrityError)


def _row_message(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(exc)
    detail = getattr(diag, "message_detail", None)
    text = f"{primary} ({detail})" if detail else primary
    return f"PostgreSQL refused the row: {redact(text)}"
