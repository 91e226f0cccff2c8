"""PostgreSQL rows through ADBC (``adbc-driver-postgresql``): the fast read path.

ADBC's C driver reads ``COPY ... (FORMAT binary)`` straight into Arrow, which measured
about twice the rate of the COPY-CSV path (1M rows of 11 columns on this project's
machines: see ``docs/sources/postgres.md``). It is used when every column of the model has
a type ADBC maps to what the CSV path produces; otherwise (``uuid``, ``interval``, ``oid``,
arrays of those or of ``numeric``, enums, domains, anything unknown) the CSV path runs.

``numeric`` arrives as ADBC's opaque extension over its exact text; it is cast to the
``decimal128(p, s)`` that :meth:`PostgresSource.describe` found from the declared precision
and scale, or kept as that text when the column has none.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import Any

import pyarrow as pa

# Type OIDs whose ADBC Arrow type is (or casts exactly to) the one the CSV path produces.
SAFE_OIDS = frozenset(
    {
        16,  # bool
        17,  # bytea
        18,  # char
        19,  # name
        20,  # int8
        21,  # int2
        23,  # int4
        25,  # text
        114,  # json (text of the value)
        700,  # float4
        701,  # float8
        1042,  # bpchar
        1043,  # varchar
        1082,  # date
        1083,  # time
        1114,  # timestamp
        1184,  # timestamptz
        1700,  # numeric (exact text, cast to decimal128)
        3802,  # jsonb (text of the value)
        # one-dimensional arrays of the simple ones
        1000,  # bool[]
        1005,  # int2[]
        1007,  # int4[]
        1009,  # text[]
        1015,  # varchar[]
        1016,  # int8[]
        1021,  # float4[]
        1022,  # float8[]
        1182,  # date[]
        1115,  # timestamp[]
        1185,  # timestamptz[]
    }
)

# Bytes of COPY data ADBC turns into one batch: batches are then cut to batch_rows rows.
_MIN_HINT, _MAX_HINT = 1 << 20, 64 << 20


def available() -> bool:
    try:
        import adbc_driver_postgresql.dbapi  # noqa: F401
    except ImportError:
        return False
    return True


def batches(
    conninfo: str,
    sql: str,
    schema: pa.Schema,
    *,
    settings: Mapping[str, str],
    batch_rows: int,
    on_error: Callable[[BaseException], BaseException],
) -> Generator[pa.RecordBatch, None, None]:
    """Run ``sql`` in a read-only transaction and yield batches of ``schema``.

    ``settings`` are applied with SET LOCAL first (search_path). Errors pass through
    ``on_error``; the connection is closed whatever happens, which cancels an unfinished
    COPY on the server.
    """
    import adbc_driver_postgresql.dbapi as dbapi

    hint = str(max(_MIN_HINT, min(_MAX_HINT, batch_rows * 256)))
    try:
        conn = dbapi.connect(conninfo)
    except dbapi.Error as exc:
        raise on_error(exc) from None
    try:
        cur = conn.cursor()
        try:
            cur.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": hint})
            reader: Any = None
            try:
                cur.execute("BEGIN READ ONLY")  # dbapi's implicit transaction is read-write
                for statement in settings.values():
                    cur.execute(statement)
                cur.execute(sql)
                reader = cur.fetch_record_batch()
            except dbapi.Error as exc:
                raise on_error(exc) from None
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                except (dbapi.Error, pa.ArrowException, OSError) as exc:
                    raise on_error(exc) from None
                typed = _typed(batch, schema, on_error)
                for start in range(0, typed.num_rows, batch_rows):
                    yield typed.slice(start, batch_rows)
        finally:
            cur.close()
    finally:
        conn.close()


def _typed(
    batch: pa.RecordBatch, schema: pa.Schema, on_error: Callable[[BaseException], BaseException]
) -> pa.RecordBatch:
    arrays = []
    for array, field in zip(batch.columns, schema, strict=True):
        arrays.append(_cast(array, field.type, on_error))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _cast(
    array: pa.Array, target: pa.DataType, on_error: Callable[[BaseException], BaseException]
) -> pa.Array:
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    if pa.types.is_list(array.type) and isinstance(array.type.value_type, pa.ExtensionType):
        values = array.values.storage  # type: ignore[attr-defined]
        array = pa.ListArray.from_arrays(array.offsets, values, mask=array.is_null())
    if array.type.equals(target):
        return array
    try:
        return array.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise on_error(exc) from None
