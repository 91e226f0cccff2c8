"""Undertow benchmark (``make bench``): a DuckDB model through the webhook destination.

    python bench/run.py              # 1,000,000 rows, 3 repetitions
    python bench/run.py --quick      # 100,000 rows: a smoke run in well under 30 s
    python bench/run.py --rows 250000 --reps 1

Each repetition syncs a fresh project (a copy of the same warehouse, an empty state folder)
to a local batch endpoint served by a separate process (``bench/receiver.py``):

1. first sync: every row is sent;
2. 1% of the rows change in the warehouse (``UPDATE ... WHERE id % 100 = 0``), run again;
3. no change, run again: nothing is sent.

Each run is the whole ``undertow run SYNC --project DIR --json`` process, start-up
included, timed and measured for peak RSS by ``bench/measure.py``. The receiver's count is
checked after every run: a benchmark that silently sends nothing measures nothing. Then the
first sync and a 1% run go once more in process with timers around their stages
(``bench/stages.py``).

Prints a table of medians and writes every figure to ``bench/.out/results.json``. Timings
never fail the benchmark; a failed run or a wrong record count does (exit code 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.project import (  # noqa: E402
    COLUMNS,
    SYNC,
    WAREHOUSE,
    build_warehouse,
    change_one_percent,
    write_project,
)
from bench.receiver import COUNT_PATH  # noqa: E402

OUT = ROOT / "bench" / ".out"
PY = sys.executable
TARGETS = {
    "first_records_per_s": 150_000,
    "first_peak_mb": 1024,
    "one_percent_wall_s": 2.0,
    "one_percent_peak_mb": 1024,
}
RUN_TIMEOUT_S = 900


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("UNDERTOW_DEBUG", None)
    return env


def _undertow() -> list[str]:
    script = Path(PY).with_name("undertow")
    return [str(script)] if script.exists() else [PY, "-m", "undertow.cli"]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the receiver process ------------------------------------------------------------------


class Receiver:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def count(self) -> int:
        with urllib.request.urlopen(self.url + COUNT_PATH, timeout=10) as resp:
            return int(json.loads(resp.read())["records"])


@contextmanager
def receiver_process(log: Path) -> Iterator[Receiver]:
    port = _free_port()
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [PY, "-m", "bench.receiver", str(port)],
            cwd=ROOT,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    rec = Receiver(port)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                rec.count()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the receiver did not start:\n{tail}") from None
                time.sleep(0.05)
        yield rec
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- measured runs ---------------------------------------------------------------------------


def measured(cmd: list[str], work: Path) -> dict[str, Any]:
    """Run ``cmd`` under bench/measure.py: returncode, wall_s, peak_mb, stdout, stderr."""
    result_file = work / "measure.json"
    result_file.unlink(missing_ok=True)
    load = _load()
    proc = subprocess.run(
        [PY, "-m", "bench.measure", str(result_file), "--", *cmd],
        cwd=ROOT,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    if not result_file.exists():
        raise RuntimeError(f"bench.measure wrote nothing for {cmd}:\n{proc.stderr[-2000:]}")
    figures = json.loads(result_file.read_text())
    return {
        "returncode": figures["returncode"],
        "wall_s": figures["wall_s"],
        "peak_mb": figures["maxrss_kb"] / 1024,
        "load_before": load,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }


def sync_run(project: Path, rec: Receiver, expected: int, work: Path) -> dict[str, Any]:
    """One whole ``undertow run`` process; the receiver's count is checked against expected."""
    before = rec.count()
    raw = measured([*_undertow(), "run", SYNC, "--project", str(project), "--json"], work)
    received = rec.count() - before
    record: dict[str, Any] = {}
    for line in raw["stdout"].splitlines()[::-1]:
        if line.startswith("{"):
            record = json.loads(line)
            break
    problems = []
    if raw["returncode"] != 0 or record.get("status") != "succeeded":
        problems.append(
            f"undertow run exited {raw['returncode']} with status {record.get('status')!r}: "
            f"{record.get('error') or _last_lines(raw['stderr'])}"
        )
    if received != expected:
        problems.append(f"the receiver counted {received:,} records, expected {expected:,}")
    if record and record.get("sent") != expected:
        problems.append(f"undertow reports {record.get('sent')} sent, expected {expected:,}")
    return {
        "wall_s": raw["wall_s"],
        "records_per_s": received / raw["wall_s"] if raw["wall_s"] > 0 else 0.0,
        "peak_mb": raw["peak_mb"],
        "in_run_s": record.get("duration_s"),
        "sent": record.get("sent"),
        "received": received,
        "expected": expected,
        "counts": {
            k: record.get(k) for k in ("extracted", "added", "changed", "removed", "unchanged")
        },
        "load_before": raw["load_before"],
        "ok": not problems,
        "problems": problems,
    }


