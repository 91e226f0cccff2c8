"""``undertow dbt ...``: the commands about the dbt project a project reads (docs/dbt.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from undertow.cli._common import DebugOpt, JsonOpt, ProjectOpt, app, guard, load
from undertow.console import TerminalConsole

dbt_app = typer.Typer(
    name="dbt",
    help="dbt: write the syncs as dbt exposures (docs/dbt.md).",
    no_args_is_help=True,
)
app.add_typer(dbt_app)


@dbt_app.command()
def exposures(
    project: ProjectOpt = Path("."),
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the file here (default: print it)."),
    ] = None,
    dbt_project: Annotated[
        str | None,
        typer.Option(
            "--dbt-project", help="The dbt project folder, when the project reads several."
        ),
    ] = None,
    owner: Annotated[str, typer.Option("--owner", help="The exposures' owner name.")] = "Undertow",
    email: Annotated[str | None, typer.Option("--email", help="The owner's e-mail.")] = None,
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write a dbt exposures file: one exposure per sync that reads a dbt model."""
    console = TerminalConsole(json_mode=json)

    def work() -> Any:
        proj = load(project, require_secrets=False)  # the file needs no connector secret
        try:
            return proj.dbt_exposures(dbt_project=dbt_project, owner=owner, email=email)
        finally:
            proj.close()

    result = guard(console, debug, work)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(result.text, encoding="utf-8")
    if json:
        console.json(
            {
                "dbt_project": str(result.dbt_project),
                "path": str(out) if out is not None else None,
                "exposures": result.exposures,
                "skipped": result.skipped,
                **({} if out is not None else {"text": result.text}),
            }
        )
        return
    if out is None:
        typer.echo(result.text, nl=False)
    else:
        count = len(result.exposures)
        console.print(f"[green]wrote {count} exposure{'s' if count != 1 else ''} to {out}[/]")
    if result.skipped:
        console.err.print(
            f"left out: {', '.join(result.skipped)} (reads no model of {result.dbt_project})",
            markup=False,
            highlight=False,
        )
