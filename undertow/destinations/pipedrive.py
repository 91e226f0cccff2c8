"""Pipedrive: persons and organizations through the REST API v2, on the HTTP kit.

How a batch maps to Pipedrive (``docs/destinations/pipedrive.md`` has the user's view).
Pipedrive has no batch write and no upsert endpoint, so every record is looked up by its
match value (a search restricted to one field, exact match), then written on its own:

    upsert  -> GET /api/v2/{object}/search?term=..&fields=..&exact_match=true, then
               PATCH /api/v2/{object}/{id}, or POST /api/v2/{object} when not found
    insert  -> POST /api/v2/{object}
    update  -> the search, then PATCH (not found: rejected)
    delete  -> the search, then DELETE /api/v2/{object}/{id} (not found: accepted)

Fields: ``email``/``phone`` become ``emails``/``phones`` (``[{value, primary, label}]``),
Pipedrive's own keys (``name``, ``owner_id``, ``org_id``...) go as they are, and every other
field is a custom field, given by its field code (the 40-character hash) or its name; the
connector reads the object's fields once (``GET /api/v2/{personFields|organizationFields}``)
to turn names into codes and option labels into option ids. Searches draw from a budget of
their own (10 per 2 s) besides the account's (20 per 2 s on the lowest plan).

Redirects: Pipedrive's API does not redirect; a 3xx stops the run (the kit's default).
"""

from __future__ import annotations

import asyncio
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
    Call,
    Endpoint,
    HeaderAuth,
    HttpConfig,
    HttpDestination,
    RateHeaders,
    Reject,
    SlowDown,
    message_of,
    parse_json,
    single,
)
from undertow.destinations.pipedrive_fields import FieldBook, shape_record
from undertow.destinations.rate import RateBudget, budget_for
from undertow.errors import FatalDeliveryError, RejectedBatchError

# -- vendor limits, each next to the doc that states it ------------------------------------

RATE_DOC = "https://pipedrive.readme.io/docs/core-api-concepts-rate-limiting"
REQUESTS_PER_2S = 20
"""api_token requests per 2 s on the lowest plan (Essential/Lite): 20; Advanced 40,
Professional 80, Power 100, Enterprise 120 (OAuth apps: four times as many).
https://pipedrive.readme.io/docs/core-api-concepts-rate-limiting"""
SEARCH_PER_2S = 10
"""Search API: 10 requests per 2 s per token, every plan (same page)."""
PERSONS_DOC = "https://developers.pipedrive.com/docs/api/v1/Persons"
ORGANIZATIONS_DOC = "https://developers.pipedrive.com/docs/api/v1/Organizations"
DOCS = (RATE_DOC, PERSONS_DOC, ORGANIZATIONS_DOC)

RECORDS_PER_BATCH = 50
"""Records handed to one ``write_batch`` (each is its own requests: Pipedrive has no batch
write), so a checkpoint covers 50 records."""

OBJECTS = ("persons", "organizations")
FIELDS_PATH = {"persons": "/api/v2/personFields", "organizations": "/api/v2/organizationFields"}
TOKEN_HINT = (
    "check the API token (Pipedrive > Personal preferences > API) and that its user may "
    "add, edit and delete persons and organizations"
)


class PipedriveConfig(HttpConfig):
    """``destinations: {crm: {type: pipedrive, api_token: "${PIPEDRIVE_API_TOKEN}"}}``."""

    api_token: SecretStr = Field(description="a Pipedrive API token (sent as x-api-token)")
    base_url: str = "https://api.pipedrive.com"
    """``https://api.pipedrive.com`` or your company domain ``https://acme.pipedrive.com``."""
    requests_per_2s: int = Field(default=REQUESTS_PER_2S, ge=1)
    """Requests per 2 s Undertow allows itself: 20 (Essential), 40, 80, 100, 120 by plan."""
    search_per_2s: int = Field(default=SEARCH_PER_2S, ge=1)
    max_concurrency: int = Field(default=4, ge=1, le=32)


def _daily(response: Response, body: Any) -> bool:
    return response.headers.get("x-daily-requests-left") == "0"


SIGNALS = (
    SlowDown(
        name="the daily request budget is spent",
        when=_daily,
        fatal=True,
        hint="Pipedrive renews the daily budget at midnight (UTC); run the sync again then, "
        "or buy more in Pipedrive (Company settings > Usage)",
    ),
    SlowDown(
        name="rate limited",
        wait_header="x-ratelimit-reset",
        wait_kind="seconds",
        default_wait=2.0,
    ),
)


def read_write(call: Call, response: Response, body: Any) -> BatchResult:
    """``{"success": true, "data": {...}}`` accepts the record; Pipedrive's error rejects it."""
    if 200 <= response.status < 300:
        if not isinstance(body, dict) or body.get("success") is not True:
            return BatchResult.all_failed(1, _not_confirmed(response))
        return BatchResult()
    raise RejectedBatchError(_reason(body, response))


