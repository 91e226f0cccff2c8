"""A faithful local fake of HubSpot's CRM v3 batch endpoints (contacts and companies).

Used by the connector tests, the conformance tests and ``undertow demo``::

    fake = HubSpotFake("demo-token")
    with serve_in_thread(fake.app) as server:
        ...  # point the hubspot destination's base_url at server.url
    fake.objects["contacts"].by_email("ada@example.com")

It answers like HubSpot documents (see ``docs/destinations/hubspot.md`` for the links):

* ``Authorization: Bearer <token>``; anything else is a 401 ``INVALID_AUTHENTICATION``.
* ``POST /crm/v3/objects/{object}/batch/{create,update,upsert,read,archive}`` with at most
  100 ``inputs`` (400 ``VALIDATION_ERROR`` otherwise). Property values must be strings,
  numbers, booleans or null; an object or an array fails the whole request with 400, as
  HubSpot's JSON deserialiser does.
* Per-record problems (invalid email, unknown object, unknown property) come back as a 207
  ``BatchResponse...WithErrors`` when every input carries an ``objectWriteTraceId``
  (HubSpot's multi-status opt-in, echoed in the error's ``context``); otherwise the first
  problem fails the whole request with 400 and nothing is written. ``batch/read`` always
  answers 207 for ids it cannot find (``OBJECT_NOT_FOUND``, ``context.ids``).
* ``upsert`` matches on a unique ``idProperty`` (contacts: ``email``; companies: ``domain``
  or a custom unique property) and says ``"new": true|false`` per result.
* ``archive`` answers 204 whatever the records' state, as documented.
* A ``TEN_SECONDLY_ROLLING`` window (and an optional ``DAILY`` cap) answers 429 with
  HubSpot's body and no ``Retry-After``; ``X-HubSpot-RateLimit-*`` headers and an
  ``x-hubspot-correlation-id`` are on every response.
* ``GET /crm/v3/objects/{object}?limit=1`` lists records (used by the connector's check).

Scripting misbehaviour: :meth:`HubSpotFake.fail_next` queues canned responses,
:meth:`HubSpotFake.throttle_next` queues realistic 429s, :attr:`HubSpotFake.faults` is a
hook that may answer any request first, and ``fault_plan`` (a seeded
:class:`~undertow.testing.faults.FaultPlan`) fails, times out, drops or partly rejects batch
writes. Every request is captured in ``.requests`` (without its token), every applied input
in ``.applied``, and with a ``ledger`` every applied record's stored properties (a count per
``(key, version)`` and the final state).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from undertow.testing.faults import Decision, FaultPlan, Ledger

MAX_INPUTS = 100
WINDOW_SECONDS = 10.0
OBJECT_TYPES = {"contacts": "CONTACT", "companies": "COMPANY"}
UNIQUE_PROPERTIES = {"contacts": {"email", "hs_object_id"}, "companies": {"domain", "hs_object_id"}}
OPERATIONS = ("create", "update", "upsert", "read", "archive")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_AUTH_DOCS = "https://developers.hubspot.com/docs/methods/auth/oauth-overview"

Properties = dict[str, str | None]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: Any) -> str | None:
    """A property value as HubSpot stores it: text (numbers and booleans become text)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class ObjectStore(dict[str, Properties]):
    """Stored records of one object type: HubSpot id -> properties, plus timestamps."""

    def __init__(self) -> None:
        super().__init__()
        self.created_at: dict[str, str] = {}
        self.updated_at: dict[str, str] = {}
        self.archived: dict[str, Properties] = {}
        self._index: dict[str, dict[str, str]] = {}
        """prop -> value (emails lower-cased) -> id, built on the first lookup of a prop."""

    @staticmethod
    def _norm(prop: str, value: Any) -> str | None:
        text = _text(value)
        return text.lower() if prop == "email" and text else text

    def index_put(self, object_id: str) -> None:
        """Index a stored record (call after every write to it)."""
        props = self[object_id]
        for prop, index in self._index.items():
            value = self._norm(prop, props.get(prop))
            if value:
                index.setdefault(value, object_id)

    def index_drop(self, object_id: str) -> None:
        """Forget a record's indexed values (call before changing or archiving it)."""
        props = self.get(object_id, {})
        for prop, index in self._index.items():
            value = self._norm(prop, props.get(prop))
            if value and index.get(value) == object_id:
                del index[value]

    def find(self, prop: str, value: Any) -> str | None:
        """The id of the record whose ``prop`` equals ``value`` (emails compare caseless)."""
        if value is None:
            return None
        if prop == "hs_object_id":
            return str(value) if str(value) in self else None
        index = self._index.get(prop)
        if index is None:
            index = self._index[prop] = {}
            for object_id, props in self.items():
                have = self._norm(prop, props.get(prop))
                if have:
                    index.setdefault(have, object_id)
        wanted = self._norm(prop, value)
        return index.get(wanted) if wanted else None

    def by_email(self, email: str) -> Properties | None:
        """The properties of the contact with this email, or None."""
        object_id = self.find("email", email)
        return None if object_id is None else self[object_id]

    def by(self, prop: str, value: Any) -> Properties | None:
        """The properties of the record whose unique ``prop`` is ``value``, or None."""
        object_id = self.find(prop, value)
        return None if object_id is None else self[object_id]


