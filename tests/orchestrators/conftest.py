"""The Airflow operator, the Dagster helpers and dbt (exposures, dbt-built models) against
the real libraries.

Marked ``orchestrators`` and left out of ``make test``: Airflow cannot share the dev
virtualenv (it pins FastAPI below the version `undertow serve` uses and brings uvloop and
httptools, which change how uvicorn serves every fake in the suite) and takes minutes to
install. ``make test-orchestrators`` builds ``.venv-orchestrators`` with
``.[dev,airflow,dagster]`` and dbt-core 1.10 + dbt-duckdb, and runs them. A library that is missing there fails the test
with the command to install it; it never skips silently.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = str(Path(__file__).parent)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.orchestrators)


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "out").mkdir(parents=True)
    with duckdb.connect(str(root / "wh.duckdb")) as con:
        con.execute("create table users as select i as id from range(5) t(i)")
    (root / "undertow.yml").write_text(
        """
name: orch
sources: {wh: {type: duckdb, path: wh.duckdb}}
destinations: {out: {type: file, path: out/users.jsonl}}
models:
  users: {source: wh, sql: select * from users, primary_key: id}
  broken: {source: wh, sql: select * from missing_table, primary_key: id}
syncs:
  good: {model: users, destination: out, mappings: {id: id}}
  bad: {model: broken, destination: out, mappings: {id: id}}
"""
    )
    return root
