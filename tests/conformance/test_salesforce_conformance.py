"""The Salesforce fake and connector against ../shared/specs/salesforce (NOTES.md + Postman items).

Each test names the NOTES.md fact it checks; ``test_notes_still_state_the_facts`` fails when
the contract changes under us, so the checks below are revisited. The Postman request items
(Salesforce's own, CC0) are replayed against the fake: every one is routed as Salesforce
routes it.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from undertow.destinations import retry
from undertow.destinations.base import Batch, Operation
from undertow.destinations.retry import RetryPolicy
from undertow.destinations.salesforce import SalesforceConfig, SalesforceDestination
from undertow.testing.salesforce import DEMO_CLIENT_ID, SalesforceFake

pytestmark = pytest.mark.conformance

SECRET = "conformance-secret-0000"
SPECS = Path(os.environ.get("UNDERTOW_SPECS", Path(__file__).resolve().parents[3] / "shared/specs"))
NOTES = SPECS / "salesforce" / "NOTES.md"
POSTMAN = SPECS / "salesforce" / "salesforce-postman-items.json"
V = "/services/data/v62.0"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any
    raw: bytes


@dataclass
class Org:
    fake: SalesforceFake
    url: str
    token: str

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        token: str | None = "",
    ) -> Answer:
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", content_type)
        bearer = self.token if token == "" else token
        if bearer:
            request.add_header("Authorization", f"Bearer {bearer}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                payload, status = response.read(), response.status
                headers = dict(response.headers.items())
        except urllib.error.HTTPError as error:
            with error:
                payload, status, headers = error.read(), error.code, dict(error.headers.items())
        parsed: Any = None
        if payload and headers.get("content-type", "").startswith("application/json"):
            parsed = orjson.loads(payload)
        return Answer(status, {k.lower(): v for k, v in headers.items()}, parsed, payload)


def login(url: str) -> str:
    form = urllib.parse.urlencode(
        {"grant_type": "client_credentials", "client_id": DEMO_CLIENT_ID, "client_secret": SECRET}
    ).encode()
    request = urllib.request.Request(url + "/services/oauth2/token", data=form, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["access_token"])


@pytest.fixture
def org() -> Iterator[Org]:
    fake = SalesforceFake(SECRET, job_seconds=0.05)
    with fake.serve() as url:
        yield Org(fake, url, login(url))


def contact(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "attributes": {"type": "Contact"},
        "Customer_Id__c": f"c-{n}",
        "LastName": f"L{n}",
        **extra,
    }


def wait_for(org: Org, job: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        info = org.call("GET", f"{V}/jobs/ingest/{job}").body
        if info["state"] in ("JobComplete", "Failed", "Aborted") or time.monotonic() > deadline:
            return dict(info)
        time.sleep(0.02)


def test_notes_still_state_the_facts() -> None:
    if not NOTES.exists():
        pytest.fail(
            f"the Salesforce contract is missing: {NOTES} (set UNDERTOW_SPECS)", pytrace=False
        )
    notes = NOTES.read_text()
    for fact in (
        "`Authorization: Bearer <access token>` (OAuth 2.0)",
        '| create | `POST /sobjects/{SObject}` | 201 `{"id","success":true,"errors":[]}` |',
        "| update | `PATCH /sobjects/{SObject}/{Id}` | 204 |",
        "| upsert | `PATCH /sobjects/{SObject}/{ExtIdField}/{value}` | 201 created / 200 updated",
        "| delete | `DELETE /sobjects/{SObject}/{Id}` | 204 |",
        'Errors: JSON **array** `[{"message","errorCode","fields":[...]}]`',
        "upsert on an ambiguous external id → 300 with the matching record URLs",
        "`PATCH /composite/sobjects/{SObject}/{ExtIdField}` (API ≥ 46)",
        "`DELETE /composite/sobjects?ids=a,b&allOrNone=false`",
        "**≤ 200 records**",
        "Response 200 with one result per record, same order",
        "400 only if the request is malformed. `allOrNone=true` rolls back all.",
        "`PUT /jobs/ingest/{id}/batches` `Content-Type: text/csv` → 201 (no body)",
        '`PATCH /jobs/ingest/{id}` `{"state":"UploadComplete"}` (or `"Aborted"`)',
        "until `state` ∈ `JobComplete|Failed|Aborted`",
        "`/successfulResults` (`sf__Id, sf__Created, …`), `/failedResults`",
        "No per-second limit and **no 429**",
        '`[{"errorCode":"REQUEST_LIMIT_EXCEEDED","message":"TotalRequests Limit exceeded."}]`',
        "`Sforce-Limit-Info: api-usage=18/15000`",
        "`GET /limits` returns all allocations",
        "Bulk jobs are not deduplicated: re-submitting creates a new job.",
    ):
        assert fact in notes, f"NOTES.md no longer says {fact!r}: revisit this conformance test"


# -- auth / base -----------------------------------------------------------------------------


def test_rest_calls_need_the_bearer_access_token(org: Org) -> None:
    """Fact: `Authorization: Bearer <access token>`; base .../services/data/vNN.0/."""
    assert org.call("GET", f"{V}/limits").status == 200
    refused = org.call("GET", f"{V}/limits", token="not-a-session")
    assert refused.status == 401
    assert refused.body == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    ]
    assert org.call("GET", f"{V}/limits", token=None).status == 401


# -- sObject REST (single record) ------------------------------------------------------------


def test_single_record_create_update_upsert_delete_answer_as_documented(org: Org) -> None:
    """Facts: create 201 {id,success,errors}; update 204; upsert 201/200 with created; delete 204."""
    created = org.call("POST", f"{V}/sobjects/Contact", {"LastName": "Ada"})
    assert created.status == 201
    assert set(created.body) == {"id", "success", "errors"} and created.body["success"] is True
    object_id = created.body["id"]
    assert org.call("PATCH", f"{V}/sobjects/Contact/{object_id}", {"Title": "CTO"}).status == 204
    first = org.call("PATCH", f"{V}/sobjects/Contact/Customer_Id__c/c-9", {"LastName": "Nine"})
    assert first.status == 201 and first.body["created"] is True
    again = org.call("PATCH", f"{V}/sobjects/Contact/Customer_Id__c/c-9", {"Title": "x"})
    assert again.status == 200 and again.body["created"] is False
    assert set(again.body) == {"id", "success", "errors", "created"}
    assert org.call("DELETE", f"{V}/sobjects/Contact/{object_id}").status == 204


def test_errors_are_a_json_array_of_message_errorcode_fields(org: Org) -> None:
    """Fact: errors are `[{"message","errorCode","fields"}]` (REQUIRED_FIELD_MISSING, ...)."""
    missing = org.call("POST", f"{V}/sobjects/Contact", {"Email": "a@x.io"})
    assert missing.status == 400
    assert missing.body == [
        {
            "message": "Required fields are missing: [LastName]",
            "errorCode": "REQUIRED_FIELD_MISSING",
            "fields": ["LastName"],
        }
    ]
    org.call("POST", f"{V}/sobjects/Contact", {"LastName": "A", "Customer_Id__c": "dup"})
    duplicate = org.call(
        "POST", f"{V}/sobjects/Contact", {"LastName": "B", "Customer_Id__c": "dup"}
    )
    assert duplicate.body[0]["errorCode"] == "DUPLICATE_VALUE"
    unknown = org.call("POST", f"{V}/sobjects/Contact", {"LastName": "C", "Nope__c": 1})
    assert unknown.body[0]["errorCode"] == "INVALID_FIELD"


def test_upsert_on_an_ambiguous_external_id_answers_300_with_the_record_urls(org: Org) -> None:
    """Fact: an upsert matching several records answers 300 listing their URLs."""
    org.call("POST", f"{V}/sobjects/Lead", {"LastName": "A", "Company": "X", "Legacy_Key__c": "k"})
    org.call("POST", f"{V}/sobjects/Lead", {"LastName": "B", "Company": "Y", "Legacy_Key__c": "k"})
    answer = org.call("PATCH", f"{V}/sobjects/Lead/Legacy_Key__c/k", {"LastName": "C"})
    assert answer.status == 300
    assert len(answer.body) == 2 and all("/sobjects/Lead/" in url for url in answer.body)


# -- sObject Collections ---------------------------------------------------------------------


def test_collections_answer_one_result_per_record_in_the_order_sent(org: Org) -> None:
    """Facts: 200, one result per record, same order; per-record {statusCode,message,fields}."""
    body = {"allOrNone": False, "records": [contact(1), contact(2, Email="bad"), contact(3)]}
    answer = org.call("PATCH", f"{V}/composite/sobjects/Contact/Customer_Id__c", body)
    assert answer.status == 200
    assert [r["success"] for r in answer.body] == [True, False, True]
    assert answer.body[0]["created"] is True and answer.body[0]["errors"] == []
    assert set(answer.body[1]["errors"][0]) == {"statusCode", "message", "fields"}
    assert answer.body[1]["errors"][0]["statusCode"] == "INVALID_EMAIL_ADDRESS"


def test_collections_create_update_delete_endpoints(org: Org) -> None:
    """Facts: create POST, update PATCH /composite/sobjects, delete DELETE ?ids&allOrNone."""
    created = org.call("POST", f"{V}/composite/sobjects", {"records": [contact(1), contact(2)]})
    ids = [r["id"] for r in created.body]
    update = [{"attributes": {"type": "Contact"}, "Id": ids[0], "Title": "VP"}]
    assert org.call("PATCH", f"{V}/composite/sobjects", {"records": update}).body[0]["success"]
    gone = org.call("DELETE", f"{V}/composite/sobjects?ids={','.join(ids)}&allOrNone=false")
    assert [r["success"] for r in gone.body] == [True, True]
    assert org.fake.records("Contact") == {}


def test_collections_take_at_most_200_records(org: Org) -> None:
    """Fact: ≤ 200 records per request."""
    records = [contact(n) for n in range(201)]
    answer = org.call("POST", f"{V}/composite/sobjects", {"records": records})
    assert answer.status == 400 and answer.body[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    assert org.call("POST", f"{V}/composite/sobjects", {"records": records[:200]}).status == 200


def test_collections_upsert_needs_api_46(org: Org) -> None:
    """Fact: upsert through sObject Collections exists from API version 46."""
    old = "/services/data/v45.0/composite/sobjects/Contact/Customer_Id__c"
    assert org.call("PATCH", old, {"records": [contact(1)]}).status == 404
    new = "/services/data/v46.0/composite/sobjects/Contact/Customer_Id__c"
    assert org.call("PATCH", new, {"records": [contact(1)]}).status == 200


def test_collections_upsert_takes_one_type_and_only_external_ids(org: Org) -> None:
    """Fact: upsert: one sObject type per call, external id only (no record ids)."""
    account = {"attributes": {"type": "Account"}, "Customer_Id__c": "x", "Name": "A"}
    answer = org.call(
        "PATCH", f"{V}/composite/sobjects/Contact/Customer_Id__c", {"records": [account]}
    )
    assert answer.body[0]["success"] is False
    by_id = org.call("PATCH", f"{V}/composite/sobjects/Contact/LastName", {"records": [contact(1)]})
    assert by_id.status == 400 and "not an External ID" in by_id.body[0]["message"]


def test_a_malformed_collection_is_a_400_and_writes_nothing(org: Org) -> None:
    """Fact: 400 only if the request is malformed (a value that cannot be read)."""
    body = {"records": [contact(1), contact(2, Seats__c="lots")]}
    answer = org.call("PATCH", f"{V}/composite/sobjects/Contact/Customer_Id__c", body)
    assert answer.status == 400 and answer.body[0]["errorCode"] == "JSON_PARSER_ERROR"
    assert org.fake.records("Contact") == {}


def test_all_or_none_rolls_every_record_back(org: Org) -> None:
    """Fact: `allOrNone=true` rolls back all."""
    body = {"allOrNone": True, "records": [contact(1), contact(2, Email="bad")]}
    answer = org.call(
        "POST",
        f"{V}/composite/sobjects",
        {
            **body,
            "records": [
                {k: v for k, v in r.items() if k != "Customer_Id__c"} for r in body["records"]
            ],
        },
    )
    assert [r["success"] for r in answer.body] == [False, False]
    assert answer.body[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert org.fake.records("Contact") == {}


# -- Bulk API 2.0 ----------------------------------------------------------------------------


def test_a_bulk_job_runs_open_upload_close_poll_results(org: Org) -> None:
    """Facts: create → Open + contentUrl; PUT text/csv → 201 no body; UploadComplete; poll until
    JobComplete with numberRecordsProcessed/Failed; successfulResults (sf__Id, sf__Created, …),
    failedResults (sf__Id, sf__Error, original columns)."""
    spec = {
        "object": "Contact",
        "operation": "upsert",
        "externalIdFieldName": "Customer_Id__c",
        "contentType": "CSV",
        "lineEnding": "LF",
        "columnDelimiter": "COMMA",
    }
    job = org.call("POST", f"{V}/jobs/ingest", spec).body
    assert job["state"] == "Open"
    assert job["contentUrl"] == f"services/data/v62.0/jobs/ingest/{job['id']}/batches"
    data = b"Customer_Id__c,LastName,Email\nc-1,One,a@x.io\nc-2,,b@x.io\n"
    upload = org.call(
        "PUT", f"{V}/jobs/ingest/{job['id']}/batches", raw=data, content_type="text/csv"
    )
    assert upload.status == 201 and upload.raw == b""
    closed = org.call("PATCH", f"{V}/jobs/ingest/{job['id']}", {"state": "UploadComplete"})
    assert closed.status == 200 and closed.body["state"] == "UploadComplete"
    info = wait_for(org, job["id"])
    assert info["state"] == "JobComplete"
    assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (2, 1)
    ok = list(
        csv.reader(
            io.StringIO(
                org.call("GET", f"{V}/jobs/ingest/{job['id']}/successfulResults").raw.decode()
            )
        )
    )
    assert ok[0] == ["sf__Id", "sf__Created", "Customer_Id__c", "LastName", "Email"]
    assert ok[1][1:] == ["true", "c-1", "One", "a@x.io"]
    failed = list(
        csv.reader(
            io.StringIO(org.call("GET", f"{V}/jobs/ingest/{job['id']}/failedResults").raw.decode())
        )
    )
    assert failed[0][:2] == ["sf__Id", "sf__Error"] and failed[1][2:] == ["c-2", "", "b@x.io"]
    assert failed[1][1].startswith("REQUIRED_FIELD_MISSING:")
    unprocessed = org.call("GET", f"{V}/jobs/ingest/{job['id']}/unprocessedrecords")
    assert unprocessed.status == 200


def test_an_aborted_bulk_job_leaves_its_records_unprocessed(org: Org) -> None:
    """Fact: `PATCH {"state":"Aborted"}`; /unprocessedrecords lists what was not processed."""
    job = org.call("POST", f"{V}/jobs/ingest", {"object": "Contact", "operation": "insert"}).body
    org.call(
        "PUT",
        f"{V}/jobs/ingest/{job['id']}/batches",
        raw=b"LastName\nA\nB\n",
        content_type="text/csv",
    )
    assert (
        org.call("PATCH", f"{V}/jobs/ingest/{job['id']}", {"state": "Aborted"}).body["state"]
        == "Aborted"
    )
    rows = org.call("GET", f"{V}/jobs/ingest/{job['id']}/unprocessedrecords").raw.decode().split()
    assert rows == ['"LastName"', '"A"', '"B"']
    assert org.fake.records("Contact") == {}


def test_bulk_jobs_are_not_deduplicated(org: Org) -> None:
    """Fact: re-submitting creates a new job (an insert job submitted twice inserts twice)."""
    for _ in range(2):
        job = org.call(
            "POST", f"{V}/jobs/ingest", {"object": "Contact", "operation": "insert"}
        ).body
        org.call(
            "PUT",
            f"{V}/jobs/ingest/{job['id']}/batches",
            raw=b"LastName\nSame\n",
            content_type="text/csv",
        )
        org.call("PATCH", f"{V}/jobs/ingest/{job['id']}", {"state": "UploadComplete"})
        wait_for(org, job["id"])
    assert len(org.fake.jobs.jobs) == 2
    assert [r["LastName"] for r in org.fake.records("Contact").values()] == ["Same", "Same"]


# -- rate limits -----------------------------------------------------------------------------


def test_the_daily_allocation_answers_403_request_limit_exceeded_never_429(org: Org) -> None:
    """Facts: no per-second limit, no 429; over the allocation → 403 REQUEST_LIMIT_EXCEEDED."""
    org.fake.windows[0].limit = 3
    statuses = [org.call("GET", f"{V}/limits").status for _ in range(5)]
    assert statuses == [200, 200, 200, 403, 403]
    answer = org.call("GET", f"{V}/limits")
    assert answer.body == [
        {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
    ]


def test_every_answer_carries_sforce_limit_info_and_limits_lists_the_allocation(org: Org) -> None:
    """Facts: `Sforce-Limit-Info: api-usage=N/M` on every response; `GET /limits`."""
    first = org.call("GET", f"{V}/limits")
    used, limit = first.headers["sforce-limit-info"].removeprefix("api-usage=").split("/")
    assert int(limit) == org.fake.daily_limit and int(used) >= 1
    assert first.body["DailyApiRequests"]["Max"] == org.fake.daily_limit
    second = org.call("GET", f"{V}/sobjects/Contact/describe")
    assert second.headers["sforce-limit-info"] == f"api-usage={int(used) + 1}/{limit}"


def test_the_concurrent_request_cap_is_also_request_limit_exceeded(org: Org) -> None:
    """Fact: the concurrent long-running request cap also answers REQUEST_LIMIT_EXCEEDED."""
    org.fake.throttle_next()
    answer = org.call("GET", f"{V}/limits")
    assert answer.status == 403 and answer.body[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert "ConcurrentRequests" in answer.body[0]["message"]


# -- the connector's requests ----------------------------------------------------------------


def connector_batch(n: int, operation: Operation = Operation.UPSERT) -> Batch:
    records = [{"Customer_Id__c": f"c-{i}", "LastName": f"L{i}"} for i in range(n)]
    return Batch(
        sync="s",
        operation=operation,
        number=0,
        idempotency_key="k",
        keys=[str(i) for i in range(n)],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={"Customer_Id__c": [r["Customer_Id__c"] for r in records]},
        object="Contact",
    )


def run_connector(org: Org, batch: Batch, **config: Any) -> None:
    values = {
        "type": "salesforce",
        "base_url": org.url,
        "client_id": DEMO_CLIENT_ID,
        "client_secret": SECRET,
        **config,
    }
    dest = SalesforceDestination(SalesforceConfig.model_validate(values), name="crm")

    async def main() -> None:
        try:
            with retry.delivery(policy=RetryPolicy(), stop=None, max_wait=30):
                await dest.write_batch(batch)
        finally:
            await dest.close()

    asyncio.run(main())


def test_the_connector_sends_collections_as_documented(org: Org) -> None:
    """Facts: ≤ 200 records, attributes.type on each, upsert on the ExtIdField path, allOrNone."""
    run_connector(org, connector_batch(450), bulk_threshold=None)
    sent = [r for r in org.fake.requests if "/composite/sobjects" in r.path]
    assert [len(r.body["records"]) for r in sent] == [200, 200, 50]
    for request in sent:
        assert request.method == "PATCH"
        assert request.path == f"{V}/composite/sobjects/Contact/Customer_Id__c"
        assert request.body["allOrNone"] is False
        assert all(rec["attributes"] == {"type": "Contact"} for rec in request.body["records"])
    assert len(org.fake.records("Contact")) == 450


def test_the_connector_runs_bulk_jobs_as_documented(org: Org) -> None:
    """Facts: the job lifecycle (create CSV job, PUT text/csv, UploadComplete, poll, results)."""
    run_connector(org, connector_batch(30), bulk_threshold=10, bulk_poll_seconds=0.02)
    methods = [(r.method, r.path.removeprefix(V)) for r in org.fake.requests if "/jobs/" in r.path]
    job = next(iter(org.fake.jobs.jobs))
    assert methods[:3] == [
        ("POST", "/jobs/ingest"),
        ("PUT", f"/jobs/ingest/{job}/batches"),
        ("PATCH", f"/jobs/ingest/{job}"),
    ]
    assert ("GET", f"/jobs/ingest/{job}/successfulResults") in methods
    assert ("GET", f"/jobs/ingest/{job}/failedResults") in methods
    create = next(r for r in org.fake.requests if r.path.endswith("/jobs/ingest"))
    assert create.body == {
        "object": "Contact",
        "operation": "upsert",
        "contentType": "CSV",
        "lineEnding": "LF",
        "columnDelimiter": "COMMA",
        "externalIdFieldName": "Customer_Id__c",
    }
    upload = next(r for r in org.fake.requests if r.method == "PUT")
    assert upload.headers["content-type"] == "text/csv"
    assert len(org.fake.records("Contact")) == 30


# -- the Postman items -----------------------------------------------------------------------


def test_every_postman_request_item_is_routed_as_salesforce_routes_it(org: Org) -> None:
    """Salesforce's Postman items (Bulk 2.0, Collections, sObject REST): each method + path
    reaches a handler of the fake (no 404 for an unknown route, no 405). ``/composite``
    (subrequests with ``@{ref}`` references) is not modelled by the fake: said in the docs."""
    items = json.loads(POSTMAN.read_text())["items"]
    created = org.call("POST", f"{V}/sobjects/Contact", {"LastName": "Postman"}).body["id"]
    job = org.call("POST", f"{V}/jobs/ingest", {"object": "Contact", "operation": "insert"}).body[
        "id"
    ]
    fill = {
        "{{_endpoint}}": "",
        "{{version}}": "62.0",
        "{{_jobId}}": job,
        "<SOBJECT_API_NAME>": "Contact",
        "<RECORD_ID>": created,
        "<FIELD_NAME>": "Customer_Id__c",
        "<FIELD_VALUE>": "pm-1",
    }
    routed = []
    for name, item in items.items():
        if name == "composite/composite.json":
            continue
        path = str(item["url"])
        for key, value in fill.items():
            path = path.replace(key, value)
        path = path.split("?")[0] + ("?ids=" + created if "?ids" in path else "")
        answer = org.call(str(item["method"]), path)
        # the server's own answers when no route matches (Salesforce's 404s are JSON arrays)
        not_routed = answer.status == 405 or (answer.status == 404 and answer.raw == b"Not Found")
        assert not not_routed, f"{name}: {item['method']} {path} -> {answer.status}"
        routed.append(name)
    assert len(routed) == len(items) - 1
