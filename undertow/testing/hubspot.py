"""A faithful local fake of HubSpot's CRM v3 batch endpoints (contacts, companies, deals and
custom objects), its properties and schemas APIs.

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
* Associations through the v4 API: :mod:`undertow.testing.hubspot_associations`.
* Object types (:mod:`undertow.testing.hubspot_schemas`): contacts, companies, deals and the
  custom objects a test defines (:meth:`HubSpotFake.add_custom_object`), named in a path by
  name, ``objectTypeId`` or fully qualified name; any other name is a 400 "Unable to infer
  object type from: ...". ``GET /crm/v3/properties/{object}`` lists each type's properties
  and ``GET /crm/v3/schemas`` the custom objects. With ``strict_properties`` a property the
  type does not have is a per-record ``PROPERTY_DOESNT_EXIST``; a custom object's required
  properties must be given when a record is created.

It is built on the fakes kit (:mod:`undertow.testing.fakes`): auth, the rolling windows,
scripted answers, the request log and the record store come from there.

Scripting misbehaviour: :meth:`HubSpotFake.fail_next` queues canned responses,
:meth:`HubSpotFake.throttle_next` queues realistic 429s, :attr:`HubSpotFake.faults` is a
hook that may answer any request first, and ``fault_plan`` (a seeded
:class:`~undertow.testing.faults.FaultPlan`) fails, times out, drops or partly rejects batch
writes. Every request is captured in ``.requests`` (without its token), every applied input
in ``.applied``, and with a ``ledger`` every applied record's stored properties (a count per
``(key, version)`` and the final state).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import CapturedRequest, FakeAPI, RecordStore, Window, bearer, now_iso
from undertow.testing.faults import Decision, FaultPlan, Ledger
from undertow.testing.hubspot_answers import (
    InputError,
    check_email,
    error_body,
    request_problem,
    text,
    with_injected_errors,
)
from undertow.testing.hubspot_associations import Associations
from undertow.testing.hubspot_associations import answer as associations_answer
from undertow.testing.hubspot_schemas import ObjectType, ObjectTypes

WINDOW_SECONDS = 10.0
OPERATIONS = ("create", "update", "upsert", "read", "archive")
_AUTH_DOCS = "https://developers.hubspot.com/docs/methods/auth/oauth-overview"

DEMO_PROPERTIES = {
    "contacts": ["plan", "seats", "mrr", "signup_date", "greeting", "recently_viewed_products"]
}
"""The custom contact properties of ``undertow demo``'s portal (an admin would create them)."""

__all__ = ["DEMO_PROPERTIES", "CapturedRequest", "HubSpotFake", "ObjectStore", "ObjectType"]

Properties = dict[str, str | None]


class ObjectStore(RecordStore):
    """Stored records of one object type: HubSpot id -> properties (emails caseless)."""

    def find(self, prop: str, value: Any) -> str | None:
        if prop == "hs_object_id":
            return str(value) if value is not None and str(value) in self else None
        return super().find(prop, value)


