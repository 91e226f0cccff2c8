"""What every message-broker destination shares (RabbitMQ, NATS JetStream, Redis Streams, MQTT).

A batch becomes messages: one per record (``message: record``, the default) or one per batch
(``message: batch``; records whose address differs go in separate messages). Each message has

* a body in JSON, spliced from the records' JSON texts (never re-encoded)::

      {"sync": "users_out", "operation": "upsert", "key": "42", "record": {...}}
      {"sync": "users_out", "operation": "upsert", "batch": 3, "keys": [...], "records": [...]}

* an **id stable across resends**: ``<run>-<batch>:<row key>`` per record, ``<run>-<batch>``
  per batch (the batch's idempotency key). JetStream deduplicates on it (``Nats-Msg-Id``);
  the other brokers carry it for consumers (``message_id``, a field, a user property);
* an **address** (routing key, subject, topic) from a template over ``{operation}``,
  ``{sync}``, ``{key}``, ``{object}`` and the record's own fields, e.g.
  ``routing_key: "users.{plan}"``: the routing key from a column.

The invariant: a record counts as accepted only once the broker confirmed the message that
carries it (a publisher confirm, a JetStream ack, an XADD reply, a PUBACK). A message the
broker refuses rejects its records with the broker's words; one whose confirmation did not
come leaves its records failed (resent by the next run). A lost connection fails the whole
batch as retryable, so the deliver stage sends it again: a kill -9 or a lost connection
duplicates at most the batches in flight, and none where the broker deduplicates by id.

Every batch is reported to :mod:`undertow.destinations.capture` as one exchange (method
``PUBLISH``, the broker's address and the message address, the bodies, redacted), so the
live debugger sees queues like HTTP destinations.
"""

from __future__ import annotations

import string
import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field

from undertow.destinations import capture
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    ConfigT,
    Destination,
    DestinationConfig,
    Operation,
)
from undertow.errors import ConfigError

OPERATIONS = frozenset({Operation.UPSERT, Operation.INSERT, Operation.UPDATE, Operation.DELETE})
BUILTINS = ("operation", "sync", "key", "object")


class QueueConfig(DestinationConfig):
    """Keys every broker destination takes."""

    message: Literal["record", "batch"] = "record"
    """One message per record, or one message per batch (per address)."""
    batch_size: int = Field(default=1000, ge=1, le=10_000)
    """Records per batch: the unit that is confirmed, checkpointed and at most resent."""
    timeout: float = Field(default=30.0, gt=0)
    """Seconds to wait for the broker's confirmations of one batch."""


@dataclass
class Message:
    id: str
    address: str
    body: bytes
    indices: list[int]
    """The batch's records this message carries."""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Refused:
    """The broker refused the message: its records are rejected with this reason."""

    reason: str


@dataclass(frozen=True)
class Unconfirmed:
    """No confirmation came: its records are failed (undelivered, resent next run)."""

    reason: str


Outcome = Refused | Unconfirmed | None
"""What became of one message; None means confirmed."""


