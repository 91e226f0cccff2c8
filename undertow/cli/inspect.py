"""``undertow test`` and ``undertow debug``: try one row, and see what was sent and answered.

Registered on the ``undertow`` command by :mod:`undertow.cli`; like every command they call
the :class:`~undertow.project.Project` facade only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from undertow.cli._common import DebugOpt, JsonOpt, ProjectOpt, app, guard, load
from undertow.console import TerminalConsole, escape
from undertow.destinations.capture import DRY_RUN_NOTE


def parse_keys(values: list[str]) -> dict[str, str]:
    """``["id=42"]`` -> ``{"id": "42"}``; a value may itself contain ``=``."""
    out: dict[str, str] = {}
    for item in values:
        column, sep, value = item.partition("=")
        if not sep or not column.strip():
            raise typer.BadParameter(
                f"{item!r} is not COLUMN=VALUE (e.g. --key customer_id=42)", param_hint="--key"
            )
        out[column.strip()] = value
    return out


def _pretty(text: str | None) -> str:
    if not text:
        return "(no body)"
    try:
        return orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return text


def _exchange_lines(console: TerminalConsole, x: dict[str, Any]) -> None:
    if x["status"] is None and x.get("error") == DRY_RUN_NOTE:
        console.print(f"[bold]{escape(x['method'])} {escape(x['url'])}[/] ({DRY_RUN_NOTE})")
        for name, value in (x.get("request_headers") or {}).items():
            console.print(f"  > {escape(name)}: {escape(str(value))}", highlight=False)
        console.print(escape(_pretty(x.get("request_body"))), highlight=False)
        return
    status = x["status"] if x["status"] is not None else "no answer"
    console.print(
        f"[bold]{escape(x['method'])} {escape(x['url'])}[/] → [bold]{status}[/] "
        f"({x['duration_ms']} ms)"
    )
    for name, value in (x.get("request_headers") or {}).items():
        console.print(f"  > {escape(name)}: {escape(str(value))}", highlight=False)
    console.print(escape(_pretty(x.get("request_body"))), highlight=False)
    for name, value in (x.get("response_headers") or {}).items():
        console.print(f"  < {escape(name)}: {escape(str(value))}", highlight=False)
    console.print(escape(_pretty(x.get("response_body") or x.get("error"))), highlight=False)


@app.command("test")
def test_row(
    sync: Annotated[str, typer.Argument(help="The sync whose row to send.")],
    key: Annotated[
        list[str],
        typer.Option("--key", "-k", help="COLUMN=VALUE of the row's primary key (repeat)."),
    ],
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Show the record and the request that would carry it; send nothing."
        ),
    ] = False,
    project: ProjectOpt = Path("."),
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Send one row of a sync's model for real and show the request and the answer.

    Nothing is recorded (no run, no snapshot): the next run treats the row as it would have.
    """
    console = TerminalConsole(json_mode=json)
    wanted = parse_keys(key)

    def work() -> Any:
        proj = load(project)
        try:
            return proj.test_row(sync, wanted, dry_run=dry_run)
        finally:
            proj.close()

    result = guard(console, debug, work)
    data = result.as_dict()
    if json:
        console.json(data)
    else:
        console.print(
            f"[bold]{escape(sync)}[/]: {data['operation']} of row {escape(data['key'])}: "
            f"[bold]{data['outcome']}[/]"
        )
        if data["message"]:
            console.print(f"  {escape(data['message'])}", highlight=False)
        console.print("record as sent:")
        console.print(escape(orjson.dumps(data["payload"], option=orjson.OPT_INDENT_2).decode()))
        for exchange in data["exchanges"]:
            _exchange_lines(console, exchange)
        if dry_run:
            console.print("dry run: nothing was sent")
    if data["outcome"] not in ("accepted", "dry run"):
        raise typer.Exit(1)


@app.command("debug")
def debug_log(
    sync: Annotated[str, typer.Argument(help="The sync whose requests to show.")],
    key: Annotated[
        str | None, typer.Option("--key", "-k", help="Only requests that carried this row key.")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option("--status", help="Only answers of this status or class (429, 4xx, error)."),
    ] = None,
    show: Annotated[
        int | None, typer.Option("--show", help="One request, with headers and bodies.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new requests (Ctrl-C stops).")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
    project: ProjectOpt = Path("."),
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """The live debugger: the last requests a sync's destination was sent, and the answers."""
    console = TerminalConsole(json_mode=json)
    proj = guard(console, debug, lambda: load(project, require_secrets=False))
    try:
        if show is not None:
            entry = guard(console, debug, lambda: proj.debug_entry(show))
            if json:
                console.json(entry.as_dict())
            else:
                _exchange_lines(console, entry.as_dict())
            return
        entries = guard(
            console,
            debug,
            lambda: proj.debug_entries(
                sync, status=status, key=key, limit=limit, bodies=key is not None
            ),
        )
        _print_entries(console, list(reversed(entries)), detail=key is not None)
        last = entries[0].id if entries else 0
        while follow:
            time.sleep(0.5)
            new = proj.debug_entries(
                sync, status=status, key=key, after_id=last, limit=100, bodies=key is not None
            )
            if new:
                last = new[-1].id
                _print_entries(console, new, detail=key is not None, header=False)
    except KeyboardInterrupt:
        pass
    finally:
        proj.close()


def _print_entries(
    console: TerminalConsole, entries: list[Any], *, detail: bool, header: bool = True
) -> None:
    if console.json_mode:
        for entry in entries:
            console.json(entry.as_dict(bodies=detail))
        return
    if not entries and header:
        console.print("no request kept (run the sync, or `undertow test` a row)")
        return
    if detail:
        for entry in entries:
            data = entry.as_dict()
            console.print(f"#{data['id']} {data['at'][:19]} run {data['run_id'] or '(test)'}")
            _exchange_lines(console, data)
        return
    from rich.table import Table

    table = Table(
        "id", "time", "status", "request", "ms", "batch", "try", "records", show_header=header
    )
    for e in entries:
        keys = ", ".join(e.keys[:3]) + (", …" if e.key_count > 3 else "")
        table.add_row(
            str(e.id),
            e.at.isoformat()[:19],
            str(e.status) if e.status is not None else "no answer",
            escape(f"{e.method} {e.url}"),
            f"{e.duration_ms:.0f}",
            "" if e.batch is None else str(e.batch),
            str(e.attempt),
            escape(f"{e.key_count}: {keys}"),
        )
    console.print(table)
    if header:
        console.print("one request in full: undertow debug SYNC --show ID")
