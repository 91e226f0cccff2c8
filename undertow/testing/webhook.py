"""A local fake receiver of webhook batches, for tests, benchmarks and ``undertow demo``.

It accepts ``POST``/``PUT``/``PATCH`` on any path and records what arrived::

    receiver = WebhookReceiver(token="s3cret")
    with serve_in_thread(receiver.app) as server:
        ...  # send batches to server.url + "/hooks"
    receiver.requests   # every request: method, path, headers, parsed JSON body, status
    receiver.records    # every record of every accepted batch

Like a real receiver it checks ``Authorization: Bearer <token>`` when a token is set (401
otherwise), and it honours ``Idempotency-Key``: a request whose key was already answered
with a 2xx gets the same answer again and its records are not recorded twice.

It can be scripted to misbehave: :meth:`WebhookReceiver.queue_response` queues the answers
to the next requests (any status, body and headers such as ``Retry-After``, and a delay
before answering), ``delay`` slows every answer down, and ``faults`` (a seeded
:class:`~undertow.testing.faults.FaultPlan`) decides per request to fail, time out, drop the
connection after applying, or reject some records. A ``ledger`` records every applied record
(the receiver's final state and a count per ``(key, version)``).

``fast=True`` is the benchmark mode: it parses each body with orjson, counts the records in
``record_count`` and keeps nothing else.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from undertow.state.files import open_private_append
from undertow.testing.faults import Decision, FaultPlan, Ledger

METHODS = ["POST", "PUT", "PATCH"]


@dataclass
class ScriptedResponse:
    """One answer queued with :meth:`WebhookReceiver.queue_response`."""

    status: int = 200
    body: Any = None
    """A dict or list (sent as JSON), bytes or str (sent as is), or None (a default body)."""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds to wait before answering (longer than the client timeout = a timeout)."""


@dataclass
class ReceivedRequest:
    """One request as the receiver saw it."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names in lower case."""
    body: Any
    """The parsed JSON body, or None when it was not JSON."""
    raw: bytes
    status: int
    """The status the receiver answered with."""
    replayed: bool = False
    """True when the idempotency key was seen before and the stored answer was replayed."""
    fault: str | None = None
    """The fault the ``FaultPlan`` injected into this request, if any."""


