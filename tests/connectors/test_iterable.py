"""The Iterable destination against the local Iterable fake (undertow.testing.iterable)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
import pytest

from undertow.destinations import retry
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.iterable import IterableDestination
from undertow.testing.iterable import IterableFake
from undertow.testing.template import FAST, DestinationTests

pytestmark = pytest.mark.connectors

KEY = "iterable-key-1111-2222-3333"


class TestIterableUsers(DestinationTests):
    """The shared suite on Iterable users (bulkUpdate; per-record deletes)."""

    destination = IterableDestination
    fake = IterableFake
    token = KEY
    secret_field = "api_key"
    object = "users"
    match = "email"
    fake_options: ClassVar[dict[str, Any]] = {"window_seconds": 0.2}
    invalid = ({"email": "not-an-email"}, "invalidEmails: invalid email")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"email": f"user{n}@example.com", "plan": f"v{version}", "seats": n}

    def stored(self, fake: IterableFake, record: dict[str, Any]) -> dict[str, Any] | None:
        found = fake.user("email", record["email"])
        return None if found is None else {"email": found.get("email"), **found["dataFields"]}

    def count(self, fake: IterableFake) -> int:
        return len(fake.users)


def batch(
    records: list[dict[str, Any]],
    *,
    operation: Operation = Operation.UPSERT,
    object: str = "users",
    match: str = "email",
) -> Batch:
    return Batch(
        sync="s",
        operation=operation,
        number=0,
        idempotency_key="k",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={match: [r.get(match) for r in records]},
        object=object,
    )


def write(fake: IterableFake, b: Batch, **config: Any) -> BatchResult:
    values = {"type": "iterable", "api_key": KEY, "base_url": fake.url, **config}
    dest = IterableDestination(IterableDestination.Config.model_validate(values), name="it")

    async def go() -> BatchResult:
        try:
            with retry.delivery(policy=FAST, stop=asyncio.Event(), max_wait=5.0):
                return await dest.write_batch(b)
        finally:
            await dest.close()

    return asyncio.run(go())


@pytest.fixture
def fake() -> Any:
    iterable = IterableFake(KEY, window_seconds=0.2)
    with iterable.serve():
        yield iterable


def test_users_go_with_data_fields_and_a_changed_field_type_is_rejected_alone(
    fake: IterableFake,
) -> None:
    viewed = [{"sku": "S1", "viewed_at": "2026-03-01T10:00:00+00:00"}]
    assert write(fake, batch([{"email": "a@x.com", "seats": 3, "recently_viewed": viewed}])) == (
        BatchResult()
    )
    sent = fake.requests[-1].body["users"][0]
    assert sent == {"email": "a@x.com", "dataFields": {"seats": 3, "recently_viewed": viewed}}
    result = write(fake, batch([{"email": "b@x.com", "seats": "three"}, {"email": "c@x.com"}]))
    assert list(result.rejected) == [0] and "invalidDataEmails" in result.rejected[0]


def test_user_id_matching_prefers_the_user_id(fake: IterableFake) -> None:
    assert write(fake, batch([{"userId": "u-1", "plan": "a"}], match="userId")) == BatchResult()
    assert fake.requests[-1].body["users"][0]["preferUserId"] is True
    assert fake.user("userId", "u-1")["dataFields"] == {"plan": "a"}  # type: ignore[index]


def test_list_members_subscribe_and_unsubscribe_by_list(fake: IterableFake) -> None:
    records = [{"email": f"u{n}@x.com", "list_id": 77} for n in range(5)]
    records.append({"email": "bad", "list_id": 77})
    added = write(fake, batch(records, operation=Operation.ADD, object="list_members"))
    assert list(added.rejected) == [5] and "invalid email" in added.rejected[5]
    assert len(fake.members(77)) == 5
    assert fake.requests[-1].body["listId"] == 77
    removed = write(fake, batch(records[:2], operation=Operation.REMOVE, object="list_members"))
    assert removed == BatchResult() and len(fake.members(77)) == 3
    assert fake.requests[-1].path == "/api/lists/unsubscribe"


def test_a_list_id_that_is_not_a_number_is_rejected_naming_it(fake: IterableFake) -> None:
    records = [{"email": "a@x.com", "list_id": "newsletter"}]
    result = write(fake, batch(records, operation=Operation.ADD, object="list_members"))
    assert "not an Iterable list id" in result.rejected[0] and fake.requests == []


def test_events_carry_an_id_so_a_resend_updates_rather_than_adds(fake: IterableFake) -> None:
    records = [
        {"email": f"u{n}@x.com", "eventName": "viewed", "createdAt": "2026-03-01T10:00:00Z",
         "sku": f"S{n}"}
        for n in range(3)
    ]  # fmt: skip
    b = batch(records, operation=Operation.INSERT, object="events")
    assert write(fake, b) == BatchResult()
    assert write(fake, b) == BatchResult()
    assert len(fake.events) == 3 and fake.event_writes == 6
    event = fake.events["s:0"]
    assert event["createdAt"] == 1772359200 and event["dataFields"] == {"sku": "S0"}


def test_a_429_waits_the_seconds_in_the_body(fake: IterableFake) -> None:
    fake.throttle_next(1)
    assert write(fake, batch([{"email": "a@x.com"}])) == BatchResult()
    assert fake.slow_downs == 1 and fake.user("email", "a@x.com") is not None


def test_each_endpoint_is_paced_on_its_own_window(fake: IterableFake) -> None:
    """bulkUpdate at 5/s must not slow trackBulk's 10/s: two budgets, no 429."""
    users = [batch([{"email": f"u{n}@x.com"}]) for n in range(6)]
    for b in users:
        write(fake, b)
    assert fake.slow_downs == 0 and len(fake.users) == 6
