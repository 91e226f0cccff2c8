"""The cluster's tables (created by migration ``m0006_cluster``, ``error`` by ``m0007``)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

workers = sa.Table(
    "undertow_workers",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("queues", sa.Text, nullable=False),
    sa.Column("concurrency", sa.Integer, nullable=False),
    sa.Column("version", sa.String(40), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("metrics_url", sa.String(400)),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("stopped_at", sa.DateTime(timezone=True)),
)

tasks = sa.Table(
    "undertow_tasks",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("sync", sa.String(200), nullable=False, index=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("full_resync", sa.Boolean, nullable=False),
    sa.Column("trigger", sa.String(40), nullable=False),
    sa.Column("state", sa.String(20), nullable=False, index=True),
    sa.Column("run_id", sa.String(40)),
    sa.Column("part_no", sa.Integer),
    sa.Column("worker", sa.String(200)),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reserved_by", sa.String(200)),
    sa.Column("reserved_at", sa.DateTime(timezone=True)),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("result", sa.Text),
)

leases = sa.Table(
    "undertow_leases",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("ttl_seconds", sa.Integer, nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
)

parts = sa.Table(
    "undertow_parts",
    metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("part_no", sa.Integer, primary_key=True),
    sa.Column("first_batch", sa.Integer, nullable=False),
    sa.Column("last_batch", sa.Integer, nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("owner", sa.String(200)),
    sa.Column("worker", sa.String(200)),
    sa.Column("ttl_seconds", sa.Integer),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("error", sa.Text),  # m0007: why the part stopped (state ``failed``)
)

part_data = sa.Table(
    "undertow_part_data",
    metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("part_no", sa.Integer, primary_key=True),
    sa.Column("batches", sa.Integer, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
)

TABLES = (workers, tasks, leases, parts, part_data)
