"""SIGTERM and Ctrl-C (SIGINT) stop a run cleanly: the batches in flight finish and are
checkpointed, the run is marked cancelled, the command exits non-zero saying so, and the
next run sends the rest, with nothing sent twice."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from harness import (
    Model,
    StateFile,
    WebhookBook,
    all_final,
    converge,
    final_state_matches,
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


@pytest.mark.parametrize(
    ("signum", "during"),
    [
        (signal.SIGTERM, "delivery"),
        (signal.SIGINT, "delivery"),
        (signal.SIGTERM, "extract"),
        (signal.SIGINT, "extract"),
    ],
)
def test_signal_stops_cleanly_then_next_run_finishes(
    tmp_path: Path, signum: signal.Signals, during: str
) -> None:
    rng = random.Random(int(signum) * 10 + len(during))
    hook = WebhookReceiver(delay=0.03, ledger=Ledger(key="id", version="version"))
    model = Model(tmp_path, ROWS, rng)
    state = StateFile(tmp_path)
    book = WebhookBook(hook)
    with serve_in_thread(hook.app) as server:
        write_project(
            tmp_path,
            f'{{type: webhook, url: "{server.url}/hooks", batch_size: 500, max_concurrency: 4}}',
        )
        book.mark()
        proc = start(tmp_path, json=False)
        if during == "delivery":
            target = rng.randint(3, 12)
            assert wait_for(lambda: len(hook.requests) >= target, proc, 60)
        else:
            assert wait_for(lambda: state.latest_status() in ("extracting", "diffing"), proc, 60)
        signalled = time.monotonic()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        stopped_after = time.monotonic() - signalled
        settle(lambda: len(hook.requests))
        text = out.decode() + err.decode()
        assert proc.returncode not in (0, -signum), (proc.returncode, text[-2000:])
        assert "Traceback" not in text, text[-3000:]
        assert "cancelled" in text, text[-2000:]
        assert state.latest_status() == "cancelled"
        # every batch the receiver answered was checkpointed before the run stopped
        sent = {r.headers["idempotency-key"] for r in hook.requests}
        assert sent <= state.checkpointed(), sent - state.checkpointed()
        assert state.query("select count(*) from undertow_locks") == [(0,)]

        results, _ = converge(tmp_path, lambda: len(hook.requests))
        assert results[0].json["status"] == "succeeded"
        final_state_matches(hook.ledger.state if hook.ledger else {}, model.expected("upsert"))
        figures = book.check(concurrency=4)
        assert figures["resent_batches"] == 0 and figures["applied_twice"] == 0
        assert all_final(state.statuses())
    summary(
        f"signal[{signum.name},{during}]",
        {**figures, "records_checked": ROWS, "stopped_after_s": round(stopped_after, 2)},
    )
