"""The PostHog fake against what PostHog documents and what its capture service does.

There is no PostHog file in ../shared/specs: the contract is the docs cited on
docs/destinations/posthog.md (PostHog's pages, and PostHog/posthog's ``rust/capture`` where the
pages are silent). ``test_the_docs_page_still_states_each_fact`` fails when the page stops
saying a fact next to its source, so the checks below are revisited with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conformance_support import assert_docs_state, call

from undertow.destinations.posthog import (
    API_DOC,
    CAPTURE_DOC,
    MAX_EVENT_BYTES,
    MAX_REQUEST_BYTES,
    WARNINGS_DOC,
    PostHogDestination,
)
from undertow.testing.posthog import PostHogFake

pytestmark = pytest.mark.conformance

KEY = "phc_conformance0000key"
FACTS = [
    ("less than 20 MB", CAPTURE_DOC),
    ("none documented", CAPTURE_DOC),
    ("PostHog discards events over 1 MB", WARNINGS_DOC),
    ("none stated for capture", API_DOC),
    ("not guaranteed", WARNINGS_DOC),
]


@pytest.fixture
def served() -> Iterator[tuple[PostHogFake, str]]:
    fake = PostHogFake(KEY)
    with fake.serve() as url:
        yield fake, url


def event(n: int, **extra: Any) -> dict[str, Any]:
    return {"event": "Viewed", "distinct_id": f"u{n}", "properties": {"n": n}, **extra}


def post(url: str, events: list[Any], key: str | None = KEY) -> Any:
    payload: dict[str, Any] = {"batch": events}
    if key is not None:
        payload["api_key"] = key
    return call(url, "POST", "/batch/", payload)


def test_the_docs_page_still_states_each_fact() -> None:
    assert_docs_state("posthog.md", FACTS)
    caps = PostHogDestination.capabilities
    assert MAX_REQUEST_BYTES < 20 * 1000 * 1000 + 1 and caps.max_request_bytes == MAX_REQUEST_BYTES
    assert caps.rate_limit is None and caps.cite["rate_limit"] == API_DOC
    assert MAX_EVENT_BYTES < 1_000_000


def test_a_batch_is_answered_ok_and_its_events_kept(served: tuple[PostHogFake, str]) -> None:
    fake, url = served
    answer = post(url, [event(0), {"event": "Viewed", "properties": {"distinct_id": "u1"}}])
    assert answer.status == 200 and answer.body == {"status": "Ok"}
    assert [e["distinct_id"] for e in fake.events] == ["u0", "u1"]  # top level or properties


def test_a_body_of_20_mib_or_more_is_a_413(served: tuple[PostHogFake, str]) -> None:
    fake, url = served
    answer = post(url, [event(n, properties={"blob": "x" * 900_000}) for n in range(24)])
    assert answer.status == 413 and fake.events == []


def test_only_the_shape_of_the_key_is_checked(served: tuple[PostHogFake, str]) -> None:
    fake, url = served
    assert post(url, [event(0)], key=None).status == 401
    personal = post(url, [event(0)], key="phx_personal0000")
    assert personal.status == 401 and b"personal_api_key" in personal.body
    assert post(url, [event(0)], key="phc_" + "x" * 61).status == 401
    unknown = post(url, [event(0)], key="phc_someoneelse0000")
    assert unknown.status == 200 and fake.unknown_key_events == 1 and fake.events == []


def test_one_bad_event_refuses_the_whole_request(served: tuple[PostHogFake, str]) -> None:
    fake, url = served
    for bad, reason in [
        ({"event": "", "distinct_id": "u9"}, b"empty event name"),
        ({"event": "Viewed"}, b"without a distinct_id"),
        (event(9, uuid="not-a-uuid"), b"invalid uuid"),
        (event(9, properties={"blob": "x" * 1_000_001}), b"maximum event size exceeded"),
    ]:
        answer = post(url, [event(0), bad])
        assert answer.status == 400 and reason in answer.body, (bad, answer)
    assert fake.events == [] and post(url, []).status == 400


def test_a_repeated_uuid_is_kept_once(served: tuple[PostHogFake, str]) -> None:
    fake, url = served
    same = event(0, uuid="0190a8b4-7c3e-7f00-8000-000000000001")
    assert post(url, [same]).status == post(url, [same]).status == 200
    assert len(fake.events) == 1 and fake.dropped_events == 1


def test_set_events_set_person_properties(served: tuple[PostHogFake, str]) -> None:
    fake, url = served
    post(url, [{"event": "$set", "distinct_id": "u1", "properties": {"$set": {"plan": "pro"}}}])
    post(url, [{"event": "$set", "distinct_id": "u1", "$set": {"seats": 3},
                "properties": {"$set_once": {"plan": "free", "first": "a"}}}])  # fmt: skip
    assert fake.person("u1") == {"plan": "pro", "seats": 3, "first": "a"}
    assert fake.events == []  # person events are not counted as the sync's events


def test_a_billing_limited_project_is_answered_ok_and_dropped(
    served: tuple[PostHogFake, str],
) -> None:
    fake, url = served
    fake.billing_limited = True
    assert post(url, [event(0)]).status == 200 and fake.events == []


def test_flags_looks_the_key_up(served: tuple[PostHogFake, str]) -> None:
    _, url = served
    body = {"api_key": KEY, "distinct_id": "x"}
    assert call(url, "POST", "/flags?v=2", body).status == 200
    assert call(url, "POST", "/flags?v=2", {**body, "api_key": "phc_other0000"}).status == 401
