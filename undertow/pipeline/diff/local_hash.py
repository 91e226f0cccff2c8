"""The snapshot's stored row hashes: DuckDB's ``hash()`` of each accepted row's mapped
values, kept in the snapshot's ``_ut_h`` so that a diff does not hash every accepted row
again in every run (a 1,000,000-row snapshot: 70 ms of CPU of a 100 ms join).

The values stay the truth and the hashes a cache of them. The one row of ``_ut_hash_identity`` names
what the stored hashes were computed with: the DuckDB version, and the mapped columns in
order with their types. A diff reads ``s._ut_h`` only when that identity is the one it
would compute now; otherwise it hashes the accepted values as before, and a real run then
stores fresh hashes and the new identity in one transaction (a dry run changes nothing). So
a DuckDB upgrade that changed ``hash()`` costs one run a rehash of the snapshot, never a
resend, and a stored hash is never stale: the fold writes the hash of every row it writes
(:func:`insert_hash`), and every other change to the values (a column added, dropped or
retyped by ``align_snapshot``, a mapping that lost a column) changes the identity. A
snapshot written before the hashes existed has neither ``_ut_h`` nor ``_ut_hash_identity``: its
first diff adds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import duckdb

from undertow.pipeline.diff.contract import lit, q

if TYPE_CHECKING:
    from undertow.pipeline.diff.local import LocalDiffEngine

HASH = "_ut_h"
"""The snapshot's column of stored row hashes."""
IDENTITY = "_ut_hash_identity"
"""The one-row table naming what the stored hashes were computed with."""


def row_hash(values: Sequence[str], alias: str) -> str:
    """DuckDB's ``hash()`` of the mapped values, as SQL (``alias`` may be empty)."""
    if not values:
        return "0::UBIGINT"
    return f"hash({', '.join((f'{alias}.' if alias else '') + q(c) for c in values)})"


def identity(types: dict[str, str], values: Sequence[str]) -> str:
    """What a hash of ``values`` of these ``types`` is computed with, as one line of text."""
    return f"duckdb {duckdb.__version__}: " + ", ".join(f"{q(c)} {types[c]}" for c in values)


def _identity_table(engine: LocalDiffEngine) -> str:
    """The identity table beside the snapshot (in ``snap.main`` in a dry run)."""
    return engine.snapshot.rsplit(".", 1)[0] + "." + IDENTITY


def _stored(engine: LocalDiffEngine) -> str | None:
    try:
        found = engine._one(f"SELECT identity FROM {_identity_table(engine)}")
    except duckdb.CatalogException:  # no such table: a snapshot older than stored hashes
        return None
    return None if found is None else str(found)


def snapshot_hash(engine: LocalDiffEngine, values: Sequence[str]) -> str:
    """The SQL of an accepted row's hash for the diff's join (snapshot alias ``s``): the
    stored ``s._ut_h`` when current, after storing fresh ones on a real run if they were
    not; the hash of the values themselves in a dry run with no current hashes."""
    described = engine.con.execute(f"DESCRIBE {engine.snapshot}").fetchall()
    types = {str(r[0]): str(r[1]) for r in described}
    wanted = identity(types, values)
    if HASH in types and _stored(engine) == wanted:
        return f"s.{HASH}"
    if engine.dry_run:
        return row_hash(values, "s")
    con = engine.con
    con.execute("BEGIN")
    try:
        if HASH not in types:
            con.execute(f"ALTER TABLE {engine.snapshot} ADD COLUMN {HASH} UBIGINT")
        con.execute(f"UPDATE {engine.snapshot} SET {HASH} = {row_hash(values, '')}")
        con.execute(
            f"CREATE OR REPLACE TABLE {_identity_table(engine)} AS SELECT {lit(wanted)} AS identity"
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return f"s.{HASH}"


def insert_hash(types: dict[str, str], values: Sequence[str], alias: str) -> str | None:
    """The SQL of a folded row's hash: of its values cast to the snapshot's column ``types``,
    so it is the hash of what the snapshot stores; None when the snapshot keeps no hashes (one
    written before them, folded by a resumed run: its next diff stores them)."""
    if HASH not in types or any(c not in types for c in values):
        return None  # a column the snapshot lacks: the identity is not current either
    if not values:
        return "0::UBIGINT"
    return "hash(" + ", ".join(f"CAST({alias}.{q(c)} AS {types[c]})" for c in values) + ")"
