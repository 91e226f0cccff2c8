"""Connector classes by ``type``, found through entry points.

A source registers under the ``undertow.sources`` group and a destination under
``undertow.destinations`` (see ``pyproject.toml``), so a third-party package adds a
connector by declaring an entry point; nothing here lists them.

    source_class("duckdb")        -> DuckDBSource
    destination_class("hubspt")   -> ConfigError: unknown destination type 'hubspt';
                                     did you mean 'hubspot'? (known: ...)

Lookups are cached; :func:`clear_cache` forgets them (for tests and plug-in reloads).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Protocol

from undertow.destinations.base import Destination
from undertow.errors import ConfigError, UndertowError, unknown_name
from undertow.sources.base import Source

SOURCES_GROUP = "undertow.sources"
DESTINATIONS_GROUP = "undertow.destinations"


class _Loadable(Protocol):
    """What we need of an entry point: something that imports and returns the class."""

    value: str

    def load(self) -> Any: ...


_lock = threading.Lock()
_groups: dict[str, Mapping[str, _Loadable]] = {}
_classes: dict[tuple[str, str], type[Any]] = {}


def _entry_points(group: str) -> Mapping[str, _Loadable]:
    """The entry points of ``group`` by name (uncached; see :func:`_group`)."""
    return {ep.name: ep for ep in entry_points(group=group)}


def _group(group: str) -> Mapping[str, _Loadable]:
    with _lock:
        found = _groups.get(group)
    if found is None:
        found = _entry_points(group)
        with _lock:
            _groups[group] = found
    return found


def clear_cache() -> None:
    """Forget discovered entry points and loaded classes."""
    with _lock:
        _groups.clear()
        _classes.clear()


def _lookup(group: str, kind: str, type_name: str, base: type) -> type[Any]:
    key = (group, type_name)
    with _lock:
        cached = _classes.get(key)
    if cached is not None:
        return cached
    points = _group(group)
    point = points.get(type_name)
    if point is None:
        raise ConfigError(
            unknown_name(f"{kind} type", type_name, points),
            hint=f"install the package that provides the {type_name!r} connector, "
            f"or pick one of the known types",
        )
    try:
        loaded = point.load()
    except UndertowError:
        raise  # the connector's own error, e.g. a missing driver with its `pip install`
    except ImportError as exc:
        raise ConfigError(
            f"the {kind} connector {type_name!r} ({point.value}) cannot be imported: {exc}",
            hint=f'a driver it needs is probably missing: pip install "undertow[{type_name}]"',
        ) from exc
    if not (isinstance(loaded, type) and issubclass(loaded, base)):  # a broken plug-in
        raise ConfigError(
            f"the {kind} connector {type_name!r} ({point.value}) is not a {base.__name__} subclass",
            hint="its package registers a wrong entry point; report it to its authors",
        )
    with _lock:
        _classes[key] = loaded
    return loaded


def source_class(type_name: str) -> type[Source]:
    """The source connector class registered as ``type_name``."""
    found: type[Source] = _lookup(SOURCES_GROUP, "source", type_name, Source)
    return found


def destination_class(type_name: str) -> type[Destination]:
    """The destination connector class registered as ``type_name``."""
    found: type[Destination] = _lookup(DESTINATIONS_GROUP, "destination", type_name, Destination)
    return found


def source_types() -> list[str]:
    """Every registered source type, sorted (without importing any connector)."""
    return sorted(_group(SOURCES_GROUP))


def destination_types() -> list[str]:
    """Every registered destination type, sorted (without importing any connector)."""
    return sorted(_group(DESTINATIONS_GROUP))
