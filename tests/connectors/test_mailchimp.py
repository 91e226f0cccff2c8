"""The Mailchimp destination against the local Mailchimp fake (undertow.testing.mailchimp)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
import pytest

from undertow.destinations import retry
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.mailchimp import MailchimpDestination, subscriber_hash
from undertow.errors import FatalDeliveryError
from undertow.testing.mailchimp import MailchimpFake
from undertow.testing.template import FAST, DestinationTests

pytestmark = pytest.mark.connectors

KEY = "0123456789abcdef0123456789abcdef-us21"
AUDIENCE = "a1b2c3d4e5"


class TestMailchimpMembers(DestinationTests):
    """The shared suite on audience members (batch subscribe; archive for deletes)."""

    destination = MailchimpDestination
    fake = MailchimpFake
    token = KEY
    secret_field = "api_key"
    object = "members"
    match = "email_address"
    config: ClassVar[dict[str, Any]] = {"audience_id": AUDIENCE}
    invalid = ({"email_address": "not-an-email"}, "looks fake or invalid")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"email_address": f"user{n}@example.com", "PLAN": f"v{version}", "SEATS": n}

    def stored(self, fake: MailchimpFake, record: dict[str, Any]) -> dict[str, Any] | None:
        found = fake.member(record["email_address"], AUDIENCE)
        return None if found is None else {"email_address": found["email_address"],
                                           **found["merge_fields"]}  # fmt: skip

    def count(self, fake: MailchimpFake) -> int:
        return fake.active(AUDIENCE)


def batch(
    records: list[dict[str, Any]],
    *,
    operation: Operation = Operation.UPSERT,
    object: str = "members",
) -> Batch:
    return Batch(
        sync="s",
        operation=operation,
        number=0,
        idempotency_key="k",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={"email_address": [r.get("email_address") for r in records]},
        object=object,
    )


def destination(fake: MailchimpFake, **config: Any) -> MailchimpDestination:
    values = {"type": "mailchimp", "api_key": KEY, "audience_id": AUDIENCE,
              "base_url": fake.url, **config}  # fmt: skip
    return MailchimpDestination(MailchimpDestination.Config.model_validate(values), name="mc")


def write(fake: MailchimpFake, *batches: Batch, **config: Any) -> list[BatchResult]:
    dest = destination(fake, **config)

    async def go() -> list[BatchResult]:
        try:
            with retry.delivery(policy=FAST, stop=asyncio.Event(), max_wait=5.0):
                return list(await asyncio.gather(*(dest.write_batch(b) for b in batches)))
        finally:
            await dest.close()

    return asyncio.run(go())


@pytest.fixture
def fake() -> Any:
    mailchimp = MailchimpFake(KEY)
    with mailchimp.serve():
        yield mailchimp


def test_members_go_as_a_batch_upsert_with_merge_fields_and_the_status(
    fake: MailchimpFake,
) -> None:
    [result] = write(fake, batch([{"email_address": "A@x.com", "FNAME": "Ada", "vip": True}]))
    assert result == BatchResult()
    sent = fake.requests[-1]
    assert sent.path == f"/3.0/lists/{AUDIENCE}" and sent.body["update_existing"] is True
    assert sent.body["members"] == [
        {"email_address": "A@x.com", "status": "subscribed", "vip": True,
         "merge_fields": {"FNAME": "Ada"}}
    ]  # fmt: skip
    assert fake.member("a@x.com", AUDIENCE)["id"] == subscriber_hash("a@x.com")  # type: ignore[index]


def test_a_list_value_for_a_merge_field_is_rejected_before_sending(fake: MailchimpFake) -> None:
    [result] = write(fake, batch([{"email_address": "a@x.com", "SKUS": ["S1", "S2"]}]))
    assert "merge field 'SKUS' holds a list" in result.rejected[0] and fake.requests == []


def test_mirror_deletes_archive_and_a_member_mailchimp_lacks_is_accepted(
    fake: MailchimpFake,
) -> None:
    write(fake, batch([{"email_address": f"u{n}@x.com"} for n in range(3)]))
    gone = batch([{"email_address": "u1@x.com"}, {"email_address": "never@x.com"}],
                 operation=Operation.DELETE)  # fmt: skip
    assert write(fake, gone) == [BatchResult()]
    assert fake.requests[-1].method == "DELETE"
    assert fake.members[AUDIENCE][subscriber_hash("u1@x.com")]["status"] == "archived"
    assert fake.active(AUDIENCE) == 2
    assert write(fake, gone, delete_permanently=True) == [BatchResult()]
    assert fake.requests[-1].path.endswith("/actions/delete-permanent")
    assert subscriber_hash("u1@x.com") not in fake.members[AUDIENCE]  # an archived one too


def test_tags_are_found_or_created_by_name_then_members_added_and_removed(
    fake: MailchimpFake,
) -> None:
    people = [{"email_address": f"u{n}@x.com"} for n in range(4)]
    write(fake, batch(people))
    rows = [{**p, "tag": "vip"} for p in people] + [{"email_address": "ghost@x.com", "tag": "vip"}]
    [added] = write(fake, batch(rows, operation=Operation.ADD, object="tags"))
    assert list(added.rejected) == [4] and "not members of the audience" in added.rejected[4]
    assert fake.tagged("vip", AUDIENCE) == {f"u{n}@x.com" for n in range(4)}
    creates = [r for r in fake.requests if r.method == "POST" and r.path.endswith("/segments")]
    assert len(creates) == 1 and creates[0].body == {"name": "vip", "static_segment": []}
    [removed] = write(fake, batch(rows[:2], operation=Operation.REMOVE, object="tags"))
    assert removed == BatchResult() and fake.tagged("vip", AUDIENCE) == {"u2@x.com", "u3@x.com"}
    assert "members_to_remove" in fake.requests[-1].body


def test_removing_a_tag_the_audience_lacks_sends_no_write(fake: MailchimpFake) -> None:
    rows = [{"email_address": "a@x.com", "tag": "nobody-has-it"}]
    assert write(fake, batch(rows, operation=Operation.REMOVE, object="tags")) == [BatchResult()]
    assert [r.method for r in fake.requests] == ["GET"]


def test_a_tag_row_without_a_tag_is_rejected_naming_the_field(fake: MailchimpFake) -> None:
    [result] = write(fake, batch([{"email_address": "a@x.com"}], operation=Operation.ADD,
                                 object="tags"))  # fmt: skip
    assert "map `tag`" in result.rejected[0]


def test_every_sync_on_the_key_stays_within_ten_connections() -> None:
    """Two syncs of 10 concurrent requests each on one key: the kit keeps 10 in flight."""
    fake = MailchimpFake(KEY, hold=0.05)
    with fake.serve():
        batches = [
            batch([{"email_address": f"u{n}@x.com"}], operation=Operation.DELETE) for n in range(30)
        ]
        write(fake, *batches)
    assert fake.slow_downs == 0 and fake.most_in_flight == 10


def test_the_data_center_comes_from_the_key() -> None:
    values = {"type": "mailchimp", "api_key": KEY, "audience_id": AUDIENCE}
    dest = MailchimpDestination(MailchimpDestination.Config.model_validate(values), name="mc")
    assert dest.base_url() == "https://us21.api.mailchimp.com"
    asyncio.run(dest.close())
    values["api_key"] = "no-data-center-here!"
    dest = MailchimpDestination(MailchimpDestination.Config.model_validate(values), name="mc")
    with pytest.raises(FatalDeliveryError, match="does not end with its data center"):
        asyncio.run(dest.check())
    with pytest.raises(FatalDeliveryError, match="does not end with its data center"):
        asyncio.run(dest.write_batch(batch([{"email_address": "a@x.com"}])))
    asyncio.run(dest.close())