class HubSpotFake(FakeAPI):
    """An in-memory HubSpot account served as a Starlette app (``.app``)."""

    type = "hubspot"
    vendor = "HubSpot"
    request_id_header = "x-hubspot-correlation-id"

    def __init__(
        self,
        token: str = "demo-token",
        *,
        rate_limit_per_10s: int = 190,
        daily_limit: int | None = None,
        unique_properties: dict[str, set[str]] | None = None,
        properties: dict[str, list[str]] | None = None,
        strict_properties: bool = False,
        custom_objects: dict[str, dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        fault_plan: FaultPlan | None = None,
        ledger: Ledger | None = None,
        window_seconds: float = WINDOW_SECONDS,
    ) -> None:
        self.token = token
        self.daily_limit = daily_limit
        self.window_seconds = window_seconds
        windows = []
        if daily_limit is not None:
            windows.append(Window(daily_limit, 86_400.0, "DAILY"))
        windows.append(Window(rate_limit_per_10s, window_seconds, "TEN_SECONDLY_ROLLING"))
        self.types = ObjectTypes(properties, unique_properties)
        """The account's object types and their properties (``add_custom_object`` adds)."""
        self.strict_properties = strict_properties
        """True: a property the object type does not have is a per-record error."""
        for kind_name, spec in (custom_objects or {}).items():
            self.types.add_custom(kind_name, **spec)
        self.objects: dict[str, ObjectStore] = {name: ObjectStore() for name in self.types.types}
        self.associations = Associations()
        self.applied: list[tuple[str, str, dict[str, Any]]] = []
        self._next_id = 1001
        super().__init__(
            auth=bearer(token), windows=windows, fault_plan=fault_plan, ledger=ledger, clock=clock
        )

    @property
    def rate_limit_per_10s(self) -> int:
        """The burst window's limit (settable while serving)."""
        return self.windows[-1].limit

    @rate_limit_per_10s.setter
    def rate_limit_per_10s(self, value: int) -> None:
        self.windows[-1].limit = value

    def add_custom_object(
        self,
        name: str,
        properties: list[str],
        *,
        unique: tuple[str, ...] = (),
        required: tuple[str, ...] = (),
    ) -> ObjectType:
        """Define a custom object ``p<portal>_<name>`` (objectTypeId ``2-<n>``), as an admin
        would before syncing to it; its records are in ``objects[<fully qualified name>]``."""
        with self._lock:
            kind = self.types.add_custom(name, properties, unique=unique, required=required)
            self.objects[kind.name] = ObjectStore()
            return kind

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/crm/v3/objects/{object}", self._list, methods=["GET"]),
            Route("/crm/v3/objects/{object}/batch/{operation}", self._batch, methods=["POST"]),
            Route("/crm/v3/properties/{object}", self._properties, methods=["GET"]),
            Route("/crm/v3/schemas", self._schemas, methods=["GET"]),
            Route(
                "/crm/v4/associations/{source}/{target}/{path:path}",
                self._associations,
                methods=["GET", "POST"],
            ),
        ]

    # -- the vendor's answers ----------------------------------------------------------------

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
            body = error_body("INTERNAL_ERROR", "internal error", str(uuid.uuid4()))
        super().fail_next(n, status=status, body=body, headers=headers, path=path)

    def throttle_next(
        self, n: int = 1, *, policy: str = "TEN_SECONDLY_ROLLING", path: str | None = None
    ) -> None:
        """Answer the next ``n`` requests with HubSpot's 429 for ``policy`` (or ``DAILY``)."""
        headers = self._limit_headers(remaining=0)
        if policy == "DAILY":
            headers["X-HubSpot-RateLimit-Daily-Remaining"] = "0"
        for _ in range(n):
            super().fail_next(
                status=429, body=self.rate_limit_body(policy), headers=headers, path=path
            )

    def slow_down(self, window: Window | None) -> Response:
        policy = window.name if window is not None else "TEN_SECONDLY_ROLLING"
        return self.respond(429, self.rate_limit_body(policy))

    def unauthorized(self, captured: CapturedRequest) -> Response:
        message = (
            "The access token provided is invalid or has expired."
            if captured.credentials
            else "Authentication credentials not found. This API supports OAuth 2.0 "
            f"authentication and you can find more details at {_AUTH_DOCS}"
        )
        return self.respond(
            401, error_body("INVALID_AUTHENTICATION", message, str(uuid.uuid4())), {}
        )

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
            super().reset()
            self.objects = {name: ObjectStore() for name in self.types.types}
            self.associations.clear()
            self.applied.clear()

    def headers(self) -> dict[str, str]:
        return self._limit_headers()

    def _limit_headers(self, *, remaining: int | None = None) -> dict[str, str]:
        now = self.clock()
        window = self.windows[-1]
        if remaining is None:
            remaining = window.remaining(now)
        headers = {
            "X-HubSpot-RateLimit-Max": str(self.rate_limit_per_10s),
            "X-HubSpot-RateLimit-Remaining": str(remaining),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(self.window_seconds * 1000)),
        }
        if self.daily_limit is not None:
            headers["X-HubSpot-RateLimit-Daily"] = str(self.daily_limit)
            headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(self.windows[0].remaining(now))
        return headers

    def _respond(
        self,
        status: int,
        body: Any = None,
        *,
        correlation_id: str,
        headers: dict[str, str] | None = None,
    ) -> Response:
        extra = {"x-hubspot-correlation-id": correlation_id}
        if headers is not None:
            extra.update(headers)
        return self.respond(status, body, extra)

    # -- endpoints -------------------------------------------------------------------------

    async def _list(self, request: Request) -> Response:
        correlation_id = str(uuid.uuid4())
        _, early = await self.admit(request)
        if early is not None:
            return early
        kind = self.types.resolve(request.path_params["object"])
        if kind is None:
            return self._unknown_object(request.path_params["object"], correlation_id)
        name = kind.name
        try:
            limit = max(1, min(100, int(request.query_params.get("limit", "10"))))
        except ValueError:
            problem = error_body("VALIDATION_ERROR", "limit must be a number", correlation_id)
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

    async def _properties(self, request: Request) -> Response:
        correlation_id = str(uuid.uuid4())
        _, early = await self.admit(request)
        if early is not None:
            return early
        kind = self.types.resolve(request.path_params["object"])
        if kind is None:
            return self._unknown_object(request.path_params["object"], correlation_id)
        with self._lock:
            results = [dict(p) for p in kind.properties.values()]
        return self._respond(200, {"results": results}, correlation_id=correlation_id)

    async def _schemas(self, request: Request) -> Response:
        correlation_id = str(uuid.uuid4())
        _, early = await self.admit(request)
        if early is not None:
            return early
        with self._lock:
            results = [kind.schema_json() for kind in self.types.custom()]
        return self._respond(200, {"results": results}, correlation_id=correlation_id)

    async def _associations(self, request: Request) -> Response:
        """The v4 associations API (:mod:`undertow.testing.hubspot_associations`)."""
        correlation_id = str(uuid.uuid4())
        captured, early = await self.admit(request)
        if early is not None:
            return early
        kinds = [self.types.resolve(request.path_params[k]) for k in ("source", "target")]
        for segment, kind in zip(("source", "target"), kinds, strict=True):
            if kind is None:
                return self._unknown_object(request.path_params[segment], correlation_id)
        source, target = kinds
        assert source is not None and target is not None
        with self._lock:
            answer = associations_answer(
                self.associations,
                self.objects,
                source,
                target,
                request.method,
                request.path_params["path"],
                captured.body,
            )
        status, body = answer
        if status >= 400:
            body = error_body(body["category"], body["message"], correlation_id)
        return self._respond(status, body, correlation_id=correlation_id)

    def _unknown_object(self, name: str, correlation_id: str) -> Response:
        body = error_body(
            "OBJECT_NOT_FOUND", f"Unable to infer object type from: {name}", correlation_id
        )
        return self._respond(400, body, correlation_id=correlation_id)

    async def _batch(self, request: Request) -> Response:
        correlation_id = str(uuid.uuid4())
        captured, early = await self.admit(request)
        if early is not None:
            return early
        kind = self.types.resolve(request.path_params["object"])
        operation = request.path_params["operation"]
        if kind is None:
            return self._unknown_object(request.path_params["object"], correlation_id)
        name = kind.name
        if operation not in OPERATIONS:
            body = error_body(
                "VALIDATION_ERROR", f"Unknown batch operation {operation}", correlation_id
            )
            return self._respond(404, body, correlation_id=correlation_id)
        problem = request_problem(captured.body, operation)
        if problem is not None:
            body = error_body("VALIDATION_ERROR", problem, correlation_id)
            return self._respond(400, body, correlation_id=correlation_id)
        inputs: list[dict[str, Any]] = captured.body["inputs"]
        self.note_batch(len(inputs))
        started = now_iso()
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
        if fate.rejected and answer.status_code < 300:  # a ``partial`` fault's refused inputs
            body = with_injected_errors(orjson.loads(answer.body), refused)
            answer = self._respond(207, body, correlation_id=correlation_id)
        return await fate.answer(answer)

    def _id_property(self, name: str, item: dict[str, Any], body: dict[str, Any]) -> str:
        prop = item.get("idProperty") or body.get("idProperty") or "hs_object_id"
        if prop not in self.types.types[name].unique:
            raise InputError(
                "VALIDATION_ERROR",
                f"{prop} is not a unique property of {name}; idProperty must name a property "
                "with unique values",
                {"idProperty": [str(prop)]},
            )
        return str(prop)

    def _check_properties(
        self, name: str, props: dict[str, Any], context: dict[str, list[str]], *, new: bool
    ) -> None:
        kind = self.types.types[name]
        if self.strict_properties:
            for key in props:
                if key not in kind.properties:
                    raise InputError(
                        "VALIDATION_ERROR",
                        f'Property "{key}" does not exist',
                        {**context, "propertyName": [key]},
                        code="PROPERTY_DOESNT_EXIST",
                    )
        missing = [p for p in kind.required if new and props.get(p) in (None, "")]
        if missing:
            raise InputError(
                "VALIDATION_ERROR",
                f"Required properties are missing: {missing}",
                {**context, "propertyName": missing},
                code="REQUIRED_FIELD",
            )
        if name == "contacts":
            check_email(props.get("email"), context)

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
            except InputError as exc:
                if not multi_status:
                    refusal = error_body(
                        exc.category, exc.message, correlation_id, context=exc.context
                    )
                    return self._respond(400, refusal, correlation_id=correlation_id)
                errors.append(
                    {
                        "status": "error",
                        "category": exc.category,
                        "message": exc.message,
                        "context": exc.context,
                        "errors": [{"message": exc.message, "code": exc.code, "in": "properties"}],
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
            "completedAt": now_iso(),
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
            self._check_properties(name, props, context, new=True)
            return lambda: self._create(name, props)
        prop = self._id_property(name, item, body)
        key = str(item["id"])
        object_id = store.find(prop, key)
        if operation == "read":
            if object_id is None:
                raise InputError(
                    "OBJECT_NOT_FOUND", self._not_found(name), {**context, "ids": [key]}
                )
            wanted = body.get("properties") or []
            found = object_id
            return lambda: self._public(store, found, only=wanted)
        if operation == "update":
            if object_id is None:
                raise InputError(
                    "OBJECT_NOT_FOUND", self._not_found(name), {**context, "ids": [key]}
                )
            self._check_properties(name, props, context, new=False)
            found = object_id
            return lambda: self._update(name, found, props)
        # upsert
        if prop == "hs_object_id":
            raise InputError(
                "VALIDATION_ERROR",
                "Upsert needs an idProperty naming a unique property (e.g. email), not the "
                "object id",
                {**context, "idProperty": [prop]},
            )
        self._check_properties(name, {prop: key, **props}, context, new=object_id is None)
        if object_id is None:
            created = {**props, prop: key}
            return lambda: {**self._create(name, created), "new": True}
        found = object_id
        return lambda: {**self._update(name, found, props), "new": False}

    def _not_found(self, name: str) -> str:
        return (
            f"Could not get some {self.types.types[name].singular.upper()} objects, they may "
            "be deleted or not exist. Check that ids are valid."
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
        stamp = now_iso()
        stored: Properties = {k: text(v) for k, v in props.items()}
        if name == "contacts" and stored.get("email"):
            stored["email"] = str(stored["email"]).lower()
        stored.update(hs_object_id=object_id, createdate=stamp, lastmodifieddate=stamp)
        store.create(stored, object_id=object_id)
        return self._public(store, object_id)

    def _update(self, name: str, object_id: str, props: dict[str, Any]) -> dict[str, Any]:
        store = self.objects[name]
        changes: Properties = {}
        for key, value in props.items():
            value_text = text(value)
            if name == "contacts" and key == "email" and value_text:
                value_text = value_text.lower()
            changes[key] = value_text
        changes["lastmodifieddate"] = now_iso()
        store.modify(object_id, changes)
        return self._public(store, object_id)

    def _archive(self, name: str, object_id: str) -> None:
        store = self.objects[name]
        if store.archive(object_id):
            self.applied.append((name, "archive", {"id": object_id}))
            if self.ledger is not None:
                self.ledger.apply("archive", store.archived[object_id])
