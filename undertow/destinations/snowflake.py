"""Snowflake table destination (``type: snowflake``): upsert, insert, update or delete rows of one
table by ``MERGE`` from a staged batch, on the shared table write path (``_table.py``), with
the Snowflake source's connection keys and login code (``sources/_snowflake_login.py``).

A batch takes a few statements, whatever its size:

1. **stage**: ``CREATE OR REPLACE TEMPORARY TABLE UNDERTOW_STAGE`` (session-private, dropped
   when the session ends), then the rows go in as *one bound JSON document* per chunk of at
   most ``STAGE_CHUNK_BYTES``: ``INSERT ... SELECT f.value:c0::VARCHAR, ... FROM
   TABLE(FLATTEN(INPUT => PARSE_JSON(?)))``. Every value is staged as text (objects and lists
   as JSON); a null is a missing key, which reads back as SQL NULL.
2. **check**: one query finds the rows Snowflake would refuse, from the table's own column
   types: a value ``TRY_CAST`` (or ``TRY_PARSE_JSON``) cannot convert, text longer than its
   ``VARCHAR(n)``, a null in a ``NOT NULL`` column. Each is rejected with the field and the
   column type, never the value.
3. **write**: one ``MERGE`` for the whole batch, the other rows cast to the column types
   inside Snowflake: ``WHEN MATCHED THEN UPDATE ... WHEN NOT MATCHED THEN INSERT`` (upsert),
   ``WHEN MATCHED THEN UPDATE`` (update; the rows that match nothing are found by the same
   kind of query first and rejected), ``WHEN MATCHED THEN DELETE`` (delete), ``ON FALSE ...
   INSERT`` (insert). Rows carrying different fields get their own ``WHEN ... AND
   "__UT_G" = n`` clauses, so a batch is still one statement, and a statement is atomic: no
   transaction is held open (Snowflake commits DDL on its own, so the stage table is made
   before it; https://docs.snowflake.com/en/sql-reference/transactions#ddl).
   Rows of one batch with the same match values: the last one wins (Snowflake refuses a
   MERGE that joins several source rows to one target row: ERROR_ON_NONDETERMINISTIC_MERGE,
   https://docs.snowflake.com/en/sql-reference/sql/merge#duplicate-join-behavior).
4. If the MERGE still fails on a row's value (anything the check did not foresee), it is
   run again row by row, so only the bad rows are rejected, with Snowflake's message.

Snowflake enforces no primary key or unique constraint (only NOT NULL,
https://docs.snowflake.com/en/sql-reference/constraints-overview): the MERGE's ``ON`` is
what makes an upsert, so no unique index is needed; ``create_table`` still declares the
match columns the primary key, for readers of the table.

Names follow Snowflake's rule for unquoted identifiers: a plain ``table``, ``database``,
``schema`` or field name (letters, digits, underscores) is upper-cased (``customers`` is
``CUSTOMERS``); any other is used exactly as written, quoted. Fields are matched to the
table's columns ignoring case.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import orjson
from pydantic import model_validator

from undertow.destinations._table import (
    Group,
    Kind,
    SyncTable,
    TableConfig,
    TableInfo,
    not_found,
    text_param,
)
from undertow.destinations.base import Batch, DestinationConfig, Operation
from undertow.errors import RetryableError
from undertow.redact import redact
from undertow.sources import _snowflake_login as _login
from undertow.sources._snowflake_login import SnowflakeConnection

MERGE_DOC = "https://docs.snowflake.com/en/sql-reference/sql/merge"
STAGE = "UNDERTOW_STAGE"
STAGE_CHUNK_BYTES = 8_000_000
"""The JSON bound in one staging statement stays below this: a bound text value may hold at
most 16 MB (https://docs.snowflake.com/en/sql-reference/data-types-text#varchar)."""
_INDEX, _GROUP = "__UT_I", "__UT_G"
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_JSON_TYPES = frozenset({"VARIANT", "OBJECT", "ARRAY"})
_TYPES = {
    Kind.BOOLEAN: "BOOLEAN",
    Kind.INTEGER: "NUMBER(38,0)",
    Kind.FLOAT: "FLOAT",
    Kind.TEXT: "VARCHAR",
    Kind.JSON: "VARIANT",
}
_CONNECTION_ERRNOS = {250001, 250002, 250003, 251005, 251006, 251011, 251012, 390114}
"""The connector's "connection closed / failed to execute request / login timed out", and
an expired session token."""


class SnowflakeTableConfig(SnowflakeConnection, TableConfig):
    """``type: snowflake``: the Snowflake source's connection keys, plus the table keys every
    table destination takes; ``database`` and ``schema`` say where the table is."""

    type: Literal["snowflake"] = "snowflake"

    @model_validator(mode="after")
    def _table_home(self) -> SnowflakeTableConfig:
        if not self.database or not self.schema_:
            raise ValueError(
                "set `database` and `schema` (or a url snowflake://user@account/DATABASE/SCHEMA):"
                " the table is <database>.<schema>.<table>"
            )
        return self


def resolve(name: str) -> str:
    """A name as Snowflake resolves it: plain names unquoted are upper case."""
    return name.upper() if _PLAIN.fullmatch(name) else name


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Column:
    name: str
    cast: str
    """The type a staged text value is cast to (``NUMBER(10,2)``, ``VARCHAR``, ``VARIANT``)."""
    length: int | None
    nullable: bool

    @property
    def json(self) -> bool:
        return self.cast in _JSON_TYPES


def _cast_type(data_type: str, precision: Any, scale: Any) -> str:
    kind = data_type.upper()
    if kind in ("NUMBER", "DECIMAL", "NUMERIC"):
        return f"NUMBER({int(precision or 38)},{int(scale or 0)})"
    if kind in ("TEXT", "VARCHAR", "STRING", "CHAR", "CHARACTER"):
        return "VARCHAR"
    return kind


class SnowflakeDestination(SyncTable[SnowflakeTableConfig]):
    """Write rows into a Snowflake table by MERGE from a staged batch."""

    name: ClassVar[str] = "snowflake"
    vendor: ClassVar[str] = "Snowflake"
    needs_unique_index: ClassVar[bool] = False
    docs_url: ClassVar[str | None] = MERGE_DOC

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        super().__init__(config, name=name)
        self.config.register_secrets()
        self._columns: dict[str, Column] = {}

    # -- names -----------------------------------------------------------------------------

    @property
    def qualified(self) -> str:
        c = self.config
        return ".".join(resolve(p) for p in (str(c.database), str(c.schema_), c.table))

    def _target(self) -> str:
        c = self.config
        return ".".join(_q(resolve(p)) for p in (str(c.database), str(c.schema_), c.table))

    def missing_table_hint(self) -> str:
        return (
            "create it, or set `create_table: true` to create it from the first batch; if it "
            "exists, grant the destination's role access: GRANT USAGE ON DATABASE and SCHEMA, "
            "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE (Snowflake shows only what a role "
            "may see)"
        )

    def failure_hint(self, exc: BaseException) -> str:
        text = str(exc).lower()
        role = self.config.role or "<role>"
        if "insufficient privileges" in text or "does not exist or not authorized" in text:
            return (
                f"grant the role what a sync needs: GRANT USAGE ON DATABASE "
                f"{_q(resolve(str(self.config.database)))} TO ROLE {role}; GRANT USAGE, CREATE "
                f"TABLE ON SCHEMA {self.qualified.rsplit('.', 1)[0]} TO ROLE {role}; GRANT "
                f"SELECT, INSERT, UPDATE, DELETE ON TABLE {self.qualified} TO ROLE {role}; "
                "(CREATE TABLE: the batch is staged in a temporary table)"
            )
        if "no active warehouse" in text:
            return "set `warehouse:` in the destination's config, and GRANT USAGE ON it"
        return super().failure_hint(exc)

    # -- the driver --------------------------------------------------------------------------

    def _sf(self, sync: str | None = None) -> Any:
        package = "snowflake-connector-python"
        sf = self.import_driver("snowflake.connector", package, "snowflake", sync)
        self.import_driver("snowflake.connector.errors", package, "snowflake", sync)
        return sf

    def connect(self, sync: str | None = None) -> Any:
        sf = self._sf(sync)
        who = self.where(sync)

        def error(message: str, hint: str | None) -> Any:
            return self.fatal(message.removeprefix(f"{who}: "), hint=hint, sync=sync)

        kwargs = _login.connect_kwargs(self.config, base_dir=self.base_dir, who=who, error=error)
        try:
            return sf.connect(**kwargs, paramstyle="qmark", autocommit=True)
        except sf.errors.Error as exc:
            problem = _login.login_problem(exc, self.config, who)
            if problem.unreachable:
                raise RetryableError(
                    problem.message, hint=problem.hint, sync=sync, destination=self.instance_name
                ) from None
            raise error(problem.message, problem.hint) from None

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        return (self._sf().errors.Error,)

    def is_row_error(self, exc: BaseException) -> bool:
        """Data exceptions (SQLSTATE class 22: a value that does not convert or fit) and
        integrity violations (23: NOT NULL)."""
        state = str(getattr(exc, "sqlstate", "") or "")
        return state.startswith(("22", "23"))

    def is_connection_error(self, exc: BaseException) -> bool:
        sf = self._sf()
        if isinstance(exc, sf.errors.OperationalError | sf.errors.InterfaceError):
            return True
        return getattr(exc, "errno", None) in _CONNECTION_ERRNOS

    def row_message(self, exc: BaseException) -> str:
        text = str(getattr(exc, "msg", None) or exc)
        return f"Snowflake refused the row: {redact(' '.join(text.split()))}"

    # -- the table -------------------------------------------------------------------------

    def load_table(self, conn: Any) -> TableInfo | None:
        c = self.config
        cur = conn.cursor()
        cur.execute(
            "SELECT column_name, data_type, numeric_precision, numeric_scale,"
            " character_maximum_length, is_nullable"
            f" FROM {_q(resolve(str(c.database)))}.INFORMATION_SCHEMA.COLUMNS"
            " WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            (resolve(str(c.schema_)), resolve(c.table)),
        )
        found = cur.fetchall()
        if not found:
            return None
        self._columns = {}
        for name, data_type, precision, scale, length, nullable in found:
            cast = _cast_type(str(data_type), precision, scale)
            text_length = int(length) if length and cast == "VARCHAR" else None
            self._columns[str(name)] = Column(
                str(name), cast, text_length, str(nullable).upper() != "NO"
            )
        return TableInfo({n: col.cast for n, col in self._columns.items()}, [])

    def create_table(self, conn: Any, kinds: dict[str, Kind], match: list[str]) -> None:
        columns = [f"{_q(resolve(n))} {_TYPES[k]}" for n, k in kinds.items()]
        if match:
            keys = ", ".join(_q(resolve(m)) for m in match)
            columns.append(f"PRIMARY KEY ({keys})")  # informational: Snowflake enforces none
        conn.cursor().execute(f"CREATE TABLE IF NOT EXISTS {self._target()} ({', '.join(columns)})")

    def _column(self, field: str) -> Column:
        found = self._columns.get(field)
        if found is not None:
            return found
        lowered = field.lower()
        return next(c for n, c in self._columns.items() if n.lower() == lowered)

    # -- the write path: stage, check, one MERGE -------------------------------------------

    def apply(
        self,
        conn: Any,
        batch: Batch,
        groups: list[Group],
        match: list[str],
        rejected: dict[int, str],
    ) -> None:
        operation = batch.operation
        fields = _union(groups, match)
        slot = {f: f"C{i}" for i, f in enumerate(fields)}
        cur = conn.cursor()
        self._stage(cur, groups, fields, slot)
        plan = _Plan(self, operation, groups, match, slot)
        for index, why in cur.execute(plan.check_sql()).fetchall():
            rejected[int(index)] = why
        if operation is Operation.UPDATE:
            for (index,) in cur.execute(plan.missing_sql()).fetchall():
                rejected[int(index)] = not_found(batch, int(index), match, self.qualified)
        merge = plan.merge_sql()
        if merge is None:
            return
        try:
            cur.execute(merge)
            return
        except self.driver_errors() as exc:
            if not self.is_row_error(exc):
                raise
        # a value the check did not foresee spoiled the MERGE (atomic: nothing was written)
        for group in groups:
            for index in group.indexes:
                if index in rejected:
                    continue
                try:
                    cur.execute(plan.merge_sql(only=True), (index,))
                except self.driver_errors() as exc:
                    if not self.is_row_error(exc):
                        raise
                    rejected[index] = self.row_message(exc)

    def _stage(
        self, cur: Any, groups: list[Group], fields: list[str], slot: dict[str, str]
    ) -> None:
        json_fields = {f for f in fields if self._column(f).json}
        columns = ", ".join(
            [f"{_q(_INDEX)} NUMBER", f"{_q(_GROUP)} NUMBER"]
            + [f"{_q(slot[f])} VARCHAR" for f in fields]
        )
        cur.execute(f"CREATE OR REPLACE TEMPORARY TABLE {_q(STAGE)} ({columns})")
        reads = ", ".join(
            ["f.value:i::NUMBER", "f.value:g::NUMBER"]
            + [f"f.value:{slot[f].lower()}::VARCHAR" for f in fields]
        )
        insert = (
            f"INSERT INTO {_q(STAGE)} SELECT {reads} FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?))) f"
        )
        chunk: list[bytes] = []
        size = 0
        for number, group in enumerate(groups):
            for index, row in zip(group.indexes, group.rows, strict=True):
                item: dict[str, Any] = {"i": index, "g": number}
                for f in group.fields:
                    value = row[f]
                    if value is None:
                        continue  # a missing key reads back as SQL NULL
                    staged = orjson.dumps(value).decode() if f in json_fields else text_param(value)
                    item[slot[f].lower()] = staged
                encoded = orjson.dumps(item)
                if chunk and size + len(encoded) > STAGE_CHUNK_BYTES:
                    cur.execute(insert, ((b"[" + b",".join(chunk) + b"]").decode(),))
                    chunk, size = [], 0
                chunk.append(encoded)
                size += len(encoded) + 1
        if chunk:
            cur.execute(insert, ((b"[" + b",".join(chunk) + b"]").decode(),))


def _union(groups: Sequence[Group], match: list[str]) -> list[str]:
    """Every field of the batch's groups, the match fields first."""
    fields = list(match)
    for group in groups:
        fields.extend(f for f in group.fields if f not in fields)
    return fields


class _Plan:
    """The SQL of one batch, over the stage table: the check, the UPDATE's missing rows and
    the MERGE."""

    def __init__(
        self,
        dest: SnowflakeDestination,
        operation: Operation,
        groups: list[Group],
        match: list[str],
        slot: dict[str, str],
    ) -> None:
        self.dest = dest
        self.operation = operation
        self.groups = groups
        self.match = match
        self.slot = slot
        self.target = dest._target()

    def _col(self, field: str) -> Column:
        return self.dest._column(field)

    def value(self, field: str, alias: str = "s") -> str:
        """The staged text of ``field`` as its column's type."""
        col = self._col(field)
        staged = f"{alias}.{_q(self.slot[field])}"
        return f"PARSE_JSON({staged})" if col.json else f"CAST({staged} AS {col.cast})"

    def why(self) -> str:
        """A CASE naming the first reason a staged row would be refused (NULL: none)."""
        cases: list[str] = []
        for field, slot in self.slot.items():
            col = self._col(field)
            staged = f"s.{_q(slot)}"
            convert = (
                f"TRY_PARSE_JSON({staged})" if col.json else f"TRY_CAST({staged} AS {col.cast})"
            )
            if col.cast != "VARCHAR":
                cases.append(
                    f"WHEN {staged} IS NOT NULL AND {convert} IS NULL THEN "
                    f"{_lit(f'field {field}: the value does not convert to column {col.name} ({col.cast})')}"
                )
            if col.length is not None:
                cases.append(
                    f"WHEN LENGTH({staged}) > {col.length} THEN "
                    f"{_lit(f'field {field}: the text is longer than column {col.name} (VARCHAR({col.length}))')}"
                )
            carrying = [str(n) for n, g in enumerate(self.groups) if field in g.fields]
            if not col.nullable and carrying and self.operation is not Operation.DELETE:
                cases.append(
                    f"WHEN {staged} IS NULL AND s.{_q(_GROUP)} IN ({', '.join(carrying)}) THEN "
                    f"{_lit(f'field {field} is null and column {col.name} is NOT NULL')}"
                )
        return f"CASE {' '.join(cases)} END" if cases else "NULL"

    def check_sql(self) -> str:
        return (
            f"SELECT s.{_q(_INDEX)}, {self.why()} AS why FROM {_q(STAGE)} s"
            f" WHERE ({self.why()}) IS NOT NULL"
        )

    def _on(self, left: str, right_alias: str, *, cast: bool) -> str:
        parts = []
        for m in self.match:
            right = self.value(m, right_alias) if cast else f"{right_alias}.{_q(self.slot[m])}"
            parts.append(f"{left}.{_q(self._col(m).name)} = {right}")
        return " AND ".join(parts)

    def missing_sql(self) -> str:
        return (
            f"SELECT s.{_q(_INDEX)} FROM {_q(STAGE)} s WHERE ({self.why()}) IS NULL AND NOT "
            f"EXISTS (SELECT 1 FROM {self.target} t WHERE {self._on('t', 's', cast=True)})"
        )

    def source(self, *, only: bool) -> str:
        picks = [f"s.{_q(_INDEX)}", f"s.{_q(_GROUP)}"] + [
            f"{self.value(f)} AS {_q(slot)}" for f, slot in self.slot.items()
        ]
        where = f"({self.why()}) IS NULL"
        if only:
            where += f" AND s.{_q(_INDEX)} = ?"
        sql = f"SELECT {', '.join(picks)} FROM {_q(STAGE)} s WHERE {where}"
        if self.operation is not Operation.INSERT:
            keys = ", ".join(self.value(m) for m in self.match)
            sql += (
                f" QUALIFY ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY s.{_q(_INDEX)} DESC) = 1"
            )
        return sql

    def merge_sql(self, *, only: bool = False) -> str | None:
        op = self.operation
        whens: list[str] = []
        several = len(self.groups) > 1
        for number, group in enumerate(self.groups):
            cond = f" AND b.{_q(_GROUP)} = {number}" if several else ""
            rest = [f for f in group.fields if f not in self.match]
            if op is Operation.DELETE:
                whens = ["WHEN MATCHED THEN DELETE"]
                break
            if op in (Operation.UPSERT, Operation.UPDATE) and rest:
                sets = ", ".join(f"{_q(self._col(f).name)} = b.{_q(self.slot[f])}" for f in rest)
                whens.append(f"WHEN MATCHED{cond} THEN UPDATE SET {sets}")
            if op in (Operation.UPSERT, Operation.INSERT):
                names = ", ".join(_q(self._col(f).name) for f in group.fields)
                values = ", ".join(f"b.{_q(self.slot[f])}" for f in group.fields)
                whens.append(f"WHEN NOT MATCHED{cond} THEN INSERT ({names}) VALUES ({values})")
        if not whens:
            return None  # an update of key columns only: nothing to change
        on = "FALSE" if op is Operation.INSERT else self._on("t", "b", cast=False)
        return (
            f"MERGE INTO {self.target} AS t USING ({self.source(only=only)}) AS b ON {on} "
            + " ".join(whens)
        )


def _lit(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
