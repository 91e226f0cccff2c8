"""``undertow.cli.app_for``: a command parses in a one-command copy of the app exactly as in
the whole app (help, errors, exit codes), and anything else gets the whole app."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from undertow.cli import app, app_for

pytestmark = pytest.mark.unit


def both(args: list[str]) -> tuple[tuple[int, str], tuple[int, str]]:
    runner = CliRunner()
    whole = runner.invoke(app, args)
    one = runner.invoke(app_for(args), args)
    return (whole.exit_code, whole.output), (one.exit_code, one.output)


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--help"],
        ["plan", "--help"],
        ["run", "--nope"],  # an unknown option: usage error, exit 2
        ["validate", "--project", "/nonexistent/folder", "--json"],
        ["status", "--project", "/nonexistent/folder"],
    ],
)
def test_a_command_parses_as_in_the_whole_app(args: list[str]) -> None:
    whole, one = both(args)
    assert one == whole
    assert app_for(args) is not app
    assert len(app_for(args).registered_commands) == 1


def test_a_command_runs_the_same(tmp_path: Path) -> None:
    runner = CliRunner()
    init = runner.invoke(app_for(["init"]), ["init", str(tmp_path / "p")])
    assert init.exit_code == 0, init.output
    args = ["validate", "--project", str(tmp_path / "p"), "--json"]
    whole, one = both(args)
    assert one == whole
    assert whole[0] == 0


@pytest.mark.parametrize(
    "args",
    [[], ["--help"], ["--version"], ["dbt", "--help"], ["rnu"], ["run-all"]],
)
def test_anything_else_gets_the_whole_app(args: list[str]) -> None:
    assert app_for(args) is app


def test_a_mistyped_command_still_gets_its_suggestion() -> None:
    result = CliRunner().invoke(app_for(["rnu"]), ["rnu"])
    assert result.exit_code == 2
    assert "run" in result.output