def stage_breakdown(project: Path, rec: Receiver, expected: int, work: Path) -> dict[str, Any]:
    result_file = work / "stages.json"
    result_file.unlink(missing_ok=True)
    before = rec.count()
    load = _load()
    proc = subprocess.run(
        [PY, "-m", "bench.stages", str(project), SYNC, str(result_file)],
        cwd=ROOT,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    received = rec.count() - before
    if proc.returncode != 0 or not result_file.exists():
        return {"ok": False, "problems": [f"bench.stages failed: {_last_lines(proc.stderr)}"]}
    result = json.loads(result_file.read_text())
    problems = [] if received == expected else [f"received {received:,}, expected {expected:,}"]
    return {
        **result,
        "received": received,
        "load_before": load,
        "ok": not problems,
        "problems": problems,
    }


def import_floor(work: Path) -> dict[str, Any]:
    """Wall time of a Python process that only imports what ``undertow run`` imports."""
    code = (
        "import undertow.cli, undertow.project, undertow.sources.duckdb, "
        "undertow.destinations.webhook"
    )
    raw = measured([PY, "-c", code], work)
    return {"wall_s": raw["wall_s"], "peak_mb": raw["peak_mb"], "ok": raw["returncode"] == 0}


# -- the benchmark -----------------------------------------------------------------------------


def one_repetition(
    n: int, template: Path, rows: int, rec: Receiver, tmp: Path, stages: bool
) -> dict[str, Any]:
    project = write_project(tmp / f"rep{n}", template, rec.url)
    try:
        first = sync_run(project, rec, rows, tmp)
        _say(
            f"  rep {n}: first sync      {first['wall_s']:6.2f} s  {_ok(first)}"
            f"  (load {first['load_before'][0]})"
        )
        changed = change_one_percent(project / WAREHOUSE)
        one = sync_run(project, rec, changed, tmp)
        _say(f"  rep {n}: 1% changed      {one['wall_s']:6.2f} s  {_ok(one)}")
        none = sync_run(project, rec, 0, tmp)
        _say(f"  rep {n}: no change       {none['wall_s']:6.2f} s  {_ok(none)}")
    finally:
        shutil.rmtree(project, ignore_errors=True)
    result: dict[str, Any] = {"first": first, "one_percent": one, "no_change": none}
    if stages:
        project = write_project(tmp / f"stages{n}", template, rec.url)
        try:
            first_stages = stage_breakdown(project, rec, rows, tmp)
            changed = change_one_percent(project / WAREHOUSE)
            one_stages = stage_breakdown(project, rec, changed, tmp)
            result["stages"] = {"first": first_stages, "one_percent": one_stages}
            _say(f"  rep {n}: stage breakdown {_ok(first_stages)}, 1% changed {_ok(one_stages)}")
        finally:
            shutil.rmtree(project, ignore_errors=True)
    floor = import_floor(tmp)
    result["import_floor"] = floor
    return result


def _last_lines(text: str, n: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:])


def _ok(result: dict[str, Any]) -> str:
    return "ok" if result.get("ok") else "PROBLEM: " + "; ".join(result.get("problems", []))


def _say(text: str) -> None:
    print(text, flush=True)


def _median(reps: list[dict[str, Any]], run: str, key: str) -> float | None:
    values = [r[run][key] for r in reps if r.get(run) and r[run].get(key) is not None]
    return statistics.median(values) if values else None


def _values(reps: list[dict[str, Any]], run: str, key: str) -> list[float]:
    return [r[run][key] for r in reps if r.get(run) and r[run].get(key) is not None]


