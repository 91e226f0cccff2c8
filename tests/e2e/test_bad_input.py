"""The bad input catalogue (``docs/bad-input.md``): one test per row of its table.

Each test proves three things: what Undertow says (the real CLI as a subprocess where the
message matters), what it does with the rows, and that nothing is lost (the rows come back
in a later run). Delivery cases run in process through the ``Project`` facade with a fast
retry policy, so a retried failure takes milliseconds, not the default backoff's seconds.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from undertow.state.store import RunStatus
from undertow.testing.hubspot import HubSpotFake
from undertow.testing.server import free_port, serve_in_thread
from undertow.testing.webhook import WebhookReceiver

if TYPE_CHECKING:
    from tests.e2e.conftest import SampleProject

from bad_support import (
    IDS,
    expect_fail,
    healthy_run_sends,
    hook,
    ids_of,
    load,
    run_once,
    users,
    write,
)

pytestmark = pytest.mark.e2e


# -- the project files ------------------------------------------------------------------------


def test_malformed_yaml(project: SampleProject) -> None:
    project.write(
        """
        name: bad
        syncs:
          s: model: users
        """
    )
    r = project.run("run", "s")
    expect_fail(r, "undertow.yml:3", "not valid YAML", "mapping values are not allowed here")


def test_unknown_keys(project: SampleProject) -> None:
    project.users([(1, "a@x.com", "free")])
    project.write(
        """
        name: bad
        sources: {warehouse: {type: duckdb, path: warehouse.duckdb}}
        destinations: {hook: {type: webhook, url: "http://127.0.0.1:9/x", batchsize: 5}}
        models: {users: {source: warehouse, sql: select * from users, primary_key: id}}
        syncs:
          s: {model: users, destination: hook, max_delete: 5}
        """
    )
    r = project.run("validate", "--offline")
    expect_fail(
        r,
        "undertow.yml:3 destinations.hook.batchsize",
        "did you mean 'batch_size'?",
        "undertow.yml:6 syncs.s.max_delete",
        "did you mean 'max_deletes'?",
    )


def test_wrong_types(project: SampleProject) -> None:
    project.write(
        """
        name: bad
        sources: {warehouse: {type: duckdb, path: warehouse.duckdb}}
        destinations: {hook: {type: webhook, url: "http://127.0.0.1:9/x"}}
        models: {users: {source: warehouse, sql: select 1 as id, primary_key: id}}
        syncs:
          s:
            model: users
            destination: hook
            batch_size: ten
            max_delete_ratio: 2
            mode: [upsert]
        """
    )
    r = project.run("validate", "--offline")
    expect_fail(
        r,
        "undertow.yml:9 syncs.s.batch_size: expected a whole number, got 'ten'",
        "undertow.yml:10 syncs.s.max_delete_ratio",
        "undertow.yml:11 syncs.s.mode",
    )


def test_unknown_source_destination_and_model_names(project: SampleProject) -> None:
    project.write(
        """
        name: bad
        sources: {warehouse: {type: duckdb, path: warehouse.duckdb}}
        destinations: {hook: {type: webhook, url: "http://127.0.0.1:9/x"}}
        models: {users: {source: warehose, sql: select 1 as id, primary_key: id}}
        syncs:
          s: {model: user, destination: hok}
        """
    )
    r = project.run("run", "s")
    expect_fail(
        r,
        "unknown source 'warehose'; did you mean 'warehouse'?",
        "unknown model 'user'; did you mean 'users'?",
        "unknown destination 'hok'; did you mean 'hook'?",
    )


def test_missing_env_secret(project: SampleProject) -> None:
    project.write(
        """
        name: bad
        destinations:
          crm: {type: hubspot, token: "${HUBSPOT_TOKEN}"}
        """
    )
    r = project.run("validate", "--offline")
    expect_fail(
        r,
        "undertow.yml:3 destinations.crm.token",
        "HUBSPOT_TOKEN is not set",
        "export HUBSPOT_TOKEN=",
        ".env",
    )


# -- the model --------------------------------------------------------------------------------


def test_sql_errors_at_compile_and_mid_stream(project: SampleProject, fake: Any) -> None:
    receiver, url = fake
    project.users([(1, "a@x.com", "1"), (2, "b@x.com", "two")])
    project.write(
        f"""
        name: bad
        sources: {{warehouse: {{type: duckdb, path: warehouse.duckdb}}}}
        destinations: {{hook: {{type: webhook, url: "{url}"}}}}
        models:
          typo: {{source: warehouse, sql: select id fro users, primary_key: id}}
          cast:
            source: warehouse
            sql: select id, cast(plan as integer) as n from users
            primary_key: id
        syncs:
          typo_sync: {{model: typo, destination: hook}}
          cast_sync: {{model: cast, destination: hook, mappings: {{id: id, n: n}}}}
        """
    )
    r = project.run("run", "typo_sync")
    expect_fail(r, "model 'typo' on source 'warehouse' failed at character", "syntax error")
    r = project.run("run", "cast_sync")
    expect_fail(r, "model 'cast' on source 'warehouse' failed", "'two' to INT32", "sent 0")
    assert receiver.requests == []
    project.sql("UPDATE users SET plan = '2' WHERE id = 2")  # the model is fixed
    r = project.run("run", "cast_sync", "--json")
    assert r.code == 0 and r.json()["succeeded"] == 2, r


def test_model_without_its_primary_key_column(project: SampleProject) -> None:
    project.users([(1, "a@x.com", "free")])
    project.write(
        """
        name: bad
        sources: {warehouse: {type: duckdb, path: warehouse.duckdb}}
        destinations: {hook: {type: webhook, url: "http://127.0.0.1:9/x"}}
        models: {users: {source: warehouse, sql: select email from users, primary_key: id}}
        syncs:
          s: {model: users, destination: hook, mappings: {email: email}}
        """
    )
    r = project.run("run", "s")
    expect_fail(r, "primary key column(s) 'id' not among its columns (email)", "primary_key")


def test_duplicate_and_null_keys(folder: Path, fake: Any) -> None:
    receiver, url = fake
    users(folder, [(1, "a@x.com", "free"), (2, "b@x.com", "free"), (2, "c@x.com", "pro"),
                   (None, "d@x.com", "free")])  # fmt: skip
    write(folder, hook(url))
    record, errors = run_once(folder)
    assert record.status is RunStatus.SUCCEEDED and record.warning is not None
    assert errors == {
        "2": "duplicate primary key: 2 rows share it",
        "NULL": "NULL primary key (id)",
    }
    assert ids_of(receiver) == [1]
    with duckdb.connect(str(folder / "warehouse.duckdb")) as con:
        con.execute("DELETE FROM users WHERE email = 'c@x.com'")
    healthy_run_sends(folder, [2])


# -- the mapping ------------------------------------------------------------------------------


def test_values_the_mapping_cannot_cast(folder: Path, fake: Any) -> None:
    receiver, url = fake
    users(folder, [(1, "a@x.com", "3"), (2, "b@x.com", "many")])
    write(folder, hook(url), mappings="{id: id, seats: {column: plan, cast: int}}")
    _record, errors = run_once(folder)
    assert errors == {"2": "field 'seats': cannot cast column 'plan' value 'many' to int"}
    assert ids_of(receiver) == [1]
    with duckdb.connect(str(folder / "warehouse.duckdb")) as con:
        con.execute("UPDATE users SET plan = '7' WHERE id = 2")
    healthy_run_sends(folder, [2])


def test_templates_that_raise(folder: Path, fake: Any) -> None:
    receiver, url = fake
    users(folder, [(1, "a@x.com", "free"), (3, "c@x.com", "free")])
    write(folder, hook(url), mappings="{id: id, share: {template: '{{ 6 // (id - 3) }}'}}")
    _record, errors = run_once(folder)
    assert errors == {
        "3": "field 'share': template failed: ZeroDivisionError: integer division or modulo by zero"
    }
    assert ids_of(receiver) == [1]
    with duckdb.connect(str(folder / "warehouse.duckdb")) as con:
        con.execute("UPDATE users SET id = 4 WHERE id = 3")
    healthy_run_sends(folder, [4])


def test_payloads_over_the_destination_size_limit(folder: Path, fake: Any) -> None:
    receiver, url = fake
    users(folder, [(1, "a@x.com", "free"), (2, "b@x.com", "x" * 5000)])
    write(folder, hook(url, ", max_record_bytes: 1000"))
    _, errors = run_once(folder)
    assert errors["2"].startswith("payload is 5")
    assert "above the destination's limit of 1000" in errors["2"]
    assert ids_of(receiver) == [1], "the big record is not sent; the others are"

    # a receiver that refuses the request (413) rejects the batch's rows; they come back
    receiver.reset()
    write(folder, hook(url))
    receiver.queue_response(413, "<html><h1>413 Request Entity Too Large</h1></html>")
    _record, errors = run_once(folder)
    assert "-> 413" in errors["2"] and "Request Entity Too Large" in errors["2"]
    assert ids_of(receiver) == []
    healthy_run_sends(folder, [2])


def test_non_utf8_and_huge_text_values(folder: Path, fake: Any) -> None:
    receiver, url = fake
    users(folder, [(1, "a@x.com", "x" * 3_000_000)])
    write(folder, hook(url))
    record, _ = run_once(folder)
    assert record.status is RunStatus.SUCCEEDED
    assert [len(r["plan"]) for r in receiver.records] == [3_000_000], "sent whole"

    # bytes that are not UTF-8: a BLOB column travels as base64 text ...
    receiver.reset()
    with duckdb.connect(str(folder / "warehouse.duckdb")) as con:
        con.execute("CREATE TABLE raw AS SELECT 7 AS id, '\\xff\\xfe'::BLOB AS payload")
    write(folder, hook(url), sql="select id, payload from raw", mappings="{id: id, p: payload}")
    record, _ = run_once(folder)
    assert [r["p"] for r in receiver.records] == ["//4="]
    # ... and decoding them as text is an error of the model, before anything is sent
    write(folder, hook(url), sql="select id, decode(payload) as p from raw", mappings="{p: p}")
    record, _ = run_once(folder)
    assert record.status is RunStatus.FAILED
    assert record.error is not None and "model 'users'" in record.error
    assert "UTF" in record.error or "utf" in record.error.lower(), record.error


# -- the destination's answers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, "<html><body>Welcome to nginx!</body></html>"),
        (200, '{"errors": [{"index": 0, "mess'),
    ],
)
def test_webhook_2xx_with_html_or_invalid_json_is_accepted(
    folder: Path, fake: Any, status: int, body: str
) -> None:
    receiver, url = fake
    users(folder)
    write(folder, hook(url))
    receiver.queue_response(status, body, times=5)
    record, errors = run_once(folder)
    assert record.status is RunStatus.SUCCEEDED and errors == {}
    assert ids_of(receiver) == IDS


def test_webhook_4xx_and_5xx_with_html(folder: Path, fake: Any) -> None:
    receiver, url = fake
    users(folder)
    write(folder, hook(url))
    receiver.queue_response(400, "<html><body>Bad Request</body></html>")
    receiver.queue_response(502, "<html><body>Bad Gateway</body></html>", times=2)
    record, errors = run_once(folder)
    assert record.status is RunStatus.FAILED
    assert errors["1"] == "destination refused the batch: POST /hook -> 400: <html><body>Bad " \
        "Request</body></html>"  # fmt: skip
    assert record.error is not None
    assert "still failing after 2 attempts: server error: POST /hook -> 502" in record.error
    assert "Bad Gateway" in record.error
    assert ids_of(receiver) == [], "batch 1 rejected, batch 2 failed, the rest not sent"
    healthy_run_sends(folder, IDS)


class HtmlProxy:
    """What sits in front of an API when things go wrong: answers every request with
    ``status`` and ``body`` (an HTML error page, a cut-off JSON document)."""

    def __init__(self, status: int, body: str) -> None:
        self.status, self.body = status, body
        self.app = Starlette(routes=[Route("/{p:path}", self.handle, methods=["GET", "POST"])])

    async def handle(self, request: Request) -> Response:
        return Response(self.body, status_code=self.status, media_type="text/html")


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (200, "<html>Service Unavailable</html>", "failed"),
        (200, '{"status": "COMPLETE", "results": [{"id": "1"', "failed"),
        (400, "<html>Bad Request</html>", "rejected"),
        (400, '{"status": "error", "mess', "rejected"),
    ],
)
def test_hubspot_answers_that_are_html_or_invalid_json(
    folder: Path, status: int, body: str, kind: str
) -> None:
    users(folder)
    crm = '{{type: hubspot, token: pat-test, base_url: "{url}"}}'
    sync = "    object: contacts\n    match: {email: email}\n"
    with serve_in_thread(HtmlProxy(status, body).app) as proxy:
        write(folder, crm.format(url=proxy.url), sync=sync, mappings="{email: email}")
        record, _ = run_once(folder)
    project = load(folder)
    try:
        errors = project.errors(record.id)
    finally:
        project.close()
    assert {e.kind for e in errors} == {kind} and len(errors) == len(IDS)
    assert "batch/upsert ->" in errors[0].reason and body[:8] in errors[0].reason
    if kind == "failed":  # a 200 that is not HubSpot's JSON confirms nothing
        assert "not confirmed" in errors[0].reason
    hubspot = HubSpotFake("pat-test")
    with serve_in_thread(hubspot.app) as server:
        write(folder, crm.format(url=server.url), sync=sync, mappings="{email: email}")
        record, errors_after = run_once(folder)
    assert record.status is RunStatus.SUCCEEDED and errors_after == {}
    emails = {f"u{i}@example.com" for i in IDS}
    assert all(hubspot.objects["contacts"].by_email(e) is not None for e in emails)


# -- the network ------------------------------------------------------------------------------


def test_unreachable_destination(folder: Path) -> None:
    users(folder)
    port = free_port()
    write(folder, hook(f"http://127.0.0.1:{port}/hook"))
    record, errors = run_once(folder)
    assert record.status is RunStatus.FAILED
    assert record.error is not None and f"127.0.0.1:{port}/hook: cannot connect" in record.error
    assert "next run retries them" in record.error
    assert list(errors) == ["1"], "stops at the first batch that still fails"
    healthy_run_sends(folder, IDS)


def test_dns_failure(folder: Path) -> None:
    users(folder)
    write(folder, hook("http://undertow-test.invalid/hook"))
    record, _errors = run_once(folder)
    assert record.status is RunStatus.FAILED
    assert record.error is not None
    assert "cannot resolve host 'undertow-test.invalid'" in record.error
    assert "check the spelling of the URL's host" in record.error
    healthy_run_sends(folder, IDS)


def test_tls_failure_plain_http_port(folder: Path, fake: Any) -> None:
    receiver, url = fake
    users(folder)
    write(folder, hook(url.replace("http://", "https://")))
    record, errors = run_once(folder)
    assert record.status is RunStatus.FAILED
    assert record.error is not None and "TLS handshake failed" in record.error
    assert "use an http:// URL" in record.error
    assert list(errors) == ["1"], "fatal: not retried, the run stops"
    assert receiver.requests == []
    healthy_run_sends(folder, IDS)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls_failure_self_signed_certificate(folder: Path, tmp_path: Path) -> None:
    users(folder)
    cert, key = _self_signed(tmp_path)
    receiver = WebhookReceiver()
    port = free_port()
    config = uvicorn.Config(
        receiver.app,
        host="127.0.0.1",
        port=port,
        log_level="critical",
        lifespan="off",
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "TLS server did not start"
            time.sleep(0.01)
        write(folder, hook(f"https://127.0.0.1:{port}/hook"))
        record, _errors = run_once(folder)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert record.status is RunStatus.FAILED
    assert record.error is not None and "TLS handshake failed" in record.error
    assert "CERTIFICATE_VERIFY_FAILED" in record.error and "self-signed" in record.error
    assert receiver.requests == []
    healthy_run_sends(folder, IDS)


def test_expired_credentials_mid_run(folder: Path, fake: Any) -> None:
    receiver, url = fake
    users(folder)
    write(folder, hook(url))
    receiver.queue_response(200, times=2)
    receiver.queue_response(401, {"error": "token expired"}, times=5)
    record, _errors = run_once(folder)
    assert record.status is RunStatus.FAILED
    assert record.error is not None and "not authorised" in record.error
    assert "-> 401" in record.error and "credentials" in record.error
    assert (record.counts["succeeded"], record.counts["failed"]) == (2, 1)
    assert ids_of(receiver) == [1, 2]
    assert sum(r.status == 401 for r in receiver.requests) == 1, "a 401 is not retried"
    healthy_run_sends(folder, [3, 4, 5])  # only the rows not yet accepted
