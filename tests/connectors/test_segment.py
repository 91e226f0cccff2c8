"""The Segment destination against the local Tracking API fake (undertow.testing.segment)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from undertow.destinations import capture, retry
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.segment import SegmentDestination
from undertow.testing.segment import SegmentFake
from undertow.testing.template import FAST, WRONG, DestinationTests

pytestmark = pytest.mark.connectors

KEY = "seg-write-key-1111-2222-3333"


class TestSegmentUsers(DestinationTests):
    """The shared suite on Segment identify calls, by user_id."""

    destination = SegmentDestination
    fake = SegmentFake
    token = KEY
    secret_field = "write_key"
    object = "users"
    match = "user_id"
    invalid = ({"user_id": "u-big", "bio": "x" * 33_000}, "32,000 per message")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"user_id": f"u-{n}", "plan": f"v{version}", "seats": n}

    def stored(self, fake: SegmentFake, record: dict[str, Any]) -> dict[str, Any] | None:
        found = fake.user(record["user_id"])
        return None if found is None else {"user_id": record["user_id"], **found}

    def count(self, fake: SegmentFake) -> int:
        return len(fake.users)

    def test_bad_credentials_give_a_clear_error_naming_the_destination(
        self, served: SegmentFake
    ) -> None:
        """Segment answers 200 to any write key and drops the messages of a wrong one
        (specs/segment, analytics-go#205): no error can be given; the page says so. Only an
        empty key is refused."""
        report, _ = self.run(self.make(served, write_key="wrong-7f3a-9999"), [self.record(0)])
        assert report.stopped is None
        assert served.unknown_key_messages == 1 and served.users == {}

    def test_the_secret_never_appears_in_errors_logs_or_captures(
        self, served: SegmentFake, caplog: pytest.LogCaptureFixture
    ) -> None:
        """As the template's, except that a wrong key does not stop the run (see above)."""
        seen: list[capture.Exchange] = []
        caplog.set_level(logging.DEBUG)
        with capture.listening(seen.append):
            self.run(self.make(served, write_key=WRONG), [self.record(0)])
            self.run_ok(served, [self.record(1)])
        texts = [r.getMessage() for r in caplog.records]
        for exchange in seen:
            texts += [repr(exchange.request_headers), repr(exchange.response_headers)]
            texts += [exchange.request_body or "", exchange.response_body or "", exchange.url]
        assert len(seen) == 2
        for text in texts:
            assert WRONG not in text and self.token not in text, text


def batch(
    records: list[dict[str, Any]],
    *,
    object: str = "events",
    match: str = "user_id",
    operation: Operation = Operation.INSERT,
    sync: str = "s",
) -> Batch:
    return Batch(
        sync=sync,
        operation=operation,
        number=0,
        idempotency_key="k",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={match: [r.get(match) for r in records]},
        object=object,
    )


def write(fake: SegmentFake, b: Batch) -> BatchResult:
    values = {"type": "segment", "write_key": KEY, "base_url": fake.url}
    dest = SegmentDestination(SegmentDestination.Config.model_validate(values), name="seg")

    async def go() -> BatchResult:
        try:
            with retry.delivery(policy=FAST, stop=asyncio.Event(), max_wait=5.0):
                return await dest.write_batch(b)
        finally:
            await dest.close()

    return asyncio.run(go())


@pytest.fixture
def fake() -> Any:
    seg = SegmentFake(KEY)
    with seg.serve():
        yield seg


def test_track_events_carry_a_message_id_and_a_resend_is_dropped(fake: SegmentFake) -> None:
    rows = [
        {"user_id": f"u-{n % 2}", "event": "Order Completed", "timestamp": "2026-03-01T10:00:00Z",
         "total": n}
        for n in range(4)
    ]  # fmt: skip
    b = batch(rows, sync="orders")
    assert write(fake, b) == BatchResult() and write(fake, b) == BatchResult()
    assert len(fake.events) == 4 and fake.dropped_messages == 4
    event = fake.events[0]
    assert event["messageId"] == "orders:0" and event["timestamp"] == "2026-03-01T10:00:00Z"
    assert event["properties"] == {"total": 0} and event["userId"] == "u-0"


def test_group_calls_join_users_to_a_group_with_its_traits(fake: SegmentFake) -> None:
    rows = [
        {"group_id": "acme", "user_id": "u-1", "name": "Acme", "seats": 5},
        {"group_id": "acme", "user_id": "u-2", "name": "Acme", "seats": 5},
        {"group_id": "initech", "name": "Initech"},
    ]
    result = write(fake, batch(rows, object="groups", match="group_id", operation=Operation.UPSERT))
    assert list(result.rejected) == [2] and "user_id" in result.rejected[2]
    assert fake.groups == {"acme": {"name": "Acme", "seats": 5}}
    assert fake.members["acme"] == {"userId:u-1", "userId:u-2"}


def test_a_changed_profile_is_a_new_message_and_an_unchanged_one_is_dropped(
    fake: SegmentFake,
) -> None:
    first = batch([{"user_id": "u-1", "plan": "free"}], object="users", operation=Operation.UPSERT)
    write(fake, first)
    write(fake, first)
    changed = batch([{"user_id": "u-1", "plan": "pro"}], object="users", operation=Operation.UPSERT)
    write(fake, changed)
    assert fake.dropped_messages == 1 and fake.user("u-1") == {"plan": "pro"}


def test_requests_stay_under_500_kb_and_what_segment_would_drop_is_rejected(
    fake: SegmentFake,
) -> None:
    rows = [{"user_id": f"u-{n}", "event": "Viewed", "blob": "x" * 20_000} for n in range(60)]
    rows.append({"user_id": "u-x", "event": ""})
    result = write(fake, batch(rows))
    assert list(result.rejected) == [60] and "`event`" in result.rejected[60]
    assert len(fake.requests) >= 3 and all(len(r.raw) <= 500 * 1024 for r in fake.requests)
    assert len(fake.events) == 60 and fake.invalid_messages == 0
    assert fake.requests[0].headers["content-type"] == "application/json"
