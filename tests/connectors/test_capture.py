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


def test_a_one_record_request_is_captured_with_its_own_key() -> None:
    """Stripe writes one customer per request: each exchange names its record, so the
    debugger's "why did row 42 fail?" finds that row's request, not every request of the
    batch."""
    from undertow.destinations.stripe import StripeConfig, StripeDestination
    from undertow.testing.stripe import StripeFake

    key = "sk_test_51Ncapturekeys000000000000000000000"
    stripe = StripeFake(key)
    records = [{"email": f"c{n}@example.com", "name": f"C {n}"} for n in range(3)]
    b = Batch(
        sync="billing",
        operation=Operation.UPSERT,
        number=1,
        idempotency_key="k",
        keys=["10", "11", "12"],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={"email": [r["email"] for r in records]},
        object="customers",
    )
    seen: list[capture.Exchange] = []
    with stripe.serve():
        config = StripeConfig.model_validate(
            {"type": "stripe", "api_key": key, "base_url": stripe.url}
        )

        async def main() -> None:
            dest = StripeDestination(config, name="billing")
            try:
                with capture.context(sync="billing", keys=tuple(b.keys)):
                    await dest.write_batch(b)
            finally:
                await dest.close()

        with capture.listening(seen.append):
            asyncio.run(main())
    writes = [e for e in seen if e.method == "POST"]
    assert len(writes) == 3
    assert sorted(e.context.keys for e in writes) == [("10",), ("11",), ("12",)]
    searches = [e for e in seen if e.method == "GET"]
    assert searches and all(len(e.context.keys) == 1 for e in searches)
