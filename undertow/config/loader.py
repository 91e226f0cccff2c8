"""Project files -> a validated :class:`LoadedProject`, with every error pointing at a line.

A project is a folder with ``undertow.yml`` (or ``undertow.yaml``) and optionally more YAML
files under ``models/`` and ``syncs/``. Loading goes:

1. read ``.env`` (if any) for ``${VAR}`` substitution; the real environment wins;
2. compose each YAML file into nodes and build plain data from them, recording the file and
   line of every key path, refusing duplicate keys and substituting ``${VAR}`` /
   ``${VAR:-default}`` in string values (each substituted value is registered as a secret);
3. merge the files (a name defined twice is an error naming both places);
4. resolve ``dbt:`` models from their dbt project's manifest (relation, primary key);
5. validate the whole project with pydantic, each source and destination with its
   connector's ``Config``, check cross references and read model ``file:`` SQL.

Every problem found becomes a :class:`ConfigError` with file, line and key; all of them are
raised together as :class:`ConfigErrors` (or the single one as itself).
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel, SecretStr, ValidationError

from undertow import registry
from undertow.config._yaml import Env, KeyPath, Locations, dotted, read_dotenv, read_yaml
from undertow.config.model_sql import read_model_sql
from undertow.config.models import FieldSpec, ProjectConfig
from undertow.config.names import check_names
from undertow.dbt.models import ResolvedDbtModel, resolve_dbt_models
from undertow.destinations.base import DestinationConfig
from undertow.errors import ConfigError, ConfigErrors, did_you_mean, unknown_name
from undertow.redact import register_secret
from undertow.sources.base import SourceConfig

PROJECT_FILES = ("undertow.yml", "undertow.yaml")
FOLDERS = ("models", "syncs")
MERGEABLE = ("sources", "destinations", "models", "syncs")


@dataclass
class LoadedProject:
    """A project read from disk and validated; what every other part of Undertow starts from."""

    root: Path
    """The project folder, absolute."""
    config: ProjectConfig
    sources: dict[str, SourceConfig]
    """Each source's config, validated by its connector's ``Config``."""
    destinations: dict[str, DestinationConfig]
    """Each destination's config, validated by its connector's ``Config``."""
    model_sql: dict[str, str]
    """Each model's SQL: inline, read from its ``file:``, or reading its dbt model's relation."""
    locations: Locations
    """Key path -> (file, 1-based line) of every key in the project files."""
    state_url: str = ""
    """The state store URL; a relative SQLite path is made absolute against ``root``."""
    state_dir: Path = field(default_factory=Path)
    """The private state folder (snapshots, locks), absolute."""
    files: list[str] = field(default_factory=list)
    """The YAML files read, ``undertow.yml`` first."""
    deferred: dict[tuple[str, str], ConfigError] = field(default_factory=dict)
    """(section, name) of connectors left out for a missing ``${VAR}``, with that error."""
    dbt_models: dict[str, ResolvedDbtModel] = field(default_factory=dict)
    """The models that are dbt models, with their manifest node (``undertow/dbt``)."""

    def where(self, *path: str | int) -> tuple[str, int] | None:
        """File and line of a key, or of its closest parent that is written in a file."""
        return _closest(self.locations, path)

    def error(self, message: str, *path: str | int, hint: str | None = None) -> ConfigError:
        """A :class:`ConfigError` pointing at ``path`` (for checks made after loading)."""
        file, line = self.where(*path) or (None, None)
        return ConfigError(message, file=file, line=line, key=dotted(path), hint=hint)


def load_project(path: str | Path = ".", *, require_secrets: bool = True) -> LoadedProject:
    """Read, merge and validate the project in ``path`` (a folder, or its ``undertow.yml``).

    With ``require_secrets=False`` (commands that only read history: status, runs, errors), a
    source or destination whose ``${VAR}`` is not set is left out instead of failing the
    load; using it later raises the missing-variable error (``LoadedProject.deferred``).
    """
    given = Path(path)
    main = _find_main_file(given)
    root = main.parent
    display_root = given if given.is_dir() else given.parent
    errors: list[ConfigError] = []
    env = Env(os.environ, read_dotenv(root / ".env", display_root / ".env", errors))

    def show(file: Path) -> str:
        return str(display_root / file.relative_to(root))

    data, locations = read_yaml(main, show(main), env, errors)
    files = [show(main)]
    if errors and data is None:
        raise _combined(errors, files)  # the rest would only be noise about missing keys
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            "the project file must be a mapping of keys (name:, sources:, models:, ...)",
            file=show(main),
            line=1,
            hint="start from `undertow init`, or see docs/config.md",
        )
    unreadable = False
    for extra in _extra_files(root):
        files.append(show(extra))
        before = len(errors)
        more, more_locations = read_yaml(extra, show(extra), env, errors)
        unreadable = unreadable or (more is None and len(errors) > before)
        _merge(data, locations, more, more_locations, show(extra), errors)
    if unreadable:
        raise _combined(errors, files)  # names it defines are missing: references would fail

    def where(path: KeyPath) -> tuple[str, int] | None:
        return _closest(locations, path)

    dbt_models = resolve_dbt_models(data, root, where, errors)  # fills in their primary_key
    check_names(data, where, errors)
    config = _validate(ProjectConfig, data, (), locations, errors)
    sources = _connectors(data, "sources", "source", registry.source_class, locations, errors)
    destinations = _connectors(
        data, "destinations", "destination", registry.destination_class, locations, errors
    )
    _check_references(data, locations, errors)
    if config is not None:
        from undertow.orchestration.dag import check_project

        errors.extend(check_project(config, where))
    model_sql = read_model_sql(data, root, where, errors, dbt_models)

    deferred: dict[tuple[str, str], ConfigError] = {}
    if not require_secrets:
        errors = _defer_missing_secrets(errors, deferred, sources, destinations)
    if errors or config is None:
        # a missing ${VAR} set aside above is still a problem when others stop the load
        raise _combined(errors + list(deferred.values()), files)
    return LoadedProject(
        deferred=deferred,
        root=root,
        config=config,
        sources=typing.cast(dict[str, SourceConfig], sources),
        destinations=typing.cast(dict[str, DestinationConfig], destinations),
        model_sql=model_sql,
        locations=locations,
        state_url=_state_url(config.state, root),
        state_dir=_absolute(config.state_dir, root),
        files=files,
        dbt_models=dbt_models,
    )


def _defer_missing_secrets(
    errors: list[ConfigError],
    deferred: dict[tuple[str, str], ConfigError],
    sources: dict[str, BaseModel],
    destinations: dict[str, BaseModel],
) -> list[ConfigError]:
    """Move a connector's missing-``${VAR}`` error (and what follows from it) aside."""
    for error in errors:
        parts = (error.key or "").split(".")
        if (
            len(parts) >= 2
            and parts[0] in ("sources", "destinations")
            and error.detail.startswith("environment variable")
        ):
            deferred.setdefault((parts[0], parts[1]), error)
    kept = []
    for error in errors:
        parts = (error.key or "").split(".")
        if len(parts) >= 2 and (parts[0], parts[1]) in deferred:
            continue
        kept.append(error)
    for section, name in deferred:
        (sources if section == "sources" else destinations).pop(name, None)
    return kept


