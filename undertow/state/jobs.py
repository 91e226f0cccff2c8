"""Jobs: "batch N of run R was submitted as job J", written before the result is known.

An asynchronous job API (Salesforce Bulk API 2.0, Zendesk ``job_status``, Klaviyo bulk
import, Google Ads offline user data jobs) accepts a batch now and reports per-record
results later. The deliver stage records the job the moment the vendor has accepted it, in
its own transaction, and only then polls; the batch's checkpoint is written once the result
is known. A run that dies in between (kill -9) leaves the job row and no checkpoint, so the
resumed run polls job J instead of submitting the batch again. ``data`` is what the
destination needs to poll (URLs, sub-ids): never a credential (it is redacted anyway).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from undertow.redact import redact
from undertow.state.connection import StoreConnection
from undertow.state.records import utc_now

metadata = sa.MetaData()

jobs = sa.Table(
    "undertow_jobs",
    metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("batch_no", sa.Integer, primary_key=True),
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("polled_at", sa.DateTime(timezone=True)),
)


@dataclass(frozen=True)
class JobRecord:
    """A submitted job as the state store keeps it."""

    batch_no: int
    job_id: str
    data: dict[str, Any] = field(default_factory=dict)


class JobStore(StoreConnection):
    """The submitted jobs of the state store."""

    def record_job(self, run_id: str, batch_no: int, job_id: str, data: dict[str, Any]) -> None:
        """Batch ``batch_no`` of ``run_id`` is job ``job_id`` (replaces an earlier record)."""
        text = redact(json.dumps(data, sort_keys=True, default=str))
        with self._tx() as conn:
            conn.execute(jobs.delete().where(jobs.c.run_id == run_id, jobs.c.batch_no == batch_no))
            conn.execute(
                jobs.insert().values(
                    run_id=run_id,
                    batch_no=batch_no,
                    job_id=redact(job_id),
                    data=text,
                    submitted_at=utc_now(),
                )
            )

    def jobs(self, run_id: str) -> dict[int, JobRecord]:
        """The jobs submitted by a run, by batch number."""
        with self._tx() as conn:
            rows = conn.execute(sa.select(jobs).where(jobs.c.run_id == run_id)).mappings()
            return {
                r["batch_no"]: JobRecord(r["batch_no"], r["job_id"], json.loads(r["data"]))
                for r in rows
            }
