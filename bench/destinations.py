"""Destinations against their fakes at the vendors' default limits (``make bench-destinations``).

    python bench/destinations.py                  # every type with a fake and a demo profile
    python bench/destinations.py hubspot --windows 3

For each destination type that declares a fake and a demo profile (``undertow
destinations``), a project of sample customers is synced once (upsert) into a fresh fake
whose limits are the vendor's documented defaults, with the destination at its defaults
too (the demo's raised limits are dropped, as ``undertow init`` drops them). Every request
is watched through the capture hook. Printed per destination:

* records/s: records sent by requests that started after the first rate window, over the
  time from the end of that window to the last answer (the first window's burst, which the
  vendor allows, would inflate a whole-run average), and the whole run's average beside it;
  a run that ended inside its first window (never using up that allowance) is measured over
  its whole span of requests and marked so;
* share of the ceiling: that rate over the documented ceiling, requests per second allowed
  (the strictest rolling window) times records per request;
* slow-down answers the fake sent (429s and the vendor's equivalents); target 0;
* p95 seconds per request, per operation.

The model is sized for ``--windows`` rate windows after the first. Timings never fail the
benchmark; a run that does not succeed, or a fake that holds fewer records than sent, does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from undertow.destinations import capture
from undertow.destinations.catalog import (
    demo_profile,
    demo_types,
    fake_class,
    project_yml,
    starter_destination,
)
from undertow.registry import destination_class
from undertow.samples import build_customers
from undertow.testing.fakes import STATS_PATH
from undertow.testing.server import free_port

UNDERTOW = str(Path(sys.executable).with_name("undertow"))

OUT = Path(__file__).parent / ".out"
NO_LIMIT_ROWS = 40_000
"""Model size for a destination without a published per-second limit."""


def p95(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


@contextlib.contextmanager
def served(type_name: str, token: str, *, demo_limits: bool = False) -> Iterator[str]:
    """``undertow fake TYPE`` in its own process (a fake in this one would share its GIL)."""
    port = free_port()
    extra = ["--demo-limits"] if demo_limits else []
    proc = subprocess.Popen(
        [UNDERTOW, "fake", type_name, "--port", str(port), "--token", token, "--json", *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())["url"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def sync_once(
    type_name: str, rows: int, *, reference: bool
) -> tuple[Any, float, list[capture.Exchange], dict[str, Any]]:
    """One first sync of ``rows`` sample customers; ``reference``: with the demo's raised
    limits on both sides (what this machine can push, measured in the same run)."""
    from undertow.project import Project

    _, profile = demo_profile(type_name)
    exchanges: list[capture.Exchange] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        served(type_name, profile.token, demo_limits=reference) as url,
    ):
        folder = Path(tmp)
        block = None if reference else starter_destination(type_name, profile)
        env = type_name.upper().replace("-", "_")
        os.environ[f"{env}_TOKEN"] = os.environ["FAKE_TOKEN"] = profile.token
        os.environ[f"{env}_BASE_URL"] = os.environ["FAKE_URL"] = url
        text = project_yml(
            type_name,
            profile,
            name="bench",
            model="sql: select * from customers where active",
            destination=block,
        )
        (folder / "undertow.yml").write_text(text)
        build_customers(folder / "warehouse.duckdb", rows)
        project = Project.load(str(folder))
        try:
            sync = project.sync_names[0]
            started = time.monotonic()
            with capture.listening(exchanges.append):
                [record] = project.run([sync])
            elapsed = time.monotonic() - started
        finally:
            project.close()
        with urllib.request.urlopen(url + STATS_PATH, timeout=10) as answer:
            stats = json.loads(answer.read())
    if str(record.status) != "succeeded":
        raise SystemExit(f"{type_name}: the run ended {record.status}: {record.error}")
    return record, elapsed, exchanges, stats


def steady_rate(exchanges: list[capture.Exchange], window: float) -> float:
    """Records/s sent by requests that started after the first rate window; a run that
    ended inside its first window (a per-minute limit of big requests: Klaviyo's 150 jobs
    of 10,000 allow 1.5M records in the first minute, more than ``--max-rows``) gives its
    whole span's rate instead, marked (:func:`ended_in_first_window`): a share above 100 %
    then is the first window's allowance at work, one below it the machine's limit."""
    answered = [e for e in exchanges if e.status is not None]
    first = min(e.started_at for e in answered)
    last = max(e.started_at + e.duration for e in answered)
    # a GET writes nothing (a job-status poll, a lookup): its batch's records are not counted
    writes = [e for e in answered if 200 <= e.status < 300 and e.method != "GET"]
    if ended_in_first_window(exchanges, window):
        return sum(len(e.context.keys) for e in writes) / max(1e-9, last - first)
    steady = [e for e in writes if e.started_at >= first + window]
    return sum(len(e.context.keys) for e in steady) / max(1e-9, last - (first + window))


def ended_in_first_window(exchanges: list[capture.Exchange], window: float) -> bool:
    answered = [e for e in exchanges if e.status is not None]
    first = min(e.started_at for e in answered)
    return all(e.started_at < first + window for e in answered if e.method != "GET")


def bench(type_name: str, windows: int, max_rows: int = 1_000_000) -> dict[str, Any]:
    cls, _ = demo_profile(type_name)
    caps = cls.capabilities
    limits = caps.limits
    # a vendor without a batch endpoint takes one record per request (a batch is then only
    # the unit of checkpointing)
    per_request = 1 if caps.one_per_request else caps.max_batch_size
    # a daily quota is a budget, not a pace a run of minutes can show: the windows of an
    # hour or less set the ceiling (Google's 300 a minute, not its 100,000 a day)
    limits = tuple(r for r in limits if r.per_seconds <= 3600) or limits
    if limits:
        strictest = min(limits, key=lambda r: r.rate)
        window = max(r.per_seconds for r in limits)
        ceiling: float | None = strictest.rate * per_request
        # sample customers are ~90% active: size the model for the first window + `windows`
        rows = int(strictest.rate * window * (windows + 1) * per_request / 0.9) + per_request
        # bounded: a per-minute limit of big requests (Klaviyo, Google) would ask for
        # millions of rows, more than this machine sends in minutes; what is sent after the
        # first window still gives the steady rate
        rows = min(rows, max_rows)
        limit = f"{strictest.requests}/{strictest.per_seconds:g}s x {per_request}/request"
    else:  # no per-second limit published (Salesforce): records/s only, no ceiling
        window, ceiling, rows = 0.0, None, NO_LIMIT_ROWS
        limit = f"no per-second limit published; {per_request}/request"
    fake_class(type_name)  # it has one
    record, elapsed, exchanges, stats = sync_once(type_name, rows, reference=False)
    sent = record.counts["sent"]
    answered = [e for e in exchanges if e.status is not None]
    rate = steady_rate(exchanges, window)
    _, _, ref_exchanges, _ = sync_once(type_name, rows, reference=True)
    machine = steady_rate(ref_exchanges, window) if ref_exchanges else 0.0
    by_operation: dict[str, list[float]] = {}
    for e in answered:
        by_operation.setdefault(e.context.operation or "?", []).append(e.duration)
    return {
        "destination": type_name,
        "records": sent,
        "requests": len(answered),
        "seconds": round(elapsed, 2),
        "records_per_s": round(rate, 1),
        "records_per_s_whole_run": round(sent / elapsed, 1),
        "ceiling_records_per_s": round(ceiling, 1) if ceiling else None,
        "share_of_ceiling": round(rate / ceiling, 3) if ceiling else None,
        "machine_records_per_s": round(machine, 1),
        "share_of_reachable": round(rate / min(ceiling or machine, machine), 3)
        if machine
        else None,
        "limit": limit,
        "slow_downs": stats["slow_downs"],
        "whole_span": ended_in_first_window(exchanges, window),
        "p95_s": {op: round(p95(d), 4) for op, d in sorted(by_operation.items())},
    }


def _num(value: float | None) -> str:
    return f"{value:>10,.0f}" if value is not None else f"{'n/a':>10}"


def _share(value: float | None) -> str:
    return f"{value:>8.1%}" if value is not None else f"{'n/a':>8}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("types", nargs="*", help="destination types (default: all with a demo)")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument(
        "--max-rows",
        type=int,
        default=1_000_000,
        help="model size cap (records after the first rate window give the rate)",
    )
    args = parser.parse_args()
    types = args.types or demo_types()
    for type_name in types:
        destination_class(type_name)  # every type exists before the first long run
    header = (
        f"{'destination':<14}{'records/s':>11}{'ceiling':>10}{'share':>8}{'slow-downs':>12}"
        f"{'whole run/s':>13}{'machine/s':>11}{'of reachable':>14}{'records':>10}"
        "  p95 s per request"
    )
    print(header, flush=True)
    results = []
    OUT.mkdir(exist_ok=True)
    for type_name in types:
        print(f"… {type_name}", file=sys.stderr, flush=True)
        r = bench(type_name, args.windows, args.max_rows)
        results.append(r)
        p95s = ", ".join(f"{op} {s:.3f}" for op, s in r["p95_s"].items())
        print(  # each row as it is measured: a long run interrupted keeps what it measured
            f"{r['destination']:<14}{r['records_per_s']:>11,.0f}{_num(r['ceiling_records_per_s'])}"
            f"{_share(r['share_of_ceiling'])}{r['slow_downs']:>12}{r['records_per_s_whole_run']:>13,.0f}"
            f"{r['machine_records_per_s']:>11,.0f}{r['share_of_reachable'] or 0:>14.1%}"
            f"{r['records']:>10,}  {p95s}   ({r['limit']})"
            + ("  [ended inside the first window: whole span]" if r["whole_span"] else ""),
            flush=True,
        )
        (OUT / "destinations.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
