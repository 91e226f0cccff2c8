"""Sync logs written back to the warehouse: DuckDB, PostgreSQL and MariaDB for real,
Snowflake on fakesnow and ClickHouse on chDB (``make test-warehouses``), and the BigQuery and
Databricks SQL run on DuckDB through sqlglot (as the warehouse-engine tests do).

A project syncs ``users`` into a file destination, some rows refused by the mapping; after
each run ``sync_runs`` must hold the run with the counts ``undertow runs`` shows, and
``sync_changelog`` one row per record sent or rejected. Writing a run again (a resumed or
retried write) adds nothing; a write that fails is a warning on the run, and the next run
writes it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import psycopg
import pyarrow as pa
import pymysql
import pytest

from undertow.project import Project
from undertow.state.store import RunStatus
from undertow.sync_logs import SPOOL_SCHEMA, read_spool

pytestmark = pytest.mark.integration

ROWS = 500
BAD = {7, 77, 177}  # age 'x': the mapping's int cast rejects them


@dataclass
class Warehouse:
    source_yaml: str
    load: Callable[[list[tuple[Any, ...]]], None]
    query: Callable[[str], list[tuple[Any, ...]]]
    schema: str = "ut_audit"
    model_sql: str = "select id, email, age from users"
    transactions: bool = True
    """False: the run's logs are written after it (nothing to hold a stream in)."""


def rows() -> list[tuple[Any, ...]]:
    return [(i, f"u{i}@x.com", "x" if i in BAD else str(20 + i % 50)) for i in range(ROWS)]


def duckdb_warehouse(tmp_path: Path) -> Warehouse:
    path = tmp_path / "wh.duckdb"

    def load(data: list[tuple[Any, ...]]) -> None:
        with duckdb.connect(str(path)) as con:
            con.execute("create or replace table users (id integer, email varchar, age varchar)")
            con.executemany("insert into users values (?, ?, ?)", data)

    def query(sql: str) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(path), read_only=True) as con:
            return con.execute(sql).fetchall()

    return Warehouse(f"{{type: duckdb, path: {path}}}", load, query)


def postgres_warehouse(url: str) -> Warehouse:
    def load(data: list[tuple[Any, ...]]) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("drop table if exists users")
            conn.execute("create table users (id integer primary key, email text, age text)")
            with conn.cursor() as cur:
                cur.executemany("insert into users values (%s, %s, %s)", data)

    def query(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url) as conn:
            return list(conn.execute(sql).fetchall())

    return Warehouse(f'{{type: postgres, url: "{url}"}}', load, query)


def mariadb_warehouse(url: str) -> Warehouse:
    parts = urlsplit(url)

    def connect() -> Any:
        return pymysql.connect(
            host=parts.hostname, port=parts.port, user=parts.username, database=parts.path[1:],
            autocommit=True,
        )  # fmt: skip

    def load(data: list[tuple[Any, ...]]) -> None:
        with connect() as conn, conn.cursor() as cur:
            cur.execute("drop table if exists users")
            cur.execute("create table users (id int primary key, email text, age text)")
            cur.executemany("insert into users values (%s, %s, %s)", data)

    def query(sql: str) -> list[tuple[Any, ...]]:
        with connect() as conn, conn.cursor() as cur:
            cur.execute(sql.replace('"', "`"))
            return list(cur.fetchall())

    # MariaDB has no schemas inside a database: the logs' "schema" is a database
    return Warehouse(f'{{type: mysql, url: "{url}"}}', load, query, schema=parts.path[1:] + "_a")


def snowflake_warehouse(server: dict[str, Any], tmp_path: Path) -> Iterator[Warehouse]:
    """fakesnow (``make test-warehouses``): the model and the logs in database ANALYTICS,
    the logs in a schema of their own."""
    from warehouse_support import fakesnow_source, insert_rows

    schema = f"T_{uuid.uuid4().hex[:10].upper()}"
    source = fakesnow_source(server, schema)
    audit = f"{schema}_AUDIT"

    def load(data: list[tuple[Any, ...]]) -> None:
        session = source.session()
        try:
            session.execute(
                "CREATE OR REPLACE TABLE users (id NUMBER(10, 0), email VARCHAR, age VARCHAR)"
            )
            table = pa.table(
                {n: [r[i] for r in data] for i, n in enumerate(["id", "email", "age"])}
            )
            insert_rows(session, "users", table)
        finally:
            session.close()

    def query(sql: str) -> list[tuple[Any, ...]]:
        session = source.session()
        try:
            return list(session.rows(sql))
        finally:
            session.close()

    yaml = (
        f'{{type: snowflake, account: "{server["account"]}", host: "{server["host"]}", '
        f'port: {server["port"]}, protocol: http, user: UNDERTOW, password: "${{SF_PASSWORD}}", '
        f"database: ANALYTICS, schema: {schema}}}"
    )
    # Snowflake folds unquoted names to upper case: the model names its columns
    model = 'select id as "id", email as "email", age as "age" from users'
    yield Warehouse(yaml, load, query, schema=audit, model_sql=model)
    source.close()


