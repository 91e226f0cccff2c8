"""Stripe: customers, one per request, each with an idempotency key stable across a resend.

How a batch maps to Stripe (``docs/destinations/stripe.md`` has the user's view). Stripe
has no batch endpoint and no upsert, so every record is searched by its match value, then
written on its own (form-encoded, Stripe's bracket notation):

    upsert  -> GET /v1/customers/search?query=email:'...', then POST /v1/customers/{id},
               or POST /v1/customers when nothing is found
    insert  -> POST /v1/customers
    update  -> the search, then POST /v1/customers/{id} (not found: rejected)
    delete  -> the search, then DELETE /v1/customers/{id} (not found: accepted)

Every write carries ``Idempotency-Key: undertow-<sha256 of the sync, the operation, the
row's key, the match value, the path and the body>``: a record resent after a crash or a lost answer (the
same body) replays Stripe's first answer instead of creating a second customer; a changed
record gets a new key (reusing a key with other parameters is Stripe's 400
``idempotency_error``). Stripe keeps keys about 24 hours.

Fields: Stripe's own customer parameters (``email``, ``name``, ``address``...) as they are
(nested objects and lists in brackets), every other field into ``metadata`` as text
(at most 50 keys of 40 characters, values of 500). Budgets: the account's (100 requests/s
live, 25 in test mode, from the key's prefix), 20/s for the Search API and 25/s for each
write endpoint, each a rolling window of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote

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
    HttpConfig,
    HttpDestination,
    Reject,
    SlowDown,
    parse_json,
)
from undertow.destinations.rate import RateBudget, budget_for
from undertow.errors import FatalDeliveryError, RejectedBatchError
from undertow.redact import trim

# -- vendor limits, each next to the doc that states it ------------------------------------

RATE_DOC = "https://docs.stripe.com/rate-limits"
LIVE_PER_SECOND = 100
TEST_PER_SECOND = 25
"""Global: 100 requests per second in live mode, 25 in a sandbox / test mode; each endpoint
25 per second unless noted; the Search API 20 read requests per second.
https://docs.stripe.com/rate-limits"""
ENDPOINT_PER_SECOND = 25
SEARCH_PER_SECOND = 20
IDEMPOTENCY_DOC = "https://docs.stripe.com/api/idempotent_requests"
METADATA_DOC = "https://docs.stripe.com/api/metadata"
METADATA_KEYS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 50, 40, 500
"""Up to 50 keys, key names up to 40 characters, values up to 500 characters.
https://docs.stripe.com/api/metadata"""
SEARCH_DOC = "https://docs.stripe.com/search"
CUSTOMERS_DOC = "https://docs.stripe.com/api/customers"
DOCS = (CUSTOMERS_DOC, IDEMPOTENCY_DOC, METADATA_DOC, SEARCH_DOC, RATE_DOC)
API_VERSION = "2020-08-27"
"""The version of ../shared/specs/stripe, which the conformance tests validate against."""
RECORDS_PER_BATCH = 100

OWN = frozenset(
    {
        "address",
        "balance",
        "coupon",
        "description",
        "email",
        "invoice_prefix",
        "invoice_settings",
        "name",
        "next_invoice_sequence",
        "payment_method",
        "phone",
        "preferred_locales",
        "promotion_code",
        "shipping",
        "source",
        "tax",
        "tax_exempt",
        "tax_id_data",
        "test_clock",
    }
)
"""POST /v1/customers parameters (../shared/specs/stripe), besides ``metadata``."""
SEARCHABLE = {"email": "email", "name": "name", "phone": "phone"}
TOKEN_HINT = "check the secret key (Developers > API keys): a restricted key needs Customers write"


class StripeConfig(HttpConfig):
    """``destinations: {billing: {type: stripe, api_key: "${STRIPE_SECRET_KEY}"}}``."""

    api_key: SecretStr = Field(description="a secret (sk_) or restricted (rk_) key")
    base_url: str = "https://api.stripe.com"
    api_version: str = API_VERSION
    requests_per_second: int | None = Field(default=None, ge=1)
    """Default: 100 with a live key, 25 with a test key (Stripe's global limits)."""
    search_per_second: int = Field(default=SEARCH_PER_SECOND, ge=1)
    writes_per_second: int = Field(default=ENDPOINT_PER_SECOND, ge=1)
    """Per write endpoint (create, update, delete each have Stripe's 25/s)."""
    max_concurrency: int = Field(default=8, ge=1, le=64)


