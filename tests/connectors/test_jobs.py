"""Asynchronous job APIs on the kit: the job is recorded before it is polled, per-record
results come from the job, and a run stopped while a job runs polls it next time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_support import TOKEN, JobsDestination, JobsFake
from project_support import run_one, users_project

from undertow import registry
from undertow.state.store import RunStatus

pytestmark = pytest.mark.connectors

SYNC = """\
  out:
    model: users
    destination: dest
    mode: upsert
    match: {email: email}
    mappings: {id: id, email: email}
    batch_size: 10
    max_rejected_ratio: 1
"""


@pytest.fixture
def fake() -> Iterator[JobsFake]:
    key = (registry.DESTINATIONS_GROUP, "jobs")
    registry._classes[key] = JobsDestination
    jobs = JobsFake()
    with jobs.serve():
        yield jobs
    registry._classes.pop(key, None)


def project(folder: Path, fake: JobsFake, rows: list[tuple[int, str]]):  # type: ignore[no-untyped-def]
    destination = f'dest: {{type: jobs, token: {TOKEN}, base_url: "{fake.url}"}}'
    return users_project(folder, rows, syncs=SYNC, destinations=destination)


def test_results_per_record_come_from_the_job(tmp_path: Path, fake: JobsFake) -> None:
    rows = [(i, f"u{i}@x.io" if i != 7 else "not-an-email") for i in range(1, 26)]
    proj = project(tmp_path, fake, rows)
    record = run_one(proj, "out")
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert record.counts["succeeded"] == 24 and record.counts["rejected"] == 1
    [error] = proj.store.row_errors(record.id)
    assert error.row_key == "7" and "Jobs EmailInvalid: not-an-email" in error.reason
    assert len(fake.jobs) == 3 and max(fake.submitted.values()) == 1
    assert sorted(proj.store.jobs(record.id)) == [0, 1, 2]  # each job was recorded
    again = run_one(proj, "out")  # nothing changed, nothing sent (the rejected row retried)
    assert len(fake.jobs) == 4 and again.counts["sent"] == 1
    proj.close()


def test_a_run_stopped_while_a_job_runs_polls_it_next_time(tmp_path: Path, fake: JobsFake) -> None:
    fake.polls_to_complete = 10**9
    rows = [(i, f"u{i}@x.io") for i in range(1, 6)]
    proj = project(tmp_path, fake, rows)
    # SIGINT-equivalent: the run's stop event, set through the public halt hook
    from undertow.pipeline.run import SyncRun

    original = SyncRun._deliver

    async def deliver_with_stop(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        import asyncio

        async def watcher() -> None:
            while sum(fake.polls.values()) < 2:
                await asyncio.sleep(0.02)
            self.stop.set()

        task = asyncio.ensure_future(watcher())
        try:
            return await original(self, *args, **kwargs)
        finally:
            task.cancel()

    SyncRun._deliver = deliver_with_stop  # type: ignore[method-assign]
    try:
        first = run_one(proj, "out")
    finally:
        SyncRun._deliver = original  # type: ignore[method-assign]
    # the job runs on at the vendor: the run stays unfinished for the next run to resume
    assert first.status is RunStatus.DELIVERING
    assert "still running at the vendor as submitted jobs" in (first.error or "")
    [job_id] = [r.job_id for r in proj.store.jobs(first.id).values()]
    fake.polls_to_complete = fake.polls[job_id] + 1
    second = run_one(proj, "out")
    assert second.status is RunStatus.SUCCEEDED, second.error
    assert second.id == first.id
    assert len(fake.jobs) == 1, "the job was polled again, not submitted again"
    assert len(fake.users) == 5
    proj.close()
