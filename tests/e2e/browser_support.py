"""Headless Debian Chromium driven by Playwright, and a demo-like project served for it.

Never `playwright install`: the browser is the system's ``/usr/bin/chromium`` (``make test``
installs Debian's ``chromium`` package when it is missing), started headless with a fresh
profile and every background network feature off, so a page can only reach the server
under test.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}


@contextmanager
def chromium() -> Iterator[Any]:
    """A Playwright browser context on a fresh user-data-dir (closed and removed after)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium with `apt-get install -y "
            "chromium` (make test does it)",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="undertow-chromium-")
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=FLAGS,
                headless=True,
                viewport=VIEWPORT,
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def login(page: Any, url: str, token: str) -> None:
    """Log in (a browser that already has a session is sent on by /login)."""
    page.goto(url + "/login")
    if "/login" not in page.url:
        return
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_selector("header nav")


DEMO_YML = """\
name: demo
state: sqlite:///.undertow/state.db
sources:
  warehouse: {{type: duckdb, path: warehouse.duckdb}}
destinations:
  hubspot:
    type: hubspot
    token: ${{HUBSPOT_TOKEN}}
    base_url: {hubspot}
    rate_limit_per_10s: {rate}
models:
  active_customers:
    source: warehouse
    sql: select * from customers where active
    primary_key: customer_id
syncs:
  customers_to_hubspot:
    model: active_customers
    destination: hubspot
    object: contacts
    mode: upsert
    match: {{email: email}}
    batch_size: 20
    max_rejected_ratio: 0.5
    sla: 1h
    mappings:
      email: email
      firstname: first_name
      lastname: last_name
      plan: plan
      greeting:
        template: "Hi {{{{ first_name }}}}, thanks for choosing {{{{ plan | title }}}}!"
  enterprise_to_hubspot:
    model: active_customers
    destination: hubspot
    object: contacts
    mode: upsert
    match: {{email: email}}
    after: [customers_to_hubspot]
    mappings: {{email: email, plan: plan}}
"""


def write_demo(folder: Path, *, hubspot: str, customers: int, rate: int, token: str) -> None:
    """The demo's warehouse and sync, smaller and slower (so a run can be watched), with a
    few customers whose email HubSpot refuses."""
    import duckdb

    from undertow.samples import build_customers

    folder.mkdir(parents=True)
    build_customers(folder / "warehouse.duckdb", customers)
    with duckdb.connect(str(folder / "warehouse.duckdb")) as con:
        con.execute(
            "UPDATE customers SET email = 'not-an-email-' || customer_id, active = true "
            "WHERE customer_id IN (3, 7, 11)"
        )
    (folder / "undertow.yml").write_text(DEMO_YML.format(hubspot=hubspot, rate=rate))
    (folder / ".env").write_text(f"HUBSPOT_TOKEN={token}\n")
