"""What a destination is: a small class with a config, declared capabilities, and a few methods.

A destination module subclasses :class:`Destination`, sets ``name``, a pydantic ``Config``
(secrets as ``SecretStr``) and a frozen :class:`Capabilities`, and implements
:meth:`Destination.check` and :meth:`Destination.write_batch`, which returns a result per
record. It registers under the ``undertow.destinations`` entry point group.

The pipeline never imports a concrete destination: it reads ``capabilities`` to batch,
pace and plan, and calls ``write_batch`` with a :class:`Batch` of already-mapped records.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict


class Operation(StrEnum):
    """What a batch asks the destination to do with its records."""

    UPSERT = "upsert"
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    ADD = "add"
    REMOVE = "remove"


@dataclass(frozen=True)
class RateLimit:
    """At most ``requests`` requests every ``per_seconds`` seconds (a token bucket)."""

    requests: int
    per_seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.per_seconds


@dataclass(frozen=True)
class Capabilities:
    """What a destination can do, declared as data. Each limit cites the vendor doc."""

    operations: frozenset[Operation]
    max_batch_size: int
    """Largest number of records in one request."""
    max_concurrency: int = 4
    """Requests in flight at once."""
    rate_limit: RateLimit | None = None
    per_record_results: bool = False
    """True when the API says which records of a batch failed (else the batch fails whole)."""
    idempotency_key: bool = False
    """True when the destination honours an idempotency key per batch."""
    max_payload_bytes: int | None = None
    """Largest JSON body of one record; bigger records are rejected before sending."""
    requires_match: bool = False
    """True when syncs must name the destination identifier in ``match``."""
    docs: tuple[str, ...] = ()
    """Links to the vendor docs that state the limits above."""


class DestinationConfig(BaseModel):
    """Base of every destination's config model: ``type`` selects the connector."""

    model_config = ConfigDict(extra="forbid")
    type: str


@dataclass
class Batch:
    """Mapped records of one operation, ready to send.

    ``payloads`` holds each record's mapped fields as JSON text (built columnar, see
    ``pipeline/map.py``); ``records()`` parses them when a connector needs Python values.
    ``identifiers`` maps each destination identifier field (the sync's ``match``) to its values.
    """

    sync: str
    operation: Operation
    number: int
    idempotency_key: str
    keys: list[str]
    payloads: list[str]
    identifiers: dict[str, list[Any]] = field(default_factory=dict)
    object: str | None = None
    _records: list[dict[str, Any]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.payloads)

    def records(self) -> list[dict[str, Any]]:
        """The mapped records as dicts (parsed once, cached)."""
        if self._records is None:
            self._records = [orjson.loads(p) for p in self.payloads]
        return self._records

    def json_array(self) -> bytes:
        """The records as one JSON array, without re-encoding them."""
        return b"[" + ",".join(self.payloads).encode() + b"]"


@dataclass
class BatchResult:
    """What happened to each record of a batch, by index in the batch.

    Records in neither ``rejected`` nor ``failed`` were accepted.
    ``rejected``: the destination refused the record (its message); not retried this run.
    ``failed``: a transient failure; the record stays undelivered and the next run retries it.
    """

    rejected: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)

    @classmethod
    def all_rejected(cls, size: int, reason: str) -> BatchResult:
        return cls(rejected=dict.fromkeys(range(size), reason))

    @classmethod
    def all_failed(cls, size: int, reason: str) -> BatchResult:
        return cls(failed=dict.fromkeys(range(size), reason))

    def accepted(self, size: int) -> int:
        return size - len(self.rejected) - len(self.failed)


class Destination(ABC):
    """Base of every destination connector."""

    name: ClassVar[str]
    Config: ClassVar[type[DestinationConfig]]
    capabilities: ClassVar[Capabilities]
    objects: ClassVar[tuple[str, ...] | None] = None
    """Objects a sync may target (e.g. ``contacts``); None when ``object`` is not used."""

    base_dir: str = "."
    """The project folder: relative paths in the config resolve against it (set by Project)."""

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        self.config = config
        self.instance_name = name

    def capabilities_for(self, object: str | None) -> Capabilities:
        """Capabilities for one object (override when they differ per object or config)."""
        return self.capabilities

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Open connections (called once before the first batch)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (always called, even after a failure)."""

    def preview(self, batch: Batch) -> list[Any]:
        """Each record as the destination would put it on the wire (for ``undertow plan``).

        The default is the mapped record itself; connectors that reshape records (HubSpot's
        ``{"idProperty", "id", "properties"}`` inputs) override it. Sends nothing.
        """
        return list(batch.records())

    @abstractmethod
    async def check(self) -> None:
        """Prove the credentials and endpoint work; raise an UndertowError that says how to fix."""

    @abstractmethod
    async def write_batch(self, batch: Batch) -> BatchResult:
        """Send one batch; return a result per record.

        Raise ``RetryableError`` for a transient failure of the whole batch (the pipeline
        retries with backoff), ``FatalDeliveryError`` when no retry can help (the run stops),
        or ``RejectedBatchError`` when the destination refused every record.
        """
