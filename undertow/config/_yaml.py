"""YAML files -> plain data, with the file and line of every key and ``${VAR}`` substituted.

Built from ``yaml.compose()`` nodes rather than ``yaml.safe_load`` so that every key path
keeps its line (scalars are still constructed with SafeLoader semantics), duplicate keys are
refused instead of silently keeping the last, and substitution happens in string values
only, never in keys. Problems are appended to an ``errors`` list so one pass reports them all.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from undertow.errors import ConfigError
from undertow.redact import register_secret

KeyPath = tuple[str | int, ...]
"""A key path in the project, e.g. ``("syncs", "users_to_crm", "mappings", "plan")``."""
Locations = dict[KeyPath, tuple[str, int]]
"""Key path -> (file as shown, 1-based line)."""

_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"

MAX_VALUES = 200_000
"""Most values (mappings, lists, scalars) one file may expand to, aliases counted each time
they are used: far above any project, far below what a few lines of nested aliases (a
"billion laughs" file) expand to, which is refused before it takes time or memory."""
MAX_FILE_BYTES = 10 * 1024 * 1024
"""Largest project file read (10 MiB)."""


class _TooLarge(Exception):
    pass


def read_dotenv(path: Path, shown: Path, errors: list[ConfigError]) -> dict[str, str]:
    """``KEY=VALUE`` lines (``export`` prefix, ``#`` comments and quotes allowed)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            errors.append(
                ConfigError(
                    "expected KEY=VALUE",
                    file=str(shown),
                    line=number,
                    hint="one variable per line, e.g. HUBSPOT_TOKEN=pat-na1-...",
                )
            )
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].rstrip()
        values[key] = value
    return values


class Env:
    """``${VAR}`` lookups: the real environment first, then the project's ``.env``."""

    def __init__(self, environ: Mapping[str, str], dotenv: Mapping[str, str]) -> None:
        self.environ = environ
        self.dotenv = dotenv

    def get(self, name: str) -> str | None:
        value = self.environ.get(name)
        return self.dotenv.get(name) if value is None else value


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")


def _substitute(
    text: str, env: Env, file: str, line: int, key: KeyPath, errors: list[ConfigError]
) -> str:
    def replace(match: re.Match[str]) -> str:
        whole, name, default = match.group(0), match.group(1), match.group(2)
        if whole == "$$":
            return "$"
        if name is None:
            errors.append(
                ConfigError(
                    "a `${` that is not a valid ${VAR} or ${VAR:-default}",
                    file=file,
                    line=line,
                    key=dotted(key),
                    hint="variable names are letters, digits and _; write $${ for a literal ${",
                )
            )
            return whole
        value = env.get(name)
        if default is not None and not value:
            value = default
        if value is None:
            errors.append(
                ConfigError(
                    f"environment variable {name} is not set",
                    file=file,
                    line=line,
                    key=dotted(key),
                    hint=f"`export {name}=...` before running undertow, or add a line "
                    f"`{name}=...` to the .env file in the project folder "
                    f"(or give a default: ${{{name}:-value}})",
                )
            )
            return ""
        register_secret(value)
        return value

    return _VAR.sub(replace, text) if "$" in text else text


def read_yaml(path: Path, shown: str, env: Env, errors: list[ConfigError]) -> tuple[Any, Locations]:
    locations: Locations = {(): (shown, 1)}
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            errors.append(
                ConfigError(
                    f"the file is {size:,} bytes, more than the {MAX_FILE_BYTES:,} a project "
                    "file may be",
                    file=shown,
                    hint="keep models' SQL in `file:` .sql files and split syncs into files "
                    "under syncs/",
                )
            )
            return None, locations
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        errors.append(ConfigError(f"not UTF-8 text ({exc.reason})", file=shown))
        return None, locations
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        errors.append(_yaml_error(exc, shown))
        return None, locations
    except yaml.YAMLError as exc:  # e.g. a control character (ReaderError)
        line = text.count("\n", 0, getattr(exc, "position", 0)) + 1
        errors.append(ConfigError(f"not valid YAML: {exc}", file=shown, line=line))
        return None, locations
    if node is None:
        return None, locations
    builder = _Builder(shown, env, locations, errors)
    try:
        return builder.build(node, ()), locations
    except _TooLarge:
        errors.append(
            ConfigError(
                f"the file expands to more than {MAX_VALUES:,} values: its aliases (*name) "
                "and merges (<<) repeat what they refer to each time they are used, and "
                "here they nest into an expansion no project needs (a YAML alias bomb?)",
                file=shown,
                line=1,
                hint="write the repeated parts out, or use fewer levels of aliases",
            )
        )
        return None, locations


