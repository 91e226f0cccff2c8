"""A faithful local fake of Attio's REST API v2 records (people, companies, custom objects).

Used by the connector tests, the conformance tests, ``undertow demo --destination attio``
and ``undertow fake attio``. It answers like Attio documents (``docs/destinations/attio.md``
lists the links; what is modelled rather than documented is said there):

* ``Authorization: Bearer <token>``; anything else is a 401 ``auth_error``. ``GET /v2/self``
  says ``{"active": true, ...}`` for the right token.
* Objects have attributes (``GET /v2/objects/{object}/attributes``: ``api_slug``, ``type``,
  ``is_unique``, ``is_writable``, ``is_multiselect``...). A value is checked against its
  attribute's type; an unknown slug, a wrong type, a bad email or an unknown select option
  is a 400 naming the attribute, and nothing is written.
* ``PUT /v2/objects/{object}/records?matching_attribute=<slug>`` asserts: the attribute
  must be unique and have a value in the body; the record holding that value is updated
  (the matching multiselect attribute gains values, every other attribute given is
  overwritten), or a record is created. Two records holding the values: 400
  ``multiple_match_results``.
* ``POST .../records`` creates (a unique value already held: 409 ``uniqueness_conflict``),
  ``POST .../records/query`` filters on attribute equality, ``PUT``/``PATCH``/``GET``/
  ``DELETE .../records/{record_id}`` (unknown id: 404 ``not_found``).
* Errors are ``{"status_code", "type", "code", "message"}``. Two rolling windows, 25 writes
  and 100 reads per second (GET and query are reads), answer 429 ``rate_limit_exceeded``
  with ``Retry-After`` as an HTTP date (the next whole second).

The default workspace has Attio's standard people and companies attributes plus the custom
people attributes the demo maps (``DEMO_ATTRIBUTES``); pass ``attributes=`` to add others.
"""

from __future__ import annotations

import email.utils
import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.attio_values import (
    DEMO_ATTRIBUTES,
    STANDARD,
    SYSTEM,
    WORKSPACE_ID,
    Attribute,
    Refused,
    norm,
    parse_values,
    primary,
)
from undertow.testing.fakes import CapturedRequest, FakeAPI, Window, bearer, now_iso
from undertow.testing.faults import FaultPlan, Ledger


