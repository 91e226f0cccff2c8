"""What a destination is: a small class with a config, declared capabilities, and a few methods.

A destination module subclasses :class:`Destination` (or the declarative HTTP kit's
:class:`~undertow.destinations.kit.HttpDestination`) parametrised by its pydantic config
model, sets ``name`` and a frozen :class:`Capabilities`, and implements
:meth:`Destination.check` and :meth:`Destination.write_batch`, which returns a result per
record. It registers under the ``undertow.destinations`` entry point group. ``KIT.md`` and
``docs/writing-a-destination.md`` walk through one.

``Destination[MyConfig]`` is generic over its config: the base validates the config into
``MyConfig`` once, so ``self.config`` is typed and no connector checks its config's type.

The pipeline never imports a concrete destination: it reads ``capabilities`` to batch,
pace and plan (:meth:`Capabilities.check_sync` refuses a sync the destination cannot carry
out before anything is sent), and calls ``write_batch`` with a :class:`Batch` of
already-mapped records.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Generic, cast, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from typing_extensions import TypeVar

from undertow.errors import did_you_mean, unknown_name


class RecordKind(StrEnum):
    """What one record of an object is, which decides the modes a sync of it takes.

    ``profiles``: attributes on a person or an object (``upsert``, ``update``, ``mirror``);
    ``membership``: a person in a list or segment (``add``, ``remove``, and ``mirror``: join
    when the row enters the model, leave when it leaves it); ``events``: something that
    happened, immutable (``insert``: each new row is one event, sent once, never again when
    the row changes).
    """

    PROFILES = "profiles"
    MEMBERSHIP = "membership"
    EVENTS = "events"


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
    """At most ``requests`` requests in any rolling window of ``per_seconds`` seconds."""

    requests: int
    per_seconds: float
    doc: str | None = None
    """The vendor page that states this limit."""

    @property
    def rate(self) -> float:
        return self.requests / self.per_seconds


@dataclass(frozen=True)
class MatchRule:
    """How many ``match`` fields a sync needs, and which ones the destination knows.

    ``fields`` None means any field name (e.g. HubSpot's custom unique properties);
    otherwise a ``match`` field outside it is refused with a did-you-mean.
    """

    min_fields: int = 0
    max_fields: int | None = None
    fields: tuple[str, ...] | None = None
    example: str = "match: {email: email}"

    @classmethod
    def exactly_one(cls, *fields: str, example: str = "match: {email: email}") -> MatchRule:
        return cls(1, 1, fields or None, example)


DEFAULT_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Statuses worth retrying by default (singer-sdk's classes, plus 425 Too Early)."""


@dataclass(frozen=True)
class Capabilities:
    """What a destination can do, declared as data. Each limit cites the vendor doc.

    The kit and the pipeline read these; :meth:`check_sync` refuses a sync that breaks
    them before anything is sent, and :meth:`problems` finds declarations that contradict
    themselves (a test runs it over every registered destination).
    """

    operations: frozenset[Operation]
    max_batch_size: int
    """Largest number of records in one request."""
    max_concurrency: int = 4
    """Requests in flight at once, per sync."""
    shared_delivery: bool = True
    """Whether several worker processes (machines) may deliver one run's batches together
    (``executor.delivery_workers``). False where only one process may write at a time: a
    local file, a sheet whose row positions depend on every batch before it."""
    rate_limit: RateLimit | None = None
    """The main rolling-window limit (kept for callers that read one limit)."""
    rate_limits: tuple[RateLimit, ...] = ()
    """Further rolling windows that hold at the same time (e.g. 10/s *and* 150/min)."""
    max_in_flight: int | None = None
    """Requests in flight at once across every sync on the same account (Mailchimp: 10)."""
    per_record_results: bool = False
    """True when the API says which records of a batch failed (else the batch fails whole)."""
    idempotency_key: bool = False
    """True when the destination honours an idempotency key per batch."""
    max_payload_bytes: int | None = None
    """Largest JSON body of one record; bigger records are rejected before sending."""
    max_request_bytes: int | None = None
    """Largest body of one request (the kit splits a batch that would be bigger)."""
    one_per_request: bool = False
    """True when the vendor has no batch endpoint: every write request carries one record
    (Intercom, Stripe, Attio, Pipedrive), so the rate limit is in records, and a batch is
    only the unit of checkpointing and concurrency."""
    requires_match: bool = False
    """True when syncs must name the destination identifier in ``match``."""
    match: MatchRule | None = None
    """The rule for the sync's ``match`` (None: ``requires_match`` alone decides)."""
    match_operations: frozenset[Operation] | None = None
    """Operations that use ``match`` (default: all but insert)."""
    retryable_statuses: frozenset[int] = DEFAULT_RETRYABLE
    """HTTP statuses retried with backoff; 5xx not listed here are retried too."""
    bisect: bool = False
    """True when a whole-batch 4xx that names no record is split to find the bad records."""
    docs: tuple[str, ...] = ()
    """Links to the vendor docs that state the limits above."""
    cite: Mapping[str, str] = field(default_factory=dict)
    """Field name -> the vendor URL that states that limit (``undertow destinations``)."""
    kind: RecordKind = RecordKind.PROFILES
    """What a record of this object is (see :class:`RecordKind`); ``pipeline/plan.py`` turns
    it into the modes a sync may use."""
    event_id: str | None = None
    """On an ``events`` object: the record field the vendor deduplicates events by (a resend
    with the same value is dropped; the connector fills it from the row's primary key when the
    mapping leaves it out). None: the vendor keeps every copy, so the deliver stage marks each
    batch before sending it and never sends again a batch whose answer a crash lost."""

    @property
    def at_most_once(self) -> bool:
        """True when a batch sent twice would be counted twice by the vendor."""
        return self.kind is RecordKind.EVENTS and self.event_id is None

    @property
    def limits(self) -> tuple[RateLimit, ...]:
        """Every rolling window, the main one first."""
        return ((self.rate_limit,) if self.rate_limit else ()) + tuple(self.rate_limits)

    def uses_match(self, operation: Operation) -> bool:
        wanted = self.match_operations
        if wanted is None:
            return operation is not Operation.INSERT
        return operation in wanted

    def check_sync(
        self, *, sync: str, destination: str, match: Mapping[str, str], object: str | None = None
    ) -> None:
        """Raise a ConfigError when the sync's ``match`` breaks the declared rule."""
        from undertow.errors import ConfigError

        rule = self.match or (MatchRule(min_fields=1) if self.requires_match else None)
        if rule is None:
            return
        where = f"sync {sync!r}: destination {destination!r}"
        if object:
            where += f" ({object})"
        count = len(match)
        if count < rule.min_fields or (rule.max_fields is not None and count > rule.max_fields):
            if rule.min_fields == rule.max_fields:
                want = "exactly one" if rule.min_fields == 1 else f"exactly {rule.min_fields}"
            elif rule.max_fields is None:
                want = f"at least {rule.min_fields}"
            else:
                want = f"{rule.min_fields} to {rule.max_fields}"
            got = ", ".join(sorted(match)) or "none"
            raise ConfigError(
                f"{where} needs {want} match field (`match:`) to know which record a row "
                f"is, got {got}",
                key=f"syncs.{sync}.match",
                hint=f"e.g. `{rule.example}` (destination field: model column)",
            )
        if rule.fields is not None:
            for name in match:
                if name not in rule.fields:
                    raise ConfigError(
                        f"{where}: cannot match on "
                        + unknown_name("identifier", name, rule.fields)[len("unknown ") :],
                        key=f"syncs.{sync}.match",
                        hint=f"match on one of {', '.join(rule.fields)}",
                    )

    def problems(self) -> list[str]:
        """Declarations that contradict themselves (empty when coherent)."""
        found: list[str] = []
        if not self.operations:
            found.append("declares no operation")
        if self.max_batch_size < 1:
            found.append(f"max_batch_size {self.max_batch_size} is below 1")
        if self.max_concurrency < 1:
            found.append(f"max_concurrency {self.max_concurrency} is below 1")
        for limit in self.limits:
            if limit.requests < 1 or limit.per_seconds <= 0:
                found.append(f"rate limit {limit} allows nothing")
        bad = sorted(s for s in self.retryable_statuses if s < 400 or s > 599)
        if bad:
            found.append(f"retryable_statuses {bad} are not error statuses")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            found.append("max_in_flight is below 1")
        rule = self.match
        if rule is not None and rule.max_fields is not None and rule.max_fields < rule.min_fields:
            found.append("match rule allows no field count")
        if self.kind is RecordKind.EVENTS and self.operations != {Operation.INSERT}:
            found.append("an events object takes insert only (each new row is sent once)")
        if self.kind is RecordKind.MEMBERSHIP and not {Operation.ADD, Operation.REMOVE} <= set(
            self.operations
        ):
            found.append("a membership object needs add and remove")
        if self.event_id is not None and self.kind is not RecordKind.EVENTS:
            found.append("event_id is declared on an object that does not take events")
        return found


class DestinationConfig(BaseModel):
    """Base of every destination's config model: ``type`` selects the connector."""

    model_config = ConfigDict(extra="forbid")
    type: str
    account: str | None = Field(default=None, min_length=1)
    """Syncs of destinations with the same ``account`` share one rate budget (default: the
    same type, endpoint and credentials)."""
    max_wait: float = Field(default=900.0, gt=0)
    """The longest wait (seconds) Undertow accepts from the vendor (``Retry-After``, a
    rate-limit reset) or from its own backoff; a vendor asking for more ends the run
    ``failed`` with the wait it asked for."""


ConfigT = TypeVar("ConfigT", bound=DestinationConfig, default=DestinationConfig)
"""A destination's config model; bare ``Destination`` means ``Destination[DestinationConfig]``."""


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
    run_id: str | None = None
    """The run that sends the batch (the same after a resume): destinations that derive
    message ids from the run (Redis stream entry ids) read it."""
    full: bool = False
    """True in a ``--full`` run (every row of the model is sent): Facebook replaces an
    audience's members through a session then."""
    sequence: tuple[int, int] | None = None
    """``(n, of)``: this batch is the n-th (from 1) of the run's ``of`` batches of its
    operation, the same after a resume (a vendor session's sequence number and last flag)."""
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

    def subset(self, indices: list[int]) -> Batch:
        """The same batch narrowed to these record indices (in this order)."""
        records = self.records()
        return Batch(
            sync=self.sync,
            operation=self.operation,
            number=self.number,
            idempotency_key=self.idempotency_key,
            keys=[self.keys[i] for i in indices],
            payloads=[self.payloads[i] for i in indices],
            identifiers={f: [v[i] for i in indices] for f, v in self.identifiers.items()},
            object=self.object,
            run_id=self.run_id,
            full=self.full,
            sequence=self.sequence,
            _records=[records[i] for i in indices],
        )


@dataclass
class BatchResult:
    """What happened to each record of a batch, by index in the batch.

    Records in none of ``rejected``, ``failed`` and ``not_found`` were accepted.
    ``rejected``: the destination refused the record (its message); not retried this run.
    ``failed``: a transient failure; the record stays undelivered and the next run retries it.
    ``not_found``: the destination has no record the operation names (HubSpot's
    ``OBJECT_NOT_FOUND``). What that means depends on the operation
    (:func:`undertow.pipeline.record.settle_not_found`): an update's row is *skipped*
    (``update`` mode creates nothing; counted, not retried until the row changes), a
    delete's or remove's is accepted (already gone), any other operation's is rejected.
    """

    rejected: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    not_found: dict[int, str] = field(default_factory=dict)

    @classmethod
    def all_rejected(cls, size: int, reason: str) -> BatchResult:
        return cls(rejected=dict.fromkeys(range(size), reason))

    @classmethod
    def all_failed(cls, size: int, reason: str) -> BatchResult:
        return cls(failed=dict.fromkeys(range(size), reason))

    def accepted(self, size: int) -> int:
        return size - len(self.rejected) - len(self.failed) - len(self.not_found)

    def merge(self, other: BatchResult, indices: list[int]) -> None:
        """Fold the result of a sub-batch (``other``'s index i is this batch's indices[i])."""
        for i, reason in other.rejected.items():
            self.rejected[indices[i]] = reason
        for i, reason in other.failed.items():
            self.failed[indices[i]] = reason
        for i, reason in other.not_found.items():
            self.not_found[indices[i]] = reason


@dataclass(frozen=True)
class Job:
    """A batch an asynchronous API accepted, to be polled for its results.

    ``data`` is what :meth:`Destination.poll_job` needs (the vendor's URLs, sub-ids), kept in
    the state store with the job: JSON-able and never a credential.
    """

    id: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunEnd:
    """A run about to end, as :meth:`Destination.finish_run` sees it.

    ``status`` is the status the run ends with unless ``finish_run`` fails (then it ends
    ``failed``); ``counts`` are the run's counters (``planned``, ``added``, ``changed``,
    ``removed``, ``succeeded``, ``rejected``, ``failed``...).
    """

    sync: str
    run_id: str
    status: str
    counts: Mapping[str, int]
    object: str | None = None


@dataclass(frozen=True)
class DemoProfile:
    """How ``undertow demo --destination TYPE`` syncs the sample customers into this type.

    ``destination`` is the destination block (``${FAKE_URL}`` is the local fake's address,
    ``${FAKE_TOKEN}`` its credential); ``sync`` the sync block without ``model`` and
    ``destination``. The sample model's columns are in ``undertow/samples.py``.
    """

    destination: str
    sync: str
    token: str = "demo-token"
    fake_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the fake (e.g. the limits the demo's destination block uses)."""


class Destination(ABC, Generic[ConfigT]):
    """Base of every destination connector, generic over its config model."""

    name: ClassVar[str]
    Config: ClassVar[type[DestinationConfig]] = DestinationConfig
    """Set from the generic parameter (``Destination[MyConfig]``) unless given."""
    capabilities: ClassVar[Capabilities]
    objects: ClassVar[tuple[str, ...] | None] = None
    """Objects a sync may target (e.g. ``contacts``); None when ``object`` is not used."""
    any_object: ClassVar[bool] = False
    """True when a sync names any object the vendor has (Salesforce sObjects, custom ones
    included): ``object:`` is then required, ``objects`` is not a closed list, and
    :meth:`validate_sync` checks the name against the vendor's metadata."""
    object_pattern: ClassVar[str | None] = None
    """With ``any_object``: the shape of a vendor's own object names (HubSpot's ``p123_cars``
    and ``2-123``). A name that is neither in ``objects`` nor of this shape is refused before
    anything is sent, offline too, with the closest of ``objects``."""
    fake: ClassVar[str | None] = None
    """``module:Class`` of this destination's local fake (``undertow fake TYPE``)."""
    demo: ClassVar[DemoProfile | None] = None
    """How ``undertow demo --destination TYPE`` uses it (None: no demo)."""
    docs_url: ClassVar[str | None] = None
    """The vendor's main API reference (``undertow destinations``)."""
    pii_variant: ClassVar[str | None] = None
    """Whose rules ``normalize:`` fields follow by default (``facebook``, ``google``; None:
    Facebook's, the stricter: see ``pipeline/map/pii.py``)."""
    object_capabilities: ClassVar[Mapping[str, Capabilities]] = {}
    """Capabilities per object where they differ from ``capabilities`` (an email tool's
    ``users`` take profiles, its ``events`` events, its ``lists`` membership): the default
    :meth:`capabilities_for` returns them, ``undertow destinations`` lists them."""
    paces_requests: ClassVar[bool] = False
    """True when the destination paces each request itself (the HTTP kit does): the
    deliver stage then does not pace whole batches on top."""
    sends_http: ClassVar[bool] = False
    """True when every request goes through the shared HTTP client (``_http.HttpClient``):
    ``undertow test --dry-run`` then shows the first request without sending it."""

    async_jobs: ClassVar[bool] = False
    """True when batches go through :meth:`submit_batch` and :meth:`poll_job` (an API that
    accepts a batch now and reports per-record results later) instead of ``write_batch``."""
    poll_interval: float = 2.0
    """Seconds between two polls of a job (a class attribute, or set per instance from the
    destination's config: Salesforce's ``bulk_poll_seconds``, Zendesk's ``poll_seconds``)."""
    job_timeout: ClassVar[float] = 3600.0
    """A job still running after this many seconds stops the run; the next run polls it."""

    base_dir: str = "."
    """The project folder: relative paths in the config resolve against it (set by Project)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" in cls.__dict__:
            return
        for base in getattr(cls, "__orig_bases__", ()):
            for arg in get_args(base):
                if isinstance(arg, type) and issubclass(arg, DestinationConfig):
                    cls.Config = arg
                    return

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        wanted = type(self).Config
        if not isinstance(config, wanted):
            config = wanted.model_validate(config.model_dump(by_alias=True))
        self.config: ConfigT = cast(ConfigT, config)
        self.instance_name = name

    def after_the_rest(self, batch: Batch) -> bool:
        """True when ``batch`` may leave only once every batch sent before it has its answer
        (the last request of a vendor session, such as Facebook's ``last_batch_flag``): the
        deliver stage then waits for the batches in flight first."""
        return False

    def capabilities_for(self, object: str | None) -> Capabilities:
        """Capabilities for one object (override when they differ per object or config)."""
        return self.object_capabilities.get(object or "", self.capabilities)

    def account_key(self) -> str:
        """Which rate budget this destination draws from: ``account:`` if set, else its
        type, endpoint and credentials (hashed: the key never holds a secret)."""
        if self.config.account:
            return f"account:{self.config.account}"
        parts: list[str] = [self.name]
        for key, value in sorted(self.config):
            if isinstance(value, SecretStr):
                parts.append(f"{key}={value.get_secret_value()}")
            elif key in ("base_url", "url", "host", "instance_url", "subdomain", "region"):
                parts.append(f"{key}={value}")
        digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
        return f"{self.name}:{digest}"

    async def open(self) -> None:
        """Open connections (called once before the first batch)."""

    async def close(self) -> None:
        """Release connections (always called, even after a failure)."""

    def preview(self, batch: Batch) -> list[Any]:
        """Each record as the destination would put it on the wire (for ``undertow plan``).

        The default is the mapped record itself; connectors that reshape records (HubSpot's
        ``{"idProperty", "id", "properties"}`` inputs) override it. Sends nothing.
        """
        return list(batch.records())

    def object_name_problem(self, name: str) -> str | None:
        """Why ``name`` cannot be one of this destination's objects, judged from its shape
        alone (``object_pattern``), or None."""
        if not self.any_object or self.object_pattern is None or name in (self.objects or ()):
            return None
        if re.fullmatch(self.object_pattern, name):
            return None
        closest = did_you_mean(name, self.objects or ())
        return f"has no object {name!r}" + (f"; {closest}" if closest else "")

    previews_with_metadata: ClassVar[bool] = False
    """True when :meth:`preview` refuses rows by vendor metadata it reads first
    (:meth:`prepare_preview`): ``undertow plan`` then opens the connection for that read."""

    async def prepare_preview(self, object: str | None, fields: list[str]) -> str | None:
        """Read what :meth:`preview` needs from the vendor (HubSpot: the object's properties,
        so ``plan`` counts rows with an unknown property as rejected). Called by ``undertow
        plan`` with the connection open when ``previews_with_metadata``; may return a warning
        for the plan. Sends no row."""
        return None

    async def validate_sync(
        self,
        *,
        sync: str,
        object: str | None,
        match: Mapping[str, str],
        fields: list[str],
        operations: frozenset[Operation] = frozenset(),
    ) -> list[str]:
        """Problems with a sync found from the vendor's own metadata (``undertow validate``).

        Called with the connection open (after :meth:`check`), once per sync, with the
        mapped field names and the operations the sync's mode plans; the default finds
        none. Salesforce describes the object (unknown fields with a did-you-mean, required
        fields not mapped, a ``match`` field that is not an External ID).
        """
        return []

    @abstractmethod
    async def check(self) -> None:
        """Prove the credentials and endpoint work; raise an UndertowError that says how to fix."""

    async def submit_batch(self, batch: Batch) -> Job | BatchResult:
        """Hand a batch to an asynchronous API: the :class:`Job` to poll, or a result when
        the vendor answered at once (e.g. a batch below a bulk threshold)."""
        return await self.write_batch(batch)

    async def poll_job(self, job: Job, batch: Batch) -> BatchResult | None:
        """The job's per-record results (indexed like ``batch``), or None while it runs.

        May be called in a later process than the one that submitted (after a crash), with
        the same batch rebuilt from the run's plan.
        """
        raise NotImplementedError(f"{type(self).__name__} declares async_jobs but no poll_job")

    finishes_runs: bool = False
    """True when the destination has work to do once a run's batches are all recorded
    (:meth:`finish_run`): publishing a run's files with their manifest, a run's digest."""

    async def finish_run(self, run: RunEnd) -> None:
        """Called once when a run ends (succeeded, failed or cancelled), after every batch it
        sent is recorded, with the destination open; not called while the run stays
        unfinished (a kill -9, a worker handing it back, a vendor job still running): the
        resumed run calls it when it ends. Must be idempotent (a kill -9 during it calls it
        again from the resumed run). An ``UndertowError`` ends the run ``failed`` with it."""

    @abstractmethod
    async def write_batch(self, batch: Batch) -> BatchResult:
        """Send one batch; return a result per record.

        Raise ``RetryableError`` for a transient failure of the whole batch (the pipeline
        retries with backoff), ``FatalDeliveryError`` when no retry can help (the run stops),
        or ``RejectedBatchError`` when the destination refused every record.
        """
