"""A state store that fails mid-delivery must leave the run to be resumed, never end it.

If the run were marked failed while its checkpoints were not folded into the snapshot, the
next run would diff against a snapshot that misses every batch the run delivered and send
them all again. (Found by tests/chaos/test_state_store_loss.py.)
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from undertow.errors import StateError
from undertow.project import Project
from undertow.state.store import RunStatus

pytestmark = pytest.mark.unit

ROWS = 50
BATCH = 10


def make_project(folder: Path) -> Project:
    con = duckdb.connect(str(folder / "wh.duckdb"))
    try:
        con.execute(
            f"create table users as select i as id, 'u' || i || '@x.com' as email "
            f"from range({ROWS}) t(i)"
        )
    finally:
        con.close()
    (folder / "undertow.yml").write_text(
        f"""
name: p
sources:
  wh: {{type: duckdb, path: wh.duckdb}}
destinations:
  out: {{type: file, path: out.jsonl, format: jsonl}}
models:
  users: {{source: wh, sql: select * from users, primary_key: id}}
syncs:
  users_out:
    model: users
    destination: out
    mode: upsert
    batch_size: {BATCH}
    mappings: {{id: id, email: email}}
"""
    )
    return Project.load(str(folder))


def test_state_store_failure_mid_delivery_leaves_the_run_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path)
    store = project.store
    real_checkpoints, real_done = store.checkpoints, store.done_batches
    broken = {"checkpoints": 0, "failed": False}

    def checkpoints(*args: Any, **kwargs: Any) -> None:  # every checkpoint's transaction
        broken["checkpoints"] += 1
        if broken["checkpoints"] == 3:  # the third batch was written, its checkpoint not
            broken["failed"] = True
            raise StateError("the state store failed: connection lost")
        real_checkpoints(*args, **kwargs)

    def done_batches(run_id: str) -> set[int]:
        if broken["failed"]:  # still down when the run reads its checkpoints back
            broken["failed"] = False
            raise StateError("the state store failed: connection lost")
        return real_done(run_id)

    monkeypatch.setattr(store, "checkpoints", checkpoints)
    monkeypatch.setattr(store, "done_batches", done_batches)
    try:
        with pytest.raises(StateError, match="connection lost"):
            project.run(["users_out"])
        unfinished = store.unfinished_run("users_out")
        assert unfinished is not None and unfinished.status is RunStatus.DELIVERING
        monkeypatch.undo()

        [resumed] = project.run(["users_out"])
        assert (resumed.id, resumed.status, resumed.attempt) == (unfinished.id, "succeeded", 2)
        [quiet] = project.run(["users_out"])
        assert quiet.counts["planned"] == 0
    finally:
        project.close()
    lines = (tmp_path / "out.jsonl").read_bytes().splitlines()
    arrivals = Counter(orjson.loads(line)["id"] for line in lines)
    assert set(arrivals) == set(range(ROWS))
    twice = {i for i, n in arrivals.items() if n > 1}
    # only the batch whose checkpoint failed (the one in flight) arrived twice
    assert len(twice) == BATCH and max(arrivals.values()) == 2
