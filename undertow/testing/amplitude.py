"""A faithful local fake of Amplitude's ingestion: HTTP V2 events and the Identify API.

It follows ``../shared/specs/amplitude/NOTES.md`` and the docs linked from
``docs/destinations/amplitude.md``:

* ``POST /2/httpapi`` ``{"api_key", "events": [...], "options": {"min_id_length"}}``: the key
  in the body (a wrong one: 400 ``{"code": 400, "error": "Invalid API key: ..."}``); at most
  2,000 events and 1 MB (413 above). Each event needs ``event_type`` and a ``user_id`` or
  ``device_id`` of at least ``min_id_length`` (5) characters; ``time`` is whole
  milliseconds. A request with bad events is refused whole: 400 with
  ``events_with_invalid_fields`` / ``events_with_missing_fields`` (indexes), nothing ingested.
  200 ``{"code": 200, "events_ingested": N, "payload_size_bytes", "server_upload_time"}``.
* Events are deduplicated on ``insert_id`` with the user or device (``dropped_events``).
* Throttling: a user or device sending more than ``eps_threshold`` (30) events a second is
  throttled for ``throttle_seconds`` (30): a request holding it answers 429
  ``{"code": 429, "error": ..., "eps_threshold", "throttled_users", "throttled_devices",
  "throttled_events"}`` with no ``Retry-After``, and ingests nothing (not confirmed: whether
  Amplitude ingests the other events of a throttled request; a resend is dropped anyway).
* ``POST /identify`` (form: ``api_key``, ``identification`` = a JSON array): ``$set``,
  ``$setOnce``, ``$unset`` of ``user_properties``, or plain properties (set); 200 ``success``;
  400 text for bad input (not confirmed: whether Identify enforces the 5-character id
  minimum; the fake does).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import FakeAPI, now_iso

MAX_EVENTS = 2000
MAX_BYTES = 1_000_000
IDS = ("user_id", "device_id")


class AmplitudeFake(FakeAPI):
    """An in-memory Amplitude project served as a Starlette app (``.app``)."""

    type = "amplitude"
    vendor = "Amplitude"
    request_id_header = None

    def __init__(
        self,
        token: str = "amp-demo-0000-local-fake",
        *,
        eps_threshold: int = 30,
        throttle_seconds: float = 30.0,
        max_bytes: int = MAX_BYTES,
        hold: Callable[[str, Any], float] | None = None,
    ) -> None:
        self.key = token
        self.eps_threshold = eps_threshold
        self.throttle_seconds = throttle_seconds
        self.max_bytes = max_bytes
        self.hold = hold
        self.users: dict[str, dict[str, Any]] = {}
        """``user_id:x`` / ``device_id:x`` -> user properties."""
        self.events: list[dict[str, Any]] = []
        self.dropped_events = 0
        self.too_large = 0
        self._seen: set[tuple[str, str]] = set()
        self._recent: dict[str, deque[float]] = defaultdict(deque)
        self._throttled_until: dict[str, float] = {}
        super().__init__()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/2/httpapi", self.httpapi, methods=["POST"]),
            Route("/identify", self.identify, methods=["POST"]),
        ]

    def slow_down(self, window: Any) -> Response:
        return self.respond(429, self._throttled_body({}, []))

    def user(self, value: Any, field: str = "user_id") -> dict[str, Any] | None:
        return self.users.get(f"{field}:{value}")

    # -- HTTP V2 ----------------------------------------------------------------------------

    async def httpapi(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        body = captured.body if isinstance(captured.body, dict) else {}
        if body.get("api_key") != self.key:
            return self.respond(400, {"code": 400, "error": "Invalid API key: (redacted)"})
        events = body.get("events")
        if len(captured.raw) > self.max_bytes or (
            isinstance(events, list) and len(events) > MAX_EVENTS
        ):
            self.too_large += 1
            return self.respond(413, {"code": 413, "error": "Payload too large"})
        if not isinstance(events, list) or not events:
            return self.respond(
                400,
                {"code": 400, "error": "Request missing required field", "missing_field": "events"},
            )
        minimum = int((body.get("options") or {}).get("min_id_length") or 5)
        invalid: dict[str, list[int]] = defaultdict(list)
        missing: dict[str, list[int]] = defaultdict(list)
        for index, event in enumerate(events):
            self._check(event, index, minimum, invalid, missing)
        if invalid or missing:
            return self.respond(
                400,
                {
                    "code": 400,
                    "error": "Request contains invalid or missing fields",
                    "events_with_invalid_fields": dict(invalid),
                    "events_with_missing_fields": dict(missing),
                },
            )
        throttled = self._throttle([_who(e) for e in events])
        if throttled is not None:
            users, indexes = throttled
            return self.respond(429, self._throttled_body(users, indexes))
        self.note_batch(len(events))
        ingested = 0
        with self._lock:
            for event in events:
                who = _who(event)
                insert_id = event.get("insert_id")
                if insert_id is not None and (who, str(insert_id)) in self._seen:
                    self.dropped_events += 1
                    continue
                if insert_id is not None:
                    self._seen.add((who, str(insert_id)))
                ingested += 1
                self.events.append({**event, "received_at": now_iso()})
                if isinstance(event.get("user_properties"), dict):
                    _apply(self.users.setdefault(who, {}), event["user_properties"])
        if self.hold is not None:
            seconds = self.hold("/2/httpapi", body)
            if seconds:
                await asyncio.sleep(seconds)
        return self.respond(
            200,
            {
                "code": 200,
                "events_ingested": ingested,
                "payload_size_bytes": len(captured.raw),
                "server_upload_time": int(time.time() * 1000),
            },
        )

    def _check(
        self,
        event: Any,
        index: int,
        minimum: int,
        invalid: dict[str, list[int]],
        missing: dict[str, list[int]],
    ) -> None:
        if not isinstance(event, dict):
            invalid["event"].append(index)
            return
        if not event.get("event_type"):
            missing["event_type"].append(index)
        ids = [f for f in IDS if event.get(f) not in (None, "")]
        if not ids:
            missing["user_id"].append(index)
        for field in ids:
            if len(str(event[field])) < minimum:
                invalid[field].append(index)
        when = event.get("time")
        if when is not None and (not isinstance(when, int) or isinstance(when, bool)):
            invalid["time"].append(index)

    def _throttle(self, people: list[str]) -> tuple[dict[str, int], list[int]] | None:
        """Count each person's events in the last second; None when nobody is throttled."""
        with self._lock:
            now = self.clock()
            counts: dict[str, int] = defaultdict(int)
            for who in people:
                counts[who] += 1
            hot: dict[str, int] = {}
            for who, count in counts.items():
                recent = self._recent[who]
                while recent and recent[0] <= now - 1.0:
                    recent.popleft()
                if self._throttled_until.get(who, 0.0) > now:
                    hot[who] = len(recent) + count
                elif len(recent) + count > self.eps_threshold:
                    self._throttled_until[who] = now + self.throttle_seconds
                    hot[who] = len(recent) + count
            if hot:
                self.slow_downs += 1
                return hot, [i for i, who in enumerate(people) if who in hot]
            for who, count in counts.items():
                self._recent[who].extend([now] * count)
            return None

    def _throttled_body(self, hot: dict[str, int], indexes: list[int]) -> dict[str, Any]:
        return {
            "code": 429,
            "error": "Too many requests for some devices and users",
            "eps_threshold": self.eps_threshold,
            "throttled_devices": {
                k.split(":", 1)[1]: v for k, v in hot.items() if k.startswith("device_id:")
            },
            "throttled_users": {
                k.split(":", 1)[1]: v for k, v in hot.items() if k.startswith("user_id:")
            },
            "throttled_events": indexes,
            "exceeded_daily_quota_users": {},
            "exceeded_daily_quota_devices": {},
        }

    # -- Identify ---------------------------------------------------------------------------

    async def identify(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        form = captured.body if isinstance(captured.body, dict) else {}
        if form.get("api_key") != self.key:
            return self.respond(400, "invalid api_key")
        try:
            parsed = orjson.loads(form.get("identification") or "")
        except orjson.JSONDecodeError:
            return self.respond(400, "missing or malformed identification")
        updates = parsed if isinstance(parsed, list) else [parsed]
        if len(updates) > MAX_EVENTS or len(captured.raw) > self.max_bytes:
            self.too_large += 1
            return self.respond(413, "Payload too large")
        for update in updates:
            if not isinstance(update, dict):
                return self.respond(400, "each identification must be an object")
            ids = [f for f in IDS if update.get(f) not in (None, "")]
            if not ids:
                return self.respond(400, "user_id or device_id is required")
            if any(len(str(update[f])) < 5 for f in ids):
                return self.respond(400, "Invalid id length for user_id or device_id")
        throttled = self._throttle([_who(u) for u in updates])
        if throttled is not None:
            return self.respond(429, self._throttled_body(*throttled))
        self.note_batch(len(updates))
        with self._lock:
            for update in updates:
                _apply(self.users.setdefault(_who(update), {}), update.get("user_properties") or {})
        return self.respond(200, "success")


def _who(item: dict[str, Any]) -> str:
    field = "user_id" if item.get("user_id") not in (None, "") else "device_id"
    return f"{field}:{item.get(field)}"


def _apply(profile: dict[str, Any], properties: dict[str, Any]) -> None:
    operations = {k for k in properties if k.startswith("$")}
    if not operations:
        profile.update(properties)
        return
    profile.update(properties.get("$set") or {})
    for key, value in (properties.get("$setOnce") or {}).items():
        profile.setdefault(key, value)
    for key in properties.get("$unset") or {}:
        profile.pop(key, None)


__all__ = ["AmplitudeFake"]
