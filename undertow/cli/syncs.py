"""Commands that change a sync: ``plan``, ``run``, ``retry``, ``reset``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from undertow.cli._common import DebugOpt, JsonOpt, ProjectOpt, app, guard, load, print_runs
from undertow.console import TerminalConsole, escape, plain, safe
from undertow.errors import UndertowError
from undertow.pipeline.halt import Halt, on_signals
from undertow.state.store import RunRecord

if TYPE_CHECKING:
    from undertow.pipeline.preview import PlanPreview


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

    def work() -> PlanPreview:
        proj = load(project)
        try:
            return proj.plan(sync, limit=limit, full=full)
        finally:
            proj.close()

    preview = guard(console, debug, work)
    data = preview.as_dict()
    if json:
        console.json(data)
        return
    c = data["counts"]
    events = data["kind"] == "events"
    changed = "changed (not events: never sent again)" if events else "changed"
    console.print(
        f"[bold]{safe(sync)}[/] ({safe(data['mode'])} → {safe(data['destination'])}, {data['kind']}): "
        f"{c['extracted']:,} rows · [green]+{c['added']:,} added[/] · "
        f"[yellow]~{c['changed']:,} {changed}[/] · [red]-{c['removed']:,} removed[/] · "
        f"{c['unchanged']:,} unchanged · {c['rejected']:,} rejected · "
        f"[bold]{c['to_send']:,} {'event(s) ' if events else ''}to send[/]"
    )
    ops = safe(", ".join(f"{k} → {v}" for k, v in data["operations"].items()))
    console.print(f"operations: {ops}")
    for warning in data["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if data["changes"]:
        console.print("\n[bold]changed fields[/] (old → new):")
        for change in data["changes"]:
            fields = "; ".join(
                f"{f}: {v['old']!r} → {v['new']!r}" for f, v in change["fields"].items()
            )
            if not change.get("old_known", True):
                fields = "changed (the warehouse diff engine keeps a hash, not the old values)"
            console.print(
                plain(f"  {change['key']}: {fields or '(mapping changed)'}"), markup=False
            )
    if data["samples"]:
        console.print(f"\n[bold]first {len(data['samples'])} payload(s)[/] as they would be sent:")
        for sample in data["samples"]:
            body = orjson.dumps(sample["payload"]).decode()
            console.print(plain(f"  {sample['operation']} {sample['key']}: {body}"), markup=False)
    if data["rejected"]:
        console.print("\n[bold red]rejected rows[/]:")
        for rej in data["rejected"]:
            console.print(plain(f"  {rej['key']}: {rej['reason']}"), markup=False)


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
    queue: Annotated[
        bool,
        typer.Option(
            "--queue",
            help="Queue the runs for `undertow worker`s (executor: celery), wait, print them.",
        ),
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="With --queue: give up waiting after this many seconds."),
    ] = None,
    project: ProjectOpt = Path("."),
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run syncs: extract, diff, plan, map, deliver, record."""
    console = TerminalConsole(json_mode=json)

    def work() -> list[RunRecord | UndertowError]:
        proj = load(project)
        try:
            names = proj.sync_names if all_ else list(syncs or [])
            if not names:
                raise UndertowError(
                    "name at least one sync, or use --all",
                    hint=f"syncs in this project: {', '.join(proj.sync_names) or 'none'}",
                )
            if queue:
                return _queued(proj, names, full=full, allow_deletes=allow_deletes, timeout=timeout)
            with on_signals(Halt()) as halt:
                return list(
                    proj.run(
                        names,
                        full=full,
                        reporter=console,
                        allow_deletes=allow_deletes,
                        halt=halt,
                    )
                )
        finally:
            console.done_progress()
            proj.close()

    outcomes = guard(console, debug, work)
    failures = [o for o in outcomes if isinstance(o, UndertowError)]
    for failure in failures:
        if json:
            console.json(
                {"error": str(failure), "type": type(failure).__name__, **failure.fields()}
            )
        else:
            console.error(str(failure))
    records = [o for o in outcomes if isinstance(o, RunRecord)]
    if failures and all(str(r.status) == "succeeded" for r in records):
        print_runs(console, records)
        raise typer.Exit(1)
    print_runs(console, records)


def _queued(
    proj: Any, names: list[str], *, full: bool, allow_deletes: bool, timeout: float | None
) -> list[RunRecord | UndertowError]:
    """``run --queue``: the workers run them; each one's run, or the error that ended it."""
    if allow_deletes:
        raise UndertowError(
            "--allow-deletes applies to an in-process run only",
            hint="run `undertow run SYNC --allow-deletes` without --queue",
        )
    ids = proj.enqueue(names, full=full)
    return list(proj.wait_queued(ids, timeout=timeout))


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
        proj = load(project)
        try:
            record: RunRecord | None = proj.retry(
                sync, reporter=console, allow_deletes=allow_deletes
            )
            return record
        finally:
            console.done_progress()
            proj.close()

    record = guard(console, debug, work)
    if record is None:
        if json:
            console.json({"sync": sync, "run_id": None, "status": "nothing to retry"})
        else:
            console.print(f"{safe(sync)}: no rejected or failed rows to retry")
        return
    print_runs(console, [record])


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
        proj = load(project)
        try:
            return int(proj.reset(sync))
        finally:
            proj.close()

    forgotten = guard(console, debug, work)
    if json:
        console.json({"sync": sync, "forgotten_rows": forgotten})
    else:
        console.print(
            f"reset {safe(sync)}: forgot {forgotten:,} accepted row(s); next run is a first run"
        )
