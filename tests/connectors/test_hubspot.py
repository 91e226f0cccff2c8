"""The HubSpot destination against the local HubSpot fake (undertow.testing.hubspot)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, ClassVar

import orjson
import pytest
from pydantic import ValidationError

from undertow.destinations import retry
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.hubspot import HubSpotConfig, HubSpotDestination
from undertow.destinations.retry import RetryPolicy
from undertow.errors import FatalDeliveryError, RetryableError
from undertow.testing.hubspot import HubSpotFake
from undertow.testing.server import serve_in_thread
from undertow.testing.template import DestinationTests

pytestmark = pytest.mark.connectors

TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"


class TestHubSpotContacts(DestinationTests):
    """The shared destination suite (undertow.testing.template) on HubSpot contacts."""

    destination = HubSpotDestination
    fake = HubSpotFake
    token = TOKEN
    object = "contacts"
    match = "email"
    fake_options: ClassVar[dict[str, Any]] = {"window_seconds": 0.3}
    invalid = ({"email": "not-an-email"}, "Email address not-an-email is invalid")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"email": f"user{n}@example.com", "firstname": f"User {n}", "plan": f"v{version}"}

    def stored(self, fake: HubSpotFake, record: dict[str, Any]) -> dict[str, Any] | None:
        return fake.objects["contacts"].by_email(record["email"])

    def count(self, fake: HubSpotFake) -> int:
        return len(fake.objects["contacts"])


class TestHubSpotCompanies(TestHubSpotContacts):
    """The same suite on companies, matched by domain."""

    object = "companies"
    match = "domain"
    invalid = ({"domain": "bad.example", "name": {"nested": True}}, "is a nested object")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"domain": f"acme{n}.example", "name": f"Acme {n} v{version}"}

    def stored(self, fake: HubSpotFake, record: dict[str, Any]) -> dict[str, Any] | None:
        return fake.objects["companies"].by("domain", record["domain"])

    def count(self, fake: HubSpotFake) -> int:
        return len(fake.objects["companies"])


@pytest.fixture
def fake() -> Iterator[HubSpotFake]:
    hubspot = HubSpotFake(TOKEN)
    with serve_in_thread(hubspot.app) as server:
        hubspot.url = server.url  # type: ignore[attr-defined]
        yield hubspot


def batch(
    records: list[dict[str, Any]],
    *,
    operation: Operation = Operation.UPSERT,
    match: str | None = "email",
    object: str = "contacts",
) -> Batch:
    identifiers = {match: [r.get(match) for r in records]} if match else {}
    return Batch(
        sync="users_to_crm",
        operation=operation,
        number=1,
        idempotency_key="k1",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers=identifiers,
        object=object,
    )


def destination(fake: HubSpotFake, *, token: str = TOKEN, **extra: Any) -> HubSpotDestination:
    config = HubSpotConfig(type="hubspot", token=token, base_url=fake.url, **extra)  # type: ignore[attr-defined]
    return HubSpotDestination(config, name="crm")


def write(
    fake: HubSpotFake, b: Batch, *, attempts: int = 6, max_wait: float = 900, **extra: Any
) -> BatchResult:
    async def go() -> BatchResult:
        dest = destination(fake, **extra)
        policy = RetryPolicy(max_attempts=attempts, base_delay=0.01, max_delay=0.05)
        try:
            with retry.delivery(policy=policy, stop=None, max_wait=max_wait):
                return await dest.write_batch(b)
        finally:
            await dest.close()

    return asyncio.run(go())


def first_answer(fake: HubSpotFake, b: Batch) -> RetryableError:
    """The retryable error of a single attempt (the kit wraps it once retries run out)."""
    with pytest.raises(FatalDeliveryError, match="still failing after 1 attempts") as caught:
        write(fake, b, attempts=1)
    cause = caught.value.__cause__
    assert isinstance(cause, RetryableError)
    return cause


def check(fake: HubSpotFake, **extra: Any) -> None:
    async def go() -> None:
        dest = destination(fake, **extra)
        try:
            await dest.check()
        finally:
            await dest.close()

    asyncio.run(go())


def sent_inputs(fake: HubSpotFake, endpoint: str) -> list[dict[str, Any]]:
    return [i for r in fake.requests if r.path.endswith(endpoint) for i in r.body["inputs"]]


# -- modes ---------------------------------------------------------------------------------


def test_upsert_creates_then_updates_the_same_contact(fake: HubSpotFake) -> None:
    first = write(fake, batch([{"email": "ada@example.com", "plan": "free"}, {"email": "bo@x.io"}]))
    assert first == BatchResult()
    contacts = fake.objects["contacts"]
    assert len(contacts) == 2
    ada_id = contacts.find("email", "ada@example.com")

    second = write(fake, batch([{"email": "ada@example.com", "plan": "pro"}]))

    assert second == BatchResult()
    assert len(contacts) == 2
    assert contacts.find("email", "ada@example.com") == ada_id
    assert contacts.by_email("ada@example.com")["plan"] == "pro"  # type: ignore[index]
    assert [(o, op) for o, op, _ in fake.applied] == [("contacts", "upsert")] * 3
    sent = sent_inputs(fake, "batch/upsert")[-1]
    assert sent == {
        "objectWriteTraceId": "0",
        "idProperty": "email",
        "id": "ada@example.com",
        "properties": {"email": "ada@example.com", "plan": "pro"},
    }


def test_upsert_companies_by_domain(fake: HubSpotFake) -> None:
    records = [{"domain": "acme.com", "name": "Acme"}, {"domain": "initech.com", "name": "Ini"}]
    result = write(fake, batch(records, match="domain", object="companies"))
    assert result == BatchResult()
    assert fake.objects["companies"].by("domain", "acme.com")["name"] == "Acme"  # type: ignore[index]
    assert fake.objects["contacts"] == {}


def test_insert_uses_batch_create_without_ids(fake: HubSpotFake) -> None:
    records = [{"email": "a@x.io", "firstname": "A"}, {"email": "b@x.io", "firstname": "B"}]
    result = write(fake, batch(records, operation=Operation.INSERT, match=None))
    assert result == BatchResult()
    assert {p["firstname"] for p in fake.objects["contacts"].values()} == {"A", "B"}
    inputs = sent_inputs(fake, "batch/create")
    assert [set(i) for i in inputs] == [{"objectWriteTraceId", "properties"}] * 2


def test_update_by_email_reports_an_unknown_contact_as_not_found(fake: HubSpotFake) -> None:
    write(fake, batch([{"email": "ada@example.com", "plan": "free"}]))
    records = [
        {"email": "ghost@example.com", "plan": "pro"},
        {"email": "ADA@example.com", "plan": "pro"},
    ]

    result = write(fake, batch(records, operation=Operation.UPDATE))

    # not found, not rejected: the run counts it as skipped (update mode creates nothing)
    assert result.failed == {}
    assert result.rejected == {}
    assert list(result.not_found) == [0]
    assert "OBJECT_NOT_FOUND" in result.not_found[0]
    assert "Could not get some CONTACT objects" in result.not_found[0]
    assert fake.objects["contacts"].by_email("ada@example.com")["plan"] == "pro"  # type: ignore[index]
    assert fake.objects["contacts"].by_email("ghost@example.com") is None


def test_delete_resolves_ids_then_archives(fake: HubSpotFake) -> None:
    write(fake, batch([{"email": "a@x.io"}, {"email": "b@x.io"}, {"email": "c@x.io"}]))
    b_id = fake.objects["contacts"].find("email", "b@x.io")

    result = write(
        fake, batch([{"email": "b@x.io"}, {"email": "never@x.io"}], operation=Operation.DELETE)
    )

    assert result == BatchResult()  # an unknown record is already gone: accepted
    assert sorted(p["email"] for p in fake.objects["contacts"].values()) == ["a@x.io", "c@x.io"]  # type: ignore[type-var]
    assert b_id in fake.objects["contacts"].archived
    read = next(r for r in fake.requests if r.path.endswith("batch/read"))
    assert read.body["idProperty"] == "email"
    assert sent_inputs(fake, "batch/archive") == [{"id": b_id}]


def test_delete_of_only_unknown_records_sends_no_archive(fake: HubSpotFake) -> None:
    result = write(fake, batch([{"email": "never@x.io"}], operation=Operation.DELETE))
    assert result == BatchResult()
    assert not any(r.path.endswith("batch/archive") for r in fake.requests)


# -- per-record results --------------------------------------------------------------------


def test_207_error_maps_to_its_record_with_hubspots_message(fake: HubSpotFake) -> None:
    records = [{"email": "ok@x.io"}, {"email": "not-an-email"}, {"email": "fine@x.io"}]

    result = write(fake, batch(records))

    assert list(result.rejected) == [1]
    assert result.failed == {}
    assert "VALIDATION_ERROR" in result.rejected[1]
    assert "Email address not-an-email is invalid" in result.rejected[1]
    assert sorted(fake.objects["contacts"][i]["email"] for i in fake.objects["contacts"]) == [  # type: ignore[type-var]
        "fine@x.io",
        "ok@x.io",
    ]


def test_insert_207_maps_invalid_property_value_to_its_record(fake: HubSpotFake) -> None:
    records = [{"email": "bad@@", "firstname": "A"}, {"email": "b@x.io", "firstname": "B"}]
    result = write(fake, batch(records, operation=Operation.INSERT, match=None))
    assert list(result.rejected) == [0]
    assert "INVALID_EMAIL" in result.rejected[0]
    assert len(fake.objects["contacts"]) == 1


def test_whole_batch_400_naming_one_record_rejects_it_and_keeps_others_undelivered(
    fake: HubSpotFake,
) -> None:
    fake.fail_next(
        status=400,
        body={
            "status": "error",
            "message": 'Property "plann" does not exist',
            "correlationId": "c-1",
            "category": "VALIDATION_ERROR",
            "context": {"objectWriteTraceId": ["1"]},
        },
    )
    result = write(fake, batch([{"email": "a@x.io"}, {"email": "b@x.io", "plann": "x"}]))
    assert list(result.rejected) == [1]
    assert 'Property "plann" does not exist' in result.rejected[1]
    assert list(result.failed) == [0]


def test_unattributed_207_error_leaves_unconfirmed_records_undelivered(fake: HubSpotFake) -> None:
    fake.fail_next(
        status=207,
        body={
            "status": "COMPLETE",
            "results": [{"id": "1", "properties": {}, "objectWriteTraceId": "0"}],
            "errors": [
                {"status": "error", "category": "INTERNAL", "message": "boom", "context": {}}
            ],
            "numErrors": 1,
            "startedAt": "2026-01-01T00:00:00Z",
            "completedAt": "2026-01-01T00:00:01Z",
        },
    )
    result = write(fake, batch([{"email": "a@x.io"}, {"email": "b@x.io"}]))
    assert result.rejected == {}
    assert result.failed == {1: "HubSpot INTERNAL: boom"}


def test_more_than_100_inputs_are_refused_by_the_fake_then_sent_in_halves(
    fake: HubSpotFake,
) -> None:
    records = [{"email": f"u{n}@x.io"} for n in range(101)]
    result = write(fake, batch(records))
    assert result == BatchResult()
    sizes = [len(r.body["inputs"]) for r in fake.requests if r.path.endswith("batch/upsert")]
    assert sizes == [101, 50, 51]  # the fake refused 101 (HubSpot's 400), the halves went in
    assert len(fake.objects["contacts"]) == 101


def test_a_whole_batch_400_naming_no_input_is_bisected_to_the_bad_one(fake: HubSpotFake) -> None:
    fake.types.types["contacts"].add("plan")
    fake.strict_properties = True
    records = [{"email": f"u{n}@x.io", "plan": "pro"} for n in range(40)]
    records[13] = {"email": "u13@x.io", "plann": "typo"}
    b = batch(records)
    for item in b.records():  # no trace ids: HubSpot fails the whole request on one input
        item.pop("objectWriteTraceId", None)

    async def go() -> BatchResult:
        dest = destination(fake)
        original = dest.shape

        def without_trace(record: dict[str, Any], **kw: Any) -> Any:
            body = original(record, **kw)
            if isinstance(body, dict):
                body.pop("objectWriteTraceId", None)
            return body

        dest.shape = without_trace  # type: ignore[method-assign]
        try:
            return await dest.write_batch(b)
        finally:
            await dest.close()

    result = asyncio.run(go())
    assert list(result.rejected) == [13]
    assert 'Property "plann" does not exist' in result.rejected[13]
    assert len(fake.objects["contacts"]) == 39


def test_batch_size_cannot_exceed_hubspots_limit() -> None:
    with pytest.raises(ValidationError, match="less than or equal to 100"):
        HubSpotConfig(type="hubspot", token=TOKEN, batch_size=101)


def test_duplicate_match_values_in_one_batch_reject_the_later_row(fake: HubSpotFake) -> None:
    result = write(fake, batch([{"email": "a@x.io", "n": 1}, {"email": "A@x.io", "n": 2}]))
    assert list(result.rejected) == [1]
    assert "row 0 of the same batch has the same email" in result.rejected[1]
    assert len(sent_inputs(fake, "batch/upsert")) == 1


def test_missing_match_value_is_rejected_before_sending(fake: HubSpotFake) -> None:
    result = write(fake, batch([{"email": None, "plan": "x"}, {"email": "a@x.io"}]))
    assert result.rejected == {0: "no value for the match field 'email'"}
    assert [i["id"] for i in sent_inputs(fake, "batch/upsert")] == ["a@x.io"]


# -- value shaping -------------------------------------------------------------------------


def test_lists_booleans_numbers_and_nulls_become_hubspot_text(fake: HubSpotFake) -> None:
    record = {
        "email": "a@x.io",
        "interests": ["chocolate", "strawberry", None],
        "vip": True,
        "churned": False,
        "seats": 42,
        "score": 3.5,
        "mrr": 100.0,
        "notes": None,
    }
    result = write(fake, batch([record]))
    assert result == BatchResult()
    stored = fake.objects["contacts"].by_email("a@x.io")
    assert stored is not None
    assert {k: stored[k] for k in record} == {
        "email": "a@x.io",
        "interests": "chocolate;strawberry",
        "vip": "true",
        "churned": "false",
        "seats": "42",
        "score": "3.5",
        "mrr": "100",
        "notes": "",
    }
    sent = sent_inputs(fake, "batch/upsert")[0]["properties"]
    assert all(isinstance(v, str) for v in sent.values())


def test_nested_object_rejects_that_record_and_is_never_sent(fake: HubSpotFake) -> None:
    records = [{"email": "a@x.io", "address": {"city": "Paris"}}, {"email": "b@x.io"}]
    result = write(fake, batch(records))
    assert list(result.rejected) == [0]
    assert "field 'address' is a nested object" in result.rejected[0]
    assert [i["objectWriteTraceId"] for i in sent_inputs(fake, "batch/upsert")] == ["1"]
    assert fake.objects["contacts"].by_email("a@x.io") is None


def test_list_item_with_separator_or_nesting_is_rejected(fake: HubSpotFake) -> None:
    records = [{"email": "a@x.io", "tags": ["a;b"]}, {"email": "b@x.io", "tags": [["x"]]}]
    result = write(fake, batch(records))
    assert "';'" in result.rejected[0]
    assert "nested value" in result.rejected[1]
    assert not any(r.path.endswith("batch/upsert") for r in fake.requests)


# -- whole-request failures ----------------------------------------------------------------


def test_burst_429_is_retryable_with_the_window_as_wait(fake: HubSpotFake) -> None:
    fake.throttle_next(1)
    error = first_answer(fake, batch([{"email": "a@x.io"}]))
    assert error.retry_after == 10.0
    assert "TEN_SECONDLY_ROLLING" in str(error)
    assert fake.objects["contacts"] == {}


def test_burst_429_is_waited_out_then_the_batch_is_written() -> None:
    hubspot = HubSpotFake(TOKEN, window_seconds=0.3)  # the interval header says 300 ms
    with serve_in_thread(hubspot.app) as server:
        hubspot.url = server.url  # type: ignore[attr-defined]
        hubspot.throttle_next(1)
        result = write(hubspot, batch([{"email": "a@x.io"}]))
    assert result == BatchResult()
    upserts = [r for r in hubspot.requests if r.path.endswith("batch/upsert")]
    assert len(upserts) == 2 and hubspot.objects["contacts"].by_email("a@x.io") is not None


def test_rolling_window_of_the_fake_throttles_for_real() -> None:
    hubspot = HubSpotFake(TOKEN, rate_limit_per_10s=2)
    with serve_in_thread(hubspot.app) as server:
        hubspot.url = server.url  # type: ignore[attr-defined]
        write(hubspot, batch([{"email": "a@x.io"}]))
        write(hubspot, batch([{"email": "b@x.io"}]))
        error = first_answer(hubspot, batch([{"email": "c@x.io"}]))
    assert error.retry_after == 10.0
    assert len(hubspot.objects["contacts"]) == 2
    assert hubspot.slow_downs == 1


def test_daily_limit_stops_the_run(fake: HubSpotFake) -> None:
    fake.throttle_next(1, policy="DAILY")
    with pytest.raises(FatalDeliveryError, match="daily API limit is reached"):
        write(fake, batch([{"email": "a@x.io"}]))


def test_server_error_and_locked_are_retryable(fake: HubSpotFake) -> None:
    fake.fail_next(status=503)
    first_answer(fake, batch([{"email": "a@x.io"}]))
    fake.fail_next(status=423, body={"status": "error", "message": "locked", "category": "LOCKED"})
    error = first_answer(fake, batch([{"email": "a@x.io"}]))
    assert error.retry_after == 2.0
    assert fake.objects["contacts"] == {}
    fake.fail_next(status=503)
    assert write(fake, batch([{"email": "a@x.io"}])) == BatchResult()  # retried, then written
    assert fake.objects["contacts"].by_email("a@x.io") is not None


def test_unknown_object_is_fatal_and_suggests_the_closest(fake: HubSpotFake) -> None:
    with pytest.raises(FatalDeliveryError, match="did you mean 'contacts'"):
        write(fake, batch([{"email": "a@x.io"}], object="contact"))
    assert fake.requests == []


def test_upsert_needs_exactly_one_match_field(fake: HubSpotFake) -> None:
    with pytest.raises(FatalDeliveryError, match="exactly one match field"):
        write(fake, batch([{"email": "a@x.io"}], match=None))


# -- check ---------------------------------------------------------------------------------


def test_check_passes_with_a_valid_token(fake: HubSpotFake) -> None:
    check(fake)
    request = fake.requests[-1]
    assert (request.method, request.path, request.query) == (
        "GET",
        "/crm/v3/objects/contacts",
        {"limit": "1"},
    )
    assert request.authorized


def test_check_with_a_bad_token_says_what_to_fix(fake: HubSpotFake) -> None:
    wrong = "pat-na1-00000000-bad-bad-bad-000000000000"
    with pytest.raises(FatalDeliveryError) as caught:
        check(fake, token=wrong)
    message = str(caught.value)
    assert "'crm'" in message
    assert "private app token" in message
    assert "crm.objects.contacts.write" in message
    assert wrong not in message


def test_capabilities_follow_the_config(fake: HubSpotFake) -> None:
    dest = destination(fake, batch_size=50, rate_limit_per_10s=100, max_concurrency=2)
    caps = dest.capabilities_for("contacts")
    assert (caps.max_batch_size, caps.max_concurrency) == (50, 2)
    assert caps.rate_limit is not None and caps.rate_limit.requests == 100
    assert caps.per_record_results and caps.requires_match
    assert {o.value for o in caps.operations} == {"upsert", "insert", "update", "delete"}


def test_delete_by_a_non_unique_property_is_rejected_not_accepted(fake: HubSpotFake) -> None:
    write(fake, batch([{"domain": "acme.com", "name": "Acme"}], match="domain", object="companies"))
    records = [{"name": "Acme"}]
    result = write(
        fake, batch(records, operation=Operation.DELETE, match="name", object="companies")
    )
    assert list(result.rejected) == [0]
    assert "name is not a unique property of companies" in result.rejected[0]
    assert len(fake.objects["companies"]) == 1


def test_429_without_rate_headers_falls_back_on_the_policy_name(fake: HubSpotFake) -> None:
    from starlette.responses import JSONResponse

    answers = iter(["TEN_SECONDLY_ROLLING", "DAILY"])
    fake.faults = lambda request: JSONResponse(fake.rate_limit_body(next(answers)), status_code=429)
    assert first_answer(fake, batch([{"email": "a@x.io"}])).retry_after == 10.0
    with pytest.raises(FatalDeliveryError, match="daily API limit"):
        write(fake, batch([{"email": "a@x.io"}]))
