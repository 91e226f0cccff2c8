"""The Segment fake and connector against the contract in ../shared/specs/segment/NOTES.md.

Each test names the NOTES.md fact it checks; ``test_notes_still_state_the_facts`` fails when
the contract changes under us, so the checks below are revisited.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conformance_support import assert_docs_state, batch, call, write

from undertow.destinations.base import Operation
from undertow.destinations.segment import HTTP_API_DOC, LIMITS_DOC, SegmentDestination
from undertow.testing.segment import SegmentFake

pytestmark = pytest.mark.conformance

KEY = "seg-conformance-key-0000"
SPECS = Path(os.environ.get("UNDERTOW_SPECS", Path(__file__).resolve().parents[3] / "shared/specs"))
NOTES = SPECS / "segment" / "NOTES.md"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}


@pytest.fixture
def served() -> Iterator[tuple[SegmentFake, str]]:
    fake = SegmentFake(KEY)
    with fake.serve() as url:
        yield fake, url


def track(n: int, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "userId": f"u{n}", "event": "Order Completed", "messageId": f"m{n}",
            **extra}  # fmt: skip


def test_notes_still_state_the_facts() -> None:
    if not NOTES.exists():
        pytest.fail(f"the Segment contract is missing: {NOTES} (set UNDERTOW_SPECS)", pytrace=False)
    notes = " ".join(NOTES.read_text().split())
    for fact in (
        "Endpoint: `POST https://api.segment.io/v1/batch` (also `/v1/identify`, `/v1/track`, `/v1/group`,",
        "EU workspaces: `https://events.eu1.segmentapis.com/v1/…`",
        "Auth: HTTP Basic with the source **write key as username, empty password**",
        "or `writeKey` in the body",
        "every message needs `userId` or `anonymousId`; track needs `event`.",
        "Limits: **≤ 500 KB per batch request, ≤ 32 KB per message**; over → **400**.",
        "No documented message count cap.",
        '**200 `{"success": true}` for everything except oversize/invalid JSON (400)**',
        "No per-record error shape.",
        "Idempotency: Segment deduplicates on `messageId`",
    ):
        assert fact in notes, f"NOTES.md no longer says {fact!r}: revisit this conformance test"


def test_docs_page_states_the_limits_next_to_their_source() -> None:
    assert_docs_state(
        "segment.md",
        [("500 KB", HTTP_API_DOC), ("32 KB", HTTP_API_DOC), ("1,000 events", LIMITS_DOC)],
    )


def test_auth_is_the_write_key_as_basic_username_or_in_the_body(
    served: tuple[SegmentFake, str],
) -> None:
    fake, url = served
    assert call(url, "POST", "/v1/batch", {"batch": [track(0)]}, headers=BASIC).status == 200
    in_body = {"writeKey": KEY, "batch": [track(1)]}
    assert call(url, "POST", "/v1/batch", in_body).status == 200
    assert call(url, "POST", "/v1/batch", {"batch": [track(2)]}).status == 400  # no key
    assert [e["userId"] for e in fake.events] == ["u0", "u1"]


def test_200_for_everything_but_oversize_or_invalid_json(served: tuple[SegmentFake, str]) -> None:
    fake, url = served
    wrong = {"Authorization": "Basic " + base64.b64encode(b"not-the-key:").decode()}
    answer = call(url, "POST", "/v1/batch", {"batch": [track(0)]}, headers=wrong)
    assert (answer.status, answer.body) == (200, {"success": True})  # and silently dropped
    nobody = {"type": "identify", "traits": {"plan": "x"}}
    no_event = {"type": "track", "userId": "u1"}
    answer = call(url, "POST", "/v1/batch", {"batch": [nobody, no_event]}, headers=BASIC)
    assert answer.status == 200 and fake.invalid_messages == 2
    too_big = track(3, properties={"blob": "x" * 33_000})
    assert call(url, "POST", "/v1/batch", {"batch": [too_big]}, headers=BASIC).status == 400
    many = [track(n, properties={"blob": "x" * 20_000}) for n in range(30)]
    assert call(url, "POST", "/v1/batch", {"batch": many}, headers=BASIC).status == 400
    bad_json = call(url, "POST", "/v1/batch", form=b"{not json", headers=BASIC)
    assert bad_json.status == 400
    assert fake.events == [] and fake.unknown_key_messages == 1


def test_single_message_endpoints_take_one_message(served: tuple[SegmentFake, str]) -> None:
    fake, url = served
    answer = call(url, "POST", "/v1/identify", {"userId": "u9", "traits": {"a": 1}}, headers=BASIC)
    assert answer.status == 200 and fake.user("u9") == {"a": 1}


def test_message_id_deduplicates_and_the_connector_sets_it(
    served: tuple[SegmentFake, str],
) -> None:
    fake, url = served
    call(url, "POST", "/v1/batch", {"batch": [track(0), track(0)]}, headers=BASIC)
    assert len(fake.events) == 1 and fake.dropped_messages == 1
    config = {"type": "segment", "write_key": KEY, "base_url": url}
    d = SegmentDestination(SegmentDestination.Config.model_validate(config), name="seg")
    rows = [{"user_id": "u5", "event": "Signed Up"}]
    write(d, batch(rows, operation=Operation.INSERT, match="user_id", object="events"))
    sent = fake.requests[-1]
    assert sent.body["batch"][0]["messageId"] == "conformance:0"
    assert sent.credentials and "writeKey" not in sent.body  # Basic, not in the body
    caps = SegmentDestination.object_capabilities["events"]
    assert (caps.max_request_bytes, caps.per_record_results) == (500_000, False)
