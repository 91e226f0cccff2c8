"""Intercom: contacts and companies through the REST API 2.14, on the HTTP kit.

How a batch maps to Intercom (``docs/destinations/intercom.md`` has the user's view).
Intercom has no bulk endpoint: every record is its own requests, ``max_concurrency`` at
once, paced by the app's budget (10,000 calls a minute, enforced per 10 seconds):

    contacts, upsert -> POST /contacts; a 409 ("already exists with id=...") means the
                        contact is there: PUT /contacts/{id} (no id in the message: the
                        search below finds it). New contacts cost 1 request, known ones 2.
    contacts, insert -> POST /contacts (a 409 rejects the record)
    contacts, update -> POST /contacts/search {field: <match>, operator: "=", value}, then
                        PUT /contacts/{id} (not found: rejected)
    contacts, delete -> the search, then DELETE /contacts/{id} (not found: accepted)
    companies, upsert -> POST /companies (Intercom creates or updates on company_id)

Fields: the contact's (company's) own keys as they are, timestamps (``signed_up_at``...)
from ISO text to Unix seconds, every other field under ``custom_attributes`` (a nested
object or a list there rejects the record: Intercom's attributes are scalars). Every
request carries ``Intercom-Version: 2.14``. ``X-RateLimit-Remaining``/``-Reset`` are read on
every answer (the budget slows down before a 429); a 429 waits until ``X-RateLimit-Reset``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import Field, SecretStr

from undertow.destinations._http import Response
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    DemoProfile,
    MatchRule,
    Operation,
    RateLimit,
)
from undertow.destinations.kit import (
    Auth,
    BearerAuth,
    Call,
    Endpoint,
    HttpConfig,
    HttpDestination,
    RateHeaders,
    Reject,
    SlowDown,
    message_of,
    parse_json,
    single,
)
from undertow.errors import FatalDeliveryError, RejectedBatchError, unknown_name

# -- vendor limits, each next to the doc that states it ------------------------------------

RATE_DOC = "https://developers.intercom.com/docs/references/rest-api/errors/rate-limiting"
CALLS_PER_10S = 1666
"""Private apps: 10,000 calls per minute per app (25,000 per workspace), "evenly
distributed into 10 second windows": 1,666 per 10 s. https://developers.intercom.com/docs/references/rest-api/errors/rate-limiting"""
CONTACTS_DOC = (
    "https://developers.intercom.com/docs/references/2.14/rest-api/api.intercom.io/contacts"
)
COMPANIES_DOC = (
    "https://developers.intercom.com/docs/references/2.14/rest-api/api.intercom.io/companies"
)
DATA_ATTRIBUTES_DOC = (
    "https://developers.intercom.com/docs/references/2.14/rest-api/api.intercom.io/data-attributes"
)
DOCS = (CONTACTS_DOC, COMPANIES_DOC, DATA_ATTRIBUTES_DOC, RATE_DOC)
VERSION = "2.14"
RECORDS_PER_BATCH = 100
"""Records handed to one ``write_batch`` (each is its own request: no bulk endpoint)."""

CONTACT_KEYS = frozenset(
    {
        "role",
        "external_id",
        "email",
        "phone",
        "name",
        "avatar",
        "signed_up_at",
        "last_seen_at",
        "owner_id",
        "unsubscribed_from_emails",
    }
)
COMPANY_KEYS = frozenset(
    {
        "name",
        "company_id",
        "plan",
        "size",
        "website",
        "industry",
        "remote_created_at",
        "monthly_spend",
    }
)
"""The request bodies' own keys (create_contact_request, create_or_update_company_request
in ../shared/specs/intercom)."""
TIMESTAMPS = frozenset({"signed_up_at", "last_seen_at", "remote_created_at"})
OWN_KEYS = {"contacts": CONTACT_KEYS, "companies": COMPANY_KEYS}
EXISTING_ID = re.compile(r"\bid=([0-9a-zA-Z]+)")
TOKEN_HINT = (
    "check the access token (Developer Hub > your app > Authentication) and that the app may "
    "read and write users and companies"
)


