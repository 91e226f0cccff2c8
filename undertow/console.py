"""Output goes through a console, never bare ``print``: Rich on a terminal, JSON for machines.

Everything that comes from data (row keys, reasons, names, error messages, vendor answers)
is printed through :func:`safe` (inside Rich markup) or :func:`plain` (with markup off, and
in table cells as :func:`cell`): secrets redacted, Rich markup escaped (a key ``[/bold]``
is shown as written, it does not crash the command), and terminal control characters (ANSI
escapes, carriage returns, bidi overrides) shown as ``\\x1b``-style escapes instead of
reaching the terminal.
"""

from __future__ import annotations

import re
import sys
from functools import cached_property
from typing import TYPE_CHECKING, Any

import orjson

from undertow.redact import redact

if TYPE_CHECKING:  # Rich is imported on first human output (30 ms a --json run never spends)
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.table import Table
    from rich.text import Text

# C0 controls but tab and newline, DEL, C1 controls, and the bidi overrides and isolates
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain(value: object) -> str:
    """``value`` as text fit for a terminal with markup off: redacted, controls escaped."""
    return _CONTROL.sub(_visible, redact(value))


def escape(text: str) -> str:
    """Rich's markup escape (``rich.markup.escape``), imported on first use."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def safe(value: object) -> str:
    """``value`` as text to put inside Rich markup: :func:`plain`, then markup escaped."""
    return escape(plain(value))


def cell(value: object) -> Text:
    """A table cell from data (a Rich ``Text`` is never read as markup)."""
    from rich.text import Text

    return Text(plain("" if value is None else value))


def _data_table() -> type[Table]:
    from rich.table import Table

    class DataTable(Table):
        """A table whose text cells are data: each ``str`` is shown through :func:`cell`. A
        cell meant to be styled is given as ``Text.from_markup(...)``, with its data made
        :func:`safe`."""

        def add_row(self, *renderables: Any, **kwargs: Any) -> None:
            cells = (cell(r) if isinstance(r, str) else r for r in renderables)
            super().add_row(*cells, **kwargs)

    DataTable.__module__ = __name__
    return DataTable


def __getattr__(name: str) -> Any:
    """``DataTable`` (a Rich ``Table`` subclass) is made on first use, with Rich."""
    if name == "DataTable":
        made = _data_table()
        globals()["DataTable"] = made
        return made
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TerminalConsole:
    """Human output: tables, one red line per error, a progress bar per stage."""

    def __init__(self, *, json_mode: bool = False, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet or json_mode
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._current: dict[str, str] = {}

    @cached_property
    def out(self) -> Console:
        """Standard output's Rich console, made on first human output."""
        from rich.console import Console

        out = Console(highlight=False, soft_wrap=True)
        if not out.is_terminal:
            # piped: never cut tables (run ids must stay copyable)
            out = Console(highlight=False, soft_wrap=True, width=250)
        return out

    @cached_property
    def err(self) -> Console:
        """Standard error's Rich console (errors, warnings, the progress bar)."""
        from rich.console import Console

        return Console(stderr=True, highlight=False, soft_wrap=True)

    # -- machine output ---------------------------------------------------------------------

    def json(self, value: Any) -> None:
        sys.stdout.write(redact(orjson.dumps(value, default=str).decode()) + "\n")
        sys.stdout.flush()

    # -- human output -----------------------------------------------------------------------

    def print(self, *items: Any, **kwargs: Any) -> None:
        if not self.json_mode:
            self.out.print(*items, **kwargs)

    def error(self, text: str) -> None:
        self.err.print(f"[bold red]error:[/] {safe(text)}", markup=True, highlight=False)

    def warn(self, text: str) -> None:
        if not self.json_mode:
            self.err.print(f"[yellow]warning:[/] {safe(text)}")

    # -- progress (the Reporter protocol of pipeline/run.py) --------------------------------

    def _bar(self) -> Progress | None:
        if self.quiet or not self.err.is_terminal:
            return None
        if self._progress is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.fields[sync]}[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.err,
                transient=True,
            )
            self._progress.start()
        return self._progress

    def stage(self, sync: str, stage: str, total: int | None = None) -> None:
        bar = self._bar()
        if bar is None:
            return
        task = self._tasks.get(sync)
        if task is None:
            self._tasks[sync] = bar.add_task(stage, total=total, sync=safe(sync))
        else:
            bar.reset(task, total=total, description=stage)
        self._current[sync] = stage

    def advance(self, sync: str, amount: int) -> None:
        if self._progress is not None and sync in self._tasks:
            self._progress.advance(self._tasks[sync], amount)

    def note(self, sync: str, text: str) -> None:
        if not self.json_mode:
            self.err.print(f"[dim]{safe(sync)}:[/] {safe(text)}")

    def done_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._tasks.clear()
