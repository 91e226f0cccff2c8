"""What the cloud-warehouse sources (Snowflake, BigQuery, ClickHouse, Databricks) share.

Their drivers hand over Arrow data in pieces whose size the warehouse chooses (a result
chunk, a storage stream message, a block) and whose types can drift between pieces (an
integer column that is int8 in one chunk and int64 in the next). :func:`conformed` cuts them
to at most ``batch_rows`` rows and casts each to the schema derived from the warehouse's own
column metadata, so every batch of a model has the schema ``describe()`` announced.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow as pa
from sqlglot import exp

from undertow.redact import redact
from undertow.sources.base import missing_driver

TRAILING = re.compile(r"[\s;]+$")
DESCRIBE_HEAD = "SELECT * FROM (\n"
DESCRIBE_TAIL = "\n) AS _ut_describe LIMIT 0"


def model_text(sql: str) -> str:
    """The model's SQL without its trailing semicolons and blanks."""
    return TRAILING.sub("", sql)


def quote(name: str, dialect: str) -> str:
    """``name`` as a quoted identifier of ``dialect``, escaped by sqlglot's generator."""
    return exp.to_identifier(name, quoted=True).sql(dialect)


def describe_sql(sql: str, dialect: str) -> str:
    """``SELECT * FROM (<sql>) LIMIT 0``: the warehouse compiles it and reads no row.

    The model starts on the second line, so a (line, column) error position maps back by
    subtracting one line.
    """
    del dialect  # the wrapper is the same text in every dialect these sources speak
    return DESCRIBE_HEAD + model_text(sql) + DESCRIBE_TAIL


def projection_sql(sql: str, expressions: Iterable[tuple[str, str]], dialect: str) -> str:
    """``SELECT <expr> AS <name>, ... FROM (<sql>) AS _ut_extract``: the model, with some
    columns converted in the warehouse; each name quoted for ``dialect``."""
    select = ",\n  ".join(f"{expr} AS {quote(name, dialect)}" for name, expr in expressions)
    return f"SELECT\n  {select}\nFROM (\n{model_text(sql)}\n) AS _ut_extract"


def position(
    sql: str, line: int, column: int, *, line_offset: int = 0, base: int = 1
) -> int | None:
    """1-based character offset in ``sql`` of ``line`` (1-based) and ``column`` (``base``-based),
    the model having started ``line_offset`` lines into the statement the warehouse saw."""
    line -= line_offset
    lines = sql.split("\n")
    if not 1 <= line <= len(lines):
        return None
    offset = sum(len(text) + 1 for text in lines[: line - 1]) + (column - base) + 1
    return offset if 1 <= offset <= len(sql) + 1 else None


def first_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    return redact(text.split("\n", 1)[0] if text else type(exc).__name__)


def driver(module: str, package: str, extra: str) -> Any:
    """Import ``module``, or raise the missing-driver error with its exact pip command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_driver(package, extra) from None


def conformed(
    pieces: Iterable[pa.RecordBatch | pa.Table],
    schema: pa.Schema,
    batch_rows: int,
    on_error: Callable[[BaseException], BaseException],
) -> Iterator[pa.RecordBatch]:
    """``pieces`` as batches of at most ``batch_rows`` rows, each cast to ``schema``."""
    for piece in pieces:
        batches = piece.to_batches() if isinstance(piece, pa.Table) else [piece]
        for batch in batches:
            for start in range(0, batch.num_rows, batch_rows):
                part = batch.slice(start, batch_rows)
                try:
                    yield cast_batch(part, schema)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                    raise on_error(exc) from None


def cast_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with ``schema``'s names and types (columns matched by position)."""
    if batch.num_columns != len(schema):
        raise pa.ArrowInvalid(
            f"the warehouse returned {batch.num_columns} columns, {len(schema)} were described"
        )
    arrays = []
    for array, field in zip(batch.columns, schema, strict=True):
        if isinstance(array.type, pa.ExtensionType):
            array = array.storage
        arrays.append(array if array.type == field.type else array.cast(field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def closing(
    iterator: Iterator[pa.RecordBatch], *close: Callable[[], object]
) -> Iterator[pa.RecordBatch]:
    """``iterator``, then every ``close`` callable, whether it ends, fails or is closed early."""
    try:
        yield from iterator
    finally:
        for fn in close:
            with contextlib.suppress(Exception):
                fn()
