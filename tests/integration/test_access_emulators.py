"""``check_access`` of Snowflake (fakesnow) and ClickHouse (chDB): the shared probe of
``undertow.sources._access`` against the warehouses' own engines, through the real drivers.

Marked ``warehouses`` (own venv: ``make test-warehouses``). What the emulators cannot show:
grants and roles (fakesnow accepts any role and enforces none; chDB runs as ``default`` with
every privilege). So a refusal here is a missing relation (both emulators) or, on chDB, a
user in ``readonly`` mode, the way docs/sources/clickhouse.md makes its read-only user; the
unit tests (tests/unit/test_access_checks.py) cover each refused step.
"""

from __future__ import annotations

import importlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from warehouse_support import fakesnow_source

from undertow.sources.base import AccessProblem, SqlSession
from undertow.sources.clickhouse import ClickHouseConfig, ClickHouseSource
from undertow.sources.snowflake import SnowflakeSource

pytestmark = pytest.mark.warehouses

FAKESNOW_COPY = "ignore:Arrow output on a DB-API result:UserWarning"


# -- Snowflake (fakesnow) ---------------------------------------------------------------------


@pytest.fixture
def schema() -> str:
    """A schema of its own for each test: one fakesnow server serves the whole process."""
    return f"ACC_{uuid.uuid4().hex[:10].upper()}"


@pytest.fixture
def sf(fakesnow_server: dict[str, Any], schema: str) -> SnowflakeSource:
    source = fakesnow_source(fakesnow_server, schema, role="UNDERTOW_READER")
    session = source.session()
    try:
        session.execute(f"CREATE OR REPLACE TABLE ANALYTICS.{schema}.USERS (id NUMBER(38, 0))")
        session.execute(f"CREATE OR REPLACE VIEW ANALYTICS.{schema}.ACTIVE AS SELECT * FROM USERS")
    finally:
        session.close()
    return source


def sf_tables(source: SnowflakeSource, scratch: str) -> list[tuple[Any, ...]]:
    session = source.session()
    try:
        return session.rows(
            f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{scratch}'"
        )
    finally:
        session.close()


def sf_schema_exists(source: SnowflakeSource, scratch: str) -> bool:
    session = source.session()
    try:
        rows = session.rows(
            f"SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = '{scratch}'"
        )
    finally:
        session.close()
    return bool(rows[0][0])


@pytest.mark.filterwarnings(FAKESNOW_COPY)
def test_snowflake_readable_relations_give_no_problem(sf: SnowflakeSource, schema: str) -> None:
    relations = ["users", "USERS", "active", f"{schema}.users", f"analytics.{schema}.users"]
    assert sf.check_access(relations) == []


@pytest.mark.filterwarnings(FAKESNOW_COPY)
def test_snowflake_missing_relation_is_named_with_the_grant(
    sf: SnowflakeSource, schema: str
) -> None:
    [problem] = sf.check_access(["users", "nope", f"{schema}.nope"])
    assert problem.message.startswith(
        f"source 'sf': role UNDERTOW_READER cannot read ANALYTICS.{schema}.NOPE (no such "
        "object, or the role may not see it: Snowflake answers the same for both): 002003 "
    )
    assert "NOPE" in problem.message.split("): ", 1)[1]  # fakesnow's own message follows
    assert problem.grants == (
        "GRANT USAGE ON DATABASE ANALYTICS TO ROLE UNDERTOW_READER;",
        f"GRANT USAGE ON SCHEMA ANALYTICS.{schema} TO ROLE UNDERTOW_READER;",
        f"GRANT SELECT ON TABLE ANALYTICS.{schema}.NOPE TO ROLE UNDERTOW_READER;",
    )


@pytest.mark.filterwarnings(FAKESNOW_COPY)
def test_snowflake_role_not_configured_is_asked_of_the_warehouse(
    fakesnow_server: dict[str, Any], sf: SnowflakeSource, schema: str
) -> None:
    source = fakesnow_source(fakesnow_server, schema)  # no `role`: CURRENT_ROLE() names it
    session = source.session()
    try:
        [(role,)] = session.rows("SELECT CURRENT_ROLE()")
    finally:
        session.close()
    [problem] = source.check_access(["missing_table"])
    grantee = role if str(role) == str(role).upper() else f'"{role}"'
    assert problem.grants[-1] == (
        f"GRANT SELECT ON TABLE ANALYTICS.{schema}.MISSING_TABLE TO ROLE {grantee};"
    )


@pytest.mark.filterwarnings(FAKESNOW_COPY)
def test_snowflake_scratch_probe_succeeds_and_leaves_no_table(
    sf: SnowflakeSource, schema: str
) -> None:
    scratch = f"ut_{schema.lower()}"  # lower-case and quoted, as the engine's default
    assert sf.check_access(["users"], scratch_schema=scratch) == []
    assert sf_schema_exists(sf, scratch)
    assert sf_tables(sf, scratch) == []
    assert sf.check_access([], scratch_schema=scratch) == []  # the schema exists now
    assert sf_tables(sf, scratch) == []


