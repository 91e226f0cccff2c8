"""Fixtures for the orchestration tests: small real projects (a DuckDB warehouse, `file`
destinations) in tmp_path, driven by a scheduler on a manual clock: no sleeping."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from orch_support import FIXTURES, Workspace

from undertow.orchestration.schedule import ManualClock


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = str(Path(__file__).parent)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.orchestration)


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace(tmp_path / "proj")
    try:
        yield workspace
    finally:
        workspace.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1))


@pytest.fixture
def dbt_project(tmp_path: Path) -> Path:
    """A copy of the dbt project fixture (real dbt-duckdb output) whose results tests rewrite."""
    target = tmp_path / "analytics"
    shutil.copytree(FIXTURES / "dbt_analytics", target)
    return target
