"""Fixtures for the end-to-end tests: the real ``undertow`` command on projects in tmp_path.

Every test runs the console script installed next to the interpreter as a subprocess, the
way a user runs it from a shell (stdin is not a terminal, stdout and stderr are pipes). The
warehouse is a DuckDB file built here; the SaaS APIs are the local fakes of
``undertow.testing`` served in a thread of the test process, reached over real TCP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest

from undertow.testing.server import RunningServer, serve_in_thread
from undertow.testing.webhook import WebhookReceiver

UNDERTOW = Path(sys.executable).parent / "undertow"
TIMEOUT_S = 60

Row = tuple[Any, ...]


@dataclass
class Result:
    """What one ``undertow`` invocation did."""

    args: list[str]
    code: int
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        """stdout and stderr together, for assertions about the whole message."""
        return self.out + self.err

    def json(self) -> Any:
        """stdout parsed as ONE JSON document; fails when anything else is on stdout."""
        try:
            return json.loads(self.out)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"stdout of {self.args} is not one JSON document: {self}") from exc

    def __str__(self) -> str:
        return (
            f"undertow {' '.join(self.args)} -> exit {self.code} in {self.seconds:.1f}s\n"
            f"--- stdout ---\n{self.out}--- stderr ---\n{self.err}"
        )


class SampleProject:
    """A project folder in tmp_path: ``undertow.yml``, a DuckDB warehouse, an output folder."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.warehouse = root / "warehouse.duckdb"
        self.started: list[subprocess.Popen[str]] = []
        (root / "out").mkdir(parents=True, exist_ok=True)

    def write(self, yaml_text: str, name: str = "undertow.yml") -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(yaml_text).lstrip(), encoding="utf-8")
        return path

    def sql(self, *statements: str) -> None:
        """Run statements on the warehouse (a loader changing it between runs)."""
        with duckdb.connect(str(self.warehouse)) as con:
            for statement in statements:
                con.execute(statement)

    def users(self, rows: Sequence[Row]) -> None:
        """Replace the ``users`` table with ``(id, email, plan)`` rows."""
        self.sql("CREATE OR REPLACE TABLE users (id INTEGER, email VARCHAR, plan VARCHAR)")
        if rows:
            with duckdb.connect(str(self.warehouse)) as con:
                con.executemany("INSERT INTO users VALUES (?, ?, ?)", list(rows))

    def jsonl(self, name: str) -> list[dict[str, Any]]:
        path = self.root / "out" / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def run(
        self,
        *args: str,
        project: bool = True,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Result:
        """``undertow ARGS --project ROOT`` with stdin closed (a non-interactive shell)."""
        argv = [*args, "--project", str(self.root)] if project else list(args)
        started = time.monotonic()
        proc = subprocess.run(
            [str(UNDERTOW), *argv],
            cwd=cwd or self.root,
            env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        result = Result(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
        print(f"{result.seconds:5.2f}s undertow {' '.join(args)}")  # shown with -rA / on failure
        return result

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start ``undertow ARGS --project ROOT`` in the background (killed at teardown if
        the test leaves it running)."""
        proc = subprocess.Popen(
            [str(UNDERTOW), *args, "--project", str(self.root)],
            cwd=self.root,
            env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started.append(proc)
        return proc

    def stop_started(self) -> None:
        """Kill and reap what :meth:`start` left running (a failed assertion skips the test's
        own wait, and a Popen collected later fails another test with a ResourceWarning)."""
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def _clean_env() -> dict[str, str]:
    """The test's environment for the CLI: no colours, no terminal width, no stray secrets."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("COLUMNS", "LINES", "FORCE_COLOR", "TERM") and not k.startswith("UNDERTOW_")
    }
    env["NO_COLOR"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def project(tmp_path: Path) -> Iterator[SampleProject]:
    if not UNDERTOW.exists():
        pytest.fail(
            f"the undertow command is not installed at {UNDERTOW}; "
            "run `.venv/bin/pip install -e '.[dev]'`",
            pytrace=False,
        )
    sample = SampleProject(tmp_path / "proj", _clean_env())
    yield sample
    sample.stop_started()


@dataclass
class Receiver:
    """A running fake webhook receiver."""

    fake: WebhookReceiver
    server: RunningServer

    @property
    def url(self) -> str:
        return self.server.url + "/hook"

    def records(self) -> list[dict[str, Any]]:
        return list(self.fake.records)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    fake = WebhookReceiver()
    with serve_in_thread(fake.app) as server:
        yield Receiver(fake, server)


# -- the bad-input catalogue (docs/bad-input.md) --------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "bad"


@pytest.fixture
def fake() -> Iterator[tuple[WebhookReceiver, str]]:
    receiver = WebhookReceiver()
    with serve_in_thread(receiver.app) as server:
        yield receiver, server.url + "/hook"
