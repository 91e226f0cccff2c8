"""What ``undertow validate`` checks of dbt models without querying the warehouse.

* a manifest is *stale* when a model file's text no longer has the checksum dbt recorded
  (the file changed after dbt last parsed the project);
* with ``--offline``, a sync of a dbt model compiles its mapping against the columns dbt's
  artifacts list (``catalog.json``, or the manifest of a model with an enforced contract)
  instead of describing the model on its source. Warehouse types map to the type Undertow
  reads back where the name says it plainly (``BIGINT``, ``VARCHAR``, ``TIMESTAMP WITH
  TIME ZONE``...); any other type is taken as text, which every ``cast:`` accepts, so an
  unknown type never fails a valid mapping.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import polars as pl

from undertow.dbt.artifacts import Column

if TYPE_CHECKING:
    from undertow.config.loader import LoadedProject

_INTEGER = {
    "tinyint", "smallint", "integer", "int", "bigint", "int1", "int2", "int4", "int8",
    "int16", "int32", "int64", "hugeint", "utinyint", "usmallint", "uinteger", "ubigint",
    "byteint", "long", "short", "serial", "bigserial",
}  # fmt: skip
_FLOAT = {"double", "float", "real", "float4", "float8", "double precision", "float64"}
_TEXT = {"varchar", "text", "string", "char", "character", "character varying", "nvarchar"}
_AWARE = {"timestamp with time zone", "timestamptz", "timestamp_tz", "timestamp_ltz"}
_NAIVE = {"timestamp", "timestamp without time zone", "datetime", "timestamp_ntz"}
_DECIMAL = re.compile(r"^(?:decimal|numeric|number)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)$")


def polars_type(warehouse_type: str | None) -> pl.DataType:
    """The type a column of this warehouse type reads back as; text when unsure."""
    text = re.sub(r"\s+", " ", (warehouse_type or "").strip().lower())
    base = re.sub(r"\(.*\)$", "", text).strip()
    if text.endswith("[]"):
        return pl.List(polars_type(text[:-2]))
    if base in _TEXT:
        return pl.String()
    if base in _INTEGER:
        return pl.Int64()
    if base in _FLOAT:
        return pl.Float64()
    if base in ("boolean", "bool"):
        return pl.Boolean()
    if base == "date":
        return pl.Date()
    if base in _AWARE:
        return pl.Datetime("us", "UTC")
    if base in _NAIVE:
        return pl.Datetime("us")
    match = _DECIMAL.match(text)
    if match:
        precision, scale = int(match.group(1)), int(match.group(2) or 0)
        if scale == 0 and base == "number":
            return pl.Int64()  # Snowflake's integers are NUMBER(38,0), read back as int64
        return pl.Decimal(min(precision, 38), scale)
    return pl.String()


def schema_of(columns: tuple[Column, ...]) -> dict[str, pl.DataType]:
    return {c.name: polars_type(c.type) for c in columns}


def offline_schema(loaded: LoadedProject, model: str) -> dict[str, pl.DataType] | None:
    """The columns of a dbt model from dbt's artifacts, or None (not dbt, or not listed)."""
    resolved = loaded.dbt_models.get(model)
    known = resolved.columns() if resolved is not None else None
    return schema_of(known.columns) if known is not None else None


def stale_models(loaded: LoadedProject) -> list[tuple[str, str, str]]:
    """(model, why the manifest is stale, the dbt project folder) for each stale dbt model."""
    out = []
    for name, resolved in loaded.dbt_models.items():
        why = resolved.stale()
        if why is not None:
            out.append((name, why, str(resolved.project_dir)))
    return out
