"""A faithful local fake of Intercom's REST API 2.14: contacts, companies, data attributes.

Used by the connector tests, the OpenAPI conformance tests (every answer is validated
against ``../shared/specs/intercom``), ``undertow demo --destination intercom`` and
``undertow fake intercom``. It answers like the spec file and SOURCE.txt say:

* ``Authorization: Bearer <token>``; anything else is a 401 ``error.list``
  (``unauthorized``, "Access Token Invalid").
* ``POST /contacts`` needs an email, an external_id or a role; a *user* with the email or
  external_id of another user is a 409 ``conflict`` ("A contact matching those details
  already exists with id=..."), as SOURCE.txt states. ``PUT``/``GET``/``DELETE
  /contacts/{id}`` (unknown id: 404 ``not_found``), ``POST /contacts/search`` (one filter,
  ``=`` on email, external_id, id, role), ``POST /companies`` creates or updates on
  ``company_id``. Bodies and answers follow the file's schemas.
* ``custom_attributes`` must name data attributes the workspace has (``GET
  /data_attributes?model=contact|company``), with a value of their type; otherwise 400.
* One rolling 10-second window (1,666 calls: 10,000 a minute, Intercom's private-app
  default); ``X-RateLimit-Limit``/``-Remaining``/``-Reset`` (Unix seconds) on every
  authenticated answer, 429 ``rate_limit_exceeded`` without ``Retry-After``.

The default workspace has the custom attributes the demo maps (``DEMO_ATTRIBUTES``).
"""

from __future__ import annotations

import math
import re
import secrets
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import CapturedRequest, FakeAPI, RecordStore, Window, bearer
from undertow.testing.faults import FaultPlan, Ledger

WORKSPACE = "undertowfake"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
CONTACT_KEYS = {
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
    "custom_attributes",
}
COMPANY_KEYS = {
    "name",
    "company_id",
    "plan",
    "size",
    "website",
    "industry",
    "custom_attributes",
    "remote_created_at",
    "monthly_spend",
}
DEMO_ATTRIBUTES: dict[str, dict[str, str]] = {
    "contact": {
        "plan": "string",
        "seats": "integer",
        "mrr": "float",
        "country": "string",
        "vip": "boolean",
        "trial_ends_at": "date",
    },
    "company": {"tier": "string", "arr": "float"},
}
_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "date": lambda v: isinstance(v, int) and not isinstance(v, bool),
}


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def _id() -> str:
    return secrets.token_hex(12)


def _fold(field: str, value: Any) -> str:
    return str(value).casefold() if field == "email" else str(value)


def _list(url: str) -> dict[str, Any]:
    return {"type": "list", "data": [], "url": url, "total_count": 0, "has_more": False}


