"""The fakes kit: what every local fake of a SaaS API shares.

A vendor fake is a small subclass of :class:`FakeAPI` that declares its routes and answers
in the vendor's shapes; the kit gives it the rest, the same way for every vendor::

    class AcmeFake(FakeAPI):
        type = "acme"                       # the destination type it stands in for
        vendor = "Acme"

        def __init__(self, token="demo-token", **kw):
            super().__init__(auth=bearer(token), windows=[Window(100, 10.0)], **kw)
            self.contacts = RecordStore(unique=("email",))

        def routes(self):
            return [Route("/v1/contacts/batch", self.batch, methods=["POST"])]

        def slow_down(self, window):        # the vendor's own "slow down"
            return self.respond(429, {"error": "rate limited"}, {"Retry-After": "1"})

        async def batch(self, request):
            captured, early = await self.admit(request)
            if early is not None:
                return early
            ...

What :meth:`FakeAPI.admit` does for every request, in order: capture it into
:attr:`FakeAPI.requests` (the credential never kept), the :attr:`FakeAPI.faults` hook,
answers queued with :meth:`fail_next` / :meth:`throttle_next`, the auth check
(:func:`bearer`, :func:`basic`, :func:`header`, :func:`query`; :meth:`unauthorized`
answers), and the rolling windows (:class:`Window`, exact: at most ``limit`` admitted
requests in any ``seconds``), answered with :meth:`slow_down`. Every slow-down answer is
counted in :attr:`FakeAPI.slow_downs`; :meth:`note_batch` records the largest batch seen.

Also here: :class:`RecordStore` (an idempotent record store with unique, optionally
caseless, indexes, vendor ids and timestamps), :meth:`FakeAPI.decide` (the seeded faults of
:mod:`undertow.testing.faults`), and :meth:`FakeAPI.serve` (a real server on 127.0.0.1).
``undertow fake TYPE`` serves any registered destination's fake in the foreground.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.destinations.kit import form
from undertow.testing.faults import Decision, FaultPlan, Ledger
from undertow.testing.server import serve_in_thread

AuthCheck = Callable[[Request], bool]
STATS_PATH = "/__undertow_fake__/stats"
"""What the fake did (requests, slow-down answers, largest batch), for a fake served in
another process (``undertow fake TYPE``, the benchmarks). No credential needed."""
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "api_key", "x-api-token"})


def now_iso() -> str:
    """The current time as vendors write it: ``2026-01-01T00:00:00.000Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- auth -------------------------------------------------------------------------------------


def bearer(token: str) -> AuthCheck:
    return lambda request: request.headers.get("authorization") == f"Bearer {token}"


def basic(user: str, password: str) -> AuthCheck:
    value = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return lambda request: request.headers.get("authorization") == value


def header(name: str, value: str) -> AuthCheck:
    return lambda request: request.headers.get(name) == value


def query(param: str, value: str) -> AuthCheck:
    return lambda request: request.query_params.get(param) == value


# -- rolling windows --------------------------------------------------------------------------


@dataclass
class Window:
    """At most ``limit`` admitted requests in any rolling ``seconds`` (exact, a sliding log)."""

    limit: int
    seconds: float
    name: str = "rate limit"
    arrivals: deque[float] = field(default_factory=deque)

    def full(self, now: float) -> bool:
        while self.arrivals and now - self.arrivals[0] >= self.seconds:
            self.arrivals.popleft()
        return len(self.arrivals) >= self.limit

    def remaining(self, now: float) -> int:
        self.full(now)
        return max(0, self.limit - len(self.arrivals))

    def reset_in(self, now: float) -> float:
        """Seconds until the oldest admitted request leaves the window."""
        self.full(now)
        return self.seconds - (now - self.arrivals[0]) if self.arrivals else 0.0


# -- the record store -------------------------------------------------------------------------


