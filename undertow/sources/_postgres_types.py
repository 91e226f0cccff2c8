"""PostgreSQL types as Arrow types: which OIDs Arrow's CSV reader parses from COPY output,
which are kept as their text, and which are converted with psycopg's text loaders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from undertow.redact import redact
from undertow.sources.base import (
    missing_driver,
)

# Type OIDs (pg_type.oid) that Arrow's CSV reader parses directly.
DIRECT_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(),  # bool
    20: pa.int64(),  # int8
    21: pa.int16(),  # int2
    23: pa.int32(),  # int4
    26: pa.int64(),  # oid
    700: pa.float32(),  # float4
    701: pa.float64(),  # float8
    1082: pa.date32(),  # date
    1114: pa.timestamp("us"),  # timestamp
    1184: pa.timestamp("us", tz="UTC"),  # timestamptz
}
# Types whose text form is the value we keep, as a string.
TEXT_TYPES = {
    18,  # char
    19,  # name
    25,  # text
    114,  # json (JSON text)
    142,  # xml
    1042,  # bpchar
    1043,  # varchar
    1186,  # interval (ISO 8601, e.g. P1DT2H; months make it no fixed duration)
    2950,  # uuid
    3802,  # jsonb (JSON text)
}
NUMERIC_OID = 1700
# Types converted from their text form with psycopg's loader.
LOADED_TYPES: dict[int, pa.DataType] = {
    17: pa.binary(),  # bytea
    1083: pa.time64("us"),  # time
}
# Array OID -> element OID, for the arrays of the types above.
ARRAY_ELEMENTS = {
    1000: 16,
    1001: 17,
    1002: 18,
    1003: 19,
    1005: 21,
    1007: 23,
    1009: 25,
    1014: 1042,
    1015: 1043,
    1016: 20,
    1021: 700,
    1022: 701,
    1028: 26,
    1115: 1114,
    1182: 1082,
    1183: 1083,
    1185: 1184,
    1187: 1186,
    1231: 1700,
    199: 114,
    143: 142,
    2951: 2950,
    3807: 3802,
}


@dataclass(frozen=True)
class PgColumn:
    name: str
    oid: int
    arrow: pa.DataType
    direct: bool
    """Arrow's CSV reader parses it; else it is read as text and loaded by psycopg."""


def pg_column(name: str, oid: int, fmod: int) -> PgColumn:
    if oid in DIRECT_TYPES:
        return PgColumn(name, oid, DIRECT_TYPES[oid], True)
    if oid == NUMERIC_OID:
        decimal = pg_decimal(fmod)
        return PgColumn(name, oid, decimal or pa.string(), True)
    if oid in LOADED_TYPES:
        return PgColumn(name, oid, LOADED_TYPES[oid], False)
    if oid in ARRAY_ELEMENTS:
        element = pg_column(name, ARRAY_ELEMENTS[oid], fmod).arrow
        return PgColumn(name, oid, pa.list_(element), False)
    # text types, enums, domains, and anything unknown: the value's text form.
    return PgColumn(name, oid, pa.string(), True)


def pg_decimal(fmod: int) -> pa.DataType | None:
    """numeric(p, s) as decimal128(p, s); unconstrained numeric (or p > 38) stays a string.

    An unconstrained ``numeric`` has no fixed scale (1e-300 and 1e300 are both valid), so
    no Arrow decimal holds every value; its exact text is kept instead.
    """
    if fmod < 4:
        return None
    precision = ((fmod - 4) >> 16) & 0xFFFF
    scale = (fmod - 4) & 0xFFFF
    if scale > 0x7FFF:  # negative scale (PostgreSQL 15+)
        return None
    if not 1 <= precision <= 38:
        return None
    return pa.decimal128(precision, scale)


JSON_OIDS = (114, 3802)
"""json, jsonb: their text is sent as the JSON value when mapped directly."""


def arrow_schema(columns: list[PgColumn]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow) for c in columns])


def text_loader(conn: Any, column: PgColumn) -> Callable[[list[Any]], pa.Array]:
    """Convert a batch of text values of ``column`` with psycopg's text loader."""
    psycopg = psycopg_module()
    oid = column.oid
    element = ARRAY_ELEMENTS.get(oid)
    if element is not None and (
        element in TEXT_TYPES or pa.types.is_string(column.arrow.value_type)
    ):
        oid = 1009  # text[]: keep the elements' text (uuid, json, unconstrained numeric...)
    loader_class = conn.adapters.get_loader(oid, psycopg.pq.Format.TEXT)
    load = loader_class(oid, conn).load

    def convert(values: list[Any]) -> pa.Array:
        return pa.array(
            [None if v is None else load(v.encode()) for v in values], type=column.arrow
        )

    return convert


def typed_batch(
    raw: pa.RecordBatch,
    loaders: list[Callable[[list[Any]], pa.Array] | None],
    schema: pa.Schema,
) -> pa.RecordBatch:
    arrays = []
    for i, load in enumerate(loaders):
        array = raw.column(i)
        arrays.append(array if load is None else load(array.to_pylist()))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def max_chunk_bytes(batch_rows: int) -> int:
    """COPY bytes parsed at once: about ``batch_rows`` rows of 256 bytes, within 1-64 MiB."""
    return max(1 << 20, min(64 << 20, batch_rows * 256))


def first_line(exc: BaseException) -> str:
    return redact(str(exc).strip().split("\n", 1)[0])


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().split("\n") if line.strip()]
    return lines[-1] if lines else text


def psycopg_module() -> Any:
    try:
        import psycopg
        import psycopg.sql
    except ImportError:
        raise missing_driver("psycopg", "postgres") from None
    return psycopg
