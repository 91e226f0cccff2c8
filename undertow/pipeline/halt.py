"""Halt: how anything outside a run asks it to stop, and how signals reach it.

A run never installs a signal handler (a Celery prefork child runs tasks on its main thread,
``undertow serve`` runs them in a thread pool, an embedding program has its own). Whoever
owns the process owns the signals and sets the run's :class:`Halt`:

* ``undertow run``: :func:`on_signals` — the first SIGTERM or Ctrl-C sets the halt; while
  the run extracts or diffs (nothing sent yet) it also interrupts at once, so the run ends
  ``cancelled``; during delivery the batches in flight finish and are checkpointed. A
  second signal interrupts at once whatever the run is doing.
* ``undertow serve``: SIGTERM stops the HTTP server, then sets the scheduler's halt.
* ``undertow worker``: SIGTERM sets the halt of the run in progress; the run stops after its
  batches in flight and is handed back to the queue (``handback``).
* the run's own heartbeat sets it when the run's lock was taken over (``lock_lost``).

A run checks its halt between stages, per record batch of the model it streams, and in
delivery (a watcher sets the delivery's stop event within :data:`POLL_SECONDS`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

import pyarrow as pa

POLL_SECONDS = 0.05
"""How often delivery looks at the halt (it is a thread-safe event, not an asyncio one)."""


class Halt(threading.Event):
    """A thread-safe stop request with its reason, and whether a run is delivering."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = ""
        self.handback = False
        """Set by a worker's shutdown: a run in delivery stays unfinished for another worker
        instead of ending ``cancelled``."""
        self.lock_lost = False
        """Set when the run's lock was taken over: it stops without writing anything more."""
        self._delivering = 0
        self._lock = threading.Lock()

    def request(self, reason: str, *, handback: bool = False, lock_lost: bool = False) -> None:
        with self._lock:
            if not self.is_set():
                self.reason = reason
            self.handback = self.handback or handback
            self.lock_lost = self.lock_lost or lock_lost
        self.set()

    @property
    def delivering(self) -> bool:
        return self._delivering > 0

    @contextlib.contextmanager
    def delivery(self) -> Iterator[None]:
        """Mark that a run is delivering (a signal then lets its batches in flight finish)."""
        with self._lock:
            self._delivering += 1
        try:
            yield
        finally:
            with self._lock:
                self._delivering -= 1


@contextlib.contextmanager
def on_signals(halt: Halt, *, signals: tuple[int, ...] | None = None) -> Iterator[Halt]:
    """Route SIGTERM and SIGINT to ``halt`` in the main thread (the CLI's ``undertow run``).

    Outside delivery the first signal also raises ``KeyboardInterrupt`` (a run that has sent
    nothing ends ``cancelled`` at once); during delivery only the second one does. Elsewhere
    than the main thread this does nothing: that process's owner handles its signals.
    """
    chosen = signals or (signal.SIGTERM, signal.SIGINT)

    def handler(signum: int, _frame: FrameType | None) -> None:
        first = not halt.is_set()
        halt.request(f"signal {signal.Signals(signum).name}")
        if not first or not halt.delivering:
            raise KeyboardInterrupt

    previous: dict[int, object] = {}
    try:
        for sig in chosen:
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        for sig, old in previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        yield halt
        return
    try:
        yield halt
    finally:
        for sig, old in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old)  # type: ignore[arg-type]


def halting(reader: pa.RecordBatchReader, halt: Halt) -> pa.RecordBatchReader:
    """The model's stream, stopping at the next record batch once ``halt`` is set."""

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            if halt.is_set():
                raise KeyboardInterrupt
            yield batch

    return pa.RecordBatchReader.from_batches(reader.schema, batches())


class LockHeartbeat:
    """Refresh the run's lock every ``seconds``; halt the run when the lock was taken over."""

    def __init__(self, beat: Callable[[], bool], halt: Halt, seconds: float) -> None:
        self._beat = beat
        self._halt = halt
        self._seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="undertow-heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._seconds):
            try:
                ours = self._beat()
            except Exception:  # the store blinked: the next beat tries again
                continue
            if not ours:
                self._halt.request("its lock was taken over", lock_lost=True)
                return

    def __enter__(self) -> LockHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