class RecordStore(dict[str, dict[str, Any]]):
    """Records of one object type: vendor id -> fields, with unique indexes.

    ``caseless`` fields (emails) match whatever their case. ``find`` builds an index of a
    field on first use and keeps it up to date through ``create``/``modify``/``archive``.
    """

    def __init__(
        self,
        *,
        caseless: Iterable[str] = ("email",),
        first_id: int = 1001,
        id_format: Callable[[int], str] = str,
    ) -> None:
        super().__init__()
        self.caseless = frozenset(caseless)
        self.created_at: dict[str, str] = {}
        self.updated_at: dict[str, str] = {}
        self.archived: dict[str, dict[str, Any]] = {}
        self._index: dict[str, dict[str, str]] = {}
        self._next = first_id
        self._id_format = id_format

    def _norm(self, prop: str, value: Any) -> str | None:
        if value is None or value == "":
            return None
        text = "true" if value is True else "false" if value is False else str(value)
        return text.casefold() if prop in self.caseless else text

    def index_put(self, object_id: str) -> None:
        fields = self[object_id]
        for prop, index in self._index.items():
            value = self._norm(prop, fields.get(prop))
            if value is not None:
                index.setdefault(value, object_id)

    def index_drop(self, object_id: str) -> None:
        fields = self.get(object_id, {})
        for prop, index in self._index.items():
            value = self._norm(prop, fields.get(prop))
            if value is not None and index.get(value) == object_id:
                del index[value]

    def find(self, prop: str, value: Any) -> str | None:
        """The id of the record whose ``prop`` equals ``value``, or None."""
        wanted = self._norm(prop, value)
        if wanted is None:
            return None
        index = self._index.get(prop)
        if index is None:
            index = self._index[prop] = {}
            for object_id, fields in self.items():
                have = self._norm(prop, fields.get(prop))
                if have is not None:
                    index.setdefault(have, object_id)
        return index.get(wanted)

    def by(self, prop: str, value: Any) -> dict[str, Any] | None:
        """The record whose ``prop`` is ``value``, or None."""
        object_id = self.find(prop, value)
        return None if object_id is None else self[object_id]

    def by_email(self, email: str) -> dict[str, Any] | None:
        return self.by("email", email)

    def new_id(self) -> str:
        object_id = self._id_format(self._next)
        self._next += 1
        return object_id

    def create(
        self, fields: dict[str, Any], *, object_id: str | None = None, stamp: str | None = None
    ) -> str:
        """Store a copy of ``fields``; ``stamp``: its creation time (default: now; a bulk job
        stamps all its records with one time)."""
        object_id = object_id or self.new_id()
        stamp = stamp or now_iso()
        self[object_id] = dict(fields)
        self.created_at[object_id] = stamp
        self.updated_at[object_id] = stamp
        self.index_put(object_id)
        return object_id

    def modify(self, object_id: str, fields: dict[str, Any], *, stamp: str | None = None) -> None:
        self.index_drop(object_id)
        self[object_id].update(fields)
        self.updated_at[object_id] = stamp or now_iso()
        self.index_put(object_id)

    def upsert(self, prop: str, value: Any, fields: dict[str, Any]) -> tuple[str, bool]:
        """Update the record whose ``prop`` is ``value`` or create it; (id, created)."""
        object_id = self.find(prop, value)
        if object_id is None:
            return self.create({**fields, prop: value}), True
        self.modify(object_id, fields)
        return object_id, False

    def archive(self, object_id: str) -> bool:
        """Remove a record (kept in ``archived``); False when it is not there."""
        if object_id not in self:
            return False
        self.index_drop(object_id)
        self.archived[object_id] = self.pop(object_id)
        return True


# -- the request log --------------------------------------------------------------------------


@dataclass
class CapturedRequest:
    """One request the fake received (its credential is never kept)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    """Parsed JSON, a dict for a form body, else the text."""
    authorized: bool
    raw: bytes = b""
    credentials: bool = False
    """True when the request carried some credential (right or wrong)."""
    status: int | None = None
    """What the fake answered (set once it answered through ``respond``)."""


@dataclass
class Scripted:
    """A canned answer for the next matching request."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    path: str | None = None
    """Only requests whose path ends with this; None for any."""
    slow_down: bool = False
    """Build the vendor's own slow-down answer instead (``throttle_next``)."""


