"""Shared rate budget (issue 16): 4 processes running 4 syncs against one account allowing
20 requests per rolling second, with the budget in Redis and without it. Prints the 429s,
the busiest rolling second the account saw and the achieved rate; also the cost of one
acquire + release round trip of the Lua budget. Exits non-zero if the shared budget let a
429 through.

    .venv/bin/python bench/cluster_budget.py [--rows 1000] [--limit 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from undertow.destinations.base import RateLimit
from undertow.testing.budget_run import run_all, write
from undertow.testing.server import serve_in_thread
from undertow.testing.window import WindowedAccount
from undertow.workers.budget import RedisBudget

REDIS_URL = "redis://127.0.0.1:6379/0"


def account_run(*, budget: str | None, rows: int, limit: int, prefix: str) -> WindowedAccount:
    account = WindowedAccount(limit)
    with tempfile.TemporaryDirectory() as tmp, serve_in_thread(account.app) as server:
        names = write(
            Path(tmp), url=server.url, syncs=4, rows=rows, batch=10, limit=limit,
            budget=budget, prefix=prefix,
        )  # fmt: skip
        outcome = run_all(Path(tmp), names, timeout=900)
        if outcome.codes != [0, 0, 0, 0] and budget is not None:
            print(outcome.outputs)
    return account


async def round_trips(prefix: str, n: int = 2000) -> float:
    client = redis.Redis.from_url(REDIS_URL)
    budget = RedisBudget(client, "bench", [RateLimit(10**9, 1.0)], prefix=prefix)
    started = time.perf_counter()
    for _ in range(n):
        permit = await budget.acquire()
        await budget.release(permit)
    took = (time.perf_counter() - started) / n
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
    client.close()
    return took


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=20)
    args = parser.parse_args()
    prefix = f"ut-bench-{uuid.uuid4().hex[:8]}"
    requests = 4 * args.rows // 10
    shared = account_run(budget=REDIS_URL, rows=args.rows, limit=args.limit, prefix=prefix)
    alone = account_run(budget=None, rows=args.rows, limit=args.limit, prefix=prefix)
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
    client.close()
    per = asyncio.run(round_trips(prefix))
    print(f"rate budget: 4 processes x 4 syncs, {requests} requests, limit {args.limit}/rolling s")
    for label, acc in (("shared budget (Redis)", shared), ("per-process budgets", alone)):
        print(
            f"  {label:22s} 429s {acc.refused:4d}  busiest second {acc.busiest_window():3d}  "
            f"achieved {acc.rate():5.1f} req/s ({acc.rate() / args.limit:.0%} of the limit)"
        )
    print(f"  acquire + release, one process: {per * 1e3:.2f} ms (two Lua round trips)")
    return 0 if shared.refused == 0 and shared.busiest_window() <= args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
