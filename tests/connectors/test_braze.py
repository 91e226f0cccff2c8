"""The Braze destination against the local Braze fake (undertow.testing.braze)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
import pytest

from undertow.destinations import retry
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.braze import BrazeDestination
from undertow.destinations.kit import Item
from undertow.errors import FatalDeliveryError
from undertow.testing.braze import BrazeFake
from undertow.testing.template import FAST, DestinationTests

pytestmark = pytest.mark.connectors

KEY = "braze-rest-key-1111-2222-3333-4444"


class TestBrazeUsers(DestinationTests):
    """The shared destination suite on Braze users (attributes), matched by external_id."""

    destination = BrazeDestination
    fake = BrazeFake
    token = KEY
    secret_field = "api_key"
    object = "users"
    match = "external_id"
    fake_options: ClassVar[dict[str, Any]] = {"window_seconds": 0.3}
    invalid = ({"external_id": "u-bad", "email": "not-an-email"}, "Invalid email address")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"external_id": f"u-{n}", "first_name": f"User {n}", "plan": f"v{version}"}

    def stored(self, fake: BrazeFake, record: dict[str, Any]) -> dict[str, Any] | None:
        return fake.user("external_id", record["external_id"])

    def count(self, fake: BrazeFake) -> int:
        return len(fake.users)

    def test_bad_credentials_give_a_clear_error_naming_the_destination(
        self, served: BrazeFake
    ) -> None:
        """Braze has no read-only check endpoint: the first write proves the key."""
        report, _ = self.run(self.make(served, api_key="wrong-key-7f3a"), [self.record(0)])
        assert isinstance(report.stopped, FatalDeliveryError)
        message = str(report.stopped)
        assert "template_dest" in message and "wrong-key-7f3a" not in message
        assert report.stopped.hint and "REST API key" in report.stopped.hint


def batch(
    records: list[dict[str, Any]],
    *,
    operation: Operation = Operation.UPSERT,
    match: str = "external_id",
    object: str = "users",
    number: int = 0,
    sync: str = "s",
) -> Batch:
    return Batch(
        sync=sync,
        operation=operation,
        number=number,
        idempotency_key=f"k-{number}",
        keys=[str(r.get("_key", n)) for n, r in enumerate(records)],
        payloads=[
            orjson.dumps({k: v for k, v in r.items() if k != "_key"}).decode() for r in records
        ],
        identifiers={match: [r.get(match) for r in records]},
        object=object,
    )


def write(fake: BrazeFake, b: Batch, **config: Any) -> BatchResult:
    dest = BrazeDestination(
        BrazeDestination.Config.model_validate(
            {"type": "braze", "api_key": KEY, "base_url": fake.url, **config}
        ),
        name="braze",
    )

    async def main() -> BatchResult:
        await dest.open()
        try:
            with retry.delivery(policy=FAST, stop=asyncio.Event(), max_wait=5.0):
                return await dest.write_batch(b)
        finally:
            await dest.close()

    return asyncio.run(main())


@pytest.fixture
def fake() -> Any:
    braze = BrazeFake(KEY, window_seconds=0.3)
    with braze.serve():
        yield braze


VIEWED = [
    {"sku": "SKU-0001", "name": "Trail shoe", "viewed_at": "2026-03-01T10:00:00+00:00"},
    {"sku": "SKU-0002", "name": "Rain jacket", "viewed_at": "2026-03-02T08:30:00+00:00"},
]


def test_a_list_of_objects_arrives_as_a_braze_array_of_objects_with_nested_times(
    fake: BrazeFake,
) -> None:
    result = write(fake, batch([{"external_id": "u-1", "recently_viewed": VIEWED}]))
    assert result == BatchResult()
    stored = fake.user("external_id", "u-1")
    assert stored is not None
    assert stored["recently_viewed"] == [
        {"sku": "SKU-0001", "name": "Trail shoe", "viewed_at": {"$time": VIEWED[0]["viewed_at"]}},
        {"sku": "SKU-0002", "name": "Rain jacket", "viewed_at": {"$time": VIEWED[1]["viewed_at"]}},
    ]
    sent = fake.requests[-1].body["attributes"][0]
    assert sent["_update_existing_only"] is False


def test_nested_time_off_sends_timestamps_as_text(fake: BrazeFake) -> None:
    write(fake, batch([{"external_id": "u-1", "recently_viewed": VIEWED}]), nested_time=False)
    assert fake.user("external_id", "u-1")["recently_viewed"] == VIEWED  # type: ignore[index]


def test_an_array_of_objects_over_100_kb_is_rejected_before_braze_drops_it(
    fake: BrazeFake,
) -> None:
    big = [{"sku": f"SKU-{i}", "name": "x" * 200} for i in range(600)]
    result = write(fake, batch([{"external_id": "u-1", "a": big}, {"external_id": "u-2"}]))
    assert list(result.rejected) == [0] and "100,000" in result.rejected[0]
    assert fake.user("external_id", "u-2") is not None and fake.user("external_id", "u-1") is None


def test_update_never_creates_a_user(fake: BrazeFake) -> None:
    write(fake, batch([{"external_id": "u-1", "plan": "a"}]))
    result = write(
        fake,
        batch(
            [{"external_id": "u-1", "plan": "b"}, {"external_id": "u-9", "plan": "b"}],
            operation=Operation.UPDATE,
        ),
    )
    assert result == BatchResult()
    assert fake.user("external_id", "u-1")["plan"] == "b"  # type: ignore[index]
    assert fake.user("external_id", "u-9") is None


def test_user_alias_needs_an_alias_label_and_is_sent_as_braze_alias_objects(
    fake: BrazeFake,
) -> None:
    records = [{"user_alias": "anon-1", "plan": "a"}]
    with pytest.raises(FatalDeliveryError, match="alias_label"):
        write(fake, batch(records, match="user_alias"))
    assert fake.requests == []
    write(fake, batch(records, match="user_alias"), alias_label="amplitude_id")
    assert fake.users["alias:amplitude_id:anon-1"]["plan"] == "a"


def test_deletes_go_fifty_identifiers_a_request(fake: BrazeFake) -> None:
    records = [{"external_id": f"u-{n}"} for n in range(75)]
    write(fake, batch(records))
    assert write(fake, batch(records, operation=Operation.DELETE)) == BatchResult()
    deletes = [r for r in fake.requests if r.path == "/users/delete"]
    assert [len(r.body["external_ids"]) for r in deletes] == [50, 25]
    assert fake.users == {}


def test_events_carry_name_time_and_properties_and_need_a_time(fake: BrazeFake) -> None:
    records = [
        {"external_id": "u-1", "name": "viewed", "time": "2026-03-01T10:00:00+02:00", "sku": "A"},
        {"external_id": "u-2", "name": "viewed", "sku": "B"},
    ]
    result = write(fake, batch(records, operation=Operation.INSERT, object="events"))
    assert list(result.rejected) == [1] and "`time`" in result.rejected[1]
    [event] = fake.events
    assert event["name"] == "viewed" and event["time"] == "2026-03-01T08:00:00Z"
    assert event["properties"] == {"sku": "A"} and event["user"] == "external_id:u-1"


def test_purchases_refused_by_braze_come_back_per_object_in_its_201(fake: BrazeFake) -> None:
    good = {"external_id": "u-1", "product_id": "p", "currency": "USD", "price": 9.5}
    bad = {**good, "external_id": "u-2", "currency": "dollars"}
    records = [{**r, "time": "2026-03-01T10:00:00Z"} for r in (good, bad)]
    result = write(fake, batch(records, operation=Operation.INSERT, object="purchases"))
    assert list(result.rejected) == [1] and "Invalid currency" in result.rejected[1]
    assert [p["user"] for p in fake.purchases] == ["external_id:u-1"]


def test_subscription_groups_add_and_remove_members_in_requests_of_fifty(fake: BrazeFake) -> None:
    records = [{"external_id": f"u-{n}", "subscription_group_id": "g1"} for n in range(60)]
    add = batch(records, operation=Operation.ADD, object="subscription_groups")
    assert write(fake, add) == BatchResult()
    assert len(fake.members("g1")) == 60
    sizes = [len(r.body["subscription_groups"][0]["external_ids"]) for r in fake.requests]
    assert sizes == [50, 10]
    remove = batch(records[:10], operation=Operation.REMOVE, object="subscription_groups")
    assert write(fake, remove) == BatchResult()
    assert len(fake.members("g1")) == 50
    assert fake.requests[-1].body["subscription_groups"][0]["subscription_state"] == "unsubscribed"


def test_a_membership_row_without_a_group_is_rejected_naming_the_field(fake: BrazeFake) -> None:
    records = [{"external_id": "u-1"}, {"external_id": "u-2", "subscription_group_id": "g"}]
    result = write(fake, batch(records, operation=Operation.ADD, object="subscription_groups"))
    assert list(result.rejected) == [0] and "subscription_group_id" in result.rejected[0]


def test_one_bad_email_in_a_subscription_request_is_found_by_bisecting(fake: BrazeFake) -> None:
    records = [{"email": f"u{n}@x.com", "subscription_group_id": "g"} for n in range(20)]
    records[13]["email"] = "broken"
    b = batch(records, operation=Operation.ADD, object="subscription_groups", match="email")
    result = write(fake, b)
    assert list(result.rejected) == [13] and "Invalid email" in result.rejected[13]
    assert len(fake.members("g")) == 19


def test_a_429_waits_until_x_ratelimit_reset_and_nothing_is_lost(fake: BrazeFake) -> None:
    fake.throttle_next(1)
    assert write(fake, batch([{"external_id": "u-1"}])) == BatchResult()
    assert fake.slow_downs == 1 and fake.user("external_id", "u-1") is not None
    throttled = [r for r in fake.requests if r.status == 429]
    assert len(throttled) == 1


PLAIN_AND_NESTED = [
    {"_key": "a", "email": "a@x.com", "plan": "pro", "seats": 3, "tags": ["x", "y"]},
    {"_key": "b"},  # nothing mapped but the identifier
    {"_key": "c", "name": 'Zoë "quoted" \\ back', "score": 1.5, "gone": None},
    {"_key": "d", "recently_viewed": VIEWED},  # nested: checked and time-marked
    {"_key": "e", "external_id": "own", "plan": "free"},  # maps the match field itself
    {"_key": "f", "_update_existing_only": True},
    {"_key": "g", "note": "a {brace} in text"},  # may be nested: the per-record path
]


def _shaped(dest: BrazeDestination, b: Batch) -> tuple[bytes, list[type]]:
    from undertow.destinations.braze import TRACK
    from undertow.destinations.kit import Call

    items = dest.items(b, dest.match_field(b), BatchResult())
    body, _ = dest.encode(TRACK["users"], Call(b, items, "users", "external_id", "Braze"))
    return body or b"", [type(i) for i in items]


@pytest.mark.parametrize("operation", [Operation.UPSERT, Operation.UPDATE])
def test_records_shaped_from_their_json_text_send_what_the_per_record_path_sends(
    monkeypatch: pytest.MonkeyPatch, operation: Operation
) -> None:
    """The raw path (``shape_raw``) takes the records with nothing to check, byte for byte
    the body ``shape`` builds; nested values and fields the body sets go through ``shape``."""
    from undertow.destinations.kit import RawItem
    from undertow.destinations.kit.http import HttpDestination

    records = [{**r, "external_id": n} if n != 4 else r for n, r in enumerate(PLAIN_AND_NESTED)]
    b = batch(records, operation=operation)
    b.payloads = [  # as the map stage sends them: the match column is not a mapped field
        orjson.dumps({k: v for k, v in r.items() if k not in ("_key", "external_id")}).decode()
        if n != 4
        else orjson.dumps({k: v for k, v in r.items() if k != "_key"}).decode()
        for n, r in enumerate(records)
    ]
    dest = BrazeDestination(
        BrazeDestination.Config.model_validate({"type": "braze", "api_key": KEY}), name="b"
    )
    raw, kinds = _shaped(dest, b)
    assert kinds == [RawItem, RawItem, RawItem, Item, Item, Item, Item]
    monkeypatch.setattr(BrazeDestination, "shape_raw", HttpDestination.shape_raw)
    assert _shaped(dest, b) == (raw, [Item] * 7)


def test_records_shaped_from_their_json_text_arrive_in_the_fake(fake: BrazeFake) -> None:
    b = batch([{"external_id": f"u{n}", "plan": "pro", "seats": n} for n in range(3)])
    b.payloads = [orjson.dumps({"plan": "pro", "seats": n}).decode() for n in range(3)]
    assert write(fake, b) == BatchResult()
    assert fake.user("external_id", "u2") == {"external_id": "u2", "plan": "pro", "seats": 2}


def _track(fake: BrazeFake, attributes: list[dict[str, Any]]) -> Any:
    import urllib.request

    request = urllib.request.Request(
        fake.url + "/users/track",
        data=orjson.dumps({"attributes": attributes}),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status, orjson.loads(answer.read())


def test_the_fake_checks_each_attribute_by_its_type(fake: BrazeFake) -> None:
    """The fake's checks, taken value by value by type (plain scalars skip the nested
    walk): a refused object is named by index and the others applied; a too-big array of
    objects is dropped with a success; a null removes the attribute."""
    big = [{"sku": f"S{n}", "name": "x" * 200} for n in range(600)]  # > 100 KB
    status, body = _track(
        fake,
        [
            {"external_id": "ok", "plan": "pro", "seats": 2, "score": 0.5, "tags": ["a", "b"]},
            {"external_id": "space", "address": {"zip code": "123"}},
            {"external_id": "long", "tags": ["x" * 256]},
            {"external_id": "deep", "viewed": [{"when": {"$time": "not a time"}}]},
            {"external_id": "big", "plan": "pro", "viewed": big},
        ],
    )
    assert status == 201
    assert [(e["index"], e["type"]) for e in body["errors"]] == [
        (1, "nested key 'zip code' contains a space"),
        (2, "nested string value is longer than 255 characters"),
        (3, "'$time' value 'not a time' is not a valid time"),
    ]
    assert fake.user("external_id", "ok") == {
        "external_id": "ok",
        "plan": "pro",
        "seats": 2,
        "score": 0.5,
        "tags": ["a", "b"],
    }
    assert fake.user("external_id", "space") is None
    assert fake.user("external_id", "big") == {"external_id": "big", "plan": "pro"}
    _track(fake, [{"external_id": "ok", "plan": None}])
    assert "plan" not in (fake.user("external_id", "ok") or {})
