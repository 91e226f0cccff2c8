"""Least-privilege checks of ``undertow validate`` for the sources that probe for them
(``undertow.sources._access``): Snowflake, ClickHouse, BigQuery, Databricks and SQLite.

The shared probe runs here against real files: SQLite (through ``SQLiteSource`` itself) and
DuckDB (through a small ``DuckDBSource`` subclass that plugs the shared mechanism in, and
whose session can refuse a kind of statement as a warehouse without the privilege would).
Each warehouse's grant builder is checked for its exact GRANT text and message wording;
its wiring (``check_access`` of the source) with the source's own error formatting and no
driver installed. The emulator runs (fakesnow, chDB) are in
tests/integration/test_access_emulators.py.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlglot

from undertow.errors import ModelError, SourceError
from undertow.project import Project
from undertow.sources import _access
from undertow.sources._access import Principal, WarehouseAccess
from undertow.sources.base import AccessProblem, SqlSession
from undertow.sources.bigquery import BigQueryAccess, BigQueryConfig, BigQuerySource
from undertow.sources.clickhouse import ClickHouseAccess, ClickHouseConfig, ClickHouseSource
from undertow.sources.databricks import (
    DatabricksAccess,
    DatabricksConfig,
    DatabricksSource,
    model_error,
)
from undertow.sources.duckdb import DuckDBConfig, DuckDBSource
from undertow.sources.snowflake import SnowflakeAccess, SnowflakeConfig, SnowflakeSource
from undertow.sources.sqlite import SQLiteConfig, SQLiteSource

pytestmark = pytest.mark.unit

SA = "undertow@acme-prod.iam.gserviceaccount.com"


def no_connection() -> SqlSession:
    """A source's ``session`` when the warehouse cannot be reached (no driver, no network)."""
    raise SourceError("the 'driver' driver is not installed")


# -- SQLite: the read probe without grants ----------------------------------------------


@pytest.fixture
def app_db(tmp_path: Path) -> Path:
    conn = sqlite3.connect(tmp_path / "app.db")
    conn.executescript(
        """create table users (id integer primary key, email text);
           create view active as select * from users;"""
    )
    conn.close()
    return tmp_path / "app.db"


def sqlite_source(path: Path | str, base_dir: Path) -> SQLiteSource:
    config = SQLiteConfig.model_validate({"type": "sqlite", "path": str(path)})
    return SQLiteSource(config, name="app", base_dir=str(base_dir))


def test_sqlite_readable_relations_give_no_problem(app_db: Path) -> None:
    src = sqlite_source("app.db", app_db.parent)
    assert src.check_access(["users", "main.users", "active"]) == []


def test_sqlite_missing_relation_is_named_without_a_grant(app_db: Path) -> None:
    src = sqlite_source("app.db", app_db.parent)
    problems = src.check_access(["users", "nope", "main.gone"])
    assert problems == [
        AccessProblem(
            f"source 'app': table or view nope does not exist in {app_db} (no such table: nope)"
        ),
        AccessProblem(
            f"source 'app': table or view main.gone does not exist in {app_db} "
            "(no such table: main.gone)"
        ),
    ]


def test_sqlite_missing_file_is_one_problem(tmp_path: Path) -> None:
    src = sqlite_source("gone.db", tmp_path)
    assert src.check_access(["users", "orders"]) == [
        AccessProblem(
            f"source 'app': the SQLite database file {tmp_path / 'gone.db'} does not exist "
            f"(path 'gone.db', relative to the project folder {tmp_path}); fix `path` in the "
            "source's config, or create the file first"
        )
    ]


def test_sqlite_file_that_is_not_a_database_is_one_problem(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"not a database " * 400)
    [problem] = sqlite_source("junk.db", tmp_path).check_access(["users"])
    assert problem == AccessProblem(
        f"source 'app': cannot read the SQLite database {tmp_path / 'junk.db'}: file is not a "
        "database; check the file is a SQLite database and that this user may read it"
    )


def test_sqlite_scratch_schema_says_the_engine_cannot_run(app_db: Path) -> None:
    src = sqlite_source("app.db", app_db.parent)
    assert src.check_access(["users"], scratch_schema="undertow") == [
        AccessProblem(
            "source 'app' (type sqlite) cannot run the warehouse diff engine, which a sync of "
            "it uses (scratch schema 'undertow'): use `diff: {engine: local}` for the syncs "
            "of this source"
        )
    ]


