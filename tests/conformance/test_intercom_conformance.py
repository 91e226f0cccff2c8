"""The Intercom fake and connector against ../shared/specs/intercom (OpenAPI 2.14, contacts).

Every request the connector sends and every answer the fake returns goes through
:class:`undertow.testing.conformance.Contract` (openapi-core). What the trimmed file leaves
out is declared here, each with what states it: SOURCE.txt ("no 409/422/429 responses are
described, although the API returns 409 on duplicate external_id/email and 429 when
rate-limited"; "error body: {type: error.list, request_id, errors: [{code, message}]},
schema error kept") covers 400/404/409/429 with the ``error`` schema, and the Data
Attributes API (``undertow validate``) is outside the trimmed file.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from conformance_support import Exchange, batch, recorded, write

from undertow.destinations.base import BatchResult, Operation
from undertow.destinations.intercom import (
    CALLS_PER_10S,
    RATE_DOC,
    IntercomConfig,
    IntercomDestination,
)
from undertow.testing.conformance import Contract
from undertow.testing.intercom import IntercomFake

pytestmark = pytest.mark.conformance

SPECS = Path(os.environ.get("UNDERTOW_SPECS", Path(__file__).resolve().parents[3] / "shared/specs"))
SPEC = SPECS / "intercom" / "intercom-2.14-contacts.openapi.yaml"
SOURCE = SPECS / "intercom" / "SOURCE.txt"
TOKEN = "intercom-conformance-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


OUTSIDE = {400: "error", 404: "error", 409: "error", 429: "error"}
ONLY = ("/contacts", "/companies")  # /data_attributes (validate) is outside the trimmed file


@pytest.fixture
def contract() -> Contract:
    if not SPEC.exists():
        pytest.fail(f"the Intercom spec is missing: {SPEC} (set UNDERTOW_SPECS)", pytrace=False)
    return Contract.load(SPEC, only=ONLY, outside=OUTSIDE)


def watched(fake: IntercomFake, contract: Contract) -> list[Exchange]:
    exchanges: list[Exchange] = []
    fake.app = contract.watch(recorded(fake.app, exchanges))
    return exchanges


def connector(url: str, **extra: Any) -> IntercomDestination:
    config = IntercomConfig(type="intercom", token=TOKEN, base_url=url, **extra)
    return IntercomDestination(config, name="support")


def test_source_still_states_what_the_contract_adds() -> None:
    source = " ".join(SOURCE.read_text().split())  # SOURCE.txt wraps its lines
    for fact in (
        "no batch/bulk contact endpoint: one HTTP call per record",
        "no 409/422/429 responses are described",
        "409 on duplicate external_id/email for POST /contacts",
        "X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset (epoch s). No Retry-After.",
        '{"type":"error.list","request_id":...,"errors":[{"code","message"}]}',
    ):
        assert fact in source, f"SOURCE.txt no longer says {fact!r}: revisit this test"
    assert (
        CALLS_PER_10S == 10_000 // 6
        and IntercomDestination.capabilities.cite["rate_limit"] == RATE_DOC
    )


def test_every_connector_request_and_fake_answer_conforms(contract: Contract) -> None:
    fake = IntercomFake(TOKEN, window_seconds=0.5)
    exchanges = watched(fake, contract)
    with fake.serve() as url:
        people = [
            {"email": "a@x.io", "name": "A", "plan": "pro", "signed_up_at": "2024-01-02"},
            {"email": "b@x.io", "external_id": "u-2", "seats": 3, "unsubscribed_from_emails": True},
        ]
        for operation in (Operation.UPSERT, Operation.UPSERT, Operation.UPDATE):
            b = batch(people, operation=operation, match="email", object="contacts")
            assert write(connector(url), b) == BatchResult()
        by_id = [{"external_id": "u-3", "email": "c@x.io", "role": "lead"}]
        assert (
            write(connector(url), batch(by_id, match="external_id", object="contacts"))
            == BatchResult()
        )
        bad = [{"email": "not-an-email"}, {"email": "d@x.io", "plann": "x"}]
        rejected = write(connector(url), batch(bad, match="email", object="contacts"))
        assert sorted(rejected.rejected) == [0, 1]
        insert = write(
            connector(url), batch(people[:1], operation=Operation.INSERT, object="contacts")
        )
        assert "conflict" in insert.rejected[0]
        companies = [{"company_id": "c-1", "name": "Acme", "size": 12, "tier": "gold"}]
        for _ in range(2):
            b = batch(companies, match="company_id", object="companies")
            assert write(connector(url), b) == BatchResult()
        fake.throttle_next(1)
        gone = batch(people + by_id, operation=Operation.DELETE, match="email", object="contacts")
        assert write(connector(url), gone) == BatchResult()

        async def check_and_validate() -> list[str]:
            dest = connector(url)
            try:
                await dest.check()
                return await dest.validate_sync(
                    sync="s", object="contacts", match={"email": "e"}, fields=["plan"]
                )
            finally:
                await dest.close()

        assert asyncio.run(check_and_validate()) == []
    contract.assert_clean()
    seen = {(e.method, e.path.split("/")[1], e.status) for e in exchanges}
    assert ("POST", "contacts", 409) in seen and ("POST", "companies", 200) in seen
    assert any(e.status == 429 for e in exchanges) and any(e.status == 400 for e in exchanges)
    assert {e.method for e in exchanges if e.path.startswith("/contacts/")} >= {"PUT", "DELETE"}
    assert contract.skipped == 1 and contract.checked == len(exchanges) - 1


def test_the_fakes_answers_to_anyone_conform(contract: Contract) -> None:
    fake = IntercomFake(TOKEN)
    from conformance_support import call

    exchanges = watched(fake, contract)
    with fake.serve() as url:
        made = call(url, "POST", "/contacts", {"email": "a@x.io", "role": "user"}, headers=AUTH)
        contact = made.body["id"]
        call(url, "POST", "/contacts", {"email": "a@x.io"}, headers=AUTH)  # 409
        call(url, "GET", f"/contacts/{contact}", headers=AUTH)
        call(
            url,
            "PUT",
            f"/contacts/{contact}",
            {"name": "Ada", "custom_attributes": {"plan": "pro"}},
            headers=AUTH,
        )
        call(
            url,
            "POST",
            "/contacts/search",
            {"query": {"field": "email", "operator": "=", "value": "a@x.io"}},
            headers=AUTH,
        )
        call(url, "GET", "/contacts/0000", headers=AUTH)  # 404
        call(
            url,
            "POST",
            "/companies",
            {"company_id": "c-1", "name": "Acme", "plan": "pro"},
            headers=AUTH,
        )
        call(url, "DELETE", f"/contacts/{contact}", headers=AUTH)
        call(url, "GET", f"/contacts/{contact}", headers={"Authorization": "Bearer wrong"})  # 401
    contract.assert_clean()
    statuses = [e.status for e in exchanges]
    assert statuses == [200, 409, 200, 200, 200, 404, 200, 200, 401]
    ok = [e for e in exchanges if e.status == 200]
    assert all(e.response_headers["x-ratelimit-limit"] == "1666" for e in ok)
    assert "x-ratelimit-limit" not in exchanges[-1].response_headers  # no valid credentials
    assert all("retry-after" not in e.response_headers for e in exchanges)
