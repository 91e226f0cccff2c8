"""The Attio destination against the local Attio fake (undertow.testing.attio)."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import orjson
import pytest

from undertow.destinations.attio import AttioConfig, AttioDestination
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.errors import FatalDeliveryError
from undertow.testing.attio import AttioFake
from undertow.testing.attio_values import Attribute
from undertow.testing.template import DestinationTests

pytestmark = pytest.mark.connectors

TOKEN = "attio-secret-7c1e5a90-0000-4bbb-8ccc-123456789abc"


class TestAttioPeople(DestinationTests):
    """The shared destination suite on Attio people, asserted by email address."""

    destination = AttioDestination
    fake = AttioFake
    token = TOKEN
    object = "people"
    match = "email_addresses"
    config: ClassVar[dict[str, Any]] = {"writes_per_second": 250}
    fake_options: ClassVar[dict[str, Any]] = {"window_seconds": 0.3, "writes_per_second": 300}
    invalid = ({"email_addresses": "not-an-email"}, "is not a valid email address")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"email_addresses": f"user{n}@example.com", "job_title": f"v{version}"}

    def stored(self, fake: AttioFake, record: dict[str, Any]) -> dict[str, Any] | None:
        return fake.by("people", "email_addresses", record["email_addresses"])

    def count(self, fake: AttioFake) -> int:
        return len(fake.records["people"])


class TestAttioCompanies(TestAttioPeople):
    """The same suite on companies, asserted by domain."""

    object = "companies"
    match = "domains"
    invalid = ({"domains": "acme.example", "arr": "lots"}, 'attribute with slug "arr"')

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"domains": f"acme{n}.example", "name": f"Acme {n} v{version}"}

    def stored(self, fake: AttioFake, record: dict[str, Any]) -> dict[str, Any] | None:
        return fake.by("companies", "domains", record["domains"])

    def count(self, fake: AttioFake) -> int:
        return len(fake.records["companies"])


@pytest.fixture
def fake() -> Iterator[AttioFake]:
    attio = AttioFake(TOKEN, window_seconds=0.3)
    with attio.serve():
        yield attio


def batch(
    records: list[dict[str, Any]],
    *,
    operation: Operation = Operation.UPSERT,
    match: str | None = "email_addresses",
    object: str = "people",
) -> Batch:
    identifiers = {match: [r.get(match) for r in records]} if match else {}
    return Batch(
        sync="people_to_attio",
        operation=operation,
        number=0,
        idempotency_key="k",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers=identifiers,
        object=object,
    )


def destination(fake: AttioFake, **extra: Any) -> AttioDestination:
    config = AttioConfig.model_validate(
        {"type": "attio", "token": TOKEN, "base_url": fake.url, **extra}
    )
    return AttioDestination(config, name="crm")


def write(fake: AttioFake, b: Batch, **extra: Any) -> BatchResult:
    async def go() -> BatchResult:
        dest = destination(fake, **extra)
        try:
            return await dest.write_batch(b)
        finally:
            await dest.close()

    return asyncio.run(go())


def validate(fake: AttioFake, object_: str, match: dict[str, str], fields: list[str]) -> list[str]:
    async def go() -> list[str]:
        dest = destination(fake)
        try:
            return await dest.validate_sync(sync="s", object=object_, match=match, fields=fields)
        finally:
            await dest.close()

    return asyncio.run(go())


# -- writes --------------------------------------------------------------------------------


def test_assert_sends_the_matching_attribute_and_values(fake: AttioFake) -> None:
    record = {
        "email_addresses": "Ada@Example.com",
        "name": {"first_name": "Ada", "last_name": "Lovelace", "full_name": "Ada Lovelace"},
        "plan": "pro",
        "seats": 3,
        "signup_date": "2024-02-01",
    }
    assert write(fake, batch([record])) == BatchResult()
    sent = fake.requests[-1]
    assert (sent.method, sent.path, sent.query) == (
        "PUT",
        "/v2/objects/people/records",
        {"matching_attribute": "email_addresses"},
    )
    assert sent.body == {"data": {"values": record}}
    stored = fake.by("people", "email_addresses", "ada@example.com")
    assert stored is not None
    assert (stored["name"], stored["plan"], stored["seats"]) == ("Ada Lovelace", "pro", 3)


def test_the_match_value_is_sent_even_when_not_mapped(fake: AttioFake) -> None:
    b = batch([{"job_title": "CTO"}])
    b.identifiers = {"email_addresses": ["grace@example.com"]}
    assert write(fake, b) == BatchResult()
    assert fake.requests[-1].body["data"]["values"] == {
        "job_title": "CTO",
        "email_addresses": "grace@example.com",
    }
    stored = fake.by("people", "email_addresses", "grace@example.com")
    assert stored is not None and stored["job_title"] == "CTO"


def test_null_clears_an_attribute(fake: AttioFake) -> None:
    write(fake, batch([{"email_addresses": "a@x.io", "job_title": "CTO"}]))
    assert write(fake, batch([{"email_addresses": "a@x.io", "job_title": None}])) == BatchResult()
    assert "job_title" not in fake.by("people", "email_addresses", "a@x.io")  # type: ignore[operator]
    assert fake.requests[-1].body["data"]["values"]["job_title"] == []


def test_an_unknown_attribute_rejects_that_record_with_attios_message(fake: AttioFake) -> None:
    records = [{"email_addresses": "a@x.io", "plann": "pro"}, {"email_addresses": "b@x.io"}]
    result = write(fake, batch(records))
    assert result.rejected == {
        0: 'Attio value_not_found: Cannot find attribute with slug/ID "plann".'
    }
    assert fake.by("people", "email_addresses", "a@x.io") is None
    assert fake.by("people", "email_addresses", "b@x.io") is not None


def test_a_select_option_attio_does_not_have_is_rejected(fake: AttioFake) -> None:
    result = write(fake, batch([{"email_addresses": "a@x.io", "plan": "platinum"}]))
    assert 'Cannot find select option with title "platinum"' in result.rejected[0]


def test_a_non_unique_matching_attribute_is_rejected_by_attio(fake: AttioFake) -> None:
    result = write(fake, batch([{"job_title": "CTO"}], match="job_title"))
    assert 'matching_attribute "job_title" must be a unique attribute' in result.rejected[0]


def test_insert_creates_and_a_second_insert_conflicts(fake: AttioFake) -> None:
    records = [{"email_addresses": "a@x.io", "job_title": "CTO"}]
    assert write(fake, batch(records, operation=Operation.INSERT, match=None)) == BatchResult()
    again = write(fake, batch(records, operation=Operation.INSERT, match=None))
    assert "uniqueness_conflict" in again.rejected[0]
    assert len(fake.records["people"]) == 1
    assert fake.requests[-1].method == "POST" and fake.requests[-1].query == {}


def test_update_changes_existing_records_and_rejects_unknown_ones(fake: AttioFake) -> None:
    write(fake, batch([{"email_addresses": "a@x.io", "job_title": "CTO"}]))
    records = [
        {"email_addresses": "A@x.io", "job_title": "CEO"},
        {"email_addresses": "ghost@x.io", "job_title": "CEO"},
    ]
    result = write(fake, batch(records, operation=Operation.UPDATE))
    assert list(result.rejected) == [1]
    assert "no people record whose email_addresses is 'ghost@x.io'" in result.rejected[1]
    assert fake.by("people", "email_addresses", "a@x.io")["job_title"] == "CEO"  # type: ignore[index]
    assert fake.by("people", "email_addresses", "ghost@x.io") is None
    methods = [(r.method, r.path.rsplit("/", 1)[-1]) for r in fake.requests]
    assert ("POST", "query") in methods and methods[-1][0] in ("PUT", "POST")


def test_delete_queries_then_deletes_and_accepts_records_already_gone(fake: AttioFake) -> None:
    write(fake, batch([{"email_addresses": "a@x.io"}, {"email_addresses": "b@x.io"}]))
    gone = fake.find("people", "email_addresses", "a@x.io")
    result = write(
        fake,
        batch(
            [{"email_addresses": "a@x.io"}, {"email_addresses": "never@x.io"}],
            operation=Operation.DELETE,
        ),
    )
    assert result == BatchResult()
    assert gone not in fake.records["people"]
    assert len(fake.records["people"]) == 1
    deletes = [r.path for r in fake.requests if r.method == "DELETE"]
    assert deletes == [f"/v2/objects/people/records/{gone}"]


def test_an_unknown_object_is_refused_before_sending(fake: AttioFake) -> None:
    with pytest.raises(FatalDeliveryError, match="did you mean 'people'"):
        write(fake, batch([{"email_addresses": "a@x.io"}], object="peple"))
    assert fake.requests == []


def test_a_custom_object_from_the_config_is_written() -> None:
    attio = AttioFake(TOKEN, attributes={"vehicles": (Attribute("vin", "text", unique=True),)})
    with attio.serve():
        records = [{"vin": "WVW-1"}]
        b = batch(records, match="vin", object="vehicles")
        assert write(attio, b, custom_objects=["vehicles"]) == BatchResult()
        with pytest.raises(FatalDeliveryError, match="unknown object 'vehicles'"):
            write(attio, b)
    assert attio.by("vehicles", "vin", "WVW-1") is not None


def test_an_object_attio_does_not_have_stops_the_run(fake: AttioFake) -> None:
    b = batch([{"vin": "x"}], match="vin", object="vehicles")
    with pytest.raises(FatalDeliveryError, match="Attio has no object 'vehicles'"):
        write(fake, b, custom_objects=["vehicles"])


# -- slow down -----------------------------------------------------------------------------


def test_retry_after_is_an_http_date_and_is_waited_out(fake: AttioFake) -> None:
    fake.throttle_next(1)
    started = time.monotonic()
    assert write(fake, batch([{"email_addresses": "a@x.io"}])) == BatchResult()
    assert fake.slow_downs == 1
    assert time.monotonic() - started < 3.0
    throttled = [r for r in fake.requests if r.status == 429]
    assert len(throttled) == 1


def test_the_fake_answers_429_with_a_date_when_its_write_window_is_full() -> None:
    attio = AttioFake(TOKEN, writes_per_second=1, window_seconds=5.0)
    answer = attio.slow_down(attio.writes)
    when = email.utils.parsedate_to_datetime(answer.headers["retry-after"])
    assert 0 <= when.timestamp() - time.time() <= 2.0
    assert orjson.loads(answer.body)["code"] == "rate_limit_exceeded"


def test_writes_are_paced_to_the_configured_rate_with_no_429(fake: AttioFake) -> None:
    records = [{"email_addresses": f"u{n}@x.io"} for n in range(12)]
    started = time.monotonic()
    assert write(fake, batch(records), writes_per_second=5) == BatchResult()
    assert fake.slow_downs == 0
    assert time.monotonic() - started >= 2.0  # 12 requests at 5 per rolling second


def test_a_concurrent_write_conflict_is_retried(fake: AttioFake) -> None:
    fake.fail_next(
        status=409,
        body={
            "status_code": 409,
            "type": "invalid_request_error",
            "code": "concurrent_write_conflict",
            "message": "The record was modified by another request while this write was "
            "being validated. Please try again.",
        },
    )
    assert write(fake, batch([{"email_addresses": "a@x.io"}])) == BatchResult()
    assert fake.by("people", "email_addresses", "a@x.io") is not None


# -- check and validate --------------------------------------------------------------------


def test_check_reads_self_and_an_inactive_token_is_an_auth_error(fake: AttioFake) -> None:
    async def check(**extra: Any) -> None:
        dest = destination(fake, **extra)
        try:
            await dest.check()
        finally:
            await dest.close()

    asyncio.run(check())
    assert fake.requests[-1].path == "/v2/self"
    fake.fail_next(status=200, body={"active": False})
    with pytest.raises(FatalDeliveryError, match="record_permission:read-write"):
        asyncio.run(check())


def test_validate_names_unknown_read_only_and_non_unique_attributes(fake: AttioFake) -> None:
    problems = validate(
        fake,
        "people",
        {"job_title": "title"},
        ["job_title", "plann", "created_at", "seats"],
    )
    assert any("unknown attribute 'plann'" in p and "did you mean 'plan'" in p for p in problems)
    assert any("'created_at' is read-only" in p for p in problems)
    assert any("'job_title' is not unique" in p and "email_addresses" in p for p in problems)
    assert len(problems) == 3, problems
    assert validate(fake, "people", {"email_addresses": "e"}, ["email_addresses", "seats"]) == []


def test_validate_says_when_the_workspace_has_no_such_object(fake: AttioFake) -> None:
    assert validate(fake, "vehicles", {"vin": "v"}, ["vin"]) == [
        "sync 's': the Attio workspace has no object 'vehicles'"
    ]
