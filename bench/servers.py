"""Queue and database destinations against this machine's real servers (``make bench-destinations``).

    python bench/servers.py                 # 50,000 sample customers into each
    python bench/servers.py --rows 20000 rabbitmq nats

Each destination gets a fresh place of its own (a queue, a stream, a stream key, a topic, a
database, a DuckDB file), then one ``undertow run`` (a subprocess, as a user runs it) syncs the
sample customers into it (upsert, first sync). Printed per destination: records/s over the
whole run, and the ratio to the ``file`` destination (JSON Lines, fsynced per batch) measured
in the same invocation, the pipeline's own speed with a destination that costs almost
nothing. The machine is shared: compare ratios, not seconds. A run that does not succeed, or
a destination holding fewer records than sent, fails the benchmark; timings never do.

Queues are measured twice: a message per record (the default) and a message per batch.
Snowflake runs on fakesnow (an emulator on DuckDB, started in this process) when fakesnow is
installed (``.venv-warehouses/bin/python bench/servers.py snowflake``): its figure is the
pipeline's and the emulator's, not Snowflake's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from undertow.samples import build_customers

UNDERTOW = str(Path(sys.executable).with_name("undertow"))
MAPPINGS = "{customer_id: customer_id, email: email, plan: plan, country: country}"

Setup = Callable[[], Iterator[tuple[str, Callable[[], int]]]]


@contextmanager
def _file(folder: Path) -> Iterator[tuple[str, Callable[[], int]]]:
    out = folder / "out.jsonl"
    yield f'{{type: file, path: "{out}"}}', lambda: sum(1 for _ in out.open())


@contextmanager
def _rabbitmq(message: str) -> Iterator[tuple[str, Callable[[], int]]]:
    import aio_pika

    url = "amqp://guest:guest@127.0.0.1:5672/"
    name = f"ut-bench-{uuid.uuid4().hex[:8]}"

    async def act(what: str) -> int:
        conn = await aio_pika.connect(url)
        async with conn:
            channel = await conn.channel()
            if what == "declare":
                await channel.declare_queue(name, durable=True)
                return 0
            if what == "count":
                q = await channel.declare_queue(name, passive=True)
                return int(q.declaration_result.message_count or 0)
            await channel.queue_delete(name)
            return 0

    asyncio.run(act("declare"))
    try:
        per = 1000 if message == "batch" else 1
        block = f'{{type: rabbitmq, url: "{url}", routing_key: "{name}", message: {message}}}'
        yield block, lambda: asyncio.run(act("count")) * per
    finally:
        asyncio.run(act("delete"))


@contextmanager
def _nats(message: str) -> Iterator[tuple[str, Callable[[], int]]]:
    import nats

    name, subject = f"UTB_{uuid.uuid4().hex[:8]}", f"utb.{uuid.uuid4().hex[:8]}"

    async def act(what: str) -> int:
        nc = await nats.connect("nats://127.0.0.1:4222")
        try:
            js = nc.jetstream()
            if what == "add":
                await js.add_stream(name=name, subjects=[f"{subject}.>"])
            elif what == "count":
                return int((await js.stream_info(name)).state.messages)
            else:
                await js.delete_stream(name)
            return 0
        finally:
            await nc.close()

    asyncio.run(act("add"))
    try:
        per = 1000 if message == "batch" else 1
        yield (
            f'{{type: nats, subject: "{subject}.{{operation}}", stream: {name}, message: {message}}}',
            lambda: asyncio.run(act("count")) * per,
        )
    finally:
        asyncio.run(act("delete"))


@contextmanager
def _redis(message: str) -> Iterator[tuple[str, Callable[[], int]]]:
    import redis

    key = f"ut:bench:{uuid.uuid4().hex[:8]}"
    client = redis.Redis()
    try:
        per = 1000 if message == "batch" else 1
        yield (
            f'{{type: redis_streams, stream: "{key}", message: {message}}}',
            lambda: int(client.xlen(key)) * per,
        )
    finally:
        client.delete(key, f"{key}:undertow:runs")
        client.close()


@contextmanager
def _mqtt(message: str) -> Iterator[tuple[str, Callable[[], int]]]:
    # counted by the run's own summary: an MQTT broker keeps nothing for absent subscribers
    topic = f"utb/{uuid.uuid4().hex[:8]}"
    yield f'{{type: mqtt, topic: "{topic}/{{operation}}", message: {message}}}', lambda: -1


@contextmanager
def _mysql() -> Iterator[tuple[str, Callable[[], int]]]:
    import pymysql

    name = f"ut_bench_{uuid.uuid4().hex[:8]}"
    admin = pymysql.connect(host="127.0.0.1", user="root")
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    try:

        def count() -> int:
            with (
                pymysql.connect(host="127.0.0.1", user="root", database=name) as c,
                c.cursor() as cur,
            ):
                cur.execute("SELECT count(*) FROM customers_out")
                return int(cur.fetchone()[0])

        yield (
            f'{{type: mysql, url: "mysql://root@127.0.0.1:3306/{name}", table: customers_out, create_table: true}}',
            count,
        )
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@contextmanager
def _postgres() -> Iterator[tuple[str, Callable[[], int]]]:
    import psycopg

    name = f"ut_bench_{uuid.uuid4().hex[:8]}"
    admin = "host=127.0.0.1 dbname=test user=postgres"
    with psycopg.connect(admin, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:

        def count() -> int:
            with psycopg.connect(url) as con:
                row = con.execute("SELECT count(*) FROM customers_out").fetchone()
                return int(row[0]) if row else 0

        yield f'{{type: postgres, url: "{url}", table: customers_out, create_table: true}}', count
    finally:
        with psycopg.connect(admin, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def _duckdb(folder: Path) -> Iterator[tuple[str, Callable[[], int]]]:
    import duckdb

    path = folder / "dest.duckdb"

    def count() -> int:
        with duckdb.connect(str(path)) as con:
            row = con.execute("SELECT count(*) FROM customers_out").fetchone()
            return int(row[0]) if row else 0

    yield f'{{type: duckdb, path: "{path}", table: customers_out, create_table: true}}', count


@contextmanager
def _snowflake() -> Iterator[tuple[str, Callable[[], int]]]:
    """fakesnow's server in this process (the emulator the tests use; ``.venv-warehouses``):
    emulator figures, not Snowflake's."""
    import logging
    import warnings

    try:
        import fakesnow
        import snowflake.connector
    except ImportError:
        raise SystemExit(
            "snowflake: fakesnow is not installed here; run `make test-warehouses` once, then "
            ".venv-warehouses/bin/python bench/servers.py snowflake"
        ) from None
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Arrow output on a DB-API result")
    schema = f"UT_BENCH_{uuid.uuid4().hex[:8].upper()}"
    with fakesnow.server() as kwargs:
        params = {k: kwargs[k] for k in ("account", "host", "port", "protocol")}
        conn = snowflake.connector.connect(**params, user="bench", password="bench")
        conn.cursor().execute("CREATE DATABASE IF NOT EXISTS BENCH")
        conn.cursor().execute(f"CREATE SCHEMA BENCH.{schema}")

        def count() -> int:
            row = conn.cursor().execute(f"SELECT count(*) FROM BENCH.{schema}.CUSTOMERS_OUT")
            return int(row.fetchone()[0])  # type: ignore[union-attr,index]

        block = (
            f"{{type: snowflake, account: {params['account']}, host: {params['host']}, "
            f"port: {params['port']}, protocol: http, user: bench, password: bench, "
            f"database: BENCH, schema: {schema}, table: customers_out, create_table: true}}"
        )
        try:
            yield block, count
        finally:
            conn.close()


