"""Shared machinery of the chaos tests: a model that changes, `undertow run` as a subprocess,
kills at chosen moments, and the bookkeeping that explains every duplicate.

The approach: the real ``undertow`` console script runs a project whose model lives in a
DuckDB file and whose destination is a local fake (or a real PostgreSQL table) in this
process. The test kills the run with SIGKILL at a moment chosen from what the destination
has seen (plus seeded jitter) or from the run's status in the state store, and afterwards
compares what the destination received with the checkpoints the state store holds: a batch
the destination saw but the store has no checkpoint for was *in flight* at the kill. Those
are the only batches that may arrive twice.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from undertow.testing.faults import LOST, FaultPlan
from undertow.testing.webhook import WebhookReceiver

UNDERTOW = str(Path(sys.executable).with_name("undertow"))
SYNC = "users_out"
ROWS = 50_000
RUN_TIMEOUT = 90.0

Record = dict[str, Any]


# -- the model ------------------------------------------------------------------------------


class Model:
    """The ``users`` table of the project's DuckDB warehouse, mirrored in memory.

    Every row carries a ``version`` that goes up when the row changes, so a destination
    can count how many times each ``(id, version)`` arrived.
    """

    def __init__(self, folder: Path, rows: int, rng: random.Random) -> None:
        self.path = folder / "wh.duckdb"
        self.rng = rng
        self.rows: dict[int, Record] = {}
        self.removed: dict[int, Record] = {}
        self.next_id = 0
        for _ in range(rows):
            self._add()
        self.write()

    def _add(self) -> None:
        i = self.next_id
        self.next_id += 1
        self.rows[i] = {"id": i, "email": f"u{i}@x.com", "plan": f"plan{i % 7}", "version": 1}

    def change(self, *, update: int = 0, add: int = 0, remove: int = 0) -> None:
        """Change ``update`` rows (a new plan and version), add and remove rows."""
        keys = sorted(self.rows)
        for i in self.rng.sample(keys, update):
            row = self.rows[i]
            row["version"] += 1
            row["plan"] = f"plan{self.rng.randrange(100)}-v{row['version']}"
        for i in self.rng.sample(keys, remove):
            self.removed[i] = self.rows.pop(i)
        for _ in range(add):
            self._add()
        self.write()

    def write(self) -> None:
        ids = sorted(self.rows)
        table = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "email": [self.rows[i]["email"] for i in ids],
                "plan": [self.rows[i]["plan"] for i in ids],
                "version": pa.array([self.rows[i]["version"] for i in ids], pa.int64()),
            }
        )
        con = duckdb.connect(str(self.path))
        try:
            con.register("incoming", table)
            con.execute("CREATE OR REPLACE TABLE users AS SELECT * FROM incoming")
            con.unregister("incoming")
        finally:
            con.close()

    def expected(self, mode: str) -> dict[int, Record]:
        """What the destination must hold after the final run, per sync mode."""
        if mode == "mirror":
            return {i: dict(r) for i, r in self.rows.items()}
        # upsert, insert and update never delete: removed rows keep their last version
        return {i: dict(r) for i, r in {**self.removed, **self.rows}.items()}


# -- the project ----------------------------------------------------------------------------


def write_project(
    folder: Path,
    destination: str,
    *,
    mode: str = "upsert",
    match: str | None = None,
    state: str | None = None,
    object_: str | None = None,
    mappings: str = "{id: id, email: email, plan: plan, version: version}",
) -> None:
    """``destination`` is the YAML flow mapping of the destination ``out``."""
    lines = ["name: chaos"]
    if state:
        lines.append(f"state: {state}")
    lines += [
        "sources:",
        "  wh: {type: duckdb, path: wh.duckdb}",
        "destinations:",
        f"  out: {destination}",
        "models:",
        "  users: {source: wh, sql: select * from users, primary_key: id}",
        "syncs:",
        f"  {SYNC}:",
        "    model: users",
        "    destination: out",
        f"    mode: {mode}",
        f"    mappings: {mappings}",
    ]
    if object_:
        lines.append(f"    object: {object_}")
    if match:
        lines.append(f"    match: {match}")
    (folder / "undertow.yml").write_text("\n".join(lines) + "\n")


# -- running and killing --------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def json(self) -> dict[str, Any]:
        lines = [line for line in self.out.splitlines() if line.strip()]
        assert lines, f"no JSON output (exit {self.code}): {self.err[-2000:]}"
        parsed: dict[str, Any] = orjson.loads(lines[-1])
        return parsed


def command(folder: Path, *, json: bool = True) -> list[str]:
    return [UNDERTOW, "run", SYNC, "--project", str(folder)] + (["--json"] if json else [])


def start(folder: Path, *, json: bool = True) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command(folder, json=json), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(proc: subprocess.Popen[bytes], started: float) -> Result:
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(
            f"undertow run took over {RUN_TIMEOUT}s: {err.decode()[-2000:]}"
        ) from None
    return Result(proc.returncode, out.decode(), err.decode(), time.monotonic() - started)


def run(folder: Path, *, json: bool = True) -> Result:
    started = time.monotonic()
    return finish(start(folder, json=json), started)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[bytes], limit: float) -> bool:
    """Poll ``condition`` until it holds (True) or the process ends or ``limit`` passes."""
    deadline = time.monotonic() + limit
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class StateFile:
    """Read-only peeks at a SQLite state store while a run may be writing it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / ".undertow" / "state.db"

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        try:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error:
            return []
        try:
            return con.execute(sql).fetchall()
        except sqlite3.Error:
            return []
        finally:
            con.close()

    @contextlib.contextmanager
    def hold_writes(self) -> Iterator[None]:
        """Hold the store's write lock: a run's next checkpoint waits until we let go."""
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            yield
        finally:
            con.execute("ROLLBACK")
            con.close()

    def latest_status(self) -> str | None:
        rows = self.query("select status from undertow_runs order by created_at desc limit 1")
        return str(rows[0][0]) if rows else None

    def checkpointed(self) -> set[str]:
        """Idempotency keys (``run-batch``) of every checkpointed batch."""
        return {f"{r}-{b}" for r, b in self.query("select run_id, batch_no from undertow_batches")}

    def statuses(self) -> Counter[str]:
        return Counter(str(s) for (s,) in self.query("select status from undertow_runs"))


