"""The warehouse engine through the Project facade, and `validate`'s least-privilege checks
against a real restricted PostgreSQL role."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
import psycopg
import pytest

from tests.conftest import PG_HOST, PG_PORT
from undertow.checks import model_relations
from undertow.project import Project
from undertow.sources.postgres import PostgresConfig, PostgresSource
from undertow.state.store import RunStatus

pytestmark = pytest.mark.integration


class Notes:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def stage(self, sync: str, stage: str, total: int | None = None) -> None:
        pass

    def advance(self, sync: str, amount: int) -> None:
        pass

    def note(self, sync: str, text: str) -> None:
        self.lines.append(text)


def write_project(
    folder: Path, *, engine: str, mappings: str = "{id: id, email: email, plan: plan}"
) -> None:
    (folder / "undertow.yml").write_text(
        f"""
name: p1
sources:
  wh: {{type: duckdb, path: wh.duckdb, diff: {{engine: {engine}}}}}
destinations:
  out: {{type: file, path: out.jsonl, format: jsonl}}
models:
  users: {{source: wh, sql: select * from users, primary_key: id}}
syncs:
  users_out:
    model: users
    destination: out
    mode: mirror
    match: {{email: email}}
    mappings: {mappings}
"""
    )


def load(folder: Path, n: int, *, plan: str = "free", drop: str | None = None) -> None:
    con = duckdb.connect(str(folder / "wh.duckdb"))
    try:
        con.execute(
            "create or replace table users as select i as id, 'u' || i || '@x' as email, "
            f"'{plan}' as plan, 0 as extra from range({n}) t(i)"
        )
        if drop:
            con.execute(f"alter table users drop column {drop}")
    finally:
        con.close()


def sent(folder: Path) -> list[dict[str, Any]]:
    path = folder / "out.jsonl"
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "p1"
    path.mkdir()
    load(path, 5)
    return path


def run(folder: Path, *, full: bool = False, notes: Notes | None = None) -> Any:
    project = Project.load(str(folder))
    try:
        [record] = project.run(["users_out"], full=full, reporter=notes)
        return record
    finally:
        project.close()


def test_a_warehouse_run_sends_only_changes_and_keeps_its_tables_in_the_file(
    folder: Path,
) -> None:
    write_project(folder, engine="warehouse")
    assert run(folder).status == RunStatus.SUCCEEDED
    assert len(sent(folder)) == 5
    load(folder, 4, plan="pro")  # 4 changed, 1 removed
    record = run(folder)
    assert record.status == RunStatus.SUCCEEDED
    assert (record.counts["changed"], record.counts["removed"]) == (4, 1)
    con = duckdb.connect(str(folder / "wh.duckdb"), read_only=True)
    try:
        tables = {
            r[0]
            for r in con.execute(
                "select table_name from duckdb_tables() where schema_name = 'undertow'"
            ).fetchall()
        }
    finally:
        con.close()
    assert {"ut_snapshots", "ut_plans"} <= tables
    assert not [t for t in tables if t.startswith(("ut_plan_", "ut_work_", "ut_inv_"))]
    assert not (folder / ".undertow" / "syncs" / "users_out.duckdb").exists()


def test_switching_engines_starts_from_a_first_run_and_says_so(folder: Path) -> None:
    write_project(folder, engine="local")
    run(folder)
    write_project(folder, engine="warehouse")
    notes = Notes()
    record = run(folder, notes=notes)
    assert record.counts["added"] == 5
    assert any("changed from local to warehouse:undertow" in n for n in notes.lines)
    assert run(folder).counts["planned"] == 0  # and then it is incremental again
    write_project(folder, engine="local")
    notes = Notes()
    assert run(folder, notes=notes).counts["added"] == 5  # the old local snapshot was dropped
    assert any("first run" in n for n in notes.lines)


@pytest.mark.parametrize("engine", ["local", "warehouse"])
def test_reset_and_full_work_the_same(folder: Path, engine: str) -> None:
    write_project(folder, engine=engine)
    run(folder)
    assert run(folder, full=True).counts["planned"] == 5
    project = Project.load(str(folder))
    try:
        assert project.reset("users_out") == 5
    finally:
        project.close()
    assert run(folder).counts["added"] == 5


@pytest.mark.parametrize("engine", ["local", "warehouse"])
def test_a_mapped_column_that_disappears_fails_before_sending(folder: Path, engine: str) -> None:
    write_project(folder, engine=engine)
    run(folder)
    before = len(sent(folder))
    load(folder, 6, drop="plan")
    record = run(folder)
    assert record.status == RunStatus.FAILED
    assert "plan" in (record.error or "") and "users_out" in (record.error or "")
    assert len(sent(folder)) == before
    load(folder, 6)
    assert run(folder).counts["added"] == 1  # the snapshot was left as it was


@pytest.mark.parametrize("engine", ["local", "warehouse"])
def test_plan_previews_without_changing_the_snapshot(folder: Path, engine: str) -> None:
    write_project(folder, engine=engine)
    run(folder)
    load(folder, 7)
    project = Project.load(str(folder))
    try:
        preview = project.plan("users_out")
    finally:
        project.close()
    assert (preview.counts.added, preview.counts.planned) == (2, 2)
    assert run(folder).counts["added"] == 2


@pytest.mark.parametrize("engine", ["local", "warehouse"])
def test_plan_shows_old_values_only_where_the_engine_keeps_them(folder: Path, engine: str) -> None:
    write_project(folder, engine=engine)
    run(folder)
    load(folder, 5, plan="pro")
    project = Project.load(str(folder))
    try:
        preview = project.plan("users_out")
    finally:
        project.close()
    [first, *_] = preview.changes
    if engine == "local":
        assert first["old_known"] and first["fields"]["plan"] == {"old": "free", "new": "pro"}
    else:  # a hash of the accepted values: that the row changed, not how
        assert not first["old_known"] and first["fields"] == {}


def test_model_relations_leave_out_ctes_and_functions() -> None:
    sql = """with recent as (select * from crm.users where active)
             select r.id from recent r join billing.public.plans p on p.id = r.plan_id
             join read_parquet('x.parquet') f on true"""
    assert model_relations(sql, "duckdb") == ["billing.public.plans", "crm.users"]
    assert model_relations("select (", "postgres") == []


# -- least privilege on a real PostgreSQL role ---------------------------------------------------


@pytest.fixture
def role(pg_database: str) -> Iterator[tuple[str, str]]:
    """A LOGIN role with no grants, and the database URL it connects with; dropped after."""
    name = f"ut_ro_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_database, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{name}" LOGIN')
        admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        admin.execute(
            f'REVOKE CREATE, TEMPORARY ON DATABASE "{pg_database.rsplit("/", 1)[1]}" FROM PUBLIC'
        )
        admin.execute("CREATE SCHEMA crm")
        admin.execute("CREATE TABLE crm.users AS SELECT 1 AS id, 'a@x' AS email")
    try:
        yield name, f"postgresql://{name}@{PG_HOST}:{PG_PORT}/{pg_database.rsplit('/', 1)[1]}"
    finally:
        with psycopg.connect(pg_database, autocommit=True) as admin:
            admin.execute(f'DROP OWNED BY "{name}" CASCADE')
            admin.execute(f'DROP ROLE IF EXISTS "{name}"')


def admin_run(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        for statement in statements:
            admin.execute(statement)


def test_postgres_access_checks_name_the_missing_grants(
    role: tuple[str, str], pg_database: str
) -> None:
    name, url = role
    source = PostgresSource(PostgresConfig(url=url), name="pg")
    problems = source.check_access(["crm.users"], scratch_schema="undertow")
    text = "\n".join(p.message for p in problems)
    grants = [g for p in problems for g in p.grants]
    assert "cannot read crm.users (missing USAGE on schema crm and SELECT)" in text
    assert f'GRANT USAGE ON SCHEMA "crm" TO "{name}";' in grants
    assert f'GRANT SELECT ON "crm"."users" TO "{name}";' in grants
    assert f'CREATE SCHEMA "undertow" AUTHORIZATION "{name}";' in grants

    admin_run(pg_database, *[g for g in grants if g.startswith("GRANT")])
    admin_run(pg_database, 'CREATE SCHEMA "undertow"')
    problems = source.check_access(["crm.users"], scratch_schema="undertow")
    assert [p.grants for p in problems] == [
        (f'GRANT USAGE, CREATE ON SCHEMA "undertow" TO "{name}";',)
    ]
    assert "lacks USAGE and CREATE" in problems[0].message

    admin_run(pg_database, *problems[0].grants)
    assert source.check_access(["crm.users", "users"], scratch_schema="undertow") == []


def test_validate_prints_the_grants_and_the_engine_then_runs_with_them(
    role: tuple[str, str], pg_database: str, tmp_path: Path
) -> None:
    name, url = role
    (tmp_path / "undertow.yml").write_text(
        f"""
