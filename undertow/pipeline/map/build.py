"""From the compiled tree to Polars expressions: :class:`Builder` turns each node into a
value or JSON text over the frame's actual types, with the reasons that reject a row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import orjson
import polars as pl

from undertow.errors import MappingError
from undertow.pipeline.map import pii
from undertow.pipeline.map.tree import (
    Column,
    Const,
    JsonText,
    ListNode,
    Node,
    ObjectNode,
    TemplateNode,
)
from undertow.pipeline.map.wire import (
    AWARE_TS,
    NAIVE_TS,
    Out,
    Text,
    Value,
    as_text,
    has_float,
    lit_str,
    nonfinite,
    null_text,
    quote,
    stringable,
    to_json_text,
    trimmed,
    wire,
)

if TYPE_CHECKING:
    from undertow.pipeline.map.compiled import CompiledMapping

    pass

_TRUE = ["true", "t", "yes", "y", "1", "on"]
_FALSE = ["false", "f", "no", "n", "0", "off"]
_DECIMAL_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


class Builder:
    """Builds the expressions of one ``map`` call for the frame's types and null counts."""

    def __init__(
        self,
        mapping: CompiledMapping,
        schema: Mapping[str, pl.DataType],
        has_nulls: set[str],
        all_null: set[str],
    ) -> None:
        self.m = mapping
        self.schema = schema
        self.has_nulls = has_nulls
        # Under ``omit``, a column that is NULL in every row of this frame is left out
        # whole, instead of testing it row by row.
        self.dropped = all_null if mapping.omit else set()
        self.omit = mapping.omit
        self.reasons: list[pl.Expr] = []
        self.json_slots: list[tuple[str, str, str]] = []  # (column, text column, reason column)
        self.pii_slots: list[tuple[Column, str]] = []  # (normalised field, its column)

    def fail(self, path: str, message: str, hint: str | None = None) -> MappingError:
        return MappingError(f"sync {self.m.sync!r}: {path}: {message}", hint=hint)

    def reject_when(self, condition: pl.Expr, *reason: pl.Expr | str) -> None:
        parts = [lit_str(p) if isinstance(p, str) else p for p in reason]
        self.reasons.append(pl.when(condition).then(pl.concat_str(parts)))

    # values

    def out(self, node: Node) -> Out:
        if isinstance(node, Column | JsonText) and node.column in self.dropped:
            return null_text()
        if isinstance(node, Column) and node.pii is not None:
            return self.pii(node)
        if isinstance(node, Column):
            dtype = self.schema[node.column]
            return self.value(
                node.path,
                pl.col(node.column),
                dtype,
                node.cast,
                f"column {node.column!r}",
                node.column in self.has_nulls,
            )
        if isinstance(node, TemplateNode):
            expr = pl.col(f"__ut_template_{node.slot}")
            self.reasons.append(pl.col(f"__ut_template_error_{node.slot}"))
            return self.value(node.path, expr, pl.String(), node.cast, "template output", False)
        if isinstance(node, JsonText):
            return self.json(node)
        if isinstance(node, Const):
            if node.value is None:
                return null_text()
            if isinstance(node.value, str | bool) or (
                isinstance(node.value, int | float) and abs(node.value) < 2**53
            ):
                return Value(pl.lit(node.value), False)
            text = orjson.dumps(node.value, option=orjson.OPT_NON_STR_KEYS).decode()
            return Text(lit_str(text))
        if isinstance(node, ObjectNode):
            return self.object(node)
        return self.list(node)

    def pii(self, node: Column) -> Out:
        """A normalised and/or hashed column (``pii.py``): a value it cannot normalise
        rejects the row with the normaliser's reason."""
        assert node.pii is not None
        dtype = self.schema[node.column]
        if isinstance(dtype, pl.Null):
            return null_text()
        if isinstance(dtype, pl.List | pl.Array | pl.Struct | pl.Binary):
            raise self.fail(
                node.path,
                f"cannot normalise column {node.column!r} of type {dtype}",
                hint="normalise text, number or date columns",
            )
        slot = f"__ut_pii_{len(self.pii_slots)}"
        self.pii_slots.append((node, slot))
        out = pl.col(slot)
        failed = out.str.starts_with(pii.BAD).fill_null(False)
        name = node.path.removeprefix("mappings.")
        self.reject_when(failed, f"field {name!r}: column {node.column!r} ", out.str.slice(1))
        value = pl.when(~failed).then(out)
        return Value(value, node.column in self.has_nulls)

    def value(
        self,
        path: str,
        expr: pl.Expr,
        dtype: pl.DataType,
        cast: str | None,
        source: str,
        nullable: bool,
    ) -> Out:
        field_name = path.removeprefix("mappings.")
        if cast is not None:
            expr, dtype = self.cast(field_name, path, expr, dtype, cast, source)
        if has_float(dtype):
            self.reject_when(
                nonfinite(expr, dtype),
                f"field {field_name!r}: {source} holds NaN or Infinity, which JSON cannot carry",
            )
        wired, _ = wire(expr, dtype, f"sync {self.m.sync!r}: {path}")
        return Value(wired, nullable)

    def cast(
        self, name: str, path: str, expr: pl.Expr, dtype: pl.DataType, target: str, source: str
    ) -> tuple[pl.Expr, pl.DataType]:
        if isinstance(dtype, pl.Null):
            return expr, dtype  # NULL casts to anything
        if isinstance(dtype, pl.Categorical | pl.Enum):
            expr, dtype = expr.cast(pl.String), pl.String()
        out: pl.Expr | None = None
        out_dtype: pl.DataType = pl.String()
        lossy: pl.Expr | None = None
        text = expr.str.strip_chars() if isinstance(dtype, pl.String) else expr
        numeric = dtype.is_numeric() or isinstance(dtype, pl.Boolean)
        if target == "string":
            if isinstance(dtype, pl.Datetime):
                fmt = NAIVE_TS if dtype.time_zone is None else AWARE_TS
                return expr.dt.to_string(fmt), pl.String()
            if isinstance(dtype, pl.Date):
                return expr.dt.to_string("%Y-%m-%d"), pl.String()
            if isinstance(dtype, pl.Binary):
                return expr.bin.encode("base64"), pl.String()
            if isinstance(dtype, pl.List | pl.Array | pl.Struct):
                return to_json_text(expr, dtype), pl.String()
            return expr.cast(pl.String), pl.String()
        if target == "int":
            out_dtype = pl.Int64()
            if isinstance(dtype, pl.String) or numeric or isinstance(dtype, pl.Decimal):
                out = text.cast(pl.Int64, strict=False)
                if isinstance(dtype, pl.Float32 | pl.Float64 | pl.Decimal):
                    lossy = out.cast(pl.Float64) != expr.cast(pl.Float64)
        elif target == "float":
            out_dtype = pl.Float64()
            if isinstance(dtype, pl.String) or numeric or isinstance(dtype, pl.Decimal):
                out = text.cast(pl.Float64, strict=False)
        elif target == "bool":
            out_dtype = pl.Boolean()
            if isinstance(dtype, pl.Boolean):
                out = expr
            elif isinstance(dtype, pl.String):
                word = text.str.to_lowercase()
                out = pl.when(word.is_in(_TRUE)).then(True).when(word.is_in(_FALSE)).then(False)
            elif dtype.is_integer():
                out = pl.when(expr == 1).then(True).when(expr == 0).then(False)
        elif target == "decimal":
            # Sent as exact decimal text, like a DECIMAL column: no float on the way.
            if isinstance(dtype, pl.Decimal):
                return expr, dtype
            if isinstance(dtype, pl.String):
                out = pl.when(text.str.contains(_DECIMAL_RE)).then(text)
            elif dtype.is_numeric():
                out = pl.when(expr.is_finite() if dtype.is_float() else pl.lit(True)).then(
                    expr.cast(pl.String)
                )
        elif target == "date":
            out_dtype = pl.Date()
            if isinstance(dtype, pl.Date):
                out = expr
            elif isinstance(dtype, pl.Datetime):
                out = expr.dt.date()
            elif isinstance(dtype, pl.String):
                out = text.str.to_date("%Y-%m-%d", strict=False)
        elif target == "timestamp":
            if isinstance(dtype, pl.Datetime):
                return expr, dtype
            if isinstance(dtype, pl.Date):
                return expr.cast(pl.Datetime("us")).dt.to_string(NAIVE_TS), pl.String()
            if isinstance(dtype, pl.String):
                aware = [
                    text.str.to_datetime(f, strict=False, time_zone="UTC").dt.to_string(AWARE_TS)
                    for f in ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z")
                ]
                naive = [
                    text.str.to_datetime(f, strict=False).dt.to_string(NAIVE_TS)
                    for f in ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d")
                ]
                out = pl.coalesce([*aware, *naive])
        if out is None:
            raise self.fail(
                path,
                f"cannot cast {source} of type {dtype} to {target}",
                hint="cast it in the model's SQL, or pick a cast this type can take",
            )
        failed = expr.is_not_null() & out.is_null()
        if lossy is not None:
            failed = failed | (expr.is_not_null() & lossy.fill_null(False))
        shown: list[pl.Expr | str] = []
        if stringable(dtype):
            shown = [" value '", trimmed(expr.cast(pl.String)), "'"]
        self.reject_when(failed, f"field {name!r}: cannot cast {source}", *shown, f" to {target}")
        return out, out_dtype

    def json(self, node: JsonText) -> Out:
        dtype = self.schema[node.column]
        if not isinstance(dtype, pl.String):
            # Already structured (a list, a struct, a number...): sent as it is.
            return self.value(
                node.path,
                pl.col(node.column),
                dtype,
                None,
                f"column {node.column!r}",
                node.column in self.has_nulls,
            )
        slot = len(self.json_slots)
        text_col, reason_col = f"__ut_json_{slot}", f"__ut_json_error_{slot}"
        self.json_slots.append((node.column, text_col, reason_col))
        self.reasons.append(pl.col(reason_col))
        return Text(pl.col(text_col))

    def object(self, node: ObjectNode) -> Out:
        outs = [(name, self.out(child)) for name, child in node.children]
        if self.omit:
            outs = [(n, o) for n, o in outs if not (isinstance(o, Text) and o.always_null)]
        if all(isinstance(o, Value) and not (self.omit and o.nullable) for _, o in outs) and outs:
            return Value(
                pl.struct([o.expr.alias(n) for n, o in outs if isinstance(o, Value)]), False
            )
        return Text(self.object_text(outs))

    def object_text(self, outs: list[tuple[str, Out]]) -> pl.Expr:
        """An object's JSON text from its members, leaving out NULL members under ``omit``.

        Consecutive members that are never left out are encoded together by one
        ``struct.json_encode``. Each member piece carries its leading comma, so one
        ``concat_str`` that skips NULL pieces writes the object: few copies of long text.
        """
        pieces: list[pl.Expr] = []
        certain: list[bool] = []  # per piece: never NULL
        run: list[pl.Expr] = []

        def flush() -> None:
            if run:
                # '{"a":1,"b":2}' -> '"a":1,"b":2' (the comma and braces are added below)
                encoded = pl.struct(run).struct.json_encode().str.strip_suffix("}")
                pieces.append(encoded)
                certain.append(True)
                run.clear()

        for name, out in outs:
            key = quote(name) + ":"
            if isinstance(out, Value) and not (self.omit and out.nullable):
                run.append(out.expr.alias(name))
                continue
            flush()
            if isinstance(out, Value):
                value = pl.when(out.expr.is_not_null()).then(as_text(out.expr))
                pieces.append(pl.concat_str([lit_str("{" + key), value]))
                certain.append(False)
            else:
                text = out.expr if self.omit else out.expr.fill_null(lit_str("null"))
                pieces.append(pl.concat_str([lit_str("{" + key), text]))
                certain.append(not self.omit)
        flush()
        if not pieces:
            return lit_str("{}")
        # Every piece starts with '{'. The first piece keeps it when it is never NULL; every
        # later piece (and any piece when the first may be NULL) swaps it for a comma.
        if certain[0]:
            parts = [pieces[0]] + [p.str.replace("{", ",", literal=True, n=1) for p in pieces[1:]]
            return pl.concat_str([*parts, lit_str("}")], ignore_nulls=True)
        inner = [p.str.strip_prefix("{") for p in pieces]
        return pl.concat_str(
            [
                lit_str("{"),
                pl.concat_str(inner, separator=",", ignore_nulls=True),
                lit_str("}"),
            ]
        )

    def list(self, node: ListNode) -> Out:
        items: list[pl.Expr] = []
        for item in node.items:
            out = self.out(item)
            if isinstance(out, Value):
                text = as_text(out.expr)
                if self.omit and out.nullable:
                    text = pl.when(out.expr.is_not_null()).then(text)
            else:
                text = out.expr if self.omit else out.expr.fill_null(lit_str("null"))
            items.append(text)
        if not items:
            return Text(lit_str("[]"))
        return Text(
            pl.concat_str(
                [
                    lit_str("["),
                    pl.concat_str(items, separator=",", ignore_nulls=True),
                    lit_str("]"),
                ]
            )
        )
