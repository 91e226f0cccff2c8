"""A Mixpanel events sync of 2.2M rows through /import, in records/s (issue 17's seed story).

    python bench/mixpanel_events.py               # 2,200,000 rows
    python bench/mixpanel_events.py --rows 200000

The seed article's sync went 50x faster once it used the batch API: 3,500 records/s over
2.2M rows. This builds a DuckDB table of ``--rows`` events (a customer, an event name, a
time, three properties), serves the Mixpanel fake in its own process at the vendor's
documented limits (2,000 events and 10 MB a request, ~30k events/s on a rolling minute,
counting events only: ``keep_events=False``), runs one ``insert`` sync with the connector's
defaults, and prints records/s for the whole run (extract, plan, deliver, state) and for the
delivering stage, beside 3,500 and the documented ceiling. Not a test: it is not in
``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import duckdb

from undertow.testing.fakes import STATS_PATH
from undertow.testing.server import free_port

SEED = 3500.0
"""records/s of the seed article's Mixpanel sync on the batch API."""
CEILING = 30_000.0
"""~30k events/s per project (https://docs.mixpanel.com/reference/rate-limits)."""
TOKEN = "mp-bench-token-0000"
OUT = Path(__file__).parent / ".out"

SERVE = """
import json, sys, threading
from undertow.testing.mixpanel import MixpanelFake
fake = MixpanelFake(sys.argv[1], keep_events=False)
with fake.serve(port=int(sys.argv[2])) as url:
    print(json.dumps({"url": url}), flush=True)
    sys.stdin.read()
"""

EVENTS = """
CREATE OR REPLACE TABLE events AS
SELECT i AS event_id,
       1 + hash(i) % 200000 AS customer_id,
       (['Viewed Product', 'Added To Cart', 'Order Completed', 'Signed In'])[1 + i % 4] AS name,
       TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_seconds(i) AS happened_at,
       'SKU-' || lpad((i % 5000)::VARCHAR, 5, '0') AS sku,
       ((hash(i * 7) % 100000) / 100.0)::DECIMAL(12, 2) AS amount,
       (['web', 'ios', 'android'])[1 + i % 3] AS platform
FROM range(1, {n} + 1) t(i)
"""

PROJECT = """name: bench
sources:
  wh: {{type: duckdb, path: wh.duckdb}}
destinations:
  mp: {{type: mixpanel, project_token: "{token}", base_url: "{url}"}}
models:
  events: {{source: wh, sql: select * from events, primary_key: event_id}}
syncs:
  events_to_mixpanel:
    model: events
    destination: mp
    object: events
    mode: insert
    match: {{distinct_id: customer_id}}
    mappings:
      event: name
      time: happened_at
      sku: sku
      amount: amount
      platform: platform
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_200_000)
    args = parser.parse_args()
    from undertow.project import Project

    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-c", SERVE, TOKEN, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fake.stdout is not None
        url = json.loads(fake.stdout.readline())["url"]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            built = time.monotonic()
            with duckdb.connect(str(folder / "wh.duckdb")) as con:
                con.execute(EVENTS.replace("{n}", str(args.rows)))
            print(f"built {args.rows:,} rows in {time.monotonic() - built:.1f}s", file=sys.stderr)
            (folder / "undertow.yml").write_text(PROJECT.format(token=TOKEN, url=url))
            os.environ.setdefault("UNDERTOW_LOG_LEVEL", "WARNING")
            project = Project.load(str(folder))
            try:
                started = time.monotonic()
                [record] = project.run(["events_to_mixpanel"])
                elapsed = time.monotonic() - started
            finally:
                project.close()
        with urllib.request.urlopen(url + STATS_PATH, timeout=10) as answer:
            stats = json.loads(answer.read())
    finally:
        if fake.stdin is not None:
            fake.stdin.close()
        try:
            fake.wait(timeout=15)
        except subprocess.TimeoutExpired:
            fake.kill()
    if str(record.status) != "succeeded":
        raise SystemExit(f"the run ended {record.status}: {record.error}")
    sent = record.counts["sent"]
    stages = record.stages if hasattr(record, "stages") else {}
    delivering = _seconds_between(stages, "delivering", "succeeded")
    whole = sent / elapsed
    result = {
        "rows": args.rows,
        "sent": sent,
        "rejected": record.counts["rejected"],
        "seconds": round(elapsed, 1),
        "records_per_s": round(whole, 1),
        "delivering_s": round(delivering, 1) if delivering else None,
        "delivering_records_per_s": round(sent / delivering, 1) if delivering else None,
        "seed_records_per_s": SEED,
        "ratio_to_seed": round(whole / SEED, 2),
        "ceiling_records_per_s": CEILING,
        "share_of_ceiling": round(whole / CEILING, 3),
        "requests": stats["requests"],
        "slow_downs": stats["slow_downs"],
        "largest_batch": stats["largest_batch"],
    }
    print(json.dumps(result, indent=2))
    OUT.mkdir(exist_ok=True)
    (OUT / "mixpanel_events.json").write_text(json.dumps(result, indent=2))
    return 0


def _seconds_between(stages: dict[str, str], start: str, end: str) -> float | None:
    if start not in stages or end not in stages:
        return None
    return (
        datetime.fromisoformat(stages[end]) - datetime.fromisoformat(stages[start])
    ).total_seconds()


if __name__ == "__main__":
    sys.exit(main())
