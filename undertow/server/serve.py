"""Run ``undertow serve``: the scheduler in a thread, the API with uvicorn in the main thread.

SIGTERM (or Ctrl-C) stops the HTTP server, then the scheduler: no new run starts, runs in
progress stop after their batches in flight and are queued again for the next start, and
the process exits 0. Everything the scheduler knows is in the state store, so a restarted
server picks up where the old one was (and resumes a run that was killed mid-way).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from undertow.errors import UndertowError
from undertow.orchestration.scheduler import Scheduler
from undertow.redact import register_secret
from undertow.server.app import create_app

if TYPE_CHECKING:
    from undertow.project import Project

log = logging.getLogger("undertow.serve")


def serve(
    project: Project,
    *,
    token: str | None,
    host: str = "127.0.0.1",
    port: int = 8765,
    interval: float = 5.0,
    workers: int | None = None,
    grace: float = 30.0,
    announce: Callable[[str], None] | None = None,
) -> None:
    token = token or project.api_token
    if not token:
        raise UndertowError(
            "`undertow serve` needs an API token: every endpoint but /health requires it",
            hint="set UNDERTOW_API_TOKEN (or pass --token, or `server: {token: ${VAR}}` in "
            "undertow.yml); e.g. `export UNDERTOW_API_TOKEN=$(openssl rand -hex 24)`",
        )
    register_secret(token)  # given by --token or the environment: never in a log or a page
    scheduler = Scheduler(
        project, interval=interval, workers=workers or project.config.server.workers
    )
    app = create_app(
        project,
        token=token,
        scheduler=scheduler,
        max_body_bytes=project.config.server.max_body_bytes,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        # open live streams (run pages, the debugger) must not hold a shutdown
        timeout_graceful_shutdown=3,
        log_config=None,
    )
    server = uvicorn.Server(config)
    stopping: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # uvicorn re-raises the signal it caught once it has stopped: note it, do not die
        stopping.append(signum)
        server.should_exit = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    thread = scheduler.start()
    if announce is not None:
        announce(
            f"undertow serve: web UI at http://{host}:{port}/ (log in with the API token), "
            "API docs at /docs, metrics at /metrics"
        )
    try:
        server.run()
    finally:
        if announce is not None:
            announce("stopping: no new runs; runs in progress stop after their batches in flight")
        scheduler.shutdown(grace=grace)
        thread.join(timeout=grace)
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
        if announce is not None:
            announce("stopped")
