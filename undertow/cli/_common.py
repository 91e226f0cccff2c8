"""What every ``undertow`` command shares: the Typer app, the options, the error guard (one
red line, exit 1), loading the project, and how runs are printed.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from undertow.console import TerminalConsole, safe
from undertow.errors import UndertowError
from undertow.redact import redact
from undertow.state.store import RunRecord

if TYPE_CHECKING:
    from datetime import datetime

    from undertow.project import Project

app = typer.Typer(
    name="undertow",
    help="Reverse ETL that sends every change exactly once.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from undertow import __version__

        typer.echo(f"undertow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Reverse ETL that sends every change exactly once."""


ProjectOpt = Annotated[
    Path, typer.Option("--project", "-p", help="Project folder (holds undertow.yml).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]

T = TypeVar("T")


def guard(console: TerminalConsole, debug: bool, fn: Callable[[], T]) -> T:
    """Run a command's work: an error is one red line (one JSON object with --json) and
    exit 1; the traceback, redacted like everything else, only with --debug."""
    try:
        return fn()
    except UndertowError as exc:
        _fail(console, debug, str(exc), type(exc).__name__, exc.fields())
    except KeyboardInterrupt:
        console.done_progress()
        console.error("interrupted")
        raise typer.Exit(130) from None
    except OSError as exc:  # a file Undertow could not read or write
        where = f" {exc.filename}" if exc.filename else ""
        why = exc.strerror or str(exc)
        message = (
            f"cannot use{where}: {why}\n  hint: check that this user may read and write "
            "there (the project folder and `state_dir:`), and that the disk has room"
        )
        _fail(console, debug, message, type(exc).__name__)
    except Exception as exc:  # a bug: still one line, the traceback with --debug
        message = (
            f"unexpected error: {type(exc).__name__}: {exc}\n  hint: this is a bug in "
            "Undertow or a library it uses; rerun with --debug and report the traceback"
        )
        _fail(console, debug, message, type(exc).__name__)
    raise AssertionError("unreachable")


def _fail(
    console: TerminalConsole,
    debug: bool,
    message: str,
    kind: str,
    fields: dict[str, Any] | None = None,
) -> NoReturn:
    console.done_progress()
    if debug:
        sys.stderr.write(redact(traceback.format_exc()))
    if console.json_mode:
        console.json({"error": redact(message), "type": kind, **(fields or {})})
    else:
        console.error(message)
    raise typer.Exit(1) from None


def load(project: Path, *, require_secrets: bool = True) -> Project:
    from undertow.project import Project  # imported when a command runs: --help stays fast

    return Project.load(str(project), require_secrets=require_secrets)


def counts_line(run: RunRecord) -> str:
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


def print_runs(console: TerminalConsole, records: list[RunRecord]) -> None:
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
            f"[{style}]{label}[/] [bold]{safe(record.sync)}[/] run {safe(record.id)}{took}: "
            f"{counts_line(record)}"
        )
        if record.error:
            console.error(f"{record.sync}: {record.error}")
        if warned:
            console.print(f"  [yellow]warning:[/] {safe(record.warning)}")
        if record.counts.get("rejected"):
            console.print(f"  see the rejected rows with: undertow errors {safe(record.id)}")
    if any(str(r.status) != "succeeded" for r in records):
        raise typer.Exit(1)


def when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
