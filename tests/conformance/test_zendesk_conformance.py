"""The Zendesk fake and connector against the contract in ../shared/specs/zendesk/NOTES.md.

Each test names the NOTES.md fact it checks; ``test_notes_still_state_the_facts`` fails when
the contract changes under us, so the checks below are revisited.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from undertow.destinations import retry
from undertow.destinations.base import Batch, Operation
from undertow.destinations.retry import RetryPolicy
from undertow.destinations.zendesk import ZendeskConfig, ZendeskDestination
from undertow.testing.zendesk import ZendeskFake

pytestmark = pytest.mark.conformance

TOKEN = "zd-conformance-token-0000"
EMAIL = "admin@example.com"
SPECS = Path(os.environ.get("UNDERTOW_SPECS", Path(__file__).resolve().parents[3] / "shared/specs"))
NOTES = SPECS / "zendesk" / "NOTES.md"
BASIC = "Basic " + base64.b64encode(f"{EMAIL}/token:{TOKEN}".encode()).decode()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Account:
    fake: ZendeskFake
    url: str

    def call(self, method: str, path: str, body: Any = None, *, auth: str | None = BASIC) -> Answer:
        data = orjson.dumps(body) if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", auth)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw, status, headers = response.read(), response.status, dict(response.headers)
        except urllib.error.HTTPError as error:
            with error:
                raw, status, headers = error.read(), error.code, dict(error.headers)
        parsed: Any = raw.decode()
        if raw[:1] in (b"{", b"["):
            parsed = orjson.loads(raw)
        return Answer(status, {k.lower(): v for k, v in headers.items()}, parsed)

    def finished(self, job_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:
            status = self.call("GET", f"/api/v2/job_statuses/{job_id}").body["job_status"]
            if status["status"] in ("completed", "failed", "killed") or time.monotonic() > deadline:
                return dict(status)
            time.sleep(0.02)


@pytest.fixture
def account() -> Iterator[Account]:
    fake = ZendeskFake(TOKEN, email=EMAIL, oauth_tokens=["oauth-abc"], job_seconds=0.05)
    with fake.serve() as url:
        yield Account(fake, url)


def test_notes_still_state_the_facts() -> None:
    if not NOTES.exists():
        pytest.fail(f"the Zendesk contract is missing: {NOTES} (set UNDERTOW_SPECS)", pytrace=False)
    notes = NOTES.read_text()
    for fact in (
        '`Authorization: Basic base64("{email}/token:{api_token}")`',
        "or `Authorization: Bearer <OAuth token>`",
        '"Accepts an array of **up to 100 user objects**.',
        "Each user is matched by `email` or `external_id`.",
        "Bulk user import must be enabled by Zendesk support for the account, else **403**.",
        '"status":"queued","total":N,"progress":null',
        "`status` queued|working|completed|failed|killed",
        '`results:[{"index":i,"id":123,"action":"create|update","status":"Created|Updated"}`',
        '`{"index":i,"error":"…","details":"…","external_id"/"email":…}]` = **per-record error shape**',
        "Job statuses expire after ~1 h; only the latest 100 are listed",
        "extra submissions get 429",
        "(single; 201 created / 200 updated, `Location` header)",
        "`DELETE /api/v2/users/destroy_many?ids=…|external_ids=…`",
        "`X-Rate-Limit`, `X-Rate-Limit-Remaining`",
        "Exceeded → **429** with\n**`Retry-After: <seconds>`**",
        "external_id lookup is case-insensitive but the stored case is overwritten by the request's case",
    ):
        assert fact in notes, f"NOTES.md no longer says {fact!r}: revisit this conformance test"


# -- auth ------------------------------------------------------------------------------------


def test_basic_token_auth_and_oauth_bearer_are_accepted_and_nothing_else(account: Account) -> None:
    """Fact: Basic base64("{email}/token:{api_token}") or Bearer <OAuth token>."""
    assert account.call("GET", "/api/v2/users/me").status == 200
    assert account.call("GET", "/api/v2/users/me", auth="Bearer oauth-abc").status == 200
    refused = account.call("GET", "/api/v2/users/me", auth="Bearer wrong")
    assert refused.status == 401 and refused.body == {"error": "Couldn't authenticate you"}
    password = "Basic " + base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()
    assert account.call("GET", "/api/v2/users/me", auth=password).status == 401


# -- create_or_update_many and job statuses --------------------------------------------------


def test_create_or_update_many_queues_a_job_and_reports_per_index(account: Account) -> None:
    """Facts: 200 with a queued job_status (total N, progress/message/results null); results
    per index: Created/Updated, or Failed with error, details and the user's email."""
    account.call(
        "POST",
        "/api/v2/users/create_or_update_many",
        {"users": [{"name": "Old", "email": "old@x.io"}]},
    )
    time.sleep(0.1)
    users = [
        {"name": "New", "email": "new@x.io"},
        {"name": "Old again", "email": "OLD@x.io"},
        {"name": "Bad", "email": "not-an-email"},
    ]
    queued = account.call("POST", "/api/v2/users/create_or_update_many", {"users": users})
    status = queued.body["job_status"]
    assert queued.status == 200
    assert (status["status"], status["total"]) == ("queued", 3)
    assert status["progress"] is None and status["message"] is None and status["results"] is None
    assert status["url"].endswith(f"/api/v2/job_statuses/{status['id']}.json")
    done = account.finished(status["id"])
    assert done["status"] == "completed"
    results = sorted(done["results"], key=lambda r: r["index"])
    assert [(r["index"], r["status"]) for r in results] == [
        (0, "Created"),
        (1, "Updated"),
        (2, "Failed"),
    ]
    assert results[0]["action"] == "create" and results[1]["action"] == "update"
    assert isinstance(results[0]["id"], int)
    assert results[2]["error"] and "not properly formatted" in results[2]["details"]
    assert results[2]["email"] == "not-an-email"
    assert len(account.fake.users) == 2


