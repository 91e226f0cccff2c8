"""Runs, batch checkpoints, row errors and sync locks.

Frozen: the tables as they were at version 1, with their own column lists. Never import
the current schema (``undertow.state.schema``) in a migration: it moves on, a migration
must not.
"""

from __future__ import annotations

import sqlalchemy as sa


def upgrade(conn: sa.Connection) -> None:
    metadata = sa.MetaData()
    tables = [
        sa.Table(
            "undertow_runs",
            metadata,
            sa.Column("id", sa.String(40), primary_key=True),
            sa.Column("sync", sa.String(200), nullable=False, index=True),
            sa.Column("status", sa.String(20), nullable=False),
            sa.Column("full_resync", sa.Boolean, nullable=False, default=False),
            sa.Column("trigger", sa.String(40), nullable=False, default="manual"),
            sa.Column("batch_size", sa.Integer),
            sa.Column("total_batches", sa.Integer),
            sa.Column("counts", sa.Text, nullable=False, default="{}"),
            sa.Column("error", sa.Text),
            sa.Column("attempt", sa.Integer, nullable=False, default=1),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("finished_at", sa.DateTime(timezone=True)),
        ),
        sa.Table(
            "undertow_batches",
            metadata,
            sa.Column("run_id", sa.String(40), primary_key=True),
            sa.Column("batch_no", sa.Integer, primary_key=True),
            sa.Column("operation", sa.String(20), nullable=False),
            sa.Column("size", sa.Integer, nullable=False),
            sa.Column("sent", sa.Integer, nullable=False),
            sa.Column("accepted", sa.Integer, nullable=False),
            sa.Column("rejected", sa.Integer, nullable=False),
            sa.Column("failed", sa.Integer, nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        ),
        sa.Table(
            "undertow_row_errors",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("run_id", sa.String(40), nullable=False, index=True),
            sa.Column("sync", sa.String(200), nullable=False, index=True),
            sa.Column("batch_no", sa.Integer),
            sa.Column("seq", sa.BigInteger),
            sa.Column("row_key", sa.Text, nullable=False),
            sa.Column("kind", sa.String(20), nullable=False),
            sa.Column("operation", sa.String(20)),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        ),
        sa.Table(
            "undertow_locks",
            metadata,
            sa.Column("sync", sa.String(200), primary_key=True),
            sa.Column("owner", sa.String(100), nullable=False),
            sa.Column("host", sa.String(200), nullable=False),
            sa.Column("pid", sa.Integer, nullable=False),
            sa.Column("run_id", sa.String(40)),
            sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        ),
    ]
    for table in tables:
        table.create(conn, checkfirst=True)