class PgState:
    """The same peeks at a PostgreSQL state store."""

    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as con:
            return list(con.execute(sql.encode()).fetchall())

    def latest_status(self) -> str | None:
        rows = self.query("select status from undertow_runs order by created_at desc limit 1")
        return str(rows[0][0]) if rows else None

    def checkpointed(self) -> set[str]:
        return {f"{r}-{b}" for r, b in self.query("select run_id, batch_no from undertow_batches")}

    def statuses(self) -> Counter[str]:
        return Counter(str(s) for (s,) in self.query("select status from undertow_runs"))


@dataclass
class Kill:
    """One kill -9: where it was aimed, where it landed, and what was in flight."""

    aim: str
    landed: str
    in_flight: set[str] = field(default_factory=set)
    at: float = 0.0


PHASES = ("startup", "extract", "mid-batch", "after-send")


def kill_during(
    folder: Path,
    aim: str,
    rng: random.Random,
    *,
    seen: Callable[[], int],
    state: StateFile,
) -> tuple[str, float]:
    """Start a run and SIGKILL it at the moment ``aim`` names; return where it landed.

    ``seen()`` counts what the destination has received so far (requests, transactions).

    * ``startup``: after a random 0.2-2 s, wherever the run is (imports, extract, diff...)
    * ``extract``: as soon as the run is extracting or diffing, plus 0-50 ms
    * ``mid-batch``: once the destination has received 1-8 more requests, plus 0-40 ms
    * ``after-send``: once the destination has handled 1-8 more requests, the test takes the
      state store's write lock, waits until the destination has handled one more, then
      0-50 ms, and kills: the batches handled meanwhile were sent and applied, and their
      checkpoints could not be written (the SQLite state store is required)
    """
    status = state.latest_status
    before_status = status()
    before = seen()
    started = time.monotonic()
    proc = start(folder)
    try:
        if aim == "startup":
            time.sleep(rng.uniform(0.2, 2.0))
        elif aim == "extract":
            wait_for(lambda: status() in ("extracting", "diffing"), proc, 30)
            time.sleep(rng.uniform(0, 0.05))
        else:
            target = before + rng.randint(1, 8)
            wait_for(lambda: seen() >= target, proc, 30)
            if aim == "mid-batch":
                time.sleep(rng.uniform(0, 0.04))
        at = time.monotonic() - started
        with state.hold_writes() if aim == "after-send" else contextlib.nullcontext():
            if aim == "after-send":
                held = seen()
                wait_for(lambda: seen() > held, proc, 10)
                time.sleep(rng.uniform(0, 0.05))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    finally:
        proc.communicate(timeout=30)
    if proc.returncode != -signal.SIGKILL:
        return "finished", at
    now = status()
    if now is None or (now == before_status and now in ("succeeded", "failed", "cancelled")):
        return "startup", at
    return {"extracting": "extract", "diffing": "diff", "pending": "startup"}.get(
        now, "delivery"
    ), at


def settle(count: Callable[[], int], quiet: float = 0.4) -> None:
    """Wait until ``count()`` stops changing (requests in flight at a kill get logged)."""
    last, since = -1, time.monotonic()
    while time.monotonic() - since < quiet:
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.02)


# -- explaining duplicates at a webhook receiver -------------------------------------------


def _answered(status: int) -> bool:
    return 200 <= status < 300


