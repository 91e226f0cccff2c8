"""The state store's schema: frozen migrations build exactly the schema the code uses, on
SQLite and on real PostgreSQL; a store migrated by a newer Undertow is refused; an existing
PostgreSQL store moves only by `undertow migrate`."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

import undertow.state.migrations as migrations_pkg
from undertow.errors import NewerStoreError, StateError
from undertow.state import cluster, debug_log, jobs, orchestration, schema
from undertow.state.connection import SCHEMA_VERSION
from undertow.state.records import normalise_url, utc_now
from undertow.state.store import StateStore

pytestmark = pytest.mark.integration

UNDERTOW = str(Path(sys.executable).with_name("undertow"))


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
    else:
        yield request.getfixturevalue("pg_database")


def described(url: str) -> dict[str, dict[str, tuple[str, bool, bool]]]:
    """table -> column -> (type affinity, nullable, in the primary key), as the database has it."""
    engine = sa.create_engine(normalise_url(url))
    try:
        inspector = sa.inspect(engine)
        out = {}
        for table in inspector.get_table_names():
            pk = set(inspector.get_pk_constraint(table)["constrained_columns"])
            out[table] = {
                c["name"]: (
                    _affinity(c["type"]),
                    bool(c["nullable"]) and c["name"] not in pk,
                    c["name"] in pk,
                )
                for c in inspector.get_columns(table)
            }
        return out
    finally:
        engine.dispose()


def _affinity(kind: object) -> str:
    text = str(kind).upper()
    for word in ("INT", "CHAR", "TEXT", "BOOL", "TIMESTAMP", "DATETIME", "DOUBLE", "FLOAT"):
        if word in text:
            return {"CHAR": "TEXT", "DATETIME": "TIMESTAMP", "DOUBLE": "FLOAT"}.get(word, word)
    return text


def expected() -> dict[str, dict[str, tuple[str, bool, bool]]]:
    out = {}
    metas = {t.metadata for t in (*debug_log.TABLES, jobs.jobs)}
    for meta in (schema.metadata, orchestration.metadata, cluster.metadata, *metas):
        for table in meta.sorted_tables:
            out[table.name] = {
                c.name: (
                    _affinity(c.type.compile(dialect=postgresql.dialect())),
                    bool(c.nullable) and not c.primary_key,
                    bool(c.primary_key),
                )
                for c in table.columns
            }
    return out


def test_the_migrations_build_exactly_the_schema_the_code_uses(state_url: str) -> None:
    StateStore(state_url).close()
    got = described(state_url)
    want = expected()
    assert set(got) == set(want)
    for table, columns in want.items():
        # a BOOL is an INT on SQLite; compare names and nullability there, types elsewhere
        if state_url.startswith("sqlite"):
            assert {k: v[1:] for k, v in got[table].items()} == {
                k: v[1:] for k, v in columns.items()
            }, table
        else:
            assert got[table] == columns, table


def test_no_migration_imports_the_current_schema() -> None:
    folder = Path(migrations_pkg.__file__).parent
    for path in sorted(folder.glob("m[0-9][0-9][0-9][0-9]_*.py")):
        tree = ast.parse(path.read_text())
        imported = [
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        ] + [
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        ]
        assert not [m for m in imported if m.startswith("undertow")], (path.name, imported)


def _set_version(url: str, version: int) -> None:
    engine = sa.create_engine(normalise_url(url))
    with engine.begin() as conn:
        conn.execute(schema.schema_version.insert().values(version=version, applied_at=utc_now()))
    engine.dispose()


def test_a_store_migrated_by_a_newer_undertow_is_refused(state_url: str) -> None:
    StateStore(state_url).close()
    _set_version(state_url, SCHEMA_VERSION + 1)
    for migrate in (None, True, False):
        with pytest.raises(NewerStoreError, match="newer") as info:
            StateStore(state_url, migrate=migrate)
        assert "upgrade Undertow" in str(info.value)


def _version_3_store(url: str) -> None:
    """A store as Undertow left it at schema version 3 (m0001..m0003 only)."""
    from undertow.state.migrations import m0001_initial, m0002_row_status, m0003_orchestration

    engine = sa.create_engine(normalise_url(url))
    with engine.begin() as conn:
        schema.schema_version.create(conn)
        for number, module in enumerate((m0001_initial, m0002_row_status, m0003_orchestration), 1):
            module.upgrade(conn)
            conn.execute(
                schema.schema_version.insert().values(version=number, applied_at=utc_now())
            )
    engine.dispose()


def test_an_existing_postgres_store_moves_only_by_undertow_migrate(
    pg_database: str, tmp_path: Path
) -> None:
    _version_3_store(pg_database)
    with pytest.raises(StateError, match="schema version 3") as info:
        StateStore(pg_database)
    assert "undertow migrate" in str(info.value)

    (tmp_path / "undertow.yml").write_text(f"name: m\nstate: {pg_database}\n")
    done = subprocess.run(
        [UNDERTOW, "migrate", "--project", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert f"from version 3 to {SCHEMA_VERSION}" in done.stdout
    again = subprocess.run(
        [UNDERTOW, "migrate", "--project", str(tmp_path), "--json"], capture_output=True, text=True
    )
    assert again.returncode == 0 and f'"version":{SCHEMA_VERSION}' in again.stdout.replace(" ", "")
    store = StateStore(pg_database, migrate=False)
    try:
        assert store.version == SCHEMA_VERSION
        run = store.create_run("s")
        assert store.get_run(run.id) is not None
    finally:
        store.close()


def test_an_older_sqlite_store_is_migrated_on_open(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    _version_3_store(url)
    store = StateStore(url)
    try:
        assert store.version == SCHEMA_VERSION
        assert "ttl_seconds" in {
            c["name"] for c in sa.inspect(store.engine).get_columns("undertow_locks")
        }
    finally:
        store.close()
