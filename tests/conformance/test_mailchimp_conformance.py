"""The Mailchimp fake and connector against ../shared/specs/mailchimp/NOTES.md (no usable
Swagger file: its blob is absent) and the Marketing API reference cited on
docs/destinations/mailchimp.md. Each test names the fact it checks;
``test_notes_still_state_the_facts`` fails when the contract changes under us."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance_support import assert_docs_state, batch, call, write

from undertow.destinations.base import BatchResult
from undertow.destinations.mailchimp import (
    BATCH_DOC,
    LIMITS_DOC,
    MAX_CONNECTIONS,
    MAX_MEMBERS,
    SEGMENTS_DOC,
    MailchimpDestination,
    subscriber_hash,
)
from undertow.testing.mailchimp import MailchimpFake

pytestmark = pytest.mark.conformance

KEY = "abcdef0123456789abcdef0123456789-us21"
LIST = "aud1"
SPECS = Path(os.environ.get("UNDERTOW_SPECS", Path(__file__).resolve().parents[3] / "shared/specs"))
NOTES = SPECS / "mailchimp" / "NOTES.md"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"anystring:{KEY}".encode()).decode()}


@pytest.fixture
def served() -> Iterator[tuple[MailchimpFake, str]]:
    fake = MailchimpFake(KEY)
    with fake.serve() as url:
        yield fake, url


def test_notes_still_state_the_facts() -> None:
    if not NOTES.exists():
        pytest.fail(f"the Mailchimp contract is missing: {NOTES} (set UNDERTOW_SPECS)")
    notes = " ".join(NOTES.read_text().split())
    for fact in (
        "Batch subscribe/unsubscribe — POST /3.0/lists/{list_id}",
        "HTTP Basic `anystring:<api key>` or `Authorization: Bearer <OAuth token>`",
        "**≤ 500 members per call**. `update_existing:true` turns it into an upsert.",
        "Response **200 even with per-member failures**",
        '"errors":[{"email_address":"…","error":"…","error_code":"ERROR_CONTACT_EXISTS',
        "`subscriber_hash` = MD5 of the lower-cased email",
        "Archive: `DELETE …/members/{hash}`",
        "permanent delete: `POST …/members/{hash}/actions/delete-permanent`",
        'Errors are RFC 7807-style: `{"type":',
        "**max 10 simultaneous connections per API key** → 429",
        "No X-RateLimit/Retry-After headers documented.",
    ):
        assert fact in notes, f"NOTES.md no longer says: {fact}"
    assert (MAX_MEMBERS, MAX_CONNECTIONS) == (500, 10)
    caps = MailchimpDestination.capabilities
    assert caps.max_batch_size == 500 and caps.max_in_flight == 10
    assert_docs_state(
        "mailchimp.md",
        [("500 members", BATCH_DOC), ("10 simultaneous connections", LIMITS_DOC),
         ("500 emails", SEGMENTS_DOC)],
    )  # fmt: skip


def test_any_user_name_with_the_key_and_a_bearer_token_are_accepted(
    served: tuple[MailchimpFake, str],
) -> None:
    _, url = served
    other = {"Authorization": "Basic " + base64.b64encode(f"me:{KEY}".encode()).decode()}
    assert call(url, "GET", "/3.0/ping", headers=other).status == 200
    assert call(url, "GET", "/3.0/ping", headers={"Authorization": f"Bearer {KEY}"}).status == 200
    refused = call(url, "GET", "/3.0/ping", headers={"Authorization": "Bearer nope"})
    assert refused.status == 401
    assert set(refused.body) == {"type", "title", "status", "detail", "instance"}


def test_batch_subscribe_caps_500_and_answers_200_with_per_member_errors(
    served: tuple[MailchimpFake, str],
) -> None:
    _, url = served
    path = f"/3.0/lists/{LIST}"
    many = [{"email_address": f"u{n}@x.com", "status": "subscribed"} for n in range(501)]
    over = call(url, "POST", path, {"members": many}, headers=AUTH)
    assert over.status == 400 and over.body["status"] == 400 and over.body["title"]
    first = call(url, "POST", path, {"members": many[:2]}, headers=AUTH)
    assert first.status == 200 and first.body["total_created"] == 2
    again = call(url, "POST", path, {"members": many[:2]}, headers=AUTH)
    assert again.status == 200 and again.body["error_count"] == 2
    assert {e["error_code"] for e in again.body["errors"]} == {"ERROR_CONTACT_EXISTS"}
    upsert = call(url, "POST", path, {"members": many[:2], "update_existing": True}, headers=AUTH)
    assert upsert.body["total_updated"] == 2 and upsert.body["errors"] == []
    assert set(upsert.body) >= {"new_members", "updated_members", "errors", "total_created",
                                "total_updated", "error_count"}  # fmt: skip


def test_the_member_id_is_the_md5_of_the_lower_cased_email_and_archive_is_a_delete(
    served: tuple[MailchimpFake, str],
) -> None:
    _, url = served
    assert subscriber_hash("Ada@X.com ") == hashlib.md5(b"ada@x.com").hexdigest()
    member = {"email_address": "Ada@X.com", "status": "subscribed"}
    call(url, "POST", f"/3.0/lists/{LIST}", {"members": [member]}, headers=AUTH)
    path = f"/3.0/lists/{LIST}/members/{subscriber_hash('ada@x.com')}"
    assert call(url, "DELETE", path, headers=AUTH).status == 204
    assert call(url, "DELETE", path, headers=AUTH).status == 404
    assert call(url, "POST", path + "/actions/delete-permanent", headers=AUTH).status == 204


def test_the_eleventh_simultaneous_request_gets_a_429_without_retry_after() -> None:
    fake = MailchimpFake(KEY, hold=0.5)
    answers = []
    with fake.serve() as url:

        def ping() -> None:
            answers.append(call(url, "GET", "/3.0/ping", headers=AUTH))

        threads = [threading.Thread(target=ping) for _ in range(MAX_CONNECTIONS + 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    statuses = sorted(a.status for a in answers)
    assert statuses == [200] * MAX_CONNECTIONS + [429]
    [limited] = [a for a in answers if a.status == 429]
    assert "retry-after" not in limited.headers and limited.body["title"] == "Too Many Requests"


def test_the_connector_reads_errors_by_email_and_sends_batch_subscribe(
    served: tuple[MailchimpFake, str],
) -> None:
    _, url = served
    values = {"type": "mailchimp", "api_key": KEY, "audience_id": LIST, "base_url": url}
    dest = MailchimpDestination(MailchimpDestination.Config.model_validate(values), name="mc")
    records = [{"email_address": "ok@x.com"}, {"email_address": "bad"}]
    result = write(dest, batch(records, match="email_address", object="members"))
    assert result.rejected.keys() == {1} and result.rejected[1].startswith("Mailchimp ERROR_")
    dest = MailchimpDestination(MailchimpDestination.Config.model_validate(values), name="mc")
    again = write(dest, batch(records[:1], match="email_address", object="members"))
    assert again == BatchResult()  # update_existing: a replay is an update, not an error
