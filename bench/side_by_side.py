"""Side by side (``make bench``; ``make bench-peers`` adds dlt and drt-core):

    python bench/side_by_side.py                 # 1,000,000 rows, 3 interleaved repetitions
    python bench/side_by_side.py --rows 100000 --reps 1 --peers

The same job for every system: the 11-column ``customers`` model of ``bench/project.py`` in a
DuckDB file, to one local batch endpoint (``bench/sink.py``: aiohttp in its own process,
answering at once), 1,000 records per request, 4 in flight. Per repetition and system, in
the same order each time (interleaved, so a noisy neighbour hits every system alike):

1. first sync (an empty state): every row is sent;
2. 1% of the rows change (``bench.project.change_one_percent``), run again.

Each run is one whole process, start-up included, measured by ``bench/measure.py`` (wall
time, CPU seconds, peak RSS); the sink's count is checked. Undertow's and the ceiling's
modules are compiled to bytecode first, as ``pip install`` does: an editable install run with
``PYTHONDONTWRITEBYTECODE=1`` (this machine's default) would otherwise compile some 100
modules from source in every run, about 0.15 CPU-s no installed Undertow pays. The systems:

- ``ceiling``: ``bench/ceiling.py``, hand-built, no run state, no values, no outcomes;
- ``undertow``: ``undertow run`` on the project of ``bench/project.py``;
- ``dlt`` / ``drt``: ``bench/peers/*.py`` in their own virtualenvs (``.venv-bench-dlt``,
  ``.venv-bench-drt``, made by ``make bench-peers``), when ``--peers`` is given.

Prints medians, records/s, and each system's ratio to the ceiling measured in the same run;
writes ``bench/.out/side_by_side.json``. Never fails on timing; a wrong count fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.project import SYNC, build_warehouse, change_one_percent, write_project  # noqa: E402

OUT = ROOT / "bench" / ".out"
PY = sys.executable
PEER_VENVS = {"dlt": ROOT / ".venv-bench-dlt", "drt": ROOT / ".venv-bench-drt"}
TARGETS = "first sync >= 80% of the ceiling's records/s; 1% run <= 1.2x its wall; peak <= +10%"


def compile_bytecode() -> None:
    """Write the ``.pyc`` of ``undertow/`` and ``bench/`` (py_compile writes them whatever
    ``PYTHONDONTWRITEBYTECODE`` says; the runs then read them as an installed package's)."""
    import compileall

    for folder in ("undertow", "bench"):
        compileall.compile_dir(str(ROOT / folder), quiet=1)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@contextmanager
def sink(log: Path) -> Iterator[str]:
    from undertow.testing.server import free_port

    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [PY, "-m", "bench.sink", str(port)], cwd=ROOT, env=_env(), stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/_bench/count", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _count(url: str) -> int:
    return int(json.loads(urllib.request.urlopen(url + "/_bench/count").read())["records"])


def _reset(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url + "/_bench/reset", method="POST")).read()


def measured(cmd: list[str], work: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = work / "measure.json"
    proc = subprocess.run(
        [PY, "-m", "bench.measure", str(result), "--", *cmd],
        cwd=work,
        env=env or _env(),
        capture_output=True,
        text=True,
        check=False,
    )
    figures: dict[str, Any] = json.loads(result.read_text())
    figures["output"] = (proc.stdout + proc.stderr)[-2000:]
    return figures


# -- the systems: each returns the command of one run in its folder -------------------------


def undertow_system(folder: Path, template: Path, url: str) -> Callable[[], list[str]]:
    write_project(folder, template, url)
    script = Path(PY).with_name("undertow")
    return lambda: [str(script), "run", SYNC, "--project", str(folder), "--json"]


def ceiling_system(folder: Path, template: Path, url: str) -> Callable[[], list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, folder / "warehouse.duckdb")
    return lambda: [
        PY, "-m", "bench.ceiling", str(folder / "warehouse.duckdb"),
        str(folder / "state.duckdb"), url + "/hooks",
    ]  # fmt: skip


def peer_system(name: str) -> Callable[[Path, Path, str], Callable[[], list[str]]]:
    def make(folder: Path, template: Path, url: str) -> Callable[[], list[str]]:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, folder / "warehouse.duckdb")
        python = PEER_VENVS[name] / "bin" / "python"
        script = ROOT / "bench" / "peers" / f"{name}_sync.py"
        return lambda: [str(python), str(script), str(folder), url + "/hooks"]

    return make


