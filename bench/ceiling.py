"""The hand-built ceiling of the side-by-side: ``python -m bench.ceiling WAREHOUSE STATE URL``.

What the hardware allows for the same job, written by us with no framework: DuckDB reads the
model into Arrow, a ``hash()`` of each row is diffed against an ``(id, hash)`` snapshot in a
DuckDB file, Polars writes each batch of 1,000 changed rows as one JSON body, aiohttp posts 4
bodies in flight, and the accepted ids and hashes are folded into the snapshot.

It keeps no run state, no values (only a hash, which a DuckDB upgrade may change), no
per-record outcome, no checkpoints and no resume: what Undertow's guarantees cost is the
difference. Prints one JSON line with the stage timings.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import duckdb
import polars as pl

BATCH = 1000
IN_FLIGHT = 4
COLUMNS = (
    "id, email, full_name, plan, seats, mrr, country, signup_date, last_seen_at, tags, is_active"
)


async def post_all(url: str, bodies: list[bytes]) -> int:
    sent = 0
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=IN_FLIGHT)) as session:

        async def worker() -> None:
            nonlocal sent
            while True:
                try:
                    body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                assert body is not None
                async with session.post(
                    url, data=body, headers={"content-type": "application/json"}
                ) as response:
                    await response.read()
                    response.raise_for_status()
                sent += 1

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return sent


def main(argv: list[str]) -> int:
    warehouse, state, url = Path(argv[1]), Path(argv[2]), argv[3]
    times: dict[str, float] = {}
    t = time.perf_counter()
    con = duckdb.connect(str(state))
    con.execute(f"ATTACH '{warehouse}' AS wh (READ_ONLY)")
    con.execute("CREATE TABLE IF NOT EXISTS snap (id BIGINT, h UBIGINT)")
    changed = con.sql(
        f"""SELECT m.* FROM (SELECT {COLUMNS}, hash({COLUMNS}) AS _h FROM wh.customers) m
            LEFT JOIN snap s ON m.id = s.id WHERE s.h IS DISTINCT FROM m._h"""
    ).to_arrow_table()
    times["extract_diff_s"] = time.perf_counter() - t
    t = time.perf_counter()
    frame = pl.from_arrow(changed)
    assert isinstance(frame, pl.DataFrame)
    rows = frame.drop("_h")
    # JSON text per row, then one body per batch (the records' texts joined)
    texts = rows.select(pl.struct(pl.all()).struct.json_encode().alias("j"))["j"]
    bodies = []
    for start in range(0, len(texts), BATCH):
        part = texts.slice(start, BATCH)
        bodies.append(b'{"records":[' + ",".join(part.to_list()).encode() + b"]}")
    times["json_s"] = time.perf_counter() - t
    t = time.perf_counter()
    asyncio.run(post_all(url, bodies))
    times["deliver_s"] = time.perf_counter() - t
    t = time.perf_counter()
    accepted = frame.select("id", "_h")
    con.register("acc", accepted.to_arrow())
    con.execute("DELETE FROM snap WHERE id IN (SELECT id FROM acc)")
    con.execute("INSERT INTO snap SELECT id, _h FROM acc")
    con.close()
    times["fold_s"] = time.perf_counter() - t
    print(json.dumps({"sent": len(texts), **{k: round(v, 3) for k, v in times.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
