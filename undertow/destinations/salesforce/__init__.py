"""Salesforce: any sObject (custom ones included), through sObject Collections or Bulk API 2.0.

How a batch maps to Salesforce (``docs/destinations/salesforce.md`` has the user's view)::

    upsert  PATCH  /composite/sobjects/{object}/{ExtId}   200 per request   match: {ExtId__c: col}
    insert  POST   /composite/sobjects                    200 per request   no match
    update  PATCH  /composite/sobjects                    by Id; an external ID is looked up
    delete  DELETE /composite/sobjects?ids=...            by Id; an external ID is looked up

A batch of at least ``bulk_threshold`` records (2,000 by default, Salesforce's own advice)
goes as one Bulk API 2.0 ingest job instead (:mod:`.bulk`); smaller ones as sObject
Collections requests of up to 200 records, ``max_concurrency`` at a time. Deletes always
use Collections (they need record ids, looked up 200 at a time with SOQL anyway).

Auth (:mod:`.auth`): OAuth 2.0 client credentials, JWT bearer or refresh token; the REST API
is then reached at the ``instance_url`` the login returns. Slow-down: Salesforce has no
per-second limit and no 429; ``403 REQUEST_LIMIT_EXCEEDED`` means either the org's rolling
24-hour API allocation is spent (the run stops: no wait within a run helps) or too many
long-running requests are in flight (retried with backoff, the whole account paused).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from undertow.destinations import retry
from undertow.destinations._http import Response, dry_run_active
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    DemoProfile,
    Job,
    MatchRule,
    Operation,
)
from undertow.destinations.kit import (
    Auth,
    Call,
    Endpoint,
    HttpDestination,
    Item,
    Reject,
    SlowDown,
    parse_json,
)
from undertow.destinations.rate import Interrupted, pause
from undertow.destinations.salesforce import bulk
from undertow.destinations.salesforce.auth import SalesforceAuth
from undertow.destinations.salesforce.config import (
    ALLOCATIONS_DOC,
    BULK_CHOICE_DOC,
    BULK_JOB_RECORDS,
    BULK_LIMITS_DOC,
    BULK_UPLOAD_BYTES,
    COLLECTIONS_DOC,
    CONCURRENT_LONG_REQUESTS,
    SalesforceConfig,
)
from undertow.destinations.salesforce.describe import Describe, sync_problems, unknown_object
from undertow.destinations.salesforce.records import (
    NUMERIC,
    as_field_types,
    lookup,
    norm,
    read_collection,
    read_deletes,
    shape_fields,
)
from undertow.errors import (
    FatalDeliveryError,
    InterruptedDelivery,
    RejectedBatchError,
    UndertowError,
)

__all__ = ["SalesforceConfig", "SalesforceDestination"]

TOKEN_HINT = (
    "check the connected app's credentials (client_id, and client_secret, private_key or "
    "refresh_token for the chosen auth) and that its user has API access (API Enabled)"
)


def _total_requests(response: Response, body: Any) -> bool:
    return any("TotalRequests" in str(e.get("message", "")) for e in _errors(body))


def _errors(body: Any) -> list[dict[str, Any]]:
    return [e for e in body if isinstance(e, dict)] if isinstance(body, list) else []


SIGNALS = (
    SlowDown(
        name="the org's API request allocation for the last 24 hours is used up "
        "(REQUEST_LIMIT_EXCEEDED)",
        statuses=frozenset({403}),
        code_path="[*].errorCode",
        codes=frozenset({"REQUEST_LIMIT_EXCEEDED"}),
        when=_total_requests,
        fatal=True,
        hint="Salesforce counts API requests over a rolling 24 hours (Setup > System "
        "Overview > API Requests, Last 24 Hours); run the sync again when the org has room, "
        "or raise the org's allocation",
    ),
    SlowDown(
        name="too many concurrent long-running requests (REQUEST_LIMIT_EXCEEDED)",
        statuses=frozenset({403}),
        code_path="[*].errorCode",
        codes=frozenset({"REQUEST_LIMIT_EXCEEDED"}),
    ),
)


def collection_body(call: Call) -> Any:
    return {"allOrNone": False, "records": call.bodies}


class SalesforceDestination(HttpDestination[SalesforceConfig]):
    """Any sObject of a Salesforce org, written by a connected app."""

    name = "salesforce"
    vendor = "Salesforce"
    objects = None
    any_object = True
    fake = "undertow.testing.salesforce:SalesforceFake"
    docs_url = COLLECTIONS_DOC
    capabilities = Capabilities(
        operations=frozenset(
            {Operation.UPSERT, Operation.INSERT, Operation.UPDATE, Operation.DELETE}
        ),
        max_batch_size=BULK_JOB_RECORDS,
        max_concurrency=4,
        max_in_flight=CONCURRENT_LONG_REQUESTS,
        per_record_results=True,
        match=MatchRule.exactly_one(example="match: {Customer_Id__c: customer_id}"),
        match_operations=frozenset({Operation.UPSERT, Operation.UPDATE, Operation.DELETE}),
        bisect=True,
        docs=(COLLECTIONS_DOC, BULK_LIMITS_DOC, BULK_CHOICE_DOC, ALLOCATIONS_DOC),
        cite={
            "max_batch_size": BULK_CHOICE_DOC,
            "max_in_flight": ALLOCATIONS_DOC,
            "records_per_request": COLLECTIONS_DOC,
        },
    )
    signals = SIGNALS
    check_path = "/limits"
    auth_hint = TOKEN_HINT
    demo = DemoProfile(
        destination="""\
