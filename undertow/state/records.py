"""What the state store reads and writes, as typed records: runs and their status, counts,
row errors, row statuses, locks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from typing_extensions import TypedDict  # pydantic (FastAPI responses) needs it on 3.11

from undertow.redact import redact

if TYPE_CHECKING:
    from undertow.state.locks import LockStore

LOCK_TTL = timedelta(seconds=60)
"""A lock whose holder has not sent a heartbeat for this long is considered abandoned."""


class RunStatus(StrEnum):
    PENDING = "pending"
    EXTRACTING = "extracting"
    DIFFING = "diffing"
    DELIVERING = "delivering"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    """The freshness check found stale data: nothing was extracted or sent."""

    @property
    def final(self) -> bool:
        return self in (
            RunStatus.SUCCEEDED,
            RunStatus.FAILED,
            RunStatus.CANCELLED,
            RunStatus.SKIPPED,
        )


COUNT_KEYS = (
    "extracted",
    "added",
    "changed",
    "removed",
    "unchanged",
    "invalid",
    "planned",
    "rejected",
    "sent",
    "succeeded",
    "failed",
    "skipped",
    "left",
    "held",
)


def empty_counts() -> dict[str, int]:
    return dict.fromkeys(COUNT_KEYS, 0)


class RunSummary(TypedDict):
    """A run as JSON (``--json``, the HTTP API, alert and ``then:`` webhook bodies)."""

    sync: str
    run_id: str
    status: str
    full: bool
    trigger: str
    extracted: int
    added: int
    changed: int
    removed: int
    unchanged: int
    invalid: int
    planned: int
    rejected: int
    sent: int
    succeeded: int
    failed: int
    skipped: int
    """Updates the destination had no record for (``update`` mode creates none)."""
    left: int
    """State, not this run's work: rows that left the model before this run, in a mode
    that deletes nothing (the run that saw each leave counted it as ``removed``)."""
    left_since: str | None
    """When the first of the ``left`` rows left (ISO time)."""
    held: int
    """State: rows of an ``insert`` sync whose change an earlier run counted (never sent)."""
    state: list[str]
    """``left`` and ``held`` in words (the run page and ``undertow runs`` show them)."""
    started_at: str
    finished_at: str | None
    duration_s: float | None
    attempt: int
    error: str | None
    warning: str | None
    batch_size: int | None
    total_batches: int | None
    stages: dict[str, str]
    """When the run entered each status (ISO times): the run page's timeline."""


class RowStatusSummary(TypedDict):
    """A row waiting to be accepted, as JSON (``undertow errors --sync``, the HTTP API)."""

    sync: str
    key: str
    kind: str
    reason: str
    attempts: int
    first_failed_at: str
    last_failed_at: str
    last_run_id: str
    resolved_at: str | None


@dataclass
class RunRecord:
    id: str
    sync: str
    status: RunStatus
    full_resync: bool
    trigger: str
    counts: dict[str, int]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    batch_size: int | None = None
    total_batches: int | None = None
    attempt: int = 1
    warning: str | None = None
    """Set on a run that succeeded with some rows rejected (below ``max_rejected_ratio``)."""
    stages: dict[str, str] = field(default_factory=dict)
    """When the run entered each status (ISO times), for the run page's timeline."""

    @property
    def left_since(self) -> datetime | None:
        """When the first of the rows counted as ``left`` left the model."""
        since = self.counts.get("left_since")
        return datetime.fromtimestamp(since, UTC) if since and self.counts.get("left") else None

    def state_notes(self) -> list[str]:
        """What the sync holds as state after this run, in words (``undertow runs``)."""
        notes = []
        left, held = self.counts.get("left", 0), self.counts.get("held", 0)
        if left:
            since = self.left_since
            when = f" since {since.date().isoformat()}" if since else ""
            notes.append(
                f"{left:,} row(s) have left the model{when}; the sync's mode deletes "
                "nothing, so they stay in the destination (counted as removed once)"
            )
        if held:
            notes.append(
                f"{held:,} row(s) changed after they were inserted; insert mode sends new "
                "rows only (each change counted once)"
            )
        return notes

    @property
    def duration_s(self) -> float | None:
        end = self.finished_at or self.updated_at
        return (end - self.created_at).total_seconds() if end else None

    def as_dict(self) -> RunSummary:
        count = self.counts.get
        return RunSummary(
            sync=self.sync,
            run_id=self.id,
            status=str(self.status),
            full=self.full_resync,
            trigger=self.trigger,
            extracted=count("extracted", 0),
            added=count("added", 0),
            changed=count("changed", 0),
            removed=count("removed", 0),
            unchanged=count("unchanged", 0),
            invalid=count("invalid", 0),
            planned=count("planned", 0),
            rejected=count("rejected", 0),
            sent=count("sent", 0),
            succeeded=count("succeeded", 0),
            failed=count("failed", 0),
            skipped=count("skipped", 0),
            left=count("left", 0),
            left_since=self.left_since.isoformat() if self.left_since else None,
            held=count("held", 0),
            state=self.state_notes(),
            started_at=self.created_at.isoformat(),
            finished_at=self.finished_at.isoformat() if self.finished_at else None,
            duration_s=round(self.duration_s, 3) if self.duration_s is not None else None,
            attempt=self.attempt,
            error=self.error,
            warning=self.warning,
            batch_size=self.batch_size,
            total_batches=self.total_batches,
            stages=dict(self.stages),
        )


@dataclass
class RowError:
    run_id: str
    sync: str
    row_key: str
    kind: str
    reason: str
    created_at: datetime
    batch_no: int | None = None
    seq: int | None = None
    operation: str | None = None
    first_failed_at: datetime | None = None
    """From the row's history (``undertow_row_status``): when its current run of failures
    began, when it last failed, in how many runs, and when it was accepted (if it was)."""
    last_failed_at: datetime | None = None
    attempts: int | None = None
    resolved_at: datetime | None = None

    def __post_init__(self) -> None:
        # a vendor's answer may echo a credential: never into the state store
        self.reason = redact(self.reason)


@dataclass(frozen=True)
class Checkpoint:
    """One finished batch, as :meth:`~undertow.state.rows.RowStore.checkpoints` records it."""

    batch_no: int
    operation: str
    size: int
    sent: int
    accepted: int
    errors: Sequence[RowError] = ()
    attempts: int = 1
    resolved_keys: Sequence[str] = ()


@dataclass
class RowStatus:
    """One row of a sync that a run did not get accepted, across runs."""

    sync: str
    row_key: str
    first_failed_at: datetime
    last_failed_at: datetime
    attempts: int
    last_kind: str
    last_reason: str
    last_run_id: str
    resolved_at: datetime | None = None

    def as_dict(self) -> RowStatusSummary:
        return RowStatusSummary(
            sync=self.sync,
            key=self.row_key,
            kind=self.last_kind,
            reason=self.last_reason,
            attempts=self.attempts,
            first_failed_at=self.first_failed_at.isoformat(),
            last_failed_at=self.last_failed_at.isoformat(),
            last_run_id=self.last_run_id,
            resolved_at=self.resolved_at.isoformat() if self.resolved_at else None,
        )


@dataclass
class Lock:
    sync: str
    owner: str
    store: LockStore = field(repr=False)

    def heartbeat(self) -> bool:
        """Refresh the lock; False when another process took it over."""
        return self.store.heartbeat(self)

    def release(self) -> None:
        self.store.release_lock(self)


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and use the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
