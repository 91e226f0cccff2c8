"""HTTP header names and values in config: refused at load time when they would break a
request. A value with CR or LF (a token read from a file keeps its final newline:
``export TOKEN=$(cat token.txt)``) would otherwise fail deep in the HTTP client with a
traceback, or split the request into two headers.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, SecretStr

# RFC 9110 section 5.1 (field names are tokens) and 5.5 (values: no CR, LF or NUL)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def value_problem(value: str) -> str | None:
    """Why ``value`` cannot be an HTTP header value, or None."""
    found = _BAD.search(value)
    if found is None:
        return None
    what = {"\n": "a line break (LF)", "\r": "a carriage return (CR)", "\x00": "a NUL byte"}
    char = found.group()
    named = what.get(char, f"the control character {char!r}")
    at_end = found.start() >= len(value.rstrip("\r\n"))
    where = "at its end" if at_end else f"at position {found.start() + 1}"
    return (
        f"the value has {named} {where}, which an HTTP header cannot carry; if it comes "
        "from an environment variable or a file, remove the line break (e.g. "
        "`export TOKEN=\"$(tr -d '\\r\\n' < token.txt)\"`)"
    )


def check_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """Refuse header names that are not tokens and values that would split a request."""
    for name, value in headers.items():
        if not _TOKEN.match(name):
            raise ValueError(
                f"header name {name!r} is not a valid HTTP field name (letters, digits and "
                "!#$%&'*+.^_`|~- only, no spaces or colons)"
            )
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        why = value_problem(str(text))
        if why is not None:
            raise ValueError(f"header {name!r}: {why}")
    return headers


def _secret_value(value: SecretStr) -> SecretStr:
    why = value_problem(value.get_secret_value())
    if why is not None:
        raise ValueError(why)
    return value


def _text_value(value: str) -> str:
    why = value_problem(value)
    if why is not None:
        raise ValueError(why)
    return value


HeaderSecret = Annotated[SecretStr, AfterValidator(_secret_value)]
"""A secret sent in an HTTP header (an API token): no CR, LF or other control character."""
HeaderText = Annotated[str, AfterValidator(_text_value)]
"""A plain value sent in an HTTP header."""
Headers = Annotated[dict[str, str], AfterValidator(check_headers)]
"""Header name -> value, both checked."""
