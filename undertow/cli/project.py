"""Commands about the project as a whole: ``init``, ``validate``, ``demo``, ``serve``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from undertow.cli._common import DebugOpt, JsonOpt, ProjectOpt, app, guard, load
from undertow.console import TerminalConsole, plain, safe

if TYPE_CHECKING:
    from undertow.project import Problem


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the project in.")] = Path("."),
    destination: Annotated[
        str | None,
        typer.Option("--destination", help="Sync to this destination type (default: a webhook)."),
    ] = None,
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write a starter project: a DuckDB sample warehouse and a webhook (or TYPE) sync."""
    from undertow.starter import write_starter

    console = TerminalConsole(json_mode=json)
    written = guard(console, debug, lambda: write_starter(directory, destination=destination))
    if json:
        console.json({"project": str(directory), "files": [str(p) for p in written]})
        return
    console.print(f"[green]Created a starter project in {safe(directory)}[/]")
    for path in written:
        console.print(f"  {safe(path)}")
    console.print(
        f"\nNext: [bold]cd {safe(directory)} && undertow validate && undertow run --all[/]"
    )


@app.command()
def validate(
    project: ProjectOpt = Path("."),
    offline: Annotated[
        bool, typer.Option("--offline", help="Skip connection and credential checks.")
    ] = False,
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Load every file, compile every model and mapping, check every connection."""
    console = TerminalConsole(json_mode=json)

    def work() -> list[Problem]:
        from undertow.errors import ConfigError, ConfigErrors
        from undertow.project import Problem

        try:
            # a missing ${VAR} is one problem among others, not the end of the check
            proj = load(project, require_secrets=False)
        except ConfigError as exc:  # the files themselves: report them as problems
            errors = exc.errors if isinstance(exc, ConfigErrors) else [exc]
            return [Problem(message=e.detail, file=e.file, line=e.line, key=e.key) for e in errors]
        try:
            return list(proj.validate(connect=not offline))
        finally:
            proj.close()

    problems = guard(console, debug, work)
    if json:
        console.json({"ok": not problems, "problems": [p.as_dict() for p in problems]})
    elif problems:
        console.err.print(f"[bold red]{len(problems)} problem(s) found:[/]")
        for problem in problems:
            console.err.print(f"  [red]✗[/] {safe(problem)}", highlight=False)
    else:
        console.print("[green]✓ project is valid[/]")
    if problems:
        raise typer.Exit(1)


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where to build the demo.")] = Path(
        ".demo"
    ),
    customers: Annotated[int, typer.Option("--customers")] = 100_000,
    ui: Annotated[
        bool, typer.Option("--ui", help="Serve the demo project with its web UI (Ctrl-C stops).")
    ] = False,
    port: Annotated[int, typer.Option("--port", help="The web UI's port (with --ui).")] = 8765,
    destination: Annotated[
        str, typer.Option("--destination", help="The destination type whose fake to sync into.")
    ] = "hubspot",
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Build a sample warehouse, sync it into a local fake (HubSpot unless --destination),
    change it, sync again."""
    from undertow.demo import run_demo, serve_demo
    from undertow.server.logs import configure

    console = TerminalConsole(json_mode=json)
    if destination != "hubspot":
        from undertow.demo_kit import run_destination_demo

        done = guard(
            console,
            debug,
            lambda: run_destination_demo(
                directory, type_name=destination, customers=customers, console=console
            ),
        )
        if not done:
            raise typer.Exit(1)
        return
    if ui:
        configure("text")
        guard(
            console,
            debug,
            lambda: serve_demo(directory, console=console, port=port, customers=customers),
        )
        return
    ok = guard(console, debug, lambda: run_demo(directory, customers=customers, console=console))
    if not ok:
        raise typer.Exit(1)


@app.command()
def serve(
    project: ProjectOpt = Path("."),
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="UNDERTOW_API_TOKEN",
            help="API token (default: $UNDERTOW_API_TOKEN, else `server: {token:}`).",
            show_default=False,
        ),
    ] = None,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between scheduler passes.")
    ] = 5.0,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Syncs run at the same time.")
    ] = None,
    grace: Annotated[
        float, typer.Option("--grace", help="Seconds a shutdown waits for runs to stop.")
    ] = 30.0,
    log_format: Annotated[
        str, typer.Option("--log-format", help="`text` (default) or `json` (one object a line).")
    ] = "text",
    debug: DebugOpt = False,
) -> None:
    """Run the scheduler, the web UI and the HTTP API (triggers, signals, status, /metrics)
    until SIGTERM."""
    from undertow.server.logs import configure
    from undertow.server.serve import serve as run_server

    console = TerminalConsole()
    if log_format not in ("text", "json"):
        console.error(f"--log-format takes `text` or `json`, not {log_format!r}")
        raise typer.Exit(2)
    configure(log_format)

    def work() -> None:
        proj = load(project)
        try:
            run_server(
                proj,
                token=token,
                host=host,
                port=port,
                interval=interval,
                workers=workers,
                grace=grace,
                announce=lambda text: console.err.print(plain(text), markup=False),
            )
        finally:
            proj.close()

    guard(console, debug, work)
