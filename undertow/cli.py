"""The ``undertow`` command. Every command calls the ``Project`` facade and nothing deeper.

Exit codes: 0 success; 1 an Undertow error (one red line, ``--debug`` for the traceback) or a
failed run; 2 bad command-line usage.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from undertow.console import TerminalConsole
from undertow.errors import UndertowError
from undertow.state.store import RunRecord

app = typer.Typer(
    name="undertow",
    help="Reverse ETL that sends every change exactly once.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ProjectOpt = Annotated[
    Path, typer.Option("--project", "-p", help="Project folder (holds undertow.yml).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]

T = TypeVar("T")


def _guard(console: TerminalConsole, debug: bool, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except UndertowError as exc:
        console.done_progress()
        if debug:
            traceback.print_exc()
        if console.json_mode:
            console.json({"error": str(exc), "type": type(exc).__name__})
        else:
            console.error(str(exc))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.done_progress()
        console.error("interrupted")
        raise typer.Exit(130) from None


def _load(project: Path, *, require_secrets: bool = True) -> Any:
    from undertow.project import Project

    return Project.load(str(project), require_secrets=require_secrets)


def _counts_line(run: RunRecord) -> str:
    c = run.counts
    return (
        f"extracted {c['extracted']:,} · added {c['added']:,} · changed {c['changed']:,} · "
        f"removed {c['removed']:,} · sent {c['sent']:,} · succeeded {c['succeeded']:,} · "
        f"rejected {c['rejected']:,} · failed {c['failed']:,}"
    )


STATUS_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
}


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the project in.")] = Path("."),
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write a starter project: a DuckDB sample warehouse and a webhook sync."""
    from undertow.starter import write_starter

    console = TerminalConsole(json_mode=json)
    written = _guard(console, debug, lambda: write_starter(directory))
    if json:
        console.json({"project": str(directory), "files": [str(p) for p in written]})
        return
    console.print(f"[green]Created a starter project in {directory}[/]")
    for path in written:
        console.print(f"  {path}")
    console.print(f"\nNext: [bold]cd {directory} && undertow validate && undertow run --all[/]")


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

    def work() -> list[Any]:
        from undertow.errors import ConfigError, ConfigErrors
        from undertow.project import Problem

        try:
            proj = _load(project)
        except ConfigError as exc:  # the files themselves: report them as problems
            errors = exc.errors if isinstance(exc, ConfigErrors) else [exc]
            return [Problem(message=e.detail, file=e.file, line=e.line, key=e.key) for e in errors]
        try:
            return list(proj.validate(connect=not offline))
        finally:
            proj.close()

    problems = _guard(console, debug, work)
    if json:
        console.json({"ok": not problems, "problems": [p.as_dict() for p in problems]})
    elif problems:
        console.err.print(f"[bold red]{len(problems)} problem(s) found:[/]")
        for problem in problems:
            console.err.print(f"  [red]✗[/] {problem}", highlight=False)
    else:
        console.print("[green]✓ project is valid[/]")
    if problems:
        raise typer.Exit(1)


