"""A faithful local fake of Pipedrive's REST API v2 persons and organizations.

Used by the connector tests, the conformance tests, ``undertow demo --destination
pipedrive`` and ``undertow fake pipedrive``. It answers like Pipedrive documents
(``docs/destinations/pipedrive.md`` lists the links and what is modelled, not documented):

* ``x-api-token: <token>`` (or ``?api_token=``); anything else is a 401
  ``{"success": false, "error": "unauthorized access", "errorCode": 401, ...}``;
  ``GET /api/v1/users/me`` answers the token's user.
* ``POST /api/v2/{persons|organizations}`` creates (a name is required), ``PATCH
  /api/v2/{object}/{id}`` updates, ``DELETE`` deletes, ``GET`` reads; bodies are the v2
  shapes (``emails``/``phones`` as ``[{value, primary, label}]``, ``custom_fields`` keyed by
  40-character field codes, option fields by option id). A key the v2 body does not have,
  an unknown custom field, or a value of the wrong type is a 400 naming it.
* ``GET /api/v2/{object}/search?term=&fields=&exact_match=true`` finds records by one
  field (caseless); ``GET /api/v2/{personFields|organizationFields}`` lists the fields.
* A 2-second window (``requests_per_2s``, 20 by default: the lowest plan) on every request
  and one of its own on searches (``search_per_2s``, 10); ``x-ratelimit-limit``,
  ``-remaining`` and ``-reset`` on every answer, ``x-daily-requests-left`` with a
  ``daily_limit``; a full window answers 429 with ``Retry-After``.

The default company has the demo's custom person fields (``Plan`` with options, ``Seats``,
``MRR``, ``Country``, ``Signup date``); pass ``custom_fields=`` for others.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import CapturedRequest, FakeAPI, RecordStore, Window, now_iso
from undertow.testing.faults import FaultPlan, Ledger

OBJECTS = {"persons": "personFields", "organizations": "organizationFields"}
INFO = "Please check developers.pipedrive.com for more information about Pipedrive API."
STANDARD_FIELDS = {
    "persons": [
        ("name", "Name", "varchar"),
        ("email", "Email", "varchar"),
        ("phone", "Phone", "phone"),
        ("org_id", "Organization", "org"),
        ("owner_id", "Owner", "user"),
        ("visible_to", "Visible to", "visible_to"),
        ("label_ids", "Labels", "set"),
        ("add_time", "Person created", "date"),
    ],
    "organizations": [
        ("name", "Name", "varchar"),
        ("address", "Address", "address"),
        ("owner_id", "Owner", "user"),
        ("visible_to", "Visible to", "visible_to"),
        ("label_ids", "Labels", "set"),
        ("add_time", "Organization created", "date"),
    ],
}
BODY_KEYS = {
    "persons": {
        "name",
        "owner_id",
        "org_id",
        "emails",
        "phones",
        "visible_to",
        "label_ids",
        "marketing_status",
        "add_time",
        "update_time",
        "custom_fields",
    },
    "organizations": {
        "name",
        "owner_id",
        "address",
        "visible_to",
        "label_ids",
        "add_time",
        "update_time",
        "custom_fields",
    },
}
DEMO_FIELDS: dict[str, list[tuple[str, str, list[str]]]] = {
    "persons": [
        ("Plan", "enum", ["free", "starter", "pro", "enterprise"]),
        ("Seats", "double", []),
        ("MRR", "double", []),
        ("Country", "varchar", []),
        ("Signup date", "date", []),
        ("External ID", "varchar", []),
    ],
    "organizations": [("ARR", "double", []), ("Domain", "varchar", [])],
}


def field_code(object_: str, name: str) -> str:
    """A custom field's code: 40 hex characters, like Pipedrive's (stable per name)."""
    return hashlib.sha1(f"{object_}:{name}".encode()).hexdigest()


class _Refused(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status, self.error = status, error


class PipedriveFake(FakeAPI):
    """An in-memory Pipedrive company served as a Starlette app (``.app``)."""

    type = "pipedrive"
    vendor = "Pipedrive"
    request_id_header = "x-correlation-id"

    def __init__(
        self,
        token: str = "demo-token",
        *,
        requests_per_2s: int = 20,
        search_per_2s: int = 10,
        window_seconds: float = 2.0,
        daily_limit: int | None = None,
        custom_fields: dict[str, list[tuple[str, str, list[str]]]] | None = None,
        fault_plan: FaultPlan | None = None,
        ledger: Ledger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token = token
        self.general = Window(requests_per_2s, window_seconds, "burst")
        self.search = Window(search_per_2s, window_seconds, "search")
        self.daily = Window(daily_limit, 86_400.0, "daily") if daily_limit else None
        self.fields: dict[str, list[dict[str, Any]]] = {}
        for object_, standard in STANDARD_FIELDS.items():
            rows = [_field(code, name, kind, False, []) for code, name, kind in standard]
            for name, kind, options in (DEMO_FIELDS | (custom_fields or {})).get(object_, []):
                rows.append(_field(field_code(object_, name), name, kind, True, options))
            self.fields[object_] = rows
        self.store = {o: RecordStore(caseless=()) for o in OBJECTS}
        self.index: dict[str, dict[str, dict[str, set[str]]]] = {o: {} for o in OBJECTS}
        windows = [self.general, self.search] + ([self.daily] if self.daily else [])
        super().__init__(
            auth=self._authorized,
            windows=windows,
            fault_plan=fault_plan,
            ledger=ledger,
            clock=clock,
        )

    def _authorized(self, request: Request) -> bool:
        given = request.headers.get("x-api-token") or request.query_params.get("api_token")
        return given == self.token

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/v1/users/me", self._me, methods=["GET"]),
            Route("/api/v2/personFields", self._fields, methods=["GET"]),
            Route("/api/v2/organizationFields", self._fields, methods=["GET"]),
            Route("/api/v2/{object}/search", self._search, methods=["GET"]),
            Route("/api/v2/{object}", self._create, methods=["POST"]),
            Route("/api/v2/{object}/{id:int}", self._one, methods=["GET", "PATCH", "DELETE"]),
        ]

    # -- what tests read -------------------------------------------------------------------

    def by(self, object_: str, field: str, value: Any) -> dict[str, Any] | None:
        """The record (v2 shape) whose ``field`` (email, phone, name, a custom field's name or
        code) holds ``value``, caseless."""
        ids = self._lookup(object_, self._key(object_, field), value)
        return self._public(object_, min(ids, key=int)) if ids else None

    def custom(self, object_: str, record: dict[str, Any], name: str) -> Any:
        """A record's custom field value, by the field's name."""
        return (record.get("custom_fields") or {}).get(field_code(object_, name))

    def reset(self) -> None:
        with self._lock:
            super().reset()
            self.store = {o: RecordStore(caseless=()) for o in OBJECTS}
            self.index = {o: {} for o in OBJECTS}

    # -- the vendor's answers ----------------------------------------------------------------

    def fail(self, status: int, error: str, **extra: Any) -> Response:
        body = {
            "success": False,
            "error": error,
            "error_info": INFO,
            "data": None,
            "additional_data": None,
            **extra,
        }
        return self.respond(status, body)

    def unauthorized(self, captured: CapturedRequest) -> Response:
        return self.fail(401, "unauthorized access", errorCode=401)

    def slow_down(self, window: Window | None) -> Response:
        wait = window.reset_in(self.clock()) if window is not None else 2.0
        daily = window is not None and window is self.daily
        headers = {"Retry-After": str(max(1, math.ceil(wait)))}
        if daily:
            headers["x-daily-requests-left"] = "0"
        return self.respond(
            429,
            {"success": False, "error": "Request over limit", "errorCode": 429, "error_info": INFO},
            headers,
        )

    def headers(self) -> dict[str, str]:
        now = self.clock()
        out = {
            "x-ratelimit-limit": str(self.general.limit),
            "x-ratelimit-remaining": str(self.general.remaining(now)),
            "x-ratelimit-reset": str(math.ceil(self.general.reset_in(now))),
        }
        if self.daily is not None:
            out["x-daily-requests-left"] = str(self.daily.remaining(now))
        return out

    def windows_for(self, captured: CapturedRequest) -> Sequence[Window]:
        windows = [self.general] + ([self.daily] if self.daily else [])
        return [*windows, self.search] if captured.path.endswith("/search") else windows

    # -- endpoints -------------------------------------------------------------------------

    async def _me(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        return self.respond(
            200,
            {
                "success": True,
                "data": {
                    "id": 1,
                    "name": "Undertow Fake",
                    "email": "fake@undertow.invalid",
                    "company_id": 1,
                    "company_name": "Undertow fake",
                    "company_domain": "undertow-fake",
                    "active_flag": True,
                    "is_admin": 1,
                },
            },
        )

    async def _fields(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        object_ = "persons" if request.url.path.endswith("personFields") else "organizations"
        try:
            limit = min(500, int(request.query_params.get("limit", "100")))
            start = int(request.query_params.get("cursor") or 0)
        except ValueError:
            return self.fail(400, "limit and cursor must be numbers")
        rows = self.fields[object_][start : start + limit]
        more = start + limit < len(self.fields[object_])
        return self.respond(
            200,
            {
                "success": True,
                "data": rows,
                "additional_data": {"next_cursor": str(start + limit) if more else None},
            },
        )

    async def _search(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        object_ = request.path_params["object"]
        if object_ not in OBJECTS:
            return self.fail(404, "Unknown method .")
        query = request.query_params
        term, fields = query.get("term", ""), query.get("fields", "")
        exact = query.get("exact_match") == "true"
        if len(term) < (1 if exact else 2):
            return self.fail(
                400, "Search term must be at least 2 characters long (1 with exact_match)"
            )
        keys = [f for f in fields.split(",") if f] or ["name"]
        with self._lock:
            ids: set[str] = set()
            for key in keys:
                ids |= self._lookup(object_, key, term, exact=exact)
            limit = int(query.get("limit", "100"))
            items = [
                {"result_score": 1.0, "item": self._search_item(object_, i)}
                for i in sorted(ids, key=int)[:limit]
            ]
        return self.respond(
            200,
            {"success": True, "data": {"items": items}, "additional_data": {"next_cursor": None}},
        )

    async def _create(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        object_ = request.path_params["object"]
        if object_ not in OBJECTS:
            return self.fail(404, "Unknown method .")
        self.note_batch(1)  # one record per request: no batch write
        fate = self.decide(captured.raw, 1)
        if not fate.applies:
            return fate.refusal()
        await fate.before()
        try:
            with self._lock:
                body = self._check(object_, captured.body, creating=True)
                record_id = self.store[object_].create(self._stored(object_, body, None))
                self._reindex(object_, record_id, None)
                answer = self._applied(object_, record_id, "create", 201)
        except _Refused as refused:
            return self.fail(refused.status, refused.error)
        return await fate.answer(answer)

    async def _one(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        object_, record_id = request.path_params["object"], str(request.path_params["id"])
        if object_ not in OBJECTS:
            return self.fail(404, "Unknown method .")
        try:
            with self._lock:
                if record_id not in self.store[object_]:
                    raise _Refused(404, f"{object_[:-1].title()} not found")
                if request.method == "GET":
                    return self.respond(
                        200, {"success": True, "data": self._public(object_, record_id)}
                    )
                if request.method == "DELETE":
                    old = dict(self.store[object_][record_id])
                    self.store[object_].archive(record_id)
                    self._reindex(object_, record_id, old)
                    if self.ledger is not None:
                        self.ledger.apply("delete", {"object": object_, "id": int(record_id)})
                    return self.respond(200, {"success": True, "data": {"id": int(record_id)}})
                self.note_batch(1)
                body = self._check(object_, captured.body, creating=False)
                old = dict(self.store[object_][record_id])
                self.store[object_].modify(record_id, self._stored(object_, body, old))
                self._reindex(object_, record_id, old)
                return self._applied(object_, record_id, "update", 200)
        except _Refused as refused:
            return self.fail(refused.status, refused.error)

    # -- the company -----------------------------------------------------------------------

    def _check(self, object_: str, body: Any, *, creating: bool) -> dict[str, Any]:
        """A create/update body as Pipedrive validates it (a problem: 400 naming it)."""
        if not isinstance(body, dict):
            raise _Refused(400, "Request body must be a JSON object")
        unknown = sorted(set(body) - BODY_KEYS[object_])
        if unknown:
            raise _Refused(400, f"Validation failed: unknown field(s): {', '.join(unknown)}")
        if creating and not (isinstance(body.get("name"), str) and body["name"].strip()):
            raise _Refused(400, "Validation failed: name: Required")
        for key in ("emails", "phones"):
            for entry in body.get(key) or []:
                if not isinstance(entry, dict) or not isinstance(entry.get("value"), str):
                    raise _Refused(
                        400, f"Validation failed: {key}: expected [{{value, primary, label}}]"
                    )
        for key in ("owner_id", "org_id", "visible_to"):
            if body.get(key) is not None and not isinstance(body[key], int):
                raise _Refused(400, f"Validation failed: {key}: expected an integer")
        custom = body.get("custom_fields") or {}
        if not isinstance(custom, dict):
            raise _Refused(400, "Validation failed: custom_fields: expected an object")
        rows = {r["field_code"]: r for r in self.fields[object_] if r["is_custom_field"]}
        for code, value in custom.items():
            row = rows.get(code)
            if row is None:
                raise _Refused(400, f"Validation failed: custom_fields: unknown field {code}")
            _check_value(row, value)
        return body

    def _stored(
        self, object_: str, body: dict[str, Any], old: dict[str, Any] | None
    ) -> dict[str, Any]:
        stored = {k: v for k, v in body.items() if k != "custom_fields"}
        custom = dict((old or {}).get("custom_fields") or {})
        custom.update(body.get("custom_fields") or {})
        stored["custom_fields"] = custom
        stored["update_time"] = now_iso()
        if old is None:
            stored.setdefault("add_time", now_iso())
            stored.setdefault("owner_id", 1)
            stored.setdefault("visible_to", 3)
        return stored

    def _key(self, object_: str, field: str) -> str:
        for row in self.fields[object_]:
            if row["is_custom_field"] and field in (row["field_code"], row["field_name"]):
                return "custom_fields"
        return field

    def _values(self, object_: str, fields: dict[str, Any]) -> dict[str, set[str]]:
        """Searchable values of a record, per search field, caseless."""
        out: dict[str, set[str]] = {
            "name": {str(fields.get("name", "")).casefold()},
            "custom_fields": {
                str(v).casefold()
                for v in (fields.get("custom_fields") or {}).values()
                if v is not None and not isinstance(v, list | dict)
            },
        }
        if object_ == "persons":
            out["email"] = {str(e.get("value")).casefold() for e in fields.get("emails") or []}
            out["phone"] = {str(p.get("value")).casefold() for p in fields.get("phones") or []}
        else:
            out["address"] = {str(fields.get("address") or "").casefold()}
        return out

    def _reindex(self, object_: str, record_id: str, old: dict[str, Any] | None) -> None:
        index = self.index[object_]
        for key, values in (self._values(object_, old) if old else {}).items():
            for value in values:
                index.get(key, {}).get(value, set()).discard(record_id)
        if record_id in self.store[object_]:
            for key, values in self._values(object_, self.store[object_][record_id]).items():
                for value in values:
                    index.setdefault(key, {}).setdefault(value, set()).add(record_id)

    def _lookup(self, object_: str, key: str, term: Any, *, exact: bool = True) -> set[str]:
        index = self.index[object_].get(key, {})
        wanted = str(term).casefold()
        if exact:
            return set(index.get(wanted, set()))
        return {i for value, ids in index.items() if wanted in value for i in ids}

    def _public(self, object_: str, record_id: str) -> dict[str, Any]:
        fields = self.store[object_][record_id]
        return {"id": int(record_id), "is_deleted": False, "label_ids": [], **fields}

    def _search_item(self, object_: str, record_id: str) -> dict[str, Any]:
        fields = self.store[object_][record_id]
        item: dict[str, Any] = {
            "id": int(record_id),
            "type": object_[:-1],
            "name": fields.get("name"),
            "visible_to": fields.get("visible_to"),
            "owner": {"id": fields.get("owner_id")},
            "custom_fields": [],
            "notes": [],
            "update_time": fields.get("update_time"),
        }
        if object_ == "persons":
            item["emails"] = [e["value"] for e in fields.get("emails") or []]
            item["phones"] = [p["value"] for p in fields.get("phones") or []]
            item["organization"] = None
        else:
            item["address"] = fields.get("address")
        return item

    def _applied(self, object_: str, record_id: str, operation: str, status: int) -> Response:
        public = self._public(object_, record_id)
        if self.ledger is not None:
            self.ledger.apply(operation, {"object": object_, **public})
        return self.respond(status, {"success": True, "data": public})


def _field(code: str, name: str, kind: str, custom: bool, options: list[str]) -> dict[str, Any]:
    return {
        "field_code": code,
        "field_name": name,
        "field_type": kind,
        "is_custom_field": custom,
        "is_optional_response_field": False,
        "options": [{"id": n + 1, "label": label} for n, label in enumerate(options)] or None,
        "subfields": None,
    }


def _check_value(row: dict[str, Any], value: Any) -> None:
    """A custom field value of the field's type (None clears it)."""
    if value is None:
        return
    kind, name = row["field_type"], row["field_name"]
    ids = {o["id"] for o in row.get("options") or []}
    ok = {
        "double": isinstance(value, int | float) and not isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "enum": value in ids,
        "set": isinstance(value, list) and all(v in ids for v in value),
        "date": isinstance(value, str) and len(value) >= 10 and value[4] == "-",
    }.get(kind, isinstance(value, str))
    if not ok:
        raise _Refused(
            400,
            f"Validation failed: custom_fields.{row['field_code']} ({name}): "
            f"invalid value {value!r} for a field of type {kind}",
        )
