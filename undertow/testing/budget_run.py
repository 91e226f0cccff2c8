"""Run N syncs in N processes against one rate-limited account (the shared-budget test and
bench): a project whose syncs all write to one ``WindowedAccount`` through webhook
destinations declaring the account's limit, each sync run by its own ``undertow run``."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

UNDERTOW = str(Path(sys.executable).with_name("undertow"))


@dataclass
class Outcome:
    seconds: float
    codes: list[int]
    outputs: list[str]


def write(
    folder: Path,
    *,
    url: str,
    syncs: int,
    rows: int,
    batch: int,
    limit: int,
    budget: str | None,
    prefix: str,
) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(folder / "wh.duckdb"))
    con.execute(f"create or replace table users as select range as id from range({rows})")
    con.close()
    executor = f"executor: {{rate_budget: {budget}, prefix: {prefix}}}\n" if budget else ""
    names = [f"s{i}" for i in range(syncs)]
    lines = [
        "name: budget",
        executor.rstrip(),
        "sources:",
        "  wh: {type: duckdb, path: wh.duckdb}",
        "destinations:",
    ]
    for name in names:  # one destination per sync, all on the same account
        lines.append(
            f"  d_{name}: {{type: webhook, url: '{url}/{name}', batch_size: {batch}, "
            f"max_concurrency: 4, account: shared, "
            f"rate_limit: {{requests: {limit}, per_seconds: 1}}}}"
        )
    lines += ["models:", "  users: {source: wh, sql: select * from users, primary_key: id}"]
    lines.append("syncs:")
    for name in names:
        lines.append(f"  {name}: {{model: users, destination: d_{name}, mappings: {{id: id}}}}")
    (folder / "undertow.yml").write_text("\n".join(line for line in lines if line) + "\n")
    return names


def run_all(folder: Path, names: list[str], timeout: float = 300) -> Outcome:
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [UNDERTOW, "run", name, "--project", str(folder), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for name in names
    ]
    outputs = [p.communicate(timeout=timeout)[0].decode() for p in procs]
    return Outcome(time.monotonic() - started, [p.returncode for p in procs], outputs)
