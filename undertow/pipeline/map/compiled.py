"""The public face of the map stage: :func:`compile_mapping` and
:class:`CompiledMapping`, whose :meth:`~CompiledMapping.map` evaluates a frame in one pass.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from undertow.config.models import FieldSpec, SyncConfig
from undertow.errors import MappingError, unknown_name
from undertow.pipeline.frames import integer_columns, json_columns, polars_schema
from undertow.pipeline.map import pii
from undertow.pipeline.map.build import Builder
from undertow.pipeline.map.templates import parse_json, render
from undertow.pipeline.map.tree import Compiler, JsonText, ListNode, Node, ObjectNode, TemplateNode
from undertow.pipeline.map.wire import Value, has_temporal, inst, lit_str, out_of_calendar

if TYPE_CHECKING:
    pass

_POSITION = "__ut_position"


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


class CompiledMapping:
    """A sync's mapping compiled once; :meth:`map` applies it to any number of frames."""

    def __init__(
        self,
        sync: str,
        root: ObjectNode,
        match: dict[str, str],
        columns: list[str],
        templates: list[TemplateNode],
        schema: Mapping[str, pl.DataType],
        omit: bool,
        max_payload_bytes: int | None,
        integers: set[str] | None = None,
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
        self._integers = sorted((integers or set()) & set(columns))
        """Decimal columns the source says hold integers: sent as JSON numbers."""
        self.cancel = threading.Event()
        """Set by the run on Ctrl-C / SIGTERM: templates stop (``TemplateCancelled``)."""

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
        wide = [c for c in self._integers if isinstance(read.schema[c], pl.Decimal)]
        if wide:  # decimal128(38, 0) holds any HUGEINT; Int128 writes it as a number
            read = read.with_columns(pl.col(wide).cast(pl.Int128))
        read, calendar = _outside_calendar(read, self.columns)
        schema = read.schema
        nulls = read.select(self.columns).null_count().row(0) if self.columns else ()
        has_nulls = {c for c, n in zip(self.columns, nulls, strict=True) if n}
        all_null = {c for c, n in zip(self.columns, nulls, strict=True) if n == read.height > 0}
        builder = Builder(self, schema, has_nulls, all_null)
        builder.reasons.extend(calendar)

        root = builder.object(self._root)
        payload = root.expr.struct.json_encode() if isinstance(root, Value) else root.expr
        for name, column in self.match.items():
            builder.reject_when(
                pl.col(column).is_null(), f"match field {name!r} (column {column!r}) is NULL"
            )

        derived: list[pl.Series] = []
        for node in self._templates:
            outputs, reasons = render(node, read, cancel=self.cancel)
            derived.append(pl.Series(f"__ut_template_{node.slot}", outputs, dtype=pl.String))
            derived.append(pl.Series(f"__ut_template_error_{node.slot}", reasons, dtype=pl.String))
        for column, text_col, reason_col in builder.json_slots:
            path = next(
                n.path for n in _walk(self._root) if isinstance(n, JsonText) and n.column == column
            )
            texts, reasons = parse_json(column, path, read.get_column(column).to_list())
            derived.append(pl.Series(text_col, texts, dtype=pl.String))
            derived.append(pl.Series(reason_col, reasons, dtype=pl.String))
        if derived:
            read = read.with_columns(derived)
        for field, slot in builder.pii_slots:
            assert field.pii is not None
            read = pii.apply(field.pii, read, field.column, slot)

        if builder.reasons:
            reason = pl.concat_str(builder.reasons, separator="; ", ignore_nulls=True)
        else:
            reason = lit_str("")
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
                    lit_str("payload is "),
                    size.cast(pl.String),
                    lit_str(f" bytes, above the destination's limit of {limit} bytes"),
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


def _outside_calendar(read: pl.DataFrame, columns: list[str]) -> tuple[pl.DataFrame, list[pl.Expr]]:
    """Dates and timestamps outside the years 1 to 9999 (a warehouse's ``infinity``, a year
    294276): each such row gets a reason, and the value is blanked so that nothing after
    this (casts, templates, the JSON writer, which panics on them) ever sees it."""
    reasons: list[pl.Expr] = []
    blanks: list[pl.Expr] = []
    for column in columns:
        dtype = inst(read.schema[column])
        if not has_temporal(dtype):
            continue
        flag = f"__ut_calendar_{len(blanks)}"
        bad = read.select(out_of_calendar(pl.col(column), dtype).alias(flag)).to_series()
        if not bad.any():
            continue
        read = read.with_columns(bad)
        kind = (
            "date"
            if isinstance(dtype, pl.Date)
            else "timestamp"
            if isinstance(dtype, pl.Datetime)
            else "date or timestamp"
        )
        reasons.append(
            pl.when(pl.col(flag)).then(
                lit_str(
                    f"column {column!r} holds a {kind} outside the years 1 to 9999 (such as "
                    "infinity), which a payload cannot carry; fix it in the model (e.g. NULLIF "
                    "or a CASE)"
                )
            )
        )
        blanks.append(pl.when(~pl.col(flag)).then(pl.col(column)).alias(column))
    if blanks:
        read = read.with_columns(blanks)
    return read, reasons


def _walk(node: Node) -> Iterator[Node]:
    yield node
    if isinstance(node, ObjectNode):
        for _, child in node.children:
            yield from _walk(child)
    elif isinstance(node, ListNode):
        for item in node.items:
            yield from _walk(item)


def _polars_schema(schema: Mapping[str, pl.DataType] | pa.Schema) -> dict[str, pl.DataType]:
    if isinstance(schema, pa.Schema):
        return polars_schema(schema)
    return {name: inst(d) for name, d in schema.items()}


def compile_mapping(
    sync_name: str,
    sync: SyncConfig,
    schema: Mapping[str, pl.DataType] | pa.Schema,
    *,
    max_payload_bytes: int | None = None,
    pii_variant: str | None = None,
) -> CompiledMapping:
    """Compile a sync's mapping against the model's schema, once.

    With no ``mappings`` at all, every model column is sent as a field of the same name.
    ``pii_variant`` is the destination's rules for ``normalize:`` fields (``facebook``,
    ``google``). Raises :class:`~undertow.errors.MappingError` naming the sync and the field
    path when a normaliser or hash is unknown (with a did-you-mean), a column is unknown, a template does not parse or reaches for Python internals, or a cast
    does not apply to a column's type.
    """
    integers = integer_columns(schema)
    types = {
        name: pl.Int128() if name in integers and isinstance(d, pl.Decimal) else d
        for name, d in _polars_schema(schema).items()
    }
    compiler = Compiler(sync_name, types, json_columns(schema), pii_variant)
    specs = sync.mappings or {name: FieldSpec(column=name) for name in types}
    root = ObjectNode(
        "mappings", [(k, compiler.node(f"mappings.{k}", v)) for k, v in specs.items()]
    )
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
        integers,
    )
    # A dry run over no rows builds every expression for these types: type problems
    # (a cast a column cannot take, a column of Python objects) surface now, not mid-run.
    compiled.map(pl.DataFrame(schema=types))
    return compiled
