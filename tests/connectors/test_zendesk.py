"""The Zendesk destination against the local Zendesk fake (undertow.testing.zendesk)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from undertow.destinations.zendesk import ZendeskDestination
from undertow.testing.template import DestinationTests
from undertow.testing.zendesk import ZendeskFake

pytestmark = pytest.mark.connectors

TOKEN = "zd-api-token-0123456789abcdefABCDEF"
FAST: dict[str, Any] = {"job_seconds": 0.05, "window_seconds": 0.5}


class TestZendeskUsersByExternalId(DestinationTests):
    """The shared suite on users matched by external_id (create_or_update_many jobs)."""

    destination = ZendeskDestination
    fake = ZendeskFake
    token = TOKEN
    secret_field = "api_token"
    object = "users"
    match = "external_id"
    config: ClassVar[dict[str, Any]] = {
        "email": "admin@example.com",
        "poll_seconds": 0.02,
        "rate_limit_per_minute": 100_000,
    }
    fake_options: ClassVar[dict[str, Any]] = FAST
    invalid = (
        {"external_id": "u-bad", "name": "Bad", "email": "not-an-email"},
        "Email: not-an-email is not properly formatted",
    )

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"external_id": f"u-{n}", "name": f"User {n}", "notes": f"v{version}"}

    def stored(self, fake: ZendeskFake, record: dict[str, Any]) -> dict[str, Any] | None:
        return fake.users.by("external_id", record["external_id"])

    def count(self, fake: ZendeskFake) -> int:
        return len(fake.users)


class TestZendeskOrganizations(TestZendeskUsersByExternalId):
    """The same suite on organizations (one create_or_update request per record)."""

    object = "organizations"
    invalid = ({"external_id": "o-bad", "name": ""}, "Name: cannot be blank")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"external_id": f"o-{n}", "name": f"Org {n}", "notes": f"v{version}"}

    def stored(self, fake: ZendeskFake, record: dict[str, Any]) -> dict[str, Any] | None:
        return fake.organizations.by("external_id", record["external_id"])

    def count(self, fake: ZendeskFake) -> int:
        return len(fake.organizations)