type: salesforce
base_url: ${FAKE_URL}          # your My Domain login URL
client_id: 3MVG9undertow.demo.connected.app
client_secret: ${FAKE_TOKEN}""",
        sync="""\
object: Contact
mode: upsert
match: {Customer_Id__c: customer_id}
mappings:
  Email: email
  FirstName: first_name
  LastName: last_name
  Plan__c: plan
  Seats__c: seats
  MRR__c: mrr
  MailingCountry: country
  Signup_Date__c: signup_date
  Greeting__c:
    template: "Hi {{ first_name }}, thanks for choosing {{ plan | title }}!"
  Recently_Viewed__c: recently_viewed   # a list: a multi-select picklist a;b;c""",
    )

    auth: SalesforceAuth
    async_jobs = True

    def __init__(self, config: Any, *, name: str) -> None:
        super().__init__(config, name=name)
        self._described: dict[str, Describe | None] = {}
        self.poll_interval = self.config.bulk_poll_seconds

    def make_auth(self) -> Auth:
        return SalesforceAuth(self.config, self.instance_name)

    def capabilities_for(self, object: str | None) -> Capabilities:
        config = self.config
        size = config.bulk_batch_size if config.bulk_enabled else config.batch_size
        return replace(
            self.capabilities, max_batch_size=size, max_concurrency=config.max_concurrency
        )

    async def send(self, method: str, path: str, **kwargs: Any) -> Response:
        await self.auth.ensure(self.http)
        return await super().send(method, path, **kwargs)

    async def check(self) -> None:
        response = await self.send("GET", self.check_path or "/limits", expect=frozenset({200}))
        if response.status == 404:
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} (salesforce): the org does not serve API "
                f"version {self.config.api_version}: {response.describe()}",
                hint="set `api_version:` to one the org lists at /services/data/ (e.g. 62.0)",
            )
        if response.status != 200:
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} (salesforce): unexpected answer to the "
                f"check: {response.describe()}",
                hint="check base_url: your My Domain URL, login.salesforce.com or "
                "test.salesforce.com",
            )

    # -- metadata ----------------------------------------------------------------------------

    async def get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        response = await self.send("GET", path, params=params, expect=frozenset({200}))
        body = parse_json(response)
        if response.status != 200 or body is None:
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} (salesforce): GET {path.split('?')[0]} "
                f"failed: {response.describe()}",
                hint="check the integration user's permissions on the object",
            )
        return body

    async def describe(self, sobject: str) -> Describe | None:
        """The object's describe (cached per destination); None when the org has no such one."""
        if sobject not in self._described:
            path = f"/sobjects/{quote(sobject)}/describe"
            response = await self.send("GET", path, expect=frozenset({200}))
            body = parse_json(response)
            if response.status == 404:
                self._described[sobject] = None
            elif response.status != 200 or not isinstance(body, dict):
                raise FatalDeliveryError(
                    f"destination {self.instance_name!r} (salesforce): cannot describe "
                    f"{sobject}: {response.describe()}",
                    hint="the integration user needs read access to the object's metadata",
                )
            else:
                self._described[sobject] = Describe.from_json(body)
        return self._described[sobject]

    async def _describe_quietly(self, sobject: str) -> None:
        """Describe the object once so values go as its field types want (a failure to
        describe is no failure to write: the values then go as mapped). A dry run, which
        sends nothing, does not describe: it shows the values as mapped."""
        if sobject in self._described or dry_run_active():
            return
        try:
            await self.describe(sobject)
        except FatalDeliveryError:
            self._described[sobject] = None

    async def validate_sync(
        self,
        *,
        sync: str,
        object: str | None,
        match: dict[str, str] | Any,
        fields: list[str],
        operations: frozenset[Operation] = frozenset(),
    ) -> list[str]:
        if not object:
            return [f"sync {sync!r}: set `object:` to an sObject API name, e.g. Contact"]
        described = await self.describe(object)
        if described is None:
            body = await self.get_json("/sobjects")
            names = [str(o.get("name")) for o in body.get("sobjects", []) if isinstance(o, dict)]
            return [unknown_object(sync, object, names)]
        ops = operations or frozenset({Operation.UPSERT})
        return sync_problems(described, sync=sync, match=match, fields=fields, operations=ops)

    # -- records -----------------------------------------------------------------------------

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        fields = shape_fields(record)
        if isinstance(fields, Reject):
            return fields
        body: dict[str, Any] = {"attributes": {"type": batch.object}, **fields}
        match = next(iter(batch.identifiers), None)
        if batch.operation is Operation.UPSERT and match:
            body[match] = key
        elif batch.operation is Operation.UPDATE and match == "Id":
            body["Id"] = key
        described = self._described.get(str(batch.object))
        return as_field_types(body, described) if described else body

    def preview(self, batch: Batch) -> list[Any]:
        result = BatchResult()
        bodies = {i.index: i.body for i in self.items(batch, self.match_field(batch), result)}
        return [bodies.get(n, {"rejected": result.rejected.get(n)}) for n in range(len(batch))]

    async def write_batch(self, batch: Batch) -> BatchResult:
        """Outside the pipeline (which submits and polls itself): submit, then wait."""
        submitted = await self.submit_batch(batch)
        if isinstance(submitted, BatchResult):
            return submitted
        ctx = retry.current()
        while (result := await self.poll_job(submitted, batch)) is None:
            try:
                await pause(self.poll_interval, ctx.stop)
            except Interrupted:
                raise InterruptedDelivery(
                    f"destination {self.instance_name!r}: stopped while Bulk API job "
                    f"{submitted.id} runs",
                    hint="the next run polls the same job",
                ) from None
        return result

    async def _prepare(self, batch: Batch) -> tuple[str | None, BatchResult, list[Item]]:
        """The batch's match field, its records refused before sending, and the rest."""
        if not batch.object:
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: destination {self.instance_name!r} (salesforce) needs "
                "`object:` (an sObject API name such as Contact or Subscription__c)"
            )
        match = self.match_field(batch)
        if batch.operation is not Operation.DELETE:
            await self._describe_quietly(str(batch.object))  # values as the field types want
        result = BatchResult()
        return match, result, self.items(batch, match, result)

    async def submit_batch(self, batch: Batch) -> Job | BatchResult:
        """A Bulk API 2.0 job for a batch of ``bulk_threshold`` records or more (the pipeline
        records it, then polls :meth:`poll_job`); smaller batches and deletes are written
        through sObject Collections and answered at once."""
        match, result, items = await self._prepare(batch)
        if not items:
            return result
        if batch.operation is Operation.DELETE:
            await self._delete(batch, match, items, result)
            return result
        ids: dict[int, str] = {}
        if batch.operation is Operation.UPDATE and match and match != "Id":
            items = await self._with_ids(batch, match, items, result)
            ids = {i.index: str(i.body["Id"]) for i in items}
        upload, numeric = self._upload(batch, match, items)
        if not self._bulk(items) or len(upload.data) > BULK_UPLOAD_BYTES:
            await self._collections(batch, items, result)  # small (or too big for one job)
            return result
        try:
            job = await self.submit_job(batch, match, upload)
        except RejectedBatchError as exc:
            for item in items:
                result.rejected[item.index] = str(exc)
            return result
        data: dict[str, Any] = {"numeric": numeric}
        if ids:  # update by an external ID: the ids looked up, and the records refused
            data["ids"] = {str(k): v for k, v in ids.items()}
            data["rejected"] = {str(k): v for k, v in result.rejected.items()}
        return Job(job, data)

    async def poll_job(self, job: Job, batch: Batch) -> BatchResult | None:
        """The job's per-record results once it has ended (None while it runs); the batch is
        rebuilt as it was submitted, in this process or a later one."""
        state = bulk.job_state(await self.get_json(f"/jobs/ingest/{job.id}"))
        if not state.done:
            return None
        match, result, items = await self._prepare(batch)
        if "ids" in job.data:
            ids, refused = job.data["ids"], job.data.get("rejected", {})
            result.rejected.update({int(k): str(v) for k, v in refused.items()})
            items = [
                Item(i.index, i.record, i.key, {**i.body, "Id": ids[str(i.index)]})
                for i in items
                if str(i.index) in ids
            ]
        numeric = bool(job.data.get("numeric"))
        upload, _ = self._upload(batch, match, items, numeric)
        successes = await self._csv(f"/jobs/ingest/{job.id}/successfulResults")
        failures = await self._csv(f"/jobs/ingest/{job.id}/failedResults")
        sub = bulk.read_results(upload, state, successes, failures, numeric)
        result.merge(sub, [i.index for i in items])
        return result

    def _upload(
        self, batch: Batch, match: str | None, items: list[Item], numeric: bool | None = None
    ) -> tuple[bulk.Upload, bool]:
        """The job's CSV (the same for the same batch: a resumed run rebuilds it to read the
        results); ``numeric``: whether the key field holds numbers (found at submit)."""
        key = "Id" if batch.operation is Operation.UPDATE else match
        if numeric is None:
            numeric = bool(key and key != "Id" and self._numeric(batch, key))
        bodies = [Item(i.index, i.record, i.key, _fields_of(i.body)) for i in items]
        return bulk.build_upload(bodies, batch.operation, key, numeric), numeric

    def _bulk(self, items: list[Item]) -> bool:
        threshold = self.config.bulk_threshold
        return threshold is not None and len(items) >= threshold

    def _endpoint(self, batch: Batch) -> Endpoint:
        obj = quote(str(batch.object))
        if batch.operation is Operation.UPSERT:
            match = quote(next(iter(batch.identifiers)))
            return Endpoint(
                "PATCH",
                f"/composite/sobjects/{obj}/{match}",
                body=collection_body,
                read=read_collection,
                ok=frozenset({200}),
            )
        method = "POST" if batch.operation is Operation.INSERT else "PATCH"
        return Endpoint(
            method,
            "/composite/sobjects",
            body=collection_body,
            read=read_collection,
            ok=frozenset({200}),
        )

    async def _collections(self, batch: Batch, items: list[Item], result: BatchResult) -> None:
        """Requests of up to ``batch_size`` records, ``max_concurrency`` in flight."""
        await self._chunks(self._endpoint(batch), batch, items, result)

    async def _chunks(
        self, endpoint: Endpoint, batch: Batch, items: list[Item], result: BatchResult
    ) -> None:
        size = self.config.batch_size
        slots = asyncio.Semaphore(self.config.max_concurrency)
        match = next(iter(batch.identifiers), None)

        async def one(chunk: list[Item]) -> None:
            async with slots:
                call = Call(batch, chunk, batch.object, match, self.vendor)
                await self.deliver_call(endpoint, call, result)

        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        try:
            async with asyncio.TaskGroup() as group:
                for chunk in chunks:
                    group.create_task(one(chunk))
        except* UndertowError as failures:
            raise failures.exceptions[0] from None

    # -- ids for update and delete -----------------------------------------------------------

    async def _ids(self, batch: Batch, match: str, items: list[Item]) -> dict[str, list[str]]:
        described = await self.describe(str(batch.object))
        info = described.field(match) if described else None
        numeric = info is not None and info.type in NUMERIC
        values = [i.key for i in items]
        return await lookup(self.get_json, str(batch.object), match, values, numeric)

    def _numeric(self, batch: Batch, match: str) -> bool:
        described = self._described.get(str(batch.object))
        info = described.field(match) if described else None
        return info is not None and info.type in NUMERIC

    async def _with_ids(
        self, batch: Batch, match: str, items: list[Item], result: BatchResult
    ) -> list[Item]:
        """Update by an external ID: find each record's Id (update never creates)."""
        found = await self._ids(batch, match, items)
        numeric = self._numeric(batch, match)
        ready: list[Item] = []
        for item in items:
            ids = found.get(norm(item.key, numeric), [])
            if len(ids) != 1:
                result.rejected[item.index] = (
                    f"no {batch.object} has {match} = {item.key!r} (update mode never creates "
                    "records; use upsert)"
                    if not ids
                    else f"{len(ids)} {batch.object} records have {match} = {item.key!r} "
                    "(Salesforce DUPLICATE_EXTERNAL_ID); make the field unique"
                )
                continue
            item.body = {**item.body, "Id": ids[0]}
            ready.append(item)
        return ready

    async def _delete(
        self, batch: Batch, match: str | None, items: list[Item], result: BatchResult
    ) -> None:
        targets: list[Item] = []
        if match == "Id":
            targets = [Item(i.index, i.record, i.key, str(i.key)) for i in items]
        else:
            assert match is not None
            found = await self._ids(batch, match, items)
            numeric = self._numeric(batch, match)
            for item in items:
                for object_id in found.get(norm(item.key, numeric), []):
                    targets.append(Item(item.index, item.record, item.key, object_id))
        if not targets:
            return  # nothing there: every delete is already done

        def ids(call: Call) -> dict[str, str]:
            return {"ids": ",".join(str(i.body) for i in call.items), "allOrNone": "false"}

        endpoint = Endpoint(
            "DELETE", "/composite/sobjects", params=ids, read=read_deletes, ok=frozenset({200})
        )
        await self._chunks(endpoint, batch, targets, result)

    # -- Bulk API 2.0 ------------------------------------------------------------------------

    async def submit_job(self, batch: Batch, match: str | None, upload: bulk.Upload) -> str:
        """Create a job, upload its CSV and close it; the job id (Salesforce starts on it)."""
        spec: dict[str, Any] = {
            "object": batch.object,
            "operation": bulk.JOB_OPERATIONS[batch.operation],
            "contentType": "CSV",
            "lineEnding": "LF",
            "columnDelimiter": "COMMA",
        }
        if batch.operation is Operation.UPSERT:
            spec["externalIdFieldName"] = match
        response = await self.send("POST", "/jobs/ingest", json=spec, expect=frozenset({200}))
        body = parse_json(response)
        if response.status != 200 or not isinstance(body, dict) or not body.get("id"):
            raise bulk.refused(body, f"creating the job: {response.describe()}")
        job = str(body["id"])
        response = await self.send(
            "PUT",
            f"/jobs/ingest/{job}/batches",
            body=upload.data,
            content_type="text/csv",
            expect=frozenset({201}),
        )
        if response.status != 201:
            await self._abort(job)
            raise bulk.refused(parse_json(response), f"uploading job {job}")
        response = await self.send(
            "PATCH",
            f"/jobs/ingest/{job}",
            json={"state": "UploadComplete"},
            expect=frozenset({200}),
        )
        if response.status != 200:
            await self._abort(job)
            raise bulk.refused(parse_json(response), f"closing job {job}")
        return job

    async def _abort(self, job: str) -> None:
        await self.send(
            "PATCH",
            f"/jobs/ingest/{job}",
            json={"state": "Aborted"},
            expect=frozenset({200, 400, 404, 409}),
        )

    async def _csv(self, path: str) -> str:
        response = await self.send("GET", path, expect=frozenset({200}))
        if response.status != 200:
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} (salesforce): GET {path} failed: "
                f"{response.describe()}"
            )
        return response.body.decode("utf-8-sig", "replace")


def _fields_of(body: Any) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "attributes"} if isinstance(body, dict) else {}
