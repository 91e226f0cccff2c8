"""What sync logs cost: a 100,000-row first sync with and without `sync_logs:`.

On DuckDB and on the PostgreSQL of this machine (database `test`, a schema of its own,
dropped after). The destination is a local file, nearly free, so the ratio is the worst
case: against a real API the run takes longer and the logs the same. Medians of 3
repetitions, with and without interleaved; figures printed, never asserted.

    .venv/bin/python bench/sync_logs.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
import psycopg

from undertow.project import Project

ROWS = 100_000
REPEAT = 3
PG = "postgresql://postgres@127.0.0.1:5432/test"

YML = """
name: bench
sources:
  wh: {source}
destinations:
  out: {{type: file, path: out.jsonl}}
models:
  users: {{source: wh, sql: "select id, email, plan, seats from {table}", primary_key: id}}
{logs}
syncs:
  users_out:
    model: users
    destination: out
    mappings: {{id: id, email: email, plan: plan, seats: seats}}
"""


def one_run(source: str, table: str, logs: str) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "undertow.yml").write_text(YML.format(source=source, table=table, logs=logs))
        project = Project.load(tmp)
        try:
            started = time.perf_counter()
            [run] = project.run(["users_out"])
            took = time.perf_counter() - started
            assert str(run.status) == "succeeded", run
            return took, run.counts["sent"]
        finally:
            project.close()


def measure(label: str, source: str, table: str, audit: str, drop: object) -> None:
    plain, logged = [], []
    for _ in range(REPEAT):
        plain.append(one_run(source, table, "")[0])
        took, sent = one_run(source, table, f"sync_logs: {{schema: {audit}}}")
        logged.append(took)
        assert sent == ROWS
        drop()  # type: ignore[operator]
    a, b = statistics.median(plain), statistics.median(logged)
    print(
        f"{label:10s} first sync of {ROWS:,} rows: {a:.2f} s without sync logs, {b:.2f} s with "
        f"(+{b - a:.2f} s, {100 * (b - a) / a:+.1f}% of the run)"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wh.duckdb"
        with duckdb.connect(str(path)) as con:
            con.execute(
                f"create table users as select i as id, 'u' || i || '@x.com' as email, "
                f"['free', 'pro'][1 + i % 2] as plan, i % 50 as seats from range({ROWS}) t(i)"
            )

        def drop_duckdb() -> None:
            with duckdb.connect(str(path)) as con:
                con.execute("drop schema if exists audit cascade")

        measure("duckdb", f"{{type: duckdb, path: {path}}}", "users", "audit", drop_duckdb)

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    audit = f"{schema}_audit"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"create schema {schema}")
        conn.execute(
            f"create table {schema}.users as select i as id, 'u' || i || '@x.com' as email, "
            f"(array['free', 'pro'])[1 + i % 2] as plan, i % 50 as seats "
            f"from generate_series(0, {ROWS - 1}) i"
        )
    try:

        def drop_pg() -> None:
            with psycopg.connect(PG, autocommit=True) as conn:
                conn.execute(f"drop schema if exists {audit} cascade")

        measure("postgres", f'{{type: postgres, url: "{PG}"}}', f"{schema}.users", audit, drop_pg)
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"drop schema if exists {schema} cascade")
            conn.execute(f"drop schema if exists {audit} cascade")


if __name__ == "__main__":
    main()