# -- finding and reading files --------------------------------------------------------------


def _find_main_file(given: Path) -> Path:
    if given.is_file():
        return given.resolve()
    if not given.is_dir():
        raise ConfigError(
            f"the project folder {str(given)!r} does not exist",
            hint="pass --project DIR with the folder that holds undertow.yml",
        )
    found = [given / name for name in PROJECT_FILES if (given / name).is_file()]
    if not found:
        raise ConfigError(
            f"no undertow.yml in {str(given)!r}",
            hint="run `undertow init` to create a project, or pass --project DIR",
        )
    if len(found) > 1:
        raise ConfigError(
            f"both undertow.yml and undertow.yaml exist in {str(given)!r}",
            hint="keep one of them",
        )
    return found[0].resolve()


def _extra_files(root: Path) -> Iterator[Path]:
    for folder in FOLDERS:
        base = root / folder
        if base.is_dir():
            found = [*base.rglob("*.yml"), *base.rglob("*.yaml")]
            yield from sorted(p for p in found if p.is_file())


def _merge(
    data: dict[str, Any],
    locations: Locations,
    more: Any,
    more_locations: Locations,
    shown: str,
    errors: list[ConfigError],
) -> None:
    """Fold one ``models/`` or ``syncs/`` file into the project, refusing redefinitions."""
    if more is None:
        return
    if not isinstance(more, dict):
        errors.append(
            ConfigError(
                "a file under models/ or syncs/ must be a mapping with `models:` or `syncs:`",
                file=shown,
                line=1,
            )
        )
        return
    for section, entries in more.items():
        line = more_locations.get((section,), (shown, 1))[1]
        if section not in MERGEABLE:
            hint = did_you_mean(section, MERGEABLE)
            errors.append(
                ConfigError(
                    f"unknown key {section!r} here" + (f"; {hint}" if hint else ""),
                    file=shown,
                    line=line,
                    key=section,
                    hint="files under models/ and syncs/ hold only "
                    + ", ".join(f"`{s}:`" for s in MERGEABLE),
                )
            )
            continue
        if entries is None:
            continue
        if not isinstance(entries, dict):
            errors.append(
                ConfigError(
                    f"`{section}:` must be a mapping of names", file=shown, line=line, key=section
                )
            )
            continue
        target = data.setdefault(section, {})
        locations.setdefault((section,), (shown, line))
        if not isinstance(target, dict):
            continue  # undertow.yml has the wrong type here; validation reports it
        for name, value in entries.items():
            here = more_locations[(section, name)]
            if name in target:
                first = locations.get((section, name), ("?", 0))
                errors.append(
                    ConfigError(
                        f"{section[:-1]} {name!r} is defined twice: in {first[0]}:{first[1]} "
                        f"and in {here[0]}:{here[1]}",
                        file=here[0],
                        line=here[1],
                        key=f"{section}.{name}",
                        hint="rename one of them or delete the copy",
                    )
                )
                continue
            target[name] = value
            for where, loc in more_locations.items():
                if where[:2] == (section, name):
                    locations[where] = loc


