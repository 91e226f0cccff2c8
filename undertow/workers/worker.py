"""``undertow worker``: a Celery worker (prefork) that runs a project's queued tasks.

The main process registers the worker in the state store and sends its heartbeat every
``executor.heartbeat``, records which tasks it received (so that a message stuck in a dead
worker's prefetch is published again), sweeps for tasks whose worker died
(:mod:`undertow.workers.sweeper`) and serves its Prometheus metrics. Each pool process runs
one task at a time on its main thread.

Shutdown: on SIGTERM Celery stops taking messages and waits for the tasks in progress; the
main process forwards SIGTERM to its pool processes, where it sets the running task's halt
with ``handback``: the run stops after its batches in flight, they are checkpointed, the run
stays unfinished and its task goes back to the queue for another worker to resume. A second
SIGTERM to a pool process (more than a second after the first; systemd signals the whole
group once too) stops it at once; the next worker resumes the run from its checkpoints.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from undertow.errors import UndertowError
from undertow.state.cluster import ClusterState
from undertow.state.store import StateStore
from undertow.workers.app import TASK, make_app, publish
from undertow.workers.sweeper import Sweeper
from undertow.workers.tasks import current_halt, holder_id, run_task

if TYPE_CHECKING:
    from undertow.project import Project

log = logging.getLogger("undertow.worker")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("undertow")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


class _Beat:
    def __init__(self, beat: Callable[[], None], seconds: float) -> None:
        self._beat = beat
        self._seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="undertow-worker-beat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._seconds):
            try:
                self._beat()
            except Exception:
                log.warning("worker heartbeat failed (the state store blinked?)", exc_info=True)

    def start(self) -> _Beat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


_handled_in: int | None = None


def _on_sigterm_in_child() -> None:
    """A pool process: SIGTERM hands the running task back (see the module docstring).

    Installed when the process runs its first task: billiard sets its own SIGTERM handler
    after the process initialiser (``worker_process_init``) has run."""
    global _handled_in
    if _handled_in == os.getpid():
        return
    _handled_in = os.getpid()
    first: list[float] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        halt = current_halt()
        now = time.monotonic()
        if halt is not None and (not first or now - first[0] < 1.0):
            if not first:
                first.append(now)
                halt.request("the worker is shutting down (SIGTERM)", handback=True)
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)


def run_worker(
    project: Project,
    *,
    concurrency: int | None = None,
    queues: list[str] | None = None,
    name: str | None = None,
    metrics_port: int | None = None,
    announce: Callable[[str], None] | None = None,
) -> int:
    """Run until shut down; return Celery's exit code."""
    from celery import signals

    executor = project.config.executor
    if not executor.queued:
        raise UndertowError(
            "`undertow worker` needs `executor: {type: celery, broker: ...}` in undertow.yml",
            hint="see docs/deployment.md; without it, `undertow run` and `undertow serve` "
            "run syncs in-process",
        )
    worker_name = name or f"undertow-{os.getpid()}@{socket.gethostname()}"
    concurrency = concurrency or os.cpu_count() or 1
    queues = queues or [executor.queue]
    ttl = executor.lock_ttl
    project_name = project.config.name
    # the pool processes use the project's store; the main process its own (never shared
    # across a fork), opened without migrating: a store of another version is refused here
    project.store  # noqa: B018 - open (and check) it before forking
    own = StateStore(project.loaded.state_url, migrate=False)
    cluster = ClusterState(own)
    app = make_app(project_name, executor)
    main_holder = holder_id(worker_name)

    def send(task_id: str) -> None:
        publish(app, project_name, executor.queue, task_id)

    @app.task(name=TASK, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def undertow_task(task_id: str, for_project: str) -> dict[str, Any]:
        if for_project != project_name:
            log.error(
                "task %s is for project %r, this worker runs %r: dropped (give each "
                "project its own `executor.queue`)",
                task_id,
                for_project,
                project_name,
            )
            return {"dropped": "another project"}
        _on_sigterm_in_child()
        outcome = run_task(project, task_id, worker=worker_name, ttl=ttl, publish=send)
        log.info("task %s: %s", task_id, outcome)
        return outcome

    def received(request: Any = None, **_: Any) -> None:
        try:
            if request is not None and request.args:
                cluster.reserve(str(request.args[0]), main_holder)
        except Exception:
            log.warning("could not record a received task", exc_info=True)

    def child_init(**_: Any) -> None:
        project.store.engine.dispose(close=False)  # the parent's connections are not ours

    def shutting_down(**_: Any) -> None:
        import billiard.process

        try:
            cluster.worker_heartbeat(worker_name, state="draining")
        except Exception:
            log.warning("could not mark the worker draining", exc_info=True)
        for child in billiard.process.active_children():
            if child.pid:
                os.kill(child.pid, signal.SIGTERM)

    signals.task_received.connect(received, weak=False)
    signals.worker_process_init.connect(child_init, weak=False)
    signals.worker_shutting_down.connect(shutting_down, weak=False)

    metrics_url = None
    if metrics_port is not None:
        from prometheus_client import start_http_server

        from undertow.workers.metrics import worker_registry

        start_http_server(
            metrics_port,
            addr="127.0.0.1",
            registry=worker_registry(cluster, worker_name, concurrency),
        )
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    cluster.register_worker(
        worker_name,
        host=socket.gethostname(),
        pid=os.getpid(),
        queues=queues,
        concurrency=concurrency,
        version=_version(),
        metrics_url=metrics_url,
    )
    beat = _Beat(lambda: cluster.worker_heartbeat(worker_name), executor.heartbeat.total_seconds())
    sweeper = Sweeper(cluster, ttl=ttl, every=executor.sweep_every, publish=send)
    beat.start()
    sweeper.start()
    if announce is not None:
        announce(
            f"undertow worker {worker_name}: {concurrency} process(es) on queue(s) "
            f"{', '.join(queues)}" + (f"; metrics at {metrics_url}" if metrics_url else "")
        )
    try:
        worker = app.Worker(
            hostname=worker_name,
            concurrency=concurrency,
            queues=queues,
            pool="prefork",
            without_mingle=True,
            without_gossip=True,
            without_heartbeat=True,
            optimization="fair",
            loglevel="INFO",
            quiet=True,
        )
        worker.start()
        return int(worker.exitcode or 0)
    finally:
        sweeper.stop()
        beat.stop()
        cluster.worker_stopped(worker_name)
        own.close()
        if announce is not None:
            announce(f"undertow worker {worker_name}: stopped")