def run(folder: Path, block: str, match: bool) -> tuple[float, dict[str, object]]:
    lines = [
        "name: bench",
        "sources:",
        "  wh: {type: duckdb, path: wh.duckdb}",
        "destinations:",
        f"  out: {block}",
        "models:",
        "  customers: {source: wh, sql: select * from customers, primary_key: customer_id}",
        "syncs:",
        "  out:",
        "    model: customers",
        "    destination: out",
        "    mode: upsert",
        f"    mappings: {MAPPINGS}",
    ]
    if match:
        lines.append("    match: {customer_id: customer_id}")
    (folder / "undertow.yml").write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    done = subprocess.run(
        [UNDERTOW, "run", "out", "--project", str(folder), "--json"], capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the run failed: {done.stdout[-800:]} {done.stderr[-1500:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("types", nargs="*")
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="undertow-bench-servers-") as tmp:
        root = Path(tmp)
        cases: list[tuple[str, Callable[[Path], object], bool]] = [
            ("file (reference)", _file, False),
            ("rabbitmq", lambda f: _rabbitmq("record"), False),
            ("rabbitmq message: batch", lambda f: _rabbitmq("batch"), False),
            ("nats", lambda f: _nats("record"), False),
            ("nats message: batch", lambda f: _nats("batch"), False),
            ("redis_streams", lambda f: _redis("record"), False),
            ("redis_streams message: batch", lambda f: _redis("batch"), False),
            ("mqtt", lambda f: _mqtt("record"), False),
            ("mqtt message: batch", lambda f: _mqtt("batch"), False),
            ("postgres", lambda f: _postgres(), True),
            ("mysql", lambda f: _mysql(), True),
            ("duckdb", _duckdb, True),
        ]
        wanted = set(args.types)
        if "snowflake" in wanted or _has("fakesnow"):  # the emulator's own venv
            cases.append(("snowflake (fakesnow emulator)", lambda f: _snowflake(), True))
        reference = None
        print(
            f"{args.rows:,} sample customers, one first sync (upsert) each; ratio = records/s "
            "over the file destination's in this run"
        )
        print(f"{'destination':<30} {'seconds':>8} {'records/s':>11} {'ratio':>7}")
        for label, setup, match in cases:
            if wanted and label.split()[0] not in wanted and not label.startswith("file"):
                continue
            folder = root / label.replace(" ", "_").replace(":", "")
            folder.mkdir()
            build_customers(folder / "wh.duckdb", args.rows)
            with setup(folder) as (block, count):  # type: ignore[attr-defined]
                seconds, summary = run(folder, block, match)
                held = count()
            sent = int(summary.get("succeeded", 0))  # type: ignore[call-overload]
            if sent != args.rows or (held != -1 and held < sent):
                raise SystemExit(f"{label}: sent {sent}, the destination holds {held}")
            rate = sent / seconds
            if reference is None:
                reference = rate
            print(f"{label:<30} {seconds:>8.2f} {rate:>11,.0f} {rate / reference:>7.2f}")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()
