"""The Attio fake and connector against Attio's public docs (no spec file in ../shared/specs).

Each fact below is cited on docs/destinations/attio.md next to the Attio page that states
it; ``test_the_docs_page_still_states_the_facts`` fails when the page changes, and each
other test checks one fact against the fake (what it answers anyone) or the connector (what
it sends). What the docs do not state is listed as "not confirmed" on the page.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conformance_support import Answer, assert_docs_state, batch, call, write

from undertow.destinations.attio import (
    ASSERT_DOC,
    ATTRIBUTES_DOC,
    DELETE_DOC,
    RATE_DOC,
    READS_PER_SECOND,
    WRITES_PER_SECOND,
    AttioConfig,
    AttioDestination,
)
from undertow.destinations.base import BatchResult, Operation
from undertow.testing.attio import AttioFake

pytestmark = pytest.mark.conformance

TOKEN = "attio-conformance-0000"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FACTS = [
    ("25 per second", RATE_DOC),
    ("100 per second", RATE_DOC),
    ("`Retry-After` is an HTTP **date**", RATE_DOC),
    ("1 (no batch write endpoint)", ASSERT_DOC),
    ("required, must be a unique attribute", ASSERT_DOC),
    ("answers `200 {}`", DELETE_DOC),
    ("`api_slug`, `type`, `is_unique`, `is_writable`, `is_archived`", ATTRIBUTES_DOC),
]


@pytest.fixture
def served() -> Iterator[tuple[AttioFake, str]]:
    fake = AttioFake(TOKEN)
    with fake.serve() as url:
        yield fake, url


def assert_error(answer: Answer, status: int, code: str) -> None:
    """Attio's error object: {status_code, type, code, message}, status_code the HTTP one."""
    assert answer.status == status, answer
    assert set(answer.body) == {"status_code", "type", "code", "message"}, answer.body
    assert answer.body["status_code"] == status and answer.body["code"] == code
    assert answer.body["type"] in ("invalid_request_error", "auth_error", "rate_limit_error")


def assert_record(body: Any) -> None:
    data = body["data"]
    assert set(data["id"]) == {"workspace_id", "object_id", "record_id"}
    assert isinstance(data["created_at"], str) and isinstance(data["values"], dict)
    for values in data["values"].values():
        assert isinstance(values, list)
        assert all("attribute_type" in v and "active_from" in v for v in values)


def test_the_docs_page_still_states_the_facts() -> None:
    assert_docs_state("attio.md", FACTS)
    assert (WRITES_PER_SECOND, READS_PER_SECOND) == (25, 100)
    caps = AttioDestination.capabilities
    assert caps.rate_limit is not None
    assert (caps.rate_limit.requests, caps.rate_limit.per_seconds) == (25, 1.0)
    assert caps.rate_limit.doc == RATE_DOC and caps.cite["rate_limit"] == RATE_DOC


# -- what the fake answers -----------------------------------------------------------------


def test_assert_needs_a_unique_matching_attribute(served: tuple[AttioFake, str]) -> None:
    _, url = served
    body = {"data": {"values": {"email_addresses": "a@x.io", "job_title": "CTO"}}}
    path = "/v2/objects/people/records"
    missing = call(url, "PUT", path, body, headers=AUTH)
    not_unique = call(url, "PUT", path + "?matching_attribute=job_title", body, headers=AUTH)
    first = call(url, "PUT", path + "?matching_attribute=email_addresses", body, headers=AUTH)
    again = call(url, "PUT", path + "?matching_attribute=email_addresses", body, headers=AUTH)
    assert_error(missing, 400, "value_not_found")
    assert_error(not_unique, 400, "validation_type")
    assert first.status == again.status == 200
    assert_record(first.body)
    assert first.body["data"]["id"] == again.body["data"]["id"]


def test_delete_answers_200_empty_and_404_for_an_unknown_id(served: tuple[AttioFake, str]) -> None:
    _, url = served
    body = {"data": {"values": {"email_addresses": "a@x.io"}}}
    made = call(url, "POST", "/v2/objects/people/records", body, headers=AUTH)
    record_id = made.body["data"]["id"]["record_id"]
    gone = call(url, "DELETE", f"/v2/objects/people/records/{record_id}", headers=AUTH)
    again = call(url, "DELETE", f"/v2/objects/people/records/{record_id}", headers=AUTH)
    assert (gone.status, gone.body) == (200, {})
    assert_error(again, 404, "not_found")
    assert again.body["message"] == f'Record with ID "{record_id}" not found.'