@dataclass
class WebhookBook:
    """Explain every resent batch and every duplicate at a ``WebhookReceiver``."""

    hook: WebhookReceiver
    plan: FaultPlan | None = None
    kills: list[Kill] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)

    def mark(self) -> int:
        """Note where the next process's requests start."""
        self.marks.append(len(self.hook.requests))
        return self.marks[-1]

    def after_kill(self, aim: str, landed: str, at: float, state: StateFile | PgState) -> Kill:
        """Record a kill (or a failure) of the process that started at the last mark."""
        settle(lambda: len(self.hook.requests))
        since = self.marks[-1]
        sent = {r.headers["idempotency-key"] for r in self.hook.requests[since:]}
        kill = Kill(aim, landed, sent - state.checkpointed(), at)
        self.kills.append(kill)
        return kill

    def check(self, concurrency: int) -> dict[str, int]:
        """Assert every resend is explained; return the figures."""
        for kill in self.kills:
            assert len(kill.in_flight) <= concurrency, kill
        in_flight = set().union(*(k.in_flight for k in self.kills)) if self.kills else set()
        by_key: dict[str, list[int]] = defaultdict(list)
        for index, request in enumerate(self.hook.requests):
            by_key[request.headers["idempotency-key"]].append(index)
        resent_batches = 0
        resent_records = 0
        for key, indexes in by_key.items():
            delivered = [i for i in indexes if _answered(self.hook.requests[i].status)]
            if len(delivered) < 2:
                continue
            resent_batches += 1
            resent_records += (len(delivered) - 1) * len(
                self.hook.requests[delivered[0]].body["records"]
            )
            lost = any(self.hook.requests[i].fault in LOST for i in delivered[:-1])
            assert key in in_flight or lost, (
                f"batch {key} was delivered {len(delivered)} times but was neither in flight "
                "at a kill nor answered-and-lost by an injected fault"
            )
        # records applied twice: only when two different batches carried them, and every
        # earlier one was in flight at a kill or had its answer lost
        assert self.hook.ledger is not None
        carriers: dict[tuple[Any, Any], list[int]] = defaultdict(list)
        duplicates = self.hook.ledger.duplicates()
        if duplicates:
            for index, request in enumerate(self.hook.requests):
                if not _answered(request.status) or request.replayed:
                    continue
                for record in request.body["records"]:
                    kv = (record["id"], record.get("version"))
                    if kv in duplicates:
                        carriers[kv].append(index)
        for kv, indexes in carriers.items():
            for i in indexes[:-1]:
                request = self.hook.requests[i]
                key = request.headers["idempotency-key"]
                assert key in in_flight or request.fault in LOST, (kv, key)
        return {
            "kills": len(self.kills),
            "in_flight_batches": sum(len(k.in_flight) for k in self.kills),
            "resent_batches": resent_batches,
            "resent_records": resent_records,
            "applied_twice": len(duplicates),
            "requests": len(self.hook.requests),
        }


def final_state_matches(state: dict[Any, Any], expected: dict[int, Record]) -> None:
    got = {int(k): {f: v[f] for f in ("id", "email", "plan", "version")} for k, v in state.items()}
    if got != expected:
        missing = sorted(set(expected) - set(got))[:5]
        extra = sorted(set(got) - set(expected))[:5]
        wrong = [k for k in expected if k in got and got[k] != expected[k]][:5]
        raise AssertionError(
            f"destination differs from the model: {len(set(expected) - set(got))} missing "
            f"(e.g. {missing}), {len(set(got) - set(expected))} extra (e.g. {extra}), "
            f"wrong values for e.g. {[(got[k], expected[k]) for k in wrong]}"
        )


def converge(
    folder: Path, seen: Callable[[], int], *, limit: int = 6
) -> tuple[list[Result], float]:
    """Run until a run has nothing to send; return the runs and the longest resume time.

    The last run is a fresh one that planned nothing, and the destination (``seen``) got
    nothing from it: the next run sends nothing.
    """
    results: list[Result] = []
    longest_resume = 0.0
    for _ in range(limit):
        before = seen()
        result = run(folder)
        assert result.code in (0, 1), result.err[-3000:]
        assert "Traceback" not in result.err, result.err[-3000:]
        data = result.json
        results.append(result)
        if data.get("attempt", 1) > 1:
            longest_resume = max(longest_resume, result.seconds)
        if data["status"] == "succeeded" and data["planned"] == 0 and data.get("attempt") == 1:
            assert data["sent"] == 0 and seen() == before, "a quiet run sent something"
            return results, longest_resume
    raise AssertionError(f"no quiet run after {limit} runs: {[r.json for r in results]}")


def summary(name: str, figures: dict[str, Any]) -> None:
    """One line per test for the closing note (shown with ``pytest -s``)."""
    print(f"\nCHAOS SUMMARY {name} " + orjson.dumps(figures).decode())


def all_final(statuses: Iterable[str]) -> bool:
    return all(s in ("succeeded", "failed", "cancelled") for s in statuses)
