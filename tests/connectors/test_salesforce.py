"""The Salesforce destination against the local fake org (undertow.testing.salesforce)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from undertow.destinations.salesforce import SalesforceDestination
from undertow.testing.salesforce import DEMO_CLIENT_ID, SalesforceFake
from undertow.testing.template import DestinationTests

pytestmark = pytest.mark.connectors

SECRET = "sf-client-secret-0123456789abcdef"


class TestSalesforceContactsCollections(DestinationTests):
    """The shared suite on Contact through sObject Collections (Bulk off)."""

    destination = SalesforceDestination
    fake = SalesforceFake
    token = SECRET
    secret_field = "client_secret"
    object = "Contact"
    match = "Customer_Id__c"
    config: ClassVar[dict[str, Any]] = {"client_id": DEMO_CLIENT_ID, "bulk_threshold": None}
    invalid = (
        {"Customer_Id__c": "c-bad", "LastName": "Bad", "Email": "not-an-email"},
        "invalid email address: not-an-email",
    )

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"Customer_Id__c": f"c-{n}", "LastName": f"User {n}", "Plan__c": f"v{version}"}

    def stored(self, fake: SalesforceFake, record: dict[str, Any]) -> dict[str, Any] | None:
        return fake.records("Contact").by("Customer_Id__c", record["Customer_Id__c"])

    def count(self, fake: SalesforceFake) -> int:
        return len(fake.records("Contact"))


def _private_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


PRIVATE_KEY = _private_key()


class TestSalesforceJwtBearer(TestSalesforceContactsCollections):
    """The same suite logged in with the JWT bearer flow (an RS256 assertion, verified)."""

    token = PRIVATE_KEY
    secret_field = "private_key"
    config: ClassVar[dict[str, Any]] = {
        "client_id": DEMO_CLIENT_ID,
        "auth": "jwt",
        "username": "integration@undertow-demo.example",
        "bulk_threshold": None,
    }


class TestSalesforceRefreshToken(TestSalesforceContactsCollections):
    """The same suite logged in with a refresh token."""

    token = "5Aep861undertow.refresh.token.0123456789"
    secret_field = "refresh_token"
    config: ClassVar[dict[str, Any]] = {
        "client_id": DEMO_CLIENT_ID,
        "auth": "refresh_token",
        "bulk_threshold": None,
    }
    fake_options: ClassVar[dict[str, Any]] = {"kind": "refresh_token"}


class TestSalesforceBulk(TestSalesforceContactsCollections):
    """The same suite with every batch sent as a Bulk API 2.0 ingest job."""

    config: ClassVar[dict[str, Any]] = {
        "client_id": DEMO_CLIENT_ID,
        "bulk_threshold": 1,
        "bulk_batch_size": 50,
    }
    fake_options: ClassVar[dict[str, Any]] = {"job_seconds": 0.05}
