"""The collector's thresholds while a run (or a served fake) holds batches of records."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.project_support import Script, run_one, users_project
from undertow.gcpolicy import THRESHOLDS, batch_collection

SYNC = """  s:
    model: users
    destination: {dest}
    mode: upsert
    match: {{id: id}}
    mappings: {{email: email}}
"""


@pytest.fixture
def default_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*before)


@pytest.mark.usefixtures("default_thresholds")
def test_raised_inside_and_restored_after_the_outermost_block() -> None:
    with batch_collection():
        assert gc.get_threshold() == THRESHOLDS
        with batch_collection():
            assert gc.get_threshold() == THRESHOLDS
        assert gc.get_threshold() == THRESHOLDS  # the outer block still runs
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.usefixtures("default_thresholds")
def test_restored_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), batch_collection():
        raise RuntimeError("a run that failed")
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.usefixtures("default_thresholds")
def test_blocks_on_two_threads_restore_once_both_end() -> None:
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with batch_collection():
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    entered.wait(10)
    with batch_collection():
        pass
    assert gc.get_threshold() == THRESHOLDS  # the other thread's block is still open
    release.set()
    thread.join(10)
    assert gc.get_threshold() == (700, 10, 10)


def test_higher_or_switched_off_thresholds_are_left_alone() -> None:
    before = gc.get_threshold()
    try:
        for setting in ((0, 10, 10), (200_000, 10, 10)):
            gc.set_threshold(*setting)
            with batch_collection():
                assert gc.get_threshold() == setting
            assert gc.get_threshold() == setting
    finally:
        gc.set_threshold(*before)


@pytest.mark.usefixtures("default_thresholds")
def test_a_run_delivers_with_the_raised_thresholds(tmp_path: Path, script: Script) -> None:
    seen: list[tuple[int, int, int]] = []

    async def watch(destination: Any, batch: Any) -> None:
        seen.append(gc.get_threshold())

    script.behaviour = watch
    project = users_project(
        tmp_path, [(1, "a@x.com"), (2, "b@x.com")], syncs=SYNC.format(dest="dest")
    )
    try:
        assert run_one(project, "s").status == "succeeded"
    finally:
        project.close()
    assert seen and set(seen) == {THRESHOLDS}
    assert gc.get_threshold() == (700, 10, 10)