def test_users_match_by_email_or_external_id(account: Account) -> None:
    """Fact: each user is matched by email or external_id."""
    account.call(
        "POST",
        "/api/v2/users/create_or_update_many",
        {"users": [{"name": "A", "email": "a@x.io", "external_id": "ext-1"}]},
    )
    time.sleep(0.1)
    job = account.call(
        "POST",
        "/api/v2/users/create_or_update_many",
        {
            "users": [
                {"external_id": "ext-1", "notes": "by id"},
                {"email": "a@x.io", "phone": "123"},
            ]
        },
    )
    done = account.finished(job.body["job_status"]["id"])
    assert [r["status"] for r in done["results"]] == ["Updated", "Updated"]
    [stored] = account.fake.users.values()
    assert (stored["notes"], stored["phone"]) == ("by id", "123")


def test_external_id_matches_caselessly_and_takes_the_requests_case(account: Account) -> None:
    """Fact: external_id lookup is case-insensitive, the stored case is the request's."""
    account.call(
        "POST",
        "/api/v2/users/create_or_update_many",
        {"users": [{"name": "A", "external_id": "Acme-1"}]},
    )
    time.sleep(0.1)
    job = account.call(
        "POST",
        "/api/v2/users/create_or_update_many",
        {"users": [{"external_id": "ACME-1", "notes": "x"}]},
    )
    account.finished(job.body["job_status"]["id"])
    [stored] = account.fake.users.values()
    assert stored["external_id"] == "ACME-1"


def test_at_most_100_users_per_request(account: Account) -> None:
    """Fact: up to 100 user objects."""
    users = [{"name": f"U{n}", "email": f"u{n}@x.io"} for n in range(101)]
    assert (
        account.call("POST", "/api/v2/users/create_or_update_many", {"users": users}).status == 400
    )
    ok = account.call("POST", "/api/v2/users/create_or_update_many", {"users": users[:100]})
    assert ok.status == 200


def test_bulk_import_switched_off_is_a_403() -> None:
    """Fact: bulk user import must be enabled, else 403."""
    fake = ZendeskFake(TOKEN, email=EMAIL, bulk_import=False)
    with fake.serve() as url:
        answer = Account(fake, url).call(
            "POST", "/api/v2/users/create_or_update_many", {"users": [{"name": "A"}]}
        )
    assert answer.status == 403


def test_job_statuses_move_queued_working_completed_and_expire() -> None:
    """Facts: queued|working|completed; statuses expire (~1 h); only the latest 100 listed."""
    fake = ZendeskFake(TOKEN, email=EMAIL, job_seconds=0.2, job_ttl=2.0, job_limit=200)
    with fake.serve() as url:
        account = Account(fake, url)
        job = account.call("POST", "/api/v2/users/create_many", {"users": [{"name": "A"}]})
        job_id = job.body["job_status"]["id"]
        seen = [job.body["job_status"]["status"]]
        while seen[-1] != "completed" and len(seen) < 200:
            answer = account.call("GET", f"/api/v2/job_statuses/{job_id}")
            seen.append(answer.body["job_status"]["status"])
            time.sleep(0.01)
        assert seen[0] == "queued" and "working" in seen and seen[-1] == "completed"
        for _ in range(101):
            account.call("POST", "/api/v2/users/create_many", {"users": []})
        listed = account.call("GET", "/api/v2/job_statuses").body["job_statuses"]
        assert len(listed) == 100 and job_id not in [j["id"] for j in listed]
        time.sleep(2.1)
        gone = account.call("GET", f"/api/v2/job_statuses/{job_id}")
        assert gone.status == 404


