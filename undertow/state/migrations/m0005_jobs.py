"""Asynchronous job APIs: ``undertow_jobs`` records "batch N of run R was submitted as job J"
before the result is known, so a run resumed after a crash polls J instead of sending the
batch again. Frozen: the columns are listed here, not taken from the current schema."""

from __future__ import annotations

import sqlalchemy as sa


def upgrade(conn: sa.Connection) -> None:
    frozen = sa.MetaData()
    sa.Table(
        "undertow_jobs",
        frozen,
        sa.Column("run_id", sa.String(40), primary_key=True),
        sa.Column("batch_no", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Text, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("polled_at", sa.DateTime(timezone=True)),
    ).create(conn, checkfirst=True)