name: p1
sources:
  pg: {{type: postgres, url: "{url}"}}
destinations:
  out: {{type: file, path: out.jsonl, format: jsonl}}
models:
  users: {{source: pg, sql: "select id, email from crm.users", primary_key: id}}
syncs:
  users_out:
    model: users
    destination: out
    mode: upsert
    mappings: {{id: id, email: email}}
    diff: {{engine: warehouse, schema: ut_scratch}}
"""
    )
    project = Project.load(str(tmp_path))
    try:
        problems = [str(p) for p in project.validate()]
        joined = "\n".join(problems)
        assert f'GRANT SELECT ON "crm"."users" TO "{name}";' in joined
        assert f'CREATE SCHEMA "ut_scratch" AUTHORIZATION "{name}";' in joined
        admin_run(
            pg_database,
            f'GRANT USAGE ON SCHEMA crm TO "{name}"',
            f'GRANT SELECT ON crm.users TO "{name}"',
            f'CREATE SCHEMA ut_scratch AUTHORIZATION "{name}"',
        )
        assert project.validate() == []
        [record] = project.run(["users_out"])
        assert record.status == RunStatus.SUCCEEDED, record.error
        assert record.counts["added"] == 1
    finally:
        project.close()


# -- the warehouse engine through a whole run on the real MariaDB -------------------------------


def test_a_mariadb_project_runs_on_the_warehouse_engine(
    tmp_path: Path, mariadb_database: str
) -> None:
    """`undertow run` end to end: MariaDB types what CTAS makes from constants narrowly, so
    only a run with a real (63-bit) mapping fingerprint shows whether the tables hold it."""
    from urllib.parse import urlsplit

    import pymysql

    url = urlsplit(mariadb_database)
    scratch = f"{url.path.lstrip('/')}_scratch"

    def admin(*statements: str) -> None:
        with (
            pymysql.connect(
                host=url.hostname, port=url.port, user=url.username, database=url.path.lstrip("/")
            ) as con,
            con.cursor() as cur,
        ):
            for statement in statements:
                cur.execute(statement)
            con.commit()

    admin(
        "CREATE TABLE users (id INT PRIMARY KEY, email VARCHAR(50), plan VARCHAR(10))",
        "INSERT INTO users VALUES (1, 'a@x', 'free'), (2, 'b@x', 'pro'), (3, 'c@x', 'free')",
    )
    (tmp_path / "undertow.yml").write_text(
        f"""
name: maria
sources:
  maria:
    type: mysql
    url: {mariadb_database}
    diff: {{engine: warehouse, schema: {scratch}}}
destinations:
  out: {{type: file, path: out.jsonl, format: jsonl}}
models:
  users: {{source: maria, sql: "select id, email, plan from users", primary_key: id}}
syncs:
  users_out:
    model: users
    destination: out
    mode: mirror
    match: {{email: email}}
    mappings: {{id: id, email: email, plan: plan}}
"""
    )
    try:
        first = run(tmp_path)
        assert (first.status, first.counts["added"]) == (RunStatus.SUCCEEDED, 3)
        admin(
            "UPDATE users SET plan = 'pro' WHERE id = 1",
            "DELETE FROM users WHERE id = 3",
            "INSERT INTO users VALUES (4, 'd@x', 'free')",
        )
        second = run(tmp_path)
        assert second.status == RunStatus.SUCCEEDED
        counts = second.counts
        assert (counts["added"], counts["changed"], counts["removed"]) == (1, 1, 1)
        assert run(tmp_path).counts["planned"] == 0
        assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 6
    finally:
        admin(f"DROP DATABASE IF EXISTS `{scratch}`")
