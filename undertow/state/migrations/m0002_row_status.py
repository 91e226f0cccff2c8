"""Rejected-row history and run warnings.

- ``undertow_row_status``: one row per (sync, row key) that a run did not get accepted
  (rejected or failed): first and last failure, attempts, last reason and run; resolved
  when a later run gets the row accepted. Written in the checkpoint's transaction.
- ``undertow_runs.warning``: a run that succeeded with some rows rejected says so here.

Frozen with its own column lists (see ``m0001_initial``).
"""

from __future__ import annotations

import sqlalchemy as sa


def upgrade(conn: sa.Connection) -> None:
    metadata = sa.MetaData()
    row_status = sa.Table(
        "undertow_row_status",
        metadata,
        sa.Column("sync", sa.String(200), primary_key=True),
        sa.Column("row_key", sa.Text, primary_key=True),
        sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_kind", sa.String(20), nullable=False),
        sa.Column("last_reason", sa.Text, nullable=False),
        sa.Column("last_run_id", sa.String(40), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.Index("ix_undertow_row_status_open", "sync", "resolved_at"),
    )
    row_status.create(conn, checkfirst=True)
    # stores made before m0001 was frozen got this column from the then-current schema
    columns = {c["name"] for c in sa.inspect(conn).get_columns("undertow_runs")}
    if "warning" not in columns:
        conn.execute(sa.text("ALTER TABLE undertow_runs ADD COLUMN warning TEXT"))