class WebhookReceiver:
    """A fake webhook endpoint; ``app`` is its ASGI application."""

    def __init__(
        self,
        *,
        token: str | None = None,
        fast: bool = False,
        delay: float = 0.0,
        idempotency_header: str = "Idempotency-Key",
        inbox: Path | None = None,
        faults: FaultPlan | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.token = token
        self.faults = faults
        self.ledger = ledger
        self.inbox = inbox
        """When set, every accepted request is appended to this file as one JSON line."""
        self.fast = fast
        self.delay = delay
        self.held = False
        """While True, every request waits before it is answered (or applied) until a test
        sets it back to False: a run holds its lock for as long as the test needs, however
        slowly a loaded machine starts the next process."""
        self.idempotency_header = idempotency_header.lower()
        self.requests: list[ReceivedRequest] = []
        self.records: list[Any] = []
        self.record_count = 0
        self._script: deque[ScriptedResponse] = deque()
        self._answered: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/", self._handle, methods=METHODS),
                Route("/{path:path}", self._handle, methods=METHODS),
            ]
        )

    def queue_response(
        self,
        status: int = 200,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests with this status, body, headers and delay."""
        with self._lock:
            for _ in range(times):
                self._script.append(ScriptedResponse(status, body, dict(headers or {}), delay))

    def reset(self) -> None:
        """Forget every request, record, queued answer and idempotency key."""
        with self._lock:
            self.requests.clear()
            self.records.clear()
            self.record_count = 0
            self._script.clear()
            self._answered.clear()

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        if self.fast:
            return self._fast(raw)
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        method, path = request.method, request.url.path

        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            # Deliberately echoes what it got, as careless APIs do: proves the client redacts.
            got = headers.get("authorization", "(none)")
            answer = orjson.dumps({"error": "invalid token", "received": got})
            self._log(ReceivedRequest(method, path, headers, body, raw, 401))
            return Response(answer, status_code=401, media_type="application/json")

        key = headers.get(self.idempotency_header)
        with self._lock:
            stored = self._answered.get(key) if key else None
        if stored is not None:
            status, content, extra = stored
            self._log(ReceivedRequest(method, path, headers, body, raw, status, replayed=True))
            return Response(
                content, status_code=status, headers=extra, media_type="application/json"
            )

        with self._lock:
            scripted = self._script.popleft() if self._script else None
        while self.held:
            await asyncio.sleep(0.02)
        wait = (scripted.delay if scripted else 0.0) or self.delay
        if wait:
            await asyncio.sleep(wait)

        records = _records_of(body)
        fate = Decision()
        if scripted is None and self.faults is not None:
            fate = self.faults.decide(raw, len(records))
            if not fate.applies:
                refusal = fate.refusal()
                self._log(
                    ReceivedRequest(
                        method, path, headers, body, raw, refusal.status_code, fault=fate.fault
                    )
                )
                return refusal
            await fate.before()
            if fate.rejected:
                errors = [
                    {"index": i, "message": "injected rejection"} for i in sorted(fate.rejected)
                ]
                scripted = ScriptedResponse(body={"errors": errors})
        status = scripted.status if scripted else 200
        extra = scripted.headers if scripted else {}
        if scripted is not None and scripted.body is not None:
            content = _encode(scripted.body)
        elif 200 <= status < 300:
            content = orjson.dumps({"received": len(records)})
        else:
            content = orjson.dumps({"error": f"scripted failure {status}"})

        with self._lock:
            if 200 <= status < 300:
                refused = _error_indexes(scripted.body if scripted else None)
                self.records.extend(r for i, r in enumerate(records) if i not in refused)
                self.record_count += len(records) - len(refused & set(range(len(records))))
                if self.ledger is not None:
                    operation = (
                        str(body.get("operation", method)) if isinstance(body, dict) else method
                    )
                    for i, r in enumerate(records):
                        if i not in refused:
                            self.ledger.apply(operation, r)
                if key:
                    self._answered[key] = (status, content, extra)
                if self.inbox is not None:
                    self._append_inbox(method, path, key, raw)
            self.requests.append(
                ReceivedRequest(method, path, headers, body, raw, status, fault=fate.fault)
            )
        response = Response(
            content, status_code=status, headers=extra, media_type="application/json"
        )
        return await fate.answer(response)

    def _fast(self, raw: bytes) -> Response:
        body = orjson.loads(raw)
        count = len(_records_of(body))
        with self._lock:
            self.record_count += count
        return Response(b"{}", media_type="application/json")

    def _append_inbox(self, method: str, path: str, key: str | None, raw: bytes) -> None:
        assert self.inbox is not None
        head = orjson.dumps({"method": method, "path": path, "idempotency_key": key})
        with open_private_append(self.inbox) as out:  # full payloads: 0600
            out.write(head[:-1] + b',"body":' + (raw or b"null") + b"}\n")

    def _log(self, received: ReceivedRequest) -> None:
        with self._lock:
            self.requests.append(received)


def _records_of(body: Any) -> list[Any]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict) and isinstance(body.get("records"), list):
        return list(body["records"])
    return []


def _error_indexes(body: Any) -> set[int]:
    """Indexes listed in a scripted ``{"errors": [{"index": i, ...}]}`` body."""
    if not isinstance(body, dict) or not isinstance(body.get("errors"), list):
        return set()
    return {
        e["index"]
        for e in body["errors"]
        if isinstance(e, dict) and isinstance(e.get("index"), int)
    }


def _encode(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return orjson.dumps(body)
