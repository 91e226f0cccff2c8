"""The map stage: turn each model row into the destination's payload, as JSON text.

A sync's ``mappings`` are compiled once (:func:`compile_mapping`) into a tree of nodes; each
call to :meth:`CompiledMapping.map` turns that tree into Polars expressions over the rows'
actual types and evaluates them in one pass, so a payload is written by Polars
(``struct.json_encode``) and never built as a Python dict. Only template fields run Python
per row, and only over the columns the template reads; JSON-text columns are checked with
orjson per value and embedded as they are.

A row that cannot be mapped is *rejected* with its reason (a failed cast, a template that
raised, a NULL identifier, a NaN, a payload over the destination's size limit); ``map``
never raises for a row. :class:`~undertow.errors.MappingError` is raised only for a mapping
that cannot compile (unknown column, bad template syntax, a cast a column's type cannot take).

See ``docs/mapping.md`` for the user-facing reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import polars as pl
import pyarrow as pa
from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.environment import Template
from jinja2.sandbox import ImmutableSandboxedEnvironment

from undertow.config.models import FieldSpec, SyncConfig
from undertow.errors import MappingError, unknown_name

if TYPE_CHECKING:
    from polars._typing import PolarsDataType

__all__ = ["CompiledMapping", "MappedRows", "compile_mapping"]

_TRIM = 60
"""Longest value quoted in a rejection reason."""
_TEMPLATE_CACHE_LIMIT = 65_536
"""Distinct inputs whose rendering a template remembers (templates are pure functions)."""
_TRUE = ["true", "t", "yes", "y", "1", "on"]
_FALSE = ["false", "f", "no", "n", "0", "off"]
_DECIMAL_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_POSITION = "__ut_position"
_NAIVE_TS = "%Y-%m-%dT%H:%M:%S%.f"
_AWARE_TS = "%Y-%m-%dT%H:%M:%S%.f%:z"


@dataclass
class MappedRows:
    """The result of mapping a frame: payloads of the rows that mapped, reasons for the rest."""

    index: list[int]
    """Positions in the input frame of the rows that mapped."""
    payloads: list[str]
    """JSON object text per mapped row, aligned with ``index``."""
    identifiers: dict[str, list[Any]]
    """Match field -> Python values, aligned with ``index``."""
    rejected: list[tuple[int, str]]
    """(position, reason) for the rows that could not be mapped."""


# --- the compiled tree -------------------------------------------------------------------


@dataclass
class _Column:
    path: str
    column: str
    cast: str | None


@dataclass
class _Json:
    path: str
    column: str


@dataclass
class _Const:
    path: str
    value: Any


@dataclass
class _Template:
    path: str
    template: Template
    columns: list[str]
    uses_row: bool
    cast: str | None
    slot: int = 0


@dataclass
class _Object:
    path: str
    children: list[tuple[str, _Node]]


@dataclass
class _List:
    path: str
    items: list[_Node]


_Node = _Column | _Json | _Const | _Template | _Object | _List


def _finalize(value: Any) -> Any:
    """Render NULL as an empty string, not Python's ``None``."""
    return "" if value is None else value


def _environment() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, finalize=_finalize, autoescape=False, keep_trailing_newline=True
    )


