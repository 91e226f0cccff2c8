"""The Amplitude destination against the local fake (undertow.testing.amplitude)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
import pytest

from undertow.destinations import retry
from undertow.destinations.amplitude import AmplitudeDestination
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.testing.amplitude import AmplitudeFake
from undertow.testing.template import FAST, DestinationTests

pytestmark = pytest.mark.connectors

KEY = "amp-api-key-1111-2222-3333"


class TestAmplitudeUsers(DestinationTests):
    """The shared suite on Amplitude user properties (Identify API), by user_id."""

    destination = AmplitudeDestination
    fake = AmplitudeFake
    token = KEY
    secret_field = "api_key"
    object = "users"
    match = "user_id"
    config: ClassVar[dict[str, Any]] = {"throttle_seconds": 0.05}
    invalid = ({"user_id": "abc", "plan": "x"}, "Invalid id length")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"user_id": f"user-{n}", "plan": f"v{version}", "seats": n}

    def stored(self, fake: AmplitudeFake, record: dict[str, Any]) -> dict[str, Any] | None:
        found = fake.user(record["user_id"])
        return None if found is None else {"user_id": record["user_id"], **found}

    def count(self, fake: AmplitudeFake) -> int:
        return len(fake.users)

    def test_bad_credentials_give_a_clear_error_naming_the_destination(
        self, served: AmplitudeFake
    ) -> None:
        """Ingestion has no read endpoint to check with: the first write proves the key."""
        report, _ = self.run(self.make(served, api_key="wrong-7f3a-9999"), [self.record(0)])
        assert report.stopped is not None and "template_dest" in str(report.stopped)
        assert "wrong-7f3a-9999" not in str(report.stopped) and report.stopped.hint


def events_batch(records: list[dict[str, Any]], sync: str = "views") -> Batch:
    return Batch(
        sync=sync,
        operation=Operation.INSERT,
        number=0,
        idempotency_key="k",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={"user_id": [r.get("user_id") for r in records]},
        object="events",
    )


def write(fake: AmplitudeFake, b: Batch, **config: Any) -> tuple[BatchResult, Any]:
    values = {
        "type": "amplitude",
        "api_key": KEY,
        "base_url": fake.url,
        "throttle_seconds": 0.05,
        **config,
    }
    dest = AmplitudeDestination(AmplitudeDestination.Config.model_validate(values), name="amp")

    async def go() -> BatchResult:
        try:
            with retry.delivery(policy=FAST, stop=asyncio.Event(), max_wait=5.0):
                return await dest.write_batch(b)
        finally:
            await dest.close()

    return asyncio.run(go()), dest.stats


def view(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "user_id": f"user-{n % 4}",
        "event_type": "Viewed Product",
        "time": "2026-03-01T10:00:00Z",
        "sku": f"S{n}",
        **extra,
    }


def test_events_carry_an_insert_id_and_a_resend_is_dropped() -> None:
    fake = AmplitudeFake(KEY)
    with fake.serve():
        b = events_batch([view(n) for n in range(8)])
        assert write(fake, b)[0] == BatchResult()
        assert write(fake, b)[0] == BatchResult()
    assert len(fake.events) == 8 and fake.dropped_events == 8
    event = fake.events[0]
    assert event["insert_id"] == "views:0" and event["time"] == 1772359200000
    assert event["event_properties"] == {"sku": "S0"}


def test_events_amplitude_names_in_a_400_are_rejected_and_the_others_resent() -> None:
    fake = AmplitudeFake(KEY)
    with fake.serve():
        rows = [view(0), view(1, time="2026-03-01T10:00:01Z"), view(2)]
        b = events_batch(rows)
        first = fake.requests
        answer_400 = {
            "code": 400,
            "error": "Request contains invalid or missing fields",
            "events_with_invalid_fields": {"time": [1]},
            "events_with_missing_fields": {},
        }
        fake.fail_next(1, status=400, body=answer_400)
        result, _ = write(fake, b)
    assert list(result.rejected) == [1] and "invalid field 'time'" in result.rejected[1]
    assert result.failed == {} and [e["event_properties"]["sku"] for e in fake.events] == [
        "S0",
        "S2",
    ]
    assert len(first) == 2 and len(first[1].body["events"]) == 2


def test_a_413_splits_the_request_and_sends_each_half() -> None:
    fake = AmplitudeFake(KEY, max_bytes=4_000)
    with fake.serve():
        result, _ = write(fake, events_batch([view(n, blob="x" * 300) for n in range(20)]))
    assert result == BatchResult() and len(fake.events) == 20
    sent = [r for r in fake.requests if len(r.raw) <= 4_000]  # the others were answered 413
    assert fake.too_large >= 1 and sum(len(r.body["events"]) for r in sent) == 20


def test_a_throttled_user_waits_and_nothing_is_lost() -> None:
    fake = AmplitudeFake(KEY, eps_threshold=30, throttle_seconds=0.2)
    with fake.serve():
        rows = [view(n, user_id="hot-user") for n in range(50)]
        result, stats = write(fake, events_batch(rows), throttle_seconds=0.3)
    assert result == BatchResult() and len(fake.events) == 50
    # at most 30 events of one user a request; the second waits until the second has passed
    sizes = [len(r.body["events"]) for r in fake.requests]
    assert sizes[:2] == [30, 20] and set(sizes[2:]) == {20}
    assert fake.slow_downs == stats.slow_downs == len(sizes) - 2 >= 1


def test_events_without_event_type_or_with_a_short_id_are_rejected_before_sending() -> None:
    fake = AmplitudeFake(KEY)
    with fake.serve():
        rows = [{**view(0), "event_type": ""}, view(1, user_id="u1"), view(2)]
        result, _ = write(fake, events_batch(rows))
    assert sorted(result.rejected) == [0, 1]
    assert "`event_type`" in result.rejected[0] and "min_id_length" in result.rejected[1]
    assert len(fake.events) == 1


def test_identifications_shaped_from_their_json_text_are_what_shape_makes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Users go through ``shape_raw`` unless the record maps an id field itself; the body
    is byte for byte the per-record one, and the fake reads it (form encoded)."""
    from undertow.destinations.kit import Call, RawItem
    from undertow.destinations.kit.http import HttpDestination

    records = [
        {"plan": "pro", "note": "50% off & more = good"},
        {},
        {"device_id": "dev-12345", "plan": "free"},
    ]
    b = Batch(
        sync="users",
        operation=Operation.UPSERT,
        number=0,
        idempotency_key="k",
        keys=["0", "1", "2"],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={"user_id": ["user-0@x.com", "user-1@x.com", "user-2@x.com"]},
        object="users",
    )
    fake = AmplitudeFake(KEY)
    dest = AmplitudeDestination(
        AmplitudeDestination.Config.model_validate({"type": "amplitude", "api_key": KEY}),
        name="amp",
    )

    def shaped() -> tuple[bytes | None, list[type]]:
        items = dest.items(b, "user_id", BatchResult())
        body, _ = dest.encode(dest.identify, Call(b, items, "users", "user_id", "Amplitude"))
        return body, [type(i) for i in items]

    raw, kinds = shaped()
    assert kinds[:2] == [RawItem, RawItem] and kinds[2] is not RawItem
    with fake.serve():
        assert write(fake, b)[0] == BatchResult()
    assert fake.user("user-0@x.com") == {"plan": "pro", "note": "50% off & more = good"}
    monkeypatch.setattr(AmplitudeDestination, "shape_raw", HttpDestination.shape_raw)
    assert shaped()[0] == raw
