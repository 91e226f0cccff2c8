"""The HubSpot fake and connector against the contract in ../shared/specs/hubspot/NOTES.md.

Each test names the NOTES.md fact it checks; ``test_notes_still_state_the_facts`` fails when
the contract changes under us, so the checks below are revisited.
"""

from __future__ import annotations

import asyncio
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from undertow.destinations.base import Batch, Operation
from undertow.destinations.hubspot import MAX_INPUTS, HubSpotConfig, HubSpotDestination
from undertow.testing.hubspot import HubSpotFake
from undertow.testing.server import serve_in_thread

pytestmark = pytest.mark.conformance

TOKEN = "pat-na1-conformance-0000-0000-000000000000"
SPECS = Path(os.environ.get("UNDERTOW_SPECS", Path(__file__).resolve().parents[3] / "shared/specs"))
NOTES = SPECS / "hubspot" / "NOTES.md"
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
BATCH_STATUSES = {"PENDING", "PROCESSING", "CANCELED", "COMPLETE"}
RATE_HEADERS = (
    "x-hubspot-ratelimit-max",
    "x-hubspot-ratelimit-remaining",
    "x-hubspot-ratelimit-interval-milliseconds",
)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


@pytest.fixture
def served() -> Iterator[tuple[HubSpotFake, str]]:
    fake = HubSpotFake(TOKEN, daily_limit=1000)
    with serve_in_thread(fake.app) as server:
        yield fake, server.url


