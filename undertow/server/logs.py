"""The log of ``undertow serve``: plain lines on a terminal, JSON lines for machines.

Every run start and end (status and counts), every scheduler decision (due and why,
skipped as stale, waiting for parents, paused) and every alert sent is one log record of
logger ``undertow.*`` with a machine-readable ``event`` and its fields in ``extra``::

    2026-12-02 16:40:01 INFO undertow.scheduler: run finished: users_to_crm succeeded ...
    {"ts": "2026-12-02T16:40:01.123+00:00", "level": "info", "logger": "undertow.scheduler",
     "event": "run.finished", "sync": "users_to_crm", "status": "succeeded", ...}

Messages pass through :func:`undertow.redact.redact` in both formats.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from undertow.redact import redact

FIELDS = (
    "event",
    "sync",
    "run_id",
    "status",
    "trigger",
    "reason",
    "duration_s",
    "counts",
    "waiting_for",
    "channel",
    "rule",
    "firing",
    "error",
)
"""The ``extra`` keys a record may carry (others are ignored)."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(log_format: str = "text", *, stream: Any = None) -> logging.Handler:
    """Send ``undertow.*`` records at INFO and above to stderr in ``log_format``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("undertow").setLevel(logging.INFO)
    return handler
