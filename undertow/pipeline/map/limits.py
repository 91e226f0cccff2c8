"""Bounds on a template's work per row: time, output size, and Ctrl-C.

A template is user code run once per row. The Jinja sandbox stops it reaching Python's
internals, but not from looping for minutes (``{% for i in range(99999) %}{% for j in
range(99999) %}...``) or building a 400 MB string (``'x' * 400000000``). So each row's
rendering runs under a :class:`Budget`:

- **time**: at most :data:`TEMPLATE_SECONDS` per row. The budget is checked at every
  piece of output, every call, every arithmetic operator the sandbox intercepts and every
  256 steps of ``range``; a row over it is rejected with its reason.
- **size**: at most :data:`TEMPLATE_MAX_CHARS` characters of output per row. ``*``, ``+``
  and ``%`` on strings and lists, ``**`` and the width arguments of filters (``center``,
  ``indent``, ``truncate`` ...) are refused *before* they allocate more than that.
- **Ctrl-C / SIGTERM**: the run sets :attr:`Budget.cancel`; the next check raises
  :class:`TemplateCancelled`, the map stage stops, and the run ends ``cancelled`` after
  the batches in flight (nothing is half-sent).

After :data:`TIMEOUTS_BEFORE_SKIP` rows of one template ran out of time in one chunk, its
remaining rows in that chunk are rejected unrendered with the same reason, so one slow
template cannot hold a run for hours; they are retried by the next run like any rejected
row.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

TEMPLATE_SECONDS = 1.0
"""Most time one row's template may take."""
TEMPLATE_MAX_CHARS = 1_000_000
"""Most characters one row's template may output (or build on the way)."""
TIMEOUTS_BEFORE_SKIP = 3
"""Rows of one template that may run out of time in one chunk before the rest is skipped."""
_RANGE_CHECK_EVERY = 256
_PERCENT_WIDTH = re.compile(r"%[-+ #0]*(\d+)")


class TemplateLimit(Exception):
    """A row's template went over a limit; the row is rejected with this message."""


class TemplateTimeout(TemplateLimit):
    """A row's template ran longer than its time limit."""


class TemplateCancelled(Exception):
    """The run was interrupted (Ctrl-C, SIGTERM) while templates were rendering."""


class Budget(threading.local):
    """The current row's deadline and the run's cancel flag (one per thread)."""

    def __init__(self) -> None:
        self.deadline = float("inf")
        self.seconds = TEMPLATE_SECONDS
        self.cancel: threading.Event | None = None

    def start(self, seconds: float, cancel: threading.Event | None) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.cancel = cancel

    def stop(self) -> None:
        self.deadline = float("inf")

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise TemplateCancelled("the run was interrupted")
        if time.monotonic() > self.deadline:
            self.deadline = float("inf")  # raised once; the row is over
            raise TemplateTimeout(
                f"it ran longer than {self.seconds:g} s on this row, the limit per row"
            )


BUDGET = Budget()


def too_big(size: int) -> TemplateLimit:
    return TemplateLimit(
        f"it would build a value of {size:,} characters, more than the limit of "
        f"{TEMPLATE_MAX_CHARS:,} per row"
    )


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, str | bytes | list | tuple) else None


def _bounded_range(*args: int) -> Iterator[int]:
    numbers = range(*args)
    if len(numbers) > TEMPLATE_MAX_CHARS:
        raise too_big(len(numbers))
    for index, number in enumerate(numbers):
        if index % _RANGE_CHECK_EVERY == 0:
            BUDGET.check()
        yield number


_WIDTHS = {"center", "indent", "truncate", "wordwrap", "ljust", "rjust", "zfill", "expandtabs"}
"""Filters and string methods whose number arguments are output widths."""


def _check_widths(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        number = isinstance(value, int) and not isinstance(value, bool)
        if number and abs(value) > TEMPLATE_MAX_CHARS:
            raise too_big(abs(value))
        if isinstance(value, str):
            widths = [int(w) for w in _PERCENT_WIDTH.findall(value)]
            if widths and max(widths) > TEMPLATE_MAX_CHARS:
                raise too_big(max(widths))


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)  # keeps jinja's pass_context / pass_environment marks
    def bounded(*args: Any, **kwargs: Any) -> Any:
        BUDGET.check()
        if name in _WIDTHS:
            _check_widths(args[1:], kwargs)
        elif name == "format":
            _check_widths(args[:2], {})
        out = function(*args, **kwargs)
        size = _size(out)
        if size is not None and size > TEMPLATE_MAX_CHARS:
            raise too_big(size)
        return out

    return bounded


def render_bounded(pieces: Iterator[str]) -> str:
    """Join a template's output pieces, checking the budget and the size at each."""
    out: list[str] = []
    total = 0
    for piece in pieces:
        total += len(piece)
        if total > TEMPLATE_MAX_CHARS:
            raise too_big(total)
        BUDGET.check()
        out.append(piece)
    return "".join(out)


def __getattr__(name: str) -> Any:
    """``BoundedEnvironment`` lives in :mod:`.sandbox` (it imports Jinja, which a mapping
    without templates never needs); this keeps ``from ...limits import BoundedEnvironment``."""
    if name == "BoundedEnvironment":
        from undertow.pipeline.map.sandbox import BoundedEnvironment

        return BoundedEnvironment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
