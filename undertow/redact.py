"""The one redaction helper: secrets never reach logs, errors, the UI or the state store.

Every secret Undertow resolves (a ``${ENV}`` value, a ``SecretStr`` field, a header marked
secret) is registered here with :func:`register_secret`; :func:`redact` replaces every
registered value, and every credential-looking pattern (bearer tokens, ``password=`` in
URLs and query strings, basic auth in URLs), with ``***``.

A secret is masked in every form it is known to travel in, not only as written: a vendor
that echoes a token in a JSON error writes ``/`` as ``\\/`` and ``"`` as ``\\"``; a URL
carries it percent-encoded (``%2F`` or ``%2f``, ``+`` for a space, or encoded twice); an
HTML error page escapes ``&`` and ``<``; HTTP basic auth carries it inside the base64 of
``user:secret``, where the prefix is not known. :func:`encodings` lists the forms; for
base64 the part of the encoding that depends only on the secret is masked, at each of the
three alignments a prefix can give it (and in the URL-safe alphabet), so the secret cannot
be read back from what is left (at most two characters of the encoding at each edge,
which carry less than two characters of the secret).

Redaction is one compiled regular expression over every form of every secret (longest
first), rebuilt when a secret is registered.
"""

from __future__ import annotations

import base64
import html
import json
import re
import threading
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
_MIN_SECRET_LEN = 4
_MIN_FORM_LEN = 4
"""Shorter forms (the base64 core of a 4-character secret at a bad alignment) are not
masked on their own: they would match everywhere and carry less than the secret."""

_lock = threading.Lock()
_secrets: set[str] = set()
_compiled: re.Pattern[str] | None = None
_forms: tuple[str, ...] = ()

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
    # "password": "..." in JSON-ish text (escaped quotes inside the value included)
    (
        re.compile(
            r"(?i)(\"(?:password|token|secret|api_key|apikey|access_token|client_secret|"
            r"authorization|x-api-key)\"\s*:\s*\")(?:[^\"\\]|\\.)*\""
        ),
        r"\1" + MASK + '"',
    ),
]


def _base64_cores(secret: bytes) -> list[str]:
    """The parts of base64(prefix + secret + suffix) that depend on the secret alone, for
    each of the three alignments a prefix of unknown length gives it."""
    cores = []
    for offset in range(3):
        padded = b"\0" * offset + secret
        first = -(-offset // 3)  # the first 3-byte group that holds only the secret's bytes
        last = len(padded) // 3  # one past the last full group
        if last > first:
            text = base64.b64encode(padded[first * 3 : last * 3]).decode()
            cores.append(text)
    return cores


def encodings(secret: str) -> set[str]:
    """Every form of ``secret`` that :func:`redact` masks (the secret itself included)."""
    forms = {secret}
    for as_json in (json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]):
        forms |= {as_json, as_json.replace("/", "\\/")}  # \/: PHP, some Java encoders
    for url in (quote(secret, safe=""), quote(secret), quote_plus(secret)):
        forms |= {url, _lower_hex(url), quote(url, safe="")}
    forms.add(html.escape(secret))
    forms.add(html.escape(secret, quote=False))
    forms.add(html.escape(secret).replace("&#x27;", "&#39;"))
    raw = secret.encode("utf-8", "surrogatepass")
    for core in [base64.b64encode(raw).decode(), *_base64_cores(raw)]:
        forms |= {core, core.replace("+", "-").replace("/", "_")}
    return {f for f in forms if len(f) >= _MIN_FORM_LEN}


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def register_secret(value: str | None) -> None:
    """Remember a secret value so that :func:`redact` masks it wherever it appears."""
    global _compiled
    if value and len(value) >= _MIN_SECRET_LEN:
        with _lock:
            if value not in _secrets:
                _secrets.add(value)
                _compiled = None


def _pattern() -> tuple[re.Pattern[str] | None, tuple[str, ...]]:
    """The regular expression over every form of every secret, and the forms (a text that
    holds none of them is not searched: ``in`` is much faster than the alternation)."""
    global _compiled, _forms
    with _lock:
        if _compiled is None and _secrets:
            forms: set[str] = set()
            for secret in _secrets:
                forms |= encodings(secret)
            ordered = sorted(forms, key=len, reverse=True)
            _compiled = re.compile("|".join(re.escape(f) for f in ordered))
            _forms = tuple(ordered)
        return _compiled, _forms


_QUOTED = tuple(
    f'"{k}"'
    for k in [
        "password",
        "token",
        "secret",
        "api_key",
        "apikey",
        "access_token",
        "client_secret",
        "authorization",
        "x-api-key",
    ]
)


_EQUALS = tuple(
    f"{k}=" for k in ("key", "token", "password", "passwd", "pwd", "secret", "sig", "signature")
)


def _may_match(index: int, text: str, folded: str) -> bool:
    """False when ``text`` holds nothing that every match of ``_PATTERNS[index]`` contains
    (``folded`` is :func:`_fold` of ``text``). Scanning a 64 KB body for a few words takes
    microseconds; the case-insensitive patterns take milliseconds, so they run only over
    text that may hold a credential."""
    if index == 0:  # bearer / basic / token
        return "token" in folded or "bearer" in folded or "basic" in folded
    if index == 1:  # scheme://user:password@
        return "://" in text
    if index == 2:  # key=..., token=...
        return "=" in text and any(k in folded for k in _EQUALS)
    words = ("token", "password", "secret", "key", "authorization")  # "password": "..."
    return any(w in folded for w in words) and any(q in folded for q in _QUOTED)


_FOLD = {0x130: "i", 0x131: "i", 0x17F: "s", 0x212A: "k"}
"""The characters other than ASCII letters that ``re.IGNORECASE`` matches to ASCII letters
(dotted and dotless i, long s, Kelvin sign): folded first, so ``str.lower`` maps every
character the patterns match case-insensitively onto the trigger's letters."""


_FOLDED = tuple(chr(c) for c in _FOLD)


def _fold(text: str) -> str:
    # str.translate maps character by character in Python: 64 KB of text with one
    # non-ASCII character (the debugger's "…" after a trimmed body) took 4 ms; searching
    # for the four characters first takes microseconds
    if text.isascii() or not any(c in text for c in _FOLDED):
        return text.lower()
    return text.translate(_FOLD).lower()


def redact(text: Any) -> str:
    """Return ``text`` as a string with every known secret, in every encoding
    (:func:`encodings`), and every credential pattern masked."""
    out = str(text)
    pattern, forms = _pattern()
    if pattern is not None and any(form in out for form in forms):
        out = pattern.sub(MASK, out)
    folded = _fold(out)
    for index, (regex, repl) in enumerate(_PATTERNS):
        if _may_match(index, out, folded):
            out = regex.sub(repl, out)
            folded = _fold(out)
    return out


def redact_url(url: str) -> str:
    """A URL fit for a message: no user info, no query string."""
    text = re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url, flags=re.I)
    return redact(text.split("?", 1)[0])


def trim(text: str, limit: int = 300) -> str:
    """Trim a response body for a message (redacted, one line, at most ``limit`` chars)."""
    flat = " ".join(redact(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
