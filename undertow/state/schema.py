"""The state store's tables as the code reads and writes them now (SQLAlchemy Core).

They change only through numbered migrations, which keep their own frozen copies of the
columns; ``tests/unit/test_migrations.py`` checks that the migrations build exactly these.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

schema_version = sa.Table(
    "undertow_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)

runs = sa.Table(
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
    sa.Column("warning", sa.Text),  # m0002: succeeded, but some rows were rejected
    sa.Column("stages", sa.Text),  # m0004: {"extracting": iso time, ...} as each stage began
    sa.Column("attempt", sa.Integer, nullable=False, default=1),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)

batches = sa.Table(
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
)

row_errors = sa.Table(
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
)

row_status = sa.Table(
    "undertow_row_status",
    metadata,
    # m0002: per (sync, row) history of failures across runs; resolved when later accepted
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

locks = sa.Table(
    "undertow_locks",
    metadata,
    sa.Column("sync", sa.String(200), primary_key=True),
    sa.Column("owner", sa.String(100), nullable=False),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(40)),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    # m0006: the holder's own TTL (NULL: LOCK_TTL) and its worker, for takeover and status
    sa.Column("ttl_seconds", sa.Integer),
    sa.Column("worker", sa.String(200)),
)
