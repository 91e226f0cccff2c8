"""The Pipedrive fake and connector against Pipedrive's public docs (no spec file in
../shared/specs).

Each fact below is cited on docs/destinations/pipedrive.md next to the Pipedrive page that
states it; ``test_the_docs_page_still_states_the_facts`` fails when the page changes, and
each other test checks one fact against the fake or the connector.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from conformance_support import assert_docs_state, batch, call, write

from undertow.destinations.base import BatchResult, Operation
from undertow.destinations.pipedrive import (
    PERSONS_DOC,
    RATE_DOC,
    REQUESTS_PER_2S,
    SEARCH_PER_2S,
    PipedriveConfig,
    PipedriveDestination,
)
from undertow.testing.pipedrive import PipedriveFake

pytestmark = pytest.mark.conformance

TOKEN = "pipedrive-conformance-0000"
AUTH = {"x-api-token": TOKEN}
FACTS = [
    ("20 (Essential), 40 (Advanced), 80 (Professional), 100 (Power), 120 (Enterprise)", RATE_DOC),
    ("10 requests per 2 s, every plan", RATE_DOC),
    (
        "`x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset`, `x-daily-requests-left`",
        RATE_DOC,
    ),
    ("1 (no batch write endpoint)", PERSONS_DOC),
    ("`custom_fields` (40-character codes)", PERSONS_DOC),
]
RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


@pytest.fixture
def served() -> Iterator[tuple[PipedriveFake, str]]:
    fake = PipedriveFake(TOKEN, requests_per_2s=200, search_per_2s=100)
    with fake.serve() as url:
        yield fake, url


def test_the_docs_page_still_states_the_facts() -> None:
    assert_docs_state("pipedrive.md", FACTS)
    assert (REQUESTS_PER_2S, SEARCH_PER_2S) == (20, 10)
    caps = PipedriveDestination.capabilities
    assert caps.rate_limit is not None
    assert (caps.rate_limit.requests, caps.rate_limit.per_seconds) == (20, 2.0)
    assert caps.rate_limit.doc == RATE_DOC


# -- what the fake answers -----------------------------------------------------------------


def test_answers_are_success_envelopes_with_rate_headers(served: tuple[PipedriveFake, str]) -> None:
    _, url = served
    person = {"name": "Ada", "emails": [{"value": "a@x.io", "primary": True, "label": "work"}]}
    answers = [
        call(url, "GET", "/api/v1/users/me", headers=AUTH),
        call(url, "POST", "/api/v2/persons", person, headers=AUTH),
        call(
            url,
            "GET",
            "/api/v2/persons/search?term=a@x.io&fields=email&exact_match=true",
            headers=AUTH,
        ),
        call(url, "GET", "/api/v2/personFields?limit=500", headers=AUTH),
    ]
    assert [a.status for a in answers] == [200, 201, 200, 200]
    for answer in answers:
        assert answer.body["success"] is True and "data" in answer.body
        assert all(answer.headers[h].isdigit() for h in RATE_HEADERS)
    created = answers[1].body["data"]
    assert isinstance(created["id"], int) and created["emails"][0]["value"] == "a@x.io"
    items = answers[2].body["data"]["items"]
    assert [i["item"]["id"] for i in items] == [created["id"]] and "result_score" in items[0]
    for field in answers[3].body["data"]:
        assert {"field_code", "field_name", "field_type", "is_custom_field"} <= set(field)
        if field["is_custom_field"]:
            assert len(field["field_code"]) == 40


def test_errors_are_failure_envelopes(served: tuple[PipedriveFake, str]) -> None:
    _, url = served
    answers = {
        401: call(url, "GET", "/api/v1/users/me"),
        400: call(url, "POST", "/api/v2/persons", {"emails": []}, headers=AUTH),
        404: call(url, "PATCH", "/api/v2/persons/999999", {"name": "x"}, headers=AUTH),
    }
    for status, answer in answers.items():
        assert answer.status == status
        assert answer.body["success"] is False and answer.body["error"]
    assert answers[401].body["error"] == "unauthorized access"


def test_the_2s_window_and_the_search_window() -> None:
    fake = PipedriveFake(TOKEN, window_seconds=30.0)  # the documented counts, a long window
    with fake.serve() as url:
        search = "/api/v2/persons/search?term=x&fields=name&exact_match=true"
        searches = [call(url, "GET", search, headers=AUTH) for _ in range(11)]
        others = [call(url, "GET", "/api/v1/users/me", headers=AUTH) for _ in range(11)]
    assert [a.status for a in searches].count(200) == 10 and searches[-1].status == 429
    # a refused search counts nowhere: 10 searches and 10 others make the 20 per window
    assert [a.status for a in others].count(200) == 10 and others[-1].status == 429
    for answer in (searches[-1], others[-1]):
        assert answer.body["success"] is False
        assert int(answer.headers["retry-after"]) >= 1
    assert [a.headers["x-ratelimit-remaining"] for a in others[-3:-1]] == ["1", "0"]


# -- what the connector sends --------------------------------------------------------------


def connector(url: str, **extra: Any) -> PipedriveDestination:
    values: dict[str, Any] = {"type": "pipedrive", "api_token": TOKEN, "base_url": url}
    return PipedriveDestination(PipedriveConfig.model_validate(values | extra), name="crm")


def test_connector_requests_have_the_v2_shapes(served: tuple[PipedriveFake, str]) -> None:
    fake, url = served
    people = [{"email": "a@x.io", "name": "A", "Seats": 2}, {"email": "b@x.io", "name": "B"}]
    for operation in (Operation.UPSERT, Operation.UPDATE, Operation.DELETE):
        b = batch(people, operation=operation, match="email", object="persons")
        assert write(connector(url, requests_per_2s=200, search_per_2s=100), b) == BatchResult()
    for request in fake.requests:
        assert "x-api-token" not in request.headers and request.authorized
        if request.method in ("POST", "PATCH"):
            assert set(request.body) <= {"name", "emails", "custom_fields"}
            assert all(len(code) == 40 for code in request.body.get("custom_fields", {}))
        if request.path.endswith("/search"):
            assert request.query["exact_match"] == "true" and request.query["fields"] == "email"
    kinds = {(r.method, r.path.rsplit("/", 1)[-1].isdigit()) for r in fake.requests}
    assert {("POST", False), ("PATCH", True), ("DELETE", True), ("GET", False)} <= kinds


def test_connector_stays_within_the_default_windows() -> None:
    fake = PipedriveFake(TOKEN)  # 20 per 2 s, 10 searches per 2 s
    with fake.serve() as url:
        people = [{"email": f"u{n}@x.io", "name": f"U{n}"} for n in range(12)]
        started = time.monotonic()
        result = write(connector(url), batch(people, match="email", object="persons"))
        took = time.monotonic() - started
    assert result == BatchResult()
    assert fake.slow_downs == 0
    assert took >= 2.0  # 12 searches at 10 per rolling 2 s