def call(url: str, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> Answer:
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            status, headers = response.status, dict(response.headers.items())
    except urllib.error.HTTPError as error:
        with error:
            raw = error.read()
            status, headers = error.code, dict(error.headers.items())
    return Answer(
        status, {k.lower(): v for k, v in headers.items()}, orjson.loads(raw) if raw else None
    )


def upsert_inputs(*emails: str, trace: bool = True) -> dict[str, Any]:
    inputs = []
    for n, email in enumerate(emails):
        item: dict[str, Any] = {"idProperty": "email", "id": email, "properties": {"plan": "pro"}}
        if trace:
            item["objectWriteTraceId"] = str(n)
        inputs.append(item)
    return {"inputs": inputs}


def assert_batch_response(body: dict[str, Any]) -> None:
    """BatchResponseSimplePublicObject: status, results[], startedAt, completedAt."""
    assert body["status"] in BATCH_STATUSES
    assert ISO.match(body["startedAt"]) and ISO.match(body["completedAt"])
    for result in body["results"]:
        assert isinstance(result["id"], str)
        assert all(v is None or isinstance(v, str) for v in result["properties"].values())
        assert ISO.match(result["createdAt"]) and ISO.match(result["updatedAt"])
        assert result["archived"] is False


def test_notes_still_state_the_facts() -> None:
    if not NOTES.exists():
        pytest.fail(f"the HubSpot contract is missing: {NOTES} (set UNDERTOW_SPECS)", pytrace=False)
    notes = NOTES.read_text()
    for fact in (
        "inputs max 100 per request",
        "207 Multi-Status",
        "errors[] (category, message, context, errors[].{message,code,in,subCategory}), numErrors",
        "objectWriteTraceId on each input is echoed in errors",
        'result objects carry "new": true|false',
        '"errorType":"RATE_LIMIT"',
        '"policyName":"TEN_SECONDLY_ROLLING"|"DAILY"',
        "X-HubSpot-RateLimit-Max",
        "-Daily-Remaining (no Retry-After documented)",
        'private-app tokens use the same "Authorization: Bearer"',
        "POST /crm/v3/objects/{contacts|companies}/batch/archive  -> 204",
    ):
        assert fact in notes, f"NOTES.md no longer says {fact!r}: revisit this conformance test"


# -- responses the fake returns ------------------------------------------------------------


def test_upsert_answers_a_batch_response_with_new_flags(served: tuple[HubSpotFake, str]) -> None:
    _, url = served
    first = call(url, "POST", "/crm/v3/objects/contacts/batch/upsert", upsert_inputs("a@x.io"))
    again = call(
        url, "POST", "/crm/v3/objects/contacts/batch/upsert", upsert_inputs("a@x.io", "b@x.io")
    )
    assert (first.status, again.status) == (200, 200)
    assert_batch_response(first.body)
    assert [r["new"] for r in first.body["results"]] == [True]
    assert sorted((r["properties"]["email"], r["new"]) for r in again.body["results"]) == [
        ("a@x.io", False),
        ("b@x.io", True),
    ]
    assert "errors" not in again.body


@pytest.mark.parametrize("object_", ["contacts", "companies"])
def test_create_answers_201_and_update_200(served: tuple[HubSpotFake, str], object_: str) -> None:
    _, url = served
    created = call(
        url,
        "POST",
        f"/crm/v3/objects/{object_}/batch/create",
        {"inputs": [{"properties": {"name": "N"}}]},
    )
    assert created.status == 201
    assert_batch_response(created.body)
    object_id = created.body["results"][0]["id"]
    updated = call(
        url,
        "POST",
        f"/crm/v3/objects/{object_}/batch/update",
        {"inputs": [{"id": object_id, "properties": {"name": "M"}}]},
    )
    assert updated.status == 200
    assert_batch_response(updated.body)
    assert updated.body["results"][0]["properties"]["name"] == "M"


def test_partial_failure_is_207_with_documented_errors(served: tuple[HubSpotFake, str]) -> None:
    _, url = served
    answer = call(
        url,
        "POST",
        "/crm/v3/objects/contacts/batch/upsert",
        upsert_inputs("ok@x.io", "nope", "bad@"),
    )
    assert answer.status == 207
    body = answer.body
    assert_batch_response(body)
    assert body["numErrors"] == len(body["errors"]) == 2
    for error in body["errors"]:
        assert {"status", "category", "message", "context", "errors"} <= set(error)
        assert error["category"] == "VALIDATION_ERROR"
        assert all(
            isinstance(v, list) and all(isinstance(s, str) for s in v)
            for v in error["context"].values()
        )
        assert all({"message", "code", "in"} <= set(e) for e in error["errors"])
    traces = sorted(e["context"]["objectWriteTraceId"][0] for e in body["errors"])
    assert traces == ["1", "2"]
    assert [r["objectWriteTraceId"] for r in body["results"]] == ["0"]


def test_without_trace_ids_one_bad_record_fails_the_request(
    served: tuple[HubSpotFake, str],
) -> None:
    fake, url = served
    answer = call(
        url,
        "POST",
        "/crm/v3/objects/contacts/batch/upsert",
        upsert_inputs("ok@x.io", "nope", trace=False),
    )
    assert answer.status == 400
    assert answer.body["category"] == "VALIDATION_ERROR"
    assert fake.objects["contacts"] == {}


def test_update_of_unknown_id_is_object_not_found(served: tuple[HubSpotFake, str]) -> None:
    _, url = served
    body = {"inputs": [{"id": "999999", "properties": {"plan": "x"}, "objectWriteTraceId": "0"}]}
    answer = call(url, "POST", "/crm/v3/objects/contacts/batch/update", body)
    assert answer.status == 207
    assert answer.body["errors"][0]["category"] == "OBJECT_NOT_FOUND"
    assert answer.body["errors"][0]["context"]["ids"] == ["999999"]


def test_nested_property_values_are_refused_like_hubspot(served: tuple[HubSpotFake, str]) -> None:
    fake, url = served
    for value in ({"city": "Paris"}, ["a", "b"]):
        body = {"inputs": [{"properties": {"email": "a@x.io", "address": value}}]}
        answer = call(url, "POST", "/crm/v3/objects/contacts/batch/create", body)
        assert answer.status == 400
        assert "Cannot deserialize value of type `java.lang.String`" in answer.body["message"]
    assert fake.objects["contacts"] == {}


def test_inputs_are_limited_to_100(served: tuple[HubSpotFake, str]) -> None:
    _, url = served
    emails = [f"u{n}@x.io" for n in range(101)]
    ok = call(url, "POST", "/crm/v3/objects/contacts/batch/upsert", upsert_inputs(*emails[:100]))
    too_many = call(url, "POST", "/crm/v3/objects/contacts/batch/upsert", upsert_inputs(*emails))
    assert ok.status == 200 and len(ok.body["results"]) == 100
    assert too_many.status == 400
    assert too_many.body["category"] == "VALIDATION_ERROR"
    assert MAX_INPUTS == 100
    assert HubSpotDestination.capabilities.max_batch_size == 100


def test_archive_answers_204_whatever_the_state(served: tuple[HubSpotFake, str]) -> None:
    _, url = served
    answer = call(
        url, "POST", "/crm/v3/objects/contacts/batch/archive", {"inputs": [{"id": "424242"}]}
    )
    assert answer.status == 204
    assert answer.body is None


def test_every_answer_has_rate_headers_and_a_correlation_id(
    served: tuple[HubSpotFake, str],
) -> None:
    _, url = served
    answers = [
        call(url, "GET", "/crm/v3/objects/contacts?limit=1"),
        call(url, "POST", "/crm/v3/objects/contacts/batch/upsert", upsert_inputs("a@x.io")),
        call(url, "POST", "/crm/v3/objects/contacts/batch/archive", {"inputs": [{"id": "1"}]}),
    ]
    for answer in answers:
        assert answer.headers["x-hubspot-correlation-id"]
        for header in (
            *RATE_HEADERS,
            "x-hubspot-ratelimit-daily",
            "x-hubspot-ratelimit-daily-remaining",
        ):
            assert answer.headers[header].isdigit(), header
        assert "retry-after" not in answer.headers
    remaining = [int(a.headers["x-hubspot-ratelimit-remaining"]) for a in answers]
    assert remaining == sorted(remaining, reverse=True) and remaining[0] > remaining[-1]


def test_429_body_and_headers_follow_the_notes() -> None:
    fake = HubSpotFake(TOKEN, rate_limit_per_10s=1, daily_limit=2)
    with serve_in_thread(fake.app) as server:
        call(server.url, "GET", "/crm/v3/objects/contacts?limit=1")
        burst = call(server.url, "GET", "/crm/v3/objects/contacts?limit=1")
        fake.rate_limit_per_10s = 100
        call(server.url, "GET", "/crm/v3/objects/contacts?limit=1")
        daily = call(server.url, "GET", "/crm/v3/objects/contacts?limit=1")
    for answer, policy in ((burst, "TEN_SECONDLY_ROLLING"), (daily, "DAILY")):
        assert answer.status == 429
        assert answer.body["status"] == "error"
        assert answer.body["errorType"] == "RATE_LIMIT"
        assert answer.body["policyName"] == policy
        assert answer.body["message"] and answer.body["correlationId"]
        assert "retry-after" not in answer.headers
        assert all(h in answer.headers for h in RATE_HEADERS)
    assert burst.headers["x-hubspot-ratelimit-remaining"] == "0"
    assert daily.headers["x-hubspot-ratelimit-daily-remaining"] == "0"


def test_missing_or_wrong_token_is_401_invalid_authentication(
    served: tuple[HubSpotFake, str],
) -> None:
    _, url = served
    for token in (None, "wrong-token"):
        answer = call(
            url, "POST", "/crm/v3/objects/contacts/batch/upsert", upsert_inputs("a@x.io"), token
        )
        assert answer.status == 401
        assert answer.body["category"] == "INVALID_AUTHENTICATION"
        assert answer.body["status"] == "error" and answer.body["correlationId"]


# -- requests the connector sends ----------------------------------------------------------


def run_connector(
    url: str, operation: Operation, records: list[dict[str, Any]], match: str | None
) -> None:
    batch = Batch(
        sync="s",
        operation=operation,
        number=1,
        idempotency_key="k",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={match: [r[match] for r in records]} if match else {},
        object="contacts",
    )

    async def go() -> None:
        dest = HubSpotDestination(
            HubSpotConfig(type="hubspot", token=TOKEN, base_url=url), name="crm"
        )
        try:
            await dest.write_batch(batch)
        finally:
            await dest.close()

    asyncio.run(go())


def test_connector_requests_have_the_documented_fields(served: tuple[HubSpotFake, str]) -> None:
    fake, url = served
    people = [{"email": "a@x.io", "tags": ["x", "y"]}, {"email": "b@x.io", "vip": True}]
    run_connector(url, Operation.INSERT, [{"email": "c@x.io"}], None)
    run_connector(url, Operation.UPSERT, people, "email")
    run_connector(url, Operation.UPDATE, people, "email")
    run_connector(url, Operation.DELETE, people, "email")

    by_endpoint = {r.path.rsplit("/", 1)[-1]: r for r in fake.requests}
    assert set(by_endpoint) == {"create", "upsert", "update", "read", "archive"}
    assert all(
        r.authorized and r.headers["content-type"] == "application/json" for r in fake.requests
    )
    for endpoint in ("upsert", "update"):
        inputs = by_endpoint[endpoint].body["inputs"]
        assert [set(i) for i in inputs] == [
            {"idProperty", "id", "properties", "objectWriteTraceId"}
        ] * 2
        assert [i["objectWriteTraceId"] for i in inputs] == ["0", "1"]
        assert {i["idProperty"] for i in inputs} == {"email"}
        assert all(isinstance(v, str) for i in inputs for v in i["properties"].values())
    assert by_endpoint["upsert"].body["inputs"][0]["properties"]["tags"] == "x;y"
    create = by_endpoint["create"].body["inputs"]
    assert [set(i) for i in create] == [{"properties", "objectWriteTraceId"}]
    read = by_endpoint["read"].body
    assert read["idProperty"] == "email" and [i["id"] for i in read["inputs"]] == [
        "a@x.io",
        "b@x.io",
    ]
    archive = by_endpoint["archive"].body["inputs"]
    assert all(set(i) == {"id"} for i in archive) and len(archive) == 2
    assert len(fake.objects["contacts"]) == 1


# -- beyond NOTES.md: facts from HubSpot's reference pages (each test names its page) --------

PROPERTY_FIELDS = {"name", "label", "type", "fieldType", "groupName", "hasUniqueValue"}


def test_properties_answer_has_the_documented_fields(served: tuple[HubSpotFake, str]) -> None:
    """https://developers.hubspot.com/docs/api-reference/legacy/crm/properties/get-properties:
    ``{"results": [{name, label, type, fieldType, groupName, hasUniqueValue, hidden,
    modificationMetadata: {archivable, readOnlyDefinition, readOnlyValue}, ...}]}``."""
    _, url = served
    for object_ in ("contacts", "companies", "deals", "0-1"):
        answer = call(url, "GET", f"/crm/v3/properties/{object_}")
        assert answer.status == 200
        results = answer.body["results"]
        assert results and all(set(p) >= PROPERTY_FIELDS for p in results)
        meta = {p["name"]: p["modificationMetadata"] for p in results}
        assert all(
            {"archivable", "readOnlyDefinition", "readOnlyValue"} <= set(m) for m in meta.values()
        )
        assert meta["hs_object_id"]["readOnlyValue"] is True
    unique = {
        p["name"]
        for p in call(url, "GET", "/crm/v3/properties/contacts").body["results"]
        if p["hasUniqueValue"]
    }
    assert "email" in unique


def test_unknown_object_type_is_a_400_unable_to_infer(served: tuple[HubSpotFake, str]) -> None:
    """HubSpot answers a path's unknown object type with 400 "Unable to infer object type
    from: X" (HubSpot/hubspot-api-php#128 shows the answer to GET /crm/v3/objects/...)."""
    _, url = served
    for method, path in (
        ("GET", "/crm/v3/objects/widgets"),
        ("GET", "/crm/v3/properties/widgets"),
        ("POST", "/crm/v3/objects/widgets/batch/upsert"),
        ("POST", "/crm/v4/associations/deals/widgets/batch/associate/default"),
    ):
        answer = call(url, method, path, {"inputs": []} if method == "POST" else None)
        assert answer.status == 400, path
        assert answer.body["status"] == "error" and answer.body["correlationId"]
        assert answer.body["message"] == "Unable to infer object type from: widgets"


def test_schemas_name_custom_objects_by_fully_qualified_name_and_type_id(
    served: tuple[HubSpotFake, str],
) -> None:
    """https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/schemas/get-schema:
    ``objectTypeId`` ``2-<id>``, ``fullyQualifiedName`` ``p<portal>_<name>``, properties,
    requiredProperties; either name addresses the objects API."""
    fake, url = served
    kind = fake.add_custom_object("pets", ["species"], unique=("chip",), required=("chip",))
    (schema,) = call(url, "GET", "/crm/v3/schemas").body["results"]
    assert schema["objectTypeId"] == kind.type_id and schema["objectTypeId"].startswith("2-")
    assert re.match(r"^p\d+_pets$", schema["fullyQualifiedName"])
    assert schema["requiredProperties"] == ["chip"]
    assert {p["name"] for p in schema["properties"]} >= {"species", "chip"}
    body = {"inputs": [{"idProperty": "chip", "id": "C1", "properties": {"species": "cat"}}]}
    for name in (schema["fullyQualifiedName"], schema["objectTypeId"]):
        assert call(url, "POST", f"/crm/v3/objects/{name}/batch/upsert", body).status == 200
    assert len(fake.objects[schema["fullyQualifiedName"]]) == 1


def test_default_associations_answer_the_documented_batch_shape(
    served: tuple[HubSpotFake, str],
) -> None:
    """https://developers.hubspot.com/docs/api-reference/crm-associations-v4/batch/post-crm-v4-associations-fromObjectType-toObjectType-batch-associate-default:
    inputs ``{from: {id}, to: {id}}``; the answer has status, results[{associationSpec:
    {associationCategory, associationTypeId}, from, to}], startedAt, completedAt, and
    errors/numErrors for what it could not do."""
    fake, url = served
    call(url, "POST", "/crm/v3/objects/contacts/batch/upsert", upsert_inputs("a@x.io"))
    company = {"inputs": [{"idProperty": "domain", "id": "x.io", "properties": {"name": "X"}}]}
    call(url, "POST", "/crm/v3/objects/companies/batch/upsert", company)
    contact_id = fake.objects["contacts"].find("email", "a@x.io")
    company_id = fake.objects["companies"].find("domain", "x.io")
    inputs = [
        {"from": {"id": contact_id}, "to": {"id": company_id}},
        {"from": {"id": contact_id}, "to": {"id": "424242"}},
    ]
    path = "/crm/v4/associations/contacts/companies/batch/associate/default"
    answer = call(url, "POST", path, {"inputs": inputs})
    assert answer.status == 207
    assert answer.body["status"] in BATCH_STATUSES
    assert ISO.match(answer.body["startedAt"]) and ISO.match(answer.body["completedAt"])
    (result,) = answer.body["results"]
    assert set(result) == {"associationSpec", "from", "to"}
    assert result["associationSpec"]["associationCategory"] == "HUBSPOT_DEFINED"
    assert isinstance(result["associationSpec"]["associationTypeId"], int)
    (error,) = answer.body["errors"]
    assert answer.body["numErrors"] == 1
    assert {"status", "category", "message", "context"} <= set(error)
    assert error["context"]["ids"] == ["424242"]


def test_connector_association_requests_have_the_documented_fields(
    served: tuple[HubSpotFake, str],
) -> None:
    """Inputs of batch/associate/default are ``{from: {id}, to: {id}}``; those of batch/create
    add ``types: [{associationCategory, associationTypeId}]`` (associations v4 guide)."""
    fake, url = served
    call(url, "POST", "/crm/v3/objects/contacts/batch/upsert", upsert_inputs("a@x.io"))
    company = {"inputs": [{"idProperty": "domain", "id": "x.io", "properties": {"name": "X"}}]}
    call(url, "POST", "/crm/v3/objects/companies/batch/upsert", company)
    config = HubSpotConfig(
        type="hubspot",
        token=TOKEN,
        base_url=url,
        associations={
            "contacts": [
                {"to": "companies", "field": "firm", "id_property": "domain"},
                {"to": "companies", "field": "firm2", "id_property": "domain", "type": 279},
            ]
        },
    )
    batch = Batch(
        sync="s",
        operation=Operation.UPSERT,
        number=1,
        idempotency_key="k",
        keys=["1"],
        payloads=[orjson.dumps({"email": "a@x.io", "firm": "x.io", "firm2": "x.io"}).decode()],
        identifiers={"email": ["a@x.io"]},
        object="contacts",
    )

    async def go() -> None:
        dest = HubSpotDestination(config, name="crm")
        try:
            await dest.write_batch(batch)
        finally:
            await dest.close()

    asyncio.run(go())
    by_path = {r.path: r.body for r in fake.requests if "/crm/v4/" in r.path}
    default = by_path["/crm/v4/associations/contacts/companies/batch/associate/default"]
    labelled = by_path["/crm/v4/associations/contacts/companies/batch/create"]
    assert [set(i) for i in default["inputs"]] == [{"from", "to"}]
    assert [set(i) for i in labelled["inputs"]] == [{"from", "to", "types"}]
    assert labelled["inputs"][0]["types"] == [
        {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 279}
    ]
    assert all(isinstance(i["from"]["id"], str) for i in default["inputs"])
