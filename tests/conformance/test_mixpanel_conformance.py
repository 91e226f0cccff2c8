"""The Mixpanel fake and connector against the contract in ../shared/specs/mixpanel/NOTES.md.

Each test names the NOTES.md fact it checks; ``test_notes_still_state_the_facts`` fails when
the contract changes under us, so the checks below are revisited.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conformance_support import assert_docs_state, batch, call, write

from undertow.destinations.base import Operation
from undertow.destinations.mixpanel import (
    IMPORT_DOC,
    LIMITS_DOC,
    PROFILE_LIMITS_DOC,
    MixpanelDestination,
)
from undertow.testing.mixpanel import MixpanelFake

pytestmark = pytest.mark.conformance

TOKEN = "mp-conformance-token-0000"
SPECS = Path(os.environ.get("UNDERTOW_SPECS", Path(__file__).resolve().parents[3] / "shared/specs"))
NOTES = SPECS / "mixpanel" / "NOTES.md"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode()}


@pytest.fixture
def served() -> Iterator[tuple[MixpanelFake, str]]:
    fake = MixpanelFake(TOKEN, events_per_minute=5000)
    with fake.serve() as url:
        yield fake, url


def event(n: int, **properties: Any) -> dict[str, Any]:
    values = {"time": 1772359200000 + n, "distinct_id": f"u{n}", "$insert_id": f"id-{n}"}
    return {"event": "Signup", "properties": {**values, **properties}}


def destination(url: str) -> MixpanelDestination:
    config = {"type": "mixpanel", "project_token": TOKEN, "base_url": url}
    return MixpanelDestination(MixpanelDestination.Config.model_validate(config), name="mp")


def test_notes_still_state_the_facts() -> None:
    if not NOTES.exists():
        pytest.fail(
            f"the Mixpanel contract is missing: {NOTES} (set UNDERTOW_SPECS)", pytrace=False
        )
    notes = " ".join(NOTES.read_text().split())
    for fact in (
        "/import: <= 2000 events and 10 MB uncompressed per request; JSON array or NDJSON;",
        "each event < 1 MB, < 255 properties.",
        "rate limit: 2 GB uncompressed JSON/min (~30k events/s) per project, rolling 1 min;",
        '429 body {"code":429,"error":"...retry with exponential backoff","status":"Too Many Requests"};',
        "no Retry-After / X-RateLimit headers documented",
        'per-record errors (strict=1): 400 {"code":400,"num_records_imported":N,"status":"Bad Request",',
        '"failed_records":[{"index","insert_id","field","message"}]}; valid events in the batch ARE ingested.',
        "events are deduplicated on (event, time, distinct_id, $insert_id)",
        "/engage batch: up to 2000 updates per request (docs); returns 200 even on validation problems",
        "the wire path is /engage or /groups and the operation is selected by the body",
        "ServiceAccount (basic), ProjectSecret (basic)",
    ):
        assert fact in notes, f"NOTES.md no longer says {fact!r}: revisit this conformance test"


def test_docs_page_states_the_limits_next_to_their_source() -> None:
    assert_docs_state(
        "mixpanel.md",
        [
            ("2,000 events", IMPORT_DOC),
            ("10 MB", IMPORT_DOC),
            ("2,000 profile updates", PROFILE_LIMITS_DOC),
            ("30k events", LIMITS_DOC),
        ],
    )


def test_import_takes_2000_events_and_10_mb_a_request(served: tuple[MixpanelFake, str]) -> None:
    fake, url = served
    over = call(url, "POST", "/import?strict=1", [event(n) for n in range(2001)], headers=BASIC)
    assert over.status == 400 and over.body["code"] == 400
    big = [event(n, blob="x" * 900_000) for n in range(12)]
    assert call(url, "POST", "/import?strict=1", big, headers=BASIC).status == 413
    caps = MixpanelDestination.object_capabilities["events"]
    assert (caps.max_batch_size, caps.max_request_bytes) == (2000, 10_000_000)
    assert fake.events == []


def test_import_takes_a_json_array_or_ndjson(served: tuple[MixpanelFake, str]) -> None:
    fake, url = served
    ndjson = b"\n".join(orjson.dumps(event(n)) for n in range(3))
    headers = {**BASIC, "Content-Type": "application/x-ndjson"}
    assert call(url, "POST", "/import?strict=1", form=ndjson, headers=headers).status == 200
    assert call(url, "POST", "/import?strict=1", [event(3)], headers=BASIC).status == 200
    assert len(fake.events) == 4


def test_strict_import_names_failed_records_and_ingests_the_valid(
    served: tuple[MixpanelFake, str],
) -> None:
    fake, url = served
    rows = [
        event(0),
        event(1, time="yesterday"),
        event(2, **{f"p{i}": i for i in range(260)}),
        event(3, blob="x" * 1_000_001),
        event(4),
    ]
    answer = call(url, "POST", "/import?strict=1", rows, headers=BASIC)
    assert answer.status == 400 and answer.body["num_records_imported"] == 2
    assert answer.body["status"] == "Bad Request"
    failed = answer.body["failed_records"]
    assert [f["index"] for f in failed] == [1, 2, 3]
    assert all(set(f) == {"index", "insert_id", "field", "message"} for f in failed)
    assert failed[0]["insert_id"] == "id-1" and failed[0]["field"] == "properties.time"
    assert [e["properties"]["distinct_id"] for e in fake.events] == ["u0", "u4"]


def test_events_are_deduplicated_on_event_time_distinct_id_and_insert_id(
    served: tuple[MixpanelFake, str],
) -> None:
    fake, url = served
    same = [event(0), event(0)]
    other_time = event(0, time=1772359200999)
    assert call(url, "POST", "/import?strict=1", [*same, other_time], headers=BASIC).status == 200
    assert len(fake.events) == 2 and fake.dropped_events == 1


def test_429_has_the_documented_body_and_no_retry_after(served: tuple[MixpanelFake, str]) -> None:
    _, url = served
    call(url, "POST", "/import?strict=1", [event(n) for n in range(2000)], headers=BASIC)
    call(url, "POST", "/import?strict=1", [event(n) for n in range(2000, 4000)], headers=BASIC)
    answer = call(
        url, "POST", "/import?strict=1", [event(9999) for _ in range(1500)], headers=BASIC
    )
    assert answer.status == 429
    assert answer.body["code"] == 429 and answer.body["status"] == "Too Many Requests"
    assert "exponential backoff" in answer.body["error"]
    assert not {"retry-after", "x-ratelimit-remaining"} & set(answer.headers)


def test_import_auth_is_basic_with_the_token_or_a_service_account() -> None:
    fake = MixpanelFake(TOKEN, service_account=("sa", "sa-secret-0000", "42"), api_secret="s3cr")
    with fake.serve() as url:
        assert call(url, "POST", "/import", [event(0)]).status == 401
        secret = {"Authorization": "Basic " + base64.b64encode(b"s3cr:").decode()}
        assert call(url, "POST", "/import", [event(1)], headers=secret).status == 200
        account = {"Authorization": "Basic " + base64.b64encode(b"sa:sa-secret-0000").decode()}
        assert call(url, "POST", "/import?project_id=42", [event(2)], headers=account).status == 200
        assert call(url, "POST", "/import?project_id=41", [event(3)], headers=account).status == 401


def test_engage_answers_200_on_a_refused_batch_and_the_connector_reads_the_body(
    served: tuple[MixpanelFake, str],
) -> None:
    fake, url = served
    good = {"$token": TOKEN, "$distinct_id": "u1", "$set": {"plan": "pro"}}
    bad = {"$token": TOKEN, "$distinct_id": "", "$set": {"plan": "pro"}}
    plain = call(url, "POST", "/engage", [good, bad])
    assert (plain.status, plain.body) == (200, b"0")
    verbose = call(url, "POST", "/engage?verbose=1", [good, bad])
    assert verbose.status == 200 and verbose.body["status"] == 0 and verbose.body["error"]
    assert call(url, "POST", "/engage?verbose=1", [good] * 2001).body["status"] == 0
    # the connector sends verbose=1, reads the refusal and narrows it down to the bad row
    rows = [{"distinct_id": "a", "plan": "x"}, {"distinct_id": "b", "plan": "y"}]
    result = write(destination(url), batch(rows, match="distinct_id", object="users"))
    assert result.rejected == {} and fake.profile("a") == {"plan": "x"}
    assert fake.requests[-1].query == {"verbose": "1"}


def test_the_operation_is_selected_by_the_body_on_one_wire_path(
    served: tuple[MixpanelFake, str],
) -> None:
    fake, url = served
    d = destination(url)
    rows = [{"distinct_id": "a", "plan": "x"}]
    write(d, batch(rows, match="distinct_id", object="users"))
    write(d, batch(rows, operation=Operation.DELETE, match="distinct_id", object="users"))
    bodies = [r.body for r in fake.requests]
    assert [r.path for r in fake.requests] == ["/engage", "/engage"]
    assert "$set" in bodies[0][0] and bodies[1][0] == {
        "$token": TOKEN,
        "$distinct_id": "a",
        "$delete": "",
    }
    assert fake.profiles == {}
