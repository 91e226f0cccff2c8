"""The vendors' ways of saying "slow down", declared as data.

A kit destination lists its :class:`SlowDown` rules; the kit reads every answer through them
before anything else, because several vendors say "slow down" with a status that would
otherwise mean something else::

    SlowDown()                                             429, Retry-After (seconds or date)
    SlowDown(statuses={403}, code_path="[*].errorCode",
             codes={"REQUEST_LIMIT_EXCEEDED"})             Salesforce
    SlowDown(statuses={400}, code_path="error.code",
             codes={17, 613, 80003}, default_wait=60)      Facebook Graph
    SlowDown(statuses={200}, code_path="errors[*].code",
             codes={606, 607, 615}, default_wait=20)       Marketo, inside an HTTP 200
    SlowDown(wait_header="x-ratelimit-reset", wait_kind="epoch")   Intercom, Braze
    SlowDown(wait_path="params.rateLimitReset")            Iterable (seconds, in the body)
    SlowDown(code_path="policyName", codes={"DAILY"}, fatal=True)  HubSpot's daily cap

:class:`RateHeaders` reads the vendor's own count (``X-RateLimit-Remaining``/``Reset``) from
every answer, so the budget slows down *before* a 429 when another app spends the same
account. Paths are dotted keys with ``[*]`` for every item of a list (``errors[*].code``);
``[*]`` first for a body that is a list.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from undertow.destinations._http import parse_retry_after

if TYPE_CHECKING:
    from undertow.destinations._http import Response

WaitKind = Literal["seconds", "ms", "epoch", "epoch_ms", "date"]


def values_at(body: Any, path: str) -> Iterator[Any]:
    """Every value at ``path`` in a parsed JSON body (``a.b``, ``a[*].b``, ``[*].c``, ``a[0]``)."""
    nodes: list[Any] = [body]
    for part in _parts(path):
        found: list[Any] = []
        for node in nodes:
            if part == "*":
                if isinstance(node, list):
                    found.extend(node)
            elif isinstance(part, int):
                if isinstance(node, list) and -len(node) <= part < len(node):
                    found.append(node[part])
            elif isinstance(node, dict) and part in node:
                found.append(node[part])
        nodes = found
    yield from nodes


def first_at(body: Any, path: str) -> Any:
    return next(values_at(body, path), None)


def _parts(path: str) -> Iterator[str | int]:
    for chunk in path.replace("[", ".[").split("."):
        if not chunk:
            continue
        if chunk.startswith("[") and chunk.endswith("]"):
            inner = chunk[1:-1]
            yield "*" if inner in ("*", "") else int(inner)
        else:
            yield chunk


def seconds_from(value: Any, kind: WaitKind, now: float | None = None) -> float | None:
    """A wait in seconds from a header or body value of the given kind (None if unreadable)."""
    if value is None or value == "":
        return None
    if kind == "date":
        return parse_retry_after(str(value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return parse_retry_after(str(value)) if kind == "seconds" else None
    wall = time.time() if now is None else now
    if kind == "seconds":
        return max(0.0, number)
    if kind == "ms":
        return max(0.0, number / 1000)
    if kind == "epoch":
        return max(0.0, number - wall)
    return max(0.0, number / 1000 - wall)


@dataclass(frozen=True)
class Verdict:
    """What a slow-down answer asks for."""

    name: str
    wait: float | None
    """Seconds to wait before the next request (None: the backoff decides)."""
    fatal: bool = False
    """No wait helps within this run (a daily quota): stop the run."""
    penalize: bool = True
    """Everyone on the account waits, not only this request."""
    hint: str | None = None


@dataclass(frozen=True)
class SlowDown:
    """One way a vendor says "slow down" (see the module docstring for examples)."""

    name: str = "rate limited"
    statuses: frozenset[int] = frozenset({429})
    code_path: str | None = None
    """Where the vendor's code is in the body; with ``codes``, the rule matches only then."""
    codes: frozenset[Any] = frozenset()
    retry_after: bool = True
    """Read ``Retry-After`` (seconds or an HTTP date)."""
    wait_header: str | None = None
    wait_path: str | None = None
    wait_kind: WaitKind = "seconds"
    default_wait: float | None = None
    min_wait: float = 0.0
    fatal: bool = False
    penalize: bool = True
    hint: str | None = None
    """What the user can do (shown when the signal stops the run)."""
    when: Callable[[Response, Any], bool] | None = None
    """An extra test on the answer and its parsed body."""

    def read(self, response: Response, body: Any) -> Verdict | None:
        if response.status not in self.statuses:
            return None
        if self.codes:
            if self.code_path is None:
                return None
            wanted = {str(c) for c in self.codes}
            if not any(str(v) in wanted for v in values_at(body, self.code_path)):
                return None
        if self.when is not None and not self.when(response, body):
            return None
        wait: float | None = None
        if self.retry_after:
            wait = parse_retry_after(response.headers.get("retry-after"))
        if wait is None and self.wait_header:
            wait = seconds_from(response.headers.get(self.wait_header.lower()), self.wait_kind)
        if wait is None and self.wait_path:
            wait = seconds_from(first_at(body, self.wait_path), self.wait_kind)
        if wait is None:
            wait = self.default_wait
        if wait is not None:
            wait = max(wait, self.min_wait)
        return Verdict(self.name, wait, fatal=self.fatal, penalize=self.penalize, hint=self.hint)

    def __post_init__(self) -> None:
        object.__setattr__(self, "statuses", frozenset(self.statuses))
        object.__setattr__(self, "codes", frozenset(self.codes))


@dataclass(frozen=True)
class RateHeaders:
    """The vendor's own count of what is left, read from every answer."""

    remaining: str
    reset: str | None = None
    reset_kind: WaitKind = "epoch"
    window: float | None = None
    """When there is no reset header: assume the count renews within this many seconds."""

    def read(self, response: Response) -> tuple[int, float] | None:
        """(remaining, seconds until reset), or None when the headers are absent."""
        raw = response.headers.get(self.remaining.lower())
        if raw is None:
            return None
        try:
            remaining = int(float(raw))
        except ValueError:
            return None
        reset: float | None = None
        if self.reset:
            reset = seconds_from(response.headers.get(self.reset.lower()), self.reset_kind)
        if reset is None:
            reset = self.window
        if reset is None:
            return None
        return remaining, reset


DEFAULT_SIGNALS: tuple[SlowDown, ...] = (SlowDown(),)
"""A 429 with an optional ``Retry-After``: what most vendors send."""
