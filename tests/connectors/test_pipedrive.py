"""The Pipedrive destination against the local Pipedrive fake (undertow.testing.pipedrive)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import orjson
import pytest

from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.pipedrive import PipedriveConfig, PipedriveDestination
from undertow.errors import FatalDeliveryError
from undertow.testing.pipedrive import PipedriveFake, field_code
from undertow.testing.template import DestinationTests

pytestmark = pytest.mark.connectors

TOKEN = "pipedrive-secret-0123456789abcdef0123456789abcdef"
FAST = {"window_seconds": 0.2, "requests_per_2s": 400, "search_per_2s": 200}


class TestPipedrivePersons(DestinationTests):
    """The shared destination suite on Pipedrive persons, matched by email."""

    destination = PipedriveDestination
    fake = PipedriveFake
    token = TOKEN
    secret_field = "api_token"
    object = "persons"
    match = "email"
    config: ClassVar[dict[str, Any]] = {"requests_per_2s": 350, "search_per_2s": 180}
    fake_options: ClassVar[dict[str, Any]] = FAST
    invalid = ({"email": "bad@x.io", "name": "Bad", "Seats": "lots"}, "invalid value 'lots'")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"email": f"user{n}@example.com", "name": f"User {n}", "Country": f"v{version}"}

    def stored(self, fake: PipedriveFake, record: dict[str, Any]) -> dict[str, Any] | None:
        return fake.by("persons", "email", record["email"])

    def count(self, fake: PipedriveFake) -> int:
        return len(fake.store["persons"])

    def same(self, stored: dict[str, Any], record: dict[str, Any]) -> bool:
        emails = [e["value"] for e in stored["emails"]]
        country = stored["custom_fields"][field_code("persons", "Country")]
        return (emails, stored["name"], country) == (
            [record["email"]],
            record["name"],
            record["Country"],
        )


class TestPipedriveOrganizations(TestPipedrivePersons):
    """The same suite on organizations, matched by name."""

    object = "organizations"
    match = "name"
    invalid = ({"name": "Bad Co", "ARR": "lots"}, "invalid value 'lots'")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"name": f"Acme {n}", "Domain": f"acme{n}.example", "ARR": float(version)}

    def stored(self, fake: PipedriveFake, record: dict[str, Any]) -> dict[str, Any] | None:
        return fake.by("organizations", "name", record["name"])

    def count(self, fake: PipedriveFake) -> int:
        return len(fake.store["organizations"])

    def same(self, stored: dict[str, Any], record: dict[str, Any]) -> bool:
        custom = stored["custom_fields"]
        return (stored["name"], custom[field_code("organizations", "ARR")]) == (
            record["name"],
            record["ARR"],
        )


@pytest.fixture
def fake() -> Iterator[PipedriveFake]:
    pipedrive = PipedriveFake(TOKEN, **FAST)
    with pipedrive.serve():
        yield pipedrive


def batch(
    records: list[dict[str, Any]],
    *,
    operation: Operation = Operation.UPSERT,
    match: str | None = "email",
    object: str = "persons",
) -> Batch:
    identifiers = {match: [r.get(match) for r in records]} if match else {}
    return Batch(
        sync="people_to_pipedrive",
        operation=operation,
        number=0,
        idempotency_key="k",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers=identifiers,
        object=object,
    )


def destination(fake: PipedriveFake, **extra: Any) -> PipedriveDestination:
    values = {"type": "pipedrive", "api_token": TOKEN, "base_url": fake.url}
    values |= {"requests_per_2s": 350, "search_per_2s": 180} | extra
    return PipedriveDestination(PipedriveConfig.model_validate(values), name="crm")


def write(fake: PipedriveFake, b: Batch, **extra: Any) -> BatchResult:
    async def go() -> BatchResult:
        dest = destination(fake, **extra)
        try:
            return await dest.write_batch(b)
        finally:
            await dest.close()

    return asyncio.run(go())


def validate(
    fake: PipedriveFake, object_: str, match: dict[str, str], fields: list[str]
) -> list[str]:
    async def go() -> list[str]:
        dest = destination(fake)
        try:
            return await dest.validate_sync(sync="s", object=object_, match=match, fields=fields)
        finally:
            await dest.close()

    return asyncio.run(go())


def sent(fake: PipedriveFake, method: str) -> list[Any]:
    return [r for r in fake.requests if r.method == method]


# -- shaping -------------------------------------------------------------------------------


def test_email_phone_and_custom_fields_by_name_become_the_v2_body(fake: PipedriveFake) -> None:
    record = {
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "phone": ["+44 1", "+44 2"],
        "Plan": "Pro",
        "Seats": 3,
        field_code("persons", "Country"): "GB",
    }
    assert write(fake, batch([record])) == BatchResult()
    body = sent(fake, "POST")[-1].body
    assert body == {
        "name": "Ada Lovelace",
        "emails": [{"value": "ada@example.com", "primary": True, "label": "work"}],
        "phones": [
            {"value": "+44 1", "primary": True, "label": "work"},
            {"value": "+44 2", "primary": False, "label": "work"},
        ],
        "custom_fields": {
            field_code("persons", "Plan"): 3,  # the option id of "pro"
            field_code("persons", "Seats"): 3,
            field_code("persons", "Country"): "GB",
        },
    }
    fields = [r for r in fake.requests if r.path == "/api/v2/personFields"]
    assert len(fields) == 1 and fields[0].query == {"limit": "500"}


def test_a_field_pipedrive_does_not_have_is_rejected_before_sending(fake: PipedriveFake) -> None:
    records = [
        {"email": "a@x.io", "name": "A", "Plann": "pro"},
        {"email": "b@x.io", "name": "B", "Plan": "platinum"},
        {"email": "c@x.io", "name": "C"},
    ]
    result = write(fake, batch(records))
    assert "Pipedrive has no person field 'Plann'; did you mean 'Plan'?" in result.rejected[0]
    assert (
        "has no option 'platinum' (its options: free, starter, pro, enterprise)"
        in (result.rejected[1])
    )
    assert list(result.rejected) == [0, 1]
    assert [r.body["emails"][0]["value"] for r in sent(fake, "POST")] == ["c@x.io"]


def test_the_match_value_is_added_when_not_mapped(fake: PipedriveFake) -> None:
    b = batch([{"name": "Grace"}])
    b.identifiers = {"email": ["grace@example.com"]}
    assert write(fake, b) == BatchResult()
    assert fake.by("persons", "email", "GRACE@example.com") is not None


# -- modes ---------------------------------------------------------------------------------


def test_upsert_searches_then_patches_the_record_it_finds(fake: PipedriveFake) -> None:
    write(fake, batch([{"email": "a@x.io", "name": "A", "Country": "FR"}]))
    first_id = fake.by("persons", "email", "a@x.io")["id"]  # type: ignore[index]
    assert write(fake, batch([{"email": "A@x.io", "name": "A2"}])) == BatchResult()
    assert len(fake.store["persons"]) == 1
    patched = sent(fake, "PATCH")[-1]
    assert patched.path == f"/api/v2/persons/{first_id}"
    searches = [r for r in fake.requests if r.path.endswith("/search")]
    assert searches[-1].query == {
        "term": "A@x.io",
        "fields": "email",
        "exact_match": "true",
        "limit": "2",
    }
    stored = fake.by("persons", "email", "a@x.io")
    assert stored is not None and stored["name"] == "A2"
    assert fake.custom("persons", stored, "Country") == "FR"  # an unmapped field stays


def test_two_records_with_the_match_value_reject_the_row(fake: PipedriveFake) -> None:
    for name in ("One", "Two"):
        write(
            fake, batch([{"name": name, "Country": "dup"}], operation=Operation.INSERT, match=None)
        )
    result = write(fake, batch([{"name": "Three", "Country": "dup"}], match="Country"))
    assert "more than one person whose Country is 'dup'" in result.rejected[0]


def test_match_on_a_custom_field_searches_custom_fields(fake: PipedriveFake) -> None:
    records = [{"External ID": "ext-1", "name": "Ext"}]
    assert write(fake, batch(records, match="External ID")) == BatchResult()
    assert write(fake, batch(records, match="External ID")) == BatchResult()
    assert len(fake.store["persons"]) == 1
    search = [r for r in fake.requests if r.path.endswith("/search")][-1]
    assert search.query["fields"] == "custom_fields"


def test_match_on_a_field_pipedrive_cannot_search_stops_the_run(fake: PipedriveFake) -> None:
    with pytest.raises(FatalDeliveryError, match="cannot match persons on 'Plan'"):
        write(fake, batch([{"Plan": "pro", "name": "x"}], match="Plan"))


def test_update_rejects_records_pipedrive_does_not_have(fake: PipedriveFake) -> None:
    write(fake, batch([{"email": "a@x.io", "name": "A"}]))
    records = [{"email": "a@x.io", "name": "A+"}, {"email": "ghost@x.io", "name": "G"}]
    result = write(fake, batch(records, operation=Operation.UPDATE))
    assert list(result.rejected) == [1]
    assert "no persons record whose email is 'ghost@x.io'" in result.rejected[1]
    assert fake.by("persons", "email", "ghost@x.io") is None
    assert fake.by("persons", "email", "a@x.io")["name"] == "A+"  # type: ignore[index]


def test_delete_searches_then_deletes_and_accepts_the_unknown(fake: PipedriveFake) -> None:
    write(fake, batch([{"email": "a@x.io", "name": "A"}, {"email": "b@x.io", "name": "B"}]))
    gone = fake.by("persons", "email", "a@x.io")["id"]  # type: ignore[index]
    b = batch([{"email": "a@x.io"}, {"email": "never@x.io"}], operation=Operation.DELETE)
    assert write(fake, b) == BatchResult()
    assert [r.path for r in sent(fake, "DELETE")] == [f"/api/v2/persons/{gone}"]
    assert len(fake.store["persons"]) == 1


def test_a_missing_name_on_create_is_pipedrives_rejection(fake: PipedriveFake) -> None:
    result = write(fake, batch([{"email": "a@x.io"}]))
    assert result.rejected == {0: "Pipedrive: Validation failed: name: Required"}


# -- slow down and limits ------------------------------------------------------------------


def test_searches_are_paced_by_their_own_window(fake: PipedriveFake) -> None:
    records = [{"email": f"u{n}@x.io", "name": f"U{n}"} for n in range(12)]
    started = time.monotonic()
    result = write(fake, batch(records), search_per_2s=5, requests_per_2s=100)
    assert result == BatchResult()
    assert fake.slow_downs == 0
    assert time.monotonic() - started >= 4.0  # 12 searches at 5 per rolling 2 s


def test_a_429_waits_and_the_daily_budget_stops_the_run() -> None:
    pipedrive = PipedriveFake(TOKEN, **FAST)
    with pipedrive.serve():
        pipedrive.throttle_next(1)
        assert write(pipedrive, batch([{"email": "a@x.io", "name": "A"}])) == BatchResult()
        assert pipedrive.slow_downs == 1
        pipedrive.fail_next(
            status=429,
            body={"success": False, "error": "Request over limit", "errorCode": 429},
            headers={"x-daily-requests-left": "0"},
        )
        with pytest.raises(FatalDeliveryError, match="daily request budget is spent"):
            write(pipedrive, batch([{"email": "b@x.io", "name": "B"}]))


def test_remaining_count_headers_slow_down_before_a_429(fake: PipedriveFake) -> None:
    fake.fail_next(
        status=200,
        body={"success": True, "data": []},
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"},
        path="/api/v2/personFields",
    )
    started = time.monotonic()
    assert write(fake, batch([{"email": "a@x.io", "name": "A"}])) == BatchResult()
    assert time.monotonic() - started >= 0.9
    assert fake.slow_downs == 0


# -- check and validate --------------------------------------------------------------------


def test_check_reads_the_tokens_user(fake: PipedriveFake) -> None:
    async def check() -> None:
        dest = destination(fake)
        try:
            await dest.check()
        finally:
            await dest.close()

    asyncio.run(check())
    assert fake.requests[-1].path == "/api/v1/users/me"
    assert "x-api-token" not in fake.requests[-1].headers  # the fake never keeps it


def test_validate_names_unknown_fields_and_unsearchable_matches(fake: PipedriveFake) -> None:
    problems = validate(fake, "persons", {"Plan": "plan"}, ["name", "email", "Seats", "Plann"])
    assert any("cannot match persons on 'Plan'" in p for p in problems)
    assert any("no person field 'Plann'; did you mean 'Plan'?" in p for p in problems)
    assert len(problems) == 2
    assert validate(fake, "persons", {"email": "e"}, ["email", "name", "MRR", "plan"]) == []