def test_too_many_jobs_at_once_get_a_429_with_retry_after() -> None:
    """Fact: a limited number of jobs may be queued/running; extra submissions get 429."""
    fake = ZendeskFake(TOKEN, email=EMAIL, job_seconds=5.0, job_limit=2)
    with fake.serve() as url:
        account = Account(fake, url)
        for _ in range(2):
            assert account.call("POST", "/api/v2/users/create_many", {"users": []}).status == 200
        third = account.call("POST", "/api/v2/users/create_many", {"users": []})
    assert third.status == 429 and int(third.headers["retry-after"]) >= 1


# -- related endpoints -----------------------------------------------------------------------


def test_single_create_or_update_answers_201_or_200_with_location(account: Account) -> None:
    """Fact: POST users/create_or_update: 201 created / 200 updated, Location header."""
    first = account.call(
        "POST", "/api/v2/users/create_or_update", {"user": {"name": "A", "email": "a@x.io"}}
    )
    assert first.status == 201
    assert first.headers["location"].endswith(f"/api/v2/users/{first.body['user']['id']}.json")
    again = account.call(
        "POST", "/api/v2/users/create_or_update", {"user": {"email": "a@x.io", "notes": "n"}}
    )
    assert again.status == 200 and again.body["user"]["id"] == first.body["user"]["id"]


def test_destroy_many_by_external_ids_is_a_job_of_at_most_100(account: Account) -> None:
    """Fact: DELETE users/destroy_many?ids=|external_ids= (≤ 100, a job)."""
    account.call(
        "POST",
        "/api/v2/users/create_many",
        {"users": [{"name": "A", "external_id": "e1"}, {"name": "B", "external_id": "e2"}]},
    )
    time.sleep(0.1)
    job = account.call("DELETE", "/api/v2/users/destroy_many?external_ids=e1,nope")
    done = account.finished(job.body["job_status"]["id"])
    assert [r["status"] for r in sorted(done["results"], key=lambda r: r["index"])] == [
        "Deleted",
        "Failed",
    ]
    assert [u["external_id"] for u in account.fake.users.values()] == ["e2"]
    many = ",".join(f"x{n}" for n in range(101))
    assert account.call("DELETE", f"/api/v2/users/destroy_many?external_ids={many}").status == 400


# -- rate limits -----------------------------------------------------------------------------


def test_rate_limit_headers_and_429_with_retry_after_in_seconds() -> None:
    """Facts: X-Rate-Limit / X-Rate-Limit-Remaining (and ratelimit-*); over → 429 Retry-After."""
    fake = ZendeskFake(TOKEN, email=EMAIL, rate_limit_per_minute=3)
    with fake.serve() as url:
        account = Account(fake, url)
        answers = [account.call("GET", "/api/v2/users/me") for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 429]
    assert answers[0].headers["x-rate-limit"] == "3"
    assert [a.headers["x-rate-limit-remaining"] for a in answers[:3]] == ["2", "1", "0"]
    assert {"ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"} <= set(answers[0].headers)
    assert 1 <= int(answers[3].headers["retry-after"]) <= 60


# -- the connector's requests ----------------------------------------------------------------


def users_batch(n: int, operation: Operation = Operation.UPSERT) -> Batch:
    records = [{"name": f"U{i}", "external_id": f"e{i}"} for i in range(n)]
    return Batch(
        sync="s",
        operation=operation,
        number=0,
        idempotency_key="k",
        keys=[str(i) for i in range(n)],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={"external_id": [r["external_id"] for r in records]},
        object="users",
    )


def test_the_connector_sends_at_most_100_users_per_job_with_basic_token_auth(
    account: Account,
) -> None:
    """Facts: ≤ 100 users per request, Basic {email}/token auth, job polled to completion."""
    dest = ZendeskDestination(
        ZendeskConfig.model_validate(
            {
                "type": "zendesk",
                "base_url": account.url,
                "email": EMAIL,
                "api_token": TOKEN,
                "poll_seconds": 0.02,
            }
        ),
        name="support",
    )

    async def main() -> None:
        try:
            with retry.delivery(policy=RetryPolicy(), stop=None, max_wait=30):
                await dest.write_batch(users_batch(100))
        finally:
            await dest.close()

    asyncio.run(main())
    posted = [r for r in account.fake.requests if r.path.endswith("create_or_update_many")]
    assert [len(r.body["users"]) for r in posted] == [100]
    assert any(r.path.startswith("/api/v2/job_statuses/") for r in account.fake.requests)
    assert len(account.fake.users) == 100
