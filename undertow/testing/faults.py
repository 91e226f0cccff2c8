"""Seeded, scriptable misbehaviour for the fake servers, and a ledger of what they applied.

A :class:`FaultPlan` decides, per request, whether a fake answers normally or misbehaves::

    plan = FaultPlan(seed=7, rates={"503": 0.05, "drop": 0.03, "partial": 0.05})
    receiver = WebhookReceiver(faults=plan, ledger=Ledger(key="id", version="version"))

The faults, by name (``rates`` maps a name to its probability per request):

=============  ==============================================================================
``500``        answer 500 (also ``502``, ``503``); nothing is applied
``429``        answer 429 with ``Retry-After`` (``retry_after`` seconds); nothing is applied
``429-bare``   answer 429 without ``Retry-After``; nothing is applied
``timeout``    apply the body, then answer only after ``timeout_delay`` seconds (set it past
               the client's timeout: the server applied it, the client never heard)
``drop``       apply the body, then send the status line, the headers and half the body,
               and close the connection (a truncated response: the client never heard)
``partial``    apply some records and reject the others with per-record errors
``slow``       answer normally after ``slow_delay`` seconds (shorter than the client timeout)
=============  ==============================================================================

Decisions do not depend on the order in which concurrent requests arrive: each one is a
pure function of the seed, the request's body and how many times that body arrived before,
so a seed reproduces its faults for the same batches. A body is never faulted more than
``max_in_a_row`` times in a row, so every batch gets through eventually.

:class:`Ledger` is what the fakes record as they apply records: the destination's final
state (key -> last record; a delete removes the key) and how many times each
``(key, version)`` was applied, so a test can compare the destination with the model and
count duplicates.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

FAULTS = ("500", "502", "503", "429", "429-bare", "timeout", "drop", "partial", "slow")
LOST = frozenset({"timeout", "drop"})
"""Faults after which the server applied the body but the client never heard the answer."""
_REFUSALS = {"500", "502", "503", "429", "429-bare"}


def digest(body: bytes) -> str:
    """The identity of a request body in a plan's log (sha-256, 16 hex digits)."""
    return hashlib.sha256(body).hexdigest()[:16]


