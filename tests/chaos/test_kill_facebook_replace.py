"""kill -9 of a real ``undertow run --full`` of a Facebook audience sync with
``full_replace: true`` while batch 2 of the 3 in its replace session is in flight (Facebook
applied it, its answer not yet sent), then ``undertow run``: the resumed run continues the
same session (same ``session_id``, batch 2 again, then batch 3 with ``last_batch_flag``), and
the audience ends equal to the model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from audience_support import (
    AUDIENCE,
    TOKEN,
    delete_customers,
    emails,
    expected,
    sha,
    write_project,
)
from harness import StateFile, wait_for

from undertow.testing.facebook import FacebookFake

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

UNDERTOW = str(Path(sys.executable).with_name("undertow"))


def undertow(folder: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [UNDERTOW, "run", "vip", "--project", str(folder), "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_kill_9_at_batch_2_of_3_of_a_replace_session_then_a_run_finishes_the_session(
    tmp_path: Path,
) -> None:
    fake = FacebookFake(TOKEN)
    held = threading.Event()

    def hold(path: str, body: Any) -> float:
        session = body[2] if len(body) == 3 else None
        if session and session["batch_seq"] == 2 and not held.is_set():
            held.set()  # applied: the answer waits until the client is dead
            return 30.0
        return 0.0

    state = StateFile(tmp_path)
    with fake.serve() as url:
        write_project(tmp_path, url, 300, batch_size=100, full_replace="true", max_concurrency=1)
        first = undertow(tmp_path)
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, (out + err).decode()[-2000:]
        delete_customers(tmp_path, "customer_id > 270")
        fake.audiences[AUDIENCE].add({"EMAIL": sha("stranger@example.com")})

        fake.hold = hold
        proc = undertow(tmp_path, "--full")
        assert wait_for(held.is_set, proc, 90), proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        [(status,)] = state.query("select status from undertow_runs order by id desc limit 1")
        assert status == "delivering"
        assert len(fake.members()) == 271  # 30 removed; the session has not replaced yet
        fake.hold = None

        second = undertow(tmp_path)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, (out + err).decode()[-3000:]
    [record] = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert record["status"] == "succeeded" and record["full"] is True, record
    [session] = fake.sessions.values()
    assert sorted(session["seqs"]) == [1, 2, 2, 3] and session["done"], session["seqs"]
    replace = [r for r in fake.requests if r.path.endswith("/usersreplace")]
    flags = [r.body["session"]["last_batch_flag"] for r in replace]
    assert flags == [False, False, False, True]
    assert emails(fake) == expected(range(1, 271))
    assert fake.raw_values == []
