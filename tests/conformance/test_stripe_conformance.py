"""The Stripe fake and connector against ../shared/specs/stripe (OpenAPI, API 2020-08-27).

Every request the connector sends and every answer the fake returns goes through
:class:`undertow.testing.conformance.Contract` (openapi-core): the form-encoded bodies (bracket
notation, ``deepObject``), the search query, and every error through the file's
``default`` (``error``) response. The fixture file's customer and deleted customer are
checked against the fake's answers field by field. What SOURCE.txt adds (Idempotency-Key
replays, the rate limits, no batch endpoint) is tested against the fake and the connector.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from conformance_support import Exchange, batch, call, recorded, write

from undertow.destinations.base import BatchResult, Operation
from undertow.destinations.stripe import StripeConfig, StripeDestination
from undertow.testing.conformance import Contract
from undertow.testing.stripe import StripeFake

pytestmark = pytest.mark.conformance

SPECS = Path(os.environ.get("UNDERTOW_SPECS", Path(__file__).resolve().parents[3] / "shared/specs"))
SPEC = SPECS / "stripe" / "stripe-2020-08-27-customers.openapi.json"
FIXTURES = SPECS / "stripe" / "stripe-2020-08-27-customer.fixtures.json"
SOURCE = SPECS / "stripe" / "SOURCE.txt"
KEY = "sk_test_conformance000000000000"
AUTH = {"Authorization": f"Bearer {KEY}"}
FAST = {"requests_per_second": 200, "endpoint_per_second": 200, "search_per_second": 200}


@pytest.fixture
def contract() -> Contract:
    if not SPEC.exists():
        pytest.fail(f"the Stripe spec is missing: {SPEC} (set UNDERTOW_SPECS)", pytrace=False)
    return Contract.load(SPEC)  # every error is the file's `default` response


def watched(fake: StripeFake, contract: Contract) -> list[Exchange]:
    exchanges: list[Exchange] = []
    fake.app = contract.watch(recorded(fake.app, exchanges))
    return exchanges


def connector(url: str, **extra: Any) -> StripeDestination:
    values = {
        "type": "stripe",
        "api_key": KEY,
        "base_url": url,
        "requests_per_second": 150,
        "search_per_second": 150,
        "writes_per_second": 150,
        **extra,
    }
    return StripeDestination(StripeConfig.model_validate(values), name="billing")


def test_source_still_states_what_the_tests_rely_on() -> None:
    source = " ".join(SOURCE.read_text().split())
    for fact in (
        "request bodies are application/x-www-form-urlencoded with bracket notation",
        "Idempotency-Key request header (any POST); keys retained ~24 h; replays return the "
        "first result; reuse with different params -> 400 idempotency_error",
        "no batch endpoint",
        'error body {"error":{"type","code","message","param","doc_url"}}',
    ):
        assert fact in source, f"SOURCE.txt no longer says {fact!r}: revisit this test"


def test_every_connector_request_and_fake_answer_conforms(contract: Contract) -> None:
    fake = StripeFake(KEY, **FAST)
    exchanges = watched(fake, contract)
    with fake.serve() as url:
        people = [
            {
                "email": "a@x.io",
                "name": "A",
                "address": {"city": "Paris", "country": "FR"},
                "preferred_locales": ["fr"],
                "plan": "pro",
                "vip": True,
            },
            {"email": "b@x.io", "name": "B", "balance": -500, "seats": 3, "note": None},
        ]
        for operation in (Operation.UPSERT, Operation.UPSERT, Operation.UPDATE):
            assert (
                write(
                    connector(url),
                    batch(people, operation=operation, match="email", object="customers"),
                )
                == BatchResult()
            )
        by_key = [{"user_id": "u-1", "email": "c@x.io"}]
        assert (
            write(connector(url), batch(by_key, match="user_id", object="customers"))
            == BatchResult()
        )
        bad = write(
            connector(url),
            batch([{"email": "nope", "name": "x"}], match="email", object="customers"),
        )
        assert "email_invalid" in bad.rejected[0]
        inserted = [{"email": "d@x.io", "name": "D"}]
        for _ in range(2):  # the second replays the first (same row, same key)
            b = batch(inserted, operation=Operation.INSERT, object="customers")
            assert write(connector(url), b) == BatchResult()
        fake.throttle_next(1)
        gone = batch(
            people + by_key + inserted,
            operation=Operation.DELETE,
            match="email",
            object="customers",
        )
        assert write(connector(url), gone) == BatchResult()

        async def check() -> None:
            dest = connector(url)
            try:
                await dest.check()
            finally:
                await dest.close()

        asyncio.run(check())
    contract.assert_clean()
    statuses = {e.status for e in exchanges}
    assert {200, 400, 429} <= statuses
    assert any(e.response_headers.get("idempotent-replayed") == "true" for e in exchanges)
    writes = [e for e in exchanges if e.method == "POST"]
    assert writes and all(e.headers["idempotency-key"].startswith("undertow-") for e in writes)
    assert all(e.headers["content-type"] == "application/x-www-form-urlencoded" for e in writes)


def test_the_fakes_answers_to_anyone_conform_and_match_the_fixtures(contract: Contract) -> None:
    fixtures = orjson.loads(FIXTURES.read_bytes())
    fake = StripeFake(KEY, **FAST)
    form = b"email=a%40x.io&metadata[plan]=pro&address[city]=Paris"
    exchanges = watched(fake, contract)
    with fake.serve() as url:
        made = call(
            url, "POST", "/v1/customers", headers={**AUTH, "Idempotency-Key": "k1"}, form=form
        )
        again = call(
            url, "POST", "/v1/customers", headers={**AUTH, "Idempotency-Key": "k1"}, form=form
        )
        other = call(
            url,
            "POST",
            "/v1/customers",
            headers={**AUTH, "Idempotency-Key": "k1"},
            form=b"email=b%40x.io",
        )
        customer = made.body["id"]
        call(
            url, "POST", f"/v1/customers/{customer}", headers=AUTH, form=b"metadata[plan]=&name=Ada"
        )
        call(url, "GET", f"/v1/customers/{customer}", headers=AUTH)
        call(url, "GET", "/v1/customers/search?query=email%3A%27a%40x.io%27", headers=AUTH)
        call(url, "POST", "/v1/customers", headers=AUTH, form=b"colour=blue")
        deleted = call(url, "DELETE", f"/v1/customers/{customer}", headers=AUTH)
        call(url, "GET", f"/v1/customers/{customer}", headers=AUTH)
        call(
            url,
            "GET",
            f"/v1/customers/{customer}",
            headers={"Authorization": "Bearer sk_test_wrong"},
        )
    # an unknown parameter, sent on purpose: the one request the file refuses; its answer is fine
    assert [(v.side, v.path, v.status) for v in contract.violations] == [
        ("request", "/v1/customers", None)
    ]
    assert "colour" in " ".join(contract.violations[0].errors)
    assert [e.status for e in exchanges] == [200, 200, 400, 200, 200, 200, 400, 200, 404, 401]
    assert again.body == made.body and again.headers["idempotent-replayed"] == "true"
    assert other.body["error"]["type"] == "idempotency_error"
    assert set(fixtures["customer"]) <= set(made.body)
    for name, value in fixtures["customer"].items():
        if name not in (
            "id",
            "created",
            "email",
            "metadata",
            "address",
            "invoice_prefix",
            "currency",
        ):
            assert made.body[name] == value, name
    assert (
        set(deleted.body) == set(fixtures["deleted_customer"]) and deleted.body["deleted"] is True
    )
    assert exchanges[7].json()["object"] == "customer"