def summarise(reps: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for run in ("first", "one_percent", "no_change"):
        summary[run] = {
            key: _median(reps, run, key)
            for key in ("wall_s", "records_per_s", "peak_mb", "in_run_s", "received")
        }
    summary["import_floor_wall_s"] = _median(reps, "import_floor", "wall_s")
    for run in ("first", "one_percent"):
        stage_reps = [
            r["stages"][run]["stages"]
            for r in reps
            if r.get("stages", {}).get(run, {}).get("stages")
        ]
        if stage_reps:
            summary.setdefault("stages", {})[run] = {
                name: statistics.median(s[name] for s in stage_reps) for name in stage_reps[0]
            }
        sql_reps = [
            r["stages"][run]["sql"] for r in reps if r.get("stages", {}).get(run, {}).get("sql")
        ]
        if sql_reps:
            medians = {k: statistics.median(s.get(k, 0.0) for s in sql_reps) for k in sql_reps[0]}
            summary.setdefault("sql", {})[run] = dict(
                sorted(medians.items(), key=lambda kv: -kv[1])
            )
    first, one = summary["first"], summary["one_percent"]
    summary["targets"] = {
        "first_records_per_s": _check(first["records_per_s"], TARGETS["first_records_per_s"], ">="),
        "first_peak_mb": _check(first["peak_mb"], TARGETS["first_peak_mb"], "<"),
        "one_percent_wall_s": _check(one["wall_s"], TARGETS["one_percent_wall_s"], "<"),
        "one_percent_peak_mb": _check(one["peak_mb"], TARGETS["one_percent_peak_mb"], "<"),
    }
    return summary


def _check(value: float | None, target: float, op: str) -> dict[str, Any]:
    met = None if value is None else (value >= target if op == ">=" else value < target)
    return {"value": value, "target": f"{op} {target:g}", "met": met}


def _fmt(value: float | None, digits: int = 2, thousands: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if thousands else f"{value:.{digits}f}"


def print_report(summary: dict[str, Any], reps: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    print()
    print(
        f"Undertow benchmark: {meta['rows']:,} rows x {len(COLUMNS)} columns, DuckDB -> webhook "
        f"(batch 1000, 4 in flight), median of {len(reps)}"
    )
    print(
        f"machine: {meta['cpus']} CPUs, load average {meta['load_start']} at start, "
        f"{meta['load_end']} at end; commit {meta['git']['commit'][:10] or '?'}"
        + (" (undertow/ modified)" if meta["git"]["modified"] else "")
    )
    print()
    header = (
        f"{'run':<12} {'wall s':>7} {'(each)':<20} {'records/s':>10} {'peak MB':>8} "
        f"{'in-run s':>8} {'received':>10}  target"
    )
    print(header)
    print("-" * len(header))
    targets = summary["targets"]
    lines = [
        (
            "first sync",
            "first",
            f"{_mark(targets['first_records_per_s'])} >=150k rec/s, "
            f"{_mark(targets['first_peak_mb'])} <1 GB",
        ),
        (
            "1% changed",
            "one_percent",
            f"{_mark(targets['one_percent_wall_s'])} <2 s, "
            f"{_mark(targets['one_percent_peak_mb'])} <1 GB",
        ),
        ("no change", "no_change", "(reference)"),
    ]
    for label, run, target in lines:
        s = summary[run]
        each = " ".join(f"{v:.2f}" for v in _values(reps, run, "wall_s"))
        rate = _fmt(s["records_per_s"], thousands=True) if run == "first" else "-"
        print(
            f"{label:<12} {_fmt(s['wall_s']):>7} {each:<20} {rate:>10} "
            f"{_fmt(s['peak_mb'], 0):>8} {_fmt(s['in_run_s']):>8} "
            f"{_fmt(s['received'], thousands=True):>10}  {target}"
        )
    print(
        f"\nprocess start-up floor (python + imports of undertow run): "
        f"{_fmt(summary['import_floor_wall_s'])} s"
    )
    stages = summary.get("stages")
    if stages:
        print(
            "\nthe same runs in process, by stage (median seconds; the worker-thread stages "
            "overlap the sends):"
        )
        print(f"  {'stage':<44} {'first':>7} {'1% chg':>7}")
        labels = {
            "import": "import undertow",
            "load_project": "load project",
            "compile_mapping": "describe + compile mapping (x2)",
            "extract_read": "  extract: DuckDB source batches",
            "diff": "  diff + plan table (DuckDB)",
            "extract_diff_wall": "extract + diff (wall)",
            "fetch_plan_chunks": "  fetch plan chunks -> Polars (worker)",
            "map": "  map to JSON payloads (worker)",
            "assemble_batches": "  assemble Batch objects (worker)",
            "build_bodies": "  build request bodies (loop)",
            "http_in_flight_sum": "  HTTP requests, summed over 4 in flight",
            "checkpoint": "  checkpoints in the state store (loop)",
            "deliver_wall": "deliver (wall)",
            "fold": "fold into the snapshot",
            "total_in_process": "total in process",
        }
        first, one = stages.get("first", {}), stages.get("one_percent", {})
        for key, label in labels.items():
            if key in first or key in one:
                print(f"  {label:<44} {_fmt(first.get(key)):>7} {_fmt(one.get(key)):>7}")
    for run, label in (("first", "first sync"), ("one_percent", "1% changed")):
        statements = summary.get("sql", {}).get(run)
        if statements:
            print(f"\nslowest DuckDB statements of the diff engine, {label} (median seconds):")
            for sql, seconds in list(statements.items())[:6]:
                print(f"  {seconds:6.2f}  {sql[:88]}")


def _mark(check: dict[str, Any]) -> str:
    return {True: "MET", False: "MISSED", None: "?"}[check["met"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="model rows (1,000,000)")
    parser.add_argument("--quick", action="store_true", help="100,000 rows, one repetition")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (3; 1 with --quick)")
    parser.add_argument("--no-stages", action="store_true", help="skip the stage breakdown")
    parser.add_argument("--out", type=Path, default=OUT / "results.json")
    args = parser.parse_args(argv)
    rows = 100_000 if args.quick else args.rows
    reps_wanted = args.reps if args.reps is not None else (1 if args.quick else 3)

    meta: dict[str, Any] = {
        "rows": rows,
        "columns": len(COLUMNS),
        "repetitions": reps_wanted,
        "batch_size": 1000,
        "max_concurrency": 4,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_start": _load(),
        "git": _git_state(),
        "versions": _versions(),
    }
    _say(f"bench: {rows:,} rows, {reps_wanted} repetition(s), load average {meta['load_start']}")
    reps: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="undertow-bench-"))
    try:
        template = tmp / "template.duckdb"
        started = time.perf_counter()
        build_warehouse(template, rows)
        meta["warehouse_build_s"] = time.perf_counter() - started
        meta["warehouse_mb"] = template.stat().st_size / 2**20
        _say(
            f"  warehouse built in {meta['warehouse_build_s']:.1f} s "
            f"({meta['warehouse_mb']:.0f} MB)"
        )
        with receiver_process(tmp / "receiver.log") as rec:
            for n in range(1, reps_wanted + 1):
                reps.append(one_repetition(n, template, rows, rec, tmp, not args.no_stages))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta["load_end"] = _load()
    meta["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")

    summary = summarise(reps)
    found = [
        (run, f"rep {i}: {run}: {p}")
        for i, rep in enumerate(reps, 1)
        for run, result in _results(rep)
        for p in result.get("problems", [])
    ]
    # a failed measured run fails the benchmark; the in-process breakdown only warns
    problems = [text for run, text in found if not run.startswith("stages")]
    warnings = [text for run, text in found if run.startswith("stages")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "meta": meta,
                "summary": summary,
                "repetitions": reps,
                "problems": problems,
                "warnings": warnings,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print_report(summary, reps, meta)
    print(f"\nall figures: {args.out}")
    if warnings:
        print("\nwarnings (stage breakdown incomplete):")
        for w in warnings:
            print(f"  {w}")
    if problems:
        print("\nPROBLEMS (these figures do not measure a working sync):")
        for p in problems:
            print(f"  {p}")
        return 1
    return 0


def _git_state() -> dict[str, Any]:
    """The commit measured, and which files of undertow/ differed from it (a shared tree)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    dirty = git("status", "--porcelain", "--", "undertow", "pyproject.toml")
    return {"commit": git("rev-parse", "HEAD"), "modified": dirty.splitlines()}


def _results(rep: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for run, result in rep.items():
        if run == "stages":
            for which, inner in result.items():
                yield f"stages {which}", inner
        elif isinstance(result, dict):
            yield run, result


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("undertow", "duckdb", "polars", "pyarrow", "orjson", "aiohttp", "uvicorn"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "-"
    return found


if __name__ == "__main__":
    sys.exit(main())
