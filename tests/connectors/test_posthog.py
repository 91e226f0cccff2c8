"""The PostHog destination against the local capture fake (undertow.testing.posthog)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from starlette.responses import Response

from undertow.destinations import capture, retry
from undertow.destinations._http import DryRunStop, dry_run
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.posthog import NAMESPACE, PostHogDestination, event_uuid
from undertow.errors import FatalDeliveryError
from undertow.testing.fakes import CapturedRequest
from undertow.testing.posthog import PostHogFake
from undertow.testing.template import FAST, DestinationTests

pytestmark = pytest.mark.connectors

KEY = "phc_project1111key2222"


class TestPostHogUsers(DestinationTests):
    """The shared suite on person properties ($set events), by distinct_id."""

    destination = PostHogDestination
    fake = PostHogFake
    token = KEY
    secret_field = "api_key"
    object = "users"
    match = "distinct_id"
    invalid = ({"distinct_id": "u-big", "bio": "x" * 930_000}, "more than the 921,600")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"distinct_id": f"u-{n}", "plan": f"v{version}", "seats": n}

    def stored(self, fake: PostHogFake, record: dict[str, Any]) -> dict[str, Any] | None:
        found = fake.person(record["distinct_id"])
        return None if found is None else {"distinct_id": record["distinct_id"], **found}

    def count(self, fake: PostHogFake) -> int:
        return len(fake.persons)


def batch(
    records: list[dict[str, Any]],
    *,
    object: str = "events",
    operation: Operation = Operation.INSERT,
    sync: str = "views",
    number: int = 0,
) -> Batch:
    return Batch(
        sync=sync,
        operation=operation,
        number=number,
        idempotency_key="k",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={"distinct_id": [r.get("distinct_id") for r in records]},
        object=object,
    )


def write(fake: PostHogFake, *batches: Batch, **config: Any) -> list[BatchResult]:
    values = {"type": "posthog", "api_key": KEY, "base_url": fake.url, **config}
    dest = PostHogDestination(PostHogDestination.Config.model_validate(values), name="ph")

    async def go() -> list[BatchResult]:
        try:
            with retry.delivery(policy=FAST, stop=asyncio.Event(), max_wait=5.0):
                return [await dest.write_batch(b) for b in batches]
        finally:
            await dest.close()

    return asyncio.run(go())


def view(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "distinct_id": f"u-{n % 3}",
        "event": "Viewed Product",
        "timestamp": "2026-03-01T10:00:00Z",
        "sku": f"S{n}",
        **extra,
    }


def posted(fake: PostHogFake, path: str = "/batch/") -> list[CapturedRequest]:
    return [r for r in fake.requests if r.path == path]


@pytest.fixture
def fake() -> Any:
    ph = PostHogFake(KEY)
    with ph.serve():
        yield ph


def test_events_carry_a_uuid_from_the_row_key_and_a_resend_is_dropped(fake: PostHogFake) -> None:
    b = batch([view(n) for n in range(6)])  # three people, two events each
    assert write(fake, b) == [BatchResult()]
    assert write(fake, b) == [BatchResult()]
    assert len(fake.events) == 6 and fake.dropped_events == 6
    event = fake.events[0]
    assert event["uuid"] == str(uuid.uuid5(NAMESPACE, "views:0"))
    assert event["timestamp"] == "2026-03-01T10:00:00Z" and event["distinct_id"] == "u-0"
    assert event["properties"] == {"sku": "S0"}
    body = posted(fake)[0].body
    assert body["api_key"] == KEY and body["historical_migration"] is False


def test_a_mapped_uuid_is_kept_when_it_is_one_and_hashed_into_one_when_not(
    fake: PostHogFake,
) -> None:
    given = "0190a8b4-7c3e-7f00-8000-000000000001"
    write(fake, batch([view(0, uuid=given), view(1, uuid="order-77")]))
    assert [e["uuid"] for e in fake.events] == [given, str(uuid.uuid5(NAMESPACE, "order-77"))]
    assert event_uuid(None, "s:1") == str(uuid.uuid5(NAMESPACE, "s:1"))


def test_what_would_refuse_the_whole_request_is_rejected_before_sending(
    fake: PostHogFake,
) -> None:
    rows = [view(0), {**view(1), "event": ""}, view(2, timestamp="not a time"), view(3)]
    [result] = write(fake, batch(rows))
    assert sorted(result.rejected) == [1, 2] and result.failed == {}
    assert "`event`" in result.rejected[1] and "`timestamp`" in result.rejected[2]
    assert [e["properties"]["sku"] for e in fake.events] == ["S0", "S3"]


def test_a_400_for_one_event_is_bisected_and_only_that_row_is_rejected(
    fake: PostHogFake,
) -> None:
    """Capture refuses a whole request for one bad event and names none: the kit halves it."""

    def refuse_poison(request: CapturedRequest) -> Response | None:
        if request.path == "/batch/" and b"poison" in request.raw:
            return fake.respond(400, "event submitted without a distinct_id")
        return None

    fake.faults = refuse_poison
    rows = [view(n) for n in range(8)]
    rows[5]["sku"] = "poison"
    [result] = write(fake, batch(rows))
    assert list(result.rejected) == [5] and "without a distinct_id" in result.rejected[5]
    assert len(fake.events) == 7 and len(posted(fake)) > 2


def test_a_413_is_split_in_halves_until_each_part_is_accepted(fake: PostHogFake) -> None:
    """A self-hosted instance may take less than the 20 MB PostHog Cloud documents."""

    def small_bodies(request: CapturedRequest) -> Response | None:
        if request.path == "/batch/" and len(request.body["batch"]) > 2:
            return fake.respond(413, "Failed to buffer the request body: length limit exceeded")
        return None

    fake.faults = small_bodies
    [result] = write(fake, batch([view(n) for n in range(8)]))
    assert result == BatchResult() and len(fake.events) == 8
    assert fake.largest_batch == 2


def test_requests_stay_under_20_mb(fake: PostHogFake) -> None:
    rows = [view(n, blob="x" * 25_000) for n in range(1000)]
    assert write(fake, batch(rows)) == [BatchResult()]
    assert len(posted(fake)) >= 2 and all(len(r.raw) < 20_000_000 for r in posted(fake))
    assert len(fake.events) == 1000


def test_an_unknown_key_stops_the_run_before_any_event_is_sent(fake: PostHogFake) -> None:
    """Capture answers 200 to any well-formed key and drops the events of an unknown one:
    the key is proved once on /flags, which does look it up."""
    with pytest.raises(FatalDeliveryError) as caught:
        write(fake, batch([view(0)]), api_key="phc_wrong0000key")
    assert "'ph'" in str(caught.value) and "phc_" in (caught.value.hint or "")
    assert posted(fake) == [] and len(posted(fake, "/flags")) == 1


def test_without_the_key_check_an_unknown_key_loses_the_events_silently(
    fake: PostHogFake,
) -> None:
    """What verify_key: false costs (the docs say so): PostHog answers 200 and drops them."""
    assert write(fake, batch([view(0)]), api_key="phc_wrong0000key", verify_key=False) == [
        BatchResult()
    ]
    assert fake.unknown_key_events == 1 and fake.events == []


def test_an_instance_without_flags_stops_the_run_saying_how_to_skip_the_check(
    fake: PostHogFake,
) -> None:
    fake.fail_next(status=404, body="Not Found", path="/flags")
    with pytest.raises(FatalDeliveryError) as caught:
        write(fake, batch([view(0)]))
    assert "404" in str(caught.value) and "verify_key: false" in (caught.value.hint or "")
    assert posted(fake) == []


def test_a_personal_api_key_is_refused_without_a_request(fake: PostHogFake) -> None:
    with pytest.raises(FatalDeliveryError, match=r"personal API key \(phx_\)"):
        write(fake, batch([view(0)]), api_key="phx_personal0000key")
    assert fake.requests == []


def test_the_key_is_checked_once_per_destination_whatever_the_batches(fake: PostHogFake) -> None:
    write(fake, *(batch([view(n)], number=n) for n in range(4)))
    assert len(posted(fake, "/flags")) == 1 and len(posted(fake)) == 4
    assert posted(fake, "/flags")[0].query == {"v": "2"}


def test_a_historical_migration_is_sent_as_one(fake: PostHogFake) -> None:
    write(fake, batch([view(0)]), historical_migration=True)
    assert fake.historical == [True]


def test_events_at_most_once_makes_in_doubt_batches_not_resent() -> None:
    values = {"type": "posthog", "api_key": KEY, "events_at_most_once": True}
    dest = PostHogDestination(PostHogDestination.Config.model_validate(values), name="ph")
    assert dest.capabilities_for("events").at_most_once
    default = PostHogDestination(
        PostHogDestination.Config.model_validate({"type": "posthog", "api_key": KEY}), name="ph"
    )
    assert not default.capabilities_for("events").at_most_once
    assert default.capabilities_for("events").event_id == "uuid"


def test_a_dry_run_shows_the_batch_request_not_the_key_check(fake: PostHogFake) -> None:
    """``undertow test --dry-run`` stops at the first request: it must be the batch."""
    dest = PostHogDestination(
        PostHogDestination.Config.model_validate(
            {"type": "posthog", "api_key": KEY, "base_url": fake.url}
        ),
        name="ph",
    )
    seen: list[capture.Exchange] = []

    async def main() -> None:
        try:
            await dest.write_batch(batch([view(0)]))
        finally:
            await dest.close()

    with capture.listening(seen.append), dry_run(), pytest.raises(DryRunStop):
        asyncio.run(main())
    assert [e.url.split("?")[0].rsplit("/", 2)[-2:] for e in seen] == [["batch", ""]]
    assert fake.requests == [] and KEY not in (seen[0].request_body or "")
