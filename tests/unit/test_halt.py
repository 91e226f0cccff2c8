"""A run stops through its Halt, never through signal handlers of its own: before delivery it
ends cancelled with nothing sent; in delivery the batches in flight finish and are
checkpointed; with ``handback`` (a worker's shutdown) it stays delivering and the next run
resumes it from its checkpoints, sending nothing twice."""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

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
from undertow.pipeline.halt import Halt, on_signals
from undertow.project import Project
from undertow.state.store import RunStatus

pytestmark = pytest.mark.unit


class HaltingConfig(DestinationConfig):
    type: Literal["halting"] = "halting"


class Received:
    halt: Halt | None = None
    halt_on_call = 0
    calls = 0
    keys: list[str] = []
    handlers: set[Any] = set()


class HaltingDestination(Destination):
    name: ClassVar[str] = "halting"
    Config: ClassVar[type[DestinationConfig]] = HaltingConfig
    capabilities: ClassVar[Capabilities] = Capabilities(
        operations=frozenset(Operation), max_batch_size=10, max_concurrency=2
    )

    async def check(self) -> None:
        pass

    async def write_batch(self, batch: Batch) -> BatchResult:
        Received.calls += 1
        Received.handlers.add(signal.getsignal(signal.SIGTERM))
        Received.keys.extend(batch.keys)
        if Received.halt is not None and Received.calls == Received.halt_on_call:
            Received.halt.request("test", handback=Received.halt.handback)
        return BatchResult()


@pytest.fixture(autouse=True)
def halting(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    Received.halt, Received.halt_on_call, Received.calls, Received.keys = None, 0, 0, []
    Received.handlers = set()
    real = registry.destination_class

    def lookup(type_name: str) -> type[Destination]:
        return HaltingDestination if type_name == "halting" else real(type_name)

    monkeypatch.setattr(registry, "destination_class", lookup)
    monkeypatch.setattr(undertow.project, "destination_class", lookup)
    yield


def make(folder: Path, rows: int) -> Project:
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(folder / "wh.duckdb"))
    con.execute(
        f"create table users as select range as id, 'u' || range as email from range({rows})"
    )
    con.close()
    (folder / "undertow.yml").write_text(
        """
name: halting
sources:
  wh: {type: duckdb, path: wh.duckdb}
destinations:
  out: {type: halting}
models:
  users: {source: wh, sql: select * from users, primary_key: id}
syncs:
  users_out: {model: users, destination: out, mappings: {id: id, email: email}}
"""
    )
    return Project.load(str(folder))


def test_halted_before_delivery_ends_cancelled_and_sends_nothing(tmp_path: Path) -> None:
    project = make(tmp_path, 50)
    try:
        halt = Halt()
        halt.request("shutting down")
        # set before the run: Project.run starts nothing
        assert project.run(["users_out"], halt=halt) == []
        records_before = project.store.list_runs("users_out")
        assert records_before == []
    finally:
        project.close()


def test_halted_in_delivery_finishes_the_batches_in_flight_then_cancels(tmp_path: Path) -> None:
    project = make(tmp_path, 100)  # 10 batches, 2 in flight
    try:
        halt = Halt()
        Received.halt, Received.halt_on_call = halt, 3
        [record] = project.run(["users_out"], halt=halt)
        assert record.status is RunStatus.CANCELLED, record.error
        done = project.store.done_batches(record.id)
        assert 3 <= len(done) < 10
        assert len(Received.keys) == 10 * len(done)  # every batch sent was checkpointed
        assert project.store.held_locks() == {}
        # the run installed no handler of its own: SIGTERM's stayed what the process had
        assert Received.handlers == {signal.getsignal(signal.SIGTERM)}
    finally:
        project.close()


def test_handback_leaves_the_run_delivering_and_the_next_run_resumes_it(tmp_path: Path) -> None:
    project = make(tmp_path, 100)
    try:
        halt = Halt()
        halt.handback = True
        Received.halt, Received.halt_on_call = halt, 4
        [record] = project.run(["users_out"], halt=halt)
        assert record.status is RunStatus.DELIVERING
        assert record.error is not None and "handed back (test)" in record.error
        assert project.store.held_locks() == {}
        done = project.store.done_batches(record.id)
        assert 4 <= len(done) < 10
        first = len(Received.keys)

        Received.halt = None
        [resumed] = project.run(["users_out"])
        assert (resumed.id, resumed.status) == (record.id, RunStatus.SUCCEEDED)
        assert resumed.attempt == 2
        assert len(Received.keys) - first == 100 - 10 * len(done)
        assert set(Counter(Received.keys).values()) == {1}  # nothing sent twice
    finally:
        project.close()


def test_on_signals_interrupts_at_once_outside_delivery_and_restores_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM)
    halt = Halt()
    with pytest.raises(KeyboardInterrupt), on_signals(halt):
        signal.raise_signal(signal.SIGTERM)
    assert halt.is_set() and halt.reason == "signal SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_on_signals_lets_a_delivery_finish_its_batches_until_a_second_signal() -> None:
    halt = Halt()
    with on_signals(halt), halt.delivery():
        signal.raise_signal(signal.SIGINT)  # first: only the halt
        assert halt.is_set()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # second: at once


def test_on_signals_does_nothing_off_the_main_thread() -> None:
    seen: list[Any] = []

    def other() -> None:
        with on_signals(Halt()) as halt:
            seen.append(halt)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(seen) == 1
