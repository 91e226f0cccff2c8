"""A faithful local fake of Stripe's customers API (API version 2020-08-27).

Used by the connector tests, the OpenAPI conformance tests (every answer is validated
against ``../shared/specs/stripe``), ``undertow demo --destination stripe`` and ``undertow
fake stripe``. It answers like the spec file and SOURCE.txt say:

* ``Authorization: Bearer <secret key>`` or ``Basic base64(<key>:)``; otherwise a 401
  ``invalid_request_error``. Test keys (``sk_test_``) give ``livemode: false``.
* Form-encoded bodies in bracket notation (``metadata[plan]=pro``, ``address[city]=x``):
  ``POST /v1/customers`` creates, ``POST /v1/customers/{id}`` updates (an empty value
  unsets), ``GET`` reads, ``DELETE`` answers a ``deleted_customer``; an unknown parameter,
  an invalid email or metadata past Stripe's limits is a 400 naming the ``param``; an
  unknown id is a 404 ``resource_missing``.
* ``Idempotency-Key`` on POSTs: the same key with the same parameters replays the first
  answer (``Idempotent-Replayed: true``) and applies nothing; with other parameters it is
  a 400 ``idempotency_error``.
* ``GET /v1/customers/search?query=`` with ``field:'value'`` clauses (email, name, phone,
  ``metadata['key']``) joined by AND; ``search_lag`` seconds model Stripe's "searchable in
  less than a minute" (0 by default).
* Rolling one-second windows: the account's (``requests_per_second``, 25: test mode), each
  endpoint's (25) and the Search API's (20), answered with a 429 ``rate_limit``.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.conformance import brackets as unflatten
from undertow.testing.fakes import CapturedRequest, FakeAPI, RecordStore, Window
from undertow.testing.faults import FaultPlan, Ledger

PARAMS = {
    "address",
    "balance",
    "coupon",
    "description",
    "email",
    "expand",
    "invoice_prefix",
    "invoice_settings",
    "metadata",
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
MAX_LENGTH = {"email": 512, "name": 256, "phone": 20, "description": 5000}
ADDRESS = {"city", "country", "line1", "line2", "postal_code", "state"}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CLAUSE = re.compile(r"^\s*(?:(email|name|phone)|metadata\['([^']+)'\]):'((?:[^'\\]|\\.)*)'\s*$")
DOCS = "https://stripe.com/docs/error-codes"


class _Refused(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.kind = (
            status,
            code,
            message,
            param,
            kind,
        )


class StripeFake(FakeAPI):
    """An in-memory Stripe account served as a Starlette app (``.app``)."""

    type = "stripe"
    vendor = "Stripe"
    request_id_header = "request-id"

    def __init__(
        self,
        token: str = "sk_test_demo0000000000000000",
        *,
        requests_per_second: int = 25,
        endpoint_per_second: int = 25,
        search_per_second: int = 20,
        window_seconds: float = 1.0,
        search_lag: float = 0.0,
        fault_plan: FaultPlan | None = None,
        ledger: Ledger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token = token
        self.search_lag = search_lag
        self.account = Window(requests_per_second, window_seconds, "account")
        self.search = Window(search_per_second, window_seconds, "search")
        self.endpoints = {
            name: Window(endpoint_per_second, window_seconds, name)
            for name in ("create", "update", "delete", "retrieve")
        }
        self.customers = RecordStore(caseless=())
        self.indexed_at: dict[str, float] = {}
        self.idempotency: dict[str, tuple[bytes, int, bytes]] = {}
        self.replays = 0
        windows = [self.account, self.search, *self.endpoints.values()]
        super().__init__(
            auth=self._authorized,
            windows=windows,
            fault_plan=fault_plan,
            ledger=ledger,
            clock=clock,
        )

    def _authorized(self, request: Request) -> bool:
        given = request.headers.get("authorization", "")
        basic = "Basic " + base64.b64encode(f"{self.token}:".encode()).decode()
        return given in (f"Bearer {self.token}", basic)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/customers", self._create, methods=["POST"]),
            Route("/v1/customers/search", self._search, methods=["GET"]),
            Route("/v1/customers/{customer}", self._customer, methods=["GET", "POST", "DELETE"]),
        ]

    def by(self, field: str, value: Any) -> dict[str, Any] | None:
        """A customer whose ``field`` (or ``metadata.<key>``) is ``value``, as Stripe shows it."""
        for customer_id, fields in self.customers.items():
            held = (
                fields.get("metadata", {}).get(field[9:])
                if field.startswith("metadata.")
                else fields.get(field)
            )
            if held == value:
                return self._public(customer_id)
        return None

    def reset(self) -> None:
        with self._lock:
            super().reset()
            self.customers = RecordStore(caseless=())
            self.idempotency.clear()
            self.indexed_at.clear()

    # -- the vendor's answers ----------------------------------------------------------------

    def error(
        self,
        status: int,
        code: str | None,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> Response:
        error: dict[str, Any] = {"type": kind, "message": message}
        if code:
            error["code"] = code
            error["doc_url"] = f"{DOCS}#{code.replace('_', '-')}"
        if param:
            error["param"] = param
        return self.respond(status, {"error": error}, headers)

    def unauthorized(self, captured: CapturedRequest) -> Response:
        return self.error(
            401,
            None,
            "Invalid API Key provided: " + ("sk_****" if captured.credentials else "none"),
        )

    def slow_down(self, window: Window | None) -> Response:
        what = f" on {window.name}" if window is not None else ""
        return self.error(
            429,
            "rate_limit",
            f"Request rate limit exceeded{what}. Learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.",
            headers={"Stripe-Should-Retry": "true"},
        )

    def windows_for(self, captured: CapturedRequest) -> Sequence[Window]:
        path, method = captured.path, captured.method
        if path.endswith("/search"):
            return [self.account, self.search]
        if path == "/v1/customers":
            return [self.account, self.endpoints["create"]]
        kind = {"POST": "update", "DELETE": "delete"}.get(method, "retrieve")
        return [self.account, self.endpoints[kind]]

    # -- endpoints -------------------------------------------------------------------------

    async def _create(self, request: Request) -> Response:
        return await self._write(request, None)

    async def _customer(self, request: Request) -> Response:
        customer_id = request.path_params["customer"]
        if request.method == "POST":
            return await self._write(request, customer_id)
        _, early = await self.admit(request)
        if early is not None:
            return early
        with self._lock:
            if customer_id not in self.customers:
                return self._missing(customer_id)
            if request.method == "GET":
                return self.respond(200, self._public(customer_id))
            self.customers.archive(customer_id)
            self.indexed_at.pop(customer_id, None)
        if self.ledger is not None:
            self.ledger.apply("delete", {"id": customer_id})
        return self.respond(200, {"id": customer_id, "object": "customer", "deleted": True})

    def _missing(self, customer_id: str) -> Response:
        return self.error(404, "resource_missing", f"No such customer: '{customer_id}'", "id")

    async def _write(self, request: Request, customer_id: str | None) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        self.note_batch(1)
        key = request.headers.get("idempotency-key")
        identity = captured.path.encode() + b"?" + captured.raw
        with self._lock:
            if key is not None and key in self.idempotency:
                first, status, body = self.idempotency[key]
                if first != identity:
                    return self.error(
                        400,
                        None,
                        "Keys for idempotent requests can only be used with "
                        "the same parameters they were first used with. Try using a key "
                        "other than '" + key + "' if you meant to execute a different "
                        "request.",
                        kind="idempotency_error",
                    )
                self.replays += 1
                return Response(
                    body,
                    status_code=status,
                    media_type="application/json",
                    headers={**self.headers(), "Idempotent-Replayed": "true"},
                )
        fate = self.decide(captured.raw, 1)
        if not fate.applies:
            return fate.refusal(
                orjson.dumps({"error": {"type": "api_error", "message": "injected fault"}})
            )
        await fate.before()
        try:
            params = unflatten(parse_qsl(captured.raw.decode(), keep_blank_values=True))
            with self._lock:
                fields = self._check(params)
                if customer_id is None:
                    customer_id = self.customers.create(
                        self._fresh(fields), object_id="cus_" + secrets.token_hex(7)
                    )
                    operation = "create"
                else:
                    if customer_id not in self.customers:
                        raise _Refused(
                            404, "resource_missing", f"No such customer: '{customer_id}'", "id"
                        )
                    self.customers.modify(
                        customer_id, self._merged(self.customers[customer_id], fields)
                    )
                    operation = "update"
                self.indexed_at[customer_id] = time.monotonic() + self.search_lag
                public = self._public(customer_id)
                answer = self.respond(200, public)
                if key is not None:
                    self.idempotency[key] = (identity, 200, bytes(answer.body))
        except _Refused as refused:
            return self.error(
                refused.status, refused.code, refused.message, refused.param, refused.kind
            )
        if self.ledger is not None:
            self.ledger.apply(operation, public)
        return await fate.answer(answer)

    async def _search(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        query = request.query_params.get("query")
        if not query:
            return self.error(400, "parameter_missing", "Missing required param: query.", "query")
        clauses = []
        for part in re.split(r"\s+AND\s+", query):
            found = _CLAUSE.match(part)
            if found is None:
                return self.error(
                    400,
                    "parameter_invalid_string",
                    f"This fake understands field:'value' clauses joined by AND, not {part!r}",
                    "query",
                )
            clauses.append((found.group(1), found.group(2), found.group(3).replace("\\'", "'")))
        limit = int(request.query_params.get("limit", "10"))
        now = time.monotonic()
        with self._lock:
            hits = [
                cid
                for cid, fields in self.customers.items()
                if self.indexed_at.get(cid, 0.0) <= now and all(_holds(fields, c) for c in clauses)
            ]
            data = [self._public(cid) for cid in hits[:limit]]
        return self.respond(
            200,
            {
                "object": "search_result",
                "url": "/v1/customers/search",
                "has_more": len(hits) > limit,
                "next_page": None,
                "total_count": len(hits),
                "data": data,
            },
        )

    # -- the account -----------------------------------------------------------------------

    def _check(self, params: dict[str, Any]) -> dict[str, Any]:
        for name in params:
            if name not in PARAMS:
                raise _Refused(
                    400, "parameter_unknown", f"Received unknown parameter: {name}", name
                )
        for name, limit in MAX_LENGTH.items():
            if isinstance(params.get(name), str) and len(params[name]) > limit:
                raise _Refused(
                    400,
                    "string_length_exceeds_maximum",
                    f"Invalid string: {params[name][:20]}...; must be at most {limit} characters",
                    name,
                )
        email = params.get("email")
        if email and not _EMAIL.match(str(email)):
            raise _Refused(400, "email_invalid", f"Invalid email address: {email}", "email")
        address = params.get("address")
        if isinstance(address, dict):
            for part in address:
                if part not in ADDRESS:
                    raise _Refused(
                        400,
                        "parameter_unknown",
                        f"Received unknown parameter: address[{part}]",
                        f"address[{part}]",
                    )
        metadata = params.get("metadata") or {}
        if isinstance(metadata, dict):
            if len(metadata) > 50:
                raise _Refused(
                    400, "parameter_invalid_empty", "Metadata can have up to 50 keys", "metadata"
                )
            for name, value in metadata.items():
                if len(name) > 40:
                    raise _Refused(
                        400,
                        "parameter_invalid_string_blank",
                        f"Metadata key {name[:40]}... is longer than 40 characters",
                        f"metadata[{name}]",
                    )
                if len(str(value)) > 500:
                    raise _Refused(
                        400,
                        "parameter_invalid_string_blank",
                        f"Metadata values can have up to 500 characters: {name}",
                        f"metadata[{name}]",
                    )
        if "balance" in params and params["balance"] != "":
            try:
                params["balance"] = int(params["balance"])
            except ValueError:
                raise _Refused(
                    400,
                    "parameter_invalid_integer",
                    "Invalid integer: " + params["balance"],
                    "balance",
                ) from None
        return params

    def _fresh(self, fields: dict[str, Any]) -> dict[str, Any]:
        live = self.token.startswith(("sk_live_", "rk_live_"))
        base = {
            "created": int(time.time()),
            "livemode": live,
            "metadata": {},
            "invoice_prefix": secrets.token_hex(4).upper()[:7],
        }
        return self._merged(base, fields)

    @staticmethod
    def _merged(current: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        merged = dict(current)
        for name, value in fields.items():
            if name == "metadata":
                meta = dict(merged.get("metadata") or {})
                for key, inner in (value or {}).items() if isinstance(value, dict) else ():
                    if inner == "":
                        meta.pop(key, None)
                    else:
                        meta[key] = str(inner)
                if value == "":
                    meta = {}
                merged["metadata"] = meta
            elif value == "":
                merged[name] = None
            else:
                merged[name] = value
        return merged

    def _public(self, customer_id: str) -> dict[str, Any]:
        c = self.customers[customer_id]
        address = c.get("address")
        if isinstance(address, dict):
            address = {k: address.get(k) for k in sorted(ADDRESS)}
        return {
            "id": customer_id,
            "object": "customer",
            "address": address,
            "balance": c.get("balance") or 0,
            "created": c["created"],
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": c.get("description"),
            "discount": None,
            "email": c.get("email"),
            "invoice_prefix": c["invoice_prefix"],
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
            },
            "livemode": c["livemode"],
            "metadata": dict(c.get("metadata") or {}),
            "name": c.get("name"),
            "next_invoice_sequence": 1,
            "phone": c.get("phone"),
            "preferred_locales": list(c.get("preferred_locales") or []),
            "shipping": None,
            "tax_exempt": c.get("tax_exempt") or "none",
            "test_clock": None,
        }


def _holds(fields: dict[str, Any], clause: tuple[str | None, str | None, str]) -> bool:
    field, meta, value = clause
    held = (fields.get("metadata") or {}).get(meta) if meta else fields.get(str(field))
    if held is None:
        return False
    return str(held).casefold() == value.casefold() if field == "email" else str(held) == value
