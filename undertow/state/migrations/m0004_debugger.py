"""The live debugger and the run timeline.

- ``undertow_debug_exchanges``: the last requests each sync's destination made and their
  answers (redacted, trimmed, optionally masked), see :mod:`undertow.state.debug_log`.
- ``undertow_runs.stages``: when the run entered each status (JSON), for the run page.

Frozen with its own column lists (see ``m0001_initial``).
"""

from __future__ import annotations

import sqlalchemy as sa


def upgrade(conn: sa.Connection) -> None:
    frozen = sa.MetaData()
    sa.Table(
        "undertow_debug_exchanges",
        frozen,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sync", sa.String(200), nullable=False),
        sa.Column("run_id", sa.String(40)),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("status", sa.Integer),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("request_id", sa.String(200)),
        sa.Column("error", sa.Text),
        sa.Column("batch_no", sa.Integer),
        sa.Column("operation", sa.String(20)),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("key_count", sa.Integer, nullable=False),
        sa.Column("keys", sa.Text, nullable=False),
        sa.Column("request_headers", sa.Text, nullable=False),
        sa.Column("request_body", sa.Text),
        sa.Column("response_headers", sa.Text, nullable=False),
        sa.Column("response_body", sa.Text),
        sa.Column("masked", sa.Boolean, nullable=False, default=False),
        sa.Index("ix_undertow_debug_sync_id", "sync", "id"),
    ).create(conn, checkfirst=True)
    # stores made before m0001 was frozen got this column from the then-current schema
    columns = {c["name"] for c in sa.inspect(conn).get_columns("undertow_runs")}
    if "stages" not in columns:
        conn.execute(sa.text("ALTER TABLE undertow_runs ADD COLUMN stages TEXT"))
