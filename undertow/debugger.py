"""The live debugger: every request a sync's destination makes, and its answer, kept.

The capture hook (:mod:`undertow.destinations.capture`) hands over each exchange already
redacted (every registered secret, credential headers) and trimmed. While a project runs
a sync (``Project.run``, ``retry``, ``test_row``) its :class:`DebugRecorder` is the active
one for that thread and the tasks it starts (a context variable, so two projects in one
process never mix), and one process-wide listener passes each exchange to it:

1. exchanges without a sync (a connection check) or of a sync whose debugger is off are
   dropped;
2. with ``debugger: {payloads: masked}`` every value of the request and response bodies
   becomes ``***`` before anything is stored (field names and structure stay, so the
   shape of a payload and the vendor's error codes can still be read);
3. the row is written by one background thread into the state store
   (:class:`undertow.state.debug_log.DebugLog`), which prunes each sync to its newest
   ``keep`` rows and ``max_age``.

On the delivery path, :meth:`DebugRecorder.add` only appends the exchange (not yet
redacted: see :class:`~undertow.destinations.capture.Exchange`) to the sync's ring of its
newest ``keep``; an exchange pushed out of the ring before it was written is one the store
would have pruned (``keep`` newer ones follow it), so it is dropped unread and costs no
redaction. The writer thread wakes every :data:`FLUSH_SECONDS`, takes what the rings hold,
builds the rows (redaction, masking: only here), and stores them; it then rests for nine
times what that took, so that under a fast run it spends at most a tenth of the time (the
live view then shows a sample of the newest requests as they arrive; the last ``keep`` are
all stored when the run ends). Recording never blocks the event loop that sends batches,
and a failing write is logged and dropped: the debugger never fails a sync.
:meth:`DebugRecorder.flush` (called when a run ends) writes what is waiting at once and
waits until it is stored.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from undertow.destinations import capture
from undertow.state.debug_log import DebugLog

if TYPE_CHECKING:
    from undertow.config.models import DebuggerConfig, ProjectConfig

log = logging.getLogger("undertow.debugger")

MASK = "***"
FLUSH_SECONDS = 0.2
"""How often the writer thread stores what arrived (at the most: see the module doc)."""
IDLE_SECONDS = 5.0
"""The writer thread ends after this long with nothing to write (the next exchange starts
another)."""

_active: contextvars.ContextVar[DebugRecorder | None] = contextvars.ContextVar(
    "undertow_debugger", default=None
)
_installed = threading.Lock()
_remove_listener: list[Any] = []
_recordings = 0
"""Recordings in progress in this process; the listener is on only while there are some,
so that with none the capture hook stays one ``if`` (no exchange is built)."""


def settings_for(config: ProjectConfig, sync: str) -> DebuggerConfig:
    """The sync's debugger settings: its own keys over the project's."""
    base = config.debugger
    own = config.syncs[sync].debugger if sync in config.syncs else None
    if own is None:
        return base
    return base.model_copy(update={k: getattr(own, k) for k in own.model_fields_set})


def mask_value(value: Any) -> Any:
    """Every value in ``value`` as ``***`` (``null`` stays, keys and nesting stay)."""
    if isinstance(value, dict):
        return {k: mask_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_value(v) for v in value]
    return None if value is None else MASK


def mask_body(text: str | None) -> str | None:
    """A body with its values masked; a body that is not whole JSON is replaced entirely."""
    if text is None or text == "":
        return text
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return f"(masked: {len(text.encode()):,} bytes, not JSON or trimmed)"
    return orjson.dumps(mask_value(parsed)).decode()


def _listener(exchange: capture.Exchange) -> None:
    recorder = _active.get()
    if recorder is not None:
        recorder.add(exchange)


def _install() -> None:
    global _recordings
    with _installed:
        _recordings += 1
        if not _remove_listener:
            _remove_listener.append(capture.add_listener(_listener))


def _uninstall() -> None:
    global _recordings
    with _installed:
        _recordings -= 1
        if _recordings == 0 and _remove_listener:
            _remove_listener.pop()()


class DebugRecorder:
    """Stores the exchanges of one project's syncs (see the module docstring)."""

    def __init__(self, config: ProjectConfig, debug_log: DebugLog) -> None:
        self.config = config
        self.log = debug_log
        self._rings: dict[str, deque[capture.Exchange]] = {}
        self._settings: dict[str, DebuggerConfig] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0
        """Exchanges in the rings or being written."""
        self._idle = threading.Condition(self._lock)
        self._now = threading.Event()
        """Set by :meth:`flush`: write what is waiting without resting first."""
        self.dropped = 0

    # -- scope ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def recording(self) -> Iterator[DebugRecorder]:
        """Make this recorder the active one here (and in the tasks and threads started
        from here); flush when the block ends."""
        _install()
        token = _active.set(self)
        try:
            yield self
        finally:
            _active.reset(token)
            _uninstall()
            self.flush()

    # -- the listener's side (the delivery path: no redaction, no encoding) -----------------

    def _for(self, sync: str) -> DebuggerConfig:
        settings = self._settings.get(sync)
        if settings is None:
            settings = self._settings[sync] = settings_for(self.config, sync)
        return settings

    def add(self, exchange: capture.Exchange) -> None:
        sync = exchange.context.sync
        if sync is None or sync not in self.config.syncs or exchange.not_sent:
            return  # a dry run's request never left: the debugger keeps what was sent
        settings = self._for(sync)
        if not settings.enabled:
            return
        with self._lock:
            ring = self._rings.get(sync)
            if ring is None:
                ring = self._rings[sync] = deque(maxlen=settings.keep)
            if len(ring) == ring.maxlen:
                self._pending -= 1  # the oldest is pushed out unread (see the module doc)
            ring.append(exchange)
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._drain, name="undertow-debugger", daemon=True
                )
                self._thread.start()

    def row(self, exchange: capture.Exchange) -> dict[str, Any]:
        """The stored row of one exchange: redacted (reading the exchange's fields does
        it) and, with ``payloads: masked``, with every body value masked."""
        ctx = exchange.context
        assert ctx.sync is not None
        masked = self._for(ctx.sync).payloads == "masked"
        request_body, response_body = exchange.request_body, exchange.response_body
        if masked:
            request_body, response_body = mask_body(request_body), mask_body(response_body)
        return {
            "sync": ctx.sync,
            "run_id": ctx.run_id,
            "at": datetime.fromtimestamp(exchange.started_at, UTC),
            "method": exchange.method,
            "url": exchange.url,
            "status": exchange.status,
            "duration_ms": exchange.duration * 1000.0,
            "request_id": exchange.request_id,
            "error": exchange.error,
            "batch_no": ctx.batch,
            "operation": ctx.operation,
            "attempt": ctx.attempt,
            "key_count": len(ctx.keys),
            "keys": orjson.dumps(list(ctx.keys)).decode(),
            "request_headers": orjson.dumps(exchange.request_headers).decode(),
            "request_body": request_body,
            "response_headers": orjson.dumps(exchange.response_headers).decode(),
            "response_body": response_body,
            "masked": masked,
        }

    # -- the writer -------------------------------------------------------------------------

    def _drain(self) -> None:
        rest = FLUSH_SECONDS
        idle_since = time.monotonic()
        while True:
            self._now.wait(rest)
            self._now.clear()
            with self._lock:
                taken = [ex for ring in self._rings.values() for ex in ring]
                for ring in self._rings.values():
                    ring.clear()
                if not taken and self._pending == 0:
                    if time.monotonic() - idle_since >= IDLE_SECONDS:
                        self._thread = None
                        return
                    rest = FLUSH_SECONDS
                    continue
            started = time.monotonic()
            self._write(taken)
            idle_since = time.monotonic()
            rest = max(FLUSH_SECONDS, 9 * (idle_since - started))

    def _write(self, exchanges: list[capture.Exchange]) -> None:
        keep = {}
        try:
            rows = [self.row(ex) for ex in exchanges]
            for sync in {r["sync"] for r in rows}:
                settings = self._for(sync)
                keep[sync] = (settings.keep, settings.max_age.total_seconds() / 86400)
            self.log.add(rows, keep=keep)
        except Exception as exc:  # the debugger never fails a sync
            self.dropped += len(exchanges)
            log.warning("the debugger could not store %d request(s): %s", len(exchanges), exc)
        finally:
            with self._lock:
                self._pending -= len(exchanges)
                self._idle.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Store every exchange waiting now and wait until it is stored (or dropped)."""
        self._now.set()
        with self._lock:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)