class _Compiler:
    def __init__(self, sync_name: str, schema: Mapping[str, pl.DataType]) -> None:
        self.sync = sync_name
        self.schema = schema
        self.env = _environment()
        self.read: dict[str, None] = {}
        self.templates: list[_Template] = []

    def fail(self, path: str, message: str, hint: str | None = None) -> MappingError:
        return MappingError(f"sync {self.sync!r}: {path}: {message}", hint=hint)

    def use(self, path: str, column: str) -> str:
        if column not in self.schema:
            raise self.fail(
                path,
                unknown_name("column", column, self.schema),
                hint="map a column the model's SQL returns, or add it to the model",
            )
        self.read.setdefault(column, None)
        return column

    def node(self, path: str, spec: FieldSpec) -> _Node:
        if spec.cast is not None and (spec.object_ is not None or spec.list_ is not None):
            raise self.fail(
                path,
                "`cast` applies to column and template fields, not to object or list fields",
                hint="put the cast on the nested fields",
            )
        if spec.cast is not None and "const" in spec.model_fields_set:
            raise self.fail(
                path,
                "`cast` does not apply to a const",
                hint="write the constant in the type you want, e.g. `const: 3`",
            )
        if spec.column is not None:
            column = self.use(path, spec.column)
            if spec.cast == "json":
                return _Json(path, column)
            return _Column(path, column, spec.cast)
        if spec.json_ is not None:
            return _Json(path, self.use(path, spec.json_))
        if spec.template is not None:
            return self.template(path, spec.template, spec.cast)
        if spec.object_ is not None:
            return _Object(
                path, [(k, self.node(f"{path}.{k}", v)) for k, v in spec.object_.items()]
            )
        if spec.list_ is not None:
            return _List(path, [self.node(f"{path}[{i}]", v) for i, v in enumerate(spec.list_)])
        return self.const(path, spec.const)

    def const(self, path: str, value: Any) -> _Const:
        try:
            orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:
            raise self.fail(path, f"the constant cannot be written as JSON: {exc}") from None
        if _has_nonfinite(value):
            raise self.fail(path, "the constant holds NaN or Infinity, which JSON cannot carry")
        return _Const(path, value)

    def template(self, path: str, source: str, cast: str | None) -> _Template:
        if cast == "json":
            raise self.fail(
                path,
                "`cast: json` does not apply to a template",
                hint="render a string, or map a JSON text column with `json:`",
            )
        try:
            ast = self.env.parse(source)
        except TemplateSyntaxError as exc:
            raise self.fail(
                path,
                f"template syntax error on line {exc.lineno}: {exc.message}",
                hint="templates use Jinja2 syntax, e.g. 'Hi {{ first_name }}'",
            ) from None
        reads: list[tuple[int, str | None]] = [
            (n.lineno, n.attr) for n in ast.find_all(nodes.Getattr)
        ]
        reads += [(n.lineno, _const_key(n)) for n in ast.find_all(nodes.Getitem)]
        for line, name in reads:
            if isinstance(name, str) and name.startswith("_"):
                raise self.fail(
                    path,
                    f"template line {line} reads {name!r}: templates run in a sandbox "
                    "and cannot reach Python internals (names starting with '_')",
                )
        names = meta.find_undeclared_variables(ast)
        uses_row = "row" in names
        unknown = sorted(
            n for n in names - {"row"} if n not in self.schema and n not in self.env.globals
        )
        if unknown:
            raise self.fail(
                path,
                f"template reads {unknown_name('column', unknown[0], self.schema)}",
                hint="a template sees each model column by name, and `row` (all of them)",
            )
        columns = list(self.schema) if uses_row else [c for c in self.schema if c in names]
        for column in columns:
            self.use(path, column)
        compiled = _Template(
            path, self.env.from_string(ast), columns, uses_row, cast, slot=len(self.templates)
        )
        self.templates.append(compiled)
        return compiled


def _const_key(node: nodes.Getitem) -> str | None:
    arg = node.arg
    return arg.value if isinstance(arg, nodes.Const) and isinstance(arg.value, str) else None


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf"))
    if isinstance(value, dict):
        return any(_has_nonfinite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_nonfinite(v) for v in value)
    return False


# --- from the tree to Polars expressions ----------------------------------------------------


@dataclass
class _Value:
    """A Polars value that ``struct.json_encode`` writes; may be null where ``nullable``."""

    expr: pl.Expr
    nullable: bool


@dataclass
class _Text:
    """JSON text already (null = a NULL value)."""

    expr: pl.Expr
    always_null: bool = False
    """A NULL in every row (a NULL const, a column with only NULLs): ``omit`` drops it."""


