"""A local fake of Slack's chat.postMessage (Web API) and incoming webhooks, for the tests.

As ``../shared/specs/slack`` documents (the trimmed OpenAPI file and NOTES.md):

* ``POST /api/chat.postMessage`` with ``Authorization: Bearer xoxb-...``, form-encoded or
  JSON; ``channel`` required, ``text`` and/or ``blocks`` (a JSON array, a string in a form);
  success ``{"ok": true, "channel", "ts", "message"}``; errors are HTTP 200
  ``{"ok": false, "error": "channel_not_found" | "not_in_channel" | "is_archived" |
  "no_text" | "invalid_auth" | "not_authed"}``, and ``invalid_blocks`` for more than 50
  blocks (NOTES); ``text`` over 40,000 characters is truncated;
* about one message per second per channel: HTTP 429 with ``Retry-After`` (``window_seconds``
  shortens the second for tests);
* ``POST /api/auth.test``: who the token is;
* incoming webhooks ``POST /services/T../B../secret``: JSON ``{"text", "blocks"}``; success
  is HTTP 200 with the plain text ``ok``; errors are plain text: 400 ``invalid_payload`` /
  ``no_text``, 404 ``no_service``, 410 ``channel_is_archived``; one message per second per
  webhook (429 + ``Retry-After``).

``fake.messages[channel]`` holds what was posted, in order (``fake.hook_messages`` for the
webhook).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import FakeAPI, Window

MAX_TEXT = 40_000
MAX_BLOCKS = 50


class SlackFake(FakeAPI):
    type = "slack"
    vendor = "Slack"
    request_id_header = "x-slack-req-id"

    def __init__(
        self,
        token: str = "xoxb-demo-token",
        *,
        channels: tuple[str, ...] = ("C0123456789",),
        not_member: tuple[str, ...] = (),
        archived: tuple[str, ...] = (),
        window_seconds: float = 1.0,
        hook_path: str = "/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
    ) -> None:
        self.token = token
        self.channels = set(channels) | set(not_member) | set(archived)
        self.not_member = set(not_member)
        self.archived = set(archived)
        self.window_seconds = window_seconds
        self.hook_path = hook_path
        self.messages: dict[str, list[dict[str, Any]]] = {c: [] for c in self.channels}
        self.hook_messages: list[dict[str, Any]] = []
        self._windows: dict[str, Window] = {}
        self._seq = 0
        super().__init__()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/chat.postMessage", self.post_message, methods=["POST"]),
            Route("/api/auth.test", self.auth_test, methods=["POST", "GET"]),
            Route("/services/{rest:path}", self.hook, methods=["POST"]),
        ]

    def slow_down(self, window: Window | None) -> Response:
        seconds = window.seconds if window else self.window_seconds  # Slack: whole seconds
        return self.respond(
            429, {"ok": False, "error": "rate_limited"}, {"Retry-After": f"{seconds:g}"}
        )

    def _paced(self, name: str) -> Response | None:
        with self._lock:
            window = self._windows.setdefault(name, Window(1, self.window_seconds, name))
            now = self.clock()
            if window.full(now):
                self.slow_downs += 1
                answer = self.slow_down(window)
                answer.headers["Retry-After"] = f"{max(0.001, window.reset_in(now)):.3f}"
                return answer
            window.arrivals.append(now)
        return None

    def _token_ok(self, request: Request) -> bool:
        return request.headers.get("authorization", "") == f"Bearer {self.token}"

    async def auth_test(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        if not self._token_ok(request):
            return self.respond(200, {"ok": False, "error": "invalid_auth"})
        return self.respond(
            200,
            {
                "ok": True,
                "url": "https://undertow-test.slack.com/",
                "team": "Undertow Test",
                "user": "undertow",
                "team_id": "T00000000",
                "user_id": "U00000000",
                "bot_id": "B00000000",
            },
        )

    def _next_ts(self) -> str:
        with self._lock:
            self._seq += 1
            return f"{int(time.time())}.{self._seq % 1_000_000:06d}"

    async def post_message(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        if "authorization" not in {k.lower() for k in request.headers}:
            return self.respond(200, {"ok": False, "error": "not_authed"})
        if not self._token_ok(request):
            return self.respond(200, {"ok": False, "error": "invalid_auth"})
        body = captured.body if isinstance(captured.body, dict) else {}
        channel = str(body.get("channel", ""))
        if channel not in self.channels:
            return self.respond(200, {"ok": False, "error": "channel_not_found"})
        if channel in self.not_member:
            return self.respond(200, {"ok": False, "error": "not_in_channel"})
        if channel in self.archived:
            return self.respond(200, {"ok": False, "error": "is_archived"})
        blocks = body.get("blocks")
        if isinstance(blocks, str):
            try:
                blocks = orjson.loads(blocks)
            except orjson.JSONDecodeError:
                return self.respond(200, {"ok": False, "error": "invalid_blocks"})
        text = str(body.get("text") or "")
        if not text and not blocks:
            return self.respond(200, {"ok": False, "error": "no_text"})
        if blocks is not None and (not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS):
            return self.respond(200, {"ok": False, "error": "invalid_blocks"})
        paced = self._paced(channel)
        if paced is not None:
            captured.status = 429
            return paced
        ts = self._next_ts()
        message: dict[str, Any] = {
            "type": "message",
            "text": text[:MAX_TEXT],
            "ts": ts,
            "bot_id": "B00000000",
        }
        if blocks:
            message["blocks"] = blocks
        self.messages[channel].append(message)
        self.note_batch(1)
        return self.respond(200, {"ok": True, "channel": channel, "ts": ts, "message": message})

    async def hook(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        if request.url.path != self.hook_path:
            return self.respond(404, "no_service")
        body = captured.body if isinstance(captured.body, dict) else None
        if body is None:
            return self.respond(400, "invalid_payload")
        if not body.get("text") and not body.get("blocks"):
            return self.respond(400, "no_text")
        paced = self._paced("webhook")
        if paced is not None:
            captured.status = 429
            return Response("rate_limited", status_code=429, headers=dict(paced.headers))
        self.hook_messages.append(body)
        self.note_batch(1)
        return self.respond(200, "ok")
