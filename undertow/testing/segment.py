"""A faithful local fake of Segment's HTTP Tracking API batch endpoint.

It follows ``../shared/specs/segment/NOTES.md`` and the docs linked from
``docs/destinations/segment.md``:

* ``POST /v1/batch`` (also ``/v1/identify``, ``/v1/track``, ``/v1/group`` with one message),
  ``Content-Type: application/json``; the write key as the Basic username (empty password)
  or ``writeKey`` in the body. An empty key is a 400; **any other key is answered 200** and,
  when it is not the source's, its messages are dropped (``unknown_key_messages``), as
  Segment does (segmentio/analytics-go#205, analytics-node#59).
* At most 500 KB a request and 32 KB a message, else 400; invalid JSON is a 400. Everything
  else is 200 ``{"success": true}``: a message without ``userId``/``anonymousId``, or a
  ``track`` without ``event``, is dropped silently (``invalid_messages``), as the debugger
  would show it.
* Messages are deduplicated on ``messageId`` (``dropped_messages``).
* No hard rate limit (``throttle_next`` scripts a 429).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import FakeAPI, now_iso

MAX_REQUEST = 500 * 1024
MAX_MESSAGE = 32 * 1024


class SegmentFake(FakeAPI):
    """An in-memory Segment source (and what its destinations would receive)."""

    type = "segment"
    vendor = "Segment"
    request_id_header = None

    def __init__(
        self,
        token: str = "seg-demo-0000-local-fake",
        *,
        hold: Callable[[str, Any], float] | None = None,
    ) -> None:
        self.write_key = token
        self.hold = hold
        self.users: dict[str, dict[str, Any]] = {}
        """``userId:x`` / ``anonymousId:x`` -> traits (identify merges them)."""
        self.groups: dict[str, dict[str, Any]] = {}
        self.members: dict[str, set[str]] = {}
        self.events: list[dict[str, Any]] = []
        self.dropped_messages = 0
        self.invalid_messages = 0
        self.unknown_key_messages = 0
        self._ids: set[str] = set()
        super().__init__()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/batch", self.batch, methods=["POST"]),
            *(
                Route(f"/v1/{kind}", self.single, methods=["POST"])
                for kind in ("identify", "track", "group")
            ),
        ]

    def slow_down(self, window: Any) -> Response:
        return self.respond(429, {"success": False, "message": "too many requests"})

    def user(self, value: Any, field: str = "userId") -> dict[str, Any] | None:
        return self.users.get(f"{field}:{value}")

    def _key(self, request: Request, body: Any) -> str:
        header = request.headers.get("authorization", "")
        if header.startswith("Basic "):
            try:
                return base64.b64decode(header[6:]).decode().partition(":")[0]
            except ValueError:
                return ""
        return str(body.get("writeKey") or "") if isinstance(body, dict) else ""

    async def single(self, request: Request) -> Response:
        kind = request.url.path.rsplit("/", 1)[1]
        return await self._handle(request, lambda body: [{**body, "type": kind}])

    async def batch(self, request: Request) -> Response:
        return await self._handle(
            request, lambda body: body.get("batch") if isinstance(body.get("batch"), list) else None
        )

    async def _handle(self, request: Request, messages_of: Callable[[Any], Any]) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        if len(captured.raw) > MAX_REQUEST:
            return self.respond(400, {"success": False, "message": "batch is larger than 500KB"})
        body = captured.body
        if not isinstance(body, dict):
            return self.respond(400, {"success": False, "message": "invalid JSON"})
        key = self._key(request, body)
        if not key:
            return self.respond(400, {"success": False, "message": "missing write key"})
        messages = messages_of(body)
        if messages is None:
            return self.respond(400, {"success": False, "message": "batch must be an array"})
        for message in messages:
            if len(orjson.dumps(message)) > MAX_MESSAGE:
                return self.respond(
                    400, {"success": False, "message": "message is larger than 32KB"}
                )
        self.note_batch(len(messages))
        with self._lock:
            for message in messages:
                if key != self.write_key:
                    self.unknown_key_messages += 1
                    continue
                self._apply(message)
        if self.hold is not None:
            seconds = self.hold(captured.path, body)
            if seconds:
                await asyncio.sleep(seconds)
        return self.respond(200, {"success": True})

    def _apply(self, message: Any) -> None:
        if not isinstance(message, dict):
            self.invalid_messages += 1
            return
        who_field = next((f for f in ("userId", "anonymousId") if message.get(f)), None)
        kind = message.get("type")
        if who_field is None or kind not in ("identify", "track", "group"):
            self.invalid_messages += 1
            return
        if kind == "track" and not message.get("event"):
            self.invalid_messages += 1
            return
        if kind == "group" and not message.get("groupId"):
            self.invalid_messages += 1
            return
        message_id = message.get("messageId")
        if message_id:
            if message_id in self._ids:
                self.dropped_messages += 1
                return
            self._ids.add(str(message_id))
        who = f"{who_field}:{message[who_field]}"
        if kind == "identify":
            self.users.setdefault(who, {}).update(message.get("traits") or {})
        elif kind == "group":
            group = str(message["groupId"])
            self.groups.setdefault(group, {}).update(message.get("traits") or {})
            self.members.setdefault(group, set()).add(who)
        else:
            self.events.append({**message, "receivedAt": now_iso()})


__all__ = ["SegmentFake"]