def test_attributes_list_the_documented_fields(served: tuple[AttioFake, str]) -> None:
    _, url = served
    answer = call(url, "GET", "/v2/objects/people/attributes", headers=AUTH)
    assert answer.status == 200
    for attribute in answer.body["data"]:
        assert {"api_slug", "type", "is_unique", "is_writable", "is_archived", "id"} <= set(
            attribute
        )
    slugs = {a["api_slug"]: a for a in answer.body["data"]}
    assert slugs["email_addresses"]["is_unique"] and slugs["email_addresses"]["is_multiselect"]
    assert_error(call(url, "GET", "/v2/objects/nope/attributes", headers=AUTH), 404, "not_found")


def test_errors_are_attio_error_objects(served: tuple[AttioFake, str]) -> None:
    _, url = served
    values = {"data": {"values": {"email_addresses": "a@x.io", "plann": "pro"}}}
    assert_error(
        call(url, "POST", "/v2/objects/people/records", values, headers=AUTH),
        400,
        "value_not_found",
    )
    assert_error(call(url, "GET", "/v2/self"), 401, "unauthorized")
    assert_error(
        call(url, "GET", "/v2/self", headers={"Authorization": "Bearer nope"}), 401, "unauthorized"
    )


def test_writes_and_reads_have_their_own_per_second_windows() -> None:
    fake = AttioFake(TOKEN, window_seconds=30.0)  # the documented counts, a long window
    with fake.serve() as url:
        body = {"data": {"values": {"job_title": "x"}}}
        writes = [
            call(url, "POST", "/v2/objects/people/records", body, headers=AUTH) for _ in range(26)
        ]
        reads = [call(url, "GET", "/v2/self", headers=AUTH) for _ in range(101)]
    assert [a.status for a in writes].count(200) == 25 and writes[-1].status == 429
    assert [a.status for a in reads].count(200) == 100 and reads[-1].status == 429
    for answer in (writes[-1], reads[-1]):
        assert_error(answer, 429, "rate_limit_exceeded")
        assert answer.body["type"] == "rate_limit_error"
        when = email.utils.parsedate_to_datetime(answer.headers["retry-after"])
        assert when.tzinfo is not None and when.timestamp() > time.time()


# -- what the connector sends --------------------------------------------------------------


def connector(url: str, **extra: Any) -> AttioDestination:
    config = AttioConfig(type="attio", token=TOKEN, base_url=url, **extra)
    return AttioDestination(config, name="crm")


def test_connector_requests_have_the_documented_shape(served: tuple[AttioFake, str]) -> None:
    fake, url = served
    people = [{"email_addresses": "a@x.io", "job_title": "CTO"}, {"email_addresses": "b@x.io"}]
    for operation in (Operation.UPSERT, Operation.UPDATE, Operation.DELETE):
        b = batch(people, operation=operation, match="email_addresses", object="people")
        assert write(connector(url), b) == BatchResult()
    assert (
        write(connector(url), batch(people[:1], operation=Operation.INSERT, object="people"))
        == BatchResult()
    )
    for request in fake.requests:
        if request.method == "PUT" and request.path == "/v2/objects/people/records":
            assert request.query == {"matching_attribute": "email_addresses"}
        if request.method in ("PUT", "POST") and not request.path.endswith("/query"):
            assert set(request.body) == {"data"} and set(request.body["data"]) == {"values"}
        if request.path.endswith("/query"):
            assert set(request.body) == {"filter", "limit"}
        assert request.headers["content-type"].startswith("application/json") or request.method in (
            "GET",
            "DELETE",
        )
    kinds = {(r.method, r.path.count("/")) for r in fake.requests}
    assert ("DELETE", 5) in kinds and ("PUT", 5) in kinds and ("PUT", 4) in kinds


def test_connector_stays_under_25_writes_per_second_at_the_default_limits() -> None:
    fake = AttioFake(TOKEN)  # Attio's documented limits, a 1 s rolling window
    with fake.serve() as url:
        records = [{"email_addresses": f"u{n}@x.io"} for n in range(60)]
        started = time.monotonic()
        result = write(connector(url), batch(records, match="email_addresses", object="people"))
        took = time.monotonic() - started
    assert result == BatchResult()
    assert fake.slow_downs == 0
    assert took >= 2.0  # 60 writes at 25 per rolling second


def test_connector_waits_for_the_dated_retry_after(served: tuple[AttioFake, str]) -> None:
    fake, url = served
    fake.throttle_next(1)
    b = batch([{"email_addresses": "a@x.io"}], match="email_addresses", object="people")
    assert write(connector(url), b) == BatchResult()
    puts = [r for r in fake.requests if r.method == "PUT"]
    assert len(puts) == 2 and puts[0].status == 429 and fake.slow_downs == 1
    assert fake.by("people", "email_addresses", "a@x.io") is not None
