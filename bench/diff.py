"""Diff-engine benchmarks (standalone; prints figures, never fails on timing).

    python bench/diff.py                      # 10M rows on DuckDB, 1M on PostgreSQL
    python bench/diff.py --rows 1000000 --pg-rows 200000 --repeat 3

1. A DuckDB model of ``--rows`` rows (8 columns) with 1% of its rows changed since the
   snapshot (0.5% changed values, 0.25% added, 0.25% removed), diffed by each engine.
   Targets: the local engine under 4 s and 2 GB peak memory for 10M rows.
2. The same on PostgreSQL with ``--pg-rows`` rows: the local engine (extract + DuckDB diff)
   against the warehouse engine (diff SQL inside PostgreSQL). Target: warehouse within 2x.

Each measured diff (``build`` of the run's plan, extraction included) runs in a fresh
subprocess, so the peak RSS reported is that diff's alone; the figure is the median of
``--repeat`` runs. The snapshot is prepared once per engine (a first run folded as accepted).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PG_URL = os.environ.get("UNDERTOW_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
COLUMNS = ["id", "email", "name", "plan", "country", "score", "seats", "created_at"]
MODEL_DUCKDB = "select * from users"


def _duckdb_users(path: Path, rows: int) -> None:
    import duckdb

    con = duckdb.connect(str(path))
    con.execute(
        f"""create or replace table users as
            select i as id, 'user' || i || '@example.com' as email, 'Name ' || i as name,
                   ['free','pro','team'][1 + i % 3] as plan, ['fr','de','us','gb'][1 + i % 4]
                   as country, (i % 1000) / 10.0 as score, (i % 50)::integer as seats,
                   timestamp '2024-01-01' + to_seconds(i % 1000000) as created_at
            from range({rows}) t(i)"""
    )
    con.close()


def _duckdb_change(path: Path, rows: int) -> None:
    """1% of rows: 0.5% changed, 0.25% removed, 0.25% added."""
    import duckdb

    con = duckdb.connect(str(path))
    con.execute("update users set plan = 'enterprise' where id % 200 = 7")
    con.execute("delete from users where id % 400 = 3")
    con.execute(
        f"""insert into users select {rows} + i, 'new' || i || '@example.com', 'New', 'free',
                   'fr', 1.0, 1, timestamp '2025-01-01' from range({rows // 400}) t(i)"""
    )
    con.close()


def _pg_users(rows: int) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute("drop table if exists ut_bench_users")
        con.execute(
            f"""create table ut_bench_users as
                select i::bigint as id, 'user' || i || '@example.com' as email,
                       'Name ' || i as name, (array['free','pro','team'])[1 + i % 3] as plan,
                       (array['fr','de','us','gb'])[1 + i % 4] as country,
                       (i % 1000) / 10.0 as score, (i % 50)::integer as seats,
                       timestamp '2024-01-01' + (i % 1000000) * interval '1 second' as created_at
                from generate_series(0, {rows - 1}) i"""
        )
        con.execute("drop schema if exists ut_bench cascade")


def _pg_change(rows: int) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute("update ut_bench_users set plan = 'enterprise' where id % 200 = 7")
        con.execute("delete from ut_bench_users where id % 400 = 3")
        con.execute(
            f"""insert into ut_bench_users select {rows} + i, 'new' || i || '@example.com',
                       'New', 'free', 'fr', 1.0, 1, timestamp '2025-01-01'
                from generate_series(0, {rows // 400 - 1}) i"""
        )
        con.execute("vacuum analyze ut_bench_users")


# -- one diff, in this process ----------------------------------------------------------------


def _source(kind: str, db: str) -> Any:
    if kind == "duckdb":
        from undertow.sources.duckdb import DuckDBConfig, DuckDBSource

        return DuckDBSource(DuckDBConfig(path=db), name="bench")
    from undertow.sources.postgres import PostgresConfig, PostgresSource

    return PostgresSource(PostgresConfig(url=db), name="bench")


def _one(args: argparse.Namespace) -> dict[str, Any]:
    from undertow.config.models import Mode
    from undertow.destinations.base import Capabilities, Operation
    from undertow.pipeline.diff import DiffSpec, LocalDiffEngine
    from undertow.pipeline.diff_warehouse import WarehouseDiffEngine
    from undertow.pipeline.plan import make_plan

    source = _source(args.source, args.db)
    sql = MODEL_DUCKDB if args.source == "duckdb" else "select * from ut_bench_users"
    caps = Capabilities(operations=frozenset(Operation), max_batch_size=1000)
    plan = make_plan(sync="bench", mode=Mode.MIRROR, destination="d", caps=caps)
    spec = DiffSpec(sync="bench", keys=["id"], columns=COLUMNS, fingerprint=1)
    engine: Any
    if args.engine == "local":
        engine = LocalDiffEngine(Path(args.state), "bench")
    else:
        engine = WarehouseDiffEngine(
            source, "bench", sql=sql, model="users", schema=args.schema, match_columns=["email"]
        )
    started = time.perf_counter()
    reader = None
    if engine.pulls_model:
        cols = ", ".join(f'"{c}"' for c in COLUMNS)
        projected = f"SELECT {cols} FROM ({sql}) AS m"
        # as `undertow run` does: a source DuckDB reads natively loads the model itself
        native = (
            source.load_into_duckdb(projected, model="users") if engine.name == "local" else None
        )
        reader = native or source.extract(projected, model="users")
    stats = engine.build(args.run_id, reader, spec, plan, 1000)
    seconds = time.perf_counter() - started
    if args.fold:
        engine.fold(args.run_id, spec, set(range(stats.total_batches)), [])
    engine.discard(args.run_id)
    engine.close()
    source.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "rss_mb": rss_mb, "planned": stats.planned}