def _null() -> _Text:
    return _Text(pl.lit(None, dtype=pl.String), always_null=True)


_Out = _Value | _Text


def _lit_str(text: str) -> pl.Expr:
    return pl.lit(text, dtype=pl.String)


def _quote(text: str) -> str:
    return orjson.dumps(text).decode()


def _trimmed(value: pl.Expr) -> pl.Expr:
    return (
        pl.when(value.str.len_chars() > _TRIM)
        .then(pl.concat_str([value.str.slice(0, _TRIM - 1), _lit_str("…")]))
        .otherwise(value)
    )


def _inst(dtype: PolarsDataType) -> pl.DataType:
    """Polars sometimes hands out dtype classes (``pl.Int64``) instead of instances."""
    return dtype() if isinstance(dtype, type) else dtype


def _stringable(dtype: pl.DataType) -> bool:
    return not isinstance(dtype, pl.List | pl.Array | pl.Struct | pl.Binary | pl.Object)


def _has_float(dtype: pl.DataType) -> bool:
    if isinstance(dtype, pl.Float32 | pl.Float64):
        return True
    if isinstance(dtype, pl.List | pl.Array):
        return _has_float(_inst(dtype.inner))
    if isinstance(dtype, pl.Struct):
        return any(_has_float(_inst(f.dtype)) for f in dtype.fields)
    return False


