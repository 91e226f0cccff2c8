"""A faithful local fake of Mixpanel's ingestion API: /engage (profiles) and /import (events).

It follows ``../shared/specs/mixpanel/NOTES.md`` and the docs linked from
``docs/destinations/mixpanel.md``:

* ``/import``: HTTP Basic with the project token or the project secret as username (empty
  password), or a service account ``username:secret`` with ``?project_id=``; anything else is a 401. A JSON
  array (or NDJSON) of at most 2,000 events and 10 MB (413 above). With ``strict=1`` each
  event is validated (``event``, ``properties.time``, ``properties.distinct_id``,
  ``$insert_id`` of at most 36 letters, digits or dashes, under 1 MB and 255 properties): the
  valid ones are ingested and the answer is 400 ``{"code": 400, "num_records_imported": N,
  "status": "Bad Request", "failed_records": [{index, insert_id, field, message}]}``.
  Events are deduplicated on (event, time, distinct_id, ``$insert_id``): a repeat is
  counted in ``dropped_events`` and not kept twice.
* ``/engage``: a JSON array of at most 2,000 updates, each with ``$token`` and
  ``$distinct_id`` and one operation (``$set``, ``$set_once``, ``$unset``, ``$delete``). It
  answers 200 even when the batch is refused (``1`` / ``0``; with ``verbose=1``
  ``{"error": ..., "status": 0|1}``). Not confirmed: whether Mixpanel applies the valid
  updates of a refused batch; the fake applies none.
* Rate limit: 2 GB of JSON a minute (~30k events/s) per project on a rolling minute: the
  fake counts events on a rolling minute (``events_per_minute``) and answers 429
  ``{"code": 429, "error": ..., "status": "Too Many Requests"}`` with no ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import FakeAPI, now_iso

MAX_EVENTS = 2000
MAX_BYTES = 10_000_000
MAX_EVENT = 1_000_000
MAX_PROPERTIES = 255
INSERT_ID = re.compile(r"^[A-Za-z0-9-]{1,36}$")
THROTTLED = {
    "code": 429,
    "error": "Project exceeded rate limits. Please retry the request with exponential backoff.",
    "status": "Too Many Requests",
}


class MixpanelFake(FakeAPI):
    """An in-memory Mixpanel project served as a Starlette app (``.app``)."""

    type = "mixpanel"
    vendor = "Mixpanel"
    request_id_header = None

    def __init__(
        self,
        token: str = "mp-demo-0000-local-fake",
        *,
        service_account: tuple[str, str, str] | None = None,
        api_secret: str | None = None,
        events_per_minute: int = 1_800_000,
        window_seconds: float = 60.0,
        hold: Callable[[str, Any], float] | None = None,
        keep_events: bool = True,
    ) -> None:
        self.token = token
        self.service_account = service_account
        self.api_secret = api_secret
        """(username, secret, project_id) also accepted on /import."""
        self.hold = hold
        self.keep_events = keep_events
        """False: count events and keep only their dedupe keys (a benchmark of millions)."""
        self.received = 0
        """Events ingested (repeats dropped), kept or not."""
        self.profiles: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.dropped_events = 0
        self._seen: set[Any] = set()
        self.events_per_minute = events_per_minute
        self.window_seconds = window_seconds
        self._arrivals: deque[tuple[float, int]] = deque()
        self._in_window = 0
        super().__init__()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/import", self.import_, methods=["POST"]),
            Route("/engage", self.engage, methods=["POST"]),
        ]

    def slow_down(self, window: Any) -> Response:
        return self.respond(429, THROTTLED)

    def unauthorized(self, captured: Any) -> Response:
        return self.respond(
            401, {"code": 401, "error": "Invalid credentials", "status": "Unauthorized"}
        )

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._arrivals.clear()
            self._in_window = 0

    def profile(self, distinct_id: Any) -> dict[str, Any] | None:
        return self.profiles.get(str(distinct_id))

    # -- auth and the rolling minute --------------------------------------------------------

    def _import_authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        if secret == "" and user in (self.token, self.api_secret):
            return True
        if self.service_account is not None:
            name, password, project = self.service_account
            return (user, secret, request.query_params.get("project_id")) == (
                name,
                password,
                project,
            )
        return False

    def _over_rate(self, count: int) -> bool:
        """Count ``count`` events against the rolling window; True when it is full."""
        with self._lock:
            now = self.clock()
            while self._arrivals and self._arrivals[0][0] <= now - self.window_seconds:
                self._in_window -= self._arrivals.popleft()[1]
            if self._in_window + count > self.events_per_minute:
                self.slow_downs += 1
                return True
            self._arrivals.append((now, count))
            self._in_window += count
            return False

    # -- /import ----------------------------------------------------------------------------

    async def import_(self, request: Request) -> Response:
        captured = await self.capture(request)
        captured.authorized = self._import_authorized(request)
        early = self.gate(captured)
        if early is not None:
            return early
        if len(captured.raw) > MAX_BYTES:
            return self.respond(
                413,
                {"code": 413, "error": "request body too large", "status": "Payload Too Large"},
            )
        events = _events_of(captured.raw)
        if events is None:
            return self._bad("could not parse the body as a JSON array or NDJSON")
        if len(events) > MAX_EVENTS:
            return self._bad(f"batch has {len(events)} events; the limit is {MAX_EVENTS}")
        if self._over_rate(len(events)):
            return self.respond(429, THROTTLED)
        self.note_batch(len(events))
        strict = request.query_params.get("strict") == "1"
        failed: list[dict[str, Any]] = []
        imported = 0
        with self._lock:
            for index, event in enumerate(events):
                problem = _invalid_event(event)
                if problem is not None:
                    if strict:
                        failed.append({"index": index, **problem})
                    continue
                properties = event["properties"]
                key = (
                    event["event"],
                    properties["time"],
                    properties["distinct_id"],
                    properties.get("$insert_id"),
                )
                imported += 1
                seen = key if self.keep_events else hash(key)
                if properties.get("$insert_id") is not None and seen in self._seen:
                    self.dropped_events += 1
                    continue
                self._seen.add(key if self.keep_events else hash(key))
                self.received += 1
                if self.keep_events:
                    self.events.append({**event, "received_at": now_iso()})
        if self.hold is not None:
            seconds = self.hold("/import", events)
            if seconds:
                await asyncio.sleep(seconds)
        if failed:
            return self.respond(
                400,
                {
                    "code": 400,
                    "num_records_imported": imported,
                    "status": "Bad Request",
                    "failed_records": failed,
                },
            )
        return self.respond(200, {"code": 200, "num_records_imported": imported, "status": "OK"})

    def _bad(self, error: str) -> Response:
        return self.respond(400, {"code": 400, "error": error, "status": "Bad Request"})

    # -- /engage ----------------------------------------------------------------------------

    async def engage(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        body = captured.body
        if isinstance(body, dict) and "data" in body:  # form-encoded data=<json>
            try:
                body = orjson.loads(body["data"])
            except orjson.JSONDecodeError:
                body = None
        updates = body if isinstance(body, list) else [body] if isinstance(body, dict) else None
        verbose = request.query_params.get("verbose") == "1"
        if updates is None:
            return self._engage_answer(verbose, "data, missing or empty")
        if len(updates) > MAX_UPDATES:
            return self._engage_answer(verbose, f"batch exceeds {MAX_UPDATES} updates")
        if self._over_rate(len(updates)):
            return self.respond(429, THROTTLED)
        self.note_batch(len(updates))
        for update in updates:
            problem = self._invalid_update(update)
            if problem is not None:
                return self._engage_answer(verbose, problem)
        with self._lock:
            for update in updates:
                self._apply(update)
        return self._engage_answer(verbose, None)

    def _engage_answer(self, verbose: bool, error: str | None) -> Response:
        if verbose:
            return self.respond(200, {"error": error, "status": 0 if error else 1})
        return self.respond(200, "0" if error else "1")

    def _invalid_update(self, update: Any) -> str | None:
        if not isinstance(update, dict):
            return "each update must be a JSON object"
        if update.get("$token") != self.token:
            return "$token, missing or invalid"
        if update.get("$distinct_id") in (None, ""):
            return "$distinct_id, missing or empty"
        operations = [k for k in update if k in OPERATIONS]
        if len(operations) != 1:
            return "exactly one operation ($set, $set_once, $unset, $delete) per update"
        if len(orjson.dumps(update)) >= MAX_EVENT:
            return "update is larger than 1MB"
        values = update[operations[0]]
        if operations[0] in ("$set", "$set_once") and not isinstance(values, dict):
            return f"{operations[0]} must be an object"
        return None

    def _apply(self, update: dict[str, Any]) -> None:
        who = str(update["$distinct_id"])
        if "$delete" in update:
            self.profiles.pop(who, None)
        elif "$set" in update:
            self.profiles.setdefault(who, {}).update(update["$set"])
        elif "$set_once" in update:
            profile = self.profiles.setdefault(who, {})
            for k, v in update["$set_once"].items():
                profile.setdefault(k, v)
        elif "$unset" in update:
            for name in update["$unset"] or ():
                self.profiles.get(who, {}).pop(name, None)


OPERATIONS = ("$set", "$set_once", "$unset", "$delete", "$add", "$union", "$append", "$remove")
MAX_UPDATES = 2000


def _events_of(raw: bytes) -> list[Any] | None:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            return [orjson.loads(line) for line in raw.splitlines() if line.strip()]
        except orjson.JSONDecodeError:
            return None
    if isinstance(parsed, dict):
        return [parsed]
    return parsed if isinstance(parsed, list) else None


def _invalid_event(event: Any) -> dict[str, Any] | None:
    """``{insert_id, field, message}`` for an event strict mode refuses, else None."""
    properties = event.get("properties") if isinstance(event, dict) else None
    given = properties.get("$insert_id") if isinstance(properties, dict) else None

    def problem(field: str, message: str) -> dict[str, Any]:
        return {"insert_id": given or "", "field": field, "message": message}

    if not isinstance(properties, dict):
        return problem("properties", "'properties' must be an object")
    if not isinstance(event.get("event"), str) or not event["event"]:
        return problem("event", "'event' must be a non-empty string")
    when = properties.get("time")
    if not isinstance(when, int | float) or isinstance(when, bool):
        return problem("properties.time", "'properties.time' is missing or not a number")
    seconds = when / 1000 if when > 10**11 else when
    if seconds > time.time() + 3600:
        return problem("properties.time", "'properties.time' is more than 1 hour in the future")
    if not isinstance(properties.get("distinct_id"), str):
        return problem("properties.distinct_id", "'properties.distinct_id' must be a string")
    if given is not None and not (isinstance(given, str) and INSERT_ID.match(given)):
        return problem(
            "properties.$insert_id",
            "'properties.$insert_id' must be at most 36 letters, digits or dashes",
        )
    if len(properties) >= MAX_PROPERTIES:
        return problem("properties", f"event has more than {MAX_PROPERTIES - 1} properties")
    if len(orjson.dumps(event)) >= MAX_EVENT:
        return problem("event", "event is larger than 1MB")
    return None


__all__ = ["MixpanelFake"]