def _measure(base: list[str], run_id: str, *, fold: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", *base, "--run-id", run_id]
    if fold:
        cmd.append("--fold")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _report(label: str, base: list[str], repeat: int) -> float:
    runs = [_measure(base, f"r{i}") for i in range(repeat)]
    secs = statistics.median(r["seconds"] for r in runs)
    rss = statistics.median(r["rss_mb"] for r in runs)
    print(
        f"{label:<44} median {secs:6.2f} s  peak RSS {rss:7.0f} MB  "
        f"planned {runs[0]['planned']:,}  (runs: "
        + ", ".join(f"{r['seconds']:.2f}" for r in runs)
        + ")",
        flush=True,
    )
    return secs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--pg-rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-duckdb", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", default="duckdb", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="local", help=argparse.SUPPRESS)
    parser.add_argument("--db", default="", help=argparse.SUPPRESS)
    parser.add_argument("--state", default="", help=argparse.SUPPRESS)
    parser.add_argument("--schema", default="ut_bench", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", default="r", help=argparse.SUPPRESS)
    parser.add_argument("--fold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args)))
        return
    with tempfile.TemporaryDirectory(prefix="ut-bench-diff-") as tmp:
        folder = Path(tmp)
        if not args.skip_duckdb:
            db = folder / "wh.duckdb"
            print(f"DuckDB model: {args.rows:,} rows, 1% changed", flush=True)
            _duckdb_users(db, args.rows)
            local = ["--source", "duckdb", "--db", str(db), "--state", str(folder / "state")]
            wh = ["--source", "duckdb", "--db", str(db), "--engine", "warehouse"]
            _measure([*local, "--engine", "local"], "baseline", fold=True)
            _measure(wh, "baseline", fold=True)
            _duckdb_change(db, args.rows)
            _report("duckdb  local engine", [*local, "--engine", "local"], args.repeat)
            _report("duckdb  warehouse engine", wh, args.repeat)
        if not args.skip_postgres:
            print(f"PostgreSQL model: {args.pg_rows:,} rows, 1% changed", flush=True)
            _pg_users(args.pg_rows)
            local = ["--source", "postgres", "--db", PG_URL, "--state", str(folder / "pgstate")]
            wh = ["--source", "postgres", "--db", PG_URL, "--engine", "warehouse"]
            _measure([*local, "--engine", "local"], "baseline", fold=True)
            _measure(wh, "baseline", fold=True)
            _pg_change(args.pg_rows)
            a = _report(
                "postgres local engine (extract + diff)", [*local, "--engine", "local"], args.repeat
            )
            b = _report("postgres warehouse engine (in PostgreSQL)", wh, args.repeat)
            print(f"warehouse / local on PostgreSQL: {b / a:.2f}x (target <= 2x)", flush=True)
            import psycopg

            with psycopg.connect(PG_URL, autocommit=True) as con:
                con.execute("drop table if exists ut_bench_users")
                con.execute("drop schema if exists ut_bench cascade")


if __name__ == "__main__":
    main()
