"""A faithful local fake of PostHog's capture endpoints: ``/batch/`` and ``/flags``.

It follows what PostHog documents (``docs/destinations/posthog.md`` cites each fact) and
what its capture service does (``rust/capture`` in PostHog/posthog):

* ``POST /batch/`` (also ``/batch``), JSON ``{"api_key" | "token", "historical_migration",
  "batch": [...]}``, at most 20 MiB (413 above, plain text, as axum's body limit answers).
  The key's *shape* only is checked (empty, over 64 characters, not ASCII, a personal
  ``phx_`` key, a NUL: 401 ``API key is not valid: <reason>``; none: 401 ``event submitted
  without an api_key``). **Any other key is answered 200** and, when it is not the project's,
  its events are dropped (``unknown_key_events``), as capture does before the team lookup.
* The whole request is refused (400, plain text, nothing ingested) for invalid JSON, an
  empty batch, one event without ``event`` or ``distinct_id`` (top level or in
  ``properties``), a ``uuid`` that is not a UUID, or an event over 1,000,000 bytes (the
  Kafka message limit). Otherwise 200 ``{"status": "Ok"}``.
* Events are deduplicated on ``uuid`` (``dropped_events``): PostHog collapses them when
  ClickHouse merges, not at once; the fake drops the repeat at once.
* ``$set`` / ``$identify`` events set person properties (``properties.$set`` or a top-level
  ``$set``; ``$set_once`` where unset); any event's ``properties.$set`` does too. Other
  events are kept in ``events``.
* ``billing_limited``: answered 200 and dropped (capture's v0 endpoints do so at the
  billing limit).
* ``POST /flags?v=2``: 200 ``{"flags": {}, ...}`` for the project's key, 401 for any other.
* No rate limit (PostHog states none for capture); ``throttle_next`` scripts a 429.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import FakeAPI, now_iso

MAX_BODY = 20 * 1024 * 1024
MAX_EVENT = 1_000_000
MAX_KEY = 64
PERSON_EVENTS = frozenset({"$set", "$identify"})


def key_problem(key: str) -> str | None:
    """Capture's token shape check (``InvalidTokenReason``), or None."""
    key = key.strip()
    if not key:
        return "empty"
    if len(key) > MAX_KEY:
        return "too_long"
    if not key.isascii():
        return "not_ascii"
    if key.startswith("phx_"):
        return "personal_api_key"
    if "\0" in key:
        return "null_byte"
    return None


class PostHogFake(FakeAPI):
    """An in-memory PostHog project (persons and events)."""

    type = "posthog"
    vendor = "PostHog"
    request_id_header = None

    def __init__(
        self,
        token: str = "phc_demo0000localfake",
        *,
        hold: Callable[[str, Any], float] | None = None,
        keep_events: bool = True,
    ) -> None:
        self.token = token
        self.hold = hold
        self.keep_events = keep_events
        """False: count events and keep only their uuids (a benchmark of millions)."""
        self.persons: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.received = 0
        self.dropped_events = 0
        self.unknown_key_events = 0
        self.historical: list[bool] = []
        """``historical_migration`` of each accepted request."""
        self.billing_limited = False
        self._uuids: set[str] = set()
        super().__init__()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/batch/", self.batch, methods=["POST"]),
            Route("/batch", self.batch, methods=["POST"]),
            Route("/flags/", self.flags, methods=["POST"]),
            Route("/flags", self.flags, methods=["POST"]),
        ]

    def slow_down(self, window: Any) -> Response:
        return self.respond(429, "rate limited")

    def person(self, distinct_id: Any) -> dict[str, Any] | None:
        return self.persons.get(str(distinct_id))

    async def flags(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        body = captured.body if isinstance(captured.body, dict) else {}
        key = str(body.get("api_key") or body.get("token") or "")
        if key.strip() != self.token:
            return self.respond(
                401, "The provided API key is invalid or has expired. Please check your API key"
            )
        return self.respond(200, {"flags": {}, "errorsWhileComputingFlags": False})

    async def batch(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        if len(captured.raw) > MAX_BODY:
            return self.respond(413, "Failed to buffer the request body: length limit exceeded")
        body = captured.body
        if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
            return self.respond(400, "failed to parse request: expected a batch object")
        key = str(body.get("api_key") or body.get("token") or "")
        if not key:
            return self.respond(401, "event submitted without an api_key")
        problem = key_problem(key)
        if problem:
            return self.respond(401, f"API key is not valid: {problem}")
        events = body["batch"]
        if not events:
            return self.respond(400, "request holds no event")
        refusal = next((r for r in map(_refusal, events) if r), None)
        if refusal:
            return self.respond(400, refusal)
        self.note_batch(len(events))
        with self._lock:
            if key.strip() != self.token:
                self.unknown_key_events += len(events)
            elif not self.billing_limited:
                self.historical.append(bool(body.get("historical_migration")))
                for event in events:
                    self._ingest(event)
        if self.hold is not None:
            seconds = self.hold(captured.path, body)
            if seconds:
                await asyncio.sleep(seconds)
        return self.respond(200, {"status": "Ok"})

    def _ingest(self, event: dict[str, Any]) -> None:
        given = event.get("uuid")
        if given:
            if given in self._uuids:
                self.dropped_events += 1
                return
            self._uuids.add(str(given))
        self.received += 1
        properties = event.get("properties") or {}
        who = str(_distinct_id(event))
        sets = {**(event.get("$set") or {}), **(properties.get("$set") or {})}
        once = {**(event.get("$set_once") or {}), **(properties.get("$set_once") or {})}
        if sets or once or event["event"] in PERSON_EVENTS:
            person = self.persons.setdefault(who, {})
            person.update(sets)
            for k, v in once.items():
                person.setdefault(k, v)
        if event["event"] in PERSON_EVENTS:
            return
        if self.keep_events:
            self.events.append({**event, "distinct_id": who, "received_at": now_iso()})


def _distinct_id(event: dict[str, Any]) -> Any:
    found = event.get("distinct_id")
    if found in (None, ""):
        properties = event.get("properties")
        found = properties.get("distinct_id") if isinstance(properties, dict) else None
    return found


def _refusal(event: Any) -> str | None:
    """Why capture refuses the whole request for this event, or None."""
    if not isinstance(event, dict):
        return "failed to parse request: an event is not an object"
    if not event.get("event"):
        return "event submitted with an empty event name"
    found = _distinct_id(event)
    if found in (None, "") or isinstance(found, dict | list):
        return "event submitted without a distinct_id"
    if event.get("uuid") is not None:
        try:
            uuid.UUID(str(event["uuid"]))
        except ValueError:
            return "failed to parse request: invalid uuid"
    if len(orjson.dumps(event)) > MAX_EVENT:
        return "maximum event size exceeded"
    return None


__all__ = ["PostHogFake", "key_problem"]
