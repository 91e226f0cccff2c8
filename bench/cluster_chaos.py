"""Chaos across workers (issue 16): 3 workers, 6 syncs of 50,000 rows, kill -9 a random
worker (its whole session: the machine) every few seconds for a minute, restart it, then
let them finish. Prints the figures; exits non-zero if a destination differs from its model,
a run is stuck, or a batch arrived twice that was checkpointed before a kill.

    .venv/bin/python bench/cluster_chaos.py [--rows 50000] [--syncs 6] [--workers 3]
        [--chaos-seconds 60] [--broker redis|rabbitmq]

Needs PostgreSQL, Redis and RabbitMQ on this machine (as `make test` does).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cluster_support import Workers, make_broker, write_project, write_users  # noqa: E402

from undertow.project import Project  # noqa: E402
from undertow.state.cluster import ClusterState  # noqa: E402
from undertow.state.schema import batches  # noqa: E402
from undertow.testing.server import serve_in_thread  # noqa: E402
from undertow.testing.webhook import WebhookReceiver  # noqa: E402

PG_ADMIN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--syncs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--chaos-seconds", type=float, default=60.0)
    parser.add_argument("--kill-every", type=float, default=5.0)
    parser.add_argument("--broker", default="redis", choices=["redis", "rabbitmq"])
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.4, help="the sink's answer time (s)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    dbname = f"ut_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    state = f"postgresql://postgres@127.0.0.1:5432/{dbname}"
    broker_gen = make_broker(args.broker)
    broker = next(broker_gen)
    folder = Path(tempfile.mkdtemp(prefix="ut-chaos-"))
    hook = WebhookReceiver(delay=args.delay)
    pool = Workers(folder)
    try:
        write_users(folder, args.rows)
        syncs = {f"s{i}": "users" for i in range(args.syncs)}
        with serve_in_thread(hook.app) as server:
            write_project(
                folder,
                state=state,
                broker=broker,
                destination=f'{{type: webhook, url: "{server.url}/hooks", batch_size: 500, '
                "max_concurrency: 2}",
                syncs=syncs,
            )
            project = Project.load(str(folder))
            names = [f"w{i}" for i in range(args.workers)]
            live = {n: pool.start(n) for n in names}
            for worker in live.values():
                pool.wait_ready(worker)
            ids = [project.executor.submit(s) for s in syncs]
            started = time.monotonic()
            kills: list[tuple[float, str, set[str], int]] = []
            while time.monotonic() - started < args.chaos_seconds:
                time.sleep(args.kill_every * rng.uniform(0.6, 1.4))
                victim = rng.choice(names)
                with project.store.engine.connect() as conn:
                    done = {
                        f"{r}-{b}"
                        for r, b in conn.execute(sa.select(batches.c.run_id, batches.c.batch_no))
                    }
                seen = len(hook.requests)
                pool.kill_machine(live[victim])
                kills.append((time.monotonic() - started, victim, done, seen))
                live[victim] = pool.start(victim)
                pool.wait_ready(live[victim])
            chaos_end = time.monotonic()
            tasks = project.executor.wait([i for i in ids if i], timeout=900)
            finished = time.monotonic()
            cluster = ClusterState(project.store)
            runs = {s: project.store.list_runs(s) for s in syncs}
            keys = Counter(r.headers["idempotency-key"] for r in hook.requests)
            twice = {k for k, n in keys.items() if n > 1}
            # a batch may arrive twice only if it was in flight at a kill: not checkpointed
            # then, and first answered no later than the requests then in flight could be
            # (the receiver logs a request when it answers it)
            in_flight = 2 * 2 * args.workers
            first = {}
            for index, request in enumerate(hook.requests):
                first.setdefault(request.headers["idempotency-key"], index)
            wrongly_twice = {
                k
                for k in twice
                if not any(k not in d and first[k] <= seen + in_flight for _, _, d, seen in kills)
            }
            per_sync = Counter()
            ids_seen: dict[str, set[int]] = {s: set() for s in syncs}
            for record in hook.records:
                ids_seen[record["sync"]].add(record["id"])
                per_sync[record["sync"]] += 1
            equal = all(ids_seen[s] == set(range(args.rows)) for s in syncs)
            stuck = [t.id for t in tasks if t.state != "done"]
            resumed = [r for rs in runs.values() for r in rs if r.attempt > 1]
            takeovers = [t for t in cluster.tasks() if t.attempts > 1]
            print(
                f"cluster chaos ({args.broker}): {args.workers} workers, {args.syncs} syncs x "
                f"{args.rows:,} rows, {len(kills)} kill -9 of a whole worker in "
                f"{args.chaos_seconds:.0f}s"
            )
            print(f"  every destination equals its model: {equal}")
            print(
                f"  tasks not done: {len(stuck)}; runs: {Counter(str(r.status) for rs in runs.values() for r in rs)}"
            )
            print(
                f"  runs resumed by another attempt: {len(resumed)}; tasks taken over: {len(takeovers)}"
            )
            print(
                f"  batches sent twice: {len(twice)} of {len(keys)} "
                f"({sum(keys[k] - 1 for k in twice)} extra requests); "
                f"not in flight at any kill: {len(wrongly_twice)}"
            )
            print(
                f"  finished {finished - chaos_end:.1f}s after the chaos ended "
                f"({finished - started:.1f}s in all)"
            )
            project.close()
            ok = equal and not stuck and not wrongly_twice
            return 0 if ok else 1
    finally:
        pool.stop_all()
        with contextlib.suppress(StopIteration):
            next(broker_gen)  # the broker's keys or queue are removed
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
