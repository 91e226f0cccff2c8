"""Sample warehouses for ``undertow demo`` and ``undertow init`` (generated in DuckDB SQL)."""

from __future__ import annotations

from pathlib import Path

import duckdb

CUSTOMERS_SQL = """
CREATE OR REPLACE TABLE customers AS
SELECT
    i AS customer_id,
    'customer' || i || '@example.com' AS email,
    (['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Ken', 'Radia', 'Linus'])[1 + i % 8]
        AS first_name,
    (['Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Thompson', 'Perlman',
      'Torvalds'])[1 + (i // 8) % 8] AS last_name,
    (['free', 'starter', 'pro', 'enterprise'])[1 + (hash(i) % 4)::INT] AS plan,
    (1 + hash(i * 7) % 50)::INTEGER AS seats,
    ((hash(i * 13) % 100000) / 100.0)::DECIMAL(12, 2) AS mrr,
    (['US', 'GB', 'DE', 'FR', 'BR', 'IN', 'JP', 'CA'])[1 + (hash(i * 3) % 8)::INT] AS country,
    DATE '2020-01-01' + (hash(i * 5) % 2000)::INTEGER AS signup_date,
    list_transform(range(1 + (hash(i * 11) % 4)::INT),
                   lambda x: 'SKU-' || lpad(((i * 31 + x * 17) % 500)::VARCHAR, 4, '0'))
        AS recently_viewed,
    (hash(i * 17) % 10) <> 0 AS active,
    TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_seconds(hash(i) % 25000000) AS updated_at
FROM range(1, {n} + 1) t(i)
"""


def build_customers(path: Path, customers: int) -> None:
    """Create (or replace) ``customers`` in the DuckDB file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(path)) as con:
        con.execute(CUSTOMERS_SQL.format(n=int(customers)))


def change_customers(path: Path, *, seed_mod: int = 100) -> dict[str, int]:
    """Simulate a day of changes: upgrades, churn, new signups. Returns what changed."""
    with duckdb.connect(str(path)) as con:
        row = con.execute("SELECT max(customer_id) FROM customers").fetchone()
        top = int(row[0]) if row and row[0] is not None else 0
        upgraded = con.execute(
            f"UPDATE customers SET plan = 'enterprise', seats = seats + 10 "
            f"WHERE customer_id % {seed_mod} = 7 AND active AND plan <> 'enterprise'"
        ).fetchone()
        churned = con.execute(
            f"UPDATE customers SET active = false WHERE customer_id % {seed_mod * 2} = 3 AND active"
        ).fetchone()
        new = max(1, top // 500)
        con.execute(
            "INSERT INTO customers SELECT customer_id + ? AS customer_id, "
            "'new' || (customer_id + ?) || '@example.com', first_name, last_name, 'free', 1, "
            "0.00, country, DATE '2026-11-20', [], true, TIMESTAMPTZ '2026-11-20 12:00:00+00' "
            "FROM customers WHERE customer_id <= ?",
            [top, top, new],
        )
        # an unmapped column changing sends nothing
        con.execute(
            "UPDATE customers SET updated_at = updated_at + INTERVAL 1 HOUR "
            f"WHERE customer_id % {seed_mod} = 11"
        )
    return {
        "upgraded": int(upgraded[0]) if upgraded else 0,
        "churned": int(churned[0]) if churned else 0,
        "signed_up": new,
    }