class IntercomConfig(HttpConfig):
    """``destinations: {support: {type: intercom, token: "${INTERCOM_TOKEN}"}}``."""

    token: SecretStr = Field(description="an Intercom access token")
    base_url: str = "https://api.intercom.io"
    """``https://api.eu.intercom.io`` or ``https://api.au.intercom.io`` for those regions."""
    calls_per_10s: int = Field(default=CALLS_PER_10S, ge=1)
    """Requests per 10 s Undertow allows itself (1,666 = 10,000 a minute, a private app's
    default; lower it when other apps share the workspace's 25,000)."""
    max_concurrency: int = Field(default=8, ge=1, le=64)


SIGNALS = (
    SlowDown(
        name="rate limited",
        wait_header="x-ratelimit-reset",
        wait_kind="epoch",
        min_wait=0.5,
        default_wait=10.0,
    ),
)


def read_write(call: Call, response: Response, body: Any) -> BatchResult:
    """A 200 with an object accepts the record; Intercom's error list rejects it."""
    if 200 <= response.status < 300:
        if not isinstance(body, dict) or "type" not in body:
            return BatchResult.all_failed(1, _not_confirmed(response))
        return BatchResult()
    raise RejectedBatchError(_reason(body, response))


CREATE = Endpoint("POST", "/contacts", body=single, read=read_write, per_record=True)
UPDATE = Endpoint("PUT", "", body=single, read=read_write, per_record=True)
COMPANY = Endpoint("POST", "/companies", body=single, read=read_write, per_record=True)


