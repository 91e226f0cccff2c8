"""A faithful local fake of Customer.io's Track API v2 batch endpoint (people, objects, events).

It follows ``../shared/specs/customerio/NOTES.md`` (the vendor's OpenAPI description,
trimmed, not shippable) and the Track API reference (links in
``docs/destinations/customerio.md``):

* HTTP Basic ``site_id:api_key``; anything else is a 401.
* ``POST /api/v2/batch`` ``{"batch": [...]}`` under 500 KB (413 above); each item at most
  32 KB. An item is ``{type: person|object, identifiers, action, ...}``: a person names
  exactly one of ``id``, ``email``, ``cio_id``; an object ``object_type_id`` and
  ``object_id``. Actions: ``identify`` (an upsert of ``attributes``; idempotent), ``delete``
  (a person or object it does not have is no error) and, for people, ``event`` (``name``
  required; an ``id`` must be a ULID, and an event whose ``id`` was seen is dropped).
* 200 when every item applied; **207** with ``errors: [{batch_index, reason, field,
  message}]`` for the items refused, the others applied; 400 for a body that is not a batch.
* Customer.io's fair-use limit (100 requests a second) is not strictly enforced: the fake
  does not answer 429 on its own (``throttle_next`` scripts one).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.destinations.kit.engagement import is_ulid
from undertow.testing.fakes import FakeAPI, now_iso

MAX_REQUEST = 500_000
MAX_ITEM = 32_000
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PEOPLE = ("id", "email", "cio_id")


class _ItemError(Exception):
    def __init__(self, reason: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.reason, self.message, self.field = reason, message, field


class CustomerIOFake(FakeAPI):
    """An in-memory Customer.io workspace served as a Starlette app (``.app``)."""

    type = "customerio"
    vendor = "Customer.io"
    request_id_header = "x-request-id"

    def __init__(
        self,
        token: str = "cio-demo-0000-local-fake",
        *,
        site_id: str = "demo-site",
        hold: Callable[[str, Any], float] | None = None,
    ) -> None:
        expected = "Basic " + base64.b64encode(f"{site_id}:{token}".encode()).decode()
        self.hold = hold
        self.people: dict[str, dict[str, Any]] = {}
        """``id:42`` / ``email:a@x.com`` / ``cio_id:..`` -> attributes."""
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        """Every event kept (one per id: repeats are dropped)."""
        self.dropped_events = 0
        self._event_ids: set[str] = set()
        super().__init__(auth=lambda r: r.headers.get("authorization") == expected)

    def routes(self) -> list[BaseRoute]:
        return [Route("/api/v2/batch", self.batch, methods=["POST"])]

    def unauthorized(self, captured: Any) -> Response:
        return self.respond(401, {"meta": {"error": "Unauthorized request"}})

    def slow_down(self, window: Any) -> Response:
        return self.respond(429, {"meta": {"error": "Too many requests"}})

    def person(self, field: str, value: Any) -> dict[str, Any] | None:
        text = str(value).casefold() if field == "email" else str(value)
        return self.people.get(f"{field}:{text}")

    async def batch(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        if len(captured.raw) > MAX_REQUEST:
            return self.respond(413, {"meta": {"error": "batch is larger than 500KB"}})
        items = captured.body.get("batch") if isinstance(captured.body, dict) else None
        if not isinstance(items, list):
            return self.respond(400, {"meta": {"error": 'body must be {"batch": [...]}'}})
        self.note_batch(len(items))
        errors: list[dict[str, Any]] = []
        with self._lock:
            for index, item in enumerate(items):
                try:
                    if len(orjson.dumps(item)) > MAX_ITEM:
                        raise _ItemError("payload_too_large", "item is larger than 32KB")
                    self._apply(item)
                except _ItemError as exc:
                    errors.append(
                        {
                            "batch_index": index,
                            "reason": exc.reason,
                            "field": exc.field,
                            "message": exc.message,
                        }
                    )
        answer = self.respond(207, {"errors": errors}) if errors else self.respond(200, {})
        if self.hold is not None:
            seconds = self.hold("/api/v2/batch", captured.body)
            if seconds:
                await asyncio.sleep(seconds)
        return answer

    def _apply(self, item: Any) -> None:
        if not isinstance(item, dict):
            raise _ItemError("invalid", "item must be an object")
        kind, action = item.get("type"), item.get("action")
        identifiers = item.get("identifiers")
        if not isinstance(identifiers, dict):
            raise _ItemError("required", "identifiers is required", "identifiers")
        if kind == "object":
            if action == "event":
                raise _ItemError("invalid", "objects do not take events", "action")
            key = (
                str(identifiers.get("object_type_id") or ""),
                str(identifiers.get("object_id") or ""),
            )
            if not all(key):
                raise _ItemError(
                    "required", "object_type_id and object_id are required", "identifiers"
                )
            if action == "identify":
                self.objects.setdefault(key, {}).update(item.get("attributes") or {})
            elif action == "delete":
                self.objects.pop(key, None)
            else:
                raise _ItemError("invalid", f"unsupported action {action!r}", "action")
            return
        if kind != "person":
            raise _ItemError("invalid", f"unsupported type {kind!r}", "type")
        given = [f for f in PEOPLE if identifiers.get(f) not in (None, "")]
        if len(given) != 1:
            raise _ItemError(
                "invalid", "exactly one of id, email, cio_id is required", "identifiers"
            )
        field = given[0]
        value = identifiers[field]
        if field == "email" and not _EMAIL.match(str(value)):
            raise _ItemError("invalid", f"{value!r} is not a valid email", "identifiers.email")
        who = f"{field}:{str(value).casefold() if field == 'email' else value}"
        if action == "identify":
            attributes = item.get("attributes") or {}
            if (
                "email" in attributes
                and attributes["email"]
                and not _EMAIL.match(str(attributes["email"]))
            ):
                raise _ItemError(
                    "invalid", f"{attributes['email']!r} is not a valid email", "attributes.email"
                )
            self.people.setdefault(who, {}).update(attributes)
        elif action == "delete":
            self.people.pop(who, None)
        elif action == "event":
            if not item.get("name"):
                raise _ItemError("required", "name is required", "name")
            event_id = item.get("id")
            if event_id is not None and not is_ulid(str(event_id)):
                raise _ItemError("invalid", f"id {event_id!r} is not a ULID", "id")
            if event_id is not None and event_id in self._event_ids:
                self.dropped_events += 1
                return
            if event_id is not None:
                self._event_ids.add(str(event_id))
            self.people.setdefault(who, {})
            self.events.append({"person": who, **item, "received_at": now_iso()})
        else:
            raise _ItemError("invalid", f"unsupported action {action!r}", "action")


__all__ = ["CustomerIOFake"]
