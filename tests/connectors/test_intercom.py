"""The Intercom destination against the local Intercom fake (undertow.testing.intercom)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.intercom import IntercomConfig, IntercomDestination
from undertow.errors import FatalDeliveryError, UndertowError
from undertow.testing.intercom import IntercomFake
from undertow.testing.template import DestinationTests

pytestmark = pytest.mark.connectors

SPECS = Path(os.environ.get("UNDERTOW_SPECS", Path(__file__).resolve().parents[3] / "shared/specs"))
TOKEN = "dG9rOmludGVyY29tLXNlY3JldC0wMDAw"
FAST = {"window_seconds": 0.3, "calls_per_10s": 2000}


class TestIntercomContacts(DestinationTests):
    """The shared destination suite on Intercom contacts, matched by email."""

    destination = IntercomDestination
    fake = IntercomFake
    token = TOKEN
    object = "contacts"
    match = "email"
    config: ClassVar[dict[str, Any]] = {"calls_per_10s": 2000}
    fake_options: ClassVar[dict[str, Any]] = FAST
    invalid = ({"email": "not-an-email", "name": "Bad"}, "Invalid email address: not-an-email")
    # every exchange of the suite validated against the OpenAPI file (SOURCE.txt: the error
    # list for the statuses the file leaves out; /data_attributes is outside the trimmed file)
    openapi = SPECS / "intercom" / "intercom-2.14-contacts.openapi.yaml"
    openapi_paths = ("/contacts", "/companies")
    openapi_outside: ClassVar[dict[int, str]] = {
        400: "error",
        404: "error",
        409: "error",
        429: "error",
    }

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"email": f"user{n}@example.com", "name": f"User {n}", "plan": f"v{version}"}

    def stored(self, fake: IntercomFake, record: dict[str, Any]) -> dict[str, Any] | None:
        found = fake.contacts.by_email(record["email"])
        return None if found is None else {**found, **found.get("custom_attributes", {})}

    def count(self, fake: IntercomFake) -> int:
        return len(fake.contacts)


class TestIntercomCompanies(TestIntercomContacts):
    """The same suite on companies, matched by company_id (upsert only: no delete)."""

    object = "companies"
    match = "company_id"
    invalid = ({"company_id": "c-bad", "tierr": "gold"}, "Custom attribute 'tierr' does not exist")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"company_id": f"c-{n}", "name": f"Acme {n}", "tier": f"v{version}"}

    def stored(self, fake: IntercomFake, record: dict[str, Any]) -> dict[str, Any] | None:
        found = fake.companies.by("company_id", record["company_id"])
        return None if found is None else {**found, **found.get("custom_attributes", {})}

    def count(self, fake: IntercomFake) -> int:
        return len(fake.companies)


@pytest.fixture
def fake() -> Iterator[IntercomFake]:
    intercom = IntercomFake(TOKEN, **FAST)
    with intercom.serve():
        yield intercom


def batch(
    records: list[dict[str, Any]],
    *,
    operation: Operation = Operation.UPSERT,
    match: str | None = "email",
    object: str = "contacts",
) -> Batch:
    identifiers = {match: [r.get(match) for r in records]} if match else {}
    return Batch(
        sync="users_to_intercom",
        operation=operation,
        number=0,
        idempotency_key="k",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers=identifiers,
        object=object,
    )


def destination(fake: IntercomFake, **extra: Any) -> IntercomDestination:
    values = {"type": "intercom", "token": TOKEN, "base_url": fake.url, "calls_per_10s": 2000}
    return IntercomDestination(IntercomConfig.model_validate(values | extra), name="support")


def write(fake: IntercomFake, b: Batch, **extra: Any) -> BatchResult:
    async def go() -> BatchResult:
        dest = destination(fake, **extra)
        try:
            return await dest.write_batch(b)
        finally:
            await dest.close()

    return asyncio.run(go())


def paths(fake: IntercomFake) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in fake.requests]


# -- shaping -------------------------------------------------------------------------------


def test_own_keys_go_as_they_are_and_the_rest_are_custom_attributes(fake: IntercomFake) -> None:
    record = {
        "email": "ada@example.com",
        "name": "Ada",
        "signed_up_at": "2024-02-01",
        "plan": "pro",
        "seats": 3,
    }
    assert write(fake, batch([record])) == BatchResult()
    sent = fake.requests[-1]
    assert sent.headers["intercom-version"] == "2.14"
    assert sent.body == {
        "email": "ada@example.com",
        "name": "Ada",
        "signed_up_at": 1706745600,
        "role": "user",
        "custom_attributes": {"plan": "pro", "seats": 3},
    }


def test_nested_values_and_bad_timestamps_are_rejected_before_sending(fake: IntercomFake) -> None:
    records = [
        {"email": "a@x.io", "address": {"city": "Paris"}},
        {"email": "b@x.io", "signed_up_at": "last tuesday"},
        {"email": "c@x.io"},
    ]
    result = write(fake, batch(records))
    assert "field 'address' is a nested object" in result.rejected[0]
    assert "field 'signed_up_at': 'last tuesday' is not a date" in result.rejected[1]
    assert [r.body["email"] for r in fake.requests] == ["c@x.io"]


def test_an_unknown_custom_attribute_is_intercoms_rejection(fake: IntercomFake) -> None:
    result = write(fake, batch([{"email": "a@x.io", "plann": "pro"}]))
    assert result.rejected == {
        0: "Intercom parameter_invalid: Custom attribute 'plann' does not exist"
    }


# -- modes ---------------------------------------------------------------------------------


def test_upsert_creates_then_updates_through_the_409(fake: IntercomFake) -> None:
    assert write(fake, batch([{"email": "a@x.io", "plan": "free"}])) == BatchResult()
    contact_id = fake.contacts.find("email", "a@x.io")
    assert write(fake, batch([{"email": "A@x.io", "plan": "pro"}])) == BatchResult()
    assert len(fake.contacts) == 1
    assert paths(fake)[-2:] == [("POST", "/contacts"), ("PUT", f"/contacts/{contact_id}")]
    assert fake.contacts[str(contact_id)]["custom_attributes"] == {"plan": "pro"}


def test_a_409_without_an_id_falls_back_to_the_search(fake: IntercomFake) -> None:
    write(fake, batch([{"email": "a@x.io"}]))
    contact_id = fake.contacts.find("email", "a@x.io")
    fake.fail_next(
        status=409,
        body={"type": "error.list", "errors": [{"code": "conflict", "message": "duplicate"}]},
        path="/contacts",
    )
    assert write(fake, batch([{"email": "a@x.io", "plan": "pro"}])) == BatchResult()
    assert paths(fake)[-3:] == [
        ("POST", "/contacts"),
        ("POST", "/contacts/search"),
        ("PUT", f"/contacts/{contact_id}"),
    ]


def test_match_on_external_id(fake: IntercomFake) -> None:
    records = [{"external_id": "u-1", "email": "a@x.io"}]
    assert write(fake, batch(records, match="external_id")) == BatchResult()
    records = [{"external_id": "u-1", "email": "new@x.io"}]
    assert write(fake, batch(records, match="external_id")) == BatchResult()
    assert len(fake.contacts) == 1
    assert fake.contacts.by("external_id", "u-1")["email"] == "new@x.io"  # type: ignore[index]


def test_contacts_match_only_on_email_or_external_id(fake: IntercomFake) -> None:
    with pytest.raises(FatalDeliveryError, match="cannot match on identifier 'phone'"):
        write(fake, batch([{"phone": "1"}], match="phone"))


def test_update_and_delete_search_first(fake: IntercomFake) -> None:
    write(fake, batch([{"email": "a@x.io", "plan": "free"}]))
    records = [{"email": "a@x.io", "plan": "pro"}, {"email": "ghost@x.io", "plan": "pro"}]
    result = write(fake, batch(records, operation=Operation.UPDATE))
    assert (
        list(result.rejected) == [1]
        and "no contact whose email is 'ghost@x.io'" in result.rejected[1]
    )
    assert fake.contacts.by_email("a@x.io")["custom_attributes"] == {"plan": "pro"}  # type: ignore[index]
    assert "role" not in fake.requests[-1].body  # an update leaves the role alone
    gone = batch([{"email": "a@x.io"}, {"email": "never@x.io"}], operation=Operation.DELETE)
    assert write(fake, gone) == BatchResult()
    assert len(fake.contacts) == 0
    assert [m for m, _ in paths(fake)].count("DELETE") == 1


def test_companies_upsert_on_company_id_and_cannot_be_deleted(fake: IntercomFake) -> None:
    records = [{"company_id": "c-1", "name": "Acme", "remote_created_at": "2020-01-01T00:00:00Z"}]
    assert write(fake, batch(records, match="company_id", object="companies")) == BatchResult()
    assert fake.requests[-1].body["remote_created_at"] == 1577836800
    records = [{"company_id": "c-1", "name": "Acme Inc"}]
    assert write(fake, batch(records, match="company_id", object="companies")) == BatchResult()
    assert len(fake.companies) == 1
    for operation in (Operation.DELETE, Operation.INSERT):
        with pytest.raises(UndertowError, match=f"cannot {operation.value} companies"):
            write(fake, batch(records, operation=operation, match="company_id", object="companies"))


# -- slow down and limits ------------------------------------------------------------------


def test_a_429_waits_until_x_ratelimit_reset(fake: IntercomFake) -> None:
    reset = str(int(time.time()) + 1)
    fake.fail_next(
        status=429,
        body={"type": "error.list", "errors": [{"code": "rate_limit_exceeded", "message": "x"}]},
        headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset},
    )
    started = time.monotonic()
    assert write(fake, batch([{"email": "a@x.io"}])) == BatchResult()
    assert time.monotonic() - started >= 0.5
    assert fake.slow_downs == 1


# -- check and validate --------------------------------------------------------------------


def test_validate_names_unknown_custom_attributes(fake: IntercomFake) -> None:
    async def go(fields: list[str]) -> list[str]:
        dest = destination(fake)
        try:
            return await dest.validate_sync(
                sync="s", object="contacts", match={"email": "email"}, fields=fields
            )
        finally:
            await dest.close()

    problems = asyncio.run(go(["email", "name", "plann", "seats"]))
    assert len(problems) == 1
    assert "no custom attribute 'plann'; did you mean 'plan'?" in problems[0]
    assert fake.requests[-1].query == {"model": "contact"}
