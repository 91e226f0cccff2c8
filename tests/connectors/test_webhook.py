"""The webhook destination against the local fake receiver (undertow.testing.webhook)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import orjson
import pytest

from undertow.destinations.base import Batch, BatchResult, Operation, RateLimit
from undertow.destinations.webhook import WebhookConfig, WebhookDestination
from undertow.errors import ConfigError, FatalDeliveryError, RetryableError
from undertow.testing.server import RunningServer, free_port, serve_in_thread
from undertow.testing.webhook import WebhookReceiver

pytestmark = pytest.mark.connectors

T = TypeVar("T")
TOKEN = "whk-live-7f3a9c2e11d04b"

RECORDS = [
    {"id": 1, "email": "ada@example.com", "plan": "pro", "tags": ["a"], "meta": {"seats": 3}},
    {"id": 2, "email": "bob@example.com", "plan": "free", "tags": [], "meta": None},
    {"id": 3, "email": "cy@example.com", "plan": "team", "tags": ["b", "c"], "meta": {}},
]


def make_batch(
    records: list[dict[str, Any]] = RECORDS,
    *,
    operation: Operation = Operation.UPSERT,
    number: int = 1,
    key: str = "run-1:batch-1",
) -> Batch:
    return Batch(
        sync="users_to_hook",
        operation=operation,
        number=number,
        idempotency_key=key,
        keys=[str(r["id"]) for r in records],
        payloads=[orjson.dumps(r).decode() for r in records],
    )


def make_dest(url: str, **config: Any) -> WebhookDestination:
    return WebhookDestination(WebhookConfig(url=url, **config), name="hook")


def run(dest: WebhookDestination, action: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await action()
        finally:
            await dest.close()

    return asyncio.run(main())


@pytest.fixture
def receiver() -> WebhookReceiver:
    return WebhookReceiver()


@pytest.fixture
def server(receiver: WebhookReceiver) -> Iterator[RunningServer]:
    with serve_in_thread(receiver.app) as running:
        yield running


def test_default_body_shape_and_idempotency_header(
    receiver: WebhookReceiver, server: RunningServer
) -> None:
    dest = make_dest(server.url + "/hooks/users", headers={"X-Source": "undertow"})
    result = run(dest, lambda: dest.write_batch(make_batch(key="run-9:batch-4")))

    assert result == BatchResult()
    [request] = receiver.requests
    assert request.method == "POST"
    assert request.path == "/hooks/users"
    assert request.headers["idempotency-key"] == "run-9:batch-4"
    assert request.headers["x-source"] == "undertow"
    assert request.headers["content-type"] == "application/json"
    assert request.body == {"sync": "users_to_hook", "operation": "upsert", "records": RECORDS}
    assert receiver.records == RECORDS


@pytest.mark.parametrize("operation", list(Operation))
def test_every_operation_goes_in_the_body(
    operation: Operation, receiver: WebhookReceiver, server: RunningServer
) -> None:
    dest = make_dest(server.url, method="PUT")
    run(dest, lambda: dest.write_batch(make_batch(operation=operation)))
    [request] = receiver.requests
    assert request.method == "PUT"
    assert request.body["operation"] == operation.value


def test_custom_idempotency_header_and_resend_is_deduplicated_by_receiver(
    server: RunningServer, receiver: WebhookReceiver
) -> None:
    dest = make_dest(server.url, idempotency_header="X-Batch-Id")
    receiver.idempotency_header = "x-batch-id"

    async def twice() -> None:
        await dest.write_batch(make_batch(key="same"))
        await dest.write_batch(make_batch(key="same"))

    run(dest, twice)
    assert [r.headers["x-batch-id"] for r in receiver.requests] == ["same", "same"]
    assert [r.replayed for r in receiver.requests] == [False, True]
    assert receiver.records == RECORDS


def test_body_template_renders_records_and_batch_fields(
    receiver: WebhookReceiver, server: RunningServer
) -> None:
    template = (
        '{"batch": {{ batch }}, "key": {{ idempotency_key | tojson }}, "kind": '
        '{{ operation | tojson }}, "from": {{ sync | tojson }}, '
        '"emails": [{% for r in records %}{{ r.email | tojson }}'
        '{% if not loop.last %},{% endif %}{% endfor %}], "raw": {{ records_json }}}'
    )
    dest = make_dest(server.url, body_template=template)
    result = run(dest, lambda: dest.write_batch(make_batch(number=7, key="k7")))

    assert result == BatchResult()
    assert receiver.requests[0].body == {
        "batch": 7,
        "key": "k7",
        "kind": "upsert",
        "from": "users_to_hook",
        "emails": ["ada@example.com", "bob@example.com", "cy@example.com"],
        "raw": RECORDS,
    }
    assert receiver.requests[0].headers["idempotency-key"] == "k7"


def test_body_template_that_is_not_json_rejects_the_batch(
    receiver: WebhookReceiver, server: RunningServer
) -> None:
    dest = make_dest(server.url, body_template="emails: {{ records | length }}")
    result = run(dest, lambda: dest.write_batch(make_batch()))

    assert sorted(result.rejected) == [0, 1, 2]
    assert "did not render valid JSON" in result.rejected[0]
    assert "emails: 3" in result.rejected[0]
    assert receiver.requests == []


def test_body_template_cannot_reach_python_internals(
    receiver: WebhookReceiver, server: RunningServer
) -> None:
    attack = "{{ records.__class__.__mro__[1].__subclasses__() | tojson }}"
    dest = make_dest(server.url, body_template=attack)
    result = run(dest, lambda: dest.write_batch(make_batch()))

    assert sorted(result.rejected) == [0, 1, 2]
    assert "refused by the sandbox" in result.rejected[0]
    assert receiver.requests == []


def test_body_template_with_a_syntax_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        make_dest("http://127.0.0.1:9/", body_template='{"a": {{ records }')
    assert "body_template" in str(info.value)


def test_other_4xx_rejects_every_record_with_the_trimmed_response(
    receiver: WebhookReceiver, server: RunningServer
) -> None:
    receiver.queue_response(
        422, {"error": "field plan is not allowed"}, headers={"X-Request-Id": "req-42"}
    )
    dest = make_dest(server.url + "/hooks?sig=abcdef123")
    result = run(dest, lambda: dest.write_batch(make_batch()))

    assert sorted(result.rejected) == [0, 1, 2]
    reason = result.rejected[2]
    assert "POST /hooks -> 422 (request id req-42)" in reason
    assert "field plan is not allowed" in reason
    assert "abcdef123" not in reason
    assert result.failed == {}
    assert receiver.records == []


@pytest.mark.parametrize(("status", "retry_after"), [(503, "7"), (429, "3"), (500, None)])
def test_5xx_and_429_are_retryable_with_retry_after(
    status: int, retry_after: str | None, receiver: WebhookReceiver, server: RunningServer
) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    receiver.queue_response(status, headers=headers)
    dest = make_dest(server.url)
    with pytest.raises(RetryableError) as info:
        run(dest, lambda: dest.write_batch(make_batch()))
    assert f"-> {status}" in str(info.value)
    assert info.value.retry_after == (float(retry_after) if retry_after else None)


def test_401_is_fatal_and_the_secret_header_never_shows() -> None:
    receiver = WebhookReceiver(token="the-right-token")
    with serve_in_thread(receiver.app) as server:
        dest = make_dest(server.url, headers={"Authorization": f"Bearer {TOKEN}"})
        with pytest.raises(FatalDeliveryError) as info:
            run(dest, lambda: dest.write_batch(make_batch()))
    message = str(info.value)
    assert "401" in message
    assert receiver.requests[0].headers["authorization"] == f"Bearer {TOKEN}"  # it was sent
    assert TOKEN not in message
    assert TOKEN not in repr(dest.config)


def test_right_token_is_accepted() -> None:
    receiver = WebhookReceiver(token=TOKEN)
    with serve_in_thread(receiver.app) as server:
        dest = make_dest(server.url, headers={"Authorization": f"Bearer {TOKEN}"})
        result = run(dest, lambda: dest.write_batch(make_batch()))
    assert result == BatchResult()
    assert receiver.records == RECORDS


def test_api_key_header_value_is_redacted_from_errors() -> None:
    secret = "k3y-9d8c7b6a5f4e"
    receiver = WebhookReceiver()
    receiver.queue_response(400, {"error": f"unknown key {secret}"})
    with serve_in_thread(receiver.app) as server:
        dest = make_dest(server.url, headers={"X-Api-Key": secret})
        result = run(dest, lambda: dest.write_batch(make_batch()))
    assert "unknown key ***" in result.rejected[0]
    assert secret not in result.rejected[0]


def test_unreachable_url_is_retryable_and_check_says_why() -> None:
    port = free_port()  # nothing listens there
    dest = make_dest(f"http://127.0.0.1:{port}/hooks")
    with pytest.raises(RetryableError) as info:
        run(dest, lambda: dest.write_batch(make_batch()))
    assert "cannot connect" in str(info.value)

    with pytest.raises(FatalDeliveryError) as check:
        run(dest, dest.check)
    assert f"cannot connect to 127.0.0.1:{port}" in str(check.value)
    assert "hint:" in str(check.value)


def test_check_opens_a_connection_but_sends_nothing(
    receiver: WebhookReceiver, server: RunningServer
) -> None:
    dest = make_dest(server.url + "/hooks")
    run(dest, dest.check)
    assert receiver.requests == []


def test_check_reports_an_unknown_host() -> None:
    dest = make_dest("http://no-such-host.invalid/hooks")
    with pytest.raises(FatalDeliveryError) as info:
        run(dest, dest.check)
    assert "cannot resolve host 'no-such-host.invalid'" in str(info.value)


def test_per_record_errors_in_a_2xx_body_reject_those_records(
    receiver: WebhookReceiver, server: RunningServer
) -> None:
    receiver.queue_response(
        200,
        {"errors": [{"index": 1, "message": "email bounced"}, {"index": 99, "message": "x"}]},
    )
    dest = make_dest(server.url)
    result = run(dest, lambda: dest.write_batch(make_batch()))
    assert result.rejected == {1: "receiver rejected the record: email bounced"}
    assert result.accepted(3) == 2
    assert receiver.records == [RECORDS[0], RECORDS[2]]


def test_slow_receiver_times_out_as_retryable(
    receiver: WebhookReceiver, server: RunningServer
) -> None:
    receiver.queue_response(200, delay=1.0)
    dest = make_dest(server.url, timeout=0.2)
    with pytest.raises(RetryableError) as info:
        run(dest, lambda: dest.write_batch(make_batch()))
    assert "timed out after 0.2s" in str(info.value)


def test_capabilities_follow_the_config() -> None:
    dest = make_dest(
        "https://example.com/h",
        batch_size=250,
        max_concurrency=2,
        rate_limit={"requests": 10, "per_seconds": 1},
    )
    caps = dest.capabilities_for(None)
    assert caps.max_batch_size == 250
    assert caps.max_concurrency == 2
    assert caps.rate_limit == RateLimit(10, 1.0)
    assert caps.operations == frozenset(Operation)
    assert caps.idempotency_key and caps.per_record_results


def test_rate_limit_and_concurrency_are_declared_for_the_deliver_stage() -> None:
    # pacing is the deliver stage's job (tests/unit/test_deliver.py): the destination
    # declares its configured limits through capabilities_for
    dest = make_dest(
        "http://127.0.0.1:9",
        rate_limit={"requests": 2, "per_seconds": 0.5},
        max_concurrency=3,
        batch_size=50,
    )
    caps = dest.capabilities_for(None)
    assert caps.rate_limit is not None
    assert (caps.rate_limit.requests, caps.rate_limit.per_seconds) == (2, 0.5)
    assert caps.max_concurrency == 3 and caps.max_batch_size == 50


def test_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="not an http"):
        WebhookConfig(url="ftp://example.com/x")


def test_fast_mode_counts_records_only() -> None:
    receiver = WebhookReceiver(fast=True)
    with serve_in_thread(receiver.app) as server:
        dest = make_dest(server.url)

        async def many() -> None:
            await asyncio.gather(*(dest.write_batch(make_batch(key=f"k{i}")) for i in range(20)))

        run(dest, many)
    assert receiver.record_count == 60
    assert receiver.requests == [] and receiver.records == []
