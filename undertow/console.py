"""Output goes through a console, never bare ``print``: Rich on a terminal, JSON for machines."""

from __future__ import annotations

import sys
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from undertow.redact import redact


class TerminalConsole:
    """Human output: tables, one red line per error, a progress bar per stage."""

    def __init__(self, *, json_mode: bool = False, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.out = Console(highlight=False, soft_wrap=True)
        if not self.out.is_terminal:
            # piped: never cut tables (run ids must stay copyable)
            self.out = Console(highlight=False, soft_wrap=True, width=250)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet or json_mode
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._current: dict[str, str] = {}

    # -- machine output ---------------------------------------------------------------------

    def json(self, value: Any) -> None:
        sys.stdout.write(redact(orjson.dumps(value, default=str).decode()) + "\n")
        sys.stdout.flush()

    # -- human output -----------------------------------------------------------------------

    def print(self, *items: Any, **kwargs: Any) -> None:
        if not self.json_mode:
            self.out.print(*items, **kwargs)

    def error(self, text: str) -> None:
        # escaped: a message quoting `after: [dbt]` or `data_tests: [unique, not_null]` must not
        # lose those words to rich's markup
        self.err.print(f"[bold red]error:[/] {escape(redact(text))}", markup=True, highlight=False)

    def warn(self, text: str) -> None:
        if not self.json_mode:
            self.err.print(f"[yellow]warning:[/] {escape(redact(text))}")

    # -- progress (the Reporter protocol of pipeline/run.py) --------------------------------

    def _bar(self) -> Progress | None:
        if self.quiet or not self.err.is_terminal:
            return None
        if self._progress is None:
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
            self._tasks[sync] = bar.add_task(stage, total=total, sync=sync)
        else:
            bar.reset(task, total=total, description=stage)
        self._current[sync] = stage

    def advance(self, sync: str, amount: int) -> None:
        if self._progress is not None and sync in self._tasks:
            self._progress.advance(self._tasks[sync], amount)

    def note(self, sync: str, text: str) -> None:
        if not self.json_mode:
            self.err.print(f"[dim]{escape(sync)}:[/] {escape(redact(text))}")

    def done_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._tasks.clear()
