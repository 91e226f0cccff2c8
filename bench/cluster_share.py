"""One run's delivery shared by 1, 2 and 4 workers (issue 16): records/s of the delivery
and its ratio to 1 worker, against a receiver whose limits are high enough that the workers
matter: each request is answered after ``--latency`` (a real API's round trip), up to
``--limit`` requests per rolling second (429 beyond, never reached here), and each worker
sends ``max_concurrency`` batches at once. So one worker can send at most
``concurrency x batch / latency`` records/s, and more workers send more, until this 2-core
machine runs out of CPU.

    .venv/bin/python bench/cluster_share.py [--rows 2000000] [--workers 1,2,4]
        [--batch 500] [--concurrency 4] [--latency 0.05] [--limit 2000]

Workers are started before the run is queued (their start-up is not measured). The figure is
the run's delivery (from ``delivering`` to its end, folding included) and the whole run.
Exits non-zero if a row is missing, a batch was sent twice or a request was refused; never
on timing. Needs PostgreSQL and Redis on this machine (as `make test` does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from datetime import datetime
from pathlib import Path

import orjson
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cluster_support import Workers, make_broker, write_project, write_users  # noqa: E402

from undertow.project import Project  # noqa: E402

PG_ADMIN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


# -- the receiver, in a process of its own (it must not share the GIL with anything measured)


def sink(port: int, latency: float, limit: int) -> None:
    from aiohttp import web

    keys: dict[str, int] = {}
    state = {"records": 0, "refused": 0, "twice": 0}
    window: deque[float] = deque()

    async def receive(request: web.Request) -> web.Response:
        now = time.monotonic()
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= limit:
            state["refused"] += 1
            return web.Response(status=429, headers={"Retry-After": "1"})
        window.append(now)
        body = await request.read()
        await asyncio.sleep(latency)
        key = request.headers.get("Idempotency-Key", "")
        if key in keys:
            state["twice"] += 1  # replayed, not applied again
        else:
            keys[key] = 1
            state["records"] += len(orjson.loads(body)["records"])
        return web.Response(body=b"{}", content_type="application/json")

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response({**state, "batches": len(keys)})

    async def reset(_request: web.Request) -> web.Response:
        keys.clear()
        state.update(records=0, refused=0, twice=0)
        return web.json_response({})

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    app.router.add_post("/hooks", receive)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(url: str, method: str = "GET") -> dict[str, int]:
    import urllib.request

    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return dict(orjson.loads(answer.read()))


def one(args: argparse.Namespace, workers: int, url: str, folder: Path) -> dict[str, float]:
    dbname = f"ut_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    state = f"postgresql://postgres@127.0.0.1:5432/{dbname}"
    broker_gen = make_broker("redis")
    broker = next(broker_gen)
    project_dir = folder / f"w{workers}"
    project_dir.mkdir()
    shutil.copy(folder / "wh.duckdb", project_dir / "wh.duckdb")
    pool = Workers(project_dir)
    http(f"{url}/_reset", "POST")
    try:
        write_project(
            project_dir,
            state=state,
            broker=broker,
            destination=f'{{type: webhook, url: "{url}/hooks", batch_size: {args.batch}, '
            f"max_concurrency: {args.concurrency}}}",
            syncs={"big": "users"},
            executor_extra={"delivery_workers": workers},
        )
        project = Project.load(str(project_dir))
        for worker in [pool.start(f"w{i}") for i in range(workers)]:
            pool.wait_ready(worker)
        started = time.monotonic()
        task_id = project.executor.submit("big")
        assert task_id is not None
        [task] = project.executor.wait([task_id], timeout=3600, poll=0.5)
        wall = time.monotonic() - started
        run = project.store.list_runs("big")[0]
        parts = len(project.executor.cluster.parts(run.id))
        project.close()
        seen = http(f"{url}/_stats")
        delivering = datetime.fromisoformat(run.stages["delivering"])
        assert run.finished_at is not None
        deliver_s = (run.finished_at - delivering).total_seconds()
        ok = (
            task.state == "done"
            and str(run.status) == "succeeded"
            and seen["records"] == args.rows
            and seen["twice"] == 0
            and seen["refused"] == 0
        )
        if not ok:
            print(f"  {workers} worker(s): WRONG: task {task.state}, run {run.status}, {seen}")
        return {
            "workers": workers,
            "ok": float(ok),
            "deliver_s": deliver_s,
            "wall_s": wall,
            "records_s": args.rows / deliver_s,
            "parts": parts,
            "requests": seen["batches"],
        }
    finally:
        pool.stop_all()
        with contextlib.suppress(StopIteration):
            next(broker_gen)
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        sink(args.sink, args.latency, args.limit)
        return 0
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    receiver = subprocess.Popen(
        [
            *(sys.executable, __file__, "--sink", str(port)),
            *("--latency", str(args.latency), "--limit", str(args.limit)),
        ]
    )
    folder = Path(tempfile.mkdtemp(prefix="ut-share-"))
    results = []
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                http(f"{url}/_stats")
                break
            time.sleep(0.1)
        write_users(folder, args.rows)
        per_worker = args.concurrency * args.batch / args.latency
        print(
            f"shared delivery: one run of {args.rows:,} rows to a webhook receiver answering "
            f"in {args.latency * 1000:.0f} ms (limit {args.limit} requests/s), batches of "
            f"{args.batch}, {args.concurrency} in flight per worker (one worker's ceiling "
            f"{per_worker:,.0f} records/s)"
        )
        for n in [int(w) for w in args.workers.split(",")]:
            result = one(args, n, url, folder)
            results.append(result)
            base = results[0]["records_s"]
            print(
                f"  {n} worker(s): delivery {result['deliver_s']:.1f} s, "
                f"{result['records_s']:,.0f} records/s ({result['records_s'] / base:.2f}x of 1 "
                f"worker), run {result['wall_s']:.1f} s, {result['parts']:.0f} parts, "
                f"{result['requests']:.0f} requests, "
                + ("every row once" if result["ok"] else "WRONG")
            )
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if results and all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
