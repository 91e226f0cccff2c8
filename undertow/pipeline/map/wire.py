"""The wire encoding: how a model value becomes JSON text in a payload, as Polars
expressions (never a Python dict per row); casts, NaN and infinity, timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
import polars as pl

from undertow.errors import MappingError

if TYPE_CHECKING:
    from polars._typing import PolarsDataType

TRIM = 60
"""Longest value quoted in a rejection reason."""
NAIVE_TS = "%Y-%m-%dT%H:%M:%S%.f"
AWARE_TS = "%Y-%m-%dT%H:%M:%S%.f%:z"


@dataclass
class Value:
    """A Polars value that ``struct.json_encode`` writes; may be null where ``nullable``."""

    expr: pl.Expr
    nullable: bool


@dataclass
class Text:
    """JSON text already (null = a NULL value)."""

    expr: pl.Expr
    always_null: bool = False
    """A NULL in every row (a NULL const, a column with only NULLs): ``omit`` drops it."""


def null_text() -> Text:
    return Text(pl.lit(None, dtype=pl.String), always_null=True)


Out = Value | Text


def lit_str(text: str) -> pl.Expr:
    return pl.lit(text, dtype=pl.String)


def quote(text: str) -> str:
    return orjson.dumps(text).decode()


def trimmed(value: pl.Expr) -> pl.Expr:
    return (
        pl.when(value.str.len_chars() > TRIM)
        .then(pl.concat_str([value.str.slice(0, TRIM - 1), lit_str("…")]))
        .otherwise(value)
    )


def inst(dtype: PolarsDataType) -> pl.DataType:
    """Polars sometimes hands out dtype classes (``pl.Int64``) instead of instances."""
    return dtype() if isinstance(dtype, type) else dtype


def stringable(dtype: pl.DataType) -> bool:
    return not isinstance(dtype, pl.List | pl.Array | pl.Struct | pl.Binary | pl.Object)


def has_float(dtype: pl.DataType) -> bool:
    if isinstance(dtype, pl.Float32 | pl.Float64):
        return True
    if isinstance(dtype, pl.List | pl.Array):
        return has_float(inst(dtype.inner))
    if isinstance(dtype, pl.Struct):
        return any(has_float(inst(f.dtype)) for f in dtype.fields)
    return False


def nonfinite(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """True where a (possibly nested) float value is NaN or infinite; the dtype has a float."""
    if isinstance(dtype, pl.Float32 | pl.Float64):
        return (expr.is_nan() | expr.is_infinite()).fill_null(False)
    if isinstance(dtype, pl.Array):
        return nonfinite(expr.arr.to_list(), pl.List(inst(dtype.inner)))
    if isinstance(dtype, pl.List):
        return (
            expr.list.eval(nonfinite(pl.element(), inst(dtype.inner))).list.any().fill_null(False)
        )
    assert isinstance(dtype, pl.Struct)
    checks = [
        nonfinite(expr.struct.field(f.name), inst(f.dtype))
        for f in dtype.fields
        if has_float(inst(f.dtype))
    ]
    return pl.any_horizontal(checks).fill_null(False)


# The calendar a payload can carry: ISO 8601 years 1 to 9999. Outside it (a warehouse's
# `infinity`, a year 294276) Polars' formatter panics, and most APIs refuse the value anyway.
_DAYS = (-719_162, 2_932_896)  # 0001-01-01 and 9999-12-31, in days since 1970-01-01
_SECONDS = (-62_135_596_800, 253_402_300_799)  # 0001-01-01T00:00:00 and 9999-12-31T23:59:59
_PER_SECOND = {"ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def has_temporal(dtype: pl.DataType) -> bool:
    if isinstance(dtype, pl.Date | pl.Datetime):
        return True
    if isinstance(dtype, pl.List | pl.Array):
        return has_temporal(inst(dtype.inner))
    if isinstance(dtype, pl.Struct):
        return any(has_temporal(inst(f.dtype)) for f in dtype.fields)
    return False


def out_of_calendar(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """True where a (possibly nested) date or timestamp is outside the years 1 to 9999
    (infinity included); ``dtype`` has one (:func:`has_temporal`)."""
    if isinstance(dtype, pl.Date):
        days = expr.cast(pl.Int32)
        return ((days < _DAYS[0]) | (days > _DAYS[1])).fill_null(False)
    if isinstance(dtype, pl.Datetime):
        per = _PER_SECOND[dtype.time_unit or "us"]
        if per == 1_000_000_000:
            return pl.repeat(False, pl.len())  # int64 nanoseconds reach 1677 to 2262 only
        ticks = expr.cast(pl.Int64)
        low, high = _SECONDS[0] * per, (_SECONDS[1] + 1) * per - 1
        return ((ticks < low) | (ticks > high)).fill_null(False)
    if isinstance(dtype, pl.Array):
        return out_of_calendar(expr.arr.to_list(), pl.List(inst(dtype.inner)))
    if isinstance(dtype, pl.List):
        inner = out_of_calendar(pl.element(), inst(dtype.inner))
        return expr.list.eval(inner).list.any().fill_null(False)
    assert isinstance(dtype, pl.Struct)
    checks = [
        out_of_calendar(expr.struct.field(f.name), inst(f.dtype))
        for f in dtype.fields
        if has_temporal(inst(f.dtype))
    ]
    return pl.any_horizontal(checks).fill_null(False)


def wire(expr: pl.Expr, dtype: pl.DataType, where: str) -> tuple[pl.Expr, bool]:
    """Rewrite a value so Polars' JSON writer sends our wire format; (expr, changed).

    Polars writes naive timestamps with a space and no 'T', and cannot write binary at all:
    naive timestamps become ISO 8601 text, binary becomes base64 text (at any depth).
    """
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
        return expr.dt.to_string(NAIVE_TS), True
    if isinstance(dtype, pl.Binary):
        return expr.bin.encode("base64"), True
    if isinstance(dtype, pl.Object):
        raise MappingError(
            f"{where}: a column of Python objects cannot be sent as JSON",
            hint="cast it to a SQL type in the model",
        )
    if isinstance(dtype, pl.Array):
        inner, changed = wire(pl.element(), inst(dtype.inner), where)
        return (expr.arr.to_list().list.eval(inner), True) if changed else (expr, False)
    if isinstance(dtype, pl.List):
        inner, changed = wire(pl.element(), inst(dtype.inner), where)
        return (expr.list.eval(inner), True) if changed else (expr, False)
    if isinstance(dtype, pl.Struct):
        parts = [wire(expr.struct.field(f.name), inst(f.dtype), where) for f in dtype.fields]
        if not any(changed for _, changed in parts):
            return expr, False
        rebuilt = pl.struct(
            [e.alias(f.name) for (e, _), f in zip(parts, dtype.fields, strict=True)]
        )
        return pl.when(expr.is_not_null()).then(rebuilt), True
    return expr, False


def as_text(expr: pl.Expr) -> pl.Expr:
    """JSON text of a Polars value (``null`` for NULL)."""
    return (
        pl.struct(expr.alias("v"))
        .struct.json_encode()
        .str.strip_prefix('{"v":')
        .str.strip_suffix("}")
    )


def to_json_text(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A nested value as compact JSON text (for ``cast: string`` of a list or struct)."""
    wired, _ = wire(expr, dtype, "")
    return pl.when(expr.is_not_null()).then(as_text(wired))