# -- validation -----------------------------------------------------------------------------


def _validate(
    model: type[BaseModel],
    data: Any,
    prefix: KeyPath,
    locations: Locations,
    errors: list[ConfigError],
) -> Any:
    """``model.model_validate(data)``, or None with each pydantic error appended as ours."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            errors.append(_from_pydantic(model, err, data, prefix, locations))
        return None


def _from_pydantic(
    model: type[BaseModel],
    err: Any,
    data: Any,
    prefix: KeyPath,
    locations: Locations,
) -> ConfigError:
    loc: KeyPath = tuple(err["loc"])
    kind: str = err["type"]
    # the part of `loc` that exists in the data (pydantic adds union member names and such)
    path: list[str | int] = []
    node = data
    for part in loc:
        inside = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        )
        if inside:
            node = node[part]
        else:
            if kind == "missing":
                path.append(part)
            break
        path.append(part)
    full = (*prefix, *path)
    file, line = _closest(locations, full) or (None, None)
    message, hint = _message(model, err, tuple(path))
    return ConfigError(message, file=file, line=line, key=dotted(full) or None, hint=hint)


def _message(model: type[BaseModel], err: Any, path: KeyPath) -> tuple[str, str | None]:
    kind: str = err["type"]
    value = err.get("input")
    ctx: dict[str, Any] = err.get("ctx") or {}
    got = _describe(value)
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, path[:-1])
        key = str(path[-1]) if path else "?"
        text = f"unknown key {key!r}"
        suggestion = did_you_mean(key, allowed)
        if suggestion:
            text += f"; {suggestion}"
        return text, ("allowed keys here: " + ", ".join(allowed)) if allowed else None
    if kind == "missing":
        return f"missing required key {str(path[-1]) if path else ''!r}", None
    if kind in ("enum", "literal_error"):
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        text = f"{got} is not allowed"
        suggestion = did_you_mean(str(value), choices)
        if suggestion:
            text += f"; {suggestion}"
        return text, "use one of: " + ", ".join(choices)
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, "), None
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"expected a whole number, got {got}", None
    if kind in ("float_parsing", "float_type"):
        return f"expected a number, got {got}", None
    if kind in ("bool_parsing", "bool_type"):
        return f"expected true or false, got {got}", None
    if kind == "string_type":
        return f"expected a text value, got {got}", "quote it if YAML reads it as another type"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        if _annotation_at(model, path) is FieldSpec:
            return (
                f"a mapped field is a column name or a mapping, got {got}",
                "e.g. `plan: plan_column`, `source: {const: warehouse}` or "
                "`greeting: {template: 'Hi {{ first_name }}'}`",
            )
        return f"expected a mapping (key: value lines), got {got}", None
    if kind == "list_type":
        return f"expected a list, got {got}", None
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{err['msg'].lower().removeprefix('input should be ')} expected, got {got}", None
    return f"{err['msg']} (got {got})", None


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str | int | float | bool):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return type(value).__name__


def _annotation_at(model: type[BaseModel], path: KeyPath) -> Any:
    """The type expected at ``path`` inside ``model`` (``X | None`` unwrapped), or None."""
    current: Any = model
    for part in path:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = current.model_fields
            found = next((f for n, f in fields.items() if part in (n, f.alias)), None)
            if found is None:
                return None
            current = found.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) is list:
            current = typing.get_args(current)[0]
        else:
            return None
    return _unwrap(current)


def _allowed_keys(model: type[BaseModel], path: KeyPath) -> list[str]:
    """The keys allowed in the mapping at ``path`` of ``model`` (aliases where set)."""
    current = _annotation_at(model, path)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _connectors(
    data: dict[str, Any],
    section: str,
    kind: str,
    lookup: Callable[[str], Any],
    locations: Locations,
    errors: list[ConfigError],
) -> dict[str, BaseModel]:
    """Validate each source or destination with its connector's ``Config``."""
    out: dict[str, BaseModel] = {}
    entries = data.get(section)
    if not isinstance(entries, dict):
        return out
    types_of = registry.source_types if kind == "source" else registry.destination_types
    for name, raw in entries.items():
        if not isinstance(raw, dict):
            continue  # ProjectConfig validation reports it
        path: KeyPath = (section, name)
        file, line = _closest(locations, path) or (None, None)
        type_name = raw.get("type")
        if not isinstance(type_name, str):
            file, line = _closest(locations, (*path, "type")) or (file, line)
            errors.append(
                ConfigError(
                    f"{kind} {name!r} needs `type:` naming its connector"
                    if type_name is None
                    else f"`type:` must be a connector name, got {_describe(type_name)}",
                    file=file,
                    line=line,
                    key=dotted((*path, "type")),
                    hint="known types: " + ", ".join(types_of()),
                )
            )
            continue
        try:
            cls = lookup(type_name)
        except ConfigError as exc:
            file, line = _closest(locations, (*path, "type")) or (file, line)
            errors.append(
                ConfigError(
                    exc.raw_message,
                    file=file,
                    line=line,
                    key=dotted((*path, "type")),
                    hint=exc.hint,
                )
            )
            continue
        validated = _validate(cls.Config, raw, path, locations, errors)
        if validated is not None:
            _register_secrets(validated)
            out[name] = validated
    return out


