"""Commands that read what happened: ``status``, ``runs``, ``errors``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from undertow import console as _console
from undertow.cli._common import DebugOpt, JsonOpt, ProjectOpt, app, guard, load, when
from undertow.console import TerminalConsole, safe
from undertow.results import SyncStatus
from undertow.state.store import RowError, RowStatus, RunRecord, RunStatus

if TYPE_CHECKING:
    from rich.text import Text


def _markup(text: str) -> Text:
    """Rich ``Text`` from markup whose data was made :func:`safe` (Rich imported here)."""
    from rich.text import Text

    return Text.from_markup(text)


@app.command()
def status(
    project: ProjectOpt = Path("."),
    workers: Annotated[
        bool, typer.Option("--workers", help="The workers instead (health, what each runs).")
    ] = False,
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Every sync with its last run (and, in a cluster, every worker)."""
    console = TerminalConsole(json_mode=json)
    if workers:
        _workers(console, project, json=json, debug=debug)
        return

    def work() -> list[SyncStatus]:
        proj = load(project, require_secrets=False)
        try:
            return proj.status()
        finally:
            proj.close()

    rows = guard(console, debug, work)
    if json:
        console.json(rows)
        return
    from undertow.orchestration.config import format_duration

    table = _console.DataTable(
        "sync", "model → destination", "mode", "last run", "status", "counts", "next run", "lag",
        "SLA",
    )  # fmt: skip
    for row in rows:
        last = row["last_run"]
        state = "running" if row["running"] else (last["status"] if last else "never run")
        sla: str | Text = "-"
        if row["sla_s"] is not None:
            colour = "red" if row["sla_state"] == "breached" else "green"
            sla = _markup(
                f"[{colour}]{safe(row['sla_state'])}[/] ({format_duration(row['sla_s'])})"
            )
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
    if _has_executor(project):
        _workers(console, project, json=False, debug=debug)


def _has_executor(project: Path) -> bool:
    proj = load(project, require_secrets=False)
    try:
        return bool(proj.config.executor.queued)
    finally:
        proj.close()


def _workers(console: TerminalConsole, project: Path, *, json: bool, debug: bool) -> None:
    def work() -> list[dict[str, Any]]:
        proj = load(project, require_secrets=False)
        try:
            return list(proj.workers())
        finally:
            proj.close()

    rows = guard(console, debug, work)
    if json:
        console.json(rows)
        return
    if not rows:
        console.print("no worker has registered yet: start one with `undertow worker`")
        return
    table = _console.DataTable(
        "worker", "state", "host:pid", "processes", "queues", "heartbeat", "running"
    )
    colours = {"running": "green", "draining": "yellow", "lost": "red", "stopped": "dim"}
    for row in rows:
        runs = ", ".join(f"{r['sync']} since {(r['since'] or '')[11:19]}" for r in row["runs"])
        table.add_row(
            row["name"],
            _markup(f"[{colours.get(row['state'], 'white')}]{safe(row['state'])}[/]"),
            f"{row['host']}:{row['pid']}",
            str(row["concurrency"]),
            ", ".join(row["queues"]),
            row["heartbeat_at"][:19],
            runs or "-",
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
        proj = load(project, require_secrets=False)
        try:
            return list(proj.runs(sync, limit=limit))
        finally:
            proj.close()

    records = guard(console, debug, work)
    if json:
        console.json([r.as_dict() for r in records])
        return
    table = _console.DataTable(
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
        "skipped",
    )
    for r in records:
        c = r.counts
        table.add_row(
            r.id,
            r.created_at.isoformat()[:19],
            _status_cell(r),
            f"{r.duration_s:.1f}s" if r.duration_s is not None else "",
            *(
                f"{c.get(k, 0):,}"
                for k in (
                    "extracted",
                    "added",
                    "changed",
                    "removed",
                    "sent",
                    "succeeded",
                    "rejected",
                    "failed",
                    "skipped",
                )
            ),
        )
    console.print(table)
    for r in records:
        if r.warning is not None and r.status is RunStatus.SUCCEEDED:
            console.print(f"  [yellow]warning[/] {safe(r.id)}: {safe(r.warning)}", highlight=False)
    for note in records[0].state_notes() if records else ():
        console.print(f"  state: {safe(note)}", highlight=False)  # as of the newest run


def _status_cell(run: RunRecord) -> str | Text:
    if run.warning is not None and run.status is RunStatus.SUCCEEDED:
        return _markup("[yellow]succeeded with warning[/]")
    return str(run.status)


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
    """Rejected, failed and skipped rows of a run (or, with --sync, the rejected and failed
    ones of a sync waiting now): key, reason, first and last failure, attempts."""
    console = TerminalConsole(json_mode=json)
    if (run_id is None) == (sync is None):
        console.error("give a run id (`undertow errors RUN_ID`) or `--sync SYNC`, not both")
        raise typer.Exit(2)

    if sync is not None:
        waiting = sync

        def waiting_rows() -> list[RowStatus]:
            proj = load(project, require_secrets=False)
            try:
                return proj.rejected_rows(waiting, limit=limit)
            finally:
                proj.close()

        _print_waiting(console, waiting, guard(console, debug, waiting_rows), json=json)
        return

    def run_rows() -> list[RowError]:
        proj = load(project, require_secrets=False)
        try:
            return proj.errors(str(run_id), limit=limit)
        finally:
            proj.close()

    rows = guard(console, debug, run_rows)
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
                    "first_failed_at": when(e.first_failed_at),
                    "last_failed_at": when(e.last_failed_at),
                    "resolved_at": when(e.resolved_at),
                }
                for e in rows
            ]
        )
        return
    if not rows:
        console.print("no rejected, failed or skipped rows in this run")
        return
    table = _console.DataTable(
        "key", "kind", "operation", "attempts", "first failed", "last failed", "reason"
    )
    for e in rows:
        table.add_row(
            e.row_key,
            e.kind,
            e.operation or "",
            "" if e.attempts is None else str(e.attempts),
            (when(e.first_failed_at) or "")[:19],
            (when(e.last_failed_at) or "")[:19] + (" (resolved)" if e.resolved_at else ""),
            e.reason,
        )
    console.print(table)


def _print_waiting(
    console: TerminalConsole, sync: str, rows: list[RowStatus], *, json: bool
) -> None:
    if json:
        console.json([r.as_dict() for r in rows])
        return
    if not rows:
        console.print(f"{safe(sync)}: no rejected or failed rows waiting")
        return
    table = _console.DataTable("key", "kind", "attempts", "first failed", "last failed", "reason")
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
    console.print(f"send them again now with: undertow retry {safe(sync)}")
