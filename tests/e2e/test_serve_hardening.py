"""`undertow serve` as a real process: what it refuses before any handler runs, and its log.

One case per test: /docs and /openapi.json need the token, the body size limit, a deeply
nested JSON body, run-id prefixes that look like LIKE patterns, and the signal endpoint
taking the API token however it was given (environment or --token); and the run log in
--log-format json.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from undertow.state.store import StateStore
from undertow.testing.server import serve_in_thread
from undertow.testing.serving import ServeProcess, wait_for
from undertow.testing.webhook import WebhookReceiver

pytestmark = pytest.mark.timeout(120)

TOKEN = "hardening-token-9f3e1c"
HOOK_TOKEN = "loader-only-token-77a1"


def write_project(folder: Path, url: str) -> None:
    folder.mkdir(parents=True)
    with duckdb.connect(str(folder / "wh.duckdb")) as con:
        con.execute("create table users as select i as id from range(30) t(i)")
    (folder / "undertow.yml").write_text(
        f"""
name: hardened
sources:
  wh: {{type: duckdb, path: wh.duckdb}}
destinations:
  hook: {{type: webhook, url: "{url}/hooks", batch_size: 10}}
models:
  users: {{source: wh, sql: select * from users, primary_key: id}}
webhooks:
  loaded: {{}}
  own: {{token: {HOOK_TOKEN}}}
syncs:
  users_hook:
    model: users
    destination: hook
    mappings: {{id: id}}
