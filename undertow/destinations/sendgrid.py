"""Twilio SendGrid Marketing Campaigns: contacts (an asynchronous upsert job) and list
membership, on the HTTP kit and its async job support.

How a batch maps to SendGrid (``docs/destinations/sendgrid.md`` has the user's view)::

    contacts      upsert  PUT /v3/marketing/contacts {"contacts": [...]}  -> 202 {"job_id"}
                          then GET /v3/marketing/contacts/imports/{job_id} until it is done
                  delete  POST /v3/marketing/contacts/search/emails (ids by email, 100 a call)
                          then DELETE /v3/marketing/contacts?ids=...               100 a call
    list_members  add     PUT /v3/marketing/contacts {"list_ids": [list], "contacts": [...]}
                  remove  the ids by email, then DELETE /v3/marketing/lists/{list}/contacts

A contacts upsert is **asynchronous** (``async_jobs``): the job id is recorded in the state
store the moment SendGrid accepts the request (202), then the import is polled; a run killed
in between polls the same job when it resumes and never sends the batch again. A finished
job is ``completed`` (every contact in), ``errored`` (some failed: the ``errors_url`` file
names them) or ``failed`` (none went in). A 4xx on the PUT itself names the contact it
refuses (``contacts[3].email``): that row is rejected and the others are submitted again.

Custom fields are sent by their SendGrid id (``custom_fields: {"e1_T": ...}``): the connector
reads ``GET /v3/marketing/field_definitions`` once and maps the names you map to their ids.
SendGrid publishes no number for these endpoints' rate: it sends ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset`` on every answer, which the kit reads to slow down before a 429.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from dataclasses import replace
from typing import Any, ClassVar

import orjson
from pydantic import Field, SecretStr

from undertow.destinations._http import Response
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    DemoProfile,
    Job,
    MatchRule,
    Operation,
    RecordKind,
)
from undertow.destinations.kit import (
    Auth,
    BearerAuth,
    Call,
    Endpoint,
    HttpConfig,
    HttpDestination,
    Item,
    RateHeaders,
    Reject,
    SlowDown,
    envelope,
    message_of,
    not_confirmed,
    parse_json,
    values_at,
)
from undertow.destinations.kit.engagement import by_list, chunks, expand, ranges
from undertow.errors import FatalDeliveryError, UndertowError
from undertow.redact import trim

# -- vendor limits, each next to the doc that states it ------------------------------------

API_DOC = "https://www.twilio.com/docs/sendgrid/api-reference"
UPSERT_DOC = "https://www.twilio.com/docs/sendgrid/api-reference/contacts/add-or-update-a-contact"
STATUS_DOC = "https://www.twilio.com/docs/sendgrid/api-reference/contacts/import-contacts-status"
SEARCH_DOC = "https://www.twilio.com/docs/sendgrid/api-reference/contacts/get-contacts-by-emails"
DELETE_DOC = "https://www.twilio.com/docs/sendgrid/api-reference/contacts/delete-contacts"
REMOVE_DOC = "https://www.twilio.com/docs/sendgrid/api-reference/lists/remove-contacts-from-a-list"
FIELDS_DOC = (
    "https://www.twilio.com/docs/sendgrid/api-reference/custom-fields/get-all-field-definitions"
)
LIMITS_DOC = (
    "https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/rate-limits"
)

MAX_CONTACTS = 30_000
"""Contacts per upsert, or 6 MB, whichever is lower. UPSERT_DOC"""
MAX_REQUEST_BYTES = 6_000_000
"""An upsert's body: at most 6 MB. UPSERT_DOC"""
MAX_SEARCH = 100
"""Emails per search by emails. SEARCH_DOC"""
MAX_IDS = 100
"""Contact ids per delete or list removal (a query string). DELETE_DOC"""
BATCH = 10_000
"""Our default contacts per job (``batch_size``): a smaller job is polled and finished sooner,
and a refused row costs one resubmission of fewer rows; SendGrid takes up to 30,000."""

