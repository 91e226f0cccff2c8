"""Two `undertow run` of one sync at once never both deliver: the loser exits 1 naming the
holder. A lock left by a process killed with SIGKILL is taken over by the next run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from harness import (
    UNDERTOW,
    Model,
    StateFile,
    WebhookBook,
    converge,
    final_state_matches,
    run,
    settle,
    start,
    summary,
    wait_for,
    write_project,
)

from undertow.testing.faults import Ledger
from undertow.testing.server import serve_in_thread
from undertow.testing.webhook import WebhookReceiver

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

ROWS = 20_000


def test_second_run_refused_then_dead_holder_recovered(tmp_path: Path) -> None:
    rng = random.Random(606)
    hook = WebhookReceiver(delay=0.03, ledger=Ledger(key="id", version="version"))
    model = Model(tmp_path, ROWS, rng)
    state = StateFile(tmp_path)
    book = WebhookBook(hook)
    with serve_in_thread(hook.app) as server:
        write_project(
            tmp_path,
            f'{{type: webhook, url: "{server.url}/hooks", batch_size: 200, max_concurrency: 4}}',
        )
        # 1. two runs started at the same instant: exactly one delivers
        book.mark()
        first, second = start(tmp_path, json=False), start(tmp_path, json=False)
        outcomes = [p.communicate(timeout=90) for p in (first, second)]
        codes = sorted([first.returncode, second.returncode])
        assert codes == [0, 1], (codes, outcomes)
        loser = outcomes[[first.returncode, second.returncode].index(1)]
        message = (loser[0] + loser[1]).decode()
        assert "is already running" in message and "Traceback" not in message, message
        assert len(state.query("select id from undertow_runs")) == 1
        assert len({r.headers["idempotency-key"] for r in hook.requests}) == len(hook.requests)

        # 2. a run in progress: a second one is refused, naming the holder's pid
        model.change(update=6_000)
        # the receiver holds every answer until the refusal is seen (a loaded machine may take
        # seconds to start the second process), then answers slowly: 30 batches, 4 at a time
        hook.held, hook.delay = True, 0.6
        holder = start(tmp_path)
        assert wait_for(lambda: state.latest_status() == "delivering", holder, 60)
        refused = run(tmp_path, json=False)
        assert refused.code == 1, refused
        text = refused.out + refused.err
        assert f"process {holder.pid}" in text and "Traceback" not in text, text
        for needle in ("is already running", "holds its lock", "hint: wait"):
            assert needle in text, (needle, text)
        status = subprocess.run(
            [UNDERTOW, "status", "--json", "--project", str(tmp_path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert status.returncode == 0, status
        assert [s["running"] for s in json.loads(status.stdout)] == [True], status.stdout
        hook.held = False
        time.sleep(1.0)  # a few batches answered before the kill

        # 3. kill -9 the holder: its lock stays behind, and the next run takes it over
        assert holder.poll() is None, "the holder is still delivering"
        os.kill(holder.pid, signal.SIGKILL)
        holder.communicate(timeout=30)
        settle(lambda: len(hook.requests))
        hook.delay = 0.0
        [(pid,)] = state.query("select pid from undertow_locks")
        assert pid == holder.pid
        started = time.monotonic()
        results, _ = converge(tmp_path, lambda: len(hook.requests))
        recovered = time.monotonic() - started
        assert results[0].json["attempt"] == 2  # resumed the killed run
        final_state_matches(hook.ledger.state if hook.ledger else {}, model.expected("upsert"))
        assert hook.ledger is not None and hook.ledger.duplicates() == {}
    summary(
        "locks",
        {
            "records_checked": ROWS,
            "requests": len(hook.requests),
            "recover_after_kill_s": round(recovered, 2),
        },
    )