def clickhouse_warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    """chDB in-process (``make test-warehouses``): a data folder of the test's own; the logs
    in a database of their own (ClickHouse's schemas are databases)."""
    from warehouse_support import insert_rows

    from undertow.sources.clickhouse import ClickHouseConfig, ClickHouseSource

    path = str(tmp_path / "ch")
    source = ClickHouseSource(ClickHouseConfig.model_validate({"path": path}), name="ch")

    def load(data: list[tuple[Any, ...]]) -> None:
        session = source.session()
        try:
            session.execute("DROP TABLE IF EXISTS users")
            session.execute(
                "CREATE TABLE users (id Int32, email Nullable(String), age Nullable(String)) "
                "ENGINE = MergeTree ORDER BY id"
            )
            table = pa.table(
                {n: [r[i] for r in data] for i, n in enumerate(["id", "email", "age"])}
            )
            insert_rows(session, "users", table)
        finally:
            session.close()

    def query(sql: str) -> list[tuple[Any, ...]]:
        session = source.session()
        try:
            return list(session.rows(sql.replace('"', "`")))
        finally:
            session.close()

    yield Warehouse(f"{{type: clickhouse, path: {path}}}", load, query, transactions=False)
    source.close()


_FAKESNOW_ARROW = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")


@pytest.fixture(
    params=[
        "duckdb",
        "postgres",
        "mariadb",
        # the emulators, in their own virtualenv (make test-warehouses)
        pytest.param("snowflake", marks=[pytest.mark.warehouses, _FAKESNOW_ARROW]),
        pytest.param("clickhouse", marks=pytest.mark.warehouses),
    ]
)
def warehouse(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Warehouse]:
    if request.param == "duckdb":
        yield duckdb_warehouse(tmp_path)
    elif request.param == "postgres":
        yield postgres_warehouse(request.getfixturevalue("pg_database"))
    elif request.param == "snowflake":
        monkeypatch.setenv("SF_PASSWORD", "sf-password-000")
        yield from snowflake_warehouse(request.getfixturevalue("fakesnow_server"), tmp_path)
    elif request.param == "clickhouse":
        yield from clickhouse_warehouse(tmp_path)
    else:
        made = mariadb_warehouse(request.getfixturevalue("mariadb_database"))
        yield made
        with (
            pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(f"DROP DATABASE IF EXISTS `{made.schema}`")


def write_project(folder: Path, wh: Warehouse, schema: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "undertow.yml").write_text(
        f"""
name: logs
sources:
  wh: {wh.source_yaml}
destinations:
  out: {{type: file, path: out.jsonl}}
models:
  users: {{source: wh, sql: '{wh.model_sql}', primary_key: id}}
sync_logs: {{schema: {schema or wh.schema}}}
syncs:
  users_out:
    model: users
    destination: out
    max_rejected_ratio: 0.5
    batch_size: 50
    mappings: {{id: id, email: email, age: {{column: age, cast: int}}}}
"""
    )


def logged(wh: Warehouse, run_id: str) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    s = wh.schema
    cols = "sync, run_id, status, extracted, added, changed, removed, sent, succeeded, rejected, failed"
    [row] = wh.query(f'select {cols} from "{s}"."sync_runs" where run_id = \'{run_id}\'')
    changes = wh.query(
        f'select row_key, row_key_json, operation, status, message from "{s}"."sync_changelog" '
        f"where run_id = '{run_id}'"
    )
    return dict(zip(cols.split(", "), row, strict=True)), changes


def test_runs_and_changelog_match_the_run_and_a_rewrite_adds_nothing(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    warehouse.load(rows())
    write_project(tmp_path / "p", warehouse)
    project = Project.load(str(tmp_path / "p"))
    try:
        [run] = project.run(["users_out"])
        assert run.status == RunStatus.SUCCEEDED, run.error
        assert run.warning and "rejected" in run.warning
        got, changes = logged(warehouse, run.id)
        counts = project.runs("users_out")[0].as_dict()
        for key in ("extracted", "added", "changed", "removed", "sent", "succeeded", "rejected"):
            assert got[key] == counts[key], key  # type: ignore[literal-required]
        assert got["status"] == "succeeded" and got["sync"] == "users_out"
        assert len(changes) == ROWS == counts["sent"] + counts["rejected"]
        by_key = {c[0]: c for c in changes}
        assert by_key["7"][3] == "rejected" and "int" in by_key["7"][4]
        assert by_key["8"][1:4] == (None, "upsert", "succeeded")  # one-column key: no JSON
        assert sum(1 for c in changes if c[3] == "succeeded") == ROWS - len(BAD)

        # the write is idempotent: again for the same run (a retry) leaves one copy
        from undertow.sync_logs import SyncLogWriter, settings_for

        ctx = project.context("users_out")
        settings = settings_for(ctx, project.config.sync_logs)
        assert settings is not None
        writer = SyncLogWriter(ctx, settings, project.store)
        assert writer.pending() == []  # written, so the spool is gone
        writer.write(run)
        assert len(logged(warehouse, run.id)[1]) == 0  # a rewrite without the spool: no rows
        ctx.source.close()

        # a second run with changes: its own rows, the first run's untouched
        warehouse.load([(i, f"v{i}@x.com", "30") for i in range(10)])
        [second] = project.run(["users_out"])
        got2, changes2 = logged(warehouse, second.id)
        assert got2["removed"] == second.counts["removed"] == ROWS - len(BAD) - 9
        assert len(changes2) == second.counts["sent"] + second.counts["rejected"]
    finally:
        project.close()


def test_a_failed_write_is_a_warning_and_the_next_run_writes_it(tmp_path: Path) -> None:
    wh = duckdb_warehouse(tmp_path)
    wh.load(rows())
    folder = tmp_path / "p"
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:  # a sync_runs of another shape
        con.execute("create schema ut_audit; create table ut_audit.sync_runs (x int)")
    write_project(folder, wh)
    project = Project.load(str(folder))
    try:
        [run] = project.run(["users_out"])
        assert run.status == RunStatus.SUCCEEDED
        assert "sync logs of 1 run(s) not written" in (run.warning or "")
        assert project.runs("users_out")[0].warning == run.warning
    finally:
        project.close()
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:  # fixed
        con.execute("drop table ut_audit.sync_runs")
    wh.load(rows()[:100])
    project = Project.load(str(folder))
    try:
        [second] = project.run(["users_out"])
        assert second.warning is None or "sync logs" not in second.warning
        assert logged(wh, run.id)[0]["sent"] == run.counts["sent"]
        assert logged(wh, second.id)[0]["removed"] == second.counts["removed"] > 0
    finally:
        project.close()


def test_the_spool_keeps_the_last_outcome_of_a_batch_sent_twice(tmp_path: Path) -> None:
    """A run killed after spooling batch 1 and resumed sends it again: one row per record."""

    def segment(name: str, batches: list[tuple[int, list[int], str]]) -> None:
        with (
            pa.OSFile(str(tmp_path / name), "wb") as sink,
            pa.ipc.new_stream(sink, SPOOL_SCHEMA) as writer,
        ):
            for number, seqs, status in batches:
                n = len(seqs)
                writer.write_table(
                    pa.table(
                        {
                            "seq": seqs,
                            "row_key": [str(s) for s in seqs],
                            "operation": ["upsert"] * n,
                            "status": [status] * n,
                            "message": [None] * n,
                            "batch_no": pa.array([number] * n, pa.int32()),
                            "at": pa.array([0] * n, pa.timestamp("us", tz="UTC")),
                        },
                        schema=SPOOL_SCHEMA,
                    )
                )

    segment("r1.0001.arrow", [(0, [0, 1], "succeeded"), (1, [2, 3], "failed")])
    segment("r1.0002.arrow", [(1, [2, 3], "succeeded"), (2, [4], "succeeded")])
    (tmp_path / "r1.0003.arrow").write_bytes(b"\xff\xff\xff\xff torn")  # a torn segment
    table = read_spool(tmp_path, "r1", done={0, 1})  # batch 2 was never checkpointed
    assert table.column("seq").to_pylist() == [0, 1, 2, 3]
    assert table.column("status").to_pylist() == ["succeeded"] * 4


def test_validate_names_the_privilege_the_sync_logs_lack(pg_database: str, tmp_path: Path) -> None:
    import uuid

    role = f"ut_logs_{uuid.uuid4().hex[:8]}"
    database = urlsplit(pg_database).path[1:]
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f'create role "{role}" login')
        conn.execute("create table users (id integer primary key, email text, age text)")
        conn.execute(f'grant select on users to "{role}"')
        conn.execute(f'revoke create on database "{database}" from public')
    try:
        url = pg_database.replace("postgres@", f"{role}@")
        wh = Warehouse(f'{{type: postgres, url: "{url}"}}', lambda _: None, lambda _: [])
        write_project(tmp_path / "p", wh)
        project = Project.load(str(tmp_path / "p"))
        try:
            problems = [p.message for p in project.validate()]
        finally:
            project.close()
        [problem] = [p for p in problems if "sync_logs" in p]
        assert "the sync logs (`sync_logs:`) are written to schema 'ut_audit'" in problem
        assert f"may not create schemas in database {database!r}" in problem
    finally:
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(f'drop owned by "{role}"')
            conn.execute(f'drop role "{role}"')


def test_key_json_splits_composite_keys_on_their_column_names() -> None:
    from undertow.sync_logs import key_json

    texts = pa.chunked_array([["a=1, b=x, y", 'a=2, b="q"']])
    assert key_json(["a", "b"], texts).to_pylist() == [
        '{"a":"1","b":"x, y"}',
        '{"a":"2","b":"\\"q\\""}',
    ]
    assert key_json(["id"], pa.chunked_array([["42"]])).to_pylist() == [None]


class SpeaksDialect:
    """A DuckDB session behind another dialect: each statement the logs send, written for
    ``dialect``, is parsed in it and run on DuckDB through sqlglot (as the warehouse-engine
    contract tests do for BigQuery and Databricks, which cannot run here)."""

    def __init__(self, dialect: str, con: duckdb.DuckDBPyConnection) -> None:
        import sqlglot

        self.dialect = dialect
        self.con = con
        self.sqlglot = sqlglot

    def execute(self, sql: str) -> None:
        self.con.execute(self.sqlglot.parse_one(sql, read=self.dialect).sql("duckdb"))

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.con.execute(
            self.sqlglot.parse_one(sql, read=self.dialect).sql("duckdb")
        ).fetchall()

    def close(self) -> None:
        pass


@pytest.mark.parametrize("dialect", ["bigquery", "databricks", "snowflake", "clickhouse"])
def test_the_logs_sql_of_warehouses_that_cannot_run_here(dialect: str, tmp_path: Path) -> None:
    from undertow.sync_logs import SyncLogWriter

    wh = duckdb_warehouse(tmp_path)
    wh.load(rows())
    write_project(tmp_path / "p", wh)
    project = Project.load(str(tmp_path / "p"))
    try:
        [run] = project.run(["users_out"])
        ctx = project.context("users_out")
        writer = SyncLogWriter(ctx, project.config.sync_logs, project.store)  # type: ignore[arg-type]
        changes = pa.table(
            {
                "sync": ["users_out"] * 2,
                "run_id": [run.id] * 2,
                "row_key": ["1", "it's \\ tricky\nline"],
                "row_key_json": ['{"id":"1"}', '{"id":"it\'s"}'],
                "operation": ["upsert", "upsert"],
                "status": ["succeeded", "rejected"],
                "message": [None, "O'Brien is \\ not valid"],
                "batch_no": pa.array([0, 0], pa.int32()),
                "at": pa.array([0, 0], pa.timestamp("us")),
            }
        )
        with duckdb.connect(str(tmp_path / f"{dialect}.duckdb")) as con:
            session = SpeaksDialect(dialect, con)
            writer._write(session, run, changes)
            writer._write(session, run, changes)  # idempotent
            got = con.execute(
                "select row_key, message from ut_audit.sync_changelog order by row_key"
            ).fetchall()
            assert got == [("1", None), ("it's \\ tricky\nline", "O'Brien is \\ not valid")]
            [(status, sent)] = con.execute("select status, sent from ut_audit.sync_runs").fetchall()
            assert (status, sent) == ("succeeded", run.counts["sent"])
        ctx.source.close()
    finally:
        project.close()


def test_the_changelog_streams_while_the_run_delivers_and_a_broken_stream_falls_back(
    warehouse: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live writer commits a run it streamed whole; one whose stream broke midway is
    rolled back and written after the run from the spool: complete, once, no warning."""
    from undertow import sync_logs

    finished: list[bool] = []
    real_finish = sync_logs.LiveChangelog.finish
    monkeypatch.setattr(
        sync_logs.LiveChangelog,
        "finish",
        lambda self, run: finished.append(real_finish(self, run)) or finished[-1],
    )
    monkeypatch.setattr(sync_logs.LiveChangelog, "CHUNK_ROWS", 1)  # one insert per batch
    warehouse.load(rows())
    write_project(tmp_path / "p", warehouse)
    project = Project.load(str(tmp_path / "p"))
    try:
        [first] = project.run(["users_out"])
        # streamed and committed whole; without transactions (ClickHouse), written after
        assert finished == [warehouse.transactions]
        assert len(logged(warehouse, first.id)[1]) == ROWS

        inserts: list[str] = []
        real_insert = sync_logs.SyncLogWriter.insert_changes

        def breaks_third(self: Any, session: Any, changes: pa.Table) -> None:
            inserts.append(threading.current_thread().name)
            if inserts[-1] == "undertow-sync-logs" and inserts.count(inserts[-1]) == 3:
                raise RuntimeError("connection reset")
            real_insert(self, session, changes)

        monkeypatch.setattr(sync_logs.SyncLogWriter, "insert_changes", breaks_third)
        warehouse.load([(i, f"v{i}@x.com", "30") for i in range(ROWS)])
        [second] = project.run(["users_out"])
        assert finished == [warehouse.transactions, False]
        assert second.warning is None or "sync logs" not in second.warning
        got, changes = logged(warehouse, second.id)
        assert got["sent"] == second.counts["sent"] == len(changes) == ROWS
        assert len({c[0] for c in changes}) == ROWS  # once each
    finally:
        project.close()


def test_the_changelog_commits_before_the_run_row_and_a_failure_between_adds_nothing(
    warehouse: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live writer commits the changelog when the delivery ends (while the run folds)
    and adds the run's row once the run is final. If that row cannot be written, the run
    waits with its spool (a warning) and the next run writes it: its rows once, its row once."""
    from undertow import sync_logs

    def fails(self: Any, session: Any, run: Any) -> None:
        raise RuntimeError("connection reset")

    real_insert_run = sync_logs.SyncLogWriter.insert_run
    monkeypatch.setattr(sync_logs.SyncLogWriter, "insert_run", fails)
    warehouse.load(rows())
    write_project(tmp_path / "p", warehouse)
    project = Project.load(str(tmp_path / "p"))
    try:
        [first] = project.run(["users_out"])
        assert first.status == RunStatus.SUCCEEDED
        assert "sync logs of 1 run(s) not written" in (first.warning or "")
        s, where = warehouse.schema, f"where run_id = '{first.id}'"
        # committed at the end of the delivery: there, though the run's row failed after it
        assert warehouse.query(f'select count(*) from "{s}"."sync_changelog" {where}') == [(ROWS,)]
        assert warehouse.query(f'select count(*) from "{s}"."sync_runs" {where}') == [(0,)]

        monkeypatch.setattr(sync_logs.SyncLogWriter, "insert_run", real_insert_run)
        warehouse.load(rows()[:100])
        [second] = project.run(["users_out"])
        assert second.warning is None or "sync logs" not in second.warning
        got, changes = logged(warehouse, first.id)
        assert got["sent"] == first.counts["sent"] and got["status"] == "succeeded"
        assert len(changes) == len({c[0] for c in changes}) == ROWS  # once each
        assert logged(warehouse, second.id)[0]["removed"] == second.counts["removed"] > 0
    finally:
        project.close()


def test_rows_rejected_for_their_key_are_in_the_changelog(tmp_path: Path) -> None:
    """A NULL or duplicate primary key is rejected before any batch: the live writer adds
    those keys (from the state store) beside the streamed rows, once each."""
    wh = duckdb_warehouse(tmp_path)
    wh.load([*rows(), (3, "again@x.com", "40"), (None, "nobody@x.com", "41")])
    write_project(tmp_path / "p", wh)
    project = Project.load(str(tmp_path / "p"))
    try:
        [run] = project.run(["users_out"])
        got, changes = logged(wh, run.id)
        assert got["rejected"] == run.counts["rejected"] == len(BAD) + 3  # 3 twice, and NULL
        keyed = sorted(c[0] for c in changes if c[2] is None)  # no operation: before planning
        assert len(keyed) == 2 and keyed[0] == "3", keyed  # one row per key (3's two rows)
        assert all(c[3] == "rejected" and c[4] for c in changes if c[2] is None)
        assert len(changes) == got["sent"] + len(BAD) + 2
        assert "3" not in {c[0] for c in changes if c[2] is not None}  # never sent
    finally:
        project.close()
