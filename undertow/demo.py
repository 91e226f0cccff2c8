"""``undertow demo``: a sample warehouse synced into a local fake HubSpot, twice.

1. generate a DuckDB warehouse of customers; 2. start the fake HubSpot on 127.0.0.1;
3. validate and run the sync of active customers into HubSpot contacts (upsert on email,
with a template field and a list field); 4. change the warehouse (upgrades, churn, sign-ups,
and an unmapped column); 5. preview and run again: only the changes are sent.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from undertow.console import TerminalConsole, plain, safe
from undertow.errors import UndertowError
from undertow.samples import build_customers, change_customers
from undertow.state.store import RunRecord
from undertow.testing.hubspot import DEMO_PROPERTIES, HubSpotFake
from undertow.testing.server import serve_in_thread

DEMO_TOKEN = "pat-demo-0000-local-fake"

PROJECT_YML = """\
# The Undertow demo project: active customers -> HubSpot contacts.
name: demo
state: sqlite:///.undertow/state.db

sources:
  warehouse:
    type: duckdb
    path: warehouse.duckdb

destinations:
  hubspot:
    type: hubspot
    token: ${HUBSPOT_TOKEN}
    base_url: ${HUBSPOT_BASE_URL:-https://api.hubapi.com}
    rate_limit_per_10s: 5000   # the local fake's limit; real portals allow 100-250

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
    match: {email: email}
    mappings:
      email: email
      firstname: first_name
      lastname: last_name
      plan: plan
      seats: seats
      mrr: mrr
      country: country
      signup_date: signup_date
      greeting:
        template: "Hi {{ first_name }}, thanks for choosing {{ plan | title }}!"
      recently_viewed_products: recently_viewed   # a list: HubSpot multi-select "a;b;c"
"""


DEMO_MARKER = ".undertow-demo"


def write_folder(directory: Path, project_yml: str, *, env: str) -> None:
    """A fresh demo folder (an earlier demo's is replaced; anything else is refused)."""
    if directory.exists() and any(directory.iterdir()):
        if not (directory / DEMO_MARKER).exists():
            raise UndertowError(
                f"{directory} is not empty and was not made by `undertow demo`: not touching it",
                hint="choose a new folder: `undertow demo --dir .demo`",
            )
        shutil.rmtree(directory)  # an earlier demo: start afresh
    directory.mkdir(parents=True, exist_ok=True)
    (directory / DEMO_MARKER).write_text("made by `undertow demo`; safe to delete\n")
    (directory / "undertow.yml").write_text(project_yml)
    # so `undertow status --project DIR` works after the demo (the fake's token, not a secret)
    (directory / ".env").write_text(env)


def write_project(directory: Path, customers: int) -> None:
    write_folder(directory, PROJECT_YML, env=f"HUBSPOT_TOKEN={DEMO_TOKEN}\n")
    build_customers(directory / "warehouse.duckdb", customers)


def run_demo(directory: Path, *, customers: int, console: TerminalConsole) -> bool:
    from undertow.project import Project

    directory = directory.resolve()
    console.print(f"[bold]Undertow demo[/] in {safe(directory)}")
    started = time.monotonic()
    write_project(directory, customers)
    console.print(f"• generated warehouse.duckdb with {customers:,} customers")

    fake = HubSpotFake(DEMO_TOKEN, rate_limit_per_10s=5000, properties=DEMO_PROPERTIES)
    with serve_in_thread(fake.app) as server:
        os.environ["HUBSPOT_TOKEN"] = DEMO_TOKEN
        os.environ["HUBSPOT_BASE_URL"] = server.url
        console.print(f"• started the local fake HubSpot at {server.url}")
        project = Project.load(str(directory))
        try:
            problems = project.validate()
            if problems:
                for problem in problems:
                    console.error(str(problem))
                return False
            console.print("• undertow validate: the project is valid")

            first = _run(project, console, "first run (everything is new)")
            first_requests = len(fake.requests)
            changes = change_customers(directory / "warehouse.duckdb")
            console.print(
                f"• changed the warehouse: {changes['upgraded']:,} upgrades, "
                f"{changes['churned']:,} churned (no longer active), "
                f"{changes['signed_up']:,} sign-ups, and an unmapped column on 1% of rows"
            )
            preview = project.plan("customers_to_hubspot", limit=2)
            c = preview.counts
            console.print(
                f"• undertow plan: +{c.added:,} added, ~{c.changed:,} changed, "
                f"{c.removed:,} no longer in the model (upsert mode leaves them in HubSpot), "
                f"{c.unchanged:,} unchanged"
            )
            for change in preview.changes[:2]:
                fields = "; ".join(
                    f"{f}: {v['old']!r} → {v['new']!r}" for f, v in change["fields"].items()
                )
                console.print(plain(f"    {change['key']}: {fields}"), markup=False)
            before_second = len(fake.requests)  # plan reads HubSpot's properties
            second = _run(project, console, "second run (only the changes)")
            second_requests = len(fake.requests) - before_second
        finally:
            project.close()

    contacts = fake.objects["contacts"]
    _summary(console, [(first, first_requests), (second, second_requests)])
    sample = next(iter(contacts.values()), {})
    console.print(f"HubSpot (fake) now holds {len(contacts):,} contacts; one of them:")
    console.print(plain(f"  {_trim(sample)}"), markup=False)
    ok = (
        str(first.status) == "succeeded"
        and str(second.status) == "succeeded"
        and second.counts["sent"] == second.counts["added"] + second.counts["changed"]
        and second.counts["sent"] < first.counts["sent"]
    )
    took = time.monotonic() - started
    if console.json_mode:
        console.json(
            {
                "ok": ok,
                "project": str(directory),
                "runs": [first.as_dict(), second.as_dict()],
                "hubspot_requests": [first_requests, second_requests],
                "hubspot_contacts": len(contacts),
                "seconds": round(took, 2),
            }
        )
    if ok:
        console.print(
            f"[green]✓ the second run sent only the {second.counts['sent']:,} changed rows "
            f"of {second.counts['extracted']:,}[/] (demo took {took:.1f}s)"
        )
        console.print(
            f"Explore it: undertow status --project {safe(directory)} · "
            f"undertow runs customers_to_hubspot --project {safe(directory)}"
        )
        console.print(
            f"Open the web UI on it: [bold]undertow demo --ui --dir {_shown(directory)}[/] "
            "(then http://127.0.0.1:8765/ with the token it prints)"
        )
    else:
        console.error("the demo did not end as expected: see the runs above")
    return ok


def _run(
    project: Any, console: TerminalConsole, label: str, sync: str = "customers_to_hubspot"
) -> RunRecord:
    record: RunRecord = project.run([sync], reporter=console)[0]
    console.done_progress()
    c = record.counts
    console.print(
        f"• {label}: {record.status} in {record.duration_s or 0:.1f}s: "
        f"sent {c['sent']:,}, accepted {c['succeeded']:,}, rejected {c['rejected']:,}"
    )
    if record.error:
        console.error(record.error)
    return record


def _summary(console: TerminalConsole, runs: list[tuple[RunRecord, int]]) -> None:
    table = Table(title="Both runs", title_justify="left")
    for column in (
        "run",
        "status",
        "extracted",
        "added",
        "changed",
        "removed",
        "unchanged",
        "sent",
        "accepted",
        "rejected",
        "requests",
        "s",
    ):
        table.add_column(column, justify="right" if column not in ("run", "status") else "left")
    for i, (run, requests) in enumerate(runs, start=1):
        c = run.counts
        table.add_row(
            f"#{i}",
            str(run.status),
            *(
                f"{c[k]:,}"
                for k in (
                    "extracted",
                    "added",
                    "changed",
                    "removed",
                    "unchanged",
                    "sent",
                    "succeeded",
                    "rejected",
                )
            ),
            f"{requests:,}",
            f"{run.duration_s or 0:.1f}",
        )
    console.print(table)


def _trim(record: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in list(record.items())[:12])
    return text[:300]


def _shown(directory: Path) -> str:
    try:
        return str(directory.relative_to(Path.cwd()))
    except ValueError:
        return str(directory)


def serve_demo(
    directory: Path,
    *,
    console: TerminalConsole,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    customers: int = 100_000,
) -> None:
    """``undertow demo --ui``: the demo project served with its web UI, and the fake
    HubSpot it syncs to running beside it (a new, empty one: the demo's upserts are
    idempotent, so a run sends what the snapshot says is new or changed)."""
    import secrets

    from undertow.project import Project
    from undertow.server.serve import serve

    directory = directory.resolve()
    if not (directory / DEMO_MARKER).exists():
        write_project(directory, customers)
        console.print(f"• generated the demo project in {directory}")
    token = token or os.environ.get("UNDERTOW_API_TOKEN") or secrets.token_urlsafe(18)
    fake = HubSpotFake(DEMO_TOKEN, rate_limit_per_10s=5000, properties=DEMO_PROPERTIES)
    with serve_in_thread(fake.app) as hubspot:
        os.environ["HUBSPOT_TOKEN"] = DEMO_TOKEN
        os.environ["HUBSPOT_BASE_URL"] = hubspot.url
        console.print(f"• the local fake HubSpot listens at {hubspot.url}")
        console.print(f"• web UI: [bold]http://{host}:{port}/[/]  API token: [bold]{token}[/]")
        console.print("  (Ctrl-C stops both)")
        project = Project.load(str(directory))
        try:
            serve(
                project,
                token=token,
                host=host,
                port=port,
                interval=1.0,
                announce=lambda text: console.err.print(text, markup=False),
            )
        finally:
            project.close()
