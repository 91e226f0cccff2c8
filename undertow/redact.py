"""The one redaction helper: secrets never reach logs, errors, the UI or the state store.

Every secret Undertow resolves (a ``${ENV}`` value, a ``SecretStr`` field, a header marked
secret) is registered here with :func:`register_secret`; :func:`redact` replaces every
registered value, and every credential-looking pattern (bearer tokens, ``password=`` in
URLs and query strings, basic auth in URLs), with ``***``.
"""

from __future__ import annotations

import re
import threading
from typing import Any

MASK = "***"
_MIN_SECRET_LEN = 4

_lock = threading.Lock()
_secrets: set[str] = set()

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Authorization: Bearer xyz / Basic xyz
    (re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{4,}"), r"\1 " + MASK),
    # scheme://user:password@host
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@]+):[^@\s/]+@"), r"\1:" + MASK + "@"),
    # ?api_key=...&token=...&password=...
    (
        re.compile(
            r"(?i)\b(api[_-]?key|access[_-]?token|token|password|passwd|pwd|secret|"
            r"client[_-]?secret|hapikey|apikey|sig|signature)=([^&\s'\"]+)"
        ),
        r"\1=" + MASK,
    ),
    # "password": "..." in JSON-ish text
    (
        re.compile(r"(?i)(\"(?:password|token|secret|api_key|access_token)\"\s*:\s*\")[^\"]*\""),
        r"\1" + MASK + '"',
    ),
]


def register_secret(value: str | None) -> None:
    """Remember a secret value so that :func:`redact` masks it wherever it appears."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.add(value)


def redact(text: Any) -> str:
    """Return ``text`` as a string with every known secret and credential pattern masked."""
    out = str(text)
    if _secrets:
        with _lock:
            values = sorted(_secrets, key=len, reverse=True)
        for value in values:
            if value in out:
                out = out.replace(value, MASK)
    for pattern, repl in _PATTERNS:
        out = pattern.sub(repl, out)
    return out


def redact_url(url: str) -> str:
    """A URL fit for a message: no user info, no query string."""
    text = re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url, flags=re.I)
    return redact(text.split("?", 1)[0])


def trim(text: str, limit: int = 300) -> str:
    """Trim a response body for a message (redacted, one line, at most ``limit`` chars)."""
    flat = " ".join(redact(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
