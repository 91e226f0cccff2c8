"""The Klaviyo destination against the local Klaviyo fake (undertow.testing.klaviyo)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
import pytest

from undertow.destinations import retry
from undertow.destinations.base import Batch, BatchResult, Job, Operation
from undertow.destinations.klaviyo import KlaviyoDestination, expand, ranges
from undertow.testing.klaviyo import KlaviyoFake, error
from undertow.testing.template import FAST, DestinationTests

pytestmark = pytest.mark.connectors

KEY = "pk_test_1111222233334444"


class TestKlaviyoProfiles(DestinationTests):
    """The shared suite on Klaviyo profiles: each batch is a bulk import job, polled."""

    destination = KlaviyoDestination
    fake = KlaviyoFake
    token = KEY
    secret_field = "api_key"
    object = "profiles"
    match = "email"
    config: ClassVar[dict[str, Any]] = {"poll_interval": 0.02}
    fake_options: ClassVar[dict[str, Any]] = {"window_seconds": 0.05, "polls_to_complete": 2}
    invalid = ({"email": "not-an-email"}, "Invalid email address")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"email": f"user{n}@example.com", "first_name": f"User {n}", "plan": f"v{version}"}

    def stored(self, fake: KlaviyoFake, record: dict[str, Any]) -> dict[str, Any] | None:
        found = fake.profile(record["email"])
        if found is None:
            return None
        return {**found, **(found.get("properties") or {})}

    def count(self, fake: KlaviyoFake) -> int:
        return len(fake.profiles)

    def test_the_batch_size_is_never_exceeded(self, served: KlaviyoFake) -> None:
        """10,000 profiles a job: checked with a batch_size of 20 (a full-size run is the
        split test below)."""
        destination = self.make(served, batch_size=20)
        records = [self.record(n) for n in range(45)]
        report, result = self.run(destination, records)
        assert report.stopped is None and result == BatchResult()
        assert 0 < served.largest_batch <= 20 and self.count(served) == 45


def batch(
    records: list[dict[str, Any]],
    *,
    operation: Operation = Operation.UPSERT,
    object: str = "profiles",
    match: str = "email",
    sync: str = "s",
) -> Batch:
    return Batch(
        sync=sync,
        operation=operation,
        number=0,
        idempotency_key="k",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={match: [r.get(match) for r in records]},
        object=object,
    )


def destination(fake: KlaviyoFake, **config: Any) -> KlaviyoDestination:
    values = {"type": "klaviyo", "api_key": KEY, "base_url": fake.url, "poll_interval": 0.02}
    return KlaviyoDestination(
        KlaviyoDestination.Config.model_validate({**values, **config}), name="klaviyo"
    )


def run(coro_factory: Any) -> Any:
    async def main() -> Any:
        with retry.delivery(policy=FAST, stop=asyncio.Event(), max_wait=5.0):
            return await coro_factory()

    return asyncio.run(main())


def write(fake: KlaviyoFake, b: Batch, **config: Any) -> BatchResult:
    dest = destination(fake, **config)

    async def go() -> BatchResult:
        try:
            return await dest.write_batch(b)
        finally:
            await dest.close()

    result: BatchResult = run(go)
    return result


@pytest.fixture
def fake() -> Any:
    klaviyo = KlaviyoFake(KEY, window_seconds=0.05)
    with klaviyo.serve():
        yield klaviyo


VIEWED = [
    {"sku": "SKU-1", "name": "Trail shoe", "viewed_at": "2026-03-01T10:00:00+00:00"},
    {"sku": "SKU-2", "name": "Rain jacket", "viewed_at": "2026-03-02T08:30:00+00:00"},
]


def test_a_profile_goes_as_jsonapi_with_standard_fields_location_and_properties(
    fake: KlaviyoFake,
) -> None:
    record = {
        "email": "ada@example.com",
        "first_name": "Ada",
        "city": "London",
        "plan": "pro",
        "recently_viewed": VIEWED,
    }
    assert write(fake, batch([record])) == BatchResult()
    [job] = [r for r in fake.requests if r.method == "POST"]
    assert job.headers["content-type"] == "application/vnd.api+json"
    assert job.headers["revision"] == "2026-07-15"
    [profile] = job.body["data"]["attributes"]["profiles"]["data"]
    assert profile == {
        "type": "profile",
        "attributes": {
            "email": "ada@example.com",
            "first_name": "Ada",
            "location": {"city": "London"},
            "properties": {"plan": "pro", "recently_viewed": VIEWED},
        },
    }
    stored = fake.profile("ada@example.com")
    assert stored is not None and stored["properties"]["recently_viewed"] == VIEWED


def test_an_import_job_is_submitted_once_then_polled_until_complete(fake: KlaviyoFake) -> None:
    fake.polls_to_complete = 3
    dest = destination(fake)
    b = batch([{"email": f"u{n}@example.com"} for n in range(5)])

    async def go() -> tuple[Any, list[Any]]:
        try:
            job = await dest.submit_batch(b)
            assert isinstance(job, Job)
            polls = [await dest.poll_job(job, b) for _ in range(3)]
            return job, polls
        finally:
            await dest.close()

    job, polls = run(go)
    assert polls[:2] == [None, None] and polls[2] == BatchResult()
    assert job.data["jobs"] == [{"id": job.id, "items": [[0, 5]]}]
    assert sum(r.method == "POST" for r in fake.requests) == 1
    assert len(fake.profiles) == 5


def test_import_errors_reject_only_their_profiles_across_pages(fake: KlaviyoFake) -> None:
    records = [{"email": f"u{n}@example.com"} for n in range(60)]
    for n in (3, 25, 41):
        records[n] = {"email": f"bad-{n}"}
    result = write(fake, batch(records))
    assert sorted(result.rejected) == [3, 25, 41]
    assert "Invalid email address 'bad-25'" in result.rejected[25]
    pages = [r for r in fake.requests if r.path.endswith("/import-errors")]
    assert len(pages) == 1  # 3 errors, 20 a page
    assert len(fake.profiles) == 57


def test_a_job_whose_answer_is_lost_is_polled_in_a_later_process_from_its_record(
    fake: KlaviyoFake,
) -> None:
    """The resumed run rebuilds the batch and polls the recorded job: no second import."""
    b = batch([{"email": f"u{n}@example.com"} for n in range(4)] + [{"email": "bad"}])

    async def submit() -> Job:
        dest = destination(fake)
        try:
            job = await dest.submit_batch(b)
            assert isinstance(job, Job)
            return job
        finally:
            await dest.close()

    job = run(submit)
    recorded = Job(job.id, orjson.loads(orjson.dumps(job.data)))  # the state store's round trip

    async def poll() -> BatchResult | None:
        dest = destination(fake)
        try:
            return await dest.poll_job(recorded, b)
        finally:
            await dest.close()

    result = run(poll)
    assert result is not None and list(result.rejected) == [4]
    assert sum(r.method == "POST" for r in fake.requests) == 1


def test_a_refused_import_names_the_profile_by_its_pointer(fake: KlaviyoFake) -> None:
    records = [{"email": "a@example.com"}, {"email": "b@example.com", "big": "x" * 120_000}]
    result = write(fake, batch(records))
    assert list(result.rejected) == [1] and "100,000" in result.rejected[1]
    assert fake.profile("a@example.com") is not None


def test_a_refused_job_rejects_the_profile_it_points_at_and_submits_the_rest(
    fake: KlaviyoFake,
) -> None:
    pointer = "/data/attributes/profiles/data/1/attributes/email"
    refusal = {"errors": [error(400, "invalid", "Email domain is blocked", pointer)]}
    fake.fail_next(1, status=400, body=refusal, path="/api/profile-bulk-import-jobs")
    records = [{"email": f"u{n}@example.com"} for n in range(3)]
    result = write(fake, batch(records))
    assert list(result.rejected) == [1] and "Email domain is blocked" in result.rejected[1]
    posts = [r for r in fake.requests if r.method == "POST"]
    assert len(posts) == 2 and len(posts[1].body["data"]["attributes"]["profiles"]["data"]) == 2
    assert fake.profile("u0@example.com") and fake.profile("u2@example.com")
    assert fake.profile("u1@example.com") is None


def test_a_batch_over_5_mb_is_split_into_jobs_recorded_together(fake: KlaviyoFake) -> None:
    records = [{"email": f"u{n}@example.com", "bio": "y" * 700} for n in range(8000)]
    dest = destination(fake)
    b = batch(records)

    async def go() -> tuple[Any, Any]:
        try:
            job = await dest.submit_batch(b)
            assert isinstance(job, Job)
            return job, await dest.poll_job(job, b)
        finally:
            await dest.close()

    job, result = run(go)
    assert len(job.data["jobs"]) >= 2 and result == BatchResult()
    assert sorted(expand([s for j in job.data["jobs"] for s in j["items"]])) == list(range(8000))
    posts = [r for r in fake.requests if r.method == "POST"]
    assert all(len(r.raw) <= 5_000_000 for r in posts) and len(fake.profiles) == 8000


def test_list_members_are_added_by_import_and_removed_by_id(fake: KlaviyoFake) -> None:
    records = [{"email": f"u{n}@example.com", "list_id": "L1"} for n in range(120)]
    added = write(fake, batch(records, operation=Operation.ADD, object="list_members"))
    assert added == BatchResult() and len(fake.members("L1")) == 120
    post = next(r for r in fake.requests if r.method == "POST")
    assert post.body["data"]["relationships"] == {"lists": {"data": [{"type": "list", "id": "L1"}]}}
    gone = [*records[:10], {"email": "never@example.com", "list_id": "L1"}]
    removed = write(fake, batch(gone, operation=Operation.REMOVE, object="list_members"))
    assert removed == BatchResult()
    assert len(fake.members("L1")) == 110 and "u0@example.com" not in fake.members("L1")
    lookups = [r for r in fake.requests if r.method == "GET" and r.path == "/api/profiles"]
    assert lookups and lookups[0].query["filter"].startswith('any(email,["u0@example.com"')


def test_events_carry_a_unique_id_and_klaviyo_drops_a_resend(fake: KlaviyoFake) -> None:
    records = [
        {"email": f"u{n}@example.com", "metric": "Viewed Product", "sku": f"S{n}",
         "time": "2026-03-01T10:00:00+00:00"}
        for n in range(3)
    ]  # fmt: skip
    b = batch(records, operation=Operation.INSERT, object="events", sync="views")
    assert write(fake, b) == BatchResult()
    assert write(fake, b) == BatchResult()  # a resend after a crash
    assert len(fake.events) == 3 and fake.dropped_events == 3
    event = fake.events[0]
    assert event["unique_id"] == "views:0" and event["properties"] == {"sku": "S0"}
    assert event["time"] == "2026-03-01T10:00:00Z"


def test_a_mapped_unique_id_is_sent_as_is_and_an_event_without_metric_is_rejected(
    fake: KlaviyoFake,
) -> None:
    records = [
        {"email": "a@example.com", "metric": "Ordered", "unique_id": "order-77"},
        {"email": "b@example.com"},
    ]
    result = write(fake, batch(records, operation=Operation.INSERT, object="events"))
    assert list(result.rejected) == [1] and "`metric`" in result.rejected[1]
    assert [e["unique_id"] for e in fake.events] == ["order-77"]


def test_a_refused_event_request_is_bisected_to_the_bad_event_and_the_others_go(
    fake: KlaviyoFake,
) -> None:
    records = [{"email": f"u{n}@example.com", "metric": "M"} for n in range(4)]
    records[2]["email"] = "broken"
    result = write(fake, batch(records, operation=Operation.INSERT, object="events"))
    assert list(result.rejected) == [2] and "Invalid email" in result.rejected[2]
    assert len(fake.events) == 3


def test_job_data_keeps_indices_as_ranges() -> None:
    assert ranges([0, 1, 2, 5, 6, 9]) == [[0, 3], [5, 7], [9, 10]]
    assert expand(ranges([0, 1, 2, 5, 6, 9])) == [0, 1, 2, 5, 6, 9]
