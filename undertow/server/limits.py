"""Request bodies ``undertow serve`` accepts: bounded in size, and JSON bounded in depth.

An ASGI middleware in front of every route, so no handler ever sees an oversized or
pathological body:

* a body over ``max_body_bytes`` (a declared ``Content-Length`` or the bytes actually
  streamed) is answered ``413`` before it is read whole;
* a JSON body (``Content-Type: application/json``) that does not parse, or nests deeper
  than :data:`MAX_JSON_DEPTH`, is answered ``422``. Python's ``json`` (which FastAPI uses)
  raises ``RecursionError`` on deep nesting, which would otherwise be a 500 with a
  traceback; orjson parses with a fixed depth limit and never recurses in Python.

The body, once checked, is handed on unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 1024 * 1024
"""Default request body limit (1 MiB): a trigger or a signal is a few hundred bytes."""
MAX_JSON_DEPTH = 32


def json_depth(value: Any, limit: int) -> bool:
    """True when ``value`` nests at most ``limit`` containers deep (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


async def _answer(send: Send, status: int, detail: str) -> None:
    body = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimits:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        limit = self.max_body_bytes
        too_big = (
            f"the request body is larger than {limit:,} bytes (server.max_body_bytes); "
            "nothing was read or stored"
        )
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _answer(send, 413, too_big)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _answer(send, 413, too_big)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if body and kind == b"application/json":
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                await _answer(send, 422, f"the body is not valid JSON: {exc}")
                return
            if not json_depth(parsed, MAX_JSON_DEPTH):
                await _answer(send, 422, f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
                return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
