"""Shared delivery: the mapped batches of each part of a run (``undertow_part_data``), so
that a worker on another machine can send them, and why a part stopped
(``undertow_parts.error``).

Frozen with its own column lists (see ``m0001_initial``).
"""

from __future__ import annotations

import sqlalchemy as sa


def upgrade(conn: sa.Connection) -> None:
    metadata = sa.MetaData()
    sa.Table(
        "undertow_part_data",
        metadata,
        sa.Column("run_id", sa.String(40), primary_key=True),
        sa.Column("part_no", sa.Integer, primary_key=True),
        sa.Column("batches", sa.Integer, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
    ).create(conn, checkfirst=True)
    columns = {c["name"] for c in sa.inspect(conn).get_columns("undertow_parts")}
    if "error" not in columns:
        conn.execute(sa.text("ALTER TABLE undertow_parts ADD COLUMN error TEXT"))
