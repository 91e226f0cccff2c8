"""The local engine's stored row hashes (undertow.pipeline.diff.local_hash): used while their
identity is today's, recomputed from the accepted values when it is not, never a resend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from tests.unit.test_diff import all_batches, first_run, plan, reader, spec, users
from undertow.pipeline.diff import LocalDiffEngine
from undertow.pipeline.diff.local_hash import HASH, IDENTITY

pytestmark = pytest.mark.unit


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def engine_at(state: Path, **kwargs: Any) -> LocalDiffEngine:
    return LocalDiffEngine(state, "users_out", **kwargs)


@pytest.fixture
def engine(state: Path) -> Iterator[LocalDiffEngine]:
    eng = engine_at(state)
    yield eng
    eng.close()


def stored(engine: LocalDiffEngine) -> tuple[str, list[tuple[int, bool]]]:
    """The identity, and per row whether its stored hash is the hash of its values."""
    ident = engine.con.execute(f"SELECT identity FROM {IDENTITY}").fetchone()
    rows = engine.con.execute(
        f"SELECT id, {HASH} = hash(email, plan) FROM snapshot ORDER BY id"
    ).fetchall()
    return str(ident[0]) if ident else "", [(int(i), bool(ok)) for i, ok in rows]


def kinds(engine: LocalDiffEngine, rows: list[dict[str, Any]], run_id: str) -> tuple[int, ...]:
    stats = engine.build(run_id, reader(rows), spec(), plan(), 100)
    return stats.added, stats.changed, stats.removed, stats.unchanged


def test_every_folded_row_stores_the_hash_of_its_values(engine: LocalDiffEngine) -> None:
    first_run(engine, users(5))
    ident, rows = stored(engine)
    assert ident.startswith(f"duckdb {duckdb.__version__}: ")
    assert '"email" VARCHAR, "plan" VARCHAR' in ident
    assert rows == [(i, True) for i in range(5)]
    first_run(engine, users(6, **{"2": {"plan": "pro"}}), run_id="r2")  # one changed, one added
    assert stored(engine)[1] == [(i, True) for i in range(6)]


def test_the_diff_reads_the_stored_hashes_while_their_identity_is_current(
    engine: LocalDiffEngine,
) -> None:
    first_run(engine, users(4))
    # a stored hash that is not its row's: only a diff that reads it sees row 1 as changed
    engine.con.execute(f"UPDATE snapshot SET {HASH} = 1 WHERE id = 1")
    assert kinds(engine, users(4), "r2") == (0, 1, 0, 3)


def test_another_identity_rehashes_the_values_and_resends_nothing(
    engine: LocalDiffEngine,
) -> None:
    """As after a DuckDB upgrade that changed hash(): every stored hash is wrong, the
    identity says so, and the diff hashes the accepted values instead (and stores them)."""
    first_run(engine, users(4))
    engine.con.execute(f"UPDATE snapshot SET {HASH} = 1")
    engine.con.execute(f"UPDATE {IDENTITY} SET identity = 'duckdb 0.0.1: ...'")
    assert kinds(engine, users(4, **{"3": {"email": "new@x.com"}}), "r2") == (0, 1, 0, 3)
    ident, rows = stored(engine)
    assert ident.startswith(f"duckdb {duckdb.__version__}: ")
    assert rows == [(i, True) for i in range(4)]


def test_a_snapshot_from_before_the_hashes_gets_them_without_a_resend(
    engine: LocalDiffEngine,
) -> None:
    first_run(engine, users(4))
    engine.con.execute(f"ALTER TABLE snapshot DROP COLUMN {HASH}")
    engine.con.execute(f"DROP TABLE {IDENTITY}")
    assert kinds(engine, users(4), "r2") == (0, 0, 0, 4)
    assert stored(engine)[1] == [(i, True) for i in range(4)]


def test_a_retyped_column_changes_the_identity(engine: LocalDiffEngine) -> None:
    schema = pa.schema([("id", pa.int64()), ("email", pa.string()), ("plan", pa.int32())])
    rows = [{"id": i, "email": f"u{i}@x.com", "plan": i} for i in range(3)]
    s = spec()
    stats = engine.build("r1", reader(rows, schema), s, plan(), 100)
    engine.fold("r1", s, all_batches(stats), [])
    engine.discard("r1")
    wide = pa.schema([("id", pa.int64()), ("email", pa.string()), ("plan", pa.int64())])
    stats = engine.build("r2", reader(rows, wide), s, plan(), 100)
    assert (stats.changed, stats.unchanged) == (0, 3)  # INTEGER -> BIGINT: same values
    assert '"plan" BIGINT' in stored(engine)[0]


def test_a_dry_run_with_old_hashes_changes_nothing(state: Path) -> None:
    eng = engine_at(state)
    first_run(eng, users(3))
    eng.con.execute(f"UPDATE {IDENTITY} SET identity = 'duckdb 0.0.1: ...'")
    eng.close()
    dry = engine_at(state, dry_run=True)
    try:
        stats = dry.build("p1", reader(users(3)), spec(), plan(), 100)
        assert (stats.changed, stats.unchanged) == (0, 3)
    finally:
        dry.close()
    eng = engine_at(state)
    try:
        assert stored(eng)[0] == "duckdb 0.0.1: ..."  # the file was not touched
    finally:
        eng.close()
