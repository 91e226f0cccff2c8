"""The Mixpanel destination against the local ingestion fake (undertow.testing.mixpanel)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from undertow.destinations import retry
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.mixpanel import MixpanelDestination, insert_id
from undertow.testing.mixpanel import MixpanelFake
from undertow.testing.template import FAST, DestinationTests

pytestmark = pytest.mark.connectors

TOKEN = "mp-project-token-1111-2222"


class TestMixpanelUsers(DestinationTests):
    """The shared suite on Mixpanel user profiles (/engage), identified by distinct_id."""

    destination = MixpanelDestination
    fake = MixpanelFake
    token = TOKEN
    secret_field = "project_token"
    object = "users"
    match = "distinct_id"
    invalid = ({"distinct_id": "u-big", "bio": "x" * 1_000_000}, "takes each under 1,000,000")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"distinct_id": f"u-{n}", "plan": f"v{version}", "seats": n}

    def stored(self, fake: MixpanelFake, record: dict[str, Any]) -> dict[str, Any] | None:
        found = fake.profile(record["distinct_id"])
        return None if found is None else {"distinct_id": record["distinct_id"], **found}

    def count(self, fake: MixpanelFake) -> int:
        return len(fake.profiles)

    def test_bad_credentials_give_a_clear_error_naming_the_destination(
        self, served: MixpanelFake
    ) -> None:
        """Ingestion has no read endpoint to check with: the first write proves the token."""
        report, _ = self.run(self.make(served, project_token="wrong-7f3a-9999"), [self.record(0)])
        assert report.stopped is not None and "template_dest" in str(report.stopped)
        assert "wrong-7f3a-9999" not in str(report.stopped) and report.stopped.hint


def events_batch(records: list[dict[str, Any]], sync: str = "views") -> Batch:
    return Batch(
        sync=sync,
        operation=Operation.INSERT,
        number=0,
        idempotency_key="k",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={"distinct_id": [r.get("distinct_id") for r in records]},
        object="events",
    )


def write(fake: MixpanelFake, b: Batch, **config: Any) -> BatchResult:
    values = {"type": "mixpanel", "project_token": TOKEN, "base_url": fake.url, **config}
    dest = MixpanelDestination(MixpanelDestination.Config.model_validate(values), name="mp")

    async def go() -> BatchResult:
        try:
            with retry.delivery(policy=FAST, stop=asyncio.Event(), max_wait=5.0):
                return await dest.write_batch(b)
        finally:
            await dest.close()

    return asyncio.run(go())


def view(n: int, user: int | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "distinct_id": f"u-{n % 3 if user is None else user}",
        "event": "Viewed Product",
        "time": "2026-03-01T10:00:00Z",
        "sku": f"S{n}",
        **extra,
    }


@pytest.fixture
def fake() -> Any:
    mp = MixpanelFake(TOKEN)
    with mp.serve():
        yield mp


def test_events_carry_an_insert_id_from_the_row_key_and_a_resend_is_dropped(
    fake: MixpanelFake,
) -> None:
    b = events_batch([view(n) for n in range(6)])  # three users, two events each
    assert write(fake, b) == BatchResult()
    assert write(fake, b) == BatchResult()
    assert len(fake.events) == 6 and fake.dropped_events == 6
    properties = fake.events[0]["properties"]
    assert properties["$insert_id"] == insert_id("views:0") and len(properties["$insert_id"]) == 32
    assert properties["time"] == 1772359200000 and properties["distinct_id"] == "u-0"
    assert fake.requests[0].query == {"strict": "1"}


def test_strict_import_rejects_only_the_failed_records_and_keeps_the_rest(
    fake: MixpanelFake,
) -> None:
    rows = [view(0), view(1, time="2099-01-01T00:00:00Z"), view(2), view(3, insert_id="ord-77")]
    result = write(fake, events_batch(rows))
    assert list(result.rejected) == [1] and result.failed == {}
    assert "properties.time" in result.rejected[1] and "future" in result.rejected[1]
    assert [e["properties"]["sku"] for e in fake.events] == ["S0", "S2", "S3"]
    assert fake.events[2]["properties"]["$insert_id"] == "ord-77"  # a valid mapped id is kept


def test_a_429_without_retry_after_backs_off_and_loses_nothing(fake: MixpanelFake) -> None:
    fake.throttle_next(2)
    assert write(fake, events_batch([view(n) for n in range(4)])) == BatchResult()
    assert fake.slow_downs == 2 and len(fake.events) == 4
    assert all("retry-after" not in (r.headers or {}) for r in fake.requests)


def test_requests_stay_under_10_mb_and_2000_events(fake: MixpanelFake) -> None:
    rows = [view(n, blob="x" * 6_000) for n in range(2000)]
    assert write(fake, events_batch(rows)) == BatchResult()
    assert len(fake.requests) >= 2 and all(len(r.raw) <= 10_000_000 for r in fake.requests)
    assert len(fake.events) == 2000


def test_a_row_without_time_or_event_is_rejected_before_sending(fake: MixpanelFake) -> None:
    rows = [view(0, time=None), {**view(1), "event": ""}, view(2)]
    result = write(fake, events_batch(rows))
    assert sorted(result.rejected) == [0, 1] and "`time`" in result.rejected[0]
    assert "`event`" in result.rejected[1] and len(fake.events) == 1


def test_a_service_account_authenticates_import_with_its_project_id() -> None:
    fake = MixpanelFake(TOKEN, service_account=("sa.user", "sa-secret-3333-4444", "123"))
    with fake.serve():
        config = {
            "service_account": "sa.user",
            "service_account_secret": "sa-secret-3333-4444",
            "project_id": "123",
        }
        assert write(fake, events_batch([view(0)]), **config) == BatchResult()
        assert fake.requests[0].query == {"strict": "1", "project_id": "123"}
        with pytest.raises(ValueError, match="project_id"):
            MixpanelDestination.Config.model_validate(
                {"type": "mixpanel", "project_token": TOKEN, "service_account": "sa.user"}
            )