class Address:
    """An address template: literal text and ``{name}`` placeholders, checked at load time."""

    def __init__(
        self,
        template: str,
        *,
        key: str,
        destination: str,
        forbidden: str = "",
        allow_empty: bool = True,
    ) -> None:
        self.template = template
        self.key = key
        self.forbidden = forbidden
        self.allow_empty = allow_empty
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ConfigError(
                f"destination {destination!r}: `{key}` {template!r} is not a valid template "
                f"({exc})",
                key=f"destinations.{destination}.{key}",
                hint="write placeholders as {field}, e.g. users.{operation}; double braces "
                "{{ }} for literal ones",
            ) from None
        self.parts: list[tuple[str, str | None]] = []
        for literal, name, spec, conversion in parts:
            if spec or conversion:
                raise ConfigError(
                    f"destination {destination!r}: `{key}` {template!r}: placeholders take no "
                    "format spec or conversion",
                    key=f"destinations.{destination}.{key}",
                    hint="write {field} alone",
                )
            if name == "":
                raise ConfigError(
                    f"destination {destination!r}: `{key}` {template!r} has an empty {{}}",
                    key=f"destinations.{destination}.{key}",
                    hint="name a field: {operation}, {sync}, {key}, {object} or a mapped field",
                )
            self.parts.append((literal, name))
        self.static = all(name is None for _, name in self.parts)
        self.fields = [n for _, n in self.parts if n is not None and n not in BUILTINS]
        self.needs_record = bool(self.fields)

    def render(self, batch: Batch, index: int, record: dict[str, Any] | None) -> str:
        """The address of one record; raises ValueError with the reason it cannot be built."""
        out: list[str] = []
        for literal, name in self.parts:
            out.append(literal)
            if name is None:
                continue
            if name == "operation":
                value: Any = batch.operation.value
            elif name == "sync":
                value = batch.sync
            elif name == "key":
                value = batch.keys[index]
            elif name == "object":
                value = batch.object or ""
            else:
                if record is None or name not in record:
                    raise ValueError(
                        f"field {name!r} (used in `{self.key}` {self.template!r}) is not in "
                        "the record; map it in the sync's mappings"
                    )
                value = record[name]
                if value is None or isinstance(value, dict | list):
                    what = "null" if value is None else "not a scalar"
                    raise ValueError(
                        f"field {name!r} (used in `{self.key}` {self.template!r}) is {what}"
                    )
            text = str(value).lower() if isinstance(value, bool) else str(value)
            bad = sorted({c for c in text if c in self.forbidden or c.isspace()})
            if bad or (not text and not self.allow_empty):
                raise ValueError(
                    f"{name!r} value {text!r} cannot be part of `{self.key}` "
                    + (f"(it holds {' '.join(map(repr, bad))})" if bad else "(it is empty)")
                )
            out.append(text)
        return "".join(out)


def record_body(batch: Batch, index: int) -> bytes:
    return (
        b'{"sync":'
        + orjson.dumps(batch.sync)
        + b',"operation":"'
        + batch.operation.value.encode()
        + b'","key":'
        + orjson.dumps(batch.keys[index])
        + b',"record":'
        + batch.payloads[index].encode()
        + b"}"
    )


def batch_body(batch: Batch, indices: Sequence[int]) -> bytes:
    return (
        b'{"sync":'
        + orjson.dumps(batch.sync)
        + b',"operation":"'
        + batch.operation.value.encode()
        + b'","batch":'
        + str(batch.number).encode()
        + b',"keys":'
        + orjson.dumps([batch.keys[i] for i in indices])
        + b',"records":['
        + ",".join(batch.payloads[i] for i in indices).encode()
        + b"]}"
    )


