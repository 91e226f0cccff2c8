"""``undertow demo --destination TYPE``: the sample customers synced into any destination
that declares a demo profile (``Destination.demo``) and a fake (``Destination.fake``), twice.

The generic sibling of :mod:`undertow.demo` (HubSpot's richer walk-through, still the
default): 1. generate the DuckDB warehouse; 2. start TYPE's local fake on 127.0.0.1;
3. validate and run; 4. change the warehouse; 5. run again: only the changes are sent.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from undertow.console import TerminalConsole
from undertow.demo import DEMO_MARKER, _run, _summary, write_folder
from undertow.destinations.catalog import demo_profile, fake_class, project_yml
from undertow.samples import build_customers, change_customers

URL_VAR = "UNDERTOW_DEMO_URL"
TOKEN_VAR = "UNDERTOW_DEMO_TOKEN"
MODEL_SQL = "select * from customers where active"


def write_project(directory: Path, type_name: str, customers: int) -> str:
    """Write the demo project for ``type_name``; returns the sync's name."""
    _, profile = demo_profile(type_name)
    text = project_yml(type_name, profile, name="demo", model=f"sql: {MODEL_SQL}")
    text = text.replace("${FAKE_URL}", f"${{{URL_VAR}}}").replace(
        "${FAKE_TOKEN}", f"${{{TOKEN_VAR}}}"
    )
    write_folder(directory, text, env=f"{TOKEN_VAR}={profile.token}\n")
    build_customers(directory / "warehouse.duckdb", customers)
    return f"customers_to_{type_name.replace('-', '_')}"


def run_destination_demo(
    directory: Path, *, type_name: str, customers: int, console: TerminalConsole
) -> bool:
    from undertow.project import Project

    directory = directory.resolve()
    _, profile = demo_profile(type_name)
    console.print(f"[bold]Undertow demo[/] ({type_name}) in {directory}")
    started = time.monotonic()
    sync = write_project(directory, type_name, customers)
    console.print(f"• generated warehouse.duckdb with {customers:,} customers")
    fake: Any = fake_class(type_name)(profile.token, **profile.fake_options)
    with fake.serve() as url:
        os.environ[URL_VAR] = url
        os.environ[TOKEN_VAR] = profile.token
        console.print(f"• started the local fake {type_name} at {url}")
        project = Project.load(str(directory))
        try:
            problems = project.validate()
            if problems:
                for problem in problems:
                    console.error(str(problem))
                return False
            console.print("• undertow validate: the project is valid")
            first = _run(project, console, "first run (everything is new)", sync)
            first_requests = len(fake.requests)
            changes = change_customers(directory / "warehouse.duckdb")
            console.print(
                f"• changed the warehouse: {changes['upgraded']:,} upgrades, "
                f"{changes['churned']:,} churned, {changes['signed_up']:,} sign-ups"
            )
            second = _run(project, console, "second run (only the changes)", sync)
            second_requests = len(fake.requests) - first_requests
        finally:
            project.close()
    _summary(console, [(first, first_requests), (second, second_requests)])
    ok = (
        str(first.status) == "succeeded"
        and first.counts["rejected"] == 0
        and str(second.status) == "succeeded"
        and second.counts["sent"]
        <= second.counts["added"] + second.counts["changed"] + second.counts["removed"]
        and second.counts["sent"] < first.counts["sent"]
    )
    took = time.monotonic() - started
    if console.json_mode:
        console.json(
            {
                "ok": ok,
                "destination": type_name,
                "project": str(directory),
                "runs": [first.as_dict(), second.as_dict()],
                "requests": [first_requests, second_requests],
                "slow_downs": fake.slow_downs,
                "seconds": round(took, 2),
            }
        )
    if ok:
        console.print(
            f"[green]✓ the second run sent only the {second.counts['sent']:,} changed rows "
            f"of {second.counts['extracted']:,}[/] (demo took {took:.1f}s)"
        )
    else:
        console.error("the demo did not end as expected: see the runs above")
    return ok


__all__ = ["DEMO_MARKER", "run_destination_demo", "write_project"]