def test_validate_reports_the_sqlite_access_problems(app_db: Path) -> None:
    """Through ``undertow validate``'s own path: relations parsed from the model's SQL."""
    (app_db.parent / "undertow.yml").write_text(
        """
name: acc
sources:
  app: {type: sqlite, path: app.db}
destinations:
  out: {type: file, path: users.jsonl}
models:
  users: {source: app, sql: "select u.id from users u join main.orders o on o.id = u.id", primary_key: id}
syncs:
  users_out: {model: users, destination: out, diff: {engine: warehouse, schema: scratch}}
"""
    )
    problems = [
        p.message for p in Project.load(str(app_db.parent)).validate() if p.key == "sources.app"
    ]
    assert problems == [
        f"source 'app': table or view main.orders does not exist in {app_db} (no such table: "
        "main.orders)",
        "source 'app' (type sqlite) cannot run the warehouse diff engine, which a sync of it "
        "uses (scratch schema 'scratch'): use `diff: {engine: local}` for the syncs of this "
        "source",
    ]


# -- the shared probe on a real DuckDB file ------------------------------------------------


class Refused(Exception):
    """What a warehouse raises for a statement its user may not run."""


class RefusingSession:
    """The source's real DuckDB session, refusing the statements ``refuse`` matches."""

    dialect = "duckdb"

    def __init__(
        self,
        session: SqlSession,
        refuse: str | None,
        seen: list[str],
        error: type[BaseException] = Refused,
    ) -> None:
        self.session = session
        self.refuse = refuse
        self.seen = seen
        self.error = error

    def _check(self, sql: str) -> None:
        self.seen.append(sql)
        if self.refuse and re.match(self.refuse, sql):
            raise self.error(f"Access denied: user reader may not run {' '.join(sql.split()[:2])}")

    def execute(self, sql: str) -> None:
        self._check(sql)
        self.session.execute(sql)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        self._check(sql)
        return self.session.rows(sql)

    def close(self) -> None:
        self.session.close()


class DuckDBAccess(WarehouseAccess):
    warehouse = "DuckDB"

    def __init__(self, source: DuckDBSource) -> None:
        super().__init__(source)
        self.lookups = 0

    def find_principal(self) -> Principal:
        self.lookups += 1
        return Principal("reader", "user 'reader'", ("main",))

    def read_grants(self, qualified: tuple[str, ...]) -> tuple[str, ...]:
        return (f"GRANT SELECT ON {self.dotted(qualified)} TO reader;",)

    def scratch_grants(self, schema: str) -> tuple[str, ...]:
        return (f"GRANT ALL ON SCHEMA {self.name(schema)} TO reader;",)


class ProbedDuckDB(DuckDBSource):
    """DuckDB with the shared probe instead of its file-permission check."""

    refuse: str | None = None
    error: type[BaseException] = Refused

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[str] = []
        self.access = DuckDBAccess(self)

    def session(self) -> SqlSession:
        return RefusingSession(super().session(), self.refuse, self.seen, self.error)

    def check_access(
        self, relations: Any, *, scratch_schema: str | None = None
    ) -> list[AccessProblem]:
        return _access.check_access(self.access, relations, scratch_schema)


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        con.execute("create table users as select 1 as id")
        con.execute('create table "Odd Name" as select 1 as id')
    return tmp_path / "w.duckdb"


def probed(path: Path, refuse: str | None = None) -> ProbedDuckDB:
    config = DuckDBConfig.model_validate({"type": "duckdb", "path": str(path)})
    src = ProbedDuckDB(config, name="wh")
    src.refuse = refuse
    return src


def tables(path: Path) -> list[tuple[str, str]]:
    with duckdb.connect(str(path), read_only=True) as con:
        return sorted(
            con.execute(
                "select table_schema, table_name from information_schema.tables order by all"
            ).fetchall()
        )


def schemas(path: Path) -> set[str]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {
            r[0]
            for r in con.execute("select schema_name from information_schema.schemata").fetchall()
        }


def test_readable_relations_cost_no_principal_lookup(warehouse: Path) -> None:
    src = probed(warehouse)
    assert src.check_access(["users", "main.users", "Odd Name"]) == []
    assert src.access.lookups == 0  # the principal is only looked up to word a problem