@app.command()
def plan(
    sync: Annotated[str, typer.Argument(help="The sync to preview.")],
    project: ProjectOpt = Path("."),
    limit: Annotated[int, typer.Option("--limit", "-n", help="Payloads to show.")] = 5,
    full: Annotated[bool, typer.Option("--full", help="Preview a full resend.")] = False,
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Dry run: what the next run would send. Sends nothing, changes no state."""
    import orjson

    console = TerminalConsole(json_mode=json)

    def work() -> Any:
        proj = _load(project)
        try:
            return proj.plan(sync, limit=limit, full=full)
        finally:
            proj.close()

    preview = _guard(console, debug, work)
    data = preview.as_dict()
    if json:
        console.json(data)
        return
    c = data["counts"]
    console.print(
        f"[bold]{sync}[/] ({data['mode']} → {data['destination']}): "
        f"{c['extracted']:,} rows · [green]+{c['added']:,} added[/] · "
        f"[yellow]~{c['changed']:,} changed[/] · [red]-{c['removed']:,} removed[/] · "
        f"{c['unchanged']:,} unchanged · {c['rejected']:,} rejected · "
        f"[bold]{c['to_send']:,} to send[/]"
    )
    ops = ", ".join(f"{k} → {v}" for k, v in data["operations"].items())
    console.print(f"operations: {ops}")
    if data["changes"]:
        console.print("\n[bold]changed fields[/] (old → new):")
        for change in data["changes"]:
            fields = "; ".join(
                f"{f}: {v['old']!r} → {v['new']!r}" for f, v in change["fields"].items()
            )
            if not change.get("old_known", True):
                fields = "changed (the warehouse diff engine keeps a hash, not the old values)"
            console.print(f"  {change['key']}: {fields or '(mapping changed)'}")
    if data["samples"]:
        console.print(f"\n[bold]first {len(data['samples'])} payload(s)[/] as they would be sent:")
        for sample in data["samples"]:
            body = orjson.dumps(sample["payload"]).decode()
            console.print(f"  {sample['operation']} {sample['key']}: {body}", markup=False)
    if data["rejected"]:
        console.print("\n[bold red]rejected rows[/]:")
        for rej in data["rejected"]:
            console.print(f"  {rej['key']}: {rej['reason']}", markup=False)


@app.command()
def run(
    syncs: Annotated[list[str] | None, typer.Argument(help="Syncs to run.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Run every sync of the project.")] = False,
    full: Annotated[
        bool, typer.Option("--full", help="Resend every row, not only the changes.")
    ] = False,
    allow_deletes: Annotated[
        bool,
        typer.Option(
            "--allow-deletes",
            help="For this run only, allow more deletes than max_deletes / max_delete_ratio.",
        ),
    ] = False,
    project: ProjectOpt = Path("."),
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run syncs: extract, diff, plan, map, deliver, record."""
    console = TerminalConsole(json_mode=json)

    def work() -> list[RunRecord]:
        proj = _load(project)
        try:
            names = proj.sync_names if all_ else list(syncs or [])
            if not names:
                raise UndertowError(
                    "name at least one sync, or use --all",
                    hint=f"syncs in this project: {', '.join(proj.sync_names) or 'none'}",
                )
            return list(proj.run(names, full=full, reporter=console, allow_deletes=allow_deletes))
        finally:
            console.done_progress()
            proj.close()

    records = _guard(console, debug, work)
    _print_runs(console, records)


def _print_runs(console: TerminalConsole, records: list[RunRecord]) -> None:
    """One line per run (a JSON object with --json); exit 1 unless every run succeeded.

    A run that succeeded with a warning (some rows rejected, within max_rejected_ratio)
    exits 0 and prints the warning.
    """
    for record in records:
        if console.json_mode:
            console.json(record.as_dict())
            continue
        warned = record.warning is not None and str(record.status) == "succeeded"
        style = "yellow" if warned else STATUS_STYLE.get(str(record.status), "white")
        label = f"{record.status} with warning" if warned else str(record.status)
        took = f" in {record.duration_s:.1f}s" if record.duration_s is not None else ""
        console.print(
            f"[{style}]{label}[/] [bold]{record.sync}[/] run {record.id}{took}: "
            f"{_counts_line(record)}"
        )
        if record.error:
            console.error(f"{record.sync}: {record.error}")
        if warned:
            console.print(f"  [yellow]warning:[/] {record.warning}")
        if record.counts.get("rejected"):
            console.print(f"  see the rejected rows with: undertow errors {record.id}")
    if any(str(r.status) != "succeeded" for r in records):
        raise typer.Exit(1)


@app.command()
def retry(
    sync: Annotated[str, typer.Argument(help="The sync whose rejected rows to send again.")],
    allow_deletes: Annotated[
        bool,
        typer.Option("--allow-deletes", help="Allow more deletes than the sync's limits."),
    ] = False,
    project: ProjectOpt = Path("."),
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Send again, now, only the rows whose latest outcome was rejected or failed."""
    console = TerminalConsole(json_mode=json)

    def work() -> RunRecord | None:
        proj = _load(project)
        try:
            record: RunRecord | None = proj.retry(
                sync, reporter=console, allow_deletes=allow_deletes
            )
            return record
        finally:
            console.done_progress()
            proj.close()

    record = _guard(console, debug, work)
    if record is None:
        if json:
            console.json({"sync": sync, "run_id": None, "status": "nothing to retry"})
        else:
            console.print(f"{sync}: no rejected or failed rows to retry")
        return
    _print_runs(console, [record])


@app.command()
def status(project: ProjectOpt = Path("."), json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Every sync with its last run."""
    console = TerminalConsole(json_mode=json)

    def work() -> list[dict[str, Any]]:
        proj = _load(project, require_secrets=False)
        try:
            return list(proj.status())
        finally:
            proj.close()

    rows = _guard(console, debug, work)
    if json:
        console.json(rows)
        return
    from undertow.orchestration.config import format_duration

    table = Table(
        "sync", "model → destination", "mode", "last run", "status", "counts", "next run", "lag",
        "SLA",
    )  # fmt: skip
    for row in rows:
        last = row["last_run"]
        state = "running" if row["running"] else (last["status"] if last else "never run")
        sla = "-"
        if row["sla_s"] is not None:
            colour = "red" if row["sla_state"] == "breached" else "green"
            sla = f"[{colour}]{row['sla_state']}[/] ({format_duration(row['sla_s'])})"
        upcoming = "paused" if row["paused"] else (row["next_run_at"] or row["schedule"])[:19]
        if row["after"] and not row["paused"]:
            upcoming = "after " + ", ".join(row["after"])
        counts = (
            f"+{last['added']} ~{last['changed']} -{last['removed']} "
            f"✓{last['succeeded']} ✗{last['rejected']}"
            if last
            else ""
        )
        table.add_row(
            row["sync"],
            f"{row['model']} → {row['destination']}",
            row["mode"],
            (last["started_at"][:19] if last else "-"),
            state,
            counts,
            upcoming,
            format_duration(row["lag_s"]) if last else "-",
            sla,
        )
    console.print(table)


@app.command()
def runs(
    sync: Annotated[str, typer.Argument(help="The sync whose runs to list.")],
    limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
    project: ProjectOpt = Path("."),
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """The recent runs of a sync, newest first."""
    console = TerminalConsole(json_mode=json)

    def work() -> list[RunRecord]:
        proj = _load(project, require_secrets=False)
        try:
            return list(proj.runs(sync, limit=limit))
        finally:
            proj.close()

    records = _guard(console, debug, work)
    if json:
        console.json([r.as_dict() for r in records])
        return
    table = Table(
        "run id",
        "started",
        "status",
        "took",
        "extracted",
        "added",
        "changed",
        "removed",
        "sent",
        "ok",
        "rejected",
        "failed",
    )
    for r in records:
        c = r.counts
        table.add_row(
            r.id,
            r.created_at.isoformat()[:19],
            str(r.status),
            f"{r.duration_s:.1f}s" if r.duration_s is not None else "",
            *(
                f"{c[k]:,}"
                for k in (
                    "extracted",
                    "added",
                    "changed",
                    "removed",
                    "sent",
                    "succeeded",
                    "rejected",
                    "failed",
                )
            ),
        )
    console.print(table)


def _when(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


@app.command()
def errors(
    run_id: Annotated[
        str | None, typer.Argument(help="A run id (a unique prefix is enough).")
    ] = None,
    sync: Annotated[
        str | None,
        typer.Option("--sync", "-s", help="Instead of a run: the sync's rows rejected now."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 100,
    project: ProjectOpt = Path("."),
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Rejected and failed rows of a run (or, with --sync, those of a sync waiting now):
    key, reason, first and last failure, attempts."""
    console = TerminalConsole(json_mode=json)
    if (run_id is None) == (sync is None):
        console.error("give a run id (`undertow errors RUN_ID`) or `--sync SYNC`, not both")
        raise typer.Exit(2)

    def work() -> list[Any]:
        proj = _load(project, require_secrets=False)
        try:
            if sync is not None:
                return list(proj.rejected_rows(sync, limit=limit))
            return list(proj.errors(str(run_id), limit=limit))
        finally:
            proj.close()

    rows = _guard(console, debug, work)
    if sync is not None:
        if json:
            console.json([r.as_dict() for r in rows])
            return
        if not rows:
            console.print(f"{sync}: no rejected or failed rows waiting")
            return
        table = Table("key", "kind", "attempts", "first failed", "last failed", "reason")
        for r in rows:
            table.add_row(
                r.row_key,
                r.last_kind,
                str(r.attempts),
                r.first_failed_at.isoformat()[:19],
                r.last_failed_at.isoformat()[:19],
                r.last_reason,
            )
        console.print(table)
        console.print(f"send them again now with: undertow retry {sync}")
        return
    if json:
        console.json(
            [
                {
                    "run_id": e.run_id,
                    "sync": e.sync,
                    "key": e.row_key,
                    "kind": e.kind,
                    "operation": e.operation,
                    "batch": e.batch_no,
                    "reason": e.reason,
                    "attempts": e.attempts,
                    "first_failed_at": _when(e.first_failed_at),
                    "last_failed_at": _when(e.last_failed_at),
                    "resolved_at": _when(e.resolved_at),
                }
                for e in rows
            ]
        )
        return
    if not rows:
        console.print("no rejected or failed rows in this run")
        return
    table = Table("key", "kind", "operation", "attempts", "first failed", "last failed", "reason")
    for e in rows:
        table.add_row(
            e.row_key,
            e.kind,
            e.operation or "",
            "" if e.attempts is None else str(e.attempts),
            (_when(e.first_failed_at) or "")[:19],
            (_when(e.last_failed_at) or "")[:19] + (" (resolved)" if e.resolved_at else ""),
            e.reason,
        )
    console.print(table)


@app.command()
def reset(
    sync: Annotated[str, typer.Argument(help="The sync to reset.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    project: ProjectOpt = Path("."),
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Forget what the destination accepted: the next run sends every row again."""
    console = TerminalConsole(json_mode=json)
    if not yes:
        if json or not sys.stdin.isatty():
            console.error(f"reset of sync {sync!r} needs confirmation: pass --yes")
            raise typer.Exit(1)
        typer.confirm(
            f"Forget the snapshot of sync {sync!r}? Its next run resends every row", abort=True
        )

    def work() -> int:
        proj = _load(project)
        try:
            return int(proj.reset(sync))
        finally:
            proj.close()

    forgotten = _guard(console, debug, work)
    if json:
        console.json({"sync": sync, "forgotten_rows": forgotten})
    else:
        console.print(
            f"reset {sync}: forgot {forgotten:,} accepted row(s); next run is a first run"
        )


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where to build the demo.")] = Path(
        ".demo"
    ),
    customers: Annotated[int, typer.Option("--customers")] = 100_000,
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Build a sample warehouse, sync it into a local fake HubSpot, change it, sync again."""
    from undertow.demo import run_demo

    console = TerminalConsole(json_mode=json)
    ok = _guard(console, debug, lambda: run_demo(directory, customers=customers, console=console))
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
    debug: DebugOpt = False,
) -> None:
    """Run the scheduler and the HTTP API (triggers, signals, status, /metrics) until SIGTERM."""
    import logging

    from undertow.server.serve import serve as run_server

    console = TerminalConsole()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def work() -> None:
        proj = _load(project)
        try:
            run_server(
                proj,
                token=token,
                host=host,
                port=port,
                interval=interval,
                workers=workers,
                grace=grace,
                announce=lambda text: console.err.print(text, markup=False),
            )
        finally:
            proj.close()

    _guard(console, debug, work)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
