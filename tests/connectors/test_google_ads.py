"""Google Customer Match (Data Manager API) against its local fake (undertow.testing.google_ads):
the shared suite through the async job flow, per-member refusals, partial success, and a
request polled by another destination instance (a resumed run) without being sent again."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, ClassVar

import orjson
import pytest

from undertow.destinations import retry
from undertow.destinations.base import Batch, BatchResult, Job, Operation
from undertow.destinations.google_ads import GoogleAdsDestination
from undertow.testing.google_ads import ZERO, GoogleAdsFake
from undertow.testing.template import FAST, DestinationTests

pytestmark = pytest.mark.connectors

TOKEN = "ya29.google-oauth-token-1111-2222"
CONFIG = {"account_id": "123-456-7890", "audience_id": "9876543210", "terms_accepted": True}
CONFIG |= {"poll_seconds": 0.01}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class TestGoogleCustomerMatch(DestinationTests):
    """The shared suite on a Customer Match audience (add; remove for deletes)."""

    destination = GoogleAdsDestination
    fake = GoogleAdsFake
    token = TOKEN
    secret_field = "access_token"
    object = "users"
    match = None
    config: ClassVar[dict[str, Any]] = CONFIG
    fake_options: ClassVar[dict[str, Any]] = {"window_seconds": 0.5}
    invalid = (
        {"email": sha("x@example.com"), "given_name": sha("ann"), "family_name": sha("lee")}
        | {"region_code": "U1", "postal_code": "10001"},
        "INVALID_COUNTRY_CODE",
    )

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {
            "email": sha(f"user{n}@example.com"),
            "ad_user_data": ["granted", "denied"][version],
        }

    def stored(self, fake: GoogleAdsFake, record: dict[str, Any]) -> dict[str, Any] | None:
        for member in fake.audience():
            if "e:" + record["email"] in member["keys"]:
                consent = (member.get("consent") or {}).get("adUserData", "")
                return {"email": record["email"], "ad_user_data": consent.split("_")[-1]}
        return None

    def count(self, fake: GoogleAdsFake) -> int:
        return len(fake.audience())


def make(fake: GoogleAdsFake) -> GoogleAdsDestination:
    config = {"type": "google_customer_match", "access_token": TOKEN, "base_url": fake.url}
    return GoogleAdsDestination(
        GoogleAdsDestination.Config.model_validate(config | CONFIG), name="g"
    )


def batch(records: list[dict[str, Any]], op: Operation = Operation.ADD) -> Batch:
    return Batch(
        sync="s",
        operation=op,
        number=0,
        idempotency_key="k",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        object="users",
    )


def in_delivery(work: Any, *dests: GoogleAdsDestination) -> Any:
    """Run ``work()`` inside a delivery context, then close the destinations."""

    async def go() -> Any:
        try:
            with retry.delivery(policy=FAST, stop=asyncio.Event(), max_wait=5.0):
                return await work()
        finally:
            for dest in dests:
                await dest.close()

    return asyncio.run(go())


@pytest.fixture
def fake() -> Any:
    served = GoogleAdsFake(TOKEN, polls=2)
    with served.serve():
        yield served


def test_a_resumed_run_polls_the_recorded_request_and_never_sends_it_again(
    fake: GoogleAdsFake,
) -> None:
    b = batch([{"email": sha("a@example.com"), "phone": sha("+16505551212")}])
    first = make(fake)
    job = in_delivery(lambda: first.submit_batch(b), first)
    assert isinstance(job, Job) and fake.statuses[job.id]["polls"] == 0
    other = make(fake)  # another process, after a kill -9: the job comes from the state store
    restored = Job(job.id, orjson.loads(orjson.dumps(job.data)))

    async def polls() -> list[Any]:
        return [await other.poll_job(restored, b) for _ in range(3)]

    assert in_delivery(polls, other) == [None, None, BatchResult()]  # PROCESSING twice
    assert len(fake.statuses) == 1 and len(fake.audience()) == 1
    [request] = [r for r in fake.requests if r.path.endswith(":ingest")]
    assert request.body["termsOfService"] == {"customerMatchTermsOfServiceStatus": "ACCEPTED"}
    assert request.body["destinations"][0]["operatingAccount"]["accountId"] == "1234567890"
    assert request.body["encoding"] == "HEX"


def test_partial_success_counts_by_reason_and_raw_values_never_leave(fake: GoogleAdsFake) -> None:
    dest = make(fake)
    b = batch([{"email": ZERO}, {"email": sha("b@example.com")}, {"email": "c@example.com"}])
    result = in_delivery(lambda: _through(dest, b), dest)
    assert list(result.rejected) == [2] and "normalize: email" in result.rejected[2]
    assert dest.partial == {"PROCESSING_ERROR_REASON_INVALID_FORMAT": 1}
    assert fake.raw_values == []


def test_adding_without_the_terms_accepted_stops_before_sending(fake: GoogleAdsFake) -> None:
    config = {"type": "google_customer_match", "access_token": TOKEN, "base_url": fake.url}
    dest = GoogleAdsDestination(
        GoogleAdsDestination.Config.model_validate(config | CONFIG | {"terms_accepted": False}),
        name="g",
    )
    with pytest.raises(Exception, match="terms_accepted: true"):
        in_delivery(lambda: dest.submit_batch(batch([{"email": sha("a@example.com")}])), dest)
    assert not [r for r in fake.requests if r.method == "POST"]


async def _through(dest: GoogleAdsDestination, b: Batch) -> BatchResult:
    answer = await dest.submit_batch(b)
    while isinstance(answer, Job):
        polled = await dest.poll_job(answer, b)
        if polled is not None:
            return polled
    return answer
