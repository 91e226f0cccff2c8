"""Attio: records of any object (people, companies, custom objects), on the HTTP kit.

How a batch maps to Attio's REST API v2 (``docs/destinations/attio.md`` has the user's view).
Attio has no batch write endpoint, so every record is its own request, ``max_concurrency``
at once, paced by the account's rate budget (25 writes per second, shared by every sync):

    upsert  -> PUT  /v2/objects/{object}/records?matching_attribute=<match field>   (assert)
    insert  -> POST /v2/objects/{object}/records
    update  -> POST /v2/objects/{object}/records/query  {filter: {<match>: value}}, then
               PUT  /v2/objects/{object}/records/{record_id}   (not found: rejected)
    delete  -> the same query, then DELETE /v2/objects/{object}/records/{record_id}
               (not found: already gone, accepted)

A record is sent as ``{"data": {"values": {...}}}`` with the mapped fields as attribute
slugs and the match value under the matching attribute; a null clears the attribute
(``[]``). Attio's own errors (``{status_code, type, code, message}``) reject that record
with ``Attio <code>: <message>``. A 429 carries ``Retry-After`` as an HTTP date (the
kit reads dates); a 409 ``concurrent_write_conflict`` is retried after a moment.

Redirects: Attio's API does not redirect; a 3xx stops the run (the kit's default).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
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
    SlowDown,
    message_of,
    parse_json,
    single,
)
from undertow.errors import FatalDeliveryError, RejectedBatchError, unknown_name

# -- vendor limits, each next to the doc that states it ------------------------------------

WRITES_PER_SECOND = 25
READS_PER_SECOND = 100
""""100 requests per second for read requests, 25 requests per second for write requests";
429 with ``Retry-After`` as a date, "usually the following second".
https://docs.attio.com/rest-api/guides/rate-limiting"""

RATE_DOC = "https://docs.attio.com/rest-api/guides/rate-limiting"
ASSERT_DOC = "https://docs.attio.com/rest-api/endpoint-reference/records/assert-a-record"
DELETE_DOC = "https://docs.attio.com/rest-api/endpoint-reference/records/delete-a-record"
QUERY_DOC = "https://attio.com/developers/rest/record"
ATTRIBUTES_DOC = "https://docs.attio.com/rest-api/endpoint-reference/attributes/list-attributes"
DOCS = (ASSERT_DOC, DELETE_DOC, QUERY_DOC, ATTRIBUTES_DOC, RATE_DOC)

RECORDS_PER_BATCH = 100
"""Records handed to one ``write_batch`` (each is its own request; Attio has no batch
endpoint), so a checkpoint covers 100 records."""

STANDARD_OBJECTS: tuple[str, ...] = ("people", "companies", "deals", "users", "workspaces")
TOKEN_HINT = (
    "check the access token (Workspace settings > Developers > your integration) and that "
    "it has the record_permission:read-write and object_configuration:read scopes"
)


class AttioConfig(HttpConfig):
    """``destinations: {crm: {type: attio, token: "${ATTIO_TOKEN}"}}``."""

    token: SecretStr = Field(description="an Attio access token (integration or OAuth)")
    base_url: str = "https://api.attio.com"
    max_concurrency: int = Field(default=8, ge=1, le=64)
    """Requests in flight at once (per sync)."""
    writes_per_second: int = Field(default=WRITES_PER_SECOND, ge=1)
    """Requests per second Undertow allows itself (Attio: 25 writes/s across the workspace)."""
    custom_objects: list[str] = Field(default_factory=list)
    """Slugs of the workspace's custom objects that syncs may target (``object:``)."""


SIGNALS = (
    SlowDown(name="rate limited", default_wait=1.0),  # Retry-After: an HTTP date
    SlowDown(
        name="a concurrent write to the same record (409)",
        statuses=frozenset({409}),
        code_path="code",
        codes=frozenset({"concurrent_write_conflict"}),
        retry_after=False,
        default_wait=0.5,
        penalize=False,
    ),
)


def record_body(call: Call) -> Any:
    """``{"data": {"values": {...}}}`` for the call's one record."""
    return {"data": {"values": single(call)}}


