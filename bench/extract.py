"""Extraction rows/s per runnable source: DuckDB, PostgreSQL, MariaDB, SQLite.

    python bench/extract.py                  # 1M rows, 3 runs each, prints a table
    python bench/extract.py --rows 200000 --runs 1 --sources duckdb,sqlite --json

Each source gets the same 11-column ``customers`` model (as ``bench/project.py``); the
tables and databases are created here and dropped at the end. Every run is a fresh
process (``--child``) reading ``select * from customers`` through the source's
``extract()`` to the last batch, so its peak RSS is that of one extraction (it includes
the interpreter and imports, about 100 MB). The figure is the median of the runs.

From ``bench/run.py``: ``from bench.extract import measure_all`` then
``measure_all(rows=1_000_000, runs=3)`` returns ``{source: {"rows_per_s", "seconds",
"peak_mb", "runs": [...]}}``, or an ``{"error": ...}`` entry for a source whose server is
down; nothing is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SOURCES = ("duckdb", "postgres", "mariadb", "sqlite")
SQL = "select * from customers"
PG_ADMIN = os.environ.get("UNDERTOW_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
MARIADB = os.environ.get("UNDERTOW_BENCH_MARIADB", "mysql://root@127.0.0.1:3306/")

_FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"]
_PLANS = ["free", "starter", "team", "business", "enterprise"]
_COUNTRIES = ["US", "GB", "FR", "DE", "NL", "ES", "IT", "JP", "BR", "IN", "CA", "AU"]


def _pick(values: list[str], expr: str) -> str:
    """SQL CASE choosing values[expr % n] (no array functions: works on every engine)."""
    arms = " ".join(f"WHEN {i} THEN '{v}'" for i, v in enumerate(values))
    return f"(CASE ({expr}) % {len(values)} {arms} END)"


# -- building the model on each engine ----------------------------------------------------


def build_duckdb(folder: Path, rows: int) -> dict[str, Any]:
    from bench.project import build_warehouse

    build_warehouse(folder / "warehouse.duckdb", rows)
    return {"type": "duckdb", "path": str(folder / "warehouse.duckdb")}


def build_postgres(rows: int) -> tuple[dict[str, Any], Any]:
    import psycopg

    name = f"ut_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"""
            CREATE TABLE customers AS SELECT
                i::int8 AS id,
                'customer' || i || '@example' || (i % 97) || '.com' AS email,
                {_pick(_FIRST, "i")} || ' Lovelace' AS full_name,
                {_pick(_PLANS, "i / 3")} AS plan,
                (1 + (i * 7919) % 250)::int4 AS seats,
                ((i * 104729) % 1000000 / 100.0)::numeric(12, 2) AS mrr,
                {_pick(_COUNTRIES, "i / 11")} AS country,
                DATE '2019-01-01' + ((i * 37) % 2400)::int AS signup_date,
                TIMESTAMPTZ '2025-01-01 00:00:00+00'
                    + make_interval(secs => (i * 2654435761) % 31536000) AS last_seen_at,
                ARRAY['beta', 'vip'] AS tags,
                i % 5 <> 0 AS is_active
            FROM generate_series(0::int8, {rows - 1}) AS i
            """
        )
        conn.execute("VACUUM ANALYZE customers")

    def drop() -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return {"type": "postgres", "url": url}, drop


def build_mariadb(rows: int) -> tuple[dict[str, Any], Any]:
    import pymysql

    name = f"ut_bench_{uuid.uuid4().hex[:8]}"
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
    with conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
        cur.execute(f"USE `{name}`")
        cur.execute(
            """
            CREATE TABLE customers (
                id bigint PRIMARY KEY, email varchar(100), full_name varchar(100),
                plan varchar(20), seats int, mrr decimal(12, 2), country char(2),
                signup_date date, last_seen_at timestamp(6) NULL, tags json,
                is_active boolean)
            """
        )
        cur.execute(
            f"""
            INSERT INTO customers SELECT
                seq, concat('customer', seq, '@example', seq % 97, '.com'),
                concat({_pick(_FIRST, "seq")}, ' Lovelace'),
                {_pick(_PLANS, "seq DIV 3")}, 1 + (seq * 7919) % 250,
                ((seq * 104729) % 1000000) / 100, {_pick(_COUNTRIES, "seq DIV 11")},
                DATE '2019-01-01' + INTERVAL ((seq * 37) % 2400) DAY,
                TIMESTAMP '2025-01-01 00:00:00'
                    + INTERVAL ((seq * 2654435761) % 31536000) SECOND,
                '["beta", "vip"]', seq % 5 <> 0
            FROM seq_0_to_{rows - 1}
            """
        )

    def drop() -> None:
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
        with conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")

    return {"type": "mariadb", "url": MARIADB + name}, drop


def build_sqlite(folder: Path, rows: int) -> dict[str, Any]:
    import sqlite3

    path = folder / "app.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        f"""
        CREATE TABLE customers (
            id integer PRIMARY KEY, email text, full_name text, plan text, seats integer,
            mrr decimal(12, 2), country text, signup_date date, last_seen_at datetime,
            tags text, is_active boolean);
        INSERT INTO customers
        WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {rows - 1})
        SELECT i, 'customer' || i || '@example' || (i % 97) || '.com',
               {_pick(_FIRST, "i")} || ' Lovelace', {_pick(_PLANS, "i / 3")},
               1 + (i * 7919) % 250, ((i * 104729) % 1000000) / 100.0,
               {_pick(_COUNTRIES, "i / 11")},
               date('2019-01-01', '+' || ((i * 37) % 2400) || ' days'),
               datetime('2025-01-01', '+' || ((i * 2654435761) % 31536000) || ' seconds'),
               '["beta", "vip"]', i % 5 <> 0
        FROM s;
        """
    )
    conn.commit()
    conn.close()
    return {"type": "sqlite", "path": str(path)}


# -- measuring ----------------------------------------------------------------------------


def child(config: dict[str, Any]) -> dict[str, Any]:
    """One extraction in this process: seconds, rows, peak RSS."""
    import resource

    from undertow.registry import source_class

    cls = source_class(config["type"])
    source = cls(cls.Config.model_validate(config), name="bench")
    start = time.perf_counter()
    rows = 0
    with source.extract(SQL, model="customers") as reader:
        for batch in reader:
            rows += batch.num_rows
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "rows": rows, "peak_mb": peak_mb}


def _run_child(config: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(config)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr else "failed")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(config: dict[str, Any], runs: int) -> dict[str, Any]:
    results = [_run_child(config) for _ in range(runs)]
    seconds = statistics.median(r["seconds"] for r in results)
    rows = results[0]["rows"]
    return {
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds if seconds else None,
        "peak_mb": statistics.median(r["peak_mb"] for r in results),
        "runs": results,
    }


def measure_all(
    rows: int = 1_000_000, runs: int = 3, sources: tuple[str, ...] = SOURCES
) -> dict[str, dict[str, Any]]:
    """Build each source's model, measure ``runs`` extractions, drop what was built."""
    report: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="undertow-bench-extract-") as tmp:
        folder = Path(tmp)
        for name in sources:
            drop = None
            try:
                if name == "duckdb":
                    config = build_duckdb(folder, rows)
                elif name == "sqlite":
                    config = build_sqlite(folder, rows)
                elif name == "postgres":
                    config, drop = build_postgres(rows)
                elif name == "mariadb":
                    config, drop = build_mariadb(rows)
                else:
                    raise ValueError(f"unknown source {name!r} (known: {', '.join(SOURCES)})")
                report[name] = measure(config, runs)
            except Exception as exc:  # a server down: report it, measure the others
                report[name] = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                if drop is not None:
                    drop()
    return report


def print_table(report: dict[str, dict[str, Any]], runs: int) -> None:
    print(f"{'source':<10} {'rows':>10} {'seconds':>8} {'rows/s':>10} {'peak MB':>8}", end="")
    print(f"  (median of {runs})")
    for name, r in report.items():
        if "error" in r:
            print(f"{name:<10} error: {r['error']}")
            continue
        print(
            f"{name:<10} {r['rows']:>10,} {r['seconds']:>8.2f} {r['rows_per_s']:>10,.0f} "
            f"{r['peak_mb']:>8.0f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    sources = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    report = measure_all(args.rows, args.runs, sources)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report, args.runs)
    return 1 if any("error" in r for r in report.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
