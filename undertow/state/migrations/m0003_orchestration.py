"""Orchestration: schedules, queued triggers, upstream signal events, alert states."""

from __future__ import annotations

import sqlalchemy as sa

from undertow.state.orchestration import TABLES


def upgrade(conn: sa.Connection) -> None:
    for table in TABLES:
        table.create(conn, checkfirst=True)