@dataclass
class CapturedRequest:
    """One request the fake received (the token is never kept)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    authorized: bool


@dataclass
class Fault:
    """A canned response for the next matching request."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    path: str | None = None
    """Only requests whose path ends with this (e.g. ``batch/upsert``); None for any."""


class _InputError(Exception):
    """A per-record problem: becomes one entry of ``errors[]`` (or a 400 without trace ids)."""

    def __init__(self, category: str, message: str, context: dict[str, list[str]]) -> None:
        super().__init__(message)
        self.category = category
        self.message = message
        self.context = context


class HubSpotFake:
    """An in-memory HubSpot account served as a Starlette app (``.app``)."""

    def __init__(
        self,
        token: str = "demo-token",
        *,
        rate_limit_per_10s: int = 190,
        daily_limit: int | None = None,
        unique_properties: dict[str, set[str]] | None = None,
        known_properties: dict[str, set[str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        fault_plan: FaultPlan | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.token = token
        self.fault_plan = fault_plan
        self.ledger = ledger
        self.rate_limit_per_10s = rate_limit_per_10s
        self.daily_limit = daily_limit
        self.unique_properties = {k: set(v) for k, v in UNIQUE_PROPERTIES.items()}
        for name, props in (unique_properties or {}).items():
            self.unique_properties.setdefault(name, {"hs_object_id"}).update(props)
        self.known_properties = known_properties
        """When set, a property outside these names is a per-record PROPERTY_DOESNT_EXIST."""
        self.clock = clock
        self.objects: dict[str, ObjectStore] = {name: ObjectStore() for name in OBJECT_TYPES}
        self.applied: list[tuple[str, str, dict[str, Any]]] = []
        self.requests: list[CapturedRequest] = []
        self.faults: Callable[[CapturedRequest], Response | None] | None = None
        self._queued: deque[Fault] = deque()
        self._window: deque[float] = deque()
        self._daily_used = 0
        self._next_id = 1001
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/crm/v3/objects/{object}", self._list, methods=["GET"]),
                Route("/crm/v3/objects/{object}/batch/{operation}", self._batch, methods=["POST"]),
            ]
        )

    # -- scripting -------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        body: Any = None,
        headers: dict[str, str] | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``n`` requests (matching ``path``, if given) with this response."""
        if body is None:
            body = {
                "status": "error",
                "message": "internal error",
                "correlationId": str(uuid.uuid4()),
                "category": "INTERNAL_ERROR",
            }
        with self._lock:
            for _ in range(n):
                self._queued.append(Fault(status, body, dict(headers or {}), path))

    def throttle_next(self, n: int = 1, *, policy: str = "TEN_SECONDLY_ROLLING") -> None:
        """Answer the next ``n`` requests with HubSpot's 429 for ``policy`` (or ``DAILY``)."""
        headers = self._limit_headers(remaining=0)
        if policy == "DAILY":
            headers["X-HubSpot-RateLimit-Daily-Remaining"] = "0"
        self.fail_next(n, status=429, body=self.rate_limit_body(policy), headers=headers)

    def rate_limit_body(self, policy: str = "TEN_SECONDLY_ROLLING") -> dict[str, Any]:
        """HubSpot's documented 429 body for a policy (``TEN_SECONDLY_ROLLING`` or ``DAILY``)."""
        which = "daily" if policy == "DAILY" else "ten_secondly_rolling"
        return {
            "status": "error",
            "message": f"You have reached your {which} limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
            "policyName": policy,
            "requestId": str(uuid.uuid4()),
        }

    def reset(self) -> None:
        """Forget every record, request, fault and rate-limit count."""
        with self._lock:
            self.objects = {name: ObjectStore() for name in OBJECT_TYPES}
            self.applied.clear()
            self.requests.clear()
            self._queued.clear()
            self._window.clear()
            self._daily_used = 0

    # -- plumbing --------------------------------------------------------------------------

    def _limit_headers(self, *, remaining: int | None = None) -> dict[str, str]:
        if remaining is None:
            remaining = max(0, self.rate_limit_per_10s - len(self._window))
        headers = {
            "X-HubSpot-RateLimit-Max": str(self.rate_limit_per_10s),
            "X-HubSpot-RateLimit-Remaining": str(remaining),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(WINDOW_SECONDS * 1000)),
        }
        if self.daily_limit is not None:
            headers["X-HubSpot-RateLimit-Daily"] = str(self.daily_limit)
            left = max(0, self.daily_limit - self._daily_used)
            headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(left)
        return headers

    def _respond(
        self,
        status: int,
        body: Any = None,
        *,
        correlation_id: str,
        headers: dict[str, str] | None = None,
    ) -> Response:
        all_headers = {"x-hubspot-correlation-id": correlation_id}
        all_headers.update(self._limit_headers() if headers is None else headers)
        if body is None:
            return Response(status_code=status, headers=all_headers)
        return Response(
            orjson.dumps(body),
            status_code=status,
            media_type="application/json;charset=utf-8",
            headers=all_headers,
        )

    @staticmethod
    def _error(category: str, message: str, correlation_id: str, **extra: Any) -> dict[str, Any]:
        return {
            "status": "error",
            "message": message,
            "correlationId": correlation_id,
            "category": category,
            **extra,
        }

    async def _capture(self, request: Request) -> CapturedRequest:
        raw = await request.body()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        auth = request.headers.get("authorization", "")
        captured = CapturedRequest(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={k: v for k, v in request.headers.items() if k != "authorization"},
            body=body,
            authorized=auth == f"Bearer {self.token}",
        )
        with self._lock:
            self.requests.append(captured)
        return captured

    def _gate(
        self, captured: CapturedRequest, correlation_id: str, *, credentials: bool
    ) -> Response | None:
        """Faults, auth and rate limits: the answer when the request goes no further."""
        if self.faults is not None:
            answer = self.faults(captured)
            if answer is not None:
                return answer
        with self._lock:
            for fault in self._queued:
                if fault.path is None or captured.path.endswith(fault.path):
                    self._queued.remove(fault)
                    headers = {**self._limit_headers(), **fault.headers}
                    return self._respond(
                        fault.status, fault.body, correlation_id=correlation_id, headers=headers
                    )
        if not captured.authorized:
            message = (
                "Authentication credentials not found. This API supports OAuth 2.0 "
                f"authentication and you can find more details at {_AUTH_DOCS}"
                if not credentials
                else "The access token provided is invalid or has expired."
            )
            body = self._error("INVALID_AUTHENTICATION", message, correlation_id)
            return self._respond(401, body, correlation_id=correlation_id, headers={})
        with self._lock:
            now = self.clock()
            while self._window and now - self._window[0] >= WINDOW_SECONDS:
                self._window.popleft()
            policy = None
            if self.daily_limit is not None and self._daily_used >= self.daily_limit:
                policy = "DAILY"
            elif len(self._window) >= self.rate_limit_per_10s:
                policy = "TEN_SECONDLY_ROLLING"
            if policy is not None:
                body = self.rate_limit_body(policy)
                body["correlationId"] = correlation_id
                return self._respond(429, body, correlation_id=correlation_id)
            self._window.append(now)
            self._daily_used += 1
        return None

    # -- endpoints -------------------------------------------------------------------------

    async def _list(self, request: Request) -> Response:
        correlation_id = str(uuid.uuid4())
        captured = await self._capture(request)
        credentials = "authorization" in request.headers
        if (early := self._gate(captured, correlation_id, credentials=credentials)) is not None:
            return early
        name = request.path_params["object"]
        if name not in self.objects:
            return self._unknown_object(name, correlation_id)
        try:
            limit = max(1, min(100, int(request.query_params.get("limit", "10"))))
        except ValueError:
            problem = self._error("VALIDATION_ERROR", "limit must be a number", correlation_id)
            return self._respond(400, problem, correlation_id=correlation_id)
        with self._lock:
            store = self.objects[name]
            ids = list(store)[:limit]
            results = [self._public(store, i) for i in ids]
            more = len(store) > limit
        body: dict[str, Any] = {"results": results}
        if more:
            body["paging"] = {"next": {"after": str(limit), "link": f"?after={limit}"}}
        return self._respond(200, body, correlation_id=correlation_id)

    def _unknown_object(self, name: str, correlation_id: str) -> Response:
        body = self._error(
            "OBJECT_NOT_FOUND", f"Unable to infer object type from: {name}", correlation_id
        )
        return self._respond(400, body, correlation_id=correlation_id)

    async def _batch(self, request: Request) -> Response:
        correlation_id = str(uuid.uuid4())
        captured = await self._capture(request)
        credentials = "authorization" in request.headers
        if (early := self._gate(captured, correlation_id, credentials=credentials)) is not None:
            return early
        name = request.path_params["object"]
        operation = request.path_params["operation"]
        if name not in self.objects:
            return self._unknown_object(name, correlation_id)
        if operation not in OPERATIONS:
            body = self._error(
                "VALIDATION_ERROR", f"Unknown batch operation {operation}", correlation_id
            )
            return self._respond(404, body, correlation_id=correlation_id)
        problem = self._validate_request(captured.body, operation)
        if problem is not None:
            body = self._error("VALIDATION_ERROR", problem, correlation_id)
            return self._respond(400, body, correlation_id=correlation_id)
        inputs: list[dict[str, Any]] = captured.body["inputs"]
        started = _now()
        fate, refused = Decision(), []
        if self.fault_plan is not None and operation != "read":
            # archive answers 204 with no per-record results: never partly refused
            size = len(inputs) if operation != "archive" else 0
            fate = self.fault_plan.decide(orjson.dumps(captured.body), size)
            if not fate.applies:
                throttled = fate.fault in ("429", "429-bare")
                return fate.refusal(orjson.dumps(self.rate_limit_body()) if throttled else None)
            await fate.before()
            refused = [inputs[i] for i in sorted(fate.rejected)]
            inputs = [item for i, item in enumerate(inputs) if i not in fate.rejected]
        with self._lock:
            if operation == "archive":
                for item in inputs:
                    self._archive(name, str(item["id"]))
                return await fate.answer(self._respond(204, correlation_id=correlation_id))
            answer = self._write(name, operation, captured.body, inputs, started, correlation_id)
        if fate.rejected:
            answer = self._with_injected_errors(answer, refused, correlation_id)
        return await fate.answer(answer)

    def _with_injected_errors(
        self, answer: Response, refused: list[dict[str, Any]], correlation_id: str
    ) -> Response:
        """Add a ``partial`` fault's refused inputs to a write's answer as a 207."""
        if answer.status_code >= 300:
            return answer
        body = orjson.loads(answer.body)
        errors = body.setdefault("errors", [])
        for item in refused:
            context: dict[str, list[str]] = {"ids": [str(item.get("id"))]}
            if "objectWriteTraceId" in item:
                context["objectWriteTraceId"] = [str(item["objectWriteTraceId"])]
            errors.append(
                {
                    "status": "error",
                    "category": "INTERNAL_ERROR",
                    "message": "injected per-record failure",
                    "context": context,
                    "errors": [],
                }
            )
        body["numErrors"] = len(errors)
        return self._respond(207, body, correlation_id=correlation_id)

    def _validate_request(self, body: Any, operation: str) -> str | None:
        """A whole-request problem (HubSpot answers 400 and writes nothing), or None."""
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            return "Invalid input JSON: the body must be an object with an `inputs` array."
        inputs = body["inputs"]
        if len(inputs) > MAX_INPUTS:
            return (
                f"Too many inputs: {len(inputs)}. A batch request accepts at most "
                f"{MAX_INPUTS} inputs."
            )
        ids: list[str] = []
        for position, item in enumerate(inputs):
            if not isinstance(item, dict):
                return f"Invalid input JSON at inputs[{position}]: expected an object."
            if operation != "create" and not isinstance(item.get("id"), str | int):
                return f"inputs[{position}].id is required."
            if "id" in item:
                ids.append(str(item["id"]))
            props = item.get("properties", {})
            if operation in ("create", "update", "upsert") and not isinstance(props, dict):
                return f"Invalid input JSON at inputs[{position}].properties: expected an object."
            for key, value in (props or {}).items() if isinstance(props, dict) else ():
                if isinstance(value, dict | list):
                    kind = "Object" if isinstance(value, dict) else "Array"
                    token = "START_OBJECT" if isinstance(value, dict) else "START_ARRAY"
                    return (
                        f"Invalid input JSON on inputs[{position}].properties.{key}: Cannot "
                        f"deserialize value of type `java.lang.String` from {kind} value "
                        f"(token `JsonToken.{token}`)"
                    )
        if operation in ("update", "upsert", "read"):
            duplicates = sorted({i for i in ids if ids.count(i) > 1})
            if duplicates:
                return f"Duplicate IDs found in batch input: {duplicates}. IDs must be unique"
        return None

    def _id_property(self, name: str, item: dict[str, Any], body: dict[str, Any]) -> str:
        prop = item.get("idProperty") or body.get("idProperty") or "hs_object_id"
        if prop not in self.unique_properties[name]:
            raise _InputError(
                "VALIDATION_ERROR",
                f"{prop} is not a unique property of {name}; idProperty must name a property "
                "with unique values",
                {"idProperty": [str(prop)]},
            )
        return str(prop)

    def _check_properties(
        self, name: str, props: dict[str, Any], context: dict[str, list[str]]
    ) -> None:
        known = None if self.known_properties is None else self.known_properties.get(name)
        if known is not None:
            for key in props:
                if key not in known:
                    raise _InputError(
                        "VALIDATION_ERROR",
                        f'Property "{key}" does not exist',
                        {**context, "propertyName": [key]},
                    )
        email = props.get("email")
        if name == "contacts" and email not in (None, "") and not _EMAIL.match(str(email)):
            detail = orjson.dumps(
                [
                    {
                        "isValid": False,
                        "message": f"Email address {email} is invalid",
                        "error": "INVALID_EMAIL",
                        "name": "email",
                    }
                ]
            ).decode()
            raise _InputError(
                "VALIDATION_ERROR", f"Property values were not valid: {detail}", context
            )

    def _write(
        self,
        name: str,
        operation: str,
        body: dict[str, Any],
        inputs: list[dict[str, Any]],
        started: str,
        correlation_id: str,
    ) -> Response:
        # Writes opt into 207 with a trace id on every input; reads always answer 207.
        multi_status = operation == "read" or all("objectWriteTraceId" in i for i in inputs)
        planned: list[tuple[dict[str, Any], Callable[[], dict[str, Any]]]] = []
        errors: list[dict[str, Any]] = []
        for item in inputs:
            trace = item.get("objectWriteTraceId")
            context: dict[str, list[str]] = {}
            if trace is not None:
                context["objectWriteTraceId"] = [str(trace)]
            try:
                action = self._plan(name, operation, body, item, context)
            except _InputError as exc:
                if not multi_status:
                    refusal = self._error(
                        exc.category, exc.message, correlation_id, context=exc.context
                    )
                    return self._respond(400, refusal, correlation_id=correlation_id)
                errors.append(
                    {
                        "status": "error",
                        "category": exc.category,
                        "message": exc.message,
                        "context": exc.context,
                        "errors": [
                            {"message": exc.message, "code": exc.category, "in": "properties"}
                        ],
                    }
                )
                continue
            planned.append((item, action))
        results = []
        for item, action in planned:
            result = action()
            if "objectWriteTraceId" in item:
                result["objectWriteTraceId"] = str(item["objectWriteTraceId"])
            results.append(result)
            if operation != "read":
                self.applied.append((name, operation, item))
                if self.ledger is not None:
                    self.ledger.apply(operation, result["properties"])
        answer: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "requestedAt": started,
            "startedAt": started,
            "completedAt": _now(),
        }
        if errors:
            answer["errors"] = errors
            answer["numErrors"] = len(errors)
            return self._respond(207, answer, correlation_id=correlation_id)
        return self._respond(
            201 if operation == "create" else 200, answer, correlation_id=correlation_id
        )

    def _plan(
        self,
        name: str,
        operation: str,
        body: dict[str, Any],
        item: dict[str, Any],
        context: dict[str, list[str]],
    ) -> Callable[[], dict[str, Any]]:
        """Validate one input; return the closure that applies it (run after validation)."""
        store = self.objects[name]
        props: dict[str, Any] = dict(item.get("properties") or {})
        if operation == "create":
            self._check_properties(name, props, context)
            return lambda: self._create(name, props)
        prop = self._id_property(name, item, body)
        key = str(item["id"])
        object_id = store.find(prop, key)
        if operation == "read":
            if object_id is None:
                raise _InputError(
                    "OBJECT_NOT_FOUND", self._not_found(name), {**context, "ids": [key]}
                )
            wanted = body.get("properties") or []
            found = object_id
            return lambda: self._public(store, found, only=wanted)
        if operation == "update":
            if object_id is None:
                raise _InputError(
                    "OBJECT_NOT_FOUND", self._not_found(name), {**context, "ids": [key]}
                )
            self._check_properties(name, props, context)
            found = object_id
            return lambda: self._update(name, found, props)
        # upsert
        if prop == "hs_object_id":
            raise _InputError(
                "VALIDATION_ERROR",
                "Upsert needs an idProperty naming a unique property (e.g. email), not the "
                "object id",
                {**context, "idProperty": [prop]},
            )
        self._check_properties(name, {prop: key, **props}, context)
        if object_id is None:
            created = {**props, prop: key}
            return lambda: {**self._create(name, created), "new": True}
        found = object_id
        return lambda: {**self._update(name, found, props), "new": False}

    @staticmethod
    def _not_found(name: str) -> str:
        return (
            f"Could not get some {OBJECT_TYPES[name]} objects, they may be deleted or not "
            "exist. Check that ids are valid."
        )

    def _public(
        self, store: ObjectStore, object_id: str, *, only: list[str] | None = None
    ) -> dict[str, Any]:
        props = store[object_id]
        shown = {k: v for k, v in props.items() if not only or k in only or k == "hs_object_id"}
        return {
            "id": object_id,
            "properties": shown,
            "createdAt": store.created_at[object_id],
            "updatedAt": store.updated_at[object_id],
            "archived": False,
        }

    def _create(self, name: str, props: dict[str, Any]) -> dict[str, Any]:
        store = self.objects[name]
        object_id = str(self._next_id)
        self._next_id += 1
        stamp = _now()
        stored: Properties = {k: _text(v) for k, v in props.items()}
        if name == "contacts" and stored.get("email"):
            stored["email"] = str(stored["email"]).lower()
        stored["hs_object_id"] = object_id
        stored["createdate"] = stamp
        stored["lastmodifieddate"] = stamp
        store[object_id] = stored
        store.index_put(object_id)
        store.created_at[object_id] = stamp
        store.updated_at[object_id] = stamp
        return self._public(store, object_id)

    def _update(self, name: str, object_id: str, props: dict[str, Any]) -> dict[str, Any]:
        store = self.objects[name]
        stamp = _now()
        stored = store[object_id]
        store.index_drop(object_id)
        for key, value in props.items():
            text = _text(value)
            if name == "contacts" and key == "email" and text:
                text = text.lower()
            stored[key] = text
        stored["lastmodifieddate"] = stamp
        store.index_put(object_id)
        store.updated_at[object_id] = stamp
        return self._public(store, object_id)

    def _archive(self, name: str, object_id: str) -> None:
        store = self.objects[name]
        if object_id in store:
            store.index_drop(object_id)
            store.archived[object_id] = store.pop(object_id)
            self.applied.append((name, "archive", {"id": object_id}))
            if self.ledger is not None:
                self.ledger.apply("archive", store.archived[object_id])
