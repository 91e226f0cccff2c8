"""The state store's reader and writer interfaces: the store implements both, method by
method with the same signatures, and the read paths of the facade get only a reader."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import get_type_hints

import pytest

from undertow.project import Project
from undertow.state.interfaces import StateReader, StateWriter
from undertow.state.store import StateStore

pytestmark = pytest.mark.unit


def protocol_methods(protocol: type) -> list[str]:
    return [
        name
        for name, value in vars(protocol).items()
        if callable(value) and not name.startswith("_")
    ]


@pytest.mark.parametrize("protocol", [StateReader, StateWriter])
def test_the_store_implements_each_method_with_its_signature(
    protocol: type, tmp_path: Path
) -> None:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        assert isinstance(store, protocol)
        names = protocol_methods(protocol)
        assert names
        for name in names:
            wanted = inspect.signature(getattr(protocol, name))
            got = inspect.signature(getattr(StateStore, name))
            assert list(wanted.parameters) == list(got.parameters), name
            assert [p.kind for p in wanted.parameters.values()] == [
                p.kind for p in got.parameters.values()
            ], name
    finally:
        store.close()


def test_the_writer_extends_the_reader_and_the_reader_cannot_write() -> None:
    reads = set(protocol_methods(StateReader))
    writes = set(protocol_methods(StateWriter))
    assert {"create_run", "update_run", "checkpoint", "acquire_lock"} <= writes
    assert not {"create_run", "update_run", "checkpoint", "acquire_lock", "resolve_rows"} & reads
    assert StateReader in StateWriter.__mro__


def test_the_facades_read_paths_are_typed_as_a_reader() -> None:
    hints = get_type_hints(Project.reader.fget)  # type: ignore[attr-defined]
    assert hints["return"] is StateReader
    source = inspect.getsource(Project.status) + inspect.getsource(Project.errors)
    assert "self.reader." in source and "self.store." not in source
