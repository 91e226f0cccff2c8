"""The Customer.io destination against the local Track API fake (undertow.testing.customerio)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
import pytest

from undertow.destinations import retry
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.customerio import CustomerIODestination
from undertow.destinations.kit.engagement import is_ulid, stable_ulid
from undertow.testing.customerio import CustomerIOFake
from undertow.testing.template import FAST, DestinationTests

pytestmark = pytest.mark.connectors

KEY = "cio-track-key-1111-2222"


def fake_for(token: str, **options: Any) -> CustomerIOFake:
    return CustomerIOFake(token, site_id="site-1", **options)


class TestCustomerIOPeople(DestinationTests):
    """The shared suite on Customer.io people, identified by id."""

    destination = CustomerIODestination
    fake = staticmethod(fake_for)
    token = KEY
    secret_field = "api_key"
    object = "people"
    match = "id"
    config: ClassVar[dict[str, Any]] = {"site_id": "site-1"}
    invalid = ({"id": "p-bad", "email": "not-an-email"}, "is not a valid email")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"id": f"p-{n}", "plan": f"v{version}", "seats": n}

    def stored(self, fake: CustomerIOFake, record: dict[str, Any]) -> dict[str, Any] | None:
        found = fake.person("id", record["id"])
        return None if found is None else {"id": record["id"], **found}

    def count(self, fake: CustomerIOFake) -> int:
        return len(fake.people)

    def test_bad_credentials_give_a_clear_error_naming_the_destination(
        self, served: CustomerIOFake
    ) -> None:
        """The Track API has no read endpoint to check with: the first write proves it."""
        report, _ = self.run(self.make(served, api_key="wrong-7f3a"), [self.record(0)])
        assert report.stopped is not None and "template_dest" in str(report.stopped)
        assert "wrong-7f3a" not in str(report.stopped) and report.stopped.hint


def batch(
    records: list[dict[str, Any]],
    *,
    operation: Operation = Operation.UPSERT,
    object: str = "people",
    match: str = "id",
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


def write(fake: CustomerIOFake, b: Batch, **config: Any) -> BatchResult:
    values = {"type": "customerio", "site_id": "site-1", "api_key": KEY, "base_url": fake.url}
    dest = CustomerIODestination(
        CustomerIODestination.Config.model_validate({**values, **config}), name="cio"
    )

    async def go() -> BatchResult:
        try:
            with retry.delivery(policy=FAST, stop=asyncio.Event(), max_wait=5.0):
                return await dest.write_batch(b)
        finally:
            await dest.close()

    return asyncio.run(go())


@pytest.fixture
def fake() -> Any:
    cio = fake_for(KEY)
    with cio.serve():
        yield cio


def test_events_get_a_stable_ulid_and_a_resend_is_dropped(fake: CustomerIOFake) -> None:
    records = [
        {"id": f"p-{n}", "name": "viewed", "timestamp": "2026-03-01T10:00:00Z", "sku": "S"}
        for n in range(3)
    ]
    b = batch(records, operation=Operation.INSERT, object="events", sync="views")
    assert write(fake, b) == BatchResult()
    assert write(fake, b) == BatchResult()
    assert len(fake.events) == 3 and fake.dropped_events == 3
    event = fake.events[0]
    assert event["id"] == stable_ulid("views:0") and is_ulid(event["id"])
    assert event["timestamp"] == 1772359200 and event["attributes"] == {"sku": "S"}


def test_a_mapped_event_id_is_kept_when_a_ulid_and_hashed_into_one_otherwise(
    fake: CustomerIOFake,
) -> None:
    ulid = "01HZX3K7N8Q9R2S4T6V8W0Y2Z4"
    records = [
        {"email": "a@x.com", "name": "ordered", "event_id": ulid},
        {"email": "b@x.com", "name": "ordered", "event_id": "order-77"},
    ]
    b = batch(records, operation=Operation.INSERT, object="events", match="email")
    assert write(fake, b) == BatchResult()
    assert [e["id"] for e in fake.events] == [ulid, stable_ulid("order-77")]
    assert all("event_id" not in e["attributes"] for e in fake.events)


def test_objects_take_their_type_from_the_row_or_the_destination(fake: CustomerIOFake) -> None:
    rows = [{"object_id": "acme", "name": "Acme"}]
    result = write(fake, batch(rows, object="objects", match="object_id"))
    assert "object_type_id" in result.rejected[0]
    assert write(fake, batch(rows, object="objects", match="object_id"), object_type_id="1") == (
        BatchResult()
    )
    assert fake.objects[("1", "acme")] == {"name": "Acme"}
    gone = batch(rows, operation=Operation.DELETE, object="objects", match="object_id")
    assert write(fake, gone, object_type_id="1") == BatchResult() and fake.objects == {}


def test_an_item_over_32_kb_is_rejected_before_sending_and_requests_stay_under_500_kb(
    fake: CustomerIOFake,
) -> None:
    rows = [{"id": f"p-{n}", "bio": "x" * 20_000} for n in range(40)]
    rows.append({"id": "p-big", "bio": "y" * 40_000})
    result = write(fake, batch(rows))
    assert list(result.rejected) == [40] and "32,000" in result.rejected[40]
    assert len(fake.requests) >= 2 and all(len(r.raw) < 500_000 for r in fake.requests)
    assert len(fake.people) == 40


def _shaped(b: Batch) -> tuple[bytes, list[type]]:
    from undertow.destinations.customerio import BATCH_ENDPOINT
    from undertow.destinations.kit import Call

    dest = CustomerIODestination(
        CustomerIODestination.Config.model_validate(
            {"type": "customerio", "site_id": "site-1", "api_key": KEY}
        ),
        name="cio",
    )
    items = dest.items(b, dest.match_field(b), BatchResult())
    body, _ = dest.encode(BATCH_ENDPOINT, Call(b, items, b.object, "id", "Customer.io"))
    return body or b"", [type(i) for i in items]


@pytest.mark.parametrize("operation", [Operation.UPSERT, Operation.DELETE])
def test_people_shaped_from_their_json_text_send_what_the_per_record_path_sends(
    monkeypatch: pytest.MonkeyPatch, operation: Operation
) -> None:
    """People identified or deleted from the record's JSON text (``shape_raw``): byte for
    byte the body ``shape`` builds; a record holding the match field (left out of the
    attributes) goes through ``shape``."""
    from undertow.destinations.kit import Item, RawItem
    from undertow.destinations.kit.http import HttpDestination

    records: list[dict[str, Any]] = [
        {"id": 1, "email": "a@x.com", "plan": "pro", "recently_viewed": [{"sku": "S-1"}]},
        {"id": "p-2", "name": "Zoë", "seats": 3, "mrr": 12.5, "active": None},
        {"id": 3},
        {"id": 4, "plan": "free"},
    ]
    b = batch(records, operation=operation)
    b.payloads = [  # as the map stage sends them: the match column is not a mapped field
        orjson.dumps({k: v for k, v in r.items() if k != "id" or n == 3}).decode()
        for n, r in enumerate(records)
    ]
    raw, kinds = _shaped(b)
    if operation is Operation.DELETE:
        assert kinds == [RawItem] * 4
    else:
        assert kinds == [RawItem, RawItem, RawItem, Item]
    monkeypatch.setattr(CustomerIODestination, "shape_raw", HttpDestination.shape_raw)
    assert _shaped(b) == (raw, [Item] * 4)


def test_people_shaped_from_their_json_text_arrive_in_the_fake(fake: CustomerIOFake) -> None:
    b = batch([{"id": f"p{n}", "plan": "pro", "seats": n} for n in range(3)])
    b.payloads = [orjson.dumps({"plan": "pro", "seats": n}).decode() for n in range(3)]
    assert write(fake, b) == BatchResult()
    assert fake.person("id", "p2") == {"plan": "pro", "seats": 2}
    gone = batch([{"id": "p1"}], operation=Operation.DELETE)
    gone.payloads = ["{}"]
    assert write(fake, gone) == BatchResult()
    assert fake.person("id", "p1") is None and fake.person("id", "p0") is not None
