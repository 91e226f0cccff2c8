"""Dry runs (``undertow test --dry-run``): the first request is built, shown and never sent."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from undertow.destinations import capture
from undertow.destinations._http import DryRunStop, dry_run
from undertow.destinations.base import Batch, Destination, Operation
from undertow.destinations.salesforce import SalesforceConfig, SalesforceDestination
from undertow.destinations.stripe import StripeConfig, StripeDestination
from undertow.testing.salesforce import DEMO_CLIENT_ID, SalesforceFake
from undertow.testing.stripe import StripeFake

pytestmark = pytest.mark.connectors

SF_SECRET = "sf-dry-run-secret-0123456789abcdef"
STRIPE_KEY = "sk_test_51Ndryrunsecret0000000000000000000"


def batch(records: list[dict[str, Any]], match: str, object: str) -> Batch:
    return Batch(
        sync="dry",
        operation=Operation.UPSERT,
        number=0,
        idempotency_key="test-1",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={match: [r[match] for r in records]},
        object=object,
    )


def dry(dest: Destination[Any], b: Batch) -> list[capture.Exchange]:
    """``write_batch`` in a dry run; the exchanges seen (it must stop at the first request)."""
    seen: list[capture.Exchange] = []

    async def main() -> None:
        try:
            with capture.context(sync="dry"):
                await dest.write_batch(b)
        finally:
            await dest.close()

    stopped = False
    with capture.listening(seen.append), dry_run():
        try:
            asyncio.run(main())
        except* DryRunStop:  # alone, or from a task group of concurrent requests
            stopped = True
    assert stopped, "the dry run did not stop at a request"
    return seen


def test_an_oauth_destination_skips_the_login_and_shows_the_write_unsent() -> None:
    org = SalesforceFake(SF_SECRET, job_seconds=0.05)
    with org.serve():
        config = SalesforceConfig.model_validate(
            {
                "type": "salesforce",
                "base_url": org.url,
                "client_id": DEMO_CLIENT_ID,
                "client_secret": SF_SECRET,
                "bulk_threshold": None,
            }
        )
        dest = SalesforceDestination(config, name="crm")
        record = {"Customer_Id__c": "c-1", "LastName": "Lovelace", "Email": "ada@example.com"}
        [exchange] = dry(dest, batch([record], "Customer_Id__c", "Contact"))
        assert org.sessions.logins == [] and org.requests == []  # nothing reached the org
    assert exchange.not_sent and exchange.status is None
    assert exchange.method == "PATCH"
    assert "/composite/sobjects/Contact/Customer_Id__c" in exchange.url
    assert exchange.request_headers["authorization"] == "***"
    assert "Lovelace" in (exchange.request_body or "")
    shown = str(exchange.request_headers) + (exchange.request_body or "") + exchange.url
    assert SF_SECRET not in shown


def test_a_per_record_destination_stops_at_the_first_record_and_rejects_nothing() -> None:
    """Stripe sends one request per record, several at once: the stop is not a refusal."""
    stripe = StripeFake(STRIPE_KEY)
    with stripe.serve():
        config = StripeConfig.model_validate(
            {"type": "stripe", "api_key": STRIPE_KEY, "base_url": stripe.url}
        )
        dest = StripeDestination(config, name="billing")
        records = [{"email": f"u{n}@example.com", "name": f"U {n}"} for n in range(5)]
        seen = dry(dest, batch(records, "email", "customers"))
        assert stripe.requests == []
    assert seen and all(e.not_sent for e in seen)
    assert all(e.request_headers.get("authorization") == "***" for e in seen)
    assert STRIPE_KEY not in "".join(str(e.request_body) + e.url for e in seen)


def test_outside_a_dry_run_requests_are_sent() -> None:
    """The switch is scoped: after the block, the same destination sends for real."""
    stripe = StripeFake(STRIPE_KEY)
    with stripe.serve():
        config = StripeConfig.model_validate(
            {"type": "stripe", "api_key": STRIPE_KEY, "base_url": stripe.url}
        )
        b = batch([{"email": "real@example.com", "name": "Real"}], "email", "customers")
        dry(StripeDestination(config, name="billing"), b)
        assert stripe.requests == []

        async def real() -> None:
            dest = StripeDestination(config, name="billing")
            try:
                result = await dest.write_batch(b)
            finally:
                await dest.close()
            assert not result.rejected and not result.failed

        asyncio.run(real())
        assert stripe.requests and stripe.by("email", "real@example.com") is not None


def test_marketo_skips_its_identity_login_in_a_dry_run() -> None:
    from undertow.destinations.marketo import MarketoDestination
    from undertow.testing.marketo import MarketoFake

    secret = "marketo-dry-run-secret-0000"
    marketo = MarketoFake(secret)
    with marketo.serve():
        values = {"type": "marketo", "client_id": "demo-client", "client_secret": secret,
                  "base_url": marketo.url}  # fmt: skip
        dest = MarketoDestination(MarketoDestination.Config.model_validate(values), name="mk")
        [exchange] = dry(dest, batch([{"email": "ada@example.com"}], "email", "leads"))
        assert marketo.requests == []  # not even /identity/oauth/token
    assert exchange.method == "POST" and exchange.path.endswith("/leads.json")
    assert exchange.request_headers["authorization"] == "***"
    assert secret not in str(exchange.request_headers) + (exchange.request_body or "")
