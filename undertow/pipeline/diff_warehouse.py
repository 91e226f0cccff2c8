"""The ``warehouse`` diff engine; it lives in :mod:`undertow.pipeline.diff.warehouse`.

This path stays importable for code written against it (it loads sqlglot, so the package
``undertow.pipeline.diff`` does not import the warehouse engine itself).
"""

from undertow.pipeline.diff.warehouse import (
    HASH_ALGORITHM,
    HASH_ALGORITHMS,
    MD5_LENPREFIX,
    PG_HASH_RECORD,
    WarehouseDiffEngine,
    empty_hash_sql,
    key_text_sql,
    row_hash_sql,
    text_of,
)

__all__ = [
    "HASH_ALGORITHM",
    "HASH_ALGORITHMS",
    "MD5_LENPREFIX",
    "PG_HASH_RECORD",
    "WarehouseDiffEngine",
    "empty_hash_sql",
    "key_text_sql",
    "row_hash_sql",
    "text_of",
]
