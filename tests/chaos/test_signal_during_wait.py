"""Ctrl-C and SIGTERM work during every wait (docs/bad-input.md): a vendor's Retry-After
(within max_wait) and a rate-limit wait both end at once, the run ends cancelled, and the
next run sends the rows."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from harness import Model, StateFile, start, wait_for, write_project

from undertow.testing.server import serve_in_thread
from undertow.testing.webhook import WebhookReceiver

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("wait", ["retry-after", "rate-limit"])
def test_a_signal_ends_a_long_wait_at_once(
    tmp_path: Path, signum: signal.Signals, wait: str
) -> None:
    hook = WebhookReceiver()
    Model(tmp_path, 50, random.Random(5))
    state = StateFile(tmp_path)
    with serve_in_thread(hook.app) as server:
        extra = ""
        if wait == "retry-after":  # every answer asks for 10 minutes (under max_wait's 15)
            hook.queue_response(
                429, {"error": "slow down"}, headers={"Retry-After": "600"}, times=50
            )
        else:  # one request per 10 minutes: the second batch waits in the rate budget
            extra = ", rate_limit: {requests: 1, per_seconds: 600}"
        write_project(
            tmp_path,
            f'{{type: webhook, url: "{server.url}/hooks", batch_size: 10, max_concurrency: 1{extra}}}',
        )
        proc = start(tmp_path, json=False)
        assert wait_for(lambda: len(hook.requests) >= 1, proc, 60)
        time.sleep(0.5)  # now waiting
        assert proc.poll() is None, "the run should be waiting"
        signalled = time.monotonic()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
        stopped_after = time.monotonic() - signalled
    text = out.decode() + err.decode()
    assert stopped_after < 10, (stopped_after, text[-2000:])
    assert proc.returncode not in (0, -signum), (proc.returncode, text[-2000:])
    assert "Traceback" not in text, text[-3000:]
    assert "cancelled" in text, text[-2000:]
    assert state.latest_status() == "cancelled"