"""
    )


@pytest.fixture(scope="module")
def hook() -> Iterator[str]:
    with serve_in_thread(WebhookReceiver().app) as server:
        yield server.url


@pytest.fixture(scope="module")
def by_env(tmp_path_factory: pytest.TempPathFactory, hook: str) -> Iterator[ServeProcess]:
    """serve with the token in UNDERTOW_API_TOKEN."""
    folder = tmp_path_factory.mktemp("env") / "proj"
    write_project(folder, hook)
    server = ServeProcess(folder, token=TOKEN, token_via="env")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def by_flag(tmp_path_factory: pytest.TempPathFactory, hook: str) -> Iterator[ServeProcess]:
    """serve with --token and --log-format json."""
    folder = tmp_path_factory.mktemp("flag") / "proj"
    write_project(folder, hook)
    args = ["--interval", "0.2", "--log-format", "json"]
    server = ServeProcess(folder, token=TOKEN, token_via="flag", args=args)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def signals(server: ServeProcess) -> int:
    store = StateStore(f"sqlite:///{server.folder / '.undertow' / 'state.db'}")
    try:
        with store.engine.connect() as conn:
            return int(conn.exec_driver_sql("select count(*) from undertow_signals").scalar() or 0)
    finally:
        store.close()


def test_docs_and_openapi_need_the_token_and_load_nothing_from_elsewhere(
    by_env: ServeProcess,
) -> None:
    assert by_env.call("GET", "/openapi.json", token=None)[0] == 401
    assert by_env.call("GET", "/openapi.json", token="wrong")[0] == 401
    status, page = by_env.call("GET", "/docs", token=None)
    assert status == 200 and "Log in" in page and "swagger" not in page.lower()  # the login form

    status, document = by_env.call("GET", "/openapi.json")
    assert status == 200 and "/api/syncs/{sync}/trigger" in document["paths"]
    status, page = by_env.call("GET", "/docs")
    assert status == 200 and "/static/vendor/swagger-ui/swagger-ui-bundle.js" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page), page  # nothing from a CDN
    status, bundle = by_env.call("GET", "/static/vendor/swagger-ui/swagger-ui-bundle.js")
    assert status == 200 and "SwaggerUIBundle" in bundle
    # only /health, /login and /static answer without the token
    assert by_env.call("GET", "/health", token=None)[0] == 200
    for path in ("/metrics", "/api/syncs", "/api/syncs/users_hook/debugger"):
        assert by_env.call("GET", path, token=None)[0] == 401, path


def test_a_body_over_the_limit_is_refused_with_413_and_nothing_is_stored(
    by_env: ServeProcess,
) -> None:
    before = signals(by_env)
    # a declared length over the limit is answered before any of the body is read
    conn = http.client.HTTPConnection("127.0.0.1", by_env.port, timeout=10)
    conn.putrequest("POST", "/api/signals/loaded")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(2 * 1024 * 1024))
    conn.endheaders()
    answer = conn.getresponse()
    assert answer.status == 413
    assert "larger than 1,048,576 bytes" in json.loads(answer.read())["detail"]
    conn.close()
    # a body streamed without a length is cut off once past the limit
    conn = http.client.HTTPConnection("127.0.0.1", by_env.port, timeout=10)
    chunks = (b"x" * 65536 for _ in range(40))
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.request(
            "POST",
            "/api/signals/loaded",
            body=chunks,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            encode_chunked=True,
        )
    assert conn.getresponse().status == 413
    conn.close()
    assert signals(by_env) == before


def test_a_deeply_nested_json_body_is_a_422_not_a_500(by_env: ServeProcess) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/api/signals/loaded", "/api/syncs/users_hook/trigger"):
        status, body = by_env.call("POST", path, raw=deep)
        assert status == 422, (path, status, body)
        assert "nests deeper" in body["detail"] or "not valid JSON" in body["detail"]
    status, body = by_env.call("POST", "/api/syncs/users_hook/trigger", raw=b"{not json")
    assert status == 422 and "not valid JSON" in body["detail"]
    assert "Traceback" not in by_env.output()


def test_run_id_prefixes_are_text_not_like_patterns(by_env: ServeProcess) -> None:
    by_env.call("POST", "/api/syncs/users_hook/trigger")
    wait_for(
        lambda: bool(by_env.call("GET", "/api/syncs/users_hook/runs")[1]),
        "a run",
        server=by_env,
    )
    run_id = by_env.call("GET", "/api/syncs/users_hook/runs")[1][0]["run_id"]
    assert by_env.call("GET", f"/api/runs/{run_id[:10]}")[1]["run_id"] == run_id
    for pattern in ("%25", "_", "2%25", run_id[:4] + "_"):  # %25 is `%` in a URL
        status, body = by_env.call("GET", f"/api/runs/{pattern}")
        assert status == 404, (pattern, body)


def test_the_signal_endpoint_takes_the_api_token_from_env_and_from_the_flag(
    by_env: ServeProcess, by_flag: ServeProcess
) -> None:
    for server in (by_env, by_flag):
        assert server.call("POST", "/api/signals/loaded", {"t": 1})[0] == 202
        assert server.call("POST", "/api/signals/loaded", {"t": 1}, token="wrong")[0] == 401
        assert server.call("POST", "/api/signals/loaded", {"t": 1}, token=None)[0] == 401
        # a signal with its own token takes that one only
        assert server.call("POST", "/api/signals/own", {}, token=HOOK_TOKEN)[0] == 202
        assert server.call("POST", "/api/signals/own", {})[0] == 401


def test_serve_logs_runs_and_decisions_as_json_lines(by_flag: ServeProcess) -> None:
    by_flag.call("POST", "/api/syncs/users_hook/trigger")

    def finished() -> list[dict[str, object]]:
        lines = [json.loads(line) for line in by_flag.output().splitlines() if line.startswith("{")]
        return [e for e in lines if e.get("event") == "run.finished"]

    wait_for(lambda: bool(finished()), "a run.finished log line", server=by_flag)
    events = [json.loads(line) for line in by_flag.output().splitlines() if line.startswith("{")]
    kinds = [e.get("event") for e in events]
    assert "sync.due" in kinds and "run.started" in kinds
    [done] = finished()
    assert done["sync"] == "users_hook" and done["status"] == "succeeded"
    assert done["counts"] == {
        "extracted": 30,
        "sent": 30,
        "succeeded": 30,
        "rejected": 0,
        "failed": 0,
    }
    assert TOKEN not in by_flag.output()
