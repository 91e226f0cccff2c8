"""The live debugger and the run timeline.

- ``undertow_debug_exchanges``: the last requests each sync's destination made and their
  answers (redacted, trimmed, optionally masked), see :mod:`undertow.state.debug_log`.
- ``undertow_runs.stages``: when the run entered each status (JSON), for the run page.
"""

from __future__ import annotations

import sqlalchemy as sa

from undertow.state.debug_log import TABLES


def upgrade(conn: sa.Connection) -> None:
    for table in TABLES:
        table.create(conn, checkfirst=True)
    # m0001 creates tables from the current schema, so a fresh store may have it already
    columns = {c["name"] for c in sa.inspect(conn).get_columns("undertow_runs")}
    if "stages" not in columns:
        conn.execute(sa.text("ALTER TABLE undertow_runs ADD COLUMN stages TEXT"))
