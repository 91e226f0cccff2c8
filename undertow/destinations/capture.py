"""The one hook where every request a destination makes, and its answer, can be watched.

The live debugger (``undertow debug``, the web UI) and the tests listen here; nothing else
reaches a destination's traffic::

    from undertow.destinations import capture

    remove = capture.add_listener(lambda exchange: print(exchange.status, exchange.path))
    ...
    remove()

Who fills in what:

* the HTTP client (``destinations/_http.py``) emits one :class:`Exchange` per request it
  sends, after the answer arrives or the transport fails;
* the deliver stage sets the :func:`context` of each batch it sends (sync, batch number,
  the records' keys, the attempt), and the run the run id around its delivery, so every
  exchange says which records, and which run, it carried;
* a connector that does not speak HTTP (a database, a queue) may call :func:`emit` itself.

Invariants: with no listener, :func:`emit` is one ``if`` and costs nothing; an exchange is
built only when someone listens, and is cheap to build (bodies trimmed to
:data:`MAX_BODY_BYTES` by a slice). Every field a listener can read (URL, header values,
bodies, error) is passed through :func:`undertow.redact.redact` (every registered secret,
every credential pattern) when it is first read, so a listener cannot store a secret by
mistake, and one that reads nothing (the debugger, for the requests it will not keep) costs
no redaction. A listener that raises is dropped from that exchange's delivery and
logged; it never fails a sync.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from undertow.redact import redact

DRY_RUN_NOTE = "not sent: dry run (the first request the destination would make)"
"""The ``error`` of an exchange a dry run stopped before it left (``_http.dry_run``)."""

MAX_BODY_BYTES = 64 * 1024
"""Bodies are trimmed to this many bytes before a listener sees them."""

SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
"""Headers whose value is always masked, whatever it holds."""

log = logging.getLogger("undertow.capture")


@dataclass(frozen=True)
class CallContext:
    """What the deliver stage knows about the request being sent."""

    sync: str | None = None
    destination: str | None = None
    batch: int | None = None
    operation: str | None = None
    keys: tuple[str, ...] = ()
    attempt: int = 1
    run_id: str | None = None
    """The run sending the batch (set by the run around its delivery; None for test-a-row)."""


class Exchange:
    """One request and its answer, redacted and trimmed.

    Built on the delivery path for every request while someone listens, so it does no
    redaction there: the bodies are trimmed to :data:`MAX_BODY_BYTES` (a slice), and each
    text field is redacted the first time it is read (then kept). Every public attribute
    returns redacted text; the raw parts live only in this object's private slots, in
    memory, for as long as a listener keeps it (the debugger keeps at most a sync's
    ``keep`` newest), and are never in its ``repr``.
    """

    __slots__ = (
        "_done",
        "_raw",
        "context",
        "duration",
        "method",
        "request_id",
        "started_at",
        "status",
    )

    def __init__(
        self,
        *,
        started_at: float,
        duration: float,
        method: str,
        url: str,
        request_headers: Mapping[str, str] | None = None,
        request_body: bytes | str | None = None,
        status: int | None = None,
        response_headers: Mapping[str, str] | None = None,
        response_body: bytes | str | None = None,
        error: str | None = None,
        request_id: str | None = None,
        context: CallContext | None = None,
    ) -> None:
        self.started_at = started_at
        """Seconds since the epoch when the request was sent."""
        self.duration = duration
        self.method = method
        self.status = status
        """None when no answer arrived (timeout, connection refused)."""
        self.request_id = request_id
        self.context = context or _NO_CONTEXT
        self._raw: dict[str, object] = {
            "url": url,
            "request_headers": dict(request_headers or {}),
            "request_body": _cut(request_body),
            "response_headers": dict(response_headers or {}),
            "response_body": _cut(response_body),
            "error": error,
        }
        self._done: dict[str, object] = {}

    def _redacted(self, name: str) -> object:
        try:
            return self._done[name]
        except KeyError:
            pass
        raw = self._raw[name]
        if name == "url":
            value: object = _url(raw)  # type: ignore[arg-type]
        elif name.endswith("headers"):
            value = _headers(raw)  # type: ignore[arg-type]
        elif name == "error":
            value = redact(raw) if raw else None
        else:
            value = _text(raw)  # type: ignore[arg-type]
        self._done[name] = value
        return value

    @property
    def url(self) -> str:
        """Scheme, host and path; never the query string or user info."""
        return self._redacted("url")  # type: ignore[return-value]

    @property
    def request_headers(self) -> dict[str, str]:
        return self._redacted("request_headers")  # type: ignore[return-value]

    @property
    def request_body(self) -> str | None:
        return self._redacted("request_body")  # type: ignore[return-value]

    @property
    def response_headers(self) -> dict[str, str]:
        return self._redacted("response_headers")  # type: ignore[return-value]

    @property
    def response_body(self) -> str | None:
        return self._redacted("response_body")  # type: ignore[return-value]

    @property
    def error(self) -> str | None:
        """The transport failure, when there was no answer."""
        return self._redacted("error")  # type: ignore[return-value]

    @property
    def not_sent(self) -> bool:
        """True for a request a dry run stopped before it left (kept by no debugger)."""
        return self.status is None and self._raw["error"] == DRY_RUN_NOTE

    @property
    def path(self) -> str:
        return urlsplit(self.url).path or "/"

    def __repr__(self) -> str:
        return (
            f"Exchange(method={self.method!r}, url={self.url!r}, status={self.status!r}, "
            f"duration={self.duration:.3f}, error={self.error!r}, context={self.context!r})"
        )


Listener = Callable[[Exchange], None]

_lock = threading.Lock()
_listeners: list[Listener] = []
_NO_CONTEXT = CallContext()
_context: contextvars.ContextVar[CallContext] = contextvars.ContextVar(
    "undertow_capture_context", default=_NO_CONTEXT
)


def add_listener(listener: Listener) -> Callable[[], None]:
    """Call ``listener`` for every exchange from now on; returns the function that stops it."""
    with _lock:
        _listeners.append(listener)

    def remove() -> None:
        with _lock, contextlib.suppress(ValueError):
            _listeners.remove(listener)

    return remove


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    remove = add_listener(listener)
    try:
        yield
    finally:
        remove()


def active() -> bool:
    """True when someone listens (callers may skip building what they would pass)."""
    return bool(_listeners)


@contextlib.contextmanager
def context(**fields: object) -> Iterator[CallContext]:
    """Set the call context for the requests made inside (merged over the current one)."""
    current = _context.get()
    merged = CallContext(**{**current.__dict__, **fields})  # type: ignore[arg-type]
    token = _context.set(merged)
    try:
        yield merged
    finally:
        _context.reset(token)


def current_context() -> CallContext:
    return _context.get()


def _cut(body: bytes | str | None) -> bytes | str | None:
    """The body trimmed to :data:`MAX_BODY_BYTES` (with how much was cut), not yet decoded."""
    if body is None or len(body) <= MAX_BODY_BYTES:
        return body  # a str this short in characters may still be longer in bytes: _text
    raw = body if isinstance(body, bytes) else body.encode()
    if len(raw) <= MAX_BODY_BYTES:
        return raw
    return _Cut(raw[:MAX_BODY_BYTES], len(raw) - MAX_BODY_BYTES)


class _Cut(bytes):
    """A trimmed body and how many bytes were left out."""

    more: int

    def __new__(cls, data: bytes, more: int) -> _Cut:
        cut = super().__new__(cls, data)
        cut.more = more
        return cut


def _text(body: bytes | str | None) -> str | None:
    if body is None:
        return None
    if isinstance(body, _Cut):
        text = bytes(body).decode("utf-8", "replace") + f"… ({body.more:,} more bytes)"
        return redact(text)
    raw = body if isinstance(body, bytes) else body.encode()
    cut = raw[:MAX_BODY_BYTES]
    text = cut.decode("utf-8", "replace")
    if len(raw) > MAX_BODY_BYTES:
        text += f"… ({len(raw) - MAX_BODY_BYTES:,} more bytes)"
    return redact(text)


def _headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in (headers or {}).items():
        lower = name.lower()
        out[lower] = "***" if lower in SECRET_HEADERS else redact(value)
    return out


def _url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return redact(f"{parts.scheme}://{host}{parts.path}" if parts.scheme else parts.path)


def emit(
    *,
    method: str,
    url: str,
    started_at: float,
    request_headers: Mapping[str, str] | None = None,
    request_body: bytes | str | None = None,
    status: int | None = None,
    response_headers: Mapping[str, str] | None = None,
    response_body: bytes | str | None = None,
    error: str | None = None,
    request_id: str | None = None,
    duration: float | None = None,
) -> None:
    """Hand one exchange to every listener (a no-op when nobody listens)."""
    if not _listeners:
        return
    exchange = Exchange(
        started_at=started_at,
        duration=duration if duration is not None else max(0.0, time.time() - started_at),
        method=method,
        url=url,
        request_headers=request_headers,
        request_body=request_body,
        status=status,
        response_headers=response_headers,
        response_body=response_body,
        error=error,
        request_id=request_id,
        context=_context.get(),
    )
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(exchange)
        except Exception:  # a listener must never fail a sync
            log.exception("capture listener %r failed", listener)
