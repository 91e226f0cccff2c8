"""One scripted destination and one project builder for the tests that run a whole project
(``tests/unit/test_run.py``, ``test_safety.py``, ``tests/integration/test_row_history.py``).

The ``script`` fixture (a plugin of ``tests/conftest.py``) gives a fresh store of the
in-memory destination (``type: memory``, ``undertow/destinations/memory.py``) that the
projects' ``dest`` writes into: it accepts every record unless the script says to reject
it, fail it transiently, or crash the process mid-delivery, and records what it received.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pytest

from undertow.destinations import memory
from undertow.project import Project
from undertow.state.store import RunRecord

USERS = "id integer, email varchar"
"""The default columns of the ``users`` table :func:`users_project` writes."""


class SimulatedCrash(BaseException):
    """Stands in for the process dying mid-delivery (nothing catches a BaseException)."""


Script = memory.MemoryStore
"""What the ``scripted`` destination does (reject, fail, crash_on_call, operations) and what
it received: the in-memory destination's store (``undertow/destinations/memory.py``)."""

SCRIPTED = "{type: memory, store: scripted, max_concurrency: 2}"
"""The destination block of the scripted destination in a project file."""


@pytest.fixture
def script() -> Iterator[Script]:
    """A fresh store behind the ``scripted`` destination (``SCRIPTED``) for this test."""
    memory.drop("scripted")
    fresh = memory.store("scripted")
    fresh.crash = SimulatedCrash
    yield fresh
    memory.drop("scripted")


def write_users(folder: Path, rows: Sequence[Sequence[Any]], *, columns: str = USERS) -> None:
    """(Re)create table ``users`` in ``folder/wh.duckdb`` with ``rows``."""
    folder.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(folder / "wh.duckdb")) as con:
        con.execute(f"create or replace table users ({columns})")
        if rows:
            marks = ", ".join("?" for _ in rows[0])
            con.executemany(f"insert into users values ({marks})", [list(r) for r in rows])


def warehouse(folder: Path, statement: str) -> None:
    """Run one statement on the project's warehouse (change the model's rows)."""
    with duckdb.connect(str(folder / "wh.duckdb")) as con:
        con.execute(statement)


def users_project(
    folder: Path,
    rows: Sequence[Sequence[Any]],
    *,
    syncs: str,
    columns: str = USERS,
    destinations: str = f"dest: {SCRIPTED}",
    state: str | None = None,
    name: str = "p",
) -> Project:
    """A project over a DuckDB ``users`` table (model ``users``, primary key ``id``) with the
    given YAML under ``destinations:`` and ``syncs:`` (indented by the caller's 2 spaces)."""
    write_users(folder, rows, columns=columns)
    state_line = f'state: "{state}"\n' if state else ""
    indent = "\n  ".join(destinations.strip().splitlines())
    (folder / "undertow.yml").write_text(
        f"""name: {name}
{state_line}sources:
  wh: {{type: duckdb, path: wh.duckdb}}
destinations:
  {indent}
models:
  users: {{source: wh, sql: select * from users, primary_key: id}}
syncs:
{syncs.rstrip()}
"""
    )
    return Project.load(str(folder))


def run_one(project: Project, sync: str, **kwargs: bool) -> RunRecord:
    [record] = project.run([sync], **kwargs)
    return record
