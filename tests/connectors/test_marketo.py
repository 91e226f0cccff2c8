"""The Marketo destination against the local Marketo fake (undertow.testing.marketo)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
import pytest

from undertow.destinations import retry
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.marketo import MarketoDestination
from undertow.errors import FatalDeliveryError
from undertow.testing.marketo import MarketoFake
from undertow.testing.template import FAST, DestinationTests

pytestmark = pytest.mark.connectors

SECRET = "marketo-secret-1111-2222-3333"


class TestMarketoLeads(DestinationTests):
    """The shared suite on leads (push with a lookup field; deletes by id after a lookup)."""

    destination = MarketoDestination
    fake = MarketoFake
    token = SECRET
    secret_field = "client_secret"
    object = "leads"
    match = "email"
    config: ClassVar[dict[str, Any]] = {"client_id": "demo-client"}
    invalid = ({"email": "not-an-email"}, "Invalid email address")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"email": f"user{n}@example.com", "firstName": f"v{version}", "seats": n}

    def stored(self, fake: MarketoFake, record: dict[str, Any]) -> dict[str, Any] | None:
        return fake.lead("email", record["email"])

    def count(self, fake: MarketoFake) -> int:
        return len(fake.leads)


def batch(
    records: list[dict[str, Any]],
    *,
    operation: Operation = Operation.UPSERT,
    object: str = "leads",
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


def make(fake: MarketoFake, **config: Any) -> MarketoDestination:
    values = {"type": "marketo", "client_id": "demo-client", "client_secret": SECRET,
              "base_url": fake.url, **config}  # fmt: skip
    return MarketoDestination(MarketoDestination.Config.model_validate(values), name="mk")


def write(fake: MarketoFake, *batches: Batch, dest: MarketoDestination | None = None,
          **config: Any) -> list[BatchResult]:  # fmt: skip
    dest = dest or make(fake, **config)

    async def go() -> list[BatchResult]:
        try:
            with retry.delivery(policy=FAST, stop=asyncio.Event(), max_wait=5.0):
                return list(await asyncio.gather(*(dest.write_batch(b) for b in batches)))
        finally:
            await dest.close()

    return asyncio.run(go())


@pytest.fixture
def fake() -> Any:
    marketo = MarketoFake(SECRET)
    with marketo.serve():
        yield marketo


def test_leads_are_pushed_with_the_match_field_as_lookup_field(fake: MarketoFake) -> None:
    [result] = write(fake, batch([{"externalId": "X1", "firstName": "Ada"}], match="externalId"),
                     partition="Europe")  # fmt: skip
    assert result == BatchResult()
    sent = fake.requests[-1].body
    assert sent == {"action": "createOrUpdate", "lookupField": "externalId",
                    "partitionName": "Europe", "input": [{"externalId": "X1", "firstName": "Ada"}]}  # fmt: skip
    assert fake.requests[0].path == "/identity/oauth/token"
    assert "client_secret" not in repr(fake.requests[0].headers)


def test_update_is_update_only_and_a_lead_marketo_lacks_is_rejected_with_1004(
    fake: MarketoFake,
) -> None:
    write(fake, batch([{"email": "a@x.com"}]))
    [result] = write(fake, batch([{"email": "a@x.com", "title": "CTO"}, {"email": "b@x.com"}],
                                 operation=Operation.UPDATE))  # fmt: skip
    assert fake.requests[-1].body["action"] == "updateOnly"
    assert list(result.rejected) == [1] and result.rejected[1] == "Marketo 1004: Lead not found"
    assert fake.lead("email", "a@x.com")["title"] == "CTO"  # type: ignore[index]
    assert fake.lead("email", "b@x.com") is None


def test_an_expired_token_in_an_http_200_logs_in_again_once_and_nothing_is_lost(
    fake: MarketoFake,
) -> None:
    dest = make(fake)
    write(fake, batch([{"email": "a@x.com"}]), dest=make(fake))
    fake.expire_tokens()

    async def go() -> list[BatchResult]:
        try:
            with retry.delivery(policy=FAST, stop=asyncio.Event(), max_wait=5.0):
                first = await dest.write_batch(batch([{"email": "b@x.com"}]))
                fake.expire_tokens()
                second = await dest.write_batch(batch([{"email": "c@x.com"}]))
                return [first, second]
        finally:
            await dest.close()

    assert asyncio.run(go()) == [BatchResult(), BatchResult()]
    assert dest.marketo_auth.logins == 2 and len(fake.leads) == 3


def test_the_daily_quota_607_stops_the_run_saying_when_it_renews() -> None:
    fake = MarketoFake(SECRET, daily_quota=1)
    with fake.serve():
        write(fake, batch([{"email": "a@x.com"}]))
        with pytest.raises(FatalDeliveryError) as caught:
            write(fake, batch([{"email": "b@x.com"}]))
    assert "607" in str(caught.value) and "midnight" in (caught.value.hint or "")


def test_every_sync_on_the_instance_stays_within_ten_calls_at_once() -> None:
    fake = MarketoFake(SECRET, hold=0.05)
    with fake.serve():
        batches = [batch([{"email": f"u{n}@x.com"}]) for n in range(30)]
        assert write(fake, *batches, max_concurrency=10) == [BatchResult()] * 30
    assert fake.slow_downs == 0 and fake.most_in_flight == 10


def test_list_members_are_pushed_then_added_by_id_and_removed_after_a_lookup(
    fake: MarketoFake,
) -> None:
    fake.add_list(1001)
    rows = [{"email": f"u{n}@x.com", "list_id": 1001} for n in range(4)]
    rows.append({"email": "bad", "list_id": 1001})
    [added] = write(fake, batch(rows, operation=Operation.ADD, object="list_members"))
    assert list(added.rejected) == [4] and "Invalid email" in added.rejected[4]
    assert len(fake.lists[1001]) == 4 and len(fake.leads) == 4
    assert fake.requests[-1].path == "/rest/v1/lists/1001/leads.json"
    assert len(fake.requests[-1].body["input"]) == 4
    gone = [*rows[:2], {"email": "never@x.com", "list_id": 1001}]
    [removed] = write(fake, batch(gone, operation=Operation.REMOVE, object="list_members"))
    assert removed == BatchResult() and len(fake.lists[1001]) == 2
    assert fake.requests[-1].method == "DELETE" and len(fake.requests[-1].body["input"]) == 2


def test_a_list_marketo_lacks_or_that_is_not_an_id_is_rejected_naming_it(
    fake: MarketoFake,
) -> None:
    rows = [{"email": "a@x.com", "list_id": 999}, {"email": "b@x.com", "list_id": "vips"}]
    [result] = write(fake, batch(rows, operation=Operation.ADD, object="list_members"))
    assert "1013" in result.rejected[0] and "not a Marketo static list id" in result.rejected[1]
