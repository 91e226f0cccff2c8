"""What the ``Project`` facade returns, typed: every caller (the CLI, the HTTP API, the
scheduler, the orchestrator integrations) crosses this boundary, so type checking stays on
across it.

These are ``TypedDict`` s because they are JSON documents as much as results: ``--json``
prints them and the HTTP API returns them (FastAPI documents them in ``/openapi.json``).
``typing_extensions.TypedDict``: pydantic needs it on Python 3.11.
"""

from __future__ import annotations

from typing_extensions import TypedDict

from undertow.state.records import RowStatusSummary, RunSummary

__all__ = [
    "FieldChange",
    "OldNew",
    "PlanCounts",
    "PlanDocument",
    "ProblemDocument",
    "Rejection",
    "RowStatusSummary",
    "RunSummary",
    "Sample",
    "ScheduleOverview",
    "SyncStatus",
]


class ScheduleOverview(TypedDict):
    """When a sync runs next and how late its data is (``Orchestration.overview``)."""

    schedule: str
    after: list[str]
    waiting_for: list[str]
    """The ``after:`` upstreams not completed since the sync last started."""
    paused: bool
    next_run_at: str | None
    lag_s: float
    last_success_data_at: str | None
    sla_s: float | None
    sla_state: str


class SyncStatus(ScheduleOverview):
    """One sync in ``undertow status`` and ``GET /api/syncs``."""

    sync: str
    model: str
    destination: str
    mode: str
    running: bool
    last_run: RunSummary | None


class ProblemDocument(TypedDict):
    """One problem ``validate`` found, as JSON."""

    file: str | None
    line: int | None
    key: str | None
    message: str


class Sample(TypedDict):
    """One payload ``plan`` shows, as the destination would put it on the wire."""

    operation: str
    key: str
    payload: object


class OldNew(TypedDict):
    old: object
    new: object


class FieldChange(TypedDict):
    """A changed row in ``plan``: its fields that differ, old -> new."""

    key: str
    fields: dict[str, OldNew]
    old_known: bool
    """False for the warehouse engine, which keeps a hash of the accepted values."""


class Rejection(TypedDict):
    """A row ``plan`` found ``run`` would reject, and why."""

    key: str
    reason: str
    kind: str
    """``invalid_key`` (NULL or duplicate primary key), ``mapping`` or ``destination`` (the
    destination's own shaping refuses the record, e.g. a nested object for HubSpot)."""


class PlanCounts(TypedDict):
    extracted: int
    added: int
    changed: int
    removed: int
    unchanged: int
    rejected: int
    to_send: int


class PlanDocument(TypedDict):
    """``undertow plan --json``."""

    sync: str
    mode: str
    destination: str
    kind: str
    """What a record is: ``profiles``, ``membership`` or ``events`` (``Capabilities.kind``)."""
    counts: PlanCounts
    operations: dict[str, str]
    samples: list[Sample]
    changes: list[FieldChange]
    rejected: list[Rejection]
    warnings: list[str]
    """What would stop ``run`` (a delete limit it would refuse)."""
