"""Helpers of the orchestrator tests (unique module name; see tests/orchestration)."""

from __future__ import annotations

import importlib
from typing import Any

import pytest


def need(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(
            f"{module} is not installed: run `make test-orchestrators`, or "
            f'`pip install -e ".[dev,{extra}]"` in this virtualenv',
            pytrace=False,
        )