@dataclass(frozen=True)
class Decision:
    """What a fake does with one request."""

    fault: str | None = None
    """One of ``FAULTS``, or None to answer normally."""
    delay: float = 0.0
    """Seconds to wait before answering (``slow``) or after applying (``timeout``)."""
    rejected: frozenset[int] = frozenset()
    """For ``partial``: indexes of the records to reject, not apply."""
    retry_after: float | None = None

    @property
    def applies(self) -> bool:
        """False when the request is refused whole (5xx, 429) and nothing is applied."""
        return self.fault not in _REFUSALS

    @property
    def lost(self) -> bool:
        return self.fault in LOST

    def refusal(
        self, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Response:
        """The answer of a refusing fault (5xx or 429), with the fake's own headers."""
        assert not self.applies
        status = 429 if self.fault in ("429", "429-bare") else int(self.fault or 500)
        extra = dict(headers or {})
        if self.fault == "429" and self.retry_after is not None:
            extra["Retry-After"] = f"{self.retry_after:g}"
        if body is None:
            body = b'{"error": "injected fault %s"}' % (self.fault or "").encode()
        return Response(body, status_code=status, headers=extra, media_type="application/json")

    async def before(self) -> None:
        """Wait for a ``slow`` answer."""
        if self.fault == "slow":
            await asyncio.sleep(self.delay)

    async def answer(self, response: Response) -> Response:
        """The response as the client will (or will not) get it, once the body is applied."""
        if self.fault == "timeout":
            await asyncio.sleep(self.delay)
        if self.fault == "drop":
            return TruncatedResponse(response)
        return response


class TruncatedResponse(Response):
    """Sends the status line, the headers and half the body, then closes the connection."""

    def __init__(self, inner: Response) -> None:
        self.inner = inner
        super().__init__(inner.body, status_code=inner.status_code, headers=dict(inner.headers))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send(
            {
                "type": "http.response.body",
                "body": self.body[: len(self.body) // 2],
                "more_body": True,
            }
        )
        # returning without completing the response makes uvicorn close the connection


class _QuietTruncation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


_quiet = _QuietTruncation()


@dataclass
class FaultEvent:
    """One faulted request in a plan's log."""

    body: str
    """``digest`` of the request body."""
    occurrence: int
    """How many times this body had arrived before (0 for its first arrival)."""
    fault: str


class FaultPlan:
    """Per-request faults from a seed and a rate per fault name (see the module docstring)."""

    def __init__(
        self,
        seed: int,
        rates: Mapping[str, float] | None = None,
        *,
        timeout_delay: float = 2.0,
        slow_delay: float = 0.2,
        retry_after: float = 0.2,
        partial_share: float = 0.1,
        max_in_a_row: int = 3,
    ) -> None:
        unknown = set(rates or {}) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}; known: {', '.join(FAULTS)}")
        if sum((rates or {}).values()) > 1:
            raise ValueError("fault rates add up to more than 1")
        self.seed = seed
        self.rates = dict(rates or {})
        self.timeout_delay = timeout_delay
        self.slow_delay = slow_delay
        self.retry_after = retry_after
        self.partial_share = partial_share
        self.max_in_a_row = max_in_a_row
        self.enabled = True
        """Set to False to answer every request normally (the log is kept)."""
        self.events: list[FaultEvent] = []
        self.lost_bodies: set[str] = set()
        """Digests of bodies that were applied but whose answer the client never got."""
        self._seen: Counter[str] = Counter()
        self._in_a_row: Counter[str] = Counter()
        self._lock = threading.Lock()
        logging.getLogger("uvicorn.error").addFilter(_quiet)

    @property
    def counts(self) -> Counter[str]:
        """How many requests got each fault."""
        return Counter(e.fault for e in self.events)

    def decide(self, body: bytes, size: int) -> Decision:
        """The fate of a request with this body, carrying ``size`` records."""
        key = digest(body)
        with self._lock:
            occurrence = self._seen[key]
            self._seen[key] += 1
            if not self.enabled or self._in_a_row[key] >= self.max_in_a_row:
                self._in_a_row[key] = 0
                return Decision()
            rng = random.Random(f"{self.seed}:{key}:{occurrence}")
            draw, fault = rng.random(), None
            for name in FAULTS:
                rate = self.rates.get(name, 0.0)
                if draw < rate:
                    fault = name
                    break
                draw -= rate
            if fault == "partial" and size < 2:
                fault = None
            if fault is None:
                self._in_a_row[key] = 0
                return Decision()
            self._in_a_row[key] += 1
            self.events.append(FaultEvent(key, occurrence, fault))
            if fault in LOST:
                self.lost_bodies.add(key)
        if fault == "partial":
            count = max(1, int(size * self.partial_share))
            return Decision(fault, rejected=frozenset(rng.sample(range(size), count)))
        if fault == "timeout":
            return Decision(fault, delay=self.timeout_delay)
        if fault == "slow":
            return Decision(fault, delay=self.slow_delay)
        if fault == "429":
            return Decision(fault, retry_after=self.retry_after)
        return Decision(fault)


@dataclass
class Ledger:
    """What a fake applied: the final state and a count per ``(key, version)``.

    ``key`` and ``version`` name a record's fields, or are functions of the record.
    """

    key: str | Callable[[Any], Hashable]
    version: str | Callable[[Any], Hashable] | None = None
    state: dict[Hashable, Any] = field(default_factory=dict)
    applied: Counter[tuple[Hashable, Hashable]] = field(default_factory=Counter)
    deleted: Counter[Hashable] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def identity(self, record: Any) -> tuple[Hashable, Hashable]:
        key = self.key(record) if callable(self.key) else record.get(self.key)
        if self.version is None:
            return key, None
        version = self.version(record) if callable(self.version) else record.get(self.version)
        return key, version

    def apply(self, operation: str, record: Any) -> None:
        """Record that the fake applied ``record`` with ``operation`` (a delete removes it)."""
        key, version = self.identity(record)
        with self._lock:
            if operation in ("delete", "archive", "remove"):
                self.state.pop(key, None)
                self.deleted[key] += 1
                return
            self.state[key] = record
            self.applied[key, version] += 1

    def duplicates(self) -> dict[tuple[Hashable, Hashable], int]:
        """``(key, version)`` applied more than once, with their counts."""
        with self._lock:
            return {kv: n for kv, n in self.applied.items() if n > 1}