def _register_secrets(value: Any) -> None:
    if isinstance(value, SecretStr):
        register_secret(value.get_secret_value())
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _register_secrets(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            _register_secrets(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _register_secrets(item)


def _check_references(
    data: dict[str, Any], locations: Locations, errors: list[ConfigError]
) -> None:
    def names(section: str) -> list[str]:
        entries = data.get(section)
        return list(entries) if isinstance(entries, dict) else []

    checks = (
        ("models", "source", "sources", "source"),
        ("syncs", "model", "models", "model"),
        ("syncs", "destination", "destinations", "destination"),
    )
    for section, key, target, kind in checks:
        entries = data.get(section)
        if not isinstance(entries, dict):
            continue
        known = names(target)
        for name, entry in entries.items():
            ref = entry.get(key) if isinstance(entry, dict) else None
            if isinstance(ref, str) and ref not in known:
                path = (section, name, key)
                file, line = _closest(locations, path) or (None, None)
                errors.append(
                    ConfigError(
                        unknown_name(kind, ref, known),
                        file=file,
                        line=line,
                        key=dotted(path),
                        hint=f"define it under `{target}:` or fix the name",
                    )
                )


# -- small helpers --------------------------------------------------------------------------


def _combined(errors: list[ConfigError], files: list[str]) -> ConfigError:
    order = {f: i for i, f in enumerate(files)}
    errors = sorted(errors, key=lambda e: (order.get(e.file or "", -1), e.line or 0))
    return errors[0] if len(errors) == 1 else ConfigErrors(errors)


def _closest(locations: Mapping[KeyPath, tuple[str, int]], path: KeyPath) -> tuple[str, int] | None:
    for end in range(len(path), -1, -1):
        found = locations.get(path[:end])
        if found is not None:
            return found
    return None


def _absolute(value: str, root: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def _state_url(url: str, root: Path) -> str:
    """Make a relative SQLite path absolute against the project folder."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    rest = url[len(prefix) :]
    file, sep, query = rest.partition("?")
    if not file or file == ":memory:" or file.startswith("/"):
        return url
    return f"{prefix}{_absolute(file, root)}{sep}{query}"