def one_repetition(
    systems: dict[str, Callable[[Path, Path, str], Callable[[], list[str]]]],
    template: Path,
    url: str,
    work: Path,
    rows: int,
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    commands = {}
    for name, make in systems.items():
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)
        commands[name] = (folder, make(folder, template, url))
    for phase in ("first", "one_percent"):
        for name, (folder, command) in commands.items():
            expected = rows
            if phase == "one_percent":
                changed = change_one_percent(folder / "warehouse.duckdb")
                # the peers keep no state of what was sent (no cursor): they resend all
                expected = rows if name in PEER_VENVS else changed
            _reset(url)
            figures = measured(command(), folder)
            figures["received"] = _count(url)
            figures["expected"] = expected
            out.setdefault(name, {})[phase] = figures
            print(
                f"  {name:9} {phase:11} {figures['wall_s']:6.2f} s  cpu {figures['cpu_s']:5.2f} s"
                f"  peak {figures['maxrss_kb'] / 1024:6.0f} MB  sent {figures['received']:,}"
                f" of {expected:,}",
                flush=True,
            )
    return out


def _median(reps: list[dict[str, dict[str, Any]]], name: str, phase: str, key: str) -> float:
    return statistics.median(float(r[name][phase][key]) for r in reps)


def report(reps: list[dict[str, dict[str, Any]]], rows: int) -> dict[str, Any]:
    names = list(reps[0])
    summary: dict[str, Any] = {}
    for name in names:
        first = _median(reps, name, "first", "wall_s")
        summary[name] = {
            "first_wall_s": first,
            "first_records_per_s": rows / first,
            "first_cpu_s": _median(reps, name, "first", "cpu_s"),
            "first_peak_mb": _median(reps, name, "first", "maxrss_kb") / 1024,
            "one_percent_wall_s": _median(reps, name, "one_percent", "wall_s"),
            "one_percent_peak_mb": _median(reps, name, "one_percent", "maxrss_kb") / 1024,
        }
    ceil = summary["ceiling"]
    print(f"\n{rows:,} rows, medians of {len(reps)} interleaved repetition(s); targets: {TARGETS}")
    print(
        f"{'system':10} {'first sync':>10} {'records/s':>10} {'CPU s':>6} {'peak MB':>8} "
        f"{'1% run':>7} | {'rec/s vs ceil':>13} {'CPU vs ceil':>11} {'1% vs ceil':>10} "
        f"{'peak vs ceil':>12}"
    )
    for name, s in summary.items():
        s["records_per_s_ratio"] = s["first_records_per_s"] / ceil["first_records_per_s"]
        s["one_percent_ratio"] = s["one_percent_wall_s"] / ceil["one_percent_wall_s"]
        s["peak_ratio"] = s["first_peak_mb"] / ceil["first_peak_mb"]
        s["cpu_ratio"] = s["first_cpu_s"] / ceil["first_cpu_s"]
        print(
            f"{name:10} {s['first_wall_s']:9.2f}s {s['first_records_per_s']:10,.0f} "
            f"{s['first_cpu_s']:6.2f} {s['first_peak_mb']:8.0f} {s['one_percent_wall_s']:6.2f}s | "
            f"{s['records_per_s_ratio']:12.0%} {s['cpu_ratio']:10.2f}x "
            f"{s['one_percent_ratio']:9.2f}x "
            f"{s['peak_ratio']:11.2f}x"
        )
    print(
        "wall times include start-up; on a shared machine compare the ratios (same run, "
        "interleaved) and the CPU seconds, which a busy neighbour disturbs least"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--peers", action="store_true", help="also dlt and drt-core")
    args = parser.parse_args(argv)
    systems: dict[str, Callable[[Path, Path, str], Callable[[], list[str]]]] = {
        "ceiling": ceiling_system,
        "undertow": undertow_system,
    }
    if args.peers:
        for name, venv in PEER_VENVS.items():
            if not (venv / "bin" / "python").exists():
                print(f"{venv} is missing: run `make bench-peers`", file=sys.stderr)
                return 1
            systems[name] = peer_system(name)
    OUT.mkdir(parents=True, exist_ok=True)
    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="undertow-sbs-") as tmp_name:
        tmp = Path(tmp_name)
        template = tmp / "template.duckdb"
        build_warehouse(template, args.rows)
        reps = []
        with sink(tmp / "sink.log") as url:
            for rep in range(args.reps):
                print(f"repetition {rep + 1} of {args.reps}", flush=True)
                reps.append(one_repetition(systems, template, url, tmp / "work", args.rows))
        summary = report(reps, args.rows)
    wrong = [
        f"{name} {phase}: sent {f['received']:,}, expected {f['expected']:,}"
        for rep in reps
        for name, phases in rep.items()
        for phase, f in phases.items()
        if f["returncode"] != 0 or f["received"] != f["expected"]
    ]
    (OUT / "side_by_side.json").write_text(
        json.dumps({"rows": args.rows, "summary": summary, "reps": reps, "wrong": wrong}, indent=1)
    )
    for line in wrong:
        print(f"WRONG: {line}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
