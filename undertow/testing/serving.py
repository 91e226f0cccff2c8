"""``undertow serve`` as a real subprocess, for tests (and the UI screenshots).

    server = ServeProcess(project_dir, token="t0ken")
    server.start()                      # waits until /health answers
    status, body = server.call("GET", "/api/syncs")
    server.stop()

It listens on 127.0.0.1 on a free port; its output goes to ``serve.log`` in the project
folder (``output()``). :meth:`call` speaks JSON with a bearer token by default; ``raw`` and
``headers`` send anything else (an oversized or malformed body).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from undertow.testing.server import free_port

UNDERTOW = str(Path(sys.executable).with_name("undertow"))


class ServeProcess:
    def __init__(
        self,
        folder: Path,
        *,
        token: str,
        args: Sequence[str] = ("--interval", "0.2", "--grace", "20"),
        env: dict[str, str] | None = None,
        token_via: str = "env",
    ) -> None:
        self.folder = folder
        self.token = token
        self.args = list(args)
        self.env = env or {}
        self.token_via = token_via
        """``env`` (UNDERTOW_API_TOKEN), ``flag`` (--token) or ``config`` (undertow.yml)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.log = folder / "serve.log"
        self.starts = 0

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        env = {**os.environ, "NO_COLOR": "1", **self.env}
        env.pop("UNDERTOW_API_TOKEN", None)
        command = [UNDERTOW, "serve", *self.args, "--project", str(self.folder)]
        command += ["--port", str(self.port)]
        if self.token_via == "env":
            env["UNDERTOW_API_TOKEN"] = self.token
        elif self.token_via == "flag":
            command += ["--token", self.token]
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        wait_for(lambda: self.ok("/health"), "the server to answer /health", timeout, self)

    def ok(self, path: str) -> bool:
        try:
            return self.call("GET", path, token=None)[0] == 200
        except OSError:
            return False

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "",
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        """``(status, parsed JSON or text)``; ``token=""`` is the server's, None sends none."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        given = self.token if token == "" else token
        if given:
            request.add_header("Authorization", f"Bearer {given}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, _decode(response.read(), response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, _decode(exc.read(), exc.headers)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _decode(raw: bytes, headers: Any) -> Any:
    kind = headers.get("Content-Type", "") if headers else ""
    if "json" in kind and raw:
        return json.loads(raw)
    return raw.decode("utf-8", "replace")


def wait_for(
    condition: Callable[[], bool],
    what: str,
    timeout: float = 60.0,
    server: ServeProcess | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if server is not None and server.proc is not None and server.proc.poll() is not None:
            raise AssertionError(
                f"the server exited ({server.proc.returncode}) waiting for {what}:\n"
                + server.output()
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
