"""kill -9 while Salesforce Bulk API 2.0 jobs run: the next `undertow run` polls the same
jobs (none is submitted again) and the org ends holding exactly the model's rows."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
from harness import Model, StateFile, run, start, wait_for, write_project

from undertow.testing.salesforce import DEMO_CLIENT_ID, SalesforceFake

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

SECRET = "chaos-salesforce-secret-0000"


def test_kill_9_during_bulk_jobs_then_run_polls_the_same_jobs(tmp_path: Path) -> None:
    model = Model(tmp_path, 250, random.Random(5))
    state = StateFile(tmp_path)
    fake = SalesforceFake(SECRET, job_seconds=0.05)
    fake.hold_jobs = True  # the jobs stay InProgress while we watch
    with fake.serve() as url:
        write_project(
            tmp_path,
            f'{{type: salesforce, base_url: "{url}", client_id: {DEMO_CLIENT_ID}, '
            f"client_secret: {SECRET}, bulk_threshold: 1, bulk_batch_size: 100, bulk_poll_seconds: 0.1}}",
            object_="Contact",
            match="{Customer_Id__c: id}",
            mappings="{Email: email, LastName: plan, Title: version}",
        )
        proc = start(tmp_path)
        every_job_polled = lambda: len(fake.polls) == 3 and min(fake.polls.values()) >= 2  # noqa: E731
        assert wait_for(every_job_polled, proc, 90), proc.stderr.read1().decode()  # type: ignore[union-attr]
        assert state.query("select count(*) from undertow_jobs") == [(3,)]
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert state.latest_status() == "delivering"
        assert state.query("select count(*) from undertow_batches") == [(0,)]
        recorded = {job for (job,) in state.query("select job_id from undertow_jobs")}
        assert recorded == set(fake.jobs.jobs)
        polled_before = dict(fake.polls)
        assert fake.records("Contact") == {}  # nothing applied yet: the jobs are held

        fake.release_jobs()  # Salesforce finishes the jobs while no run watches
        second = run(tmp_path)
        assert second.code == 0, second.err[-3000:]
        assert second.json["status"] == "succeeded", second.json
        again = run(tmp_path)  # nothing left to send
        assert again.json["status"] == "succeeded", again.json

    assert len(fake.jobs.jobs) == 3, "a batch was submitted again"
    assert all(fake.polls[job] > polled_before[job] for job in recorded)
    creates = [r for r in fake.requests if r.method == "POST" and r.path.endswith("/jobs/ingest")]
    assert len(creates) == 3
    contacts = fake.records("Contact")
    assert sorted(int(c["Customer_Id__c"]) for c in contacts.values()) == sorted(model.rows)
    for record in contacts.values():
        row = model.rows[int(record["Customer_Id__c"])]
        assert (record["Email"], record["LastName"]) == (row["email"], row["plan"])
    assert state.latest_status() == "succeeded"
