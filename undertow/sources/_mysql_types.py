"""MySQL/MariaDB result columns as Arrow types: the server's type codes and flags, and the
extraction expression of each column (a cast where connectorx is not exact); the
driver imports and the error helpers the source and its access check share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from undertow.redact import redact
from undertow.sources.base import missing_driver

_BINARY_CHARSET = 63
_UNSIGNED = 32
_ENUM = 256
_SET = 2048

# MySQL column type codes (include/mysql_com.h, enum_field_types).
_DECIMAL, _TINY, _SHORT, _LONG, _FLOAT, _DOUBLE, _NULL, _TIMESTAMP = 0, 1, 2, 3, 4, 5, 6, 7
_LONGLONG, _INT24, _DATE, _TIME, _DATETIME, _YEAR, _NEWDATE, _VARCHAR, _BIT = range(8, 17)
_JSON, _NEWDECIMAL, _ENUM_TYPE, _SET_TYPE = 245, 246, 247, 248
_BLOBS = {249, 250, 251, 252}
_STRINGS = {_VARCHAR, 253, 254, _ENUM_TYPE, _SET_TYPE, *_BLOBS}
_GEOMETRY = 255
_INTEGERS = {
    _TINY: (pa.int8(), pa.uint8()),
    _SHORT: (pa.int16(), pa.uint16()),
    _INT24: (pa.int32(), pa.uint32()),
    _LONG: (pa.int32(), pa.uint32()),
    _LONGLONG: (pa.int64(), pa.uint64()),
}
_SIMPLE = {
    _FLOAT: pa.float32(),
    _DOUBLE: pa.float64(),
    _DATE: pa.date32(),
    _NEWDATE: pa.date32(),
    _TIME: pa.time64("us"),
    _DATETIME: pa.timestamp("us"),
    _TIMESTAMP: pa.timestamp("us", tz="UTC"),
    _YEAR: pa.int16(),
    _BIT: pa.binary(),
    _JSON: pa.string(),
    _GEOMETRY: pa.string(),
}


@dataclass(frozen=True)
class MyColumn:
    name: str
    arrow: pa.DataType
    expression: str
    """What the extraction query selects for it (a cast where connectorx is not exact)."""
    json: bool = False
    """A MySQL JSON column (type code 245); MariaDB's JSON is LONGTEXT on the wire."""


def mysql_column(field: Any, *, bool_tinyint: bool) -> MyColumn:
    """The Arrow type and the extraction expression of one result column."""
    name: str = field.name
    code: int = field.type_code
    unsigned = bool(field.flags & _UNSIGNED)
    plain = quote_ident(name)
    if code in _INTEGERS:
        if code == _TINY and field.length == 1 and not unsigned and bool_tinyint:
            return MyColumn(name, pa.bool_(), plain)
        signed_type, unsigned_type = _INTEGERS[code]
        return MyColumn(name, unsigned_type if unsigned else signed_type, plain)
    if code in (_DECIMAL, _NEWDECIMAL):
        scale = int(field.scale)
        precision = int(field.length) - (1 if scale > 0 else 0) - (0 if unsigned else 1)
        precision = max(precision, scale, 1)
        arrow = pa.decimal128(precision, scale) if precision <= 38 else pa.string()
        return MyColumn(name, arrow, f"CAST({plain} AS CHAR)")
    if code == _GEOMETRY:
        return MyColumn(name, pa.string(), f"ST_AsText({plain})")
    if code == _NULL:
        return MyColumn(name, pa.string(), f"CAST({plain} AS CHAR)")
    if code in _SIMPLE:
        return MyColumn(name, _SIMPLE[code], plain, json=code == _JSON)
    if code in _STRINGS:
        binary = field.charsetnr == _BINARY_CHARSET and not field.flags & (_ENUM | _SET)
        return MyColumn(name, pa.binary() if binary else pa.string(), plain)
    return MyColumn(name, pa.string(), f"CAST({plain} AS CHAR)")


def arrow_schema(columns: list[MyColumn]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow) for c in columns])


def typed_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast connectorx's batch to the schema from the server's metadata."""
    arrays = []
    for array, field in zip(batch.columns, schema, strict=True):
        if array.type == field.type:
            arrays.append(array)
        elif pa.types.is_boolean(field.type) and pa.types.is_integer(array.type):
            arrays.append(pc.not_equal(array, 0))
        else:
            arrays.append(array.cast(field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def error_code(exc: BaseException) -> int | None:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def error_text(exc: BaseException) -> str:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        return redact(f"({args[0]}) {args[1]}")
    return redact(str(exc).strip().split("\n", 1)[0])


def pymysql_module() -> Any:
    try:
        import pymysql
    except ImportError:
        raise missing_driver("PyMySQL", "mysql") from None
    return pymysql
