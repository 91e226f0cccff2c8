"""The ``undertow`` command. Every command calls the ``Project`` facade and nothing deeper.

Exit codes: 0 success; 1 an Undertow error (one red line, ``--debug`` for the traceback) or a
failed run; 2 bad command-line usage.

The commands live by group (:mod:`~undertow.cli.project`, :mod:`~undertow.cli.syncs`,
:mod:`~undertow.cli.history`, :mod:`~undertow.cli.inspect`, :mod:`~undertow.cli.cluster`, and
the ``undertow dbt`` sub-commands in :mod:`~undertow.cli.dbt`) and register on the one Typer
``app``; the console entry point is :func:`main`.
"""

from __future__ import annotations

import copy
import sys

import typer
from typer.main import get_command_name

from undertow.cli import cluster, dbt, destinations, history, inspect, project, syncs
from undertow.cli._common import app

__all__ = [
    "app", "cluster", "dbt", "destinations", "history", "inspect", "main", "project", "syncs",
]  # fmt: skip

_HELP_ORDER = [
    "init", "validate", "plan", "run", "retry", "test", "status", "runs", "errors", "debug",
    "reset", "destinations", "demo", "fake", "serve", "worker", "migrate",
]  # fmt: skip


def _help_rank(name: str) -> int:
    return _HELP_ORDER.index(name) if name in _HELP_ORDER else len(_HELP_ORDER)


# the groups register in import order; `undertow --help` lists them in the order of use
app.registered_commands.sort(
    key=lambda c: _help_rank(str(c.name or getattr(c.callback, "__name__", "")))
)


def app_for(args: list[str]) -> typer.Typer:
    """The app that parses ``args``: when they start with the name of a command, a copy of
    the app holding that command only, since Typer builds every registered command's
    parameters from its signature before it parses (45 ms of CPU for all of them, against
    3 ms for one); otherwise the whole app (``--help``, ``--version``, the ``dbt`` group, a
    mistyped name and its suggestion). The command parses and runs as it does in the whole
    app: same callback, options, help and errors."""
    if not args or args[0].startswith("-"):
        return app
    named = [
        info
        for info in app.registered_commands
        if (info.name or get_command_name(getattr(info.callback, "__name__", ""))) == args[0]
    ]
    if len(named) != 1:
        return app
    one = copy.copy(app)
    one.registered_commands = named
    one.registered_groups = []
    return one


def main() -> None:
    app_for(sys.argv[1:])()
