"""The SendGrid destination against the local SendGrid fake (undertow.testing.sendgrid)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
import pytest

from undertow.destinations import retry
from undertow.destinations.base import Batch, BatchResult, Job, Operation
from undertow.destinations.sendgrid import SendGridDestination
from undertow.testing.sendgrid import SendGridFake
from undertow.testing.template import FAST, DestinationTests

pytestmark = pytest.mark.connectors

KEY = "SG.sendgrid-key-1111-2222-3333"


class TestSendGridContacts(DestinationTests):
    """The shared suite on contacts (upsert as an import job, polled; deletes by id)."""

    destination = SendGridDestination
    fake = SendGridFake
    token = KEY
    secret_field = "api_key"
    object = "contacts"
    match = "email"
    config: ClassVar[dict[str, Any]] = {"poll_interval": 0.05}
    fake_options: ClassVar[dict[str, Any]] = {"window_seconds": 1.0}
    invalid = ({"email": "not-an-email"}, "email address is invalid")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"email": f"user{n}@example.com", "first_name": f"v{version}", "plan": f"p{n}"}

    def stored(self, fake: SendGridFake, record: dict[str, Any]) -> dict[str, Any] | None:
        found = fake.contact(record["email"])
        return None if found is None else {**found, **fake.custom(record["email"])}

    def count(self, fake: SendGridFake) -> int:
        return len(fake.contacts)


def batch(
    records: list[dict[str, Any]],
    *,
    operation: Operation = Operation.UPSERT,
    object: str = "contacts",
) -> Batch:
    return Batch(
        sync="s",
        operation=operation,
        number=0,
        idempotency_key="k",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={"email": [r.get("email") for r in records]},
        object=object,
    )


def make(fake: SendGridFake) -> SendGridDestination:
    values = {"type": "sendgrid", "api_key": KEY, "base_url": fake.url, "poll_interval": 0.05}
    return SendGridDestination(SendGridDestination.Config.model_validate(values), name="sg")


def run(dest: SendGridDestination, work: Any) -> Any:
    async def go() -> Any:
        try:
            with retry.delivery(policy=FAST, stop=asyncio.Event(), max_wait=5.0):
                return await work(dest)
        finally:
            await dest.close()

    return asyncio.run(go())


def write(fake: SendGridFake, b: Batch) -> BatchResult:
    result: BatchResult = run(make(fake), lambda d: d.write_batch(b))
    return result


@pytest.fixture
def fake() -> Any:
    sendgrid = SendGridFake(KEY, window_seconds=1.0)
    with sendgrid.serve():
        yield sendgrid


def test_contacts_go_with_custom_fields_by_id_as_a_job_recorded_then_polled_elsewhere(
    fake: SendGridFake,
) -> None:
    """The job a submit returns is all a later process needs: it polls, never resubmits."""
    b = batch([{"email": "a@x.com", "first_name": "Ada", "seats": 3}])
    job = run(make(fake), lambda d: d.submit_batch(b))
    assert isinstance(job, Job) and fake.contact("a@x.com") is None
    sent = fake.requests[-1].body
    assert sent == {"contacts": [{"email": "a@x.com", "first_name": "Ada",
                                  "custom_fields": {"e2_N": 3}}]}  # fmt: skip
    restored = Job(job.id, orjson.loads(orjson.dumps(job.data)))  # as the state store keeps it
    assert run(make(fake), lambda d: d.poll_job(restored, b)) == BatchResult()
    assert fake.submissions == 1 and fake.custom("a@x.com") == {"seats": 3}


def test_an_errored_job_rejects_the_contacts_its_errors_file_names(fake: SendGridFake) -> None:
    rows = [{"email": "a@x.com", "seats": 2}, {"email": "b@x.com", "seats": "two"}]
    result = write(fake, batch(rows))
    assert list(result.rejected) == [1] and "seats must be a number" in result.rejected[1]
    assert fake.contact("a@x.com") is not None and fake.contact("b@x.com") is None
    job_polls = [r for r in fake.requests if "/imports/" in r.path]
    downloads = [r for r in fake.requests if r.path.startswith("/downloads/")]
    assert job_polls and downloads and not downloads[0].credentials  # no key to the file host


def test_a_field_sendgrid_lacks_is_rejected_before_sending(fake: SendGridFake) -> None:
    result = write(fake, batch([{"email": "a@x.com", "favourite_colour": "red"}]))
    assert "no custom field named 'favourite_colour'" in result.rejected[0]
    assert not [r for r in fake.requests if r.method == "PUT"]


def test_list_members_are_added_by_the_upsert_and_removed_by_id(fake: SendGridFake) -> None:
    rows = [{"email": f"u{n}@x.com", "list_id": "L1"} for n in range(3)]
    assert write(fake, batch(rows, operation=Operation.ADD, object="list_members")) == BatchResult()
    assert fake.members("L1") == {"u0@x.com", "u1@x.com", "u2@x.com"}
    gone = [rows[0], {"email": "never@x.com", "list_id": "L1"}]
    removed = write(fake, batch(gone, operation=Operation.REMOVE, object="list_members"))
    assert removed == BatchResult() and fake.members("L1") == {"u1@x.com", "u2@x.com"}
    assert fake.requests[-1].method == "DELETE" and fake.requests[-1].path.endswith("/contacts")
    assert len(fake.contacts) == 3  # removal from a list deletes no contact