CREATE = Endpoint("POST", "/api/v2/{object}", body=single, read=read_write, per_record=True)
PATCH = Endpoint("PATCH", "", body=single, read=read_write, per_record=True)


class PipedriveDestination(HttpDestination[PipedriveConfig]):
    """Persons and organizations of a Pipedrive company, one record at a time."""

    name = "pipedrive"
    vendor = "Pipedrive"
    objects = OBJECTS
    fake = "undertow.testing.pipedrive:PipedriveFake"
    docs_url = PERSONS_DOC
    capabilities = Capabilities(
        operations=frozenset(
            {Operation.UPSERT, Operation.INSERT, Operation.UPDATE, Operation.DELETE}
        ),
        max_batch_size=RECORDS_PER_BATCH,
        one_per_request=True,
        max_concurrency=4,
        rate_limit=RateLimit(REQUESTS_PER_2S, 2.0, RATE_DOC),
        per_record_results=True,
        requires_match=True,
        match=MatchRule.exactly_one(example="match: {email: email}"),
        docs=DOCS,
        cite={"rate_limit": RATE_DOC, "match": PERSONS_DOC, "max_batch_size": PERSONS_DOC},
    )
    endpoints: ClassVar[dict[Any, Endpoint]] = {Operation.INSERT: CREATE}
    signals = SIGNALS
    rate_headers = RateHeaders(
        remaining="x-ratelimit-remaining", reset="x-ratelimit-reset", reset_kind="seconds"
    )
    check_path = "/api/v1/users/me"
    auth_hint = TOKEN_HINT
    demo = DemoProfile(
        destination="""\
type: pipedrive
api_token: ${FAKE_TOKEN}
base_url: ${FAKE_URL}
requests_per_2s: 2000   # the local fake's demo limit; Pipedrive allows 20-120 per 2 s
search_per_2s: 1000     # the local fake's demo limit; Pipedrive: 10 per 2 s
max_concurrency: 16     # for the local fake""",
        sync="""\
object: persons
mode: upsert
match: {email: email}
mappings:
  name: {template: "{{ first_name }} {{ last_name }}"}
  email: email
  Plan: plan                          # custom fields by name (or by their field code)
  Seats: seats
  MRR: {column: mrr, cast: float}
  Country: country
  Signup date: signup_date""",
        fake_options={"requests_per_2s": 2400, "search_per_2s": 1200},
    )

    def __init__(self, config: Any, *, name: str) -> None:
        super().__init__(config, name=name)
        self._books: dict[str, FieldBook] = {}
        self._book_lock = asyncio.Lock()
        self._search_budget: RateBudget | None = None

    def make_auth(self) -> Auth:
        return HeaderAuth("x-api-token", self.config.api_token.get_secret_value())

    def capabilities_for(self, object: str | None) -> Capabilities:
        return replace(
            self.capabilities,
            max_concurrency=self.config.max_concurrency,
            rate_limit=RateLimit(self.config.requests_per_2s, 2.0, RATE_DOC),
        )

    @property
    def search_budget(self) -> RateBudget:
        if self._search_budget is None:
            limit = RateLimit(self.config.search_per_2s, 2.0, RATE_DOC)
            self._search_budget = budget_for(self.account_key() + ":search", (limit,))
        return self._search_budget

    # -- check -----------------------------------------------------------------------------

    async def check(self) -> None:
        response = await self.send("GET", "/api/v1/users/me", expect=frozenset({200}))
        body = parse_json(response)
        if response.status != 200 or not isinstance(body, dict) or not body.get("success"):
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} (pipedrive): unexpected answer to the "
                f"check: {response.describe()}",
                hint="check base_url; it should be https://api.pipedrive.com or your company "
                "domain",
            )

    # -- fields ----------------------------------------------------------------------------

    async def book(self, object_: str) -> FieldBook:
        """The object's fields (read once per destination instance)."""
        async with self._book_lock:
            if object_ not in self._books:
                self._books[object_] = await self._read_fields(object_)
            return self._books[object_]

    async def _read_fields(self, object_: str) -> FieldBook:
        rows: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
            response = await self.send(
                "GET", FIELDS_PATH[object_], params=params, expect=frozenset({200})
            )
            body = parse_json(response)
            if response.status != 200 or not isinstance(body, dict):
                raise FatalDeliveryError(
                    f"destination {self.instance_name!r} (pipedrive): cannot read the "
                    f"{object_} fields: {response.describe()}",
                    hint="the token's user needs to read the company's fields",
                )
            rows += [r for r in body.get("data") or [] if isinstance(r, dict)]
            cursor = (body.get("additional_data") or {}).get("next_cursor")
            if not cursor:
                return FieldBook(object_, rows)

    # -- write -----------------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> BatchResult:
        if batch.object not in OBJECTS:
            raise self.unknown_object(batch)
        book = await self.book(str(batch.object))
        match_field = self.match_field(batch)
        if match_field is not None:
            problem = book.search_field(match_field)
            if isinstance(problem, Reject):
                raise FatalDeliveryError(
                    f"sync {batch.sync!r}: destination {self.instance_name!r} (pipedrive): "
                    f"{problem.reason}",
                    hint="match persons on email, phone or name, organizations on name, or "
                    "either on a custom text field",
                )
        if batch.operation is Operation.INSERT:
            return await super().write_batch(batch)
        work = {
            Operation.UPSERT: self._upsert,
            Operation.UPDATE: self._update,
            Operation.DELETE: self._delete,
        }.get(batch.operation)
        if work is None:
            self.endpoint_for(batch)  # raises "cannot <operation>"
        result = BatchResult()
        items = self.items(batch, match_field, result)
        if items and work is not None:
            await self.each(
                Call(batch, items, batch.object, match_field, self.vendor), result, work
            )
        return result

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        if batch.operation is Operation.DELETE:
            return {}
        match_field = next(iter(batch.identifiers), None)
        return shape_record(self._books[str(batch.object)], record, match_field, key)

    async def find(self, call: Call) -> int | None:
        """The id of the record whose match field holds the call's value, or None."""
        item = call.items[0]
        search = self._books[str(call.object)].search_field(str(call.match_field))
        assert isinstance(search, str)
        params = {
            "term": str(item.key),
            "fields": search,
            "exact_match": "true",
            "limit": "2",
        }
        response = await self.send(
            "GET",
            f"/api/v2/{call.object}/search",
            params=params,
            expect=frozenset({200}),
            also=self.search_budget,
        )
        body = parse_json(response)
        if response.status != 200:
            raise RejectedBatchError(_reason(body, response))
        found = body.get("data") if isinstance(body, dict) else None
        items = found.get("items") if isinstance(found, dict) else None
        if not isinstance(items, list):
            raise _Unconfirmed(_not_confirmed(response))
        ids = {i["item"]["id"] for i in items if isinstance(i, dict) and "item" in i}
        if len(ids) > 1:
            raise RejectedBatchError(
                f"Pipedrive has more than one {call.object[:-1] if call.object else ''} whose "
                f"{call.match_field} is {item.key!r}; match on a field with unique values"
            )
        return int(next(iter(ids))) if ids else None

    async def _upsert(self, call: Call) -> BatchResult:
        try:
            found = await self.find(call)
        except _Unconfirmed as exc:
            return BatchResult.all_failed(1, str(exc))
        if found is None:
            return await self.call(CREATE, call)
        return await self.call(PATCH, call, path=f"/api/v2/{call.object}/{found}")

    async def _update(self, call: Call) -> BatchResult:
        try:
            found = await self.find(call)
        except _Unconfirmed as exc:
            return BatchResult.all_failed(1, str(exc))
        if found is None:
            raise RejectedBatchError(
                f"Pipedrive has no {call.object} record whose {call.match_field} is "
                f"{call.items[0].key!r} (update changes existing records only; use upsert)"
            )
        return await self.call(PATCH, call, path=f"/api/v2/{call.object}/{found}")

    async def _delete(self, call: Call) -> BatchResult:
        try:
            found = await self.find(call)
        except _Unconfirmed as exc:
            return BatchResult.all_failed(1, str(exc))
        if found is None:
            return BatchResult()  # already gone
        response = await self.send(
            "DELETE", f"/api/v2/{call.object}/{found}", expect=frozenset({200})
        )
        if response.status in (200, 404):
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
        """Mapped fields and the match field against the object's fields in Pipedrive."""
        if object not in OBJECTS:
            return []
        book = await self.book(object)
        problems: list[str] = []
        for field in match:
            found = book.search_field(field)
            if isinstance(found, Reject):
                problems.append(f"sync {sync!r}: {found.reason}")
        for field in fields:
            problem = book.check_field(field)
            if problem is not None:
                problems.append(f"sync {sync!r}: {problem}")
        return problems


class _Unconfirmed(Exception):
    """A search answer is not the JSON Pipedrive documents: the record stays undelivered."""


def _reason(body: Any, response: Response) -> str:
    if isinstance(body, dict) and body.get("error"):
        return message_of("Pipedrive", body, code="code", message="error")
    return f"Pipedrive refused the record: {response.describe()}"


def _not_confirmed(response: Response) -> str:
    return (
        "Pipedrive's answer is not the JSON it documents, so the write is not confirmed (sent "
        f"again by the next run): {response.describe()}"
    )