SIGNALS = (
    SlowDown(name="rate limited", default_wait=1.0),
    SlowDown(
        name="the idempotency key is in use by a request still running (409)",
        statuses=frozenset({409}),
        code_path="error.code",
        codes=frozenset({"idempotency_key_in_use"}),
        retry_after=False,
        default_wait=1.0,
        penalize=False,
    ),
)


def form(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Stripe's form encoding: ``a[b]=1``, lists ``a[0]=x``, booleans ``true``, null ``""``."""
    if isinstance(value, dict):
        pairs: list[tuple[str, str]] = []
        for key, inner in value.items():
            pairs += form(inner, f"{prefix}[{key}]" if prefix else str(key))
        return pairs
    if isinstance(value, list):
        if not value:
            return [(prefix, "")]
        return [p for n, inner in enumerate(value) for p in form(inner, f"{prefix}[{n}]")]
    if value is None:
        return [(prefix, "")]
    if isinstance(value, bool):
        return [(prefix, "true" if value else "false")]
    return [(prefix, str(value))]


def encode(body: dict[str, Any]) -> bytes:
    return "&".join(f"{quote(k, safe='[]')}={quote(v, safe='')}" for k, v in form(body)).encode()


class StripeDestination(HttpDestination[StripeConfig]):
    """Customers of a Stripe account, one idempotent request at a time."""

    name = "stripe"
    vendor = "Stripe"
    objects = ("customers",)
    fake = "undertow.testing.stripe:StripeFake"
    docs_url = CUSTOMERS_DOC
    capabilities = Capabilities(
        operations=frozenset(
            {Operation.UPSERT, Operation.INSERT, Operation.UPDATE, Operation.DELETE}
        ),
        max_batch_size=RECORDS_PER_BATCH,
        one_per_request=True,
        max_concurrency=8,
        rate_limit=RateLimit(TEST_PER_SECOND, 1.0, RATE_DOC),
        per_record_results=True,
        idempotency_key=True,
        requires_match=True,
        match=MatchRule.exactly_one(example="match: {email: email}"),
        docs=DOCS,
        cite={
            "rate_limit": RATE_DOC,
            "idempotency_key": IDEMPOTENCY_DOC,
            "match": SEARCH_DOC,
            "max_batch_size": CUSTOMERS_DOC,
        },
    )
    signals = SIGNALS
    auth_hint = TOKEN_HINT
    demo = DemoProfile(
        destination="""\
type: stripe
api_key: ${FAKE_TOKEN}
base_url: ${FAKE_URL}
requests_per_second: 3000   # the local fake's demo limit; Stripe: 25 (test), 100 (live)
search_per_second: 1500     # the local fake's demo limit; Stripe: 20
writes_per_second: 1500     # the local fake's demo limit; Stripe: 25 per endpoint
max_concurrency: 16         # for the local fake""",
        sync="""\
object: customers
mode: upsert
match: {email: email}
mappings:
  email: email
  name: {template: "{{ first_name }} {{ last_name }}"}
  address: {object: {country: country}}
  plan: plan                            # not a customer parameter: metadata[plan]
  seats: seats
  mrr: mrr""",
        token="sk_test_demo0000000000000000",
        fake_options={
            "requests_per_second": 4000,
            "search_per_second": 2000,
            "endpoint_per_second": 2000,
        },
    )

    def __init__(self, config: Any, *, name: str) -> None:
        super().__init__(config, name=name)
        self._budgets: dict[str, RateBudget] = {}

    def make_auth(self) -> Auth:
        return BearerAuth(self.config.api_key.get_secret_value())

    def default_headers(self) -> dict[str, str]:
        return {"Stripe-Version": self.config.api_version}

    @property
    def live(self) -> bool:
        return self.config.api_key.get_secret_value().startswith(("sk_live_", "rk_live_"))

    def capabilities_for(self, object: str | None) -> Capabilities:
        default = LIVE_PER_SECOND if self.live else TEST_PER_SECOND
        rate = self.config.requests_per_second or default
        return replace(
            self.capabilities,
            max_concurrency=self.config.max_concurrency,
            rate_limit=RateLimit(rate, 1.0, RATE_DOC),
        )

    def endpoint_budget(self, name: str) -> RateBudget:
        """The rolling window of one Stripe endpoint (search, create, update, delete)."""
        if name not in self._budgets:
            per = (
                self.config.search_per_second if name == "search" else self.config.writes_per_second
            )
            limit = RateLimit(per, 1.0, RATE_DOC)
            self._budgets[name] = budget_for(f"{self.account_key()}:{name}", (limit,))
        return self._budgets[name]

    # -- check -----------------------------------------------------------------------------

    async def check(self) -> None:
        response = await self._search("email:'check@undertow.invalid'", 1)
        if response.status != 200:
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} (stripe): unexpected answer to the "
                f"check: {response.describe()}",
                hint="check base_url; it should be https://api.stripe.com",
            )

    # -- write -----------------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> BatchResult:
        if batch.object not in (self.objects or ()):
            raise self.unknown_object(batch)
        work = {
            Operation.UPSERT: self._upsert,
            Operation.INSERT: self._insert,
            Operation.UPDATE: self._update,
            Operation.DELETE: self._delete,
        }.get(batch.operation)
        if work is None:
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: destination {self.instance_name!r} (stripe) cannot "
                f"{batch.operation.value} customers",
                hint="use upsert, insert, update or mirror",
            )
        match_field = self.match_field(batch)
        result = BatchResult()
        items = self.items(batch, match_field, result)
        if items:
            await self.each(
                Call(batch, items, batch.object, match_field, self.vendor), result, work
            )
        return result

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        if batch.operation is Operation.DELETE:
            return {}
        body: dict[str, Any] = {}
        metadata: dict[str, str] = {}
        match_field = next(iter(batch.identifiers), None)
        if key is not None and match_field is not None and match_field not in record:
            record = {**record, match_field: key}
        for field, value in record.items():
            if field in OWN:
                body[field] = value
                continue
            if field == "metadata" and isinstance(value, dict):
                items = list(value.items())
            else:
                items = [(field, value)]
            for name, inner in items:
                if isinstance(inner, dict | list):
                    return Reject(f"field {name!r} is nested; Stripe metadata values are text")
                text = (
                    ""
                    if inner is None
                    else ("true" if inner is True else "false" if inner is False else str(inner))
                )
                if len(name) > METADATA_KEY_CHARS:
                    return Reject(
                        f"metadata key {name!r} is longer than Stripe's {METADATA_KEY_CHARS} characters"
                    )
                if len(text) > METADATA_VALUE_CHARS:
                    return Reject(
                        f"metadata {name!r} is longer than Stripe's {METADATA_VALUE_CHARS} characters"
                    )
                metadata[name] = text
        if len(metadata) > METADATA_KEYS:
            return Reject(f"{len(metadata)} metadata keys; Stripe allows {METADATA_KEYS}")
        if metadata:
            body["metadata"] = metadata
        return body

    def idempotency_key(self, call: Call, path: str, body: bytes) -> str:
        """Stable across a resend of the same row; new when the row's record changes."""
        item = call.items[0]
        row = call.batch.keys[item.index] if item.index < len(call.batch.keys) else ""
        parts = [
            call.batch.sync,
            str(call.object),
            call.batch.operation.value,
            row,
            str(call.match_field),
            str(item.key),
            path,
        ]
        digest = hashlib.sha256("\0".join(parts).encode() + b"\0" + body).hexdigest()
        return f"undertow-{digest[:40]}"

    async def _search(self, query: str, limit: int) -> Response:
        return await self.send(
            "GET",
            "/v1/customers/search",
            params={"query": query, "limit": str(limit)},
            content_type=None,
            expect=frozenset({200}),
            also=self.endpoint_budget("search"),
        )

    async def find(self, call: Call) -> str | None:
        """The id of the customer whose match field holds the call's value, or None."""
        field, value = str(call.match_field), str(call.items[0].key).replace("'", "\\'")
        clause = (
            f"{SEARCHABLE[field]}:'{value}'"
            if field in SEARCHABLE
            else f"metadata['{field}']:'{value}'"
        )
        response = await self._search(clause, 2)
        body = parse_json(response)
        if response.status != 200:
            raise RejectedBatchError(_reason(body, response))
        found = body.get("data") if isinstance(body, dict) else None
        if not isinstance(found, list):
            raise _Unconfirmed(_not_confirmed(response))
        if len(found) > 1:
            raise RejectedBatchError(
                f"Stripe has more than one customer whose {field} is {call.items[0].key!r}; "
                "match on a field with unique values (a metadata key holding your id)"
            )
        return str(found[0]["id"]) if found else None

    async def write(self, call: Call, method: str, path: str, budget: str) -> BatchResult:
        body = b"" if method == "DELETE" else encode(call.items[0].body)
        response = await self.send(
            method,
            path,
            body=body or None,
            headers={"Idempotency-Key": self.idempotency_key(call, path, body)}
            if method == "POST"
            else None,
            content_type="application/x-www-form-urlencoded" if body else None,
            expect=frozenset({200}),
            also=self.endpoint_budget(budget),
        )
        parsed = parse_json(response)
        if response.status == 200:
            if not isinstance(parsed, dict) or parsed.get("object") != "customer":
                return BatchResult.all_failed(1, _not_confirmed(response))
            return BatchResult()
        if method == "DELETE" and response.status == 404:
            return BatchResult()  # deleted meanwhile
        raise RejectedBatchError(_reason(parsed, response))

    async def _insert(self, call: Call) -> BatchResult:
        return await self.write(call, "POST", "/v1/customers", "create")

    async def _upsert(self, call: Call) -> BatchResult:
        try:
            found = await self.find(call)
        except _Unconfirmed as exc:
            return BatchResult.all_failed(1, str(exc))
        if found is None:
            return await self.write(call, "POST", "/v1/customers", "create")
        return await self.write(call, "POST", f"/v1/customers/{found}", "update")

    async def _update(self, call: Call) -> BatchResult:
        try:
            found = await self.find(call)
        except _Unconfirmed as exc:
            return BatchResult.all_failed(1, str(exc))
        if found is None:
            raise RejectedBatchError(
                f"Stripe has no customer whose {call.match_field} is {call.items[0].key!r} "
                "(update changes existing customers only; use upsert)"
            )
        return await self.write(call, "POST", f"/v1/customers/{found}", "update")

    async def _delete(self, call: Call) -> BatchResult:
        try:
            found = await self.find(call)
        except _Unconfirmed as exc:
            return BatchResult.all_failed(1, str(exc))
        if found is None:
            return BatchResult()  # already gone
        return await self.write(call, "DELETE", f"/v1/customers/{found}", "delete")

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
        """Stripe publishes no schema of its customers to read: the checks are its stated
        limits (metadata keys), against the fields the sync maps."""
        extra = [f for f in fields if f not in OWN and f != "metadata"]
        problems = [
            f"sync {sync!r}: metadata key {f!r} is longer than Stripe's {METADATA_KEY_CHARS} "
            "characters"
            for f in extra
            if len(f) > METADATA_KEY_CHARS
        ]
        if len(extra) > METADATA_KEYS:
            problems.append(
                f"sync {sync!r}: {len(extra)} fields go to metadata; Stripe allows {METADATA_KEYS}"
            )
        return problems


class _Unconfirmed(Exception):
    """A search answer is not the JSON Stripe documents: the record stays undelivered."""


def _reason(body: Any, response: Response) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        code = error.get("code") or error.get("type") or ""
        param = f" (param {error['param']})" if error.get("param") else ""
        return trim(f"Stripe {code}: {error['message']}{param}", 500)
    return f"Stripe refused the record: {response.describe()}"


def _not_confirmed(response: Response) -> str:
    return (
        "Stripe's answer is not the JSON it documents, so the write is not confirmed (sent "
        f"again by the next run): {response.describe()}"
    )
