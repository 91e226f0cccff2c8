"""HTTP answers (cases of docs/bad-input.md): only an explicit success is a success,
redirects are never followed, and no vendor wait is longer than the destination's max_wait.

Each case runs a whole project (`Project.run`) against a real local server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from project_support import run_one, users_project

from undertow.destinations import retry
from undertow.destinations._http import HttpClient
from undertow.destinations.retry import RetryPolicy
from undertow.errors import FatalDeliveryError
from undertow.project import Project
from undertow.state.store import RunStatus
from undertow.testing.hubspot import HubSpotFake
from undertow.testing.server import RunningServer, serve_in_thread
from undertow.testing.webhook import WebhookReceiver

pytestmark = pytest.mark.connectors

ROWS = [(i, f"u{i}@example.com") for i in range(1, 6)]
SYNC = """\
  out:
    model: users
    destination: dest
    mode: upsert
    mappings: {id: id, email: email}
"""
HUBSPOT_SYNC = """\
  out:
    model: users
    destination: dest
    object: contacts
    mode: upsert
    match: {email: email}
    mappings: {email: email}
"""


@pytest.fixture
def receiver() -> Iterator[tuple[WebhookReceiver, RunningServer]]:
    hook = WebhookReceiver()
    with serve_in_thread(hook.app) as server:
        yield hook, server


@pytest.fixture
def elsewhere() -> Iterator[tuple[WebhookReceiver, RunningServer]]:
    """Another origin (another port): where a redirect points."""
    hook = WebhookReceiver()
    with serve_in_thread(hook.app) as server:
        yield hook, server


def webhook_project(folder: Path, url: str, extra: str = "") -> Project:
    destination = f'dest: {{type: webhook, url: "{url}", max_concurrency: 1{extra}, headers: {{X-Api-Key: "k3y-s3cret-value"}}}}'
    return users_project(folder, ROWS, syncs=SYNC, destinations=destination)


def undelivered(project: Project, run_id: str) -> int:
    return len(project.store.not_accepted_seqs(run_id)) if run_id else 0


def test_a_302_to_a_login_page_is_not_delivered_and_not_followed(
    tmp_path: Path,
    receiver: tuple[WebhookReceiver, RunningServer],
    elsewhere: tuple[WebhookReceiver, RunningServer],
) -> None:
    hook, server = receiver
    login, login_server = elsewhere
    hook.queue_response(302, b"", headers={"Location": f"{login_server.url}/login?next=/hooks"})
    project = webhook_project(tmp_path, f"{server.url}/hooks")
    record = run_one(project, "out")
    assert record.status is RunStatus.FAILED
    assert "302, a redirect to" in (record.error or "")
    assert f"{login_server.url}/login" in (record.error or "")
    assert "next=" not in (record.error or "")  # never the query string
    assert record.counts["succeeded"] == 0
    assert login.requests == []  # the redirect was not followed
    again = run_one(project, "out")  # the rows were not counted as delivered
    assert again.status is RunStatus.SUCCEEDED and again.counts["succeeded"] == len(ROWS)
    project.close()


def test_a_304_is_not_a_success(
    tmp_path: Path, receiver: tuple[WebhookReceiver, RunningServer]
) -> None:
    hook, server = receiver
    hook.queue_response(304, b"")
    project = webhook_project(tmp_path, f"{server.url}/hooks")
    record = run_one(project, "out")
    assert record.status is RunStatus.FAILED
    assert "answered 304" in (record.error or "")
    assert record.counts["succeeded"] == 0
    assert run_one(project, "out").counts["succeeded"] == len(ROWS)
    project.close()


def test_a_307_to_another_host_never_gets_the_body_or_the_credentials(
    tmp_path: Path,
    receiver: tuple[WebhookReceiver, RunningServer],
    elsewhere: tuple[WebhookReceiver, RunningServer],
) -> None:
    hook, server = receiver
    thief, thief_server = elsewhere
    hook.queue_response(307, b"", headers={"Location": f"{thief_server.url}/steal"})
    project = webhook_project(tmp_path, f"{server.url}/hooks")
    record = run_one(project, "out")
    assert record.status is RunStatus.FAILED
    assert thief.requests == []
    assert "k3y-s3cret-value" not in (record.error or "")
    project.close()


def test_a_hubspot_redirect_stops_the_run_with_nothing_delivered(tmp_path: Path) -> None:
    fake = HubSpotFake("pat-redirect")
    with fake.serve() as url:
        fake.fail_next(status=301, body=b"", headers={"Location": "https://login.example/"})
        destination = f'dest: {{type: hubspot, token: pat-redirect, base_url: "{url}"}}'
        project = users_project(tmp_path, ROWS, syncs=HUBSPOT_SYNC, destinations=destination)
        record = run_one(project, "out")
        assert record.status is RunStatus.FAILED
        assert "HubSpot answered 301" in (record.error or "")
        assert fake.objects["contacts"] == {}
        assert run_one(project, "out").counts["succeeded"] == len(ROWS)
        project.close()


def test_a_retry_after_of_a_day_ends_the_run_failed_at_once_saying_so(
    tmp_path: Path, receiver: tuple[WebhookReceiver, RunningServer]
) -> None:
    hook, server = receiver
    hook.queue_response(429, {"error": "slow down"}, headers={"Retry-After": "86400"})
    project = webhook_project(tmp_path, f"{server.url}/hooks")
    started = time.monotonic()
    record = run_one(project, "out")
    assert time.monotonic() - started < 20
    assert record.status is RunStatus.FAILED
    error = record.error or ""
    assert "asks to wait 86,400 s" in error and "max_wait of 900 s" in error
    assert "raise `max_wait:`" in error
    assert run_one(project, "out").counts["succeeded"] == len(ROWS)
    project.close()


def test_max_wait_is_configurable_per_destination(
    tmp_path: Path, receiver: tuple[WebhookReceiver, RunningServer]
) -> None:
    hook, server = receiver
    hook.queue_response(503, {"error": "busy"}, headers={"Retry-After": "30"})
    project = webhook_project(tmp_path, f"{server.url}/hooks", ", max_wait: 5")
    record = run_one(project, "out")
    assert record.status is RunStatus.FAILED
    assert "asks to wait 30 s" in (record.error or "") and "max_wait of 5 s" in (record.error or "")
    project.close()


def test_a_vendor_wait_past_max_wait_stops_a_kit_destination_too(tmp_path: Path) -> None:
    fake = HubSpotFake("pat-wait")
    with fake.serve() as url:
        fake.fail_next(status=429, body=fake.rate_limit_body(), headers={"Retry-After": "86400"})
        destination = f'dest: {{type: hubspot, token: pat-wait, base_url: "{url}"}}'
        project = users_project(tmp_path, ROWS, syncs=HUBSPOT_SYNC, destinations=destination)
        started = time.monotonic()
        record = run_one(project, "out")
        assert time.monotonic() - started < 20
        assert record.status is RunStatus.FAILED
        assert "HubSpot (rate limited) asks to wait 86,400 s" in (record.error or "")
        project.close()


def test_running_out_of_retries_is_a_fatal_delivery_error() -> None:
    fake = HubSpotFake("pat-retries")

    async def main(url: str) -> None:
        from undertow.destinations.base import Batch, Operation
        from undertow.destinations.hubspot import HubSpotConfig, HubSpotDestination

        dest = HubSpotDestination(
            HubSpotConfig(type="hubspot", token="pat-retries", base_url=url), name="crm"
        )
        batch = Batch(
            "s",
            Operation.UPSERT,
            1,
            "k",
            ["1"],
            ['{"email":"a@x.io"}'],
            {"email": ["a@x.io"]},
            "contacts",
        )
        policy = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.002)
        try:
            with retry.delivery(policy=policy, stop=None, max_wait=60):
                await dest.write_batch(batch)
        finally:
            await dest.close()

    with fake.serve() as url:
        fake.fail_next(3, status=503)
        with pytest.raises(FatalDeliveryError, match="still failing after 3 attempts"):
            asyncio.run(main(url))
        assert len(fake.requests) == 3


def test_the_client_refuses_to_send_to_another_origin() -> None:
    client = HttpClient("https://api.hubapi.com", headers={"Authorization": "Bearer x"})
    with pytest.raises(FatalDeliveryError, match="not this destination's origin"):
        client.url("https://evil.example/collect?token=abc")
    assert client.url("https://api.hubapi.com:443/crm/v3") == "https://api.hubapi.com:443/crm/v3"
    client.allow("https://eu1.api.hubapi.com")
    assert client.url("https://eu1.api.hubapi.com/x") == "https://eu1.api.hubapi.com/x"


def test_validate_refuses_a_match_the_destination_rule_forbids(tmp_path: Path) -> None:
    sync = HUBSPOT_SYNC.replace("match: {email: email}", "match: {email: email, id: id}")
    destination = 'dest: {type: hubspot, token: pat-x, base_url: "http://127.0.0.1:9"}'
    project = users_project(tmp_path, ROWS, syncs=sync, destinations=destination)
    problems = project.validate(connect=False)
    assert any("needs exactly one match field" in p.message for p in problems), problems
    project.close()


def test_validate_asks_the_destination_about_each_sync(
    tmp_path: Path, receiver: tuple[WebhookReceiver, RunningServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    from undertow.destinations.webhook import WebhookDestination

    seen: list[tuple[str, list[str]]] = []

    async def validate_sync(self: WebhookDestination, **kw: object) -> list[str]:
        seen.append((str(kw["sync"]), list(kw["fields"])))  # type: ignore[call-overload]
        return ["field 'emial' is not a property of the vendor; did you mean 'email'?"]

    monkeypatch.setattr(WebhookDestination, "validate_sync", validate_sync)
    _, server = receiver
    project = webhook_project(tmp_path, f"{server.url}/hooks")
    problems = project.validate()
    assert seen == [("out", ["id", "email"])]
    assert any("did you mean 'email'" in p.message for p in problems), problems
    assert project.validate(connect=False) == []  # offline: no vendor call
    project.close()
