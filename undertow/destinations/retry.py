"""Retries and waits: exponential backoff with full jitter, never sooner than the vendor asked,
never longer than the destination's ``max_wait``, and never deaf to Ctrl-C or SIGTERM.

The deliver stage sets the :func:`delivery` context for the batches it sends (the sync's
:class:`RetryPolicy`, its stop event, the destination's ``max_wait``); the HTTP kit reads it
for every request, so a connector never passes them around. Outside a delivery (a unit test
calling ``write_batch``) the defaults apply: six attempts, no stop event.

What a wait can end in:

* it elapses: try again;
* the vendor asks for more than ``max_wait`` (``Retry-After: 86400``): :func:`too_long`
  builds the ``FatalDeliveryError`` that ends the run ``failed`` with the wait it asked for;
* the run is stopped (Ctrl-C, SIGTERM, ``undertow serve`` shutting down):
  :class:`~undertow.errors.InterruptedDelivery`, and the batch stays undelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from undertow.errors import FatalDeliveryError


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 60.0

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter for the ``attempt``-th failure."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        return max(self.backoff(attempt), retry_after or 0.0)


@dataclass(frozen=True)
class DeliveryContext:
    """What the deliver stage tells every request of the batches it sends."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    stop: asyncio.Event | None = None
    max_wait: float = 900.0
    before_send: Callable[[], None] | None = None
    """Run once, right before the batch's first request leaves (the deliver stage's "being
    sent" mark of events the vendor does not deduplicate)."""

    def sending(self) -> None:
        """A destination calls this right before it sends a request."""
        hook = self.before_send
        object.__setattr__(self, "before_send", None)  # once per batch attempt
        if hook is not None:
            hook()


_current: contextvars.ContextVar[DeliveryContext | None] = contextvars.ContextVar(
    "undertow_delivery", default=None
)


def current() -> DeliveryContext:
    return _current.get() or DeliveryContext()


@contextlib.contextmanager
def delivery(
    *,
    policy: RetryPolicy,
    stop: asyncio.Event | None,
    max_wait: float,
    before_send: Callable[[], None] | None = None,
) -> Iterator[DeliveryContext]:
    """Set the delivery context for the requests made inside."""
    ctx = DeliveryContext(policy=policy, stop=stop, max_wait=max_wait, before_send=before_send)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def too_long(
    destination: str, seconds: float, why: str, max_wait: float, detail: str = ""
) -> FatalDeliveryError:
    """The error for a vendor asking to wait longer than the destination accepts."""
    hours = f" ({seconds / 3600:.1f} h)" if seconds >= 3600 else ""
    text = (
        f"destination {destination!r}: {why} asks to wait {seconds:,.0f} s{hours} before the "
        f"next request, more than its max_wait of {max_wait:,.0f} s; the run stops and the "
        "rows not sent go out with the next run"
    )
    if detail:
        text += f" ({detail})"
    return FatalDeliveryError(
        text,
        hint=f"run the sync again later, or raise `max_wait:` on destination {destination!r} "
        "if waiting that long in one run is fine",
    )