class AttioFake(FakeAPI):
    """An in-memory Attio workspace served as a Starlette app (``.app``)."""

    type = "attio"
    vendor = "Attio"
    request_id_header = "x-request-id"

    def __init__(
        self,
        token: str = "demo-token",
        *,
        writes_per_second: int = 25,
        reads_per_second: int = 100,
        window_seconds: float = 1.0,
        attributes: dict[str, Sequence[Attribute]] | None = None,
        fault_plan: FaultPlan | None = None,
        ledger: Ledger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attributes: dict[str, dict[str, Attribute]] = {}
        for source in (STANDARD, DEMO_ATTRIBUTES, attributes or {}):
            for name, attrs in source.items():
                known = self.attributes.setdefault(name, {a.slug: a for a in SYSTEM})
                known.update({a.slug: a for a in attrs})
        self.object_ids = {n: str(uuid.uuid5(uuid.NAMESPACE_URL, n)) for n in self.attributes}
        self.records: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {
            n: {} for n in self.attributes
        }
        self.unique: dict[str, dict[str, dict[str, str]]] = {n: {} for n in self.attributes}
        """object -> unique attribute -> normalised value -> record id (an index)."""
        self.writes = Window(writes_per_second, window_seconds, "writes")
        self.reads = Window(reads_per_second, window_seconds, "reads")
        super().__init__(
            auth=bearer(token),
            windows=[self.writes, self.reads],
            fault_plan=fault_plan,
            ledger=ledger,
            clock=clock,
        )

    def routes(self) -> list[BaseRoute]:
        base = "/v2/objects/{object}"
        return [
            Route("/v2/self", self._self, methods=["GET"]),
            Route(base, self._object, methods=["GET"]),
            Route(base + "/attributes", self._attributes, methods=["GET"]),
            Route(base + "/records", self._records, methods=["PUT", "POST"]),
            Route(base + "/records/query", self._query, methods=["POST"]),
            Route(base + "/records/{record_id}", self._record, methods=["GET", "PUT", "PATCH"]),
            Route(base + "/records/{record_id}", self._delete, methods=["DELETE"]),
        ]

    # -- what tests read -------------------------------------------------------------------

    def flat(self, object_: str, record_id: str) -> dict[str, Any]:
        """A record's values in plain form: a scalar per attribute (a list when several)."""
        attrs = self.attributes[object_]
        out: dict[str, Any] = {}
        for slug, values in self.records[object_][record_id].items():
            plain = [primary(attrs[slug], v) for v in values]
            out[slug] = plain[0] if len(plain) == 1 else plain
        return out

    def find(self, object_: str, slug: str, value: Any) -> str | None:
        """The id of the record whose ``slug`` holds ``value`` (caseless for emails/domains)."""
        found = self._holders(object_, slug, [value], plain=True)
        return next(iter(sorted(found)), None)

    def by(self, object_: str, slug: str, value: Any) -> dict[str, Any] | None:
        record_id = self.find(object_, slug, value)
        return None if record_id is None else self.flat(object_, record_id)

    def reset(self) -> None:
        with self._lock:
            super().reset()
            self.records = {n: {} for n in self.attributes}
            self.unique = {n: {} for n in self.attributes}

    # -- the vendor's answers ----------------------------------------------------------------

    def error(
        self, status: int, code: str, message: str, kind: str = "invalid_request_error"
    ) -> Response:
        body = {"status_code": status, "type": kind, "code": code, "message": message}
        return self.respond(status, body)

    def unauthorized(self, captured: CapturedRequest) -> Response:
        message = (
            "Invalid access token."
            if captured.credentials
            else "The Authorization header was not provided. Please provide a valid access "
            "token using the Bearer scheme."
        )
        return self.error(401, "unauthorized", message, "auth_error")

    def slow_down(self, window: Window | None) -> Response:
        wait = window.reset_in(self.clock()) if window is not None else 1.0
        at = math.ceil(time.time() + max(wait, 0.001))
        body = {
            "status_code": 429,
            "type": "rate_limit_error",
            "code": "rate_limit_exceeded",
            "message": "Rate limit exceeded, please try again later",
        }
        return self.respond(429, body, {"Retry-After": email.utils.formatdate(at, usegmt=True)})

    def windows_for(self, captured: CapturedRequest) -> Sequence[Window]:
        read = captured.method == "GET" or captured.path.endswith("/records/query")
        return [self.reads] if read else [self.writes]

    # -- endpoints -------------------------------------------------------------------------

    async def _self(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        return self.respond(
            200,
            {
                "active": True,
                "scope": "record_permission:read-write object_configuration:read",
                "client_id": "undertow-fake",
                "token_type": "Bearer",
                "workspace_id": WORKSPACE_ID,
                "workspace_name": "Undertow fake",
                "workspace_slug": "undertow-fake",
                "workspace_logo_url": None,
                "authorized_by_workspace_member_id": str(uuid.uuid4()),
                "exp": None,
                "iat": int(time.time()),
                "aud": "undertow-fake",
                "iss": "attio.com",
                "sub": WORKSPACE_ID,
            },
        )

    async def _object(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        name = request.path_params["object"]
        if name not in self.attributes:
            return self._no_object(name)
        return self.respond(
            200,
            {
                "data": {
                    "id": {"workspace_id": WORKSPACE_ID, "object_id": self.object_ids[name]},
                    "api_slug": name,
                    "singular_noun": name.rstrip("s").title(),
                    "plural_noun": name.title(),
                    "created_at": "2022-11-21T13:22:49.061000000Z",
                }
            },
        )

    async def _attributes(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        name = request.path_params["object"]
        if name not in self.attributes:
            return self._no_object(name)
        object_id = self.object_ids[name]
        return self.respond(
            200, {"data": [a.public(object_id) for a in self.attributes[name].values()]}
        )

    def _no_object(self, name: str) -> Response:
        return self.error(404, "not_found", f'Object with slug/ID "{name}" not found.')

    async def _records(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        name = request.path_params["object"]
        if name not in self.attributes:
            return self._no_object(name)
        self.note_batch(1)  # one record per request: Attio has no batch write
        fate = self.decide(captured.raw, 1)
        if not fate.applies:
            return fate.refusal()
        await fate.before()
        try:
            with self._lock:
                values = parse_values(self.attributes[name], captured.body)
                if request.method == "PUT":
                    matching = request.query_params.get("matching_attribute", "")
                    record_id, operation = self._assert(name, matching, values)
                else:
                    record_id, operation = self._create(name, values), "create"
                answer = self._applied(name, record_id, operation)
        except Refused as refused:
            return self.error(refused.status, refused.code, refused.message)
        return await fate.answer(answer)

    async def _query(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        name = request.path_params["object"]
        if name not in self.attributes:
            return self._no_object(name)
        body = captured.body if isinstance(captured.body, dict) else {}
        conditions = body.get("filter") or {}
        try:
            limit = int(body.get("limit", 500))
            offset = int(body.get("offset", 0))
            if not isinstance(conditions, dict):
                raise Refused(400, "filter_error", "The filter must be an object.")
            with self._lock:
                found = [
                    self._public(name, record_id)
                    for record_id in self._candidates(name, conditions)
                    if self._matches(name, record_id, conditions)
                ]
        except (Refused, ValueError) as refused:
            if isinstance(refused, Refused):
                return self.error(refused.status, refused.code, refused.message)
            return self.error(400, "validation_type", "limit and offset must be numbers.")
        return self.respond(200, {"data": found[offset : offset + limit]})

    async def _record(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        name, record_id = request.path_params["object"], request.path_params["record_id"]
        if name not in self.attributes:
            return self._no_object(name)
        try:
            with self._lock:
                if record_id not in self.records[name]:
                    raise Refused(404, "not_found", f'Record with ID "{record_id}" not found.')
                if request.method == "GET":
                    return self.respond(200, {"data": self._public(name, record_id)})
                values = parse_values(self.attributes[name], captured.body)
                self._check_unique(name, values, record_id)
                self._write(name, record_id, values, append=request.method == "PATCH")
                answer = self._applied(name, record_id, "update")
        except Refused as refused:
            return self.error(refused.status, refused.code, refused.message)
        return answer

    async def _delete(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        name, record_id = request.path_params["object"], request.path_params["record_id"]
        if name not in self.attributes:
            return self._no_object(name)
        with self._lock:
            if record_id in self.records[name]:
                self._write(name, record_id, {k: [] for k in self.records[name][record_id]})
            gone = self.records[name].pop(record_id, None)
        if gone is None:
            return self.error(404, "not_found", f'Record with ID "{record_id}" not found.')
        if self.ledger is not None:
            self.ledger.apply("delete", {"object": name, "record_id": record_id})
        return self.respond(200, {})

    # -- the workspace ---------------------------------------------------------------------

    def _holders(
        self, name: str, slug: str, values: Iterable[Any], *, plain: bool = False
    ) -> set[str]:
        """Records whose ``slug`` holds one of ``values`` (stored value dicts, or ``plain``)."""
        attribute = self.attributes[name][slug]
        wanted = {norm(attribute, v if plain else primary(attribute, v)) for v in values}
        if attribute.unique:
            index = self.unique[name].get(slug, {})
            return {index[w] for w in wanted if w in index}
        return {
            record_id
            for record_id, held in self.records[name].items()
            if any(norm(attribute, primary(attribute, v)) in wanted for v in held.get(slug, []))
        }

    def _candidates(self, name: str, conditions: dict[str, Any]) -> Iterable[str]:
        """Records a query may match: through a unique index when it filters on one."""
        for slug, wanted in conditions.items():
            attribute = self.attributes[name].get(slug)
            if attribute is not None and attribute.unique and not isinstance(wanted, dict):
                return sorted(self._holders(name, slug, [wanted], plain=True))
        return list(self.records[name])

    def _check_unique(
        self, name: str, values: dict[str, list[dict[str, Any]]], own: str | None
    ) -> None:
        for slug, given in values.items():
            if self.attributes[name][slug].unique and self._holders(name, slug, given) - {own}:
                raise Refused(
                    409,
                    "uniqueness_conflict",
                    f'A record with the same value for the unique attribute "{slug}" already exists.',
                )

    def _assert(
        self, name: str, matching: str, values: dict[str, list[dict[str, Any]]]
    ) -> tuple[str, str]:
        attribute = self.attributes[name].get(matching)
        if attribute is None:
            raise Refused(
                400,
                "value_not_found",
                f'No attribute was found for matching_attribute slug/ID "{matching}".',
            )
        if not attribute.unique:
            raise Refused(
                400,
                "validation_type",
                f'The matching_attribute "{matching}" must be a unique attribute.',
            )
        if not values.get(matching):
            raise Refused(
                400,
                "missing_value",
                f'The matching_attribute "{matching}" has no value in the request body.',
            )
        holders = self._holders(name, matching, values[matching])
        if len(holders) > 1:
            raise Refused(
                400,
                "multiple_match_results",
                f'Multiple records match the value of matching_attribute "{matching}".',
            )
        if not holders:
            return self._create(name, values), "create"
        record_id = holders.pop()
        self._check_unique(name, {k: v for k, v in values.items() if k != matching}, record_id)
        held = self.records[name][record_id].get(matching, [])
        have = {norm(attribute, primary(attribute, v)) for v in held}
        added = [v for v in values[matching] if norm(attribute, primary(attribute, v)) not in have]
        self._write(name, record_id, {**values, matching: held + added})
        return record_id, "update"

    def _create(self, name: str, values: dict[str, list[dict[str, Any]]]) -> str:
        self._check_unique(name, values, None)
        record_id = str(uuid.uuid4())
        stamp = {
            "active_from": now_iso(),
            "active_until": None,
            "created_by_actor": {"type": "system", "id": None},
        }
        self.records[name][record_id] = {}
        system = {
            "record_id": [{**stamp, "attribute_type": "text", "value": record_id}],
            "created_at": [{**stamp, "attribute_type": "timestamp", "value": now_iso()}],
        }
        self._write(name, record_id, {**system, **values})
        return record_id

    def _write(
        self,
        name: str,
        record_id: str,
        values: dict[str, list[dict[str, Any]]],
        *,
        append: bool = False,
    ) -> None:
        held = self.records[name][record_id]
        for slug, given in values.items():
            attribute = self.attributes[name][slug]
            before = held.get(slug, [])
            if append and attribute.multiselect:
                held[slug] = before + given
            elif given:
                held[slug] = given
            else:
                held.pop(slug, None)
            if attribute.unique:
                index = self.unique[name].setdefault(slug, {})
                for value in before:
                    index.pop(norm(attribute, primary(attribute, value)), None)
                for value in held.get(slug, []):
                    index[norm(attribute, primary(attribute, value))] = record_id

    def _matches(self, name: str, record_id: str, conditions: dict[str, Any]) -> bool:
        for slug, wanted in conditions.items():
            attribute = self.attributes[name].get(slug)
            if attribute is None:
                raise Refused(400, "filter_error", f'Unknown attribute slug in filter: "{slug}".')
            if isinstance(wanted, dict):
                if set(wanted) != {"$eq"}:
                    raise Refused(
                        400, "filter_error", "Only equality filters are supported by this fake."
                    )
                wanted = wanted["$eq"]
            held = self.records[name][record_id].get(slug, [])
            if not any(
                norm(attribute, primary(attribute, v)) == norm(attribute, wanted) for v in held
            ):
                return False
        return True

    def _public(self, name: str, record_id: str) -> dict[str, Any]:
        values = self.records[name][record_id]
        return {
            "id": {
                "workspace_id": WORKSPACE_ID,
                "object_id": self.object_ids[name],
                "record_id": record_id,
            },
            "created_at": values["created_at"][0]["value"],
            "web_url": f"https://app.attio.com/undertow-fake/{name}/{record_id}",
            "values": {slug: [dict(v) for v in held] for slug, held in values.items()},
        }

    def _applied(self, name: str, record_id: str, operation: str) -> Response:
        if self.ledger is not None:
            self.ledger.apply(operation, {"object": name, **self.flat(name, record_id)})
        return self.respond(200, {"data": self._public(name, record_id)})
