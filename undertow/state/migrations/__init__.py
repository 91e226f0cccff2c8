"""Numbered migrations of the state store: ``mNNNN_name.py`` with ``upgrade(conn)``.

A migration is applied once, in order, inside a transaction, and its number recorded in
``undertow_schema_version``. Never edit a released migration: add the next number.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from types import ModuleType

import sqlalchemy as sa


def available() -> list[tuple[int, Callable[[sa.Connection], None]]]:
    found: list[tuple[int, Callable[[sa.Connection], None]]] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("m") and info.name[1:5].isdigit():
            module: ModuleType = importlib.import_module(f"{__name__}.{info.name}")
            found.append((int(info.name[1:5]), module.upgrade))
    return sorted(found, key=lambda item: item[0])
