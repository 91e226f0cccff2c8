"""The SendGrid fake and connector against Twilio SendGrid's v3 API reference (no file in
../shared/specs: the contract is the docs cited on docs/destinations/sendgrid.md, and
``test_the_docs_page_states_each_limit_next_to_its_source`` fails when the page stops saying
a fact these tests rely on)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conformance_support import assert_docs_state, call

from undertow.destinations.sendgrid import (
    LIMITS_DOC,
    MAX_CONTACTS,
    MAX_REQUEST_BYTES,
    MAX_SEARCH,
    SEARCH_DOC,
    STATUS_DOC,
    UPSERT_DOC,
    SendGridDestination,
)
from undertow.testing.sendgrid import SendGridFake

pytestmark = pytest.mark.conformance

KEY = "SG.conformance-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def served() -> Iterator[tuple[SendGridFake, str]]:
    fake = SendGridFake(KEY, window_seconds=1.0)
    with fake.serve() as url:
        yield fake, url


def test_the_docs_page_states_each_limit_next_to_its_source() -> None:
    assert_docs_state(
        "sendgrid.md",
        [("30,000 contacts or 6 MB", UPSERT_DOC), ("`pending`, `completed`, `errored`, `failed`",
         STATUS_DOC), ("100 emails", SEARCH_DOC), ("no number published", LIMITS_DOC)],
    )  # fmt: skip
    assert (MAX_CONTACTS, MAX_REQUEST_BYTES, MAX_SEARCH) == (30_000, 6_000_000, 100)
    caps = SendGridDestination.capabilities
    assert caps.max_request_bytes == 6_000_000 and caps.rate_limit is None
    assert SendGridDestination.async_jobs and SendGridDestination.rate_headers is not None


def test_an_upsert_is_a_202_with_a_job_whose_status_is_polled_to_its_end(
    served: tuple[SendGridFake, str],
) -> None:
    _, url = served
    body = {
        "contacts": [{"email": "a@x.com"}, {"email": "b@x.com", "custom_fields": {"e2_N": "x"}}]
    }
    accepted = call(url, "PUT", "/v3/marketing/contacts", body, headers=AUTH)
    assert accepted.status == 202 and set(accepted.body) == {"job_id", "_metadata"}
    assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(
        accepted.headers
    )
    status = call(url, "GET", f"/v3/marketing/contacts/imports/{accepted.body['job_id']}",
                  headers=AUTH).body  # fmt: skip
    assert status["status"] == "errored" and status["job_type"] == "upsert"
    results = status["results"]
    assert (results["requested_count"], results["created_count"], results["errored_count"]) == (
        2, 1, 1,
    )  # fmt: skip
    errors = call(url, "GET", results["errors_url"][len(url) :])
    assert errors.status == 200 and b"b@x.com" in errors.body


def test_a_refused_upsert_is_a_400_naming_the_contact_and_imports_nothing(
    served: tuple[SendGridFake, str],
) -> None:
    fake, url = served
    body = {"contacts": [{"email": "a@x.com"}, {"email": "nope"}]}
    refused = call(url, "PUT", "/v3/marketing/contacts", body, headers=AUTH)
    assert refused.status == 400 and refused.body["errors"][0]["field"] == "contacts[1].email"
    assert fake.jobs == {}
    assert call(url, "PUT", "/v3/marketing/contacts", body).status == 401


def test_search_by_emails_answers_by_email_and_404s_when_none_is_found(
    served: tuple[SendGridFake, str],
) -> None:
    fake, url = served
    call(url, "PUT", "/v3/marketing/contacts", {"contacts": [{"email": "a@x.com"}]}, headers=AUTH)
    fake.finish_jobs()
    found = call(url, "POST", "/v3/marketing/contacts/search/emails",
                 {"emails": ["a@x.com", "z@x.com"]}, headers=AUTH)  # fmt: skip
    assert found.body["result"]["a@x.com"]["contact"]["id"]
    assert "error" in found.body["result"]["z@x.com"]
    none = call(url, "POST", "/v3/marketing/contacts/search/emails", {"emails": ["z@x.com"]},
                headers=AUTH)  # fmt: skip
    assert none.status == 404
