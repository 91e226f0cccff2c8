"""What sync logs cost: a 100,000-row first sync with and without `sync_logs:`.

On DuckDB and on the PostgreSQL of this machine (database `test`, a schema of its own,
dropped after), into two destinations:

* ``file``: a local file, nearly free, so the ratio is the worst case (the whole run is
  extract, diff and a file write, about half a second: the logs' fixed costs, the
  warehouse's commit and DuckDB's checkpoint of 100,000 rows, weigh most here);
* ``paced``: the built-in webhook receiver with a rate limit of 50 requests of 1,000
  records a second (50,000 records/s, faster than most SaaS APIs publish), so the run is
  about as long as a fast API makes it; the logs cost the same, the run is longer.

Medians of 5 repetitions, with and without interleaved (the order alternating, after one
warm-up run), in one invocation: the overhead is printed as the ratio of the two medians,
with this process's CPU seconds beside (the warehouse server's own work, PostgreSQL's
``COPY``, is not in them). Figures printed, never asserted.

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
REPEAT = 5
DESTINATIONS = {
    "file": "{type: file, path: out.jsonl}",
    "paced": "{type: webhook, url: 'local://inbox.jsonl', rate_limit: "
    "{requests: 50, per_seconds: 1}, batch_size: 1000}",
}
PG = "postgresql://postgres@127.0.0.1:5432/test"

YML = """
name: bench
sources:
  wh: {source}
destinations:
  out: {destination}
models:
  users: {{source: wh, sql: "select id, email, plan, seats from {table}", primary_key: id}}
{logs}
syncs:
  users_out:
    model: users
    destination: out
    mappings: {{id: id, email: email, plan: plan, seats: seats}}
"""


def one_run(source: str, table: str, logs: str, destination: str = "file") -> tuple[float, float]:
    """One first sync: its wall seconds and this process's CPU seconds (every thread)."""
    with tempfile.TemporaryDirectory() as tmp:
        yml = YML.format(
            source=source, table=table, logs=logs, destination=DESTINATIONS[destination]
        )
        (Path(tmp) / "undertow.yml").write_text(yml)
        project = Project.load(tmp)
        try:
            started, cpu = time.perf_counter(), time.process_time()
            [run] = project.run(["users_out"])
            took, cpu = time.perf_counter() - started, time.process_time() - cpu
            assert str(run.status) == "succeeded", run
            assert run.counts["sent"] == ROWS, run.counts
            return took, cpu
        finally:
            project.close()


def measure(label: str, source: str, table: str, audit: str, drop: object) -> None:
    logs = f"sync_logs: {{schema: {audit}}}"
    for destination in DESTINATIONS:
        one_run(source, table, "", destination)  # warm-up: imports and caches, not counted
        runs: dict[str, list[tuple[float, float]]] = {"plain": [], "logged": []}
        for i in range(REPEAT):  # interleaved, the order alternating
            for kind in ("plain", "logged") if i % 2 == 0 else ("logged", "plain"):
                runs[kind].append(
                    one_run(source, table, logs if kind == "logged" else "", destination)
                )
                drop()  # type: ignore[operator]
        (a, ca), (b, cb) = (
            (statistics.median(w for w, _ in r), statistics.median(c for _, c in r))
            for r in (runs["plain"], runs["logged"])
        )
        print(
            f"{label:9s} {destination:6s} first sync of {ROWS:,} rows, medians of {REPEAT}: "
            f"{a:.2f} s without sync logs, {b:.2f} s with: x{b / a:.3f} "
            f"(+{b - a:.2f} s, {100 * (b - a) / a:+.1f}% of the run); CPU of this process "
            f"{ca:.2f} -> {cb:.2f} s (+{cb - ca:.2f} s)",
            flush=True,
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
