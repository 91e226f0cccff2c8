"""Runs, batch checkpoints, row errors and sync locks."""

from __future__ import annotations

import sqlalchemy as sa

from undertow.state.schema import batches, locks, row_errors, runs


def upgrade(conn: sa.Connection) -> None:
    for table in (runs, batches, row_errors, locks):
        table.create(conn, checkfirst=True)