class FakeAPI:
    """Base of the vendor fakes (see the module docstring)."""

    type: ClassVar[str] = "fake"
    """The destination type this fake stands in for."""
    vendor: ClassVar[str] = "the vendor"
    request_id_header: ClassVar[str | None] = "x-request-id"

    def __init__(
        self,
        *,
        auth: AuthCheck | None = None,
        windows: Sequence[Window] = (),
        fault_plan: FaultPlan | None = None,
        ledger: Ledger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.auth = auth
        self.windows = list(windows)
        self.fault_plan = fault_plan
        self.ledger = ledger
        self.clock = clock
        self.requests: list[CapturedRequest] = []
        self.faults: Callable[[CapturedRequest], Response | None] | None = None
        """A hook that may answer any request first (return None to go on)."""
        self.slow_downs = 0
        """Slow-down answers sent (rolling windows and ``throttle_next``)."""
        self.largest_batch = 0
        self.url = ""
        """The served address while :meth:`serve` runs."""
        self._queued: deque[Scripted] = deque()
        self._lock = threading.RLock()
        self.app = Starlette(routes=[*self.routes(), Route(STATS_PATH, self._stats)])

    # -- what a vendor fake declares ----------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return []

    def unauthorized(self, captured: CapturedRequest) -> Response:
        return self.respond(401, {"error": "unauthorized"})

    def slow_down(self, window: Window | None) -> Response:
        """The vendor's answer when a window is full (None: a scripted ``throttle_next``)."""
        seconds = window.seconds if window else 1.0
        return self.respond(429, {"error": "rate limited"}, {"Retry-After": f"{seconds:g}"})

    def headers(self) -> dict[str, str]:
        """Headers on every answer (the vendor's rate-limit headers)."""
        return {}

    def reset(self) -> None:
        """Forget requests, queued answers and window counts (records: the subclass's job)."""
        with self._lock:
            self.requests.clear()
            self._queued.clear()
            for window in self.windows:
                window.arrivals.clear()
            self.slow_downs = 0
            self.largest_batch = 0

    # -- scripting ----------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        body: Any = None,
        headers: dict[str, str] | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``n`` requests (ending with ``path``, if given) with this."""
        with self._lock:
            for _ in range(n):
                self._queued.append(Scripted(status, body, dict(headers or {}), path))

    def throttle_next(self, n: int = 1, *, path: str | None = None) -> None:
        """Answer the next ``n`` requests with the vendor's own slow-down signal."""
        with self._lock:
            for _ in range(n):
                self._queued.append(Scripted(429, path=path, slow_down=True))

    # -- what every handler calls -------------------------------------------------------------

    async def capture(self, request: Request) -> CapturedRequest:
        raw = await request.body()
        body: Any = None
        kind = request.headers.get("content-type", "")
        if raw:
            if "x-www-form-urlencoded" in kind:
                body = dict(form.decode(raw))
            else:
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    body = raw.decode("utf-8", "replace")
        captured = CapturedRequest(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={
                k: v for k, v in request.headers.items() if k.lower() not in CREDENTIAL_HEADERS
            },
            body=body,
            authorized=self.auth is None or self.auth(request),
            raw=raw,
            credentials=any(k.lower() in CREDENTIAL_HEADERS for k in request.headers),
        )
        with self._lock:
            self.requests.append(captured)
        return captured

    async def admit(self, request: Request) -> tuple[CapturedRequest, Response | None]:
        """Capture, then faults, scripts, auth and windows: the early answer, if any."""
        captured = await self.capture(request)
        return captured, self.gate(captured)

    def gate(self, captured: CapturedRequest) -> Response | None:
        if self.faults is not None:
            answer = self.faults(captured)
            if answer is not None:
                captured.status = answer.status_code
                return answer
        with self._lock:
            for scripted in self._queued:
                if scripted.path is None or captured.path.endswith(scripted.path):
                    self._queued.remove(scripted)
                    if scripted.slow_down or scripted.status == 429:
                        self.slow_downs += 1
                    if scripted.slow_down:
                        answer = self.slow_down(None)
                    else:
                        answer = self.respond(scripted.status, scripted.body, scripted.headers)
                    captured.status = answer.status_code
                    return answer
        if not captured.authorized:
            answer = self.unauthorized(captured)
            captured.status = answer.status_code
            return answer
        with self._lock:
            now = self.clock()
            windows = self.windows_for(captured)
            for window in windows:
                if window.full(now):
                    self.slow_downs += 1
                    answer = self.slow_down(window)
                    captured.status = answer.status_code
                    return answer
            for window in windows:
                window.arrivals.append(now)
        return None

    def windows_for(self, captured: CapturedRequest) -> Sequence[Window]:
        """The windows this request counts against (default: all; Attio counts reads and
        writes apart)."""
        return self.windows

    def respond(
        self, status: int, body: Any = None, headers: dict[str, str] | None = None
    ) -> Response:
        """An answer with the fake's common headers (JSON unless ``body`` is bytes/str)."""
        extra = self.headers()
        if self.request_id_header:
            extra[self.request_id_header] = str(uuid.uuid4())
        extra.update(headers or {})
        if body is None:
            return Response(status_code=status, headers=extra)
        if isinstance(body, bytes | str):
            return Response(body, status_code=status, headers=extra)
        return Response(
            orjson.dumps(body),
            status_code=status,
            media_type="application/json",
            headers=extra,
        )

    async def _stats(self, request: Request) -> Response:
        with self._lock:
            body = {
                "type": self.type,
                "requests": len(self.requests),
                "slow_downs": self.slow_downs,
                "largest_batch": self.largest_batch,
            }
        return Response(orjson.dumps(body), media_type="application/json")

    def note_batch(self, size: int) -> None:
        with self._lock:
            self.largest_batch = max(self.largest_batch, size)

    def decide(self, body: bytes, size: int) -> Decision:
        """The seeded fault plan's fate for this request (a normal answer without a plan)."""
        if self.fault_plan is None:
            return Decision()
        return self.fault_plan.decide(body, size)

    @contextlib.contextmanager
    def serve(self, *, port: int | None = None) -> Iterator[str]:
        """Serve the fake on 127.0.0.1 in a thread; yields (and sets ``url`` to) its URL."""
        with serve_in_thread(self.app, port=port) as server:
            self.url = server.url
            try:
                yield server.url
            finally:
                self.url = ""