def read_write(call: Call, response: Response, body: Any) -> BatchResult:
    """A 2xx with ``data`` accepts the record; Attio's error object rejects it."""
    if 200 <= response.status < 300:
        if not isinstance(body, dict) or "data" not in body:
            return BatchResult.all_failed(1, _not_confirmed(response))
        return BatchResult()
    if (
        isinstance(body, dict)
        and body.get("code") == "not_found"
        and "Object" in str(body.get("message", ""))
    ):
        raise FatalDeliveryError(
            f"Attio has no object {call.object!r}: {response.describe()}",
            hint="check the sync's `object:` (the object's slug, e.g. people, companies)",
        )
    raise RejectedBatchError(_reason(body, response))


UPSERT = Endpoint(
    "PUT",
    "/v2/objects/{object}/records",
    body=record_body,
    read=read_write,
    per_record=True,
    params=lambda call: {"matching_attribute": str(call.match_field)},
)
CREATE = Endpoint(
    "POST", "/v2/objects/{object}/records", body=record_body, read=read_write, per_record=True
)
OVERWRITE = Endpoint("PUT", "", body=record_body, read=read_write, per_record=True)


class AttioDestination(HttpDestination[AttioConfig]):
    """Records of an Attio workspace, one request per record."""

    name = "attio"
    vendor = "Attio"
    objects: ClassVar[tuple[str, ...] | None] = STANDARD_OBJECTS
    fake = "undertow.testing.attio:AttioFake"
    docs_url = ASSERT_DOC
    capabilities = Capabilities(
        operations=frozenset(
            {Operation.UPSERT, Operation.INSERT, Operation.UPDATE, Operation.DELETE}
        ),
        max_batch_size=RECORDS_PER_BATCH,
        one_per_request=True,
        max_concurrency=8,
        rate_limit=RateLimit(WRITES_PER_SECOND, 1.0, RATE_DOC),
        per_record_results=True,
        requires_match=True,
        match=MatchRule.exactly_one(example="match: {email_addresses: email}"),
        docs=DOCS,
        cite={"rate_limit": RATE_DOC, "match": ASSERT_DOC, "max_batch_size": ASSERT_DOC},
    )
    endpoints: ClassVar[dict[Any, Endpoint]] = {Operation.UPSERT: UPSERT, Operation.INSERT: CREATE}
    signals = SIGNALS
    check_path = "/v2/self"
    auth_hint = TOKEN_HINT
    demo = DemoProfile(
        destination="""\
type: attio
token: ${FAKE_TOKEN}
base_url: ${FAKE_URL}
writes_per_second: 900   # the local fake's demo limit; Attio allows 25 writes/s
max_concurrency: 16      # for the local fake""",
        sync="""\
object: people
mode: upsert
match: {email_addresses: email}
mappings:
  email_addresses: email
  name:
    object:
      first_name: first_name
      last_name: last_name
      full_name: {template: "{{ first_name }} {{ last_name }}"}
  plan: plan
  seats: seats
  mrr: {column: mrr, cast: float}   # a DECIMAL goes out as exact text; Attio numbers are numbers
  country: country
  signup_date: signup_date""",
        fake_options={"writes_per_second": 1000, "reads_per_second": 2000},
    )

    def __init__(self, config: Any, *, name: str) -> None:
        super().__init__(config, name=name)
        self.objects = STANDARD_OBJECTS + tuple(  # type: ignore[misc]
            o for o in self.config.custom_objects if o not in STANDARD_OBJECTS
        )

    def make_auth(self) -> Auth:
        return BearerAuth(self.config.token.get_secret_value())

    def capabilities_for(self, object: str | None) -> Capabilities:
        return replace(
            self.capabilities,
            max_concurrency=self.config.max_concurrency,
            rate_limit=RateLimit(self.config.writes_per_second, 1.0, RATE_DOC),
        )

    # -- check -----------------------------------------------------------------------------

    async def check(self) -> None:
        response = await self.send("GET", "/v2/self", expect=frozenset({200}))
        body = parse_json(response)
        if response.status != 200 or not isinstance(body, dict):
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} (attio): unexpected answer to the "
                f"check: {response.describe()}",
                hint="check base_url; it should be https://api.attio.com",
            )
        if body.get("active") is not True:
            raise self.auth_error(response)

    # -- write -----------------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> BatchResult:
        if batch.object not in (self.objects or ()):
            raise self.unknown_object(batch)
        lookup = {Operation.UPDATE: self._update, Operation.DELETE: self._delete}
        work = lookup.get(batch.operation)
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

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        values = {field: ([] if value is None else value) for field, value in record.items()}
        match_field = next(iter(batch.identifiers), None)
        if key is not None and match_field is not None:
            values.setdefault(match_field, key)
        return values

    async def find(self, call: Call) -> str | None:
        """The record id whose matching attribute holds the call's match value, or None."""
        item = call.items[0]
        response = await self.send(
            "POST",
            f"/v2/objects/{call.object}/records/query",
            json={"filter": {str(call.match_field): item.key}, "limit": 2},
            expect=frozenset({200}),
        )
        body = parse_json(response)
        if response.status != 200:
            read_write(call, response, body)  # raises the rejection (or the fatal 404)
        rows = body.get("data") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise _Unconfirmed(_not_confirmed(response))
        if len(rows) > 1:
            raise RejectedBatchError(
                f"Attio has more than one {call.object} record whose {call.match_field} is "
                f"{item.key!r}; match on a unique attribute"
            )
        if not rows:
            return None
        return str(rows[0].get("id", {}).get("record_id"))

    async def _update(self, call: Call) -> BatchResult:
        try:
            record_id = await self.find(call)
        except _Unconfirmed as exc:
            return BatchResult.all_failed(1, str(exc))
        if record_id is None:
            raise RejectedBatchError(
                f"Attio has no {call.object} record whose {call.match_field} is "
                f"{call.items[0].key!r} (update changes existing records only; use upsert)"
            )
        return await self.call(
            OVERWRITE, call, path=f"/v2/objects/{call.object}/records/{record_id}"
        )

    async def _delete(self, call: Call) -> BatchResult:
        try:
            record_id = await self.find(call)
        except _Unconfirmed as exc:
            return BatchResult.all_failed(1, str(exc))
        if record_id is None:
            return BatchResult()  # already gone
        response = await self.send(
            "DELETE", f"/v2/objects/{call.object}/records/{record_id}", expect=frozenset({200})
        )
        if response.status == 200 or response.status == 404:
            return BatchResult()  # 404: deleted meanwhile
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
        """Mapped fields and the match attribute against the object's attributes in Attio."""
        response = await self.send(
            "GET", f"/v2/objects/{object}/attributes", expect=frozenset({200})
        )
        body = parse_json(response)
        if response.status == 404:
            return [f"sync {sync!r}: the Attio workspace has no object {object!r}"]
        rows = body.get("data") if isinstance(body, dict) else None
        if response.status != 200 or not isinstance(rows, list):
            return [f"sync {sync!r}: cannot read the attributes of {object}: {response.describe()}"]
        attributes = {str(a.get("api_slug")): a for a in rows if isinstance(a, dict)}
        live = sorted(s for s, a in attributes.items() if not a.get("is_archived"))
        problems: list[str] = []
        for field in [*match, *(f for f in fields if f not in match)]:
            found = attributes.get(field)
            if found is None or found.get("is_archived"):
                problems.append(
                    f"sync {sync!r}: {object} in Attio "
                    + unknown_name("attribute", field, live)
                    + " (create it in Attio, or fix the mapping)"
                )
            elif not found.get("is_writable", True):
                problems.append(f"sync {sync!r}: Attio attribute {field!r} is read-only")
        for field in match:
            found = attributes.get(field)
            if found is not None and not found.get("is_unique"):
                unique = sorted(s for s, a in attributes.items() if a.get("is_unique"))
                problems.append(
                    f"sync {sync!r}: Attio matches records on a unique attribute; "
                    f"{field!r} is not unique on {object} (unique: {', '.join(unique) or 'none'})"
                )
        return problems


class _Unconfirmed(Exception):
    """A lookup's answer is not the JSON Attio documents: the record stays undelivered."""


def _reason(body: Any, response: Response) -> str:
    if isinstance(body, dict) and body.get("message"):
        return message_of("Attio", body, code="code", message="message")
    return f"Attio refused the record: {response.describe()}"


def _not_confirmed(response: Response) -> str:
    return (
        "Attio's answer is not the JSON it documents, so the write is not confirmed (sent "
        f"again by the next run): {response.describe()}"
    )
