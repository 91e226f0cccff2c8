"""The Amplitude fake and connector against the contract in ../shared/specs/amplitude/NOTES.md.

Each test names the NOTES.md fact it checks; ``test_notes_still_state_the_facts`` fails when
the contract changes under us, so the checks below are revisited.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from conformance_support import assert_docs_state, batch, call, write

from undertow.destinations.amplitude import HTTP_V2_DOC, AmplitudeDestination
from undertow.destinations.base import Operation
from undertow.testing.amplitude import AmplitudeFake

pytestmark = pytest.mark.conformance

KEY = "amp-conformance-key-0000"
SPECS = Path(os.environ.get("UNDERTOW_SPECS", Path(__file__).resolve().parents[3] / "shared/specs"))
NOTES = SPECS / "amplitude" / "NOTES.md"


@pytest.fixture
def served() -> Iterator[tuple[AmplitudeFake, str]]:
    fake = AmplitudeFake(KEY, throttle_seconds=0.5)
    with fake.serve() as url:
        yield fake, url


def event(n: int, **extra: Any) -> dict[str, Any]:
    return {"user_id": f"user-{n}", "event_type": "Signup", "time": 1772359200000, **extra}


def body(events: list[Any], **extra: Any) -> dict[str, Any]:
    return {"api_key": KEY, "events": events, **extra}


def test_notes_still_state_the_facts() -> None:
    if not NOTES.exists():
        pytest.fail(
            f"the Amplitude contract is missing: {NOTES} (set UNDERTOW_SPECS)", pytrace=False
        )
    notes = " ".join(NOTES.read_text().split())
    for fact in (
        "Auth: **`api_key` inside the JSON body** (no header).",
        '"options":{"min_id_length":5}}`; `user_id`/`device_id` ≥ 5 chars by default.',
        "Limits: **≤ 2,000 events and ≤ 1 MB per request**; throttled when one user/device exceeds 30 events/s",
        '200 `{"code":200,"events_ingested":N,"payload_size_bytes":…,"server_upload_time":…}`.',
        "400 (whole request rejected; per-event detail)",
        '"events_with_invalid_fields":{"time":[3,17]},"events_with_missing_fields":{"event_type":[5]}',
        "413 payload too large (split and retry).",
        '"eps_threshold":30,"throttled_devices":{…},"throttled_users":{…},"throttled_events":[idx…]',
        "no Retry-After/X-RateLimit headers; back off ~30 s.",
        "events with the same `insert_id` (+ device/user) are deduplicated for 7 days.",
        "`application/x-www-form-urlencoded`: `api_key=<key>&identification=[",
        "Set-semantics → replay-safe.",
    ):
        assert fact in notes, f"NOTES.md no longer says {fact!r}: revisit this conformance test"


def test_docs_page_states_the_limits_next_to_their_source() -> None:
    assert_docs_state(
        "amplitude.md",
        [("2,000 events", HTTP_V2_DOC), ("1 MB", HTTP_V2_DOC), ("30 events", HTTP_V2_DOC)],
    )


def test_the_api_key_is_in_the_body_and_no_header_is_needed(
    served: tuple[AmplitudeFake, str],
) -> None:
    fake, url = served
    assert call(url, "POST", "/2/httpapi", {"api_key": "nope", "events": [event(0)]}).status == 400
    assert call(url, "POST", "/2/httpapi", body([event(0)])).status == 200
    write(
        AmplitudeDestination(
            AmplitudeDestination.Config.model_validate(
                {"type": "amplitude", "api_key": KEY, "base_url": url}
            ),
            name="amp",
        ),
        batch([{"user_id": "user-9", "event_type": "x"}], operation=Operation.INSERT,
              match="user_id", object="events"),
    )  # fmt: skip
    sent = fake.requests[-1]
    assert sent.body["api_key"] == KEY and "authorization" not in sent.headers
    assert sent.body["options"] == {"min_id_length": 5}


def test_ids_under_min_id_length_are_refused_unless_the_option_lowers_it(
    served: tuple[AmplitudeFake, str],
) -> None:
    _, url = served
    short = event(0, user_id="u1")
    answer = call(url, "POST", "/2/httpapi", body([event(1), short]))
    assert answer.status == 400 and answer.body["events_with_invalid_fields"] == {"user_id": [1]}
    lowered = body([short], options={"min_id_length": 2})
    assert call(url, "POST", "/2/httpapi", lowered).status == 200


def test_200_body_and_the_2000_events_and_1_mb_limits(served: tuple[AmplitudeFake, str]) -> None:
    fake, url = served
    ok = call(url, "POST", "/2/httpapi", body([event(0)]))
    assert set(ok.body) == {"code", "events_ingested", "payload_size_bytes", "server_upload_time"}
    assert ok.body["events_ingested"] == 1
    assert call(url, "POST", "/2/httpapi", body([event(n) for n in range(2001)])).status == 413
    big = [event(n, event_properties={"b": "x" * 100_000}) for n in range(11)]
    assert call(url, "POST", "/2/httpapi", body(big)).status == 413
    caps = AmplitudeDestination.object_capabilities["events"]
    assert (caps.max_batch_size, caps.max_request_bytes, caps.bisect) == (2000, 1_000_000, True)
    assert len(fake.events) == 1


def test_a_400_names_events_by_index_and_ingests_none(served: tuple[AmplitudeFake, str]) -> None:
    fake, url = served
    rows = [event(0), event(1, time="soon"), {"user_id": "user-2"}, event(3)]
    answer = call(url, "POST", "/2/httpapi", body(rows))
    assert answer.status == 400 and answer.body["code"] == 400
    assert answer.body["events_with_invalid_fields"] == {"time": [1]}
    assert answer.body["events_with_missing_fields"] == {"event_type": [2]}
    assert fake.events == []


def test_429_throttles_the_user_for_its_period_without_retry_after(
    served: tuple[AmplitudeFake, str],
) -> None:
    _, url = served
    hot = [event(0, insert_id=f"i{n}") for n in range(31)]
    answer = call(url, "POST", "/2/httpapi", body(hot))
    assert answer.status == 429 and answer.body["eps_threshold"] == 30
    assert answer.body["throttled_users"] == {"user-0": 31}
    assert answer.body["throttled_events"] == list(range(31))
    assert "retry-after" not in answer.headers
    # throttled for the period: even one event of that user waits; another user goes
    assert call(url, "POST", "/2/httpapi", body([event(0)])).status == 429
    assert call(url, "POST", "/2/httpapi", body([event(5)])).status == 200
    caps = AmplitudeDestination(
        AmplitudeDestination.Config.model_validate({"type": "amplitude", "api_key": KEY}),
        name="amp",
    )
    assert caps.signals[0].default_wait == 30.0 and not caps.signals[0].penalize


def test_insert_id_with_the_user_is_deduplicated(served: tuple[AmplitudeFake, str]) -> None:
    fake, url = served
    rows = [event(0, insert_id="a1"), event(0, insert_id="a1"), event(1, insert_id="a1")]
    assert call(url, "POST", "/2/httpapi", body(rows)).status == 200
    assert len(fake.events) == 2 and fake.dropped_events == 1


def test_identify_is_a_form_with_a_json_array_and_set_is_replay_safe(
    served: tuple[AmplitudeFake, str],
) -> None:
    fake, url = served
    update = [{"user_id": "user-1", "user_properties": {"$set": {"plan": "pro"}}}]
    form = urlencode({"api_key": KEY, "identification": orjson.dumps(update).decode()}).encode()
    for _ in range(2):
        answer = call(url, "POST", "/identify", form=form)
        assert (answer.status, answer.body) == (200, b"success")
    assert fake.user("user-1") == {"plan": "pro"}
    rows = [{"user_id": "user-2", "plan": "team"}]
    d = AmplitudeDestination(
        AmplitudeDestination.Config.model_validate(
            {"type": "amplitude", "api_key": KEY, "base_url": url}
        ),
        name="amp",
    )
    assert write(d, batch(rows, match="user_id", object="users")).rejected == {}
    sent = fake.requests[-1]
    assert sent.headers["content-type"] == "application/x-www-form-urlencoded"
    assert orjson.loads(sent.body["identification"]) == [
        {"user_id": "user-2", "user_properties": {"$set": {"plan": "team"}}}
    ]