class IntercomFake(FakeAPI):
    """An in-memory Intercom workspace served as a Starlette app (``.app``)."""

    type = "intercom"
    vendor = "Intercom"
    request_id_header = "x-request-id"

    def __init__(
        self,
        token: str = "demo-token",
        *,
        calls_per_10s: int = 1666,
        window_seconds: float = 10.0,
        attributes: dict[str, dict[str, str]] | None = None,
        fault_plan: FaultPlan | None = None,
        ledger: Ledger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = Window(calls_per_10s, window_seconds, "10_seconds")
        self.attributes = {m: dict(a) for m, a in DEMO_ATTRIBUTES.items()}
        for model, extra in (attributes or {}).items():
            self.attributes.setdefault(model, {}).update(extra)
        self.contacts = RecordStore(caseless=("email",))
        self.companies = RecordStore(caseless=())
        super().__init__(
            auth=bearer(token),
            windows=[self.window],
            fault_plan=fault_plan,
            ledger=ledger,
            clock=clock,
        )

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/contacts", self._create, methods=["POST"]),
            Route("/contacts/search", self._search, methods=["POST"]),
            Route("/contacts/{contact_id}", self._contact, methods=["GET", "PUT", "DELETE"]),
            Route("/companies", self._company, methods=["POST"]),
            Route("/data_attributes", self._data_attributes, methods=["GET"]),
        ]

    def reset(self) -> None:
        with self._lock:
            super().reset()
            self.contacts = RecordStore(caseless=("email",))
            self.companies = RecordStore(caseless=())

    # -- the vendor's answers ----------------------------------------------------------------

    def error(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        entry: dict[str, Any] = {"code": code, "message": message}
        if field is not None:
            entry["field"] = field
        body = {"type": "error.list", "request_id": str(uuid.uuid4()), "errors": [entry]}
        return self.respond(status, body, headers)

    def unauthorized(self, captured: CapturedRequest) -> Response:
        return self.error(401, "unauthorized", "Access Token Invalid")

    def slow_down(self, window: Window | None) -> Response:
        return self.error(
            429,
            "rate_limit_exceeded",
            f"Exceeded rate limit of {self.window.limit} in 10_seconds",
            headers=self._limits(remaining=0),
        )

    def headers(self) -> dict[str, str]:
        return self._limits()

    def _limits(self, *, remaining: int | None = None) -> dict[str, str]:
        now = self.clock()
        left = self.window.remaining(now) if remaining is None else remaining
        reset = math.ceil(time.time() + self.window.reset_in(now))
        return {
            "X-RateLimit-Limit": str(self.window.limit),
            "X-RateLimit-Remaining": str(left),
            "X-RateLimit-Reset": str(reset),
        }

    def gate(self, captured: CapturedRequest) -> Response | None:
        answer = super().gate(captured)
        if answer is not None and answer.status_code == 401:
            for name in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
                del answer.headers[name]  # "not sent when the request has no valid credentials"
        return answer

    # -- endpoints -------------------------------------------------------------------------

    async def _create(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        self.note_batch(1)
        fate = self.decide(captured.raw, 1)
        if not fate.applies:
            return fate.refusal()
        await fate.before()
        try:
            with self._lock:
                body = self._body(captured.body, CONTACT_KEYS, "contact")
                if not any(body.get(k) for k in ("email", "external_id", "role")):
                    raise _Refused(
                        400, "parameter_not_found", "email, external_id or role is required"
                    )
                role = body.get("role", "user")
                if role not in ("user", "lead"):
                    raise _Refused(400, "parameter_invalid", "role must be user or lead", "role")
                if role == "user":
                    for key in ("email", "external_id"):
                        held = self.contacts.find(key, body.get(key))
                        if held is not None and self.contacts[held].get("role") == "user":
                            raise _Refused(
                                409,
                                "conflict",
                                f"A contact matching those details already exists with id={held}",
                            )
                stamp = int(time.time())
                contact_id = self.contacts.create(
                    {**body, "role": role, "created_at": stamp, "updated_at": stamp},
                    object_id=_id(),
                )
                answer = self._applied(self.contacts, contact_id, "create")
        except _Refused as refused:
            return self.error(refused.status, refused.code, refused.message, refused.field)
        return await fate.answer(answer)

    async def _contact(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        contact_id = request.path_params["contact_id"]
        try:
            with self._lock:
                if contact_id not in self.contacts:
                    raise _Refused(404, "not_found", "User Not Found")
                if request.method == "GET":
                    return self.respond(200, self._contact_json(contact_id))
                if request.method == "DELETE":
                    external = self.contacts[contact_id].get("external_id")
                    self.contacts.archive(contact_id)
                    if self.ledger is not None:
                        self.ledger.apply("delete", {"id": contact_id})
                    return self.respond(
                        200,
                        {
                            "type": "contact",
                            "id": contact_id,
                            "external_id": external,
                            "deleted": True,
                        },
                    )
                self.note_batch(1)
                body = self._body(captured.body, CONTACT_KEYS, "contact")
                for key in ("email", "external_id"):
                    held = self.contacts.find(key, body.get(key))
                    if held not in (None, contact_id):
                        raise _Refused(
                            409,
                            "conflict",
                            f"A contact matching those details already exists with id={held}",
                        )
                current = self.contacts[contact_id]
                custom = {
                    **current.get("custom_attributes", {}),
                    **body.pop("custom_attributes", {}),
                }
                self.contacts.modify(
                    contact_id,
                    {**body, "custom_attributes": custom, "updated_at": int(time.time())},
                )
                return self._applied(self.contacts, contact_id, "update")
        except _Refused as refused:
            return self.error(refused.status, refused.code, refused.message, refused.field)

    async def _search(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        body = captured.body if isinstance(captured.body, dict) else {}
        query = body.get("query") if isinstance(body.get("query"), dict) else None
        if query is None or query.get("operator") != "=" or "field" not in query:
            return self.error(400, "query_invalid", "This fake searches one field with '='")
        field, value = str(query["field"]), query.get("value")
        per_page = int((body.get("pagination") or {}).get("per_page") or 50)
        with self._lock:
            if field == "id":
                ids = [value] if value in self.contacts else []
            elif field in ("email", "external_id", "role", "name", "phone"):
                wanted = _fold(field, value)
                ids = [
                    i
                    for i, c in self.contacts.items()
                    if value is not None and _fold(field, c.get(field)) == wanted
                ]
            else:
                return self.error(400, "query_invalid", f"{field} is not a searchable field")
            data = [self._contact_json(i) for i in ids[:per_page]]
        pages = {
            "type": "pages",
            "page": 1,
            "per_page": per_page,
            "total_pages": math.ceil(len(ids) / per_page) if ids else 0,
        }
        return self.respond(
            200, {"type": "list", "data": data, "total_count": len(ids), "pages": pages}
        )

    async def _company(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        self.note_batch(1)
        fate = self.decide(captured.raw, 1)
        if not fate.applies:
            return fate.refusal()
        await fate.before()
        try:
            with self._lock:
                body = self._body(captured.body, COMPANY_KEYS, "company")
                if not isinstance(body.get("company_id"), str) or not body["company_id"]:
                    raise _Refused(
                        400, "parameter_not_found", "company_id not specified", "company_id"
                    )
                stamp = int(time.time())
                held = self.companies.find("company_id", body["company_id"])
                if held is None:
                    held = self.companies.create(
                        {**body, "created_at": stamp, "updated_at": stamp}, object_id=_id()
                    )
                    operation = "create"
                else:
                    current = self.companies[held]
                    custom = {
                        **current.get("custom_attributes", {}),
                        **body.pop("custom_attributes", {}),
                    }
                    self.companies.modify(
                        held, {**body, "custom_attributes": custom, "updated_at": stamp}
                    )
                    operation = "update"
                answer = self._applied(self.companies, held, operation)
        except _Refused as refused:
            return self.error(refused.status, refused.code, refused.message, refused.field)
        return await fate.answer(answer)

    async def _data_attributes(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        model = request.query_params.get("model", "contact")
        if model not in self.attributes:
            return self.error(400, "parameter_invalid", "model must be contact or company", "model")
        data = [
            {
                "type": "data_attribute",
                "name": name,
                "full_name": f"custom_attributes.{name}",
                "label": name,
                "description": "",
                "data_type": kind,
                "api_writable": True,
                "ui_writable": True,
                "custom": True,
                "archived": False,
                "model": model,
            }
            for name, kind in self.attributes[model].items()
        ]
        return self.respond(200, {"type": "list", "data": data})

    # -- the workspace ---------------------------------------------------------------------

    def _body(self, body: Any, keys: set[str], model: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _Refused(400, "parameter_invalid", "the body must be a JSON object")
        unknown = sorted(set(body) - keys)
        if unknown:
            raise _Refused(400, "parameter_invalid", f"unknown parameter {unknown[0]}", unknown[0])
        email = body.get("email")
        if email is not None and (not isinstance(email, str) or not _EMAIL.match(email)):
            raise _Refused(400, "parameter_invalid", f"Invalid email address: {email}", "email")
        custom = body.get("custom_attributes") or {}
        if not isinstance(custom, dict):
            raise _Refused(400, "parameter_invalid", "custom_attributes must be an object")
        for name, value in custom.items():
            kind = self.attributes[model].get(name)
            if kind is None:
                raise _Refused(
                    400, "parameter_invalid", f"Custom attribute '{name}' does not exist"
                )
            if value is not None and not _TYPES[kind](value):
                raise _Refused(
                    400,
                    "parameter_invalid",
                    f"Custom attribute '{name}' must be of type {kind}, got {value!r}",
                )
        return {k: v for k, v in body.items()}

    def _contact_json(self, contact_id: str) -> dict[str, Any]:
        c = self.contacts[contact_id]
        email = c.get("email")
        return {
            "type": "contact",
            "id": contact_id,
            "workspace_id": WORKSPACE,
            "external_id": c.get("external_id"),
            "role": c["role"],
            "email": email or "",
            "email_domain": email.partition("@")[2] if email else "",
            "phone": c.get("phone"),
            "name": c.get("name"),
            "owner_id": c.get("owner_id"),
            "has_hard_bounced": False,
            "marked_email_as_spam": False,
            "unsubscribed_from_emails": bool(c.get("unsubscribed_from_emails")),
            "created_at": c["created_at"],
            "updated_at": c["updated_at"],
            "signed_up_at": c.get("signed_up_at"),
            "last_seen_at": c.get("last_seen_at"),
            "last_replied_at": None,
            "last_contacted_at": None,
            "last_email_opened_at": None,
            "last_email_clicked_at": None,
            "language_override": None,
            "browser": None,
            "browser_version": None,
            "browser_language": None,
            "os": None,
            "android_app_name": None,
            "android_app_version": None,
            "android_device": None,
            "android_os_version": None,
            "android_sdk_version": None,
            "android_last_seen_at": None,
            "ios_app_name": None,
            "ios_app_version": None,
            "ios_device": None,
            "ios_os_version": None,
            "ios_sdk_version": None,
            "ios_last_seen_at": None,
            "custom_attributes": dict(c.get("custom_attributes") or {}),
            "avatar": None,
            "tags": _list(f"/contacts/{contact_id}/tags"),
            "notes": _list(f"/contacts/{contact_id}/notes"),
            "companies": _list(f"/contacts/{contact_id}/companies"),
            "location": {"type": "location", "country": None, "region": None, "city": None},
            "social_profiles": {"type": "list", "data": []},
        }

    def _company_json(self, company_id: str) -> dict[str, Any]:
        c = self.companies[company_id]
        plan = {}
        if c.get("plan"):
            plan = {
                "type": "plan",
                "id": str(zlib.crc32(str(c["plan"]).encode())),
                "name": c["plan"],
            }
        return {
            "type": "company",
            "id": company_id,
            "company_id": c["company_id"],
            "app_id": WORKSPACE,
            "name": c.get("name") or "",
            "remote_created_at": c.get("remote_created_at") or 0,
            "created_at": c["created_at"],
            "updated_at": c["updated_at"],
            "last_request_at": 0,
            "size": c.get("size") or 0,
            "website": c.get("website") or "",
            "industry": c.get("industry") or "",
            "monthly_spend": c.get("monthly_spend") or 0,
            "session_count": 0,
            "user_count": 0,
            "plan": plan,
            "custom_attributes": dict(c.get("custom_attributes") or {}),
            "tags": {"type": "tag.list", "tags": []},
            "segments": {"type": "segment.list", "segments": []},
        }

    def _applied(self, store: RecordStore, object_id: str, operation: str) -> Response:
        public = (
            self._contact_json(object_id)
            if store is self.contacts
            else self._company_json(object_id)
        )
        if self.ledger is not None:
            self.ledger.apply(operation, public)
        return self.respond(200, public)
