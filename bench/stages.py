"""Where the time of one sync goes: the same run as ``undertow run``, in process, with timers.

    python -m bench.stages PROJECT_DIR SYNC RESULT.json

Timers wrap the pipeline's own functions (this process only; no file of ``undertow/`` is
changed). Stages that overlap are reported as they are: delivery sends batches on the event
loop while a worker thread reads and maps the next ones, so ``fetch``, ``map`` and
``assemble`` (worker thread) and ``http`` (summed over the requests in flight) add up to more
than the deliver phase's wall time. Figures are seconds.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

_totals: dict[str, float] = defaultdict(float)
_calls: dict[str, int] = defaultdict(int)
_lock = threading.Lock()


def _add(name: str, seconds: float) -> None:
    with _lock:
        _totals[name] += seconds
        _calls[name] += 1


def _timed(owner: Any, attr: str, name: str) -> None:
    original = getattr(owner, attr)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - started)

    setattr(owner, attr, wrapper)


def _timed_async(owner: Any, attr: str, name: str) -> None:
    original = getattr(owner, attr)

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - started)

    setattr(owner, attr, wrapper)


def _timed_iter(owner: Any, attr: str, name: str) -> None:
    """Time the work done inside a generator: the sum over its ``next()`` calls."""
    original = getattr(owner, attr)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        inner = iter(original(*args, **kwargs))
        while True:
            started = time.perf_counter()
            try:
                item = next(inner)
            except StopIteration:
                _add(name, time.perf_counter() - started)
                return
            _add(name, time.perf_counter() - started)
            yield item

    setattr(owner, attr, wrapper)


_sql: dict[str, float] = defaultdict(float)
_RUN_ID = re.compile(r"\d{8}T\d{6}-[0-9a-f]{8}")


class _TimedConnection:
    """Passes every call to a DuckDB connection; times ``execute`` per statement."""

    def __init__(self, con: Any) -> None:
        self._con = con

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self._con.execute(sql, *args, **kwargs)
        finally:
            key = _RUN_ID.sub("<run>", " ".join(sql.split()))[:90]
            with _lock:
                _sql[key] += time.perf_counter() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def _instrument() -> None:
    from undertow.destinations.base import Batch
    from undertow.destinations.webhook import WebhookDestination
    from undertow.pipeline import extract, run
    from undertow.pipeline.diff import LocalDiffEngine
    from undertow.pipeline.map import CompiledMapping
    from undertow.pipeline.record import Recorder

    _timed(run, "compile_for", "compile")
    _timed(run.SyncRun, "_extract_and_diff", "extract_diff")
    _timed_iter(extract.CountingReader, "batches", "extract_read")
    _timed(LocalDiffEngine, "build", "diff_build")
    _timed(run.SyncRun, "_deliver_and_record", "deliver_record")
    _timed_iter(run.SyncRun, "_works", "worker_total")
    _timed_iter(LocalDiffEngine, "chunks", "fetch")
    _timed(CompiledMapping, "map", "map")
    _timed(Batch, "json_array", "body")
    _timed_async(WebhookDestination, "write_batch", "http")
    _timed(Recorder, "checkpoint", "checkpoint")
    _timed(LocalDiffEngine, "fold", "fold")

    engine_init = LocalDiffEngine.__init__

    def timed_init(self: Any, *args: Any, **kwargs: Any) -> None:
        engine_init(self, *args, **kwargs)
        self.con = _TimedConnection(self.con)

    LocalDiffEngine.__init__ = timed_init  # type: ignore[method-assign]


def measure(project_dir: str, sync: str) -> dict[str, Any]:
    started = time.perf_counter()
    from undertow.project import Project

    imported = time.perf_counter()
    _instrument()
    project = Project.load(project_dir)
    loaded = time.perf_counter()
    try:
        [record] = project.run([sync])
    finally:
        project.close()
    finished = time.perf_counter()
    t = dict(_totals)
    extract = t.get("extract_read", 0.0)
    deliver_record = t.get("deliver_record", 0.0)
    fold = t.get("fold", 0.0)
    worker = t.get("worker_total", 0.0)
    fetch, mapping = t.get("fetch", 0.0), t.get("map", 0.0)
    stages = {
        "import": imported - started,
        "load_project": loaded - imported,
        "compile_mapping": t.get("compile", 0.0),
        "extract_read": extract,
        "diff": t.get("diff_build", 0.0) - extract,
        "extract_diff_wall": t.get("extract_diff", 0.0),
        "deliver_wall": deliver_record - fold,
        "fetch_plan_chunks": fetch,
        "map": mapping,
        "assemble_batches": max(0.0, worker - fetch - mapping),
        "build_bodies": t.get("body", 0.0),
        "http_in_flight_sum": t.get("http", 0.0),
        "checkpoint": t.get("checkpoint", 0.0),
        "fold": fold,
        "total_in_process": finished - started,
    }
    return {
        "status": str(record.status),
        "sent": record.counts.get("sent", 0),
        "stages": stages,
        "calls": dict(_calls),
        "sql": dict(sorted(_sql.items(), key=lambda kv: -kv[1])[:12]),
    }


def main(argv: list[str]) -> int:
    project_dir, sync, result_path = argv[1:4]
    result = measure(project_dir, sync)
    with open(result_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    return 0 if result["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