def _nonfinite(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """True where a (possibly nested) float value is NaN or infinite; the dtype has a float."""
    if isinstance(dtype, pl.Float32 | pl.Float64):
        return (expr.is_nan() | expr.is_infinite()).fill_null(False)
    if isinstance(dtype, pl.Array):
        return _nonfinite(expr.arr.to_list(), pl.List(_inst(dtype.inner)))
    if isinstance(dtype, pl.List):
        return (
            expr.list.eval(_nonfinite(pl.element(), _inst(dtype.inner))).list.any().fill_null(False)
        )
    assert isinstance(dtype, pl.Struct)
    checks = [
        _nonfinite(expr.struct.field(f.name), _inst(f.dtype))
        for f in dtype.fields
        if _has_float(_inst(f.dtype))
    ]
    return pl.any_horizontal(checks).fill_null(False)


def _wire(expr: pl.Expr, dtype: pl.DataType, where: str) -> tuple[pl.Expr, bool]:
    """Rewrite a value so Polars' JSON writer sends our wire format; (expr, changed).

    Polars writes naive timestamps with a space and no 'T', and cannot write binary at all:
    naive timestamps become ISO 8601 text, binary becomes base64 text (at any depth).
    """
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
        return expr.dt.to_string(_NAIVE_TS), True
    if isinstance(dtype, pl.Binary):
        return expr.bin.encode("base64"), True
    if isinstance(dtype, pl.Object):
        raise MappingError(
            f"{where}: a column of Python objects cannot be sent as JSON",
            hint="cast it to a SQL type in the model",
        )
    if isinstance(dtype, pl.Array):
        inner, changed = _wire(pl.element(), _inst(dtype.inner), where)
        return (expr.arr.to_list().list.eval(inner), True) if changed else (expr, False)
    if isinstance(dtype, pl.List):
        inner, changed = _wire(pl.element(), _inst(dtype.inner), where)
        return (expr.list.eval(inner), True) if changed else (expr, False)
    if isinstance(dtype, pl.Struct):
        parts = [_wire(expr.struct.field(f.name), _inst(f.dtype), where) for f in dtype.fields]
        if not any(changed for _, changed in parts):
            return expr, False
        rebuilt = pl.struct(
            [e.alias(f.name) for (e, _), f in zip(parts, dtype.fields, strict=True)]
        )
        return pl.when(expr.is_not_null()).then(rebuilt), True
    return expr, False


def _as_text(expr: pl.Expr) -> pl.Expr:
    """JSON text of a Polars value (``null`` for NULL)."""
    return (
        pl.struct(expr.alias("v"))
        .struct.json_encode()
        .str.strip_prefix('{"v":')
        .str.strip_suffix("}")
    )


def _to_json_text(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A nested value as compact JSON text (for ``cast: string`` of a list or struct)."""
    wired, _ = _wire(expr, dtype, "")
    return pl.when(expr.is_not_null()).then(_as_text(wired))


class _Builder:
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

    def fail(self, path: str, message: str, hint: str | None = None) -> MappingError:
        return MappingError(f"sync {self.m.sync!r}: {path}: {message}", hint=hint)

    def reject_when(self, condition: pl.Expr, *reason: pl.Expr | str) -> None:
        parts = [_lit_str(p) if isinstance(p, str) else p for p in reason]
        self.reasons.append(pl.when(condition).then(pl.concat_str(parts)))

    # values

    def out(self, node: _Node) -> _Out:
        if isinstance(node, _Column | _Json) and node.column in self.dropped:
            return _null()
        if isinstance(node, _Column):
            dtype = self.schema[node.column]
            return self.value(
                node.path,
                pl.col(node.column),
                dtype,
                node.cast,
                f"column {node.column!r}",
                node.column in self.has_nulls,
            )
        if isinstance(node, _Template):
            expr = pl.col(f"__ut_template_{node.slot}")
            self.reasons.append(pl.col(f"__ut_template_error_{node.slot}"))
            return self.value(node.path, expr, pl.String(), node.cast, "template output", False)
        if isinstance(node, _Json):
            return self.json(node)
        if isinstance(node, _Const):
            if node.value is None:
                return _null()
            if isinstance(node.value, str | bool) or (
                isinstance(node.value, int | float) and abs(node.value) < 2**53
            ):
                return _Value(pl.lit(node.value), False)
            text = orjson.dumps(node.value, option=orjson.OPT_NON_STR_KEYS).decode()
            return _Text(_lit_str(text))
        if isinstance(node, _Object):
            return self.object(node)
        return self.list(node)

    def value(
        self,
        path: str,
        expr: pl.Expr,
        dtype: pl.DataType,
        cast: str | None,
        source: str,
        nullable: bool,
    ) -> _Out:
        field_name = path.removeprefix("mappings.")
        if cast is not None:
            expr, dtype = self.cast(field_name, path, expr, dtype, cast, source)
        if _has_float(dtype):
            self.reject_when(
                _nonfinite(expr, dtype),
                f"field {field_name!r}: {source} holds NaN or Infinity, which JSON cannot carry",
            )
        wired, _ = _wire(expr, dtype, f"sync {self.m.sync!r}: {path}")
        return _Value(wired, nullable)

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
                fmt = _NAIVE_TS if dtype.time_zone is None else _AWARE_TS
                return expr.dt.to_string(fmt), pl.String()
            if isinstance(dtype, pl.Date):
                return expr.dt.to_string("%Y-%m-%d"), pl.String()
            if isinstance(dtype, pl.Binary):
                return expr.bin.encode("base64"), pl.String()
            if isinstance(dtype, pl.List | pl.Array | pl.Struct):
                return _to_json_text(expr, dtype), pl.String()
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
                return expr.cast(pl.Datetime("us")).dt.to_string(_NAIVE_TS), pl.String()
            if isinstance(dtype, pl.String):
                aware = [
                    text.str.to_datetime(f, strict=False, time_zone="UTC").dt.to_string(_AWARE_TS)
                    for f in ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z")
                ]
                naive = [
                    text.str.to_datetime(f, strict=False).dt.to_string(_NAIVE_TS)
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
        if _stringable(dtype):
            shown = [" value '", _trimmed(expr.cast(pl.String)), "'"]
        self.reject_when(failed, f"field {name!r}: cannot cast {source}", *shown, f" to {target}")
        return out, out_dtype

    def json(self, node: _Json) -> _Out:
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
        return _Text(pl.col(text_col))

    def object(self, node: _Object) -> _Out:
        outs = [(name, self.out(child)) for name, child in node.children]
        if self.omit:
            outs = [(n, o) for n, o in outs if not (isinstance(o, _Text) and o.always_null)]
        if all(isinstance(o, _Value) and not (self.omit and o.nullable) for _, o in outs) and outs:
            return _Value(
                pl.struct([o.expr.alias(n) for n, o in outs if isinstance(o, _Value)]), False
            )
        return _Text(self.object_text(outs))

    def object_text(self, outs: list[tuple[str, _Out]]) -> pl.Expr:
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
            key = _quote(name) + ":"
            if isinstance(out, _Value) and not (self.omit and out.nullable):
                run.append(out.expr.alias(name))
                continue
            flush()
            if isinstance(out, _Value):
                value = pl.when(out.expr.is_not_null()).then(_as_text(out.expr))
                pieces.append(pl.concat_str([_lit_str("{" + key), value]))
                certain.append(False)
            else:
                text = out.expr if self.omit else out.expr.fill_null(_lit_str("null"))
                pieces.append(pl.concat_str([_lit_str("{" + key), text]))
                certain.append(not self.omit)
        flush()
        if not pieces:
            return _lit_str("{}")
        # Every piece starts with '{'. The first piece keeps it when it is never NULL; every
        # later piece (and any piece when the first may be NULL) swaps it for a comma.
        if certain[0]:
            parts = [pieces[0]] + [p.str.replace("{", ",", literal=True, n=1) for p in pieces[1:]]
            return pl.concat_str([*parts, _lit_str("}")], ignore_nulls=True)
        inner = [p.str.strip_prefix("{") for p in pieces]
        return pl.concat_str(
            [
                _lit_str("{"),
                pl.concat_str(inner, separator=",", ignore_nulls=True),
                _lit_str("}"),
            ]
        )

    def list(self, node: _List) -> _Out:
        items: list[pl.Expr] = []
        for item in node.items:
            out = self.out(item)
            if isinstance(out, _Value):
                text = _as_text(out.expr)
                if self.omit and out.nullable:
                    text = pl.when(out.expr.is_not_null()).then(text)
            else:
                text = out.expr if self.omit else out.expr.fill_null(_lit_str("null"))
            items.append(text)
        if not items:
            return _Text(_lit_str("[]"))
        return _Text(
            pl.concat_str(
                [
                    _lit_str("["),
                    pl.concat_str(items, separator=",", ignore_nulls=True),
                    _lit_str("]"),
                ]
            )
        )


# --- per-row Python: templates and JSON text ---------------------------------------------------


def _render(node: _Template, frame: pl.DataFrame) -> tuple[list[str | None], list[str | None]]:
    """Render a template over the rows; (outputs, reasons), None where not applicable.

    Rows with the same inputs render once (templates are pure functions of their columns);
    the cache switches itself off when most inputs are distinct.
    """
    name = node.path.removeprefix("mappings.")
    columns = [frame.get_column(c).to_list() for c in node.columns]
    rows: Iterable[tuple[Any, ...]] = zip(*columns, strict=True) if columns else [()] * frame.height
    template = node.template
    # Template.render merges the globals into a new dict per row; doing it ourselves and
    # passing shared=True renders about 1.5x faster.
    root, new_context, concat = template.root_render_func, template.new_context, "".join
    base = dict(template.globals)
    names = node.columns
    outputs: list[str | None] = []
    reasons: list[str | None] = []
    cache: dict[tuple[Any, ...], tuple[str | None, str | None]] | None = {}
    hits = 0
    for values in rows:
        if cache is not None:
            try:
                hit = cache.get(values)
            except TypeError:  # a list or dict value is not hashable: render every row
                cache, hit = None, None
            if hit is not None:
                hits += 1
                outputs.append(hit[0])
                reasons.append(hit[1])
                continue
        context = base.copy()
        context.update(zip(names, values, strict=True))
        if node.uses_row:
            context["row"] = dict(zip(names, values, strict=True))
        result: tuple[str | None, str | None]
        try:
            result = (concat(root(new_context(context, shared=True))), None)
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            message = f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
            result = (None, f"field {name!r}: template failed: {message}")
        outputs.append(result[0])
        reasons.append(result[1])
        if cache is not None and len(cache) < _TEMPLATE_CACHE_LIMIT:
            cache[values] = result
            if len(cache) == 4096 and hits < 4096:  # mostly distinct inputs
                cache = None
    return outputs, reasons


def _parse_json(
    column: str, path: str, values: Sequence[str | None]
) -> tuple[list[str | None], list[str | None]]:
    """Check JSON texts; keep each valid text as it is (exact numbers), reasons for the rest."""
    name = path.removeprefix("mappings.")
    texts: list[str | None] = []
    reasons: list[str | None] = []
    loads = orjson.loads
    for value in values:
        if value is None:
            texts.append(None)
            reasons.append(None)
            continue
        try:
            parsed = loads(value)
        except orjson.JSONDecodeError as exc:
            shown = value if len(value) <= _TRIM else value[: _TRIM - 1] + "…"
            texts.append(None)
            reasons.append(
                f"field {name!r}: column {column!r} value {shown!r} is not valid JSON: {exc}"
            )
            continue
        texts.append(None if parsed is None else value.strip())
        reasons.append(None)
    return texts, reasons


# --- the public face -------------------------------------------------------------------


class CompiledMapping:
    """A sync's mapping compiled once; :meth:`map` applies it to any number of frames."""

    def __init__(
        self,
        sync: str,
        root: _Object,
        match: dict[str, str],
        columns: list[str],
        templates: list[_Template],
        schema: Mapping[str, pl.DataType],
        omit: bool,
        max_payload_bytes: int | None,
    ) -> None:
        self.sync = sync
        self.columns = columns
        """Model columns read by the mappings and by ``match``, in order of first use."""
        self.fields = [name for name, _ in root.children]
        """Top-level payload field names."""
        self.match = match
        self.omit = omit
        self.max_payload_bytes = max_payload_bytes
        self._root = root
        self._templates = templates
        self._schema = dict(schema)

    def __repr__(self) -> str:
        return f"CompiledMapping(sync={self.sync!r}, fields={self.fields!r})"

    def map(self, frame: pl.DataFrame) -> MappedRows:
        """Map every row of ``frame``; a row that cannot be mapped is rejected, never raised."""
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise MappingError(
                f"sync {self.sync!r}: the rows to map lack a column the mapping reads: "
                + unknown_name("column", missing[0], frame.columns),
                hint="the model's columns changed since the mapping was compiled; compile again",
            )
        # The position column also keeps the height when the mapping reads no column.
        read = frame.select(pl.int_range(pl.len(), dtype=pl.Int64).alias(_POSITION), *self.columns)
        schema = read.schema
        nulls = read.select(self.columns).null_count().row(0) if self.columns else ()
        has_nulls = {c for c, n in zip(self.columns, nulls, strict=True) if n}
        all_null = {c for c, n in zip(self.columns, nulls, strict=True) if n == read.height > 0}
        builder = _Builder(self, schema, has_nulls, all_null)

        root = builder.object(self._root)
        payload = root.expr.struct.json_encode() if isinstance(root, _Value) else root.expr
        for name, column in self.match.items():
            builder.reject_when(
                pl.col(column).is_null(), f"match field {name!r} (column {column!r}) is NULL"
            )

        derived: list[pl.Series] = []
        for node in self._templates:
            outputs, reasons = _render(node, read)
            derived.append(pl.Series(f"__ut_template_{node.slot}", outputs, dtype=pl.String))
            derived.append(pl.Series(f"__ut_template_error_{node.slot}", reasons, dtype=pl.String))
        for column, text_col, reason_col in builder.json_slots:
            path = next(
                n.path for n in _walk(self._root) if isinstance(n, _Json) and n.column == column
            )
            texts, reasons = _parse_json(column, path, read.get_column(column).to_list())
            derived.append(pl.Series(text_col, texts, dtype=pl.String))
            derived.append(pl.Series(reason_col, reasons, dtype=pl.String))
        if derived:
            read = read.with_columns(derived)

        if builder.reasons:
            reason = pl.concat_str(builder.reasons, separator="; ", ignore_nulls=True)
        else:
            reason = _lit_str("")
        out = read.select(
            pl.col(_POSITION).alias("position"),
            payload.alias("payload"),
            reason.alias("reason"),
        )
        if self.max_payload_bytes is not None:
            limit = self.max_payload_bytes
            size = pl.col("payload").str.len_bytes()
            too_big = pl.concat_str(
                [
                    _lit_str("payload is "),
                    size.cast(pl.String),
                    _lit_str(f" bytes, above the destination's limit of {limit} bytes"),
                ]
            )
            out = out.with_columns(
                reason=pl.when((size > limit) & (pl.col("reason") == ""))
                .then(too_big)
                .otherwise(pl.col("reason"))
            )
        ok = out.get_column("reason") == ""
        if ok.all():
            rejected: list[tuple[int, str]] = []
            index = list(range(out.height))
            payloads: list[str] = out.get_column("payload").to_list()
            identifiers = {f: read.get_column(c).to_list() for f, c in self.match.items()}
        else:
            bad = out.filter(~ok)
            rejected = list(
                zip(
                    bad.get_column("position").to_list(),
                    bad.get_column("reason").to_list(),
                    strict=True,
                )
            )
            good = out.filter(ok)
            index = good.get_column("position").to_list()
            payloads = good.get_column("payload").to_list()
            identifiers = {
                f: read.get_column(c).filter(ok).to_list() for f, c in self.match.items()
            }
        return MappedRows(
            index=index, payloads=payloads, identifiers=identifiers, rejected=rejected
        )


def _walk(node: _Node) -> Iterator[_Node]:
    yield node
    if isinstance(node, _Object):
        for _, child in node.children:
            yield from _walk(child)
    elif isinstance(node, _List):
        for item in node.items:
            yield from _walk(item)


def _polars_schema(schema: Mapping[str, pl.DataType] | pa.Schema) -> dict[str, pl.DataType]:
    if isinstance(schema, pa.Schema):
        empty = pl.from_arrow(schema.empty_table())
        assert isinstance(empty, pl.DataFrame)
        return dict(empty.schema)
    return {name: _inst(d) for name, d in schema.items()}


def compile_mapping(
    sync_name: str,
    sync: SyncConfig,
    schema: Mapping[str, pl.DataType] | pa.Schema,
    *,
    max_payload_bytes: int | None = None,
) -> CompiledMapping:
    """Compile a sync's mapping against the model's schema, once.

    With no ``mappings`` at all, every model column is sent as a field of the same name.
    Raises :class:`~undertow.errors.MappingError` naming the sync and the field path when a
    column is unknown, a template does not parse or reaches for Python internals, or a cast
    does not apply to a column's type.
    """
    types = _polars_schema(schema)
    compiler = _Compiler(sync_name, types)
    specs = sync.mappings or {name: FieldSpec(column=name) for name in types}
    root = _Object("mappings", [(k, compiler.node(f"mappings.{k}", v)) for k, v in specs.items()])
    for name, column in sync.match.items():
        compiler.use(f"match.{name}", column)
    compiled = CompiledMapping(
        sync_name,
        root,
        dict(sync.match),
        list(compiler.read),
        compiler.templates,
        types,
        sync.nulls == "omit",
        max_payload_bytes,
    )
    # A dry run over no rows builds every expression for these types: type problems
    # (a cast a column cannot take, a column of Python objects) surface now, not mid-run.
    compiled.map(pl.DataFrame(schema=types))
    return compiled
