"""Template filters of the web UI: times, durations and counts as people read them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from undertow.orchestration.config import format_duration


def _parse(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def when(value: Any) -> str:
    """``2026-12-02 16:30:01`` (UTC), or ``-``."""
    parsed = _parse(value)
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if parsed else "-"


def ago(value: Any) -> str:
    """``3m 05s ago`` / ``in 2m 00s``, or ``-``."""
    parsed = _parse(value)
    if parsed is None:
        return "-"
    seconds = (datetime.now(UTC) - parsed).total_seconds()
    if abs(seconds) < 1:
        return "just now"
    text = format_duration(abs(seconds))
    return f"{text} ago" if seconds > 0 else f"in {text}"


def duration(value: Any) -> str:
    if value is None:
        return "-"
    seconds = float(value)
    if seconds < 10:
        return f"{seconds:.2f}s" if seconds < 1 else f"{seconds:.1f}s"
    return format_duration(seconds)


def num(value: Any) -> str:
    if value is None:
        return "-"
    return f"{int(value):,}"


def status_class(status: Any) -> str:
    if status is None:
        return "error"
    return f"s{int(status) // 100}xx"


def pretty(text: Any) -> str:
    """A JSON body indented for reading; any other text as it is."""
    if not isinstance(text, str) or not text:
        return "(no body)" if not text else str(text)
    try:
        return orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return text


FILTERS = {
    "pretty": pretty,
    "when": when,
    "ago": ago,
    "duration": duration,
    "num": num,
    "status_class": status_class,
}
