"""What a name of a source, destination, model, sync or webhook may be.

Names reach file names (the local diff engine's files), URLs (``undertow serve``), the
command line and the terminal, so they are kept to what is safe in all four: letters and
digits of any script, ``_``, ``-``, ``.`` and single spaces inside, starting with a letter,
a digit or ``_``, at most :data:`MAX_NAME` characters. Two syncs never share a file whatever
their names: the file names are derived injectively (:func:`undertow.state.files.sync_stem`), so this rule is
about clear errors and safe output, not about collisions.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from undertow.errors import ConfigError

MAX_NAME = 64
"""Longest name: fits a file name (255 bytes) with room, and a terminal table column."""

SECTIONS = ("sources", "destinations", "models", "syncs", "webhooks")
_NAME = re.compile(r"^[^\W](?:[\w.-]| (?! ))*(?<! )$")  # spaces: single, inside only


def problem(name: object) -> str | None:
    """Why ``name`` is not a valid name, or None when it is."""
    if not isinstance(name, str):
        return f"name must be text, got {type(name).__name__} {name!r}"
    shown = ascii(name) if not name.isprintable() else repr(name)
    if not name:
        return "name cannot be empty"
    if len(name) > MAX_NAME:
        return f"name {shown[:40]}... is {len(name)} characters long, more than {MAX_NAME}"
    odd = any(unicodedata.category(c)[0] in "CZ" and c != " " for c in name)
    if not _NAME.match(name) or odd:
        return (
            f"name {shown} has characters a name cannot have; use letters, digits, "
            "'_', '-', '.' and single spaces, starting with a letter, a digit or '_'"
        )
    return None


def suggestion(name: str) -> str:
    """A valid name close to ``name`` (for the hint)."""
    fixed = re.sub(r"[^\w.-]+", "_", name).strip("_.-") or "name"
    return fixed[:MAX_NAME]


def check_names(
    data: dict[str, object],
    where: Callable[[tuple[str | int, ...]], tuple[str, int] | None],
    errors: list[ConfigError],
) -> None:
    """Append an error for every section entry whose name breaks the rule."""
    for section in SECTIONS:
        entries = data.get(section)
        if not isinstance(entries, dict):
            continue
        for name in entries:
            why = problem(name)
            if why is None:
                continue
            file, line = where((section, name)) or (None, None)
            kind = section[:-1]
            better = suggestion(str(name))
            while better in entries:
                better = better[: MAX_NAME - 2] + "_2"
            errors.append(
                ConfigError(
                    f"{kind} {why}",
                    file=file,
                    line=line,
                    key=f"{section}.{name}",
                    hint=f"rename the {kind}, e.g. to {better!r}",
                )
            )
