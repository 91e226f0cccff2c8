"""The scheduler loop of ``undertow serve``: every ``interval`` seconds (of its clock) it
polls the upstream signals, starts every due sync, and checks the SLAs.

It calls the :class:`~undertow.project.Project` facade only. Syncs run in a small thread
pool (``workers``), never two runs of one sync at once. :meth:`Scheduler.tick` is one pass,
so tests drive the scheduler with a :class:`~undertow.orchestration.schedule.ManualClock`
and ``inline=True`` (runs happen inside ``tick``) without sleeping.

On :meth:`Scheduler.shutdown` no new run starts; runs in progress stop after their batches
in flight (recorded as ``cancelled``) and are queued again, so the next start finishes them.
A run killed without warning (kill -9, power loss) stays unfinished in the state store and
the next start resumes it from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from undertow.errors import SyncLockedError, UndertowError
from undertow.orchestration.schedule import Clock, SystemClock
from undertow.pipeline.halt import Halt
from undertow.redact import redact
from undertow.state.store import RunRecord, RunStatus

if TYPE_CHECKING:
    from undertow.orchestration.service import Due
    from undertow.project import Project

log = logging.getLogger("undertow.scheduler")

RETRY = "retry"
"""The reason of a queued trigger that sends only the rejected and failed rows again."""


class Scheduler:
    def __init__(
        self,
        project: Project,
        *,
        clock: Clock | None = None,
        interval: float = 5.0,
        workers: int = 2,
        inline: bool = False,
    ) -> None:
        self.project = project
        self.clock: Clock = clock or SystemClock()
        project.orchestration.clock = self.clock
        self.interval = interval
        self.inline = inline
        self.stop = threading.Event()
        """Set to end the loop; set ``halt`` too to stop the runs in progress."""
        self.halt = Halt()
        self.running: dict[str, Future[list[RunRecord]] | None] = {}
        self._lock = threading.Lock()
        self._pool = None if inline else ThreadPoolExecutor(workers, thread_name_prefix="sync")
        self.records: list[RunRecord] = []
        """Every run this scheduler finished (newest last)."""
        self._waiting: dict[str, list[str]] = {}
        self.errors: list[str] = []
        from datetime import timedelta

        from undertow.state.cluster import ClusterState
        from undertow.workers.leader import Leadership

        self.leadership = Leadership(
            ClusterState(project.store), ttl=timedelta(seconds=max(15.0, 3 * interval))
        )
        """Only the ``serve`` holding the scheduler lease starts or queues runs."""
        self.queued = bool(project.config.executor.queued)
        """``executor: {type: celery}``: due runs go to the workers, not to the pool."""

    # -- one pass ---------------------------------------------------------------------------

    def tick(self) -> list[str]:
        """Poll signals, start every due sync, check SLAs; return the syncs started."""
        started: list[str] = []
        try:
            self.project.poll_signals()
        except UndertowError as exc:
            self._error(f"reading upstream signals failed: {exc}")
        if self.stop.is_set():
            return started
        try:
            leading = self.leadership.check()
        except UndertowError as exc:
            self._error(f"the scheduler lease could not be checked: {exc}")
            return started
        if not leading:
            return started  # another `serve` leads; this one serves the API only
        with self._lock:
            running = set(self.running)
        if self.queued:
            running |= self.project.executor.busy()
        for due in self.project.due(running):
            if self.stop.is_set():
                break
            if self.queued and due.reason != RETRY:  # a retry of rejected rows runs here
                self._queue(due)
                started.append(due.sync)
                continue
            self.project.launched(due)
            started.append(due.sync)
            log.info(
                "due: %s (%s%s)",
                due.sync,
                due.reason,
                ", full resync" if due.full else "",
                extra={"event": "sync.due", "sync": due.sync, "reason": due.reason},
            )
            if self._pool is None:
                with self._lock:
                    self.running[due.sync] = None
                self._run(due)
            else:
                with self._lock:
                    self.running[due.sync] = self._pool.submit(self._run, due)
        self._log_waiting()
        try:
            self.project.check_slas()
        except UndertowError as exc:
            self._error(f"checking SLAs failed: {exc}")
        return started

    def _queue(self, due: Due) -> None:
        """Queue ``due`` for the workers under an id naming what made it due, then mark it
        launched: a leader that dies between the two is followed by one that queues the same
        id again, which queues nothing (``due_task_id``)."""
        from undertow.workers.leader import due_task_id

        try:
            task_id = due_task_id(self.project, due)
            queued = self.project.executor.submit(
                due.sync, full=due.full, trigger=due.reason[:40], task_id=task_id
            )
            self.project.launched(due)
        except UndertowError as exc:
            self._error(f"sync {due.sync}: {exc}")
            return
        log.info(
            "queued: %s (%s)%s",
            due.sync,
            due.reason,
            "" if queued else " - already queued",
            extra={"event": "run.queued", "sync": due.sync, "task": task_id},
        )

    def _run(self, due: Due) -> list[RunRecord]:
        records: list[RunRecord] = []
        log.info(
            "run started: %s (trigger %s)",
            due.sync,
            due.reason,
            extra={"event": "run.started", "sync": due.sync, "trigger": due.reason},
        )
        try:
            if due.reason == RETRY:  # "retry rejected" from the UI or the API
                retried = self.project.retry(due.sync)
                records = [retried] if retried is not None else []
            else:
                records = self.project.run(
                    [due.sync], full=due.full, trigger=due.reason[:40], chain=False, halt=self.halt
                )
            self.records.extend(records)
            for record in records:
                _log_run(record)
            if not records:
                log.info(
                    "run skipped: %s (no rejected or failed row to retry)",
                    due.sync,
                    extra={"event": "run.skipped", "sync": due.sync, "reason": "nothing to retry"},
                )
            if self.halt.is_set() and any(r.status == RunStatus.CANCELLED for r in records):
                # stopped by a shutdown: finish it at the next start
                self.project.trigger(due.sync, reason="resume after shutdown")
        except SyncLockedError:
            # `undertow run` in another process has it: the next tick looks again
            log.info(
                "run skipped: %s is running elsewhere",
                due.sync,
                extra={"event": "run.skipped", "sync": due.sync, "reason": "locked"},
            )
        except UndertowError as exc:
            self._error(f"sync {due.sync}: {exc}")
        except Exception as exc:  # a bug must not kill the scheduler
            log.exception("sync %s crashed", due.sync)
            self._error(f"sync {due.sync}: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self.running.pop(due.sync, None)
        return records

    def _log_waiting(self) -> None:
        """Log each sync that starts or stops waiting for its ``after:`` parents."""
        waiting = dict(self.project.orchestration.waiting)
        for sync, reasons in waiting.items():
            if self._waiting.get(sync) != reasons:
                log.info(
                    "waiting for parents: %s: %s",
                    sync,
                    "; ".join(reasons),
                    extra={"event": "sync.waiting", "sync": sync, "waiting_for": reasons},
                )
        self._waiting = waiting

    def _error(self, text: str) -> None:
        text = redact(text)
        self.errors.append(text)
        log.error("%s", text)

    # -- the loop ---------------------------------------------------------------------------

    def run_forever(self) -> None:
        while not self.stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # the state store blinked: try again next tick
                log.exception("scheduler tick failed")
                self._error(f"scheduler tick failed: {type(exc).__name__}: {exc}")
            if self.clock.wait(self.interval, self.stop):
                break

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run_forever, name="undertow-scheduler", daemon=True)
        thread.start()
        return thread

    def shutdown(self, *, grace: float = 30.0) -> None:
        """Start nothing new; stop runs in progress after their batches in flight."""
        self.stop.set()
        self.halt.request("undertow serve is shutting down")
        with contextlib.suppress(UndertowError):  # else the lease expires by itself
            self.leadership.release()
        if self._pool is not None:
            with self._lock:
                futures = [f for f in self.running.values() if f is not None]
            for future in futures:
                try:
                    future.result(timeout=grace)
                except Exception:  # already logged by _run, or the grace period ran out
                    log.warning("a run did not stop within %.0fs of the shutdown", grace)
            self._pool.shutdown(wait=False, cancel_futures=True)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until no run is in progress (tests)."""
        with self._lock:
            futures = [f for f in self.running.values() if f is not None]
        for future in futures:
            try:
                future.result(timeout=timeout)
            except Exception:
                return False
        return True


def _log_run(record: RunRecord) -> None:
    """One record per finished run: its status, counts and duration (and why, if not ok)."""
    counts = {k: record.counts.get(k, 0) for k in ("extracted", "sent", "succeeded")}
    counts.update({k: record.counts.get(k, 0) for k in ("rejected", "failed")})
    stale = record.status == RunStatus.SKIPPED
    level = logging.WARNING if record.status == RunStatus.FAILED else logging.INFO
    log.log(
        level,
        "run %s: %s %s in %.1fs: %s%s",
        "skipped as stale" if stale else "finished",
        record.sync,
        record.status,
        record.duration_s or 0.0,
        " ".join(f"{k} {v:,}" for k, v in counts.items()),
        f" ({record.error or record.warning})" if (record.error or record.warning) else "",
        extra={
            "event": "run.skipped" if stale else "run.finished",
            "sync": record.sync,
            "run_id": record.id,
            "status": str(record.status),
            "trigger": record.trigger,
            "duration_s": round(record.duration_s or 0.0, 3),
            "counts": counts,
            "error": record.error or record.warning,
        },
    )
