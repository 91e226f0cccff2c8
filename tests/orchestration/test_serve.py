"""`undertow serve` as a subprocess: auth, the API, triggers over HTTP, kill -9 mid-run and
restart (the same run resumes), SIGTERM (graceful: exit 0, the rest runs after restart),
/metrics and the OpenAPI document."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from undertow.state.store import RunStatus, StateStore
from undertow.testing.server import RunningServer, serve_in_thread
from undertow.testing.serving import ServeProcess, wait_for
from undertow.testing.webhook import WebhookReceiver

pytestmark = pytest.mark.timeout(120)

TOKEN = "t0ken-for-tests-123"
ROWS = 1500
SERVE = ["--interval", "0.2", "--grace", "20"]


@pytest.fixture
def receiver() -> Iterator[tuple[WebhookReceiver, RunningServer]]:
    hook = WebhookReceiver(delay=0.05)  # slow enough to kill the server mid-run
    with serve_in_thread(hook.app) as server:
        yield hook, server


def write_project(folder: Path, url: str) -> None:
    folder.mkdir(parents=True)
    with duckdb.connect(str(folder / "wh.duckdb")) as con:
        con.execute(
            f"create table users as select i as id, 'u' || i || '@x.com' as email "
            f"from range({ROWS}) t(i)"
        )
    (folder / "undertow.yml").write_text(
        f"""
name: served
sources:
  wh: {{type: duckdb, path: wh.duckdb}}
destinations:
  hook: {{type: webhook, url: "{url}/hooks", batch_size: 25, max_concurrency: 1}}
models:
  users: {{source: wh, sql: select * from users, primary_key: id}}
webhooks:
  loaded: {{token: loader-token-456}}
syncs:
  users_hook:
    model: users
    destination: hook
    mappings: {{id: id, email: email}}
    sla: 1h
  after_load:
    model: users
    destination: hook
    mappings: {{id: id}}
    after: [{{webhook: loaded}}]
    schedule: manual
"""
    )


@pytest.fixture
def served(
    tmp_path: Path, receiver: tuple[WebhookReceiver, RunningServer]
) -> Iterator[ServeProcess]:
    write_project(tmp_path / "proj", receiver[1].url)
    server = ServeProcess(tmp_path / "proj", token=TOKEN, args=SERVE)
    try:
        yield server
    finally:
        server.stop()


def runs_of(folder: Path, sync: str) -> list[Any]:
    store = StateStore(f"sqlite:///{folder / '.undertow' / 'state.db'}")
    try:
        return store.list_runs(sync)
    finally:
        store.close()


def delivered_ids(hook: WebhookReceiver) -> set[int]:
    return {int(r["id"]) for r in hook.records if "email" in r}


def test_api_auth_trigger_kill_and_resume(
    served: ServeProcess, receiver: tuple[WebhookReceiver, RunningServer]
) -> None:
    hook, _ = receiver
    served.start()
    assert served.call("GET", "/api/syncs", token=None)[0] == 401
    assert served.call("GET", "/api/syncs", token="wrong")[0] == 401
    assert served.call("GET", "/metrics", token=None)[0] == 401
    status, syncs = served.call("GET", "/api/syncs")
    assert status == 200
    by_name = {s["sync"]: s for s in syncs}
    assert by_name["users_hook"]["schedule"] == "manual"
    assert by_name["users_hook"]["sla_s"] == 3600 and by_name["users_hook"]["sla_state"] == "ok"
    assert by_name["after_load"]["after"] == ["webhook loaded"]
    assert served.call("POST", "/api/syncs/nope/trigger")[0] == 404
    status, queued = served.call("POST", "/api/syncs/users_hook/trigger", {"full": False})
    assert status == 202 and queued["queued"] is True

    # kill -9 in the middle of the run
    wait_for(lambda: len(delivered_ids(hook)) >= 200, "the first batches to arrive")
    assert served.proc is not None
    served.proc.send_signal(signal.SIGKILL)
    served.proc.wait(timeout=10)
    [killed] = runs_of(served.folder, "users_hook")
    assert killed.status == RunStatus.DELIVERING and len(delivered_ids(hook)) < ROWS

    # restart: the same run resumes from its last checkpoint and finishes
    served.start()
    wait_for(
        lambda: runs_of(served.folder, "users_hook")[0].status == RunStatus.SUCCEEDED,
        "the resumed run to finish",
    )
    [resumed] = runs_of(served.folder, "users_hook")
    assert resumed.id == killed.id and resumed.attempt == 2
    assert delivered_ids(hook) == set(range(ROWS))

    status, runs = served.call("GET", "/api/syncs/users_hook/runs")
    assert status == 200 and runs[0]["run_id"] == killed.id and runs[0]["succeeded"] == ROWS
    assert served.call("GET", f"/api/runs/{killed.id}/errors") == (200, [])

    # a webhook signal from the loader, with its own token
    assert served.call("POST", "/api/signals/loaded", {"tables": ["users"]})[0] == 401
    status, _ = served.call(
        "POST", "/api/signals/loaded", {"tables": ["users"]}, token="loader-token-456"
    )
    assert status == 202
    wait_for(
        lambda: (
            bool(runs_of(served.folder, "after_load"))
            and runs_of(served.folder, "after_load")[0].status == RunStatus.SUCCEEDED
        ),
        "the sync after the webhook signal",
    )
    assert runs_of(served.folder, "after_load")[0].trigger == "after"

    # pause and resume
    assert served.call("POST", "/api/syncs/users_hook/pause") == (
        200,
        {"sync": "users_hook", "paused": True},
    )
    assert served.call("GET", "/api/syncs/users_hook")[1]["paused"] is True
    served.call("POST", "/api/syncs/users_hook/resume")

    status, metrics = served.call("GET", "/metrics")
    assert status == 200
    assert 'undertow_runs_total{status="succeeded",sync="users_hook"} 1.0' in metrics
    assert f'undertow_rows_total{{outcome="succeeded",sync="users_hook"}} {float(ROWS)}' in metrics
    assert 'undertow_sync_sla_breached{sync="users_hook"} 0.0' in metrics
    assert 'undertow_sync_lag_seconds{sync="users_hook"}' in metrics
    assert 'undertow_run_duration_seconds_count{sync="users_hook"} 1.0' in metrics

    assert served.call("GET", "/openapi.json", token=None)[0] == 401
    status, openapi = served.call("GET", "/openapi.json")
    assert status == 200 and "/api/syncs/{sync}/trigger" in openapi["paths"]
    assert TOKEN not in json.dumps(openapi)


def test_sigterm_is_graceful_and_the_rest_runs_after_restart(
    served: ServeProcess, receiver: tuple[WebhookReceiver, RunningServer]
) -> None:
    hook, _ = receiver
    served.start()
    served.call("POST", "/api/syncs/users_hook/trigger")
    wait_for(lambda: len(delivered_ids(hook)) >= 100, "the first batches to arrive")
    assert served.proc is not None
    started = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=30) == 0
    assert time.monotonic() - started < 15
    output = served.output()
    assert "stopped" in output and TOKEN not in output
    [stopped] = runs_of(served.folder, "users_hook")
    assert stopped.status == RunStatus.CANCELLED
    assert len(delivered_ids(hook)) < ROWS

    served.start()  # the interrupted sync was queued again: the rest is sent
    wait_for(
        lambda: runs_of(served.folder, "users_hook")[0].status == RunStatus.SUCCEEDED,
        "the run after the restart",
    )
    assert delivered_ids(hook) == set(range(ROWS))
    assert runs_of(served.folder, "users_hook")[0].trigger == "resume after shutdown"
