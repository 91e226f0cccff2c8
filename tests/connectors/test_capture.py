"""The capture hook: every request a destination sends is seen once, redacted and in context."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest

from undertow.destinations import capture
from undertow.destinations.base import Batch, Operation
from undertow.destinations.webhook import WebhookConfig, WebhookDestination
from undertow.pipeline.deliver import RetryPolicy, TokenBucket, send_with_retries
from undertow.testing.server import RunningServer, free_port, serve_in_thread
from undertow.testing.webhook import WebhookReceiver

pytestmark = pytest.mark.connectors

TOKEN = "cap-secret-9d1e/77+ab"


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with serve_in_thread(WebhookReceiver().app) as running:
        yield running


def batch() -> Batch:
    records = [{"id": 1, "email": "ada@example.com"}, {"id": 2, "email": "bob@example.com"}]
    return Batch(
        sync="users_to_hook",
        operation=Operation.UPSERT,
        number=7,
        idempotency_key="run-1-7",
        keys=["1", "2"],
        payloads=[orjson.dumps(r).decode() for r in records],
    )


def send(dest: WebhookDestination) -> None:
    async def main() -> None:
        try:
            await send_with_retries(
                dest, batch(), TokenBucket(None), RetryPolicy(max_attempts=1), asyncio.Event()
            )
        finally:
            await dest.close()

    asyncio.run(main())


def test_each_request_is_captured_with_its_batch_context_and_no_secret(
    server: RunningServer,
) -> None:
    seen: list[capture.Exchange] = []
    dest = WebhookDestination(
        WebhookConfig(url=server.url + "/hooks?api_key=" + TOKEN, headers={"X-Api-Key": TOKEN}),
        name="hook",
    )
    with capture.listening(seen.append):
        send(dest)

    [exchange] = seen
    assert exchange.method == "POST"
    assert exchange.status == 200
    assert exchange.path == "/hooks"
    assert "?" not in exchange.url
    assert exchange.context.sync == "users_to_hook"
    assert exchange.context.destination == "hook"
    assert exchange.context.batch == 7
    assert exchange.context.keys == ("1", "2")
    assert exchange.request_body is not None and "ada@example.com" in exchange.request_body
    assert TOKEN not in repr(exchange)
    assert exchange.request_headers["x-api-key"] == "***"


def test_a_transport_failure_is_captured_with_its_error() -> None:
    seen: list[capture.Exchange] = []
    dest = WebhookDestination(
        WebhookConfig(url=f"http://127.0.0.1:{free_port()}/hooks"), name="hook"
    )
    with capture.listening(seen.append):
        send(dest)
    [exchange] = seen
    assert exchange.status is None
    assert exchange.error


def test_no_listener_no_exchange_and_a_failing_listener_never_fails_the_send(
    server: RunningServer,
) -> None:
    assert not capture.active()

    def broken(exchange: capture.Exchange) -> None:
        raise RuntimeError("listener bug")

    dest = WebhookDestination(WebhookConfig(url=server.url + "/hooks"), name="hook")
    with capture.listening(broken):
        send(dest)  # does not raise
    assert not capture.active()