def test_a_refused_relation_names_it_the_server_message_and_the_grant(warehouse: Path) -> None:
    src = probed(warehouse)
    problems = src.check_access(["users", "nope", "main.nope", "Odd Gone"])
    assert [p.grants for p in problems] == [
        ("GRANT SELECT ON main.nope TO reader;",),  # `nope` and `main.nope`: one problem
        ('GRANT SELECT ON main."Odd Gone" TO reader;',),
    ]
    first, second = (p.message for p in problems)
    assert first.startswith(
        "source 'wh': user 'reader' cannot read main.nope (DuckDB refused the query): "
        "Catalog Error: Table with name nope does not exist!"
    )
    assert second.startswith("source 'wh': user 'reader' cannot read main.\"Odd Gone\" (")
    assert "model '" not in first  # the ModelError's own prefix is cut


def test_a_driver_error_is_a_source_error_not_a_problem(
    warehouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = probed(warehouse)

    def describe(sql: str, *, model: str) -> Any:
        raise OSError("connection reset by peer")

    monkeypatch.setattr(src, "describe", describe)
    with pytest.raises(SourceError, match="cannot check read access to users: connection reset"):
        src.check_access(["users"])


def test_an_unreachable_source_raises(tmp_path: Path) -> None:
    with pytest.raises(SourceError):
        probed(tmp_path / "missing.duckdb").check_access(["users"])
    with pytest.raises(SourceError):
        probed(tmp_path / "missing.duckdb").check_access([], scratch_schema="undertow")


def test_the_scratch_probe_creates_the_schema_and_leaves_no_table(warehouse: Path) -> None:
    src = probed(warehouse)
    assert src.check_access([], scratch_schema="undertow") == []
    assert "undertow" in schemas(warehouse)
    assert tables(warehouse) == [("main", "Odd Name"), ("main", "users")]
    statements = [s.split(" AS ")[0] for s in src.seen]
    probe = re.search(r'"(ut_probe_[0-9a-f]{16})"', src.seen[2])
    assert probe is not None
    t = f'"undertow"."{probe.group(1)}"'
    assert statements == [
        "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = 'undertow'",
        'CREATE SCHEMA IF NOT EXISTS "undertow"',
        f"CREATE TABLE {t}",
        f"INSERT INTO {t} (x) VALUES (2)",
        f"DELETE FROM {t} WHERE x = 2",
        f'ALTER TABLE {t} RENAME TO "{probe.group(1)}_r"',
        f'DROP TABLE "undertow"."{probe.group(1)}_r"',
    ]
    assert src.access.lookups == 0
    # a second run finds the schema and does not create it again
    assert src.check_access([], scratch_schema="undertow") == []
    assert not any(s.startswith("CREATE SCHEMA") for s in src.seen[7:])


WHERE = "source 'wh': the warehouse diff engine keeps its tables in schema undertow"
GRANTS = ("GRANT ALL ON SCHEMA undertow TO reader;",)


@pytest.mark.parametrize(
    ("refuse", "what", "verb"),
    [
        ("CREATE TABLE", "create a table", "CREATE TABLE"),
        ("INSERT", "insert into a table", "INSERT INTO"),
        ("DELETE", "delete from a table", "DELETE FROM"),
        ("ALTER TABLE", "rename a table", "ALTER TABLE"),
    ],
)
def test_the_first_refused_step_is_reported_and_the_probe_table_dropped(
    warehouse: Path, refuse: str, what: str, verb: str
) -> None:
    src = probed(warehouse, refuse)
    assert src.check_access([], scratch_schema="undertow") == [
        AccessProblem(
            f"{WHERE}, where user 'reader' cannot {what}: Access denied: user reader may not "
            f"run {verb}",
            GRANTS,
        )
    ]
    assert tables(warehouse) == [("main", "Odd Name"), ("main", "users")]
    probe = re.search(r'"undertow"\."(ut_probe_[0-9a-f]{16})"', src.seen[2])
    assert probe is not None
    assert src.seen[-2:] == [  # both names the probe table may have, dropped if there
        f'DROP TABLE IF EXISTS "undertow"."{probe.group(1)}"',
        f'DROP TABLE IF EXISTS "undertow"."{probe.group(1)}_r"',
    ]


def test_an_interrupted_probe_still_drops_its_table(warehouse: Path) -> None:
    src = probed(warehouse, "DELETE")
    src.error = KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        src.check_access([], scratch_schema="undertow")
    assert tables(warehouse) == [("main", "Odd Name"), ("main", "users")]


def test_a_probe_table_that_cannot_be_dropped_is_named(warehouse: Path) -> None:
    src = probed(warehouse, "DROP TABLE")
    [problem] = src.check_access([], scratch_schema="undertow")
    left = [t for s, t in tables(warehouse) if s == "undertow"]
    assert len(left) == 1 and re.fullmatch(r"ut_probe_[0-9a-f]{16}_r", left[0])
    assert problem == AccessProblem(
        f"{WHERE}, where user 'reader' cannot drop a table: Access denied: user reader may not "
        f"run DROP TABLE; the probe table undertow.{left[0]} is left behind: drop it as an "
        f"administrator (DROP TABLE undertow.{left[0]};)",
        GRANTS,
    )


def test_a_schema_that_cannot_be_created_gives_the_create_statement(warehouse: Path) -> None:
    src = probed(warehouse, "CREATE SCHEMA")
    assert src.check_access([], scratch_schema="undertow") == [
        AccessProblem(
            f"{WHERE}, which does not exist (or is not visible to user 'reader'), and user "
            "'reader' cannot create it: Access denied: user reader may not run CREATE SCHEMA",
            ("CREATE SCHEMA IF NOT EXISTS undertow;", *GRANTS),
        )
    ]
    assert "undertow" not in schemas(warehouse)


def test_a_failed_lookup_falls_back_to_creating_the_schema(warehouse: Path) -> None:
    assert probed(warehouse, "SELECT COUNT").check_access([], scratch_schema="undertow") == []
    assert "undertow" in schemas(warehouse)
    src = probed(warehouse, "SELECT COUNT|CREATE SCHEMA")
    assert src.check_access([], scratch_schema="elsewhere") == [
        AccessProblem(
            "source 'wh': the warehouse diff engine keeps its tables in schema elsewhere, which "
            "could not be looked up (Access denied: user reader may not run SELECT COUNT(*)), "
            "and user 'reader' cannot create it: Access denied: user reader may not run "
            "CREATE SCHEMA",
            ("CREATE SCHEMA IF NOT EXISTS elsewhere;", "GRANT ALL ON SCHEMA elsewhere TO reader;"),
        )
    ]


def test_read_and_scratch_problems_come_together(warehouse: Path) -> None:
    src = probed(warehouse, "DELETE")
    problems = src.check_access(["nope"], scratch_schema="undertow")
    assert [p.grants for p in problems] == [("GRANT SELECT ON main.nope TO reader;",), GRANTS]
    assert src.access.lookups == 1


class TranspilingSession:
    """A real DuckDB session fed the statements written for another warehouse's dialect."""

    def __init__(self, session: SqlSession, dialect: str) -> None:
        self.session = session
        self.dialect = dialect

    def execute(self, sql: str) -> None:
        self.session.execute(sqlglot.transpile(sql, read=self.dialect, write="duckdb")[0])

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.session.rows(sqlglot.transpile(sql, read=self.dialect, write="duckdb")[0])

    def close(self) -> None:
        self.session.close()


@pytest.mark.parametrize("kind", ["bigquery", "databricks"])
def test_each_dialects_probe_statements_run_and_clean_up(
    warehouse: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe as written for BigQuery and Databricks (no emulator here), transpiled by
    sqlglot and run on DuckDB: it parses, and leaves nothing behind. (ClickHouse's runs on
    chDB: tests/integration/test_access_emulators.py.)"""
    src = bigquery() if kind == "bigquery" else databricks()
    duck = DuckDBSource(DuckDBConfig(type="duckdb", path=str(warehouse)), name="wh")
    monkeypatch.setattr(src, "session", lambda: TranspilingSession(duck.session(), kind))
    assert src.check_access([], scratch_schema="undertow") == []
    assert "undertow" in schemas(warehouse)
    assert tables(warehouse) == [("main", "Odd Name"), ("main", "users")]


# -- Snowflake ------------------------------------------------------------------------------


def snowflake(**config: object) -> SnowflakeSource:
    values: dict[str, object] = {
        "type": "snowflake",
        "account": "acme-prod",
        "user": "UNDERTOW",
        "password": "sf-password-000",
    }
    values.update(config)
    return SnowflakeSource(SnowflakeConfig.model_validate(values), name="sf")


SF_READER = Principal("ROLE READER", "role READER", ("ANALYTICS", "CRM"))
SF_MISSING = (
    "002003 (42S02): SQL compilation error: Object 'ANALYTICS.CRM.NOPE' does not exist or not "
    "authorized."
)


def test_snowflake_grants_name_database_schema_table_and_role() -> None:
    access = SnowflakeAccess(snowflake(), SF_READER)
    assert access.read_grants(access.qualify(("USERS",))) == (
        "GRANT USAGE ON DATABASE ANALYTICS TO ROLE READER;",
        "GRANT USAGE ON SCHEMA ANALYTICS.CRM TO ROLE READER;",
        "GRANT SELECT ON TABLE ANALYTICS.CRM.USERS TO ROLE READER;",
    )
    assert access.read_grants(access.qualify(("MARTS", "Order Items"))) == (
        "GRANT USAGE ON DATABASE ANALYTICS TO ROLE READER;",
        "GRANT USAGE ON SCHEMA ANALYTICS.MARTS TO ROLE READER;",
        'GRANT SELECT ON TABLE ANALYTICS.MARTS."Order Items" TO ROLE READER;',
    )
    # the engine quotes its scratch schema: a lower-case name, quoted in the grant too
    assert access.scratch_grants("undertow") == (
        "GRANT USAGE ON DATABASE ANALYTICS TO ROLE READER;",
        'GRANT USAGE, CREATE TABLE ON SCHEMA ANALYTICS."undertow" TO ROLE READER;',
    )
    assert access.create_schema_grants("undertow") == (
        'CREATE SCHEMA IF NOT EXISTS ANALYTICS."undertow";',
    )
    assert access.name("ORDER") == '"ORDER"' and access.name("<role>") == "<role>"


def test_snowflake_probes_upper_case_then_as_written() -> None:
    access = SnowflakeAccess(snowflake(), SF_READER)
    assert access.spellings(["crm", "users"]) == [("CRM", "USERS"), ("crm", "users")]
    assert access.spellings(["CRM", "e-mail"]) == [("CRM", "e-mail")]


def test_snowflake_refusals_are_worded_honestly() -> None:
    access = SnowflakeAccess(snowflake(), SF_READER)
    assert access.refusal("ANALYTICS.CRM.NOPE", SF_MISSING) == (
        "role READER cannot read ANALYTICS.CRM.NOPE (no such object, or the role may not see "
        f"it: Snowflake answers the same for both): {SF_MISSING}"
    )
    denied = "003001 (42501): SQL access control error: Insufficient privileges to operate on table 'USERS'"
    assert access.reason(denied) == "missing a privilege on it"
    assert access.reason("000630 (57014): Statement reached its timeout") == (
        "Snowflake refused the query"
    )


def test_snowflake_principal_from_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    src = snowflake(role="reader", database="analytics", schema="crm")
    monkeypatch.setattr(src, "session", no_connection)
    assert SnowflakeAccess(src).principal == SF_READER


def test_snowflake_principal_asked_of_the_warehouse(monkeypatch: pytest.MonkeyPatch) -> None:
    class Answers:
        def rows(self, sql: str) -> list[tuple[Any, ...]]:
            assert sql == "SELECT CURRENT_ROLE(), CURRENT_DATABASE(), CURRENT_SCHEMA()"
            return [("etl_role", "ANALYTICS", None)]

        def close(self) -> None:
            pass

    src = snowflake(schema="crm")
    monkeypatch.setattr(src, "session", Answers)
    assert SnowflakeAccess(src).principal == Principal(
        'ROLE "etl_role"', 'role "etl_role"', ("ANALYTICS", "CRM")
    )


def test_snowflake_placeholders_say_what_they_stand_for(monkeypatch: pytest.MonkeyPatch) -> None:
    src = snowflake()
    monkeypatch.setattr(src, "session", no_connection)
    assert SnowflakeAccess(src).principal == Principal(
        "ROLE <role>",
        "role <role>",
        ("<database>", "<schema>"),
        "<role>, <database>, <schema>: set `role`, `database` and `schema` in the source "
        "config, or replace them",
    )


def test_snowflake_check_access_goes_through_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    src = snowflake(role="READER", database="ANALYTICS", schema="CRM")
    described: list[str] = []

    def describe(sql: str, *, model: str) -> Any:
        described.append(sql)
        error = type("ProgrammingError", (Exception,), {"msg": SF_MISSING})()
        raise src._model_error(error, sql, model=model)

    monkeypatch.setattr(src, "describe", describe)
    monkeypatch.setattr(src, "session", no_connection)
    assert src.check_access(["nope"]) == [
        AccessProblem(
            "source 'sf': role READER cannot read ANALYTICS.CRM.NOPE (no such object, or the "
            f"role may not see it: Snowflake answers the same for both): {SF_MISSING}",
            (
                "GRANT USAGE ON DATABASE ANALYTICS TO ROLE READER;",
                "GRANT USAGE ON SCHEMA ANALYTICS.CRM TO ROLE READER;",
                "GRANT SELECT ON TABLE ANALYTICS.CRM.NOPE TO ROLE READER;",
            ),
        )
    ]
    assert described == ['SELECT * FROM "NOPE"', 'SELECT * FROM "nope"']


# -- ClickHouse -----------------------------------------------------------------------------


def clickhouse(**config: object) -> ClickHouseSource:
    values: dict[str, object] = {
        "type": "clickhouse",
        "host": "ch.internal",
        "database": "analytics",
    }
    values.update(config)
    return ClickHouseSource(ClickHouseConfig.model_validate(values), name="ch")


def test_clickhouse_grants_go_to_the_configured_user() -> None:
    access = ClickHouseAccess(clickhouse(user="reader"))
    assert access.principal == Principal("reader", "user 'reader'", ("analytics",))
    assert access.read_grants(access.qualify(("users",))) == (
        "GRANT SELECT ON analytics.users TO reader;",
    )
    assert access.read_grants(access.qualify(("crm", "e-mails"))) == (
        'GRANT SELECT ON crm."e-mails" TO reader;',
    )
    assert access.scratch_grants("undertow") == (
        "GRANT SELECT, INSERT, ALTER DELETE, CREATE TABLE, DROP TABLE, CREATE DATABASE ON "
        "undertow.* TO reader;",
    )
    assert access.create_schema_grants("undertow") == ()


def test_clickhouse_user_defaults_to_default_and_odd_names_are_quoted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ClickHouseAccess(clickhouse()).principal.grantee == "default"
    src = clickhouse(user="etl-bot", database=None)
    monkeypatch.setattr(src, "session", no_connection)
    assert ClickHouseAccess(src).principal == Principal('"etl-bot"', "user 'etl-bot'", ("default",))


def test_clickhouse_refusals_are_worded_from_the_error_code() -> None:
    access = ClickHouseAccess(clickhouse(user="reader"))
    denied = (
        "Code: 497. DB::Exception: reader: Not enough privileges. To execute this query, it's "
        "necessary to have the grant SELECT(id) ON analytics.users. (ACCESS_DENIED)"
    )
    missing = "Code: 60. DB::Exception: Unknown table expression identifier 'nope'. (UNKNOWN_TABLE)"
    assert access.reason(denied) == "missing SELECT: the server says so"
    assert access.reason(missing) == "no such table or database: the server says it does not exist"
    assert access.reason("Code: 159. Timeout exceeded") == "ClickHouse refused the query"


def test_clickhouse_readonly_refusal_names_the_cause_grants_cannot_fix() -> None:
    access = ClickHouseAccess(clickhouse(user="reader"))
    said = "Code: 164. DB::Exception: reader: Cannot execute query in readonly mode. (READONLY)"
    assert access.scratch_refusal(said) == (
        " (a `readonly` user may not write whatever its grants: the engine needs a user "
        "without it, e.g. ALTER USER reader SETTINGS readonly = 0)"
    )
    assert access.scratch_refusal("Code: 497. (ACCESS_DENIED)") == ""


# -- BigQuery -------------------------------------------------------------------------------

KEY = {
    "type": "service_account",
    "client_email": SA,
    "private_key": "-----BEGIN PRIVATE KEY-----\nbq-key-material\n-----END PRIVATE KEY-----\n",
    "private_key_id": "bq-key-id-0001",
}


def bigquery(**config: object) -> BigQuerySource:
    values: dict[str, object] = {
        "type": "bigquery",
        "project": "acme-prod",
        "dataset": "marts",
        "location": "EU",
        "credentials_json": json.dumps(KEY),
    }
    values.update(config)
    return BigQuerySource(BigQueryConfig.model_validate(values), name="bq")


def test_bigquery_grants_iam_roles_per_dataset_to_the_key_files_account() -> None:
    access = BigQueryAccess(bigquery())
    member = f'"serviceAccount:{SA}"'
    assert access.principal == Principal(member, f"service account {SA!r}", ("acme-prod", "marts"))
    assert access.read_grants(access.qualify(("users",))) == (
        f"GRANT `roles/bigquery.dataViewer` ON SCHEMA `acme-prod`.marts TO {member};",
    )
    assert access.read_grants(access.qualify(("other-prj", "crm", "users"))) == (
        f"GRANT `roles/bigquery.dataViewer` ON SCHEMA `other-prj`.crm TO {member};",
    )
    assert access.scratch_grants("undertow") == (
        f"GRANT `roles/bigquery.dataEditor` ON SCHEMA `acme-prod`.undertow TO {member};",
    )
    assert access.create_schema_grants("undertow") == (
        "CREATE SCHEMA IF NOT EXISTS `acme-prod`.undertow OPTIONS (location = 'EU');",
    )
    assert access.schema_exists_sql("undertow") == (
        "SELECT COUNT(*) + 1 FROM `acme-prod`.undertow.INFORMATION_SCHEMA.TABLES"
    )


def test_bigquery_account_from_the_key_file(tmp_path: Path) -> None:
    (tmp_path / "key.json").write_text(json.dumps(KEY))
    src = bigquery(credentials_json=None, credentials_file="key.json")
    src.base_dir = str(tmp_path)
    assert BigQueryAccess(src).principal.grantee == f'"serviceAccount:{SA}"'


def test_bigquery_default_credentials_give_a_placeholder_explained() -> None:
    access = BigQueryAccess(bigquery(credentials_json=None, project=None, location=None))
    assert access.principal == Principal(
        '"<member>"',
        "the account of the Application Default Credentials",
        ("<project>", "marts"),
        "<member>: that account, as user:name@example.com or "
        "serviceAccount:name@project.iam.gserviceaccount.com; <project>: the project of the "
        "credentials (set `project`)",
    )
    assert access.create_schema_grants("undertow") == (
        "CREATE SCHEMA IF NOT EXISTS <project>.undertow;",
    )
    assert access.schema_exists_sql("undertow") == (  # the client's default project
        "SELECT COUNT(*) + 1 FROM undertow.INFORMATION_SCHEMA.TABLES"
    )


def test_bigquery_refusals_are_worded_honestly() -> None:
    access = BigQueryAccess(bigquery())
    denied = (
        "Access Denied: Table acme-prod:marts.users: User does not have permission to query "
        "table acme-prod:marts.users, or perhaps it does not exist."
    )
    assert access.reason(denied) == (
        "missing roles/bigquery.dataViewer, or no such table: BigQuery answers the same for both"
    )
    missing = "Not found: Table acme-prod:marts.nope was not found in location EU"
    assert access.reason(missing) == "the server says it does not exist (in this location)"


def test_bigquery_check_access_goes_through_the_dry_run(monkeypatch: pytest.MonkeyPatch) -> None:
    src = bigquery()
    denied = "Access Denied: Table acme-prod:marts.users: User does not have permission."

    def describe(sql: str, *, model: str) -> Any:
        error = type("Forbidden", (Exception,), {"code": 403, "message": denied})()
        from undertow.sources.bigquery import model_error as bq_error

        raise bq_error(error, sql, model=model, source=src.instance_name)

    monkeypatch.setattr(src, "describe", describe)
    [problem] = src.check_access(["users", "marts.users"])
    assert problem == AccessProblem(
        f"source 'bq': service account {SA!r} cannot read `acme-prod`.marts.users (missing "
        "roles/bigquery.dataViewer, or no such table: BigQuery answers the same for both): "
        f"{denied}",
        (
            f'GRANT `roles/bigquery.dataViewer` ON SCHEMA `acme-prod`.marts TO "serviceAccount:{SA}";',
        ),
    )


# -- Databricks -----------------------------------------------------------------------------


def databricks(**config: object) -> DatabricksSource:
    values: dict[str, object] = {
        "type": "databricks",
        "server_hostname": "dbc-1234.cloud.databricks.com",
        "http_path": "/sql/1.0/warehouses/abc123",
        "access_token": "dapi-secret-token-000",
        "catalog": "main",
        "schema": "marts",
    }
    values.update(config)
    return DatabricksSource(DatabricksConfig.model_validate(values), name="dbx")


DBX = Principal("`undertow@acme.com`", "principal 'undertow@acme.com'", ("main", "marts"))
NOT_FOUND = (
    "[TABLE_OR_VIEW_NOT_FOUND] The table or view `main`.`marts`.`nope` cannot be found. "
    "SQLSTATE: 42P01"
)


def test_databricks_grants_unity_catalog_privileges() -> None:
    access = DatabricksAccess(databricks(), DBX)
    to = "TO `undertow@acme.com`;"
    assert access.read_grants(access.qualify(("users",))) == (
        f"GRANT USE CATALOG ON CATALOG main {to}",
        f"GRANT USE SCHEMA ON SCHEMA main.marts {to}",
        f"GRANT SELECT ON TABLE main.marts.users {to}",
    )
    assert access.scratch_grants("undertow") == (
        f"GRANT USE CATALOG ON CATALOG main {to}",
        f"GRANT USE SCHEMA, CREATE TABLE, SELECT, MODIFY ON SCHEMA main.undertow {to}",
    )
    assert access.create_schema_grants("undertow") == (
        "CREATE SCHEMA IF NOT EXISTS main.undertow;",
    )
    assert access.name("e-mail") == "`e-mail`"


def test_databricks_principal_asked_of_the_warehouse(monkeypatch: pytest.MonkeyPatch) -> None:
    class Answers:
        def rows(self, sql: str) -> list[tuple[Any, ...]]:
            assert sql == "SELECT current_user(), current_catalog(), current_schema()"
            return [("undertow@acme.com", "main", "marts")]

        def close(self) -> None:
            pass

    src = databricks(catalog=None, schema=None)
    monkeypatch.setattr(src, "session", Answers)
    assert DatabricksAccess(src).principal == DBX


def test_databricks_unknown_principal_is_a_placeholder_explained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = databricks()
    monkeypatch.setattr(src, "session", no_connection)
    principal = DatabricksAccess(src).principal
    assert principal == Principal(
        "`<principal>`",
        "the token's principal",
        ("main", "marts"),
        "<principal>: the warehouse did not say (current_user(), current_catalog(), "
        "current_schema()); replace them with the token's user, service principal or group, "
        "and the catalog and schema (or set `catalog` and `schema`)",
    )


def test_databricks_check_access_goes_through_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    src = databricks()

    def describe(sql: str, *, model: str) -> Any:
        raise model_error(Exception(NOT_FOUND), sql, model=model, source=src.instance_name)

    monkeypatch.setattr(src, "describe", describe)
    monkeypatch.setattr(src, "session", no_connection)
    [problem] = src.check_access(["nope"])
    assert problem.message.startswith(
        "source 'dbx': the token's principal cannot read main.marts.nope (not found: no such "
        f"table, or one hidden from a principal without USE CATALOG / USE SCHEMA): {NOT_FOUND} "
        "(<principal>: the warehouse did not say"
    )
    assert problem.grants == (
        "GRANT USE CATALOG ON CATALOG main TO `<principal>`;",
        "GRANT USE SCHEMA ON SCHEMA main.marts TO `<principal>`;",
        "GRANT SELECT ON TABLE main.marts.nope TO `<principal>`;",
    )
    denied = "[INSUFFICIENT_PERMISSIONS] Insufficient privileges: User does not have SELECT on Table 'main.marts.users'."
    assert DatabricksAccess(src, DBX).reason(denied) == "missing a privilege: the server says so"
    with pytest.raises(SourceError):  # the scratch probe needs a session: a connection error
        src.check_access([], scratch_schema="undertow")


def test_the_probe_model_prefix_is_cut_from_every_server_message() -> None:
    error = ModelError("boom: bad", model=_access.PROBE_MODEL, source="x", position=3)
    assert _access.server_message(error) == "boom: bad"
