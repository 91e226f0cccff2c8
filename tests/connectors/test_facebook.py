"""The Facebook Custom Audiences destination against its local fake (undertow.testing.facebook):
the shared suite, the vendor's own signals, and the issue-17 acceptance through a project
(mirror from 20,000 customers with email and phone; a replace session)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from audience_support import (
    AUDIENCE,
    TOKEN,
    delete_customers,
    emails,
    expected,
    sha,
    write_project,
)

from undertow.destinations import retry
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.facebook import FacebookAudienceDestination
from undertow.project import Project
from undertow.state.store import RunStatus
from undertow.testing.facebook import FacebookFake
from undertow.testing.template import FAST, DestinationTests

pytestmark = pytest.mark.connectors


class TestFacebookAudience(DestinationTests):
    """The shared suite on an audience's members (add; remove for deletes)."""

    destination = FacebookAudienceDestination
    fake = FacebookFake
    token = TOKEN
    secret_field = "access_token"
    object = "users"
    match = None
    config: ClassVar[dict[str, Any]] = {"audience_id": AUDIENCE, "throttle_wait": 0.05}
    fake_options: ClassVar[dict[str, Any]] = {"window_seconds": 0.2}
    invalid = (
        {"EMAIL": sha("bad@example.com"), "MADID": "not-a-madid"},
        "MADID is not a lower-case advertising id",
    )

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"EMAIL": sha(f"user{n}@example.com"), "EXTERN_ID": f"c{n}-v{version}"}

    def stored(self, fake: FacebookFake, record: dict[str, Any]) -> dict[str, Any] | None:
        return next((m for m in fake.members() if m.get("EMAIL") == record["EMAIL"]), None)

    def count(self, fake: FacebookFake) -> int:
        return len(fake.members())


def write(fake: FacebookFake, records: list[dict[str, Any]], op: Operation = Operation.ADD) -> Any:
    config = {"type": "facebook_audiences", "access_token": TOKEN, "base_url": fake.url}
    config |= {"audience_id": AUDIENCE, "throttle_wait": 0.05}
    dest = FacebookAudienceDestination(
        FacebookAudienceDestination.Config.model_validate(config), name="fb"
    )
    batch = Batch(
        sync="s",
        operation=op,
        number=0,
        idempotency_key="k",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        object="users",
    )

    async def go() -> BatchResult:
        try:
            with retry.delivery(policy=FAST, stop=asyncio.Event(), max_wait=5.0):
                return await dest.write_batch(batch)
        finally:
            await dest.close()

    return asyncio.run(go()), dest


@pytest.fixture
def fake() -> Any:
    served = FacebookFake(TOKEN)
    with served.serve():
        yield served


def test_a_raw_value_is_rejected_before_sending_and_the_schema_follows_the_keys(
    fake: FacebookFake,
) -> None:
    records = [
        {"EMAIL": "ann@example.com", "PHONE": sha("16505551212")},
        {"EMAIL": sha("bob@example.com"), "PHONE": None, "COUNTRY": sha("us")},
    ]
    result, _ = write(fake, records)
    assert list(result.rejected) == [0]
    assert "EMAIL is not a SHA-256 hex digest" in result.rejected[0]
    assert "normalize: email, hash: sha256" in result.rejected[0]
    assert fake.raw_values == []
    [request] = [r for r in fake.requests if r.path.endswith("/users")]
    payload = request.body["payload"]
    assert payload == {
        "schema": ["EMAIL", "COUNTRY"],
        "data": [[sha("bob@example.com"), sha("us")]],
    }


@pytest.mark.parametrize("code", [17, 613, 80003])
def test_error_codes_17_613_80003_are_slow_down_with_nothing_lost(
    fake: FacebookFake, code: int
) -> None:
    body = {"error": {"message": f"(#{code}) too many calls", "type": "OAuthException"}}
    body["error"]["code"] = code
    fake.fail_next(1, status=400, body=body)
    result, dest = write(fake, [{"EMAIL": sha("a@example.com")}])
    assert result == BatchResult() and len(fake.members()) == 1
    assert dest.stats.slow_downs == 1


def test_invalid_entries_facebook_counts_but_does_not_sample_are_counted(
    fake: FacebookFake,
) -> None:
    answer = {"audience_id": AUDIENCE, "session_id": "1", "num_received": 2}
    answer |= {"num_invalid_entries": 1, "invalid_entry_samples": {}}
    fake.fail_next(1, status=200, body=answer)
    result, dest = write(fake, [{"EMAIL": sha("a@example.com")}, {"EMAIL": sha("b@example.com")}])
    assert result == BatchResult()
    assert dest.unidentified_invalid == 1


# -- the acceptance, through a project ---------------------------------------------------------


def project(folder: Path, url: str, customers: int, **extra: Any) -> Project:
    write_project(folder, url, customers, **extra)
    return Project.load(str(folder))


def ok(project: Project, *, full: bool = False) -> dict[str, int]:
    [record] = project.run(["vip"], full=full)
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert record.counts["rejected"] == 0, record.counts
    return record.counts


def test_mirror_from_20000_customers_adds_them_then_removes_exactly_those_that_left(
    tmp_path: Path,
) -> None:
    fake = FacebookFake(TOKEN)
    with fake.serve() as url:
        proj = project(tmp_path, url, 20_000)
        try:
            assert ok(proj)["sent"] == 20_000
            assert emails(fake) == expected(range(1, 20_001))
            assert fake.largest_batch == 10_000
            delete_customers(tmp_path, "customer_id % 7 = 0")
            left = [i for i in range(1, 20_001) if i % 7]
            counts = ok(proj)
            assert counts["removed"] == 20_000 - len(left) == counts["sent"]
            assert emails(fake) == expected(left)
        finally:
            proj.close()
    assert fake.raw_values == [], "a raw value reached Facebook"
    assert all(len(m["PHONE"]) == 64 for m in fake.members())
    bodies = b"".join(r.raw for r in fake.requests)
    assert b"example.com" not in bodies and b"@" not in bodies  # no email reached Facebook


def test_a_full_run_replaces_the_audience_through_one_session(tmp_path: Path) -> None:
    fake = FacebookFake(TOKEN)
    with fake.serve() as url:
        proj = project(tmp_path, url, 300, batch_size=100, full_replace="true")
        try:
            ok(proj)
            delete_customers(tmp_path, "customer_id > 270")
            fake.audiences[AUDIENCE].add({"EMAIL": sha("stranger@example.com")})
            ok(proj, full=True)
        finally:
            proj.close()
    [session] = fake.sessions.values()
    assert sorted(session["seqs"]) == [1, 2, 3] and session["done"]
    replace = [r for r in fake.requests if r.path.endswith("/usersreplace")]
    last = replace[-1].body["session"]
    assert last["batch_seq"] == 3 and last["last_batch_flag"] is True
    assert emails(fake) == expected(range(1, 271))  # the stranger is gone too
