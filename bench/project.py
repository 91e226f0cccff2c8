"""The benchmark's warehouse (a DuckDB file of customers) and the project that syncs it."""

from __future__ import annotations

import shutil
from pathlib import Path

SYNC = "customers_to_hook"
TABLE = "customers"
WAREHOUSE = "warehouse.duckdb"

COLUMNS = [
    "id",
    "email",
    "full_name",
    "plan",
    "seats",
    "mrr",
    "country",
    "signup_date",
    "last_seen_at",
    "tags",
    "is_active",
]

_FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"]
_LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson"]
_PLANS = ["free", "starter", "team", "business", "enterprise"]
_COUNTRIES = ["US", "GB", "FR", "DE", "NL", "ES", "IT", "JP", "BR", "IN", "CA", "AU"]
_TAGS = ["beta", "churn-risk", "vip", "newsletter", "trial", "partner", "edu"]


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join("'" + v + "'" for v in values) + "]"


def build_warehouse(path: Path, rows: int) -> None:
    """``customers``: ``rows`` rows of 11 columns, about 300 bytes each as JSON."""
    import duckdb

    first, last = _sql_list(_FIRST), _sql_list(_LAST)
    plans, countries, tags = _sql_list(_PLANS), _sql_list(_COUNTRIES), _sql_list(_TAGS)
    con = duckdb.connect(str(path))
    try:
        con.execute(
            f"""
            CREATE OR REPLACE TABLE {TABLE} AS
            SELECT
                i::BIGINT AS id,
                'customer' || i || '@example' || (i % 97) || '.com' AS email,
                {first}[1 + i % {len(_FIRST)}] || ' ' || {last}[1 + (i // 7) % {len(_LAST)}]
                    AS full_name,
                {plans}[1 + (i // 3) % {len(_PLANS)}] AS plan,
                (1 + (i * 7919) % 250)::INTEGER AS seats,
                ((i * 104729) % 1000000 / 100)::DECIMAL(12, 2) AS mrr,
                {countries}[1 + (i // 11) % {len(_COUNTRIES)}] AS country,
                DATE '2019-01-01' + ((i * 37) % 2400)::INTEGER AS signup_date,
                TIMESTAMPTZ '2025-01-01 00:00:00+00'
                    + to_seconds(((i * 2654435761) % 31536000)::BIGINT) AS last_seen_at,
                list_slice({tags}, 1 + i % 4, 1 + i % 4 + i % 3) AS tags,
                i % 5 <> 0 AS is_active
            FROM range({rows}) AS t(i)
            """
        )
        con.execute("CHECKPOINT")
    finally:
        con.close()


def change_one_percent(path: Path) -> int:
    """Change 1% of the rows (``id % 100 = 0``), as a loader would; return how many."""
    import duckdb

    con = duckdb.connect(str(path))
    try:
        con.execute(
            f"UPDATE {TABLE} SET seats = seats + 1, "
            "last_seen_at = last_seen_at + INTERVAL 1 HOUR WHERE id % 100 = 0"
        )
        row = con.execute(f"SELECT count(*) FROM {TABLE} WHERE id % 100 = 0").fetchone()
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return int(row[0]) if row else 0


def write_project(folder: Path, template: Path, url: str) -> Path:
    """A project in ``folder`` with a copy of the ``template`` warehouse; return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, folder / WAREHOUSE)
    mappings = ", ".join(f"{c}: {c}" for c in COLUMNS)
    (folder / "undertow.yml").write_text(
        f"""name: bench
sources:
  wh: {{type: duckdb, path: {WAREHOUSE}}}
destinations:
  hook: {{type: webhook, url: "{url}/hooks", batch_size: 1000, max_concurrency: 4}}
models:
  customers: {{source: wh, sql: "select * from {TABLE}", primary_key: id}}
syncs:
  {SYNC}:
    model: customers
    destination: hook
    mode: upsert
    mappings: {{{mappings}}}
""",
        encoding="utf-8",
    )
    return folder
