"""Orchestration: schedules, queued triggers, upstream signal events, alert states.

Frozen with its own column lists (see ``m0001_initial``).
"""

from __future__ import annotations

import sqlalchemy as sa


def upgrade(conn: sa.Connection) -> None:
    metadata = sa.MetaData()
    tables = [
        sa.Table(
            "undertow_schedules",
            metadata,
            sa.Column("sync", sa.String(200), primary_key=True),
            sa.Column("paused", sa.Boolean, nullable=False, default=False),
            sa.Column("next_run_at", sa.DateTime(timezone=True)),
            sa.Column("last_started_at", sa.DateTime(timezone=True)),
            sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        ),
        sa.Table(
            "undertow_triggers",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("sync", sa.String(200), nullable=False, index=True),
            sa.Column("full_resync", sa.Boolean, nullable=False, default=False),
            sa.Column("reason", sa.String(200), nullable=False),
            sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("taken_at", sa.DateTime(timezone=True)),
        ),
        sa.Table(
            "undertow_signals",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", sa.String(400), nullable=False, index=True),
            sa.Column("status", sa.String(20), nullable=False),
            sa.Column("at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("detail", sa.Text),
            sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
            sa.UniqueConstraint("name", "at", name="uq_undertow_signals_name_at"),
        ),
        sa.Table(
            "undertow_alert_states",
            metadata,
            sa.Column("key", sa.String(400), primary_key=True),
            sa.Column("sync", sa.String(200), nullable=False),
            sa.Column("state", sa.String(20), nullable=False),
            sa.Column("since", sa.DateTime(timezone=True), nullable=False),
            sa.Column("detail", sa.Text),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        ),
    ]
    for table in tables:
        table.create(conn, checkfirst=True)
