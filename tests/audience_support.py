"""The issue-17 audience acceptance's project: customers with email and phone in DuckDB, a
``mirror`` sync of their SHA-256 hashes to the Facebook fake, and how to read the fake back
(shared by tests/connectors/test_facebook.py and tests/chaos/test_kill_facebook_replace.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import duckdb

from undertow.testing.facebook import FacebookFake

TOKEN = "fb-system-user-token-1111-2222"
AUDIENCE = "23850000000000001"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_project(folder: Path, url: str, customers: int, **extra: Any) -> None:
    with duckdb.connect(str(folder / "wh.duckdb")) as con:
        con.execute(
            f"""CREATE OR REPLACE TABLE customers AS
            SELECT i AS customer_id, ' Customer.' || i || '@Example.com ' AS email,
                   '+1 (415) ' || lpad((i // 10000)::VARCHAR, 3, '2') || '-'
                       || lpad((i % 10000)::VARCHAR, 4, '0') AS phone
            FROM range(1, {customers} + 1) t(i)"""
        )
    options = "".join(f", {k}: {v}" for k, v in extra.items())
    (folder / "undertow.yml").write_text(
        f"""name: audiences
sources:
  wh: {{type: duckdb, path: wh.duckdb}}
destinations:
  fb: {{type: facebook_audiences, access_token: "{TOKEN}", audience_id: "{AUDIENCE}",
        base_url: "{url}"{options}}}
models:
  customers: {{source: wh, sql: select * from customers, primary_key: customer_id}}
syncs:
  vip:
    model: customers
    destination: fb
    object: users
    mode: mirror
    max_delete_ratio: 0.5
    mappings:
      EMAIL: {{column: email, normalize: email, hash: sha256}}
      PHONE: {{column: phone, normalize: phone, hash: sha256}}
"""
    )


def delete_customers(folder: Path, where: str) -> None:
    with duckdb.connect(str(folder / "wh.duckdb")) as con:
        con.execute(f"DELETE FROM customers WHERE {where}")


def emails(fake: FacebookFake) -> set[str]:
    return {m["EMAIL"] for m in fake.members()}


def expected(ids: range | list[int]) -> set[str]:
    return {sha(f"customer.{i}@example.com") for i in ids}
