"""The Klaviyo fake and connector against ../shared/specs/klaviyo (OpenAPI, revision 2026-07-15,
profile bulk import).

Every request the connector sends to the endpoints the trimmed file describes (bulk import
jobs: create, poll, import errors), and every answer the fake returns there, goes through the
kit's :class:`undertow.testing.conformance.Contract` (openapi-core). The file's ``4XX``
response covers the 429 (SOURCE.txt: "429 responses carry Retry-After"). Outside the trimmed
file, and so counted as skipped: bulk create events, Get Profiles and Remove Profiles from
List (the connector's membership removals), each cited on docs/destinations/klaviyo.md.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from undertow.destinations import retry
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.klaviyo import (
    BURST,
    IMPORT_DOC,
    MAX_PROFILE_BYTES,
    MAX_PROFILES,
    MAX_REQUEST_BYTES,
    REVISION,
    STEADY,
    KlaviyoDestination,
)
from undertow.testing.conformance import Contract
from undertow.testing.klaviyo import KlaviyoFake
from undertow.testing.template import FAST

pytestmark = pytest.mark.conformance

SPECS = Path(os.environ.get("UNDERTOW_SPECS", Path(__file__).resolve().parents[3] / "shared/specs"))
SPEC = SPECS / "klaviyo" / "klaviyo-2026-07-15-profiles-bulk-import.openapi.json"
SOURCE = SPECS / "klaviyo" / "SOURCE.txt"
KEY = "pk_conformance_0000"
ONLY = ("/api/profile-bulk-import-jobs",)


@pytest.fixture
def contract() -> Contract:
    if not SPEC.exists():
        pytest.fail(f"the Klaviyo spec is missing: {SPEC} (set UNDERTOW_SPECS)", pytrace=False)
    return Contract.load(SPEC, only=ONLY)


def test_the_spec_and_source_still_state_the_limits_the_connector_uses() -> None:
    document = json.loads(SPEC.read_text())
    operation = document["paths"]["/api/profile-bulk-import-jobs"]["post"]
    text = operation["description"]
    assert "Accepts up to 10,000 profiles per request" in text and MAX_PROFILES == 10_000
    assert "The maximum allowed payload size is 5MB" in text and MAX_REQUEST_BYTES == 5_000_000
    assert "per-profile is 100KB" in text and MAX_PROFILE_BYTES == 100_000
    assert operation["x-klaviyo-ratelimit"] == {"burst": "10/s", "steady": "150/m"}
    assert (BURST.requests, BURST.per_seconds, STEADY.requests, STEADY.per_seconds) == (
        10,
        1.0,
        150,
        60.0,
    )
    revision = next(p for p in operation["parameters"] if p["name"] == "revision")
    assert revision["required"] and revision["schema"]["default"] == REVISION
    scheme = document["components"]["securitySchemes"]["Klaviyo-API-Key"]
    assert (scheme["in"], scheme["name"]) == ("header", "Authorization")
    source = " ".join(SOURCE.read_text().split())
    assert "429 responses carry Retry-After (seconds)" in source
    assert "job is not idempotent" in source
    assert KlaviyoDestination.capabilities.cite["max_batch_size"] == IMPORT_DOC


def batch(records: list[dict[str, Any]], operation: Operation, object: str) -> Batch:
    return Batch(
        sync="s",
        operation=operation,
        number=0,
        idempotency_key="k",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={"email": [r["email"] for r in records]},
        object=object,
    )


def write(url: str, b: Batch) -> BatchResult:
    config = {"type": "klaviyo", "api_key": KEY, "base_url": url, "poll_interval": 0.02}
    dest = KlaviyoDestination(KlaviyoDestination.Config.model_validate(config), name="k")

    async def go() -> BatchResult:
        try:
            with retry.delivery(policy=FAST, stop=asyncio.Event(), max_wait=5.0):
                return await dest.write_batch(b)
        finally:
            await dest.close()

    return asyncio.run(go())


def test_every_connector_request_and_fake_answer_conforms(contract: Contract) -> None:
    fake = KlaviyoFake(KEY, window_seconds=0.05, polls_to_complete=2)
    fake.app = contract.watch(fake.app)
    with fake.serve() as url:
        people = [
            {
                "email": f"u{n}@example.com",
                "first_name": "U",
                "city": "Paris",
                "plan": "pro",
                "recently_viewed": [{"sku": "S1", "viewed_at": "2026-03-01T10:00:00+00:00"}],
            }
            for n in range(30)
        ]
        people[7]["email"] = "bad-7"
        result = write(url, batch(people, Operation.UPSERT, "profiles"))
        assert list(result.rejected) == [7]
        fake.throttle_next(1)
        members = [{"email": f"u{n}@example.com", "list_id": "L1"} for n in range(5)]
        assert write(url, batch(members, Operation.ADD, "list_members")) == BatchResult()
        assert write(url, batch(members[:2], Operation.REMOVE, "list_members")) == BatchResult()
        views = [{"email": "u1@example.com", "metric": "Viewed", "sku": "S"}]
        assert write(url, batch(views, Operation.INSERT, "events")) == BatchResult()
    contract.assert_clean()
    assert contract.checked >= 7  # 2 jobs created (one throttled first), polls, import errors
    assert contract.skipped >= 3  # events, profile lookup, list removal: outside the file
