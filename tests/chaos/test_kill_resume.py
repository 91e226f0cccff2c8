"""kill -9 in the middle of a run, then run again: nothing lost, nothing sent twice except the
batches in flight at the kill (and those carry the same idempotency key)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from undertow.state.store import RunStatus, StateStore
from undertow.testing.server import RunningServer, serve_in_thread
from undertow.testing.webhook import WebhookReceiver

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]

ROWS = 20_000
BATCH = 100
CONCURRENCY = 4
UNDERTOW = str(Path(sys.executable).with_name("undertow"))


@pytest.fixture
def receiver() -> Iterator[tuple[WebhookReceiver, RunningServer]]:
    hook = WebhookReceiver(delay=0.03)  # slow enough that the run is still going at the kill
    with serve_in_thread(hook.app) as server:
        yield hook, server


def write_project(folder: Path, url: str) -> None:
    con = duckdb.connect(str(folder / "wh.duckdb"))
    try:
        con.execute(
            f"create table users as select i as id, 'u' || i || '@x.com' as email, "
            f"'plan' || (i % 7) as plan from range({ROWS}) t(i)"
        )
    finally:
        con.close()
    (folder / "undertow.yml").write_text(
        f"""
name: chaos
sources:
  wh: {{type: duckdb, path: wh.duckdb}}
destinations:
  hook: {{type: webhook, url: "{url}/hooks", batch_size: {BATCH},
          max_concurrency: {CONCURRENCY}}}
models:
  users: {{source: wh, sql: select * from users, primary_key: id}}
syncs:
  users_hook:
    model: users
    destination: hook
    mode: upsert
    mappings: {{id: id, email: email, plan: plan}}
"""
    )


def command(folder: Path) -> list[str]:
    return [UNDERTOW, "run", "users_hook", "--project", str(folder), "--json"]


def run_to_end(folder: Path) -> dict[str, Any]:
    done = subprocess.run(command(folder), capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    [line] = done.stdout.splitlines()
    result: dict[str, Any] = orjson.loads(line)
    return result


def settle(hook: WebhookReceiver) -> None:
    """Wait until the receiver has logged every request it was handling."""
    count, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 0.5:
        if len(hook.requests) != count:
            count, stable_since = len(hook.requests), time.monotonic()
        time.sleep(0.02)


def test_kill_9_mid_run_then_resume(
    tmp_path: Path, receiver: tuple[WebhookReceiver, RunningServer]
) -> None:
    hook, server = receiver
    write_project(tmp_path, server.url)
    total_batches = ROWS // BATCH

    proc = subprocess.Popen(command(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while len(hook.requests) < 20:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the receiver saw no batches within 30s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        assert proc.stdout and proc.stderr
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    settle(hook)  # requests in flight at the kill are logged once their answer is written
    seen_at_kill = {r.headers["idempotency-key"] for r in hook.requests}
    assert len(seen_at_kill) < total_batches, "the run finished before the kill"

    store = StateStore(f"sqlite:///{tmp_path / '.undertow' / 'state.db'}")
    try:
        crashed = store.unfinished_run("users_hook")
        assert crashed is not None and crashed.status is RunStatus.DELIVERING
        assert store.held_locks()["users_hook"]["pid"] == proc.pid  # the dead holder's lock
    finally:
        store.close()

    resumed = run_to_end(tmp_path)
    assert resumed["run_id"] == crashed.id
    assert resumed["status"] == "succeeded", resumed["error"]
    assert resumed["attempt"] == 2
    assert resumed["planned"] == ROWS

    # final state at the receiver: the last payload per key equals the model
    final: dict[int, dict[str, Any]] = {}
    for record in hook.records:
        final[record["id"]] = record
    expected = {i: {"id": i, "email": f"u{i}@x.com", "plan": f"plan{i % 7}"} for i in range(ROWS)}
    assert final == expected

    # duplicates only for the batches in flight at the kill, each under the same key
    by_key: dict[str, list[Any]] = defaultdict(list)
    batches_of_id: dict[int, set[str]] = defaultdict(set)
    for request in hook.requests:
        key = request.headers["idempotency-key"]
        by_key[key].append(request)
        for record in request.body["records"]:
            batches_of_id[record["id"]].add(key)
    assert len(by_key) == total_batches
    assert all(key.startswith(crashed.id) for key in by_key)
    assert set(batches_of_id) == set(range(ROWS))  # every key arrived at least once
    assert all(len(keys) == 1 for keys in batches_of_id.values())  # never in two batches
    resent = {key for key, requests in by_key.items() if len(requests) > 1}
    assert len(resent) <= CONCURRENCY
    assert resent <= seen_at_kill
    assert all(len(by_key[key]) == 2 for key in resent)
    assert len(hook.requests) == total_batches + len(resent)

    # and a further run sends nothing
    before = len(hook.requests)
    again = run_to_end(tmp_path)
    assert again["status"] == "succeeded"
    assert (again["run_id"] != crashed.id, again["planned"], again["sent"]) == (True, 0, 0)
    assert len(hook.requests) == before
