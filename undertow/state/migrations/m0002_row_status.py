"""Rejected-row history and run warnings.

- ``undertow_row_status``: one row per (sync, row key) that a run did not get accepted
  (rejected or failed): first and last failure, attempts, last reason and run; resolved
  when a later run gets the row accepted. Written in the checkpoint's transaction.
- ``undertow_runs.warning``: a run that succeeded with some rows rejected says so here.
"""

from __future__ import annotations

import sqlalchemy as sa

from undertow.state.schema import row_status


def upgrade(conn: sa.Connection) -> None:
    row_status.create(conn, checkfirst=True)
    # m0001 creates tables from the current schema, so a fresh store may have it already
    columns = {c["name"] for c in sa.inspect(conn).get_columns("undertow_runs")}
    if "warning" not in columns:
        conn.execute(sa.text("ALTER TABLE undertow_runs ADD COLUMN warning TEXT"))
