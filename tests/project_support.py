"""One scripted destination and one project builder for the tests that run a whole project
(``tests/unit/test_run.py``, ``test_safety.py``, ``tests/integration/test_row_history.py``).

The ``script`` fixture (a plugin of ``tests/conftest.py``) registers destination type
``scripted``: an in-process destination that accepts every record unless the script says to
reject it, fail it transiently, or crash the process mid-delivery, and records what it
received. It stands in for *a* destination, not for one we claim to support, so it is no
fake of a vendor API.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import duckdb
import pytest

import undertow.project
from undertow import registry
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    Destination,
    DestinationConfig,
    Operation,
)
from undertow.project import Project
from undertow.state.store import RunRecord

USERS = "id integer, email varchar"
"""The default columns of the ``users`` table :func:`users_project` writes."""


class SimulatedCrash(BaseException):
    """Stands in for the process dying mid-delivery (nothing catches a BaseException)."""


class Received(NamedTuple):
    idempotency_key: str
    batch: int
    operation: str
    key: str
    record: dict[str, Any]


@dataclass
class Script:
    """What the scripted destination does, and what it received."""

    operations: frozenset[Operation] = frozenset(Operation)
    reject: dict[str, str] = field(default_factory=dict)
    """Row key -> the rejection message the destination answers."""
    fail: set[str] = field(default_factory=set)
    """Row keys that fail transiently (a connection reset)."""
    crash_on_call: int | None = None
    """Raise :class:`SimulatedCrash` after this call to ``write_batch`` (1-based)."""
    received: list[Received] = field(default_factory=list)
    calls: int = 0

    def keys(self) -> list[str]:
        """Row keys received, in order."""
        return [r.key for r in self.received]

    def sorted_keys(self) -> list[str]:
        return sorted(self.keys(), key=int)

    def sent(self) -> list[tuple[str, str]]:
        """(operation, row key) per record received, in order."""
        return [(r.operation, r.key) for r in self.received]

    def ops(self, operation: str) -> list[str]:
        """Row keys received with ``operation``, in key order."""
        return sorted((r.key for r in self.received if r.operation == operation), key=int)


class ScriptedConfig(DestinationConfig):
    type: Literal["scripted"] = "scripted"
    max_concurrency: int = 2


class ScriptedDestination(Destination):
    name: ClassVar[str] = "scripted"
    Config: ClassVar[type[DestinationConfig]] = ScriptedConfig
    capabilities: ClassVar[Capabilities] = Capabilities(
        operations=frozenset(Operation),
        max_batch_size=1000,
        max_concurrency=2,
        per_record_results=True,
    )
    script: ClassVar[Script] = Script()

    def capabilities_for(self, object: str | None) -> Capabilities:
        return Capabilities(
            operations=self.script.operations,
            max_batch_size=1000,
            max_concurrency=2,
            per_record_results=True,
        )

    async def check(self) -> None:
        pass

    async def write_batch(self, batch: Batch) -> BatchResult:
        script = self.script
        script.calls += 1
        result = BatchResult()
        for index, (key, record) in enumerate(zip(batch.keys, batch.records(), strict=True)):
            if key in script.fail:
                result.failed[index] = "connection reset while writing"
                continue
            script.received.append(
                Received(batch.idempotency_key, batch.number, str(batch.operation), key, record)
            )
            if key in script.reject:
                result.rejected[index] = script.reject[key]
        if script.crash_on_call == script.calls:
            raise SimulatedCrash
        return result


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Iterator[Script]:
    """A fresh :class:`Script` behind destination type ``scripted`` for this test."""
    ScriptedDestination.script = fresh = Script()
    real = registry.destination_class

    def lookup(type_name: str) -> type[Destination]:
        return ScriptedDestination if type_name == "scripted" else real(type_name)

    monkeypatch.setattr(registry, "destination_class", lookup)
    monkeypatch.setattr(undertow.project, "destination_class", lookup)
    yield fresh


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
    destinations: str = "dest: {type: scripted}",
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
