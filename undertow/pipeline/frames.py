"""Arrow -> Polars, for every frame the pipeline maps: the one place where Arrow types Polars
cannot hold, or holds with the wrong meaning, are given their wire meaning.

- ``month_day_nano_interval`` (DuckDB and BigQuery ``INTERVAL``): Polars cannot import it (a
  Rust panic); it becomes its ISO 8601 duration text, as PostgreSQL's ``iso_8601`` interval
  style writes it (``P1Y2M3DT4H5M6.5S``, each part with its own sign, ``PT0S`` for zero).
  Months have no fixed length, so no duration type holds every interval.
- a string field a source marks with :data:`~undertow.sources.base.JSON_FIELD` (PostgreSQL
  ``jsonb``) is JSON text: mapped directly, it is sent as the JSON value, as ``json:`` does;
- a decimal field a source marks with :data:`~undertow.sources.base.INTEGER_FIELD` (DuckDB's ``HUGEINT``, which
  Arrow carries as ``decimal128(38, 0)``) is an integer: :func:`integer_columns` names them,
  and the map stage sends them as JSON numbers (Polars ``Int128``) instead of decimal text.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl
import pyarrow as pa

from undertow.sources.base import INTEGER_FIELD, JSON_FIELD

_NS_PER_SECOND = 1_000_000_000


def iso_duration(months: int, days: int, nanoseconds: int) -> str:
    """An interval as ISO 8601 text, each part signed as PostgreSQL writes it."""
    years, months = int(months / 12), months - 12 * int(months / 12)  # truncate toward zero
    date = "".join(f"{n}{unit}" for n, unit in ((years, "Y"), (months, "M"), (days, "D")) if n)
    sign = -1 if nanoseconds < 0 else 1
    rest = abs(nanoseconds)
    hours, rest = divmod(rest, 3600 * _NS_PER_SECOND)
    minutes, rest = divmod(rest, 60 * _NS_PER_SECOND)
    seconds, fraction = divmod(rest, _NS_PER_SECOND)
    time = "".join(f"{sign * n}{unit}" for n, unit in ((hours, "H"), (minutes, "M")) if n)
    if seconds or fraction:
        text = f"{seconds}.{fraction:09d}".rstrip("0").rstrip(".") if fraction else str(seconds)
        time += ("-" if sign < 0 else "") + text + "S"
    if not date and not time:
        return "PT0S"
    return "P" + date + ("T" + time if time else "")


def _interval_text(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    values = array.to_pylist()
    return pa.array(
        [None if v is None else iso_duration(v.months, v.days, v.nanoseconds) for v in values],
        pa.string(),
    )


def _is_interval(dtype: pa.DataType) -> bool:
    return bool(pa.types.is_interval(dtype))


def to_polars(table: pa.Table) -> pl.DataFrame:
    """The table as a Polars frame, interval columns as ISO 8601 text."""
    for i, f in enumerate(table.schema):
        if _is_interval(f.type):
            table = table.set_column(i, pa.field(f.name, pa.string()), _interval_text(table[i]))
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def polars_schema(schema: pa.Schema) -> dict[str, pl.DataType]:
    """The Polars types :func:`to_polars` gives a table of ``schema``."""
    return dict(to_polars(schema.empty_table()).schema)


def marked(schema: pa.Schema | Mapping[str, object], key: bytes) -> set[str]:
    """Fields the source marked with ``key`` (see :func:`~undertow.sources.base.mark_fields`)."""
    if not isinstance(schema, pa.Schema):
        return set()
    return {f.name for f in schema if f.metadata and key in f.metadata}


def integer_columns(schema: pa.Schema | Mapping[str, object]) -> set[str]:
    """Decimal fields that hold integers (DuckDB HUGEINT): sent as JSON numbers."""
    return marked(schema, INTEGER_FIELD)


def json_columns(schema: pa.Schema | Mapping[str, object]) -> set[str]:
    """String fields of a JSON type: sent as the JSON value when mapped directly."""
    return marked(schema, JSON_FIELD)