class IntercomDestination(HttpDestination[IntercomConfig]):
    """Contacts (users and leads) and companies of an Intercom workspace."""

    name = "intercom"
    vendor = "Intercom"
    objects = ("contacts", "companies")
    fake = "undertow.testing.intercom:IntercomFake"
    docs_url = CONTACTS_DOC
    capabilities = Capabilities(
        operations=frozenset(
            {Operation.UPSERT, Operation.INSERT, Operation.UPDATE, Operation.DELETE}
        ),
        max_batch_size=RECORDS_PER_BATCH,
        one_per_request=True,
        max_concurrency=8,
        rate_limit=RateLimit(CALLS_PER_10S, 10.0, RATE_DOC),
        per_record_results=True,
        requires_match=True,
        match=MatchRule.exactly_one(example="match: {email: email}"),
        docs=DOCS,
        cite={"rate_limit": RATE_DOC, "match": CONTACTS_DOC, "max_batch_size": CONTACTS_DOC},
    )
    endpoints: ClassVar[dict[Any, Endpoint]] = {
        (Operation.INSERT, "contacts"): CREATE,
        (Operation.UPSERT, "companies"): COMPANY,
    }
    signals = SIGNALS
    rate_headers = RateHeaders(
        remaining="x-ratelimit-remaining", reset="x-ratelimit-reset", reset_kind="epoch"
    )
    auth_hint = TOKEN_HINT
    demo = DemoProfile(
        destination="""\
type: intercom
token: ${FAKE_TOKEN}
base_url: ${FAKE_URL}
calls_per_10s: 9000   # the local fake's demo limit; Intercom allows 1,666 per 10 s
max_concurrency: 16   # for the local fake""",
        sync="""\
object: contacts
mode: upsert
match: {email: email}
mappings:
  email: email
  name: {template: "{{ first_name }} {{ last_name }}"}
  signed_up_at: signup_date             # a date: sent as Unix seconds
  plan: plan                            # custom attributes (Settings > Data > People)
  seats: seats
  mrr: {column: mrr, cast: float}
  country: country""",
        fake_options={"calls_per_10s": 10000},
    )

    def make_auth(self) -> Auth:
        return BearerAuth(self.config.token.get_secret_value())

    def default_headers(self) -> dict[str, str]:
        return {"Intercom-Version": VERSION}

    def capabilities_for(self, object: str | None) -> Capabilities:
        caps = replace(
            self.capabilities,
            max_concurrency=self.config.max_concurrency,
            rate_limit=RateLimit(self.config.calls_per_10s, 10.0, RATE_DOC),
        )
        if object == "contacts":
            return replace(caps, match=MatchRule.exactly_one("email", "external_id"))
        if object == "companies":
            return replace(
                caps,
                operations=frozenset({Operation.UPSERT}),
                match=MatchRule.exactly_one("company_id", example="match: {company_id: id}"),
            )
        return caps

    # -- check -----------------------------------------------------------------------------

    async def check(self) -> None:
        query = {
            "query": {"field": "email", "operator": "=", "value": "check@undertow.invalid"},
            "pagination": {"per_page": 1},
        }
        response = await self.send("POST", "/contacts/search", json=query, expect=frozenset({200}))
        if response.status != 200:
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} (intercom): unexpected answer to the "
                f"check: {response.describe()}",
                hint="check base_url: https://api.intercom.io (or the EU/AU host)",
            )

    # -- write -----------------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> BatchResult:
        if batch.object not in (self.objects or ()):
            raise self.unknown_object(batch)
        if batch.operation not in self.capabilities_for(batch.object).operations:
            self.endpoint_for(batch)  # raises "cannot <operation> companies"
        work = {
            (Operation.UPSERT, "contacts"): self._upsert,
            (Operation.UPDATE, "contacts"): self._update,
            (Operation.DELETE, "contacts"): self._delete,
        }.get((batch.operation, str(batch.object)))
        if work is None:
            return await super().write_batch(batch)
        match_field = self.match_field(batch)
        result = BatchResult()
        items = self.items(batch, match_field, result)
        if items:
            await self.each(
                Call(batch, items, batch.object, match_field, self.vendor), result, work
            )
        return result

    def endpoint_for(self, batch: Batch) -> Endpoint:
        if batch.operation not in self.capabilities_for(batch.object).operations:
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: destination {self.instance_name!r} (intercom) cannot "
                f"{batch.operation.value} {batch.object}: Intercom creates or updates "
                "companies on company_id, it has no separate insert, update or delete",
                hint="use `mode: upsert` for companies",
            )
        return super().endpoint_for(batch)

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        if batch.operation is Operation.DELETE:
            return {}
        object_ = str(batch.object)
        body: dict[str, Any] = {}
        custom: dict[str, Any] = {}
        for field, value in record.items():
            if field in OWN_KEYS[object_]:
                body[field] = _timestamp(value) if field in TIMESTAMPS else value
            elif isinstance(value, dict | list):
                return Reject(
                    f"field {field!r} is a nested {'object' if isinstance(value, dict) else 'list'}"
                    "; Intercom custom attributes take text, numbers, booleans or dates"
                )
            else:
                custom[field] = value
        if any(isinstance(body.get(f), Reject) for f in TIMESTAMPS):
            bad = next(f for f in TIMESTAMPS if isinstance(body.get(f), Reject))
            return Reject(f"field {bad!r}: {body[bad].reason}")
        match_field = next(iter(batch.identifiers), None)
        if key is not None and match_field is not None:
            body.setdefault(match_field, key)
        if object_ == "contacts" and batch.operation is not Operation.UPDATE:
            body.setdefault("role", "user")
        if custom:
            body["custom_attributes"] = custom
        return body

    async def find(self, call: Call) -> str | None:
        """The id of the contact whose match field is the call's value, or None."""
        query = {
            "query": {"field": str(call.match_field), "operator": "=", "value": call.items[0].key},
            "pagination": {"per_page": 2},
        }
        response = await self.send("POST", "/contacts/search", json=query, expect=frozenset({200}))
        body = parse_json(response)
        if response.status != 200:
            raise RejectedBatchError(_reason(body, response))
        found = body.get("data") if isinstance(body, dict) else None
        if not isinstance(found, list):
            raise _Unconfirmed(_not_confirmed(response))
        if len(found) > 1:
            raise RejectedBatchError(
                f"Intercom has more than one contact whose {call.match_field} is "
                f"{call.items[0].key!r} (leads can share an email); match on external_id"
            )
        return str(found[0]["id"]) if found else None

    async def _upsert(self, call: Call) -> BatchResult:
        response = await self.send("POST", "/contacts", json=single(call), expect=frozenset({200}))
        body = parse_json(response)
        if response.status != 409:
            return read_write(call, response, body)
        existing = EXISTING_ID.search(_reason(body, response))
        contact_id = existing.group(1) if existing else None
        if contact_id is None:
            try:
                contact_id = await self.find(call)
            except _Unconfirmed as exc:
                return BatchResult.all_failed(1, str(exc))
            if contact_id is None:
                raise RejectedBatchError(_reason(body, response))
        return await self.call(UPDATE, call, path=f"/contacts/{contact_id}")

    async def _update(self, call: Call) -> BatchResult:
        try:
            contact_id = await self.find(call)
        except _Unconfirmed as exc:
            return BatchResult.all_failed(1, str(exc))
        if contact_id is None:
            raise RejectedBatchError(
                f"Intercom has no contact whose {call.match_field} is {call.items[0].key!r} "
                "(update changes existing contacts only; use upsert)"
            )
        return await self.call(UPDATE, call, path=f"/contacts/{contact_id}")

    async def _delete(self, call: Call) -> BatchResult:
        try:
            contact_id = await self.find(call)
        except _Unconfirmed as exc:
            return BatchResult.all_failed(1, str(exc))
        if contact_id is None:
            return BatchResult()  # already gone
        response = await self.send("DELETE", f"/contacts/{contact_id}", expect=frozenset({200}))
        if response.status in (200, 404):
            return BatchResult()
        raise RejectedBatchError(_reason(parse_json(response), response))

    # -- validate --------------------------------------------------------------------------

    async def validate_sync(
        self,
        *,
        sync: str,
        object: str | None,
        match: Mapping[str, str],
        fields: list[str],
        operations: frozenset[Operation] = frozenset(),
    ) -> list[str]:
        """Custom attributes the sync maps, against Intercom's data attributes."""
        if object not in ("contacts", "companies"):
            return []
        model = "contact" if object == "contacts" else "company"
        response = await self.send(
            "GET", "/data_attributes", params={"model": model}, expect=frozenset({200})
        )
        body = parse_json(response)
        rows = body.get("data") if isinstance(body, dict) else None
        if response.status != 200 or not isinstance(rows, list):
            return [
                f"sync {sync!r}: cannot read Intercom's {model} data attributes: "
                f"{response.describe()}"
            ]
        custom = {str(r.get("name")): r for r in rows if isinstance(r, dict) and r.get("custom")}
        problems = []
        for field in fields:
            if field in OWN_KEYS[object] or field in match:
                continue
            found = custom.get(field)
            if found is None or found.get("archived"):
                problems.append(
                    f"sync {sync!r}: Intercom {model}s have no custom "
                    + unknown_name("attribute", field, sorted(custom))[len("unknown ") :]
                    + " (create it in Settings > Data, or fix the mapping)"
                )
            elif found.get("api_writable") is False:
                problems.append(
                    f"sync {sync!r}: Intercom attribute {field!r} is not writable by API"
                )
        return problems


class _Unconfirmed(Exception):
    """A search answer is not the JSON Intercom documents: the record stays undelivered."""


def _timestamp(value: Any) -> Any:
    """A date or timestamp as Unix seconds (numbers pass; other text: a Reject)."""
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return None if value is None else int(value)
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return Reject(f"{value!r} is not a date or an ISO 8601 timestamp")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # a date, or a timestamp without a zone: UTC
    return int(moment.timestamp())


def _reason(body: Any, response: Response) -> str:
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return message_of("Intercom", errors[0], code="code", message="message")
    return f"Intercom refused the record: {response.describe()}"


def _not_confirmed(response: Response) -> str:
    return (
        "Intercom's answer is not the JSON it documents, so the write is not confirmed (sent "
        f"again by the next run): {response.describe()}"
    )