# -- ClickHouse (chDB) -------------------------------------------------------------------------


def _chdb() -> Any:
    try:
        return importlib.import_module("chdb")
    except ImportError:
        pytest.fail(
            'chdb is not installed: run `make test-warehouses`, or `pip install -e ".[dev,'
            'clickhouse,warehouse-emulators]"` in this virtualenv',
            pytrace=False,
        )


class ReadOnlyClickHouse(ClickHouseSource):
    """A user in ``readonly`` mode (2: settings may change, nothing may be written)."""

    def session(self) -> SqlSession:
        session = super().session()
        session.execute("SET readonly = 2")
        return session


@pytest.fixture
def ch(tmp_path: Path) -> ClickHouseSource:
    _chdb()
    config = ClickHouseConfig.model_validate({"type": "clickhouse", "path": str(tmp_path / "ch")})
    source = ClickHouseSource(config, name="ch")
    session = source.session()
    try:
        session.execute("CREATE TABLE users (id UInt64) ENGINE = MergeTree ORDER BY id")
        session.execute("CREATE DATABASE crm")
        session.execute("CREATE TABLE crm.orders (id UInt64) ENGINE = MergeTree ORDER BY id")
    finally:
        session.close()
    return source


def ch_tables(source: ClickHouseSource, database: str) -> list[tuple[Any, ...]]:
    session = source.session()
    try:
        return session.rows(f"SELECT name FROM system.tables WHERE database = '{database}'")
    finally:
        session.close()


def ch_databases(source: ClickHouseSource) -> set[str]:
    session = source.session()
    try:
        return {str(r[0]) for r in session.rows("SELECT name FROM system.databases")}
    finally:
        session.close()


def test_clickhouse_readable_relations_give_no_problem(ch: ClickHouseSource) -> None:
    assert ch.check_access(["users", "default.users", "crm.orders"]) == []


def test_clickhouse_missing_relation_is_named_with_the_grant(ch: ClickHouseSource) -> None:
    problems = ch.check_access(["users", "nope", "default.nope", "nodb.orders"])
    assert [p.grants for p in problems] == [
        ("GRANT SELECT ON default.nope TO default;",),
        ("GRANT SELECT ON nodb.orders TO default;",),
    ]
    first, second = (p.message for p in problems)
    assert first.startswith(
        "source 'ch': user 'default' cannot read default.nope (no such table or database: the "
        "server says it does not exist): Code: 60. "
    )
    assert first.endswith("(UNKNOWN_TABLE)")
    assert second.startswith("source 'ch': user 'default' cannot read nodb.orders (no such ")
    assert second.endswith("(UNKNOWN_DATABASE)")


def test_clickhouse_scratch_probe_succeeds_and_leaves_no_table(ch: ClickHouseSource) -> None:
    assert "undertow" not in ch_databases(ch)
    assert ch.check_access(["users"], scratch_schema="undertow") == []
    assert "undertow" in ch_databases(ch)
    assert ch_tables(ch, "undertow") == []
    assert ch.check_access([], scratch_schema="undertow") == []  # the database exists now
    assert ch_tables(ch, "undertow") == []


def test_clickhouse_readonly_user_is_refused_with_the_grants_and_the_cause(
    ch: ClickHouseSource,
) -> None:
    readonly = ReadOnlyClickHouse(ch.config, name="ch")
    grants = (
        "GRANT SELECT, INSERT, ALTER DELETE, CREATE TABLE, DROP TABLE, CREATE DATABASE ON "
        "undertow.* TO default;",
    )
    cause = (
        "Code: 164. DB::Exception: default: Cannot execute query in readonly mode. (READONLY) "
        "(a `readonly` user may not write whatever its grants: the engine needs a user without "
        "it, e.g. ALTER USER default SETTINGS readonly = 0)"
    )
    assert readonly.check_access(["users"], scratch_schema="undertow") == [
        AccessProblem(
            "source 'ch': the warehouse diff engine keeps its tables in schema undertow, which "
            "does not exist (or is not visible to user 'default'), and user 'default' cannot "
            f"create it: {cause}",
            grants,
        )
    ]
    assert ch.check_access([], scratch_schema="undertow") == []  # created by a writer
    assert readonly.check_access([], scratch_schema="undertow") == [
        AccessProblem(
            "source 'ch': the warehouse diff engine keeps its tables in schema undertow, where "
            f"user 'default' cannot create a table: {cause}",
            grants,
        )
    ]
    assert ch_tables(ch, "undertow") == []
