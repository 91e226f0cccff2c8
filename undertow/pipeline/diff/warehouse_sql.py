"""The warehouse engine's SQL pieces: the row hash algorithms, the key as text, and the
session that renders each statement for the source's dialect.

Templates are written once in PostgreSQL syntax (``TEMPLATE``), every identifier quoted,
and transpiled by sqlglot; see :mod:`undertow.pipeline.diff.warehouse`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from undertow.sources.base import SqlSession
from undertow.sources.scratch_sql import ident, lit

if TYPE_CHECKING:
    from undertow.pipeline.diff.warehouse import WarehouseDiffEngine

MD5_LENPREFIX = "md5-lenprefix-v1"
"""Portable: MD5 over the length-prefixed text of each value (any dialect with MD5)."""
PG_HASH_RECORD = "pg-hash-record-v1"
"""PostgreSQL 14+: ``hash_record_extended`` over the row, no text conversion of typed values."""
HASH_ALGORITHMS = (MD5_LENPREFIX, PG_HASH_RECORD)
HASH_ALGORITHM = MD5_LENPREFIX
"""The algorithm of dialects without a faster one. Recorded with every snapshot, which keeps
the algorithm it was written with until it is reset: see the module docstring."""

# Arrow types whose PostgreSQL type has an extended hash function; others are hashed as text.
_PG_NATIVE_HASH = re.compile(r"^(u?int\d+|float|double|halffloat|decimal|bool|date|timestamp|time)")

MODEL = "__ut_model__"  # sentinel replaced by the model's SQL after transpiling
META_COLUMNS = ("_ut_seq", "_ut_batch", "_ut_key", "_ut_op", "_ut_kind")
ALL_META = (*META_COLUMNS, "_ut_fp", "_ut_hash")
_VALUES_PER_INSERT = 1000
WORK_TABLES = ("chg", "dup", "only", "watch", "done", "bad", "acc")
_BEGIN = {
    # every statement of a build reads the same model; DDL is transactional in both
    "postgres": "BEGIN ISOLATION LEVEL REPEATABLE READ",
    "duckdb": "BEGIN TRANSACTION",
}


def text_of(column: str) -> str:
    return f"CAST({column} AS TEXT)"


def row_hash_sql(
    columns: Sequence[str],
    alias: str,
    *,
    algorithm: str = MD5_LENPREFIX,
    types: dict[str, str] | None = None,
) -> str:
    """The row hash of ``columns`` under ``algorithm`` (template dialect).

    ``md5-lenprefix-v1``: MD5 of the NULL-aware, length-prefixed encoding of the values.
    ``pg-hash-record-v1``: PostgreSQL's ``hash_record_extended`` of the row; a column whose
    Arrow type (``types``) is not a number, boolean, date or time is hashed as its text.
    """
    if algorithm == PG_HASH_RECORD:
        if not columns:
            return "CAST(0 AS BIGINT)"
        kinds = types or {}
        parts = [
            f"{alias}.{ident(c)}"
            if _PG_NATIVE_HASH.match(kinds.get(c, ""))
            else text_of(f"{alias}.{ident(c)}")
            for c in columns
        ]
        return f"HASH_RECORD_EXTENDED(ROW({', '.join(parts)}), 0)"
    if algorithm != MD5_LENPREFIX:
        raise ValueError(f"unknown row hash algorithm {algorithm!r}")
    if not columns:
        return "MD5('')"
    parts = []
    for c in columns:
        col = f"{alias}.{ident(c)}"
        parts.append(
            f"COALESCE(CAST(LENGTH({text_of(col)}) AS TEXT) || ':' || {text_of(col)}, '~')"
        )
    return "MD5(" + " || '|' || ".join(parts) + ")"


def empty_hash_sql(algorithm: str) -> str:
    """A constant of the algorithm's hash type (for an empty, typed snapshot)."""
    return row_hash_sql([], "m", algorithm=algorithm)


def key_text_sql(keys: Sequence[str], alias: str) -> str:
    """The row key as text, as the local engine writes it (``id`` or ``a=1, b=x``).

    ``alias`` qualifies the key columns; ``""`` leaves them unqualified."""

    def col(k: str) -> str:
        return f"{alias}.{ident(k)}" if alias else ident(k)

    if len(keys) == 1:
        return f"COALESCE({text_of(col(keys[0]))}, 'NULL')"
    return " || ', ' || ".join(
        f"{lit(k + '=')} || COALESCE({text_of(col(k))}, 'NULL')" for k in keys
    )


def slug(text: str, size: int) -> str:
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return re.sub(r"[^a-z0-9_]", "_", text.lower())[:size] + "_" + digest


def int_types_compatible(old: str, new: str) -> bool:
    """A type change whose values keep their text form (so their hashes)."""
    ints = re.compile(r"^u?int(8|16|32|64)$")
    texts = {"string", "large_string", "string_view"}
    return bool(ints.match(old) and ints.match(new)) or (old in texts and new in texts)


class Runner:
    """A session that renders each statement for the source's dialect before sending it."""

    def __init__(self, engine: WarehouseDiffEngine, session: SqlSession) -> None:
        self.engine = engine
        self.session = session
        self.in_transaction = False

    def execute(self, template: str, columns: Sequence[str] | None = None) -> None:
        self.session.execute(self.engine.render(template, columns))

    def rows(self, template: str, columns: Sequence[str] | None = None) -> list[tuple[Any, ...]]:
        return self.session.rows(self.engine.render(template, columns))

    def scalar(self, template: str, columns: Sequence[str] | None = None) -> int:
        value = self.rows(template, columns)[0][0]
        return int(value or 0)

    def insert_values(self, table: str, values: Sequence[int | str]) -> None:
        for start in range(0, len(values), _VALUES_PER_INSERT):
            part = values[start : start + _VALUES_PER_INSERT]
            rows = ", ".join(f"({lit(v) if isinstance(v, str) else int(v)})" for v in part)
            self.execute(f"INSERT INTO {table} VALUES {rows}")

    def begin(self) -> bool:
        """Open a transaction where the dialect has them; False where each statement commits.

        Without one (ClickHouse, BigQuery, Databricks) a build's statements may read
        different states of a changing model, and a fold is two statements; a fold is
        replayed from the checkpoints by the next run, so an interrupted one is repaired.
        """
        statement = _BEGIN.get(self.engine.dialect)
        if statement is None:
            return False
        self.session.execute(statement)
        self.in_transaction = True
        return True

    def commit(self) -> None:
        if self.in_transaction:
            self.session.execute("COMMIT")
            self.in_transaction = False

    def rollback_quietly(self) -> None:
        if not self.in_transaction:
            return
        self.in_transaction = False
        with contextlib.suppress(Exception):  # the connection may be gone
            self.session.execute("ROLLBACK")


@dataclass(frozen=True)
class Shape:
    """What a build knows of the snapshot before it starts."""

    meta: dict[str, Any] | None
    carry: list[str]
    types: dict[str, str]
    algorithm: str