class QueueDestination(Destination[ConfigT]):
    """Base of the broker destinations: messages out, confirmations back, per record."""

    verb: ClassVar[str] = "PUBLISH"
    """The capture hook's method for a batch (``PUBLISH``, ``XADD``)."""
    address_key: ClassVar[str]
    """The config key holding the address template (``routing_key``, ``subject``...)."""
    forbidden: ClassVar[str] = ""
    """Characters a field value may not bring into an address (NATS: ``.*>``)."""
    allow_empty: ClassVar[bool] = True
    """Whether a field may put an empty value in the address (a NATS token may not)."""
    concurrency: ClassVar[int] = 4
    deduplicates: ClassVar[bool] = False
    """True when the broker drops a message whose id it has seen (JetStream)."""

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        super().__init__(config, name=name)
        self.address = Address(
            self.address_template(),
            key=self.address_key,
            destination=name,
            forbidden=self.forbidden,
            allow_empty=self.allow_empty,
        )

    @property
    def queue_config(self) -> QueueConfig:
        assert isinstance(self.config, QueueConfig)
        return self.config

    def address_template(self) -> str:
        return str(getattr(self.config, self.address_key))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "capabilities" not in cls.__dict__:  # declared as data, from the class facts
            cls.capabilities = Capabilities(
                operations=OPERATIONS,
                max_batch_size=1000,  # the default `batch_size` (up to 10,000)
                max_concurrency=cls.concurrency,
                per_record_results=True,
                idempotency_key=cls.deduplicates,
                docs=(cls.docs_url,) if cls.docs_url else (),
            )

    def capabilities_for(self, object: str | None) -> Capabilities:
        from dataclasses import replace

        return replace(self.capabilities, max_batch_size=self.queue_config.batch_size)

    def where(self) -> str:
        return f"{self.name} destination {self.instance_name!r}"

    # -- what a broker module implements ---------------------------------------------------

    @abstractmethod
    def endpoint(self) -> str:
        """``scheme://host:port/...`` of the broker, without credentials (for the capture)."""

    @abstractmethod
    async def publish(self, batch: Batch, messages: list[Message]) -> list[Outcome]:
        """Send the messages and wait for the broker's word on each (in order).

        Raise ``RetryableError`` when the connection is lost (the batch is sent again),
        ``FatalDeliveryError`` when no retry can help (bad credentials, missing exchange)."""

    def max_message_bytes(self) -> int | None:
        """The broker's largest message (None: unknown); bigger messages are rejected unsent."""
        return None

    # -- the shared part -------------------------------------------------------------------

    def messages(self, batch: Batch) -> tuple[list[Message], dict[int, str]]:
        """The batch's messages, and the records refused before sending (index -> reason)."""
        rejected: dict[int, str] = {}
        address = self.address
        records = batch.records() if address.needs_record else None
        addresses: list[str | None] = []
        for index in range(len(batch)):
            try:
                addresses.append(
                    address.render(batch, index, records[index] if records is not None else None)
                )
            except ValueError as exc:
                rejected[index] = f"no {self.address_key} for this record: {exc}"
                addresses.append(None)
        headers = {"undertow-sync": batch.sync, "undertow-batch": batch.idempotency_key}
        messages: list[Message] = []
        if self.queue_config.message == "record":
            for index, target in enumerate(addresses):
                if target is None:
                    continue
                messages.append(
                    Message(
                        id=f"{batch.idempotency_key}:{batch.keys[index]}",
                        address=target,
                        body=record_body(batch, index),
                        indices=[index],
                        headers={**headers, "undertow-operation": batch.operation.value},
                    )
                )
        else:
            groups: dict[str, list[int]] = {}
            for index, target in enumerate(addresses):
                if target is not None:
                    groups.setdefault(target, []).append(index)
            for number, (target, indices) in enumerate(groups.items()):
                suffix = f":{number}" if number else ""
                messages.append(
                    Message(
                        id=f"{batch.idempotency_key}{suffix}",
                        address=target,
                        body=batch_body(batch, indices),
                        indices=indices,
                        headers={**headers, "undertow-operation": batch.operation.value},
                    )
                )
        limit = self.max_message_bytes()
        if limit is not None:
            kept: list[Message] = []
            for message in messages:
                if len(message.body) > limit:
                    reason = (
                        f"the message is {len(message.body):,} bytes, over the broker's limit "
                        f"of {limit:,}; lower batch_size or send a message per record"
                    )
                    rejected.update(dict.fromkeys(message.indices, reason))
                else:
                    kept.append(message)
            messages = kept
        return messages, rejected

    async def write_batch(self, batch: Batch) -> BatchResult:
        messages, rejected = self.messages(batch)
        result = BatchResult(rejected=rejected)
        if not messages:
            return result
        started = time.time()
        try:
            outcomes = await self.publish(batch, messages)
        except Exception as exc:
            self._emit(batch, messages, started, error=str(exc))
            raise
        for message, outcome in zip(messages, outcomes, strict=True):
            if isinstance(outcome, Refused):
                result.rejected.update(dict.fromkeys(message.indices, outcome.reason))
            elif isinstance(outcome, Unconfirmed):
                result.failed.update(dict.fromkeys(message.indices, outcome.reason))
        self._emit(batch, messages, started, result=result)
        return result

    def _emit(
        self,
        batch: Batch,
        messages: list[Message],
        started: float,
        *,
        result: BatchResult | None = None,
        error: str | None = None,
    ) -> None:
        if not capture.active():
            return
        first = messages[0].address
        answer = None
        if result is not None:
            size = len(batch)
            answer = (
                f"confirmed {result.accepted(size)}, rejected {len(result.rejected)}, "
                f"failed {len(result.failed)}"
            )
            reasons = list(result.rejected.values())[:1] + list(result.failed.values())[:1]
            if reasons:
                answer += ": " + "; ".join(reasons)
        capture.emit(
            method=self.verb,
            url=f"{self.endpoint().rstrip('/')}/{first}",
            started_at=started,
            request_headers={"messages": str(len(messages))},
            request_body=b"\n".join(m.body for m in messages[:200]),
            status=None if error else 200,
            response_body=answer,
            error=error,
        )
