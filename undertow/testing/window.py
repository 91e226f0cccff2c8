"""A webhook account with a rolling-window rate limit, for the shared-budget tests and bench.

Like the vendors that state "N requests per rolling second" (HubSpot's burst limit,
Mailchimp, Klaviyo): a request arriving when ``limit`` requests already arrived in the last
``seconds`` is answered ``429`` with ``Retry-After`` and not applied; any other is applied
(``200``, the batch's records counted once per idempotency key). Every arrival time is kept,
so a test can check the busiest rolling window the account saw.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from undertow.testing.webhook import _records_of


class WindowedAccount:
    def __init__(self, limit: int, seconds: float = 1.0) -> None:
        self.limit = limit
        self.seconds = seconds
        self.accepted: list[float] = []
        """Arrival times (monotonic) of the requests applied."""
        self.refused = 0
        """Requests answered 429."""
        self.records = 0
        self.keys: set[str] = set()
        self._recent: deque[float] = deque()
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0] <= now - self.seconds:
                self._recent.popleft()
            if len(self._recent) >= self.limit:
                self.refused += 1
                wait = self._recent[0] + self.seconds - now
                return Response(
                    b'{"error":"rate limited"}',
                    status_code=429,
                    headers={"Retry-After": f"{max(1, round(wait + 0.5))}"},
                    media_type="application/json",
                )
            self._recent.append(now)
            self.accepted.append(now)
            key = request.headers.get("idempotency-key", "")
            if key not in self.keys:
                self.keys.add(key)
                self.records += len(_records_of(orjson.loads(body) if body else []))
        return Response(b'{"ok":true}', media_type="application/json")

    def busiest_window(self) -> int:
        """The most applied requests that arrived within any ``seconds``."""
        times = sorted(self.accepted)
        best = 0
        for i, start in enumerate(times):
            best = max(best, bisect.bisect_right(times, start + self.seconds - 1e-9) - i)
        return best

    def rate(self) -> float:
        """Applied requests a second, first arrival to last."""
        if len(self.accepted) < 2:
            return 0.0
        span = max(self.accepted) - min(self.accepted)
        return (len(self.accepted) - 1) / span if span > 0 else 0.0