def _yaml_error(exc: yaml.MarkedYAMLError, shown: str) -> ConfigError:
    problem = exc.problem or str(exc)
    context = exc.context or ""
    mark = exc.problem_mark or exc.context_mark
    hint = "check the indentation: nested keys go two spaces deeper than their parent"
    if "'\\t'" in problem or "\t" in problem:
        hint = "YAML does not allow tabs for indentation; indent with spaces"
    elif "quoted scalar" in context:
        mark = exc.context_mark or mark  # where the quote was opened, not the end of file
        hint = "a quote is opened but never closed; close it on the same value"
    elif "could not find expected ':'" in problem:
        hint = "a key needs a colon and a space after it, e.g. `mode: upsert`"
    elif "mapping values are not allowed" in problem:
        hint = (
            "a missing colon on a line above, or a value that contains ': ' and needs "
            'quotes, e.g. `sql: "select 1 as a: b"`'
        )
    elif "single document" in context:
        hint = "one YAML document per file: remove the `---` separator"
    elif "constructor for the tag" in problem:
        hint = "custom tags are not supported; use ${VAR} for environment variables"
    line = mark.line + 1 if mark is not None else None
    text = f"not valid YAML: {problem}"
    if context and "single document" not in context:
        text = f"not valid YAML: {problem} ({context})"
    return ConfigError(text, file=shown, line=line, hint=hint)


class _Builder:
    """Plain data from YAML nodes, recording where every key is (SafeLoader scalars)."""

    def __init__(
        self,
        shown: str,
        env: Env,
        locations: Locations,
        errors: list[ConfigError],
    ) -> None:
        self.shown = shown
        self.env = env
        self.locations = locations
        self.errors = errors
        self.constructor = SafeConstructor()
        self.active: set[int] = set()
        self.left = [MAX_VALUES]
        """Values this file may still expand to (shared with merge sub-builders)."""

    def fail(self, message: str, node: yaml.Node, path: KeyPath, hint: str | None = None) -> None:
        self.errors.append(
            ConfigError(
                message,
                file=self.shown,
                line=node.start_mark.line + 1,
                key=dotted(path) or None,
                hint=hint,
            )
        )

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.left[0] -= 1
        if self.left[0] < 0:
            raise _TooLarge
        if id(node) in self.active:
            self.fail("an alias refers to itself", node, path, "remove the recursive alias")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _SEQ:
                    self.fail(f"unsupported tag {node.tag!r}", node, path)
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            return self.scalar(typing.cast(yaml.ScalarNode, node), path)
        finally:
            self.active.discard(id(node))

    def scalar(self, node: yaml.ScalarNode, path: KeyPath) -> Any:
        try:
            value = self.constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self.errors.append(_yaml_error(exc, self.shown))
            return None
        if isinstance(value, str) and node.tag == _STR:
            line = node.start_mark.line + 1
            value = _substitute(value, self.env, self.shown, line, path, self.errors)
        return value

    def mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        if node.tag != _MAP:
            self.fail(f"unsupported tag {node.tag!r}", node, path)
        out: dict[str, Any] = {}
        seen: dict[str, int] = {}
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                items = value_node.value if isinstance(value_node, yaml.SequenceNode) else None
                merges.extend(items if items is not None else [value_node])
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.fail("a key must be a plain name, not a list or a mapping", key_node, path)
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                self.fail(
                    f"duplicate key {key!r} (first defined on line {seen[key]}); "
                    "YAML would silently keep only the last one",
                    key_node,
                    (*path, key),
                    "remove one of them or merge their contents",
                )
                continue
            seen[key] = line
            self.locations[(*path, key)] = (self.shown, line)
            out[key] = self.build(value_node, (*path, key))
        for merged in merges:  # `<<: *anchor`: keys written here win over merged ones
            if not isinstance(merged, yaml.MappingNode):
                self.fail("`<<` merges a mapping (or a list of mappings)", merged, path)
                continue
            theirs: Locations = {}
            sub = _Builder(self.shown, self.env, theirs, self.errors)
            sub.active = self.active
            sub.left = self.left
            for key, value in sub.mapping(merged, path).items():
                if key not in out:
                    out[key] = value
                    for where, loc in theirs.items():
                        if where[: len(path) + 1] == (*path, key):
                            self.locations[where] = loc
        return out


def dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
