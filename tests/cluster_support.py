"""Shared machinery of the cluster tests: a broker of its own on the real Redis or RabbitMQ
(a unique key prefix, or a unique queue, removed afterwards), real ``undertow worker``
processes (each in its own session, so killing the session is killing the machine), and a
project whose syncs write to a local webhook receiver.

Nothing here flushes or deletes what another test (or another helper) created: Redis keys
are deleted by their unique prefix, RabbitMQ queues and exchanges by their unique name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pytest

UNDERTOW = str(Path(sys.executable).with_name("undertow"))
REDIS_URL = os.environ.get("UNDERTOW_TEST_REDIS", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("UNDERTOW_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_START = "redis-server --daemonize yes"
RABBIT_START = "rabbitmq-server -detached"


@dataclass
class Broker:
    kind: str
    url: str
    prefix: str
    queue: str

    def yaml(self, **extra: Any) -> str:
        items = {"type": "celery", "broker": self.url, "prefix": self.prefix, "queue": self.queue}
        items.update(extra)
        body = ", ".join(
            f'{k}: "{v}"' if isinstance(v, str) else f"{k}: {v}" for k, v in items.items()
        )
        return "{" + body + "}"


def _redis_cleanup(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _amqp_cleanup(queue: str) -> None:
    from kombu import Connection

    with Connection(AMQP_URL, connect_timeout=5) as conn:
        channel = conn.channel()
        for name in (queue,):
            try:
                channel.queue_delete(name)
            except Exception:
                channel = conn.channel()
            try:
                channel.exchange_delete(name)
            except Exception:
                channel = conn.channel()


def make_broker(kind: str) -> Iterator[Broker]:
    tag = f"ut-{uuid.uuid4().hex[:10]}"
    if kind == "redis":
        import redis

        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
        except redis.exceptions.ConnectionError as exc:
            pytest.fail(
                f"Redis is not reachable at {REDIS_URL} ({exc}).\nStart it with: {REDIS_START}",
                pytrace=False,
            )
        broker = Broker("redis", REDIS_URL, tag, tag)
        try:
            yield broker
        finally:
            _redis_cleanup(tag)
        return
    from kombu import Connection

    try:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        pytest.fail(
            f"RabbitMQ is not reachable at {AMQP_URL} ({exc}).\nStart it with: {RABBIT_START}",
            pytrace=False,
        )
    broker = Broker("rabbitmq", AMQP_URL, tag, tag)
    try:
        yield broker
    finally:
        _amqp_cleanup(tag)


def write_users(folder: Path, rows: int, *, table: str = "users", version: int = 1) -> None:
    con = duckdb.connect(str(folder / "wh.duckdb"))
    try:
        con.execute(
            f"create or replace table {table} as select range as id, 'u' || range || '@x.com' as email, "
            f"{version} as version from range({rows})"
        )
    finally:
        con.close()


def write_project(
    folder: Path,
    *,
    state: str,
    broker: Broker | None,
    destination: str,
    syncs: dict[str, str],
    executor_extra: dict[str, Any] | None = None,
    extra: str = "",
) -> None:
    """``syncs``: sync name -> model table (each table has id, email, version)."""
    lines = ["name: cluster", f"state: {state}"]
    if broker is not None:
        lines.append(f"executor: {broker.yaml(**(executor_extra or {}))}")
    lines += [
        "sources:",
        "  wh: {type: duckdb, path: wh.duckdb}",
        "destinations:",
        f"  out: {destination}",
        "models:",
    ]
    for table in sorted(set(syncs.values())):
        lines.append(f"  m_{table}: {{source: wh, sql: select * from {table}, primary_key: id}}")
    lines.append("syncs:")
    for name, table in syncs.items():
        lines.append(
            f"  {name}: {{model: m_{table}, destination: out, mappings: {{id: id, email: email, version: version, sync: {{const: {name}}}}}}}"
        )
    (folder / "undertow.yml").write_text("\n".join(lines) + "\n" + extra)


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Workers:
    """``undertow worker`` processes of one project, each in a session of its own."""

    folder: Path
    started: list[Worker] = field(default_factory=list)

    def start(
        self, name: str, *, concurrency: int = 1, env: dict[str, str] | None = None
    ) -> Worker:
        log = self.folder / f"{name}.log"
        command = [UNDERTOW, "worker", "--project", str(self.folder), "-c", str(concurrency)]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*command, "--name", name],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        worker = Worker(name, proc, log)
        self.started.append(worker)
        return worker

    def wait_ready(self, worker: Worker, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        while "ready." not in worker.text():
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"worker {worker.name} did not start:\n{worker.text()[-3000:]}"
                )
            time.sleep(0.1)

    def kill_machine(self, worker: Worker) -> None:
        """kill -9 every process of the worker (its whole session), like a machine dying."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(timeout=30)

    def stop_all(self) -> None:
        for worker in self.started:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for worker in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for worker in self.started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.proc.pid, signal.SIGKILL)  # the pool processes too
            if worker.proc.poll() is None:
                worker.proc.wait(timeout=10)


def run_cli(folder: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [UNDERTOW, *args, "--project", str(folder)], capture_output=True, text=True, timeout=timeout
    )


def wait_until(condition: Callable[[], bool], limit: float, what: str, step: float = 0.1) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > limit:
            raise AssertionError(f"timed out after {limit:g}s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - started
