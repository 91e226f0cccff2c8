"""Run an ASGI app (a fake SaaS API) on 127.0.0.1 in a background thread.

Used by the tests as a fixture and by ``undertow demo``::

    with serve_in_thread(HubSpotFake().app) as server:
        url = server.url   # http://127.0.0.1:PORT
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn


@dataclass
class RunningServer:
    url: str
    port: int
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(app: Any, *, port: int | None = None) -> RunningServer:
    """Start ``app`` on 127.0.0.1 (a free port unless given) and wait until it listens."""
    port = port or free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"fake-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"fake server on 127.0.0.1:{port} did not start")
        time.sleep(0.01)
    return RunningServer(url=f"http://127.0.0.1:{port}", port=port, server=server, thread=thread)


@contextlib.contextmanager
def serve_in_thread(app: Any, *, port: int | None = None) -> Iterator[RunningServer]:
    running = start_server(app, port=port)
    try:
        yield running
    finally:
        running.stop()
