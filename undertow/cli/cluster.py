"""Commands of a team's deployment: ``migrate`` (the state store's schema) and ``worker``
(a Celery worker running syncs; see docs/deployment.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from undertow.cli._common import DebugOpt, JsonOpt, ProjectOpt, app, guard, load
from undertow.console import TerminalConsole


@app.command()
def migrate(
    project: ProjectOpt = Path("."),
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Move the state store to this version's schema (once per upgrade, before the workers)."""
    console = TerminalConsole(json_mode=json)

    def work() -> tuple[str, int, int]:
        proj = load(project, require_secrets=False)
        try:
            before, after = proj.migrate()
            return proj.store.display_url, before, after
        finally:
            proj.close()

    url, before, after = guard(console, debug, work)
    if json:
        console.json({"state": url, "from": before, "version": after})
    elif before == after:
        console.print(f"the state store {url} is at version {after}: nothing to migrate")
    else:
        console.print(f"[green]migrated[/] the state store {url} from version {before} to {after}")


@app.command()
def worker(
    project: ProjectOpt = Path("."),
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", "-c", help="Runs at the same time (processes)."),
    ] = None,
    queues: Annotated[
        str | None,
        typer.Option("--queues", "-Q", help="Comma-separated queues (default: the executor's)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Worker name (default: undertow@host-pid).")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", help="Serve this worker's Prometheus metrics on a port."),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Run syncs queued by `undertow serve` and `undertow run --queue` (a Celery worker)."""
    import logging

    from undertow.workers.worker import run_worker

    console = TerminalConsole()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def work() -> None:
        proj = load(project)
        try:
            run_worker(
                proj,
                concurrency=concurrency,
                queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
                name=name,
                metrics_port=metrics_port,
                announce=lambda text: console.err.print(text, markup=False),
            )
        finally:
            proj.close()

    guard(console, debug, work)
