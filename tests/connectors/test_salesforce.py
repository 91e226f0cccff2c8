"""The Salesforce destination against the local fake org (undertow.testing.salesforce)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import orjson
import pytest
from pydantic import ValidationError

from undertow.destinations import capture, retry
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.retry import RetryPolicy
from undertow.destinations.salesforce import SalesforceConfig, SalesforceDestination
from undertow.errors import FatalDeliveryError
from undertow.testing.salesforce import DEMO_CLIENT_ID, SalesforceFake
from undertow.testing.template import DestinationTests

pytestmark = pytest.mark.connectors

SECRET = "sf-client-secret-0123456789abcdef"
T = TypeVar("T")


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
        "bulk_poll_seconds": 0.02,
    }
    fake_options: ClassVar[dict[str, Any]] = {"job_seconds": 0.05}


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def org() -> Iterator[SalesforceFake]:
    fake = SalesforceFake(SECRET, job_seconds=0.05)
    with fake.serve():
        yield fake


def destination(fake: SalesforceFake, **extra: Any) -> SalesforceDestination:
    values = {
        "type": "salesforce",
        "base_url": fake.url,
        "client_id": DEMO_CLIENT_ID,
        "client_secret": SECRET,
        "bulk_threshold": None,
        **extra,
    }
    return SalesforceDestination(SalesforceConfig.model_validate(values), name="crm")


def batch(
    records: list[dict[str, Any]],
    operation: Operation = Operation.UPSERT,
    *,
    match: str | None = "Customer_Id__c",
    object: str = "Contact",
) -> Batch:
    identifiers = {match: [r.get(match) for r in records]} if match else {}
    return Batch(
        sync="contacts_to_sf",
        operation=operation,
        number=1,
        idempotency_key="k1",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers=identifiers,
        object=object,
    )


def go(dest: SalesforceDestination, coro: Callable[[], Awaitable[T]], attempts: int = 6) -> T:
    async def main() -> T:
        policy = RetryPolicy(max_attempts=attempts, base_delay=0.01, max_delay=0.05)
        try:
            with retry.delivery(policy=policy, stop=None, max_wait=30):
                return await coro()
        finally:
            await dest.close()

    return asyncio.run(main())


def write(fake: SalesforceFake, b: Batch, **extra: Any) -> BatchResult:
    dest = destination(fake, **extra)
    return go(dest, lambda: dest.write_batch(b))


def contact(n: int, **fields: Any) -> dict[str, Any]:
    return {"Customer_Id__c": f"c-{n}", "LastName": f"Last {n}", **fields}


# -- modes -----------------------------------------------------------------------------------


def test_upsert_sends_collections_on_the_external_id_and_updates_in_place(
    org: SalesforceFake,
) -> None:
    assert write(org, batch([contact(1, Email="a@x.io"), contact(2)])) == BatchResult()
    first = org.records("Contact").find("Customer_Id__c", "c-1")
    assert write(org, batch([contact(1, Email="new@x.io")])) == BatchResult()
    contacts = org.records("Contact")
    assert len(contacts) == 2
    assert contacts.find("Customer_Id__c", "C-1") == first  # external ids match caselessly
    assert contacts.by("Customer_Id__c", "c-1")["Email"] == "new@x.io"  # type: ignore[index]
    sent = [
        r for r in org.requests if r.path.endswith("/composite/sobjects/Contact/Customer_Id__c")
    ]
    assert [r.method for r in sent] == ["PATCH", "PATCH"]
    assert sent[-1].body == {
        "allOrNone": False,
        "records": [
            {
                "attributes": {"type": "Contact"},
                "Customer_Id__c": "c-1",
                "LastName": "Last 1",
                "Email": "new@x.io",
            }
        ],
    }


def test_insert_posts_records_without_a_match(org: SalesforceFake) -> None:
    records = [{"LastName": "A"}, {"LastName": "B", "Email": "b@x.io"}]
    assert write(org, batch(records, Operation.INSERT, match=None)) == BatchResult()
    assert sorted(r["LastName"] for r in org.records("Contact").values()) == ["A", "B"]
    posted = [
        r for r in org.requests if r.method == "POST" and r.path.endswith("/composite/sobjects")
    ]
    assert len(posted) == 1


def test_update_by_external_id_looks_up_ids_and_never_creates(org: SalesforceFake) -> None:
    write(org, batch([contact(1), contact(2)]))
    result = write(org, batch([contact(1, Title="CTO"), contact(9, Title="x")], Operation.UPDATE))
    assert list(result.rejected) == [1]
    assert "no Contact has Customer_Id__c = 'c-9'" in result.rejected[1]
    assert org.records("Contact").by("Customer_Id__c", "c-1")["Title"] == "CTO"  # type: ignore[index]
    assert len(org.records("Contact")) == 2
    query = next(r for r in org.requests if r.path.endswith("/query"))
    assert query.query["q"] == (
        "SELECT Id, Customer_Id__c FROM Contact WHERE Customer_Id__c IN ('c-1', 'c-9')"
    )
    patched = [r for r in org.requests if r.method == "PATCH" and r.path.endswith("/sobjects")]
    assert [rec["Id"] for rec in patched[-1].body["records"]] == [
        org.records("Contact").find("Customer_Id__c", "c-1")
    ]


def test_update_by_id(org: SalesforceFake) -> None:
    write(org, batch([contact(1)]))
    object_id = org.records("Contact").find("Customer_Id__c", "c-1")
    result = write(org, batch([{"Id": object_id, "Title": "VP"}], Operation.UPDATE, match="Id"))
    assert result == BatchResult()
    assert org.records("Contact")[str(object_id)]["Title"] == "VP"
    assert not any(r.path.endswith("/query") for r in org.requests)


def test_delete_by_external_id_and_already_gone_records_count_as_deleted(
    org: SalesforceFake,
) -> None:
    write(org, batch([contact(1), contact(2), contact(3)]))
    gone = org.records("Contact").find("Customer_Id__c", "c-2")
    result = write(org, batch([contact(2), contact(404)], Operation.DELETE))
    assert result == BatchResult()
    assert gone in org.records("Contact").archived
    deleted = next(r for r in org.requests if r.method == "DELETE")
    assert deleted.query == {"ids": gone, "allOrNone": "false"}
    # by Id, a record deleted before: Salesforce says ENTITY_IS_DELETED, which is done
    again = write(org, batch([{"Id": gone}], Operation.DELETE, match="Id"))
    assert again == BatchResult()


def test_a_nested_object_is_rejected_unsent_and_lists_become_multi_select(
    org: SalesforceFake,
) -> None:
    records = [contact(1, Recently_Viewed__c=["SKU-1", "SKU-2"]), contact(2, Title={"a": 1})]
    result = write(org, batch(records))
    assert list(result.rejected) == [1]
    assert "nested object" in result.rejected[1]
    stored = org.records("Contact").by("Customer_Id__c", "c-1")
    assert stored is not None and stored["Recently_Viewed__c"] == "SKU-1;SKU-2"
    sent = [r for r in org.requests if r.method == "PATCH"]
    assert [rec["Customer_Id__c"] for rec in sent[0].body["records"]] == ["c-1"]


def test_one_bad_value_in_500_rejects_that_record_only_with_salesforces_message(
    org: SalesforceFake,
) -> None:
    """A value Salesforce cannot deserialise fails the whole request (400 JSON_PARSER_ERROR,
    naming no record): the kit splits that request until only the bad record is left."""
    records = [contact(n, Seats__c=n) for n in range(500)]
    records[321]["Seats__c"] = "lots"
    dest = destination(org)
    result = go(dest, lambda: dest.write_batch(batch(records)))
    assert list(result.rejected) == [321]
    assert "JSON_PARSER_ERROR" in result.rejected[321]
    assert "Cannot deserialize instance of double" in result.rejected[321]
    assert result.failed == {}
    assert len(org.records("Contact")) == 499
    assert 0 < dest.stats.bisect_requests <= 2 * 8 + 2


def test_daily_allocation_spent_stops_the_run_with_the_vendors_words(org: SalesforceFake) -> None:
    org.windows[0].limit = 2  # two REST calls left in the rolling 24 hours (describe, upsert)
    dest = destination(org)
    write(org, batch([contact(1)]))
    with pytest.raises(FatalDeliveryError) as caught:
        go(dest, lambda: dest.write_batch(batch([contact(2)])))
    message = str(caught.value)
    assert "REQUEST_LIMIT_EXCEEDED" in message and "TotalRequests Limit exceeded" in message
    assert "rolling 24 hours" in (caught.value.hint or "")
    assert org.records("Contact").by("Customer_Id__c", "c-2") is None


# -- auth and the instance -------------------------------------------------------------------


def test_the_rest_api_is_reached_at_the_instance_url_the_login_returns() -> None:
    fake = SalesforceFake(SECRET, instance_host="localhost")
    seen: list[capture.Exchange] = []
    with fake.serve(), capture.listening(seen.append):
        assert write(fake, batch([contact(1)])) == BatchResult()
    hosts = [(urlsplit(e.url).hostname, urlsplit(e.url).path) for e in seen]
    assert hosts[0] == ("127.0.0.1", "/services/oauth2/token")
    assert hosts[1:] == [
        ("localhost", "/services/data/v62.0/sobjects/Contact/describe"),
        ("localhost", "/services/data/v62.0/composite/sobjects/Contact/Customer_Id__c"),
    ]


def test_an_expired_session_logs_in_again_once_and_resends(org: SalesforceFake) -> None:
    dest = destination(org)

    async def twice() -> BatchResult:
        await dest.write_batch(batch([contact(1)]))
        org.sessions.expire_all()
        return await dest.write_batch(batch([contact(2)]))

    assert go(dest, twice) == BatchResult()
    assert org.sessions.logins == ["client_credentials", "client_credentials"]
    assert len(org.records("Contact")) == 2
    assert [r.status for r in org.requests if r.path.endswith("Customer_Id__c")][1] == 401


@pytest.mark.parametrize(
    ("fake_options", "config", "said", "hint"),
    [
        ({"my_domain": False}, {}, "request not supported on this domain", "My Domain"),
        ({"run_as_user": False}, {}, "no client credentials user enabled", "Run As user"),
        ({}, {"client_id": "wrong-app"}, "invalid_client_id", "Consumer Key"),
        (
            {"kind": "private_key"},
            {
                "auth": "jwt",
                "username": "integration@undertow-demo.example",
                "private_key": PRIVATE_KEY,
                "client_secret": None,
            },
            "invalid assertion",
            "certificate",
        ),
        (
            {},
            {"auth": "jwt", "username": "someone.else@example.com", "private_key": PRIVATE_KEY},
            "invalid assertion",
            "certificate",
        ),
        (
            {"refresh_tokens": ["5Aep-current"]},
            {"auth": "refresh_token", "refresh_token": "5Aep-revoked"},
            "expired access/refresh token",
            "authorise the connected app again",
        ),
    ],
)
def test_login_failures_say_what_salesforce_said_and_how_to_fix_it(
    fake_options: dict[str, Any], config: dict[str, Any], said: str, hint: str
) -> None:
    # the private-key fake verifies with ANOTHER key: the assertion's signature is refused
    credential = _private_key() if fake_options.get("kind") == "private_key" else SECRET
    fake = SalesforceFake(credential, **fake_options)
    with fake.serve():
        dest = destination(fake, **config)
        with pytest.raises(FatalDeliveryError) as caught:
            go(dest, dest.check)
    assert said in str(caught.value) and "'crm'" in str(caught.value)
    assert hint in (caught.value.hint or "")
    assert SECRET not in str(caught.value) and "PRIVATE KEY" not in str(caught.value)


def test_a_jwt_for_the_wrong_audience_is_refused() -> None:
    fake = SalesforceFake(PRIVATE_KEY)
    with fake.serve():
        dest = destination(
            fake,
            auth="jwt",
            username="integration@undertow-demo.example",
            private_key=PRIVATE_KEY,
            audience="https://evil.example",
        )
        with pytest.raises(FatalDeliveryError, match="audience is invalid"):
            go(dest, dest.check)


def test_the_jwt_is_signed_rs256_with_the_claims_salesforce_reads(tmp_path: Path) -> None:
    import jwt

    key_file = tmp_path / "server.key"
    key_file.write_text(PRIVATE_KEY)
    fake = SalesforceFake(PRIVATE_KEY)
    with fake.serve():
        dest = destination(
            fake,
            auth="jwt",
            username="integration@undertow-demo.example",
            private_key_file=str(key_file),
        )
        go(dest, dest.check)
        assertion = dest.auth.assertion()
    header = jwt.get_unverified_header(assertion)
    claims = jwt.decode(assertion, options={"verify_signature": False})
    assert header["alg"] == "RS256"
    assert claims["iss"] == DEMO_CLIENT_ID
    assert claims["sub"] == "integration@undertow-demo.example"
    assert claims["aud"] == "https://login.salesforce.com"
    assert 0 < claims["exp"] - time.time() <= 180


def test_config_says_which_credentials_each_flow_needs() -> None:
    with pytest.raises(ValidationError, match="auth: jwt needs username and private_key"):
        SalesforceConfig.model_validate({"type": "salesforce", "client_id": "x", "auth": "jwt"})
    with pytest.raises(ValidationError, match="auth: client_credentials needs client_secret"):
        SalesforceConfig.model_validate({"type": "salesforce", "client_id": "x"})


def test_an_api_version_the_org_does_not_serve_is_named(org: SalesforceFake) -> None:
    dest = destination(org, api_version="20.0")
    with pytest.raises(FatalDeliveryError, match=r"does not serve API version 20\.0"):
        go(dest, dest.check)
