"""kill -9 between "the vendor accepted batch N as job J" and its result: the resumed run
polls job J, it never submits the batch again, and the destination ends equal to the model."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import Model, StateFile, wait_for, write_project
from jobs_support import TOKEN, JobsFake

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

SUPPORT = Path(__file__).resolve().parents[1] / "jobs_support.py"


def undertow(folder: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(SUPPORT.parent)}
    return subprocess.Popen(
        [sys.executable, str(SUPPORT), "run", "users_out", "--project", str(folder), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def test_kill_9_while_a_job_runs_then_the_next_run_polls_it_instead_of_resubmitting(
    tmp_path: Path,
) -> None:
    model = Model(tmp_path, 250, random.Random(11))
    state = StateFile(tmp_path)
    fake = JobsFake(polls_to_complete=10**9)  # the first job never finishes while we watch
    with fake.serve() as url:
        write_project(
            tmp_path,
            f'{{type: jobs, token: {TOKEN}, base_url: "{url}"}}',
            match="{email: email}",
        )
        proc = undertow(tmp_path)
        assert wait_for(lambda: sum(fake.polls.values()) >= 3, proc, 60), proc.stderr
        assert state.query("select count(*) from undertow_jobs") == [(1,)]
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert state.latest_status() == "delivering"
        [(job_id,)] = state.query("select job_id from undertow_jobs")
        assert state.query("select count(*) from undertow_batches") == [(0,)]
        polled_before = fake.polls[job_id]

        fake.polls_to_complete = polled_before + 2  # the vendor finishes the job now
        started = time.monotonic()
        second = undertow(tmp_path)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, (out + err).decode()[-3000:]
        assert time.monotonic() - started < 60
    assert fake.polls[job_id] > polled_before, "the resumed run polled the recorded job"
    assert max(fake.submitted.values()) == 1, "no batch was submitted twice"
    assert len(fake.jobs) == 3  # 250 rows in batches of 100
    assert sorted(int(u["id"]) for u in fake.users.values()) == sorted(model.rows)
    assert state.latest_status() == "succeeded"