RESERVED = frozenset(
    {
        "email", "phone_number_id", "external_id", "anonymous_id", "alternate_emails",
        "address_line_1", "address_line_2", "city", "state_province_region", "country",
        "postal_code", "first_name", "last_name", "unique_name",
    }
)  # fmt: skip
"""Reserved fields, sent at the top level of a contact (the rest are custom fields)."""
DONE = frozenset({"completed", "errored", "failed"})
_INDEX = re.compile(r"contacts\[(\d+)\]")
KEY_HINT = (
    "check the API key (Settings > API Keys): it needs Marketing > Full Access, and sends "
    "as Authorization: Bearer"
)


class SendGridConfig(HttpConfig):
    """``destinations: {sendgrid: {type: sendgrid, api_key: "${SENDGRID_API_KEY}"}}``."""

    api_key: SecretStr = Field(description="an API key with Marketing access")
    base_url: str = "https://api.sendgrid.com"
    """``https://api.eu.sendgrid.com`` for a subuser in SendGrid's EU region."""
    batch_size: int = Field(default=BATCH, ge=1, le=MAX_CONTACTS)
    max_concurrency: int = Field(default=2, ge=1, le=8)
    poll_interval: float = Field(default=2.0, gt=0)
    """Seconds between polls of an import job."""


def _caps(**extra: Any) -> Capabilities:
    base = Capabilities(
        operations=frozenset({Operation.UPSERT, Operation.DELETE}),
        max_batch_size=BATCH,
        max_concurrency=2,
        per_record_results=True,
        requires_match=True,
        match=MatchRule.exactly_one("email", example="match: {email: email}"),
        max_request_bytes=MAX_REQUEST_BYTES,
        docs=(API_DOC, UPSERT_DOC, STATUS_DOC, SEARCH_DOC, DELETE_DOC, REMOVE_DOC, LIMITS_DOC),
        cite={"max_batch_size": UPSERT_DOC, "max_request_bytes": UPSERT_DOC},
    )
    return replace(base, **extra)


OBJECTS: dict[str, Capabilities] = {
    "contacts": _caps(),
    "list_members": _caps(
        operations=frozenset({Operation.ADD, Operation.REMOVE}), kind=RecordKind.MEMBERSHIP
    ),
}
UPSERT_OK = frozenset({202})
POLL = Endpoint("GET", "/v3/marketing/contacts/imports/{key}", ok=frozenset({200}))


def sendgrid_message(error: Any) -> str:
    return message_of("SendGrid", error, code="field", message="message")


class SendGridDestination(HttpDestination[SendGridConfig]):
    """Contacts and list membership in SendGrid Marketing Campaigns."""

    name = "sendgrid"
    vendor = "SendGrid"
    objects = tuple(OBJECTS)
    fake = "undertow.testing.sendgrid:SendGridFake"
    docs_url = API_DOC
    capabilities = _caps(
        operations=frozenset({Operation.UPSERT, Operation.DELETE, Operation.ADD, Operation.REMOVE})
    )
    object_capabilities: ClassVar[dict[str, Capabilities]] = OBJECTS
    async_jobs = True
    job_timeout = 3600.0
    signals = (SlowDown(wait_header="x-ratelimit-reset", wait_kind="epoch", default_wait=1.0),)
    rate_headers = RateHeaders(remaining="X-RateLimit-Remaining", reset="X-RateLimit-Reset")
    check_path = "/v3/marketing/field_definitions"
    auth_hint = KEY_HINT
    demo = DemoProfile(
        destination="""\
type: sendgrid
api_key: ${FAKE_TOKEN}
base_url: ${FAKE_URL}
poll_interval: 0.2""",
        sync="""\
object: contacts
mode: mirror
match: {email: email}
mappings:
  email: email
  first_name: first_name
  last_name: last_name
  country: country
  plan: plan
  seats: seats""",
        token="SG.demo-0000-local-fake",
    )

    def __init__(self, config: Any, *, name: str) -> None:
        super().__init__(config, name=name)
        self.poll_interval = self.config.poll_interval  # type: ignore[misc]
        self._fields: dict[str, str] | None = None
        self._fields_lock = asyncio.Lock()

    def make_auth(self) -> Auth:
        return BearerAuth(self.config.api_key.get_secret_value())

    def capabilities_for(self, object: str | None) -> Capabilities:
        caps = OBJECTS.get(object or "contacts", self.capabilities)
        return replace(
            caps, max_batch_size=self.config.batch_size, max_concurrency=self.config.max_concurrency
        )

    # -- shaping ---------------------------------------------------------------------------

    async def custom_fields(self) -> dict[str, str]:
        """Custom field name -> its id, read once."""
        async with self._fields_lock:
            if self._fields is None:
                response = await self.send("GET", "/v3/marketing/field_definitions",
                                           expect=frozenset({200}))  # fmt: skip
                body = parse_json(response)
                if response.status != 200 or not isinstance(body, dict):
                    raise FatalDeliveryError(
                        f"destination {self.instance_name!r} (sendgrid): cannot read the "
                        f"custom fields: {response.describe()}",
                        hint=KEY_HINT,
                    )
                self._fields = {
                    str(f["name"]): str(f["id"])
                    for f in values_at(body, "custom_fields[*]")
                    if isinstance(f, dict) and "name" in f and "id" in f
                }
            return self._fields

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        if batch.operation in (Operation.DELETE, Operation.REMOVE):
            return str(key)
        contact: dict[str, Any] = {"email": key}
        custom: dict[str, Any] = {}
        fields = self._fields or {}
        for name, value in record.items():
            if name in ("email", "list_id"):
                continue
            if name in RESERVED:
                contact[name] = value
            elif name in fields:
                custom[fields[name]] = value
            else:
                return Reject(
                    f"SendGrid has no custom field named {name!r}: create it (Marketing > "
                    "Custom Fields) or map a reserved field (first_name, last_name, city, ...)"
                )
        if custom:
            contact["custom_fields"] = custom
        return contact

    # -- submit and poll -------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> BatchResult:
        """Outside the deliver stage's job protocol (tests): submit, then poll to the end."""
        answer = await self.submit_batch(batch)
        while isinstance(answer, Job):
            polled = await self.poll_job(answer, batch)
            if polled is not None:
                return polled
            await asyncio.sleep(self.poll_interval)
        return answer

    async def submit_batch(self, batch: Batch) -> Job | BatchResult:
        object_ = batch.object or "contacts"
        if object_ not in OBJECTS:
            raise self.unknown_object(batch)
        if batch.operation not in OBJECTS[object_].operations:
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: destination {self.instance_name!r} (sendgrid) cannot "
                f"{batch.operation.value} {object_}",
                hint="contacts take upsert and mirror; list_members add, remove and mirror",
            )
        if batch.operation in (Operation.UPSERT, Operation.ADD):
            await self.custom_fields()
        field = self.match_field(batch)
        result = BatchResult()
        items = self.items(batch, field, result)
        if not items:
            return result
        call = Call(batch, items, object_, field, self.vendor)
        jobs: list[dict[str, Any]] = []
        if batch.operation is Operation.UPSERT:
            await self._upsert(call, None, result, jobs)
        elif batch.operation is Operation.ADD:
            for list_id, members in by_list(items, "list_id", result, vendor="SendGrid").items():
                await self._upsert(call.subset(members), list_id, result, jobs)
        elif batch.operation is Operation.DELETE:
            ids = await self._ids(call, result)
            await self._by_ids("/v3/marketing/contacts", "ids", call, ids, result)
        else:
            for list_id, members in by_list(items, "list_id", result, vendor="SendGrid").items():
                part = call.subset(members)
                ids = await self._ids(part, result)
                path = f"/v3/marketing/lists/{list_id}/contacts"
                await self._by_ids(path, "contact_ids", part, ids, result)
        if not jobs:
            return result
        rejected = {str(i): reason for i, reason in result.rejected.items()}
        return Job(jobs[0]["id"], {"jobs": jobs, "rejected": rejected})

    async def _upsert(
        self, call: Call, list_id: str | None, result: BatchResult, jobs: list[dict[str, Any]]
    ) -> None:
        """One import job per part that fits 6 MB; a refusal naming contacts rejects them and
        submits the rest again."""
        extra = {"list_ids": [list_id]} if list_id is not None else {}
        endpoint = Endpoint(
            "PUT", "/v3/marketing/contacts", body=envelope("contacts", **extra), ok=UPSERT_OK
        )
        for part in self._fit(endpoint, call, result):
            body, _ = self.encode(endpoint, part)
            response = await self.send("PUT", endpoint.path, body=body, expect=UPSERT_OK)
            parsed = parse_json(response)
            job_id = parsed.get("job_id") if isinstance(parsed, dict) else None
            if response.status == 202 and isinstance(job_id, str) and job_id:
                jobs.append({"id": job_id, "items": ranges([i.index for i in part.items])})
            elif 400 <= response.status < 500:
                rest = self._refused(part, parsed, response, result)
                if rest and len(rest) < len(part.items):
                    await self._upsert(part.subset(rest), list_id, result, jobs)
            else:
                result.merge(not_confirmed(part, response), [i.index for i in part.items])

    @staticmethod
    def _refused(call: Call, body: Any, response: Response, result: BatchResult) -> list[Item]:
        """Reject the contacts a 4xx names (``contacts[i]...``; all of them if it names none);
        the others, to submit again."""
        named: dict[int, str] = {}
        for error in values_at(body, "errors[*]"):
            found = (
                _INDEX.search(str(error.get("field") or "")) if isinstance(error, dict) else None
            )
            if found and int(found.group(1)) < len(call.items):
                named[call.items[int(found.group(1))].index] = sendgrid_message(error)
        if named:
            result.rejected.update(named)
            return [i for i in call.items if i.index not in named]
        first = next(values_at(body, "errors[*]"), None)
        reason = sendgrid_message(first) if first else f"SendGrid refused: {response.describe()}"
        for item in call.items:
            result.rejected[item.index] = reason
        return []

    async def poll_job(self, job: Job, batch: Batch) -> BatchResult | None:
        result = BatchResult(rejected={int(k): v for k, v in job.data.get("rejected", {}).items()})
        emails = batch.identifiers.get("email", [])
        for sub in job.data.get("jobs", []):
            response = await self.send("GET", f"/v3/marketing/contacts/imports/{sub['id']}",
                                       expect=frozenset({200}))  # fmt: skip
            status = parse_json(response)
            if response.status != 200 or not isinstance(status, dict):
                return None  # not readable now: polled again (never submitted again)
            state = status.get("status")
            if state not in DONE:
                return None
            indices = expand(sub["items"])
            if state == "failed":
                reason = f"SendGrid import job {sub['id']} failed: no contact of it went in"
                errors = await self._errors(status, indices, emails)
                for index in indices:
                    result.rejected[index] = errors.get(index, reason)
            elif state == "errored":
                errors = await self._errors(status, indices, emails)
                if not errors:
                    reason = (
                        f"SendGrid import job {sub['id']} errored and its errors file could not "
                        "be read, so the failed contacts are unknown: sent again next run"
                    )
                    for index in indices:
                        result.failed[index] = reason
                result.rejected.update(errors)
        return result

    async def _errors(
        self, status: dict[str, Any], indices: list[int], emails: list[Any]
    ) -> dict[int, str]:
        """The contacts an errors file names, by email (a CSV with an email and an error
        column, or JSON). The file is fetched without credentials (it may live elsewhere)."""
        url = next(values_at(status, "results.errors_url"), None)
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            return {}
        self.http.allow(url)
        try:
            response = await self.http.request("GET", url, raise_for_status=False)
        except UndertowError:  # unreachable: its rows are resent (see poll_job)
            return {}
        if response.status != 200:
            return {}
        by_email = {str(emails[i]).casefold(): i for i in indices if i < len(emails) and emails[i]}
        out: dict[int, str] = {}
        for email, message in _error_rows(response.body):
            index = by_email.get(email.casefold())
            if index is not None:
                out[index] = trim(f"SendGrid: {message}", 500)
        return out

    # -- deletes and removals --------------------------------------------------------------

    async def _ids(self, call: Call, result: BatchResult) -> dict[int, str]:
        """Batch index -> SendGrid contact id (absent: SendGrid has no such contact)."""
        found: dict[int, str] = {}
        for part in chunks(call.items, MAX_SEARCH):
            body = orjson.dumps({"emails": [str(i.key) for i in part]})
            response = await self.send("POST", "/v3/marketing/contacts/search/emails",
                                       body=body, expect=frozenset({200, 404}))  # fmt: skip
            if response.status == 404:
                continue  # none of them is a contact
            parsed = parse_json(response)
            if response.status != 200 or not isinstance(parsed, dict):
                for item in part:
                    result.failed[item.index] = (
                        f"SendGrid did not find the contacts: {response.describe()}"
                    )
                continue
            by_email = {str(k).casefold(): v for k, v in (parsed.get("result") or {}).items()}
            for item in part:
                entry = by_email.get(str(item.key).casefold())
                contact_id = next(values_at(entry, "contact.id"), None)
                if isinstance(contact_id, str) and contact_id:
                    found[item.index] = contact_id
        return found

    async def _by_ids(
        self, path: str, param: str, call: Call, ids: dict[int, str], result: BatchResult
    ) -> None:
        """Delete contacts or remove them from a list, 100 ids a request (202: accepted)."""
        targets = [i for i in call.items if i.index in ids]
        for part in chunks(targets, MAX_IDS):
            params = {param: ",".join(ids[i.index] for i in part)}
            response = await self.send("DELETE", path, params=params,
                                       expect=frozenset({200, 202, 204}))  # fmt: skip
            if response.status in (200, 202, 204):
                continue
            if response.status == 404:  # the list is not there: nobody is in it
                continue
            parsed = parse_json(response)
            first = next(values_at(parsed, "errors[*]"), None)
            reason = sendgrid_message(first) if first else f"SendGrid: {response.describe()}"
            for item in part:
                if 400 <= response.status < 500:
                    result.rejected[item.index] = reason
                else:
                    result.failed[item.index] = reason


def _error_rows(raw: bytes) -> list[tuple[str, str]]:
    """(email, message) pairs from an errors file: JSON (a list, or ``{"errors": [...]}``) or
    CSV with a column naming the email and one naming the error."""
    text = raw.decode("utf-8", "replace").strip()
    rows: list[tuple[str, str]] = []
    if text[:1] in ("[", "{"):
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            return []
        entries = parsed.get("errors", []) if isinstance(parsed, dict) else parsed
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict):
                email = entry.get("email") or entry.get("identifier")
                message = entry.get("message") or entry.get("error")
                if email:
                    rows.append((str(email), str(message or "refused")))
        return rows
    reader = csv.DictReader(io.StringIO(text))
    names = [n for n in reader.fieldnames or []]
    email_col = next((n for n in names if "email" in n.lower()), None)
    error_col = next((n for n in names if "error" in n.lower() or "message" in n.lower()), None)
    if email_col is None:
        return []
    for row in reader:
        email = row.get(email_col)
        if email:
            rows.append((email, (row.get(error_col) if error_col else None) or "refused"))
    return rows


__all__ = ["SendGridConfig", "SendGridDestination"]
