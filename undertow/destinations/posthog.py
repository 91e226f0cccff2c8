"""PostHog: person properties (``$set``) and events through the batch capture endpoint, on the kit.

How a batch maps to PostHog (``docs/destinations/posthog.md``)::

    users   upsert  POST /batch/  {"api_key", "historical_migration", "batch": [{"event": "$set",
                                   "distinct_id", "properties": {"$set": {...}}, "uuid"}]}
    events  insert                {"event", "distinct_id", "properties", "timestamp", "uuid"}

What PostHog's capture service does (``rust/capture`` in PostHog/posthog, cited per fact in
the docs page): it checks only the *shape* of the project API key (empty, over 64 characters,
not ASCII, a personal ``phx_`` key: 401) and answers 200 to any other key, dropping the
events of an unknown one later, where no one sees them. So the connector proves the key
once per instance, before its first batch, on the ``/flags`` endpoint, which looks the key
up (401 for an unknown one). One event without a name or ``distinct_id``, or with a ``uuid``
that is not a UUID, makes the whole request a 400 and nothing of it is ingested: the
connector refuses such rows before sending and bisects a 400 to find any other. A request
holds less than 20 MB and no event may pass ~1 MB (the connector keeps to the 900 KiB of
PostHog's own Python library). The capture endpoints state no rate limit.

Every event carries a ``uuid``: the mapped one (hashed into a UUID when it is not one), else
one derived from the sync and the row's key (profiles: and the row's values), so a batch sent
again after a crash carries the same ids. PostHog collapses events with the same uuid when
ClickHouse merges, which it does not guarantee: ``events_at_most_once`` makes the deliver
stage never resend an in-doubt events batch instead.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any, ClassVar

import orjson
from pydantic import Field, SecretStr

from undertow.destinations import capture
from undertow.destinations._http import dry_run_active
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    DemoProfile,
    MatchRule,
    Operation,
    RateLimit,
)
from undertow.destinations.kit import (
    Call,
    Endpoint,
    HttpConfig,
    HttpDestination,
    Reject,
    accept_all,
)
from undertow.destinations.kit.engagement import derived_event_id, event_time, events_object
from undertow.errors import FatalDeliveryError
from undertow.redact import register_secret

CAPTURE_DOC = "https://posthog.com/docs/api/capture"
API_DOC = "https://posthog.com/docs/api"
FLAGS_DOC = "https://posthog.com/docs/api/flags"
WARNINGS_DOC = "https://posthog.com/docs/data/ingestion-warnings"
CAPTURE_SOURCE = "https://github.com/PostHog/posthog/tree/master/rust/capture/src"
PYTHON_LIB = "https://github.com/PostHog/posthog-python/blob/master/posthog/consumer.py"

MAX_REQUEST_BYTES = 20_000_000
"""A /batch/ body "must be less than 20MB" (CAPTURE_DOC; the service's limit is 20 MiB,
``BATCH_BODY_SIZE`` in CAPTURE_SOURCE router.rs, answered 413 above)."""
MAX_EVENT_BYTES = 900 * 1024
"""PostHog discards events over 1 MB (WARNINGS_DOC); capture refuses a Kafka message over
1,000,000 bytes with the whole request (CAPTURE_SOURCE config.rs, api.rs). 900 KiB is what
PostHog's own Python library keeps to (PYTHON_LIB ``MAX_MSG_SIZE``)."""
BATCH = 1000
"""Events per request: PostHog states no count, only the size (CAPTURE_DOC)."""
MAX_KEY = 64
"""Capture refuses a longer project API key (CAPTURE_SOURCE token.rs)."""
NAMESPACE = uuid.UUID("6f1f5a36-83a2-5b9e-9d0c-2b7f1d4e8a10")
"""Namespace of the uuids derived here (UUIDv5: the same text, the same uuid, in every run)."""
IDENTITY = ("distinct_id",)
KEY_HINT = (
    "use the project API key (Project settings > Project API key, starts with phc_), not a "
    "personal API key (phx_); base_url https://eu.i.posthog.com for an EU Cloud project, or "
    "your instance's address when self-hosted"
)


class PostHogConfig(HttpConfig):
    """``destinations: {ph: {type: posthog, api_key: "${POSTHOG_API_KEY}"}}``."""

    api_key: SecretStr = Field(description="the project API key (phc_...)")
    base_url: str = "https://us.i.posthog.com"
    """``https://eu.i.posthog.com`` for EU Cloud; a self-hosted instance's own address."""
    batch_size: int = Field(default=BATCH, ge=1, le=10_000)
    max_concurrency: int = Field(default=8, ge=1, le=32)
    requests_per_second: int | None = Field(default=None, ge=1)
    """Pacing (none by default: PostHog states no rate limit for capture, API_DOC)."""
    historical_migration: bool = False
    """Send as a historical migration (PostHog asks for it when importing past events: they
    go through its historical pipeline, in order, without spike detection)."""
    verify_key: bool = True
    """Prove the key on ``/flags`` before the first batch (capture itself drops the events
    of an unknown key silently). Costs one flags request per run."""
    events_at_most_once: bool = False
    """Never resend an events batch whose answer a crash lost (PostHog's uuid dedupe is not
    guaranteed, WARNINGS_DOC): such events may be missing instead of counted twice."""


def _caps(**extra: Any) -> Capabilities:
    base = Capabilities(
        operations=frozenset({Operation.UPSERT}),
        max_batch_size=BATCH,
        max_concurrency=8,
        per_record_results=False,
        requires_match=True,
        match=MatchRule.exactly_one(*IDENTITY, example="match: {distinct_id: customer_id}"),
        max_request_bytes=MAX_REQUEST_BYTES,
        max_payload_bytes=MAX_EVENT_BYTES,
        bisect=True,
        docs=(CAPTURE_DOC, API_DOC, WARNINGS_DOC, PYTHON_LIB),
        cite={
            "max_request_bytes": CAPTURE_DOC,
            "max_payload_bytes": WARNINGS_DOC,
            "rate_limit": API_DOC,
        },
    )
    return replace(base, **extra)


OBJECTS: dict[str, Capabilities] = {
    "users": _caps(),
    "events": events_object(_caps(), event_id="uuid"),
}

BATCH_PATH = "/batch/"


class PostHogDestination(HttpDestination[PostHogConfig]):
    """Person properties and events in a PostHog project."""

    name = "posthog"
    vendor = "PostHog"
    objects = tuple(OBJECTS)
    fake = "undertow.testing.posthog:PostHogFake"
    docs_url = CAPTURE_DOC
    capabilities = _caps(operations=frozenset({Operation.UPSERT, Operation.INSERT}))
    object_capabilities: ClassVar[dict[str, Capabilities]] = OBJECTS
    auth_hint = KEY_HINT
    demo = DemoProfile(
        destination="""\
type: posthog
api_key: ${FAKE_TOKEN}
base_url: ${FAKE_URL}""",
        sync="""\
object: users
mode: upsert
match: {distinct_id: customer_id}
mappings:
  email: email
  first_name: first_name
  last_name: last_name
  plan: plan
  seats: seats
  mrr: mrr
  country: country
  signup_date: signup_date""",
        token="phc_demo0000localfake",
    )

    def __init__(self, config: Any, *, name: str) -> None:
        super().__init__(config, name=name)
        self.key = self.config.api_key.get_secret_value()
        register_secret(self.key)  # it travels in every body
        self.batch_endpoint = Endpoint(
            "POST",
            BATCH_PATH,
            body=self._body,
            read=accept_all,  # 200 takes the request whole; a 400/413 names no event: bisect
            ok=frozenset({200}),
        )
        self._verified = not self.config.verify_key
        self._verifying: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    def capabilities_for(self, object: str | None) -> Capabilities:
        caps = OBJECTS.get(object or "users", self.capabilities)
        rate = self.config.requests_per_second
        caps = replace(
            caps,
            max_batch_size=min(caps.max_batch_size, self.config.batch_size),
            max_concurrency=self.config.max_concurrency,
            rate_limit=RateLimit(rate, 1.0, API_DOC) if rate else None,
        )
        if self.config.events_at_most_once and caps.event_id is not None:
            caps = replace(caps, event_id=None)
        return caps

    def endpoint_for(self, batch: Batch) -> Endpoint:
        object_ = batch.object or "users"
        if object_ not in OBJECTS:
            raise self.unknown_object(batch)
        if batch.operation not in OBJECTS[object_].operations:
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: destination {self.instance_name!r} (posthog) cannot "
                f"{batch.operation.value} {object_} (capture only adds events; deleting a "
                "person takes a personal API key and PostHog's private API)",
                hint="users take upsert, events take insert (docs/destinations/posthog.md)",
            )
        return self.batch_endpoint

    # -- the key ------------------------------------------------------------------------------

    async def check(self) -> None:
        await self._verify()

    async def write_batch(self, batch: Batch) -> BatchResult:
        self.endpoint_for(batch)  # refuse a mode before anything is sent
        if not self._verified and not dry_run_active():  # a dry run shows the batch itself
            await self._verify_once()
        return await super().write_batch(batch)

    async def _verify_once(self) -> None:
        loop = asyncio.get_running_loop()
        if self._verifying is None or self._verifying[0] is not loop:
            self._verifying = (loop, asyncio.Lock())
        async with self._verifying[1]:
            if not self._verified:
                await self._verify()

    async def _verify(self) -> None:
        """POST /flags?v=2 (FLAGS_DOC): 200 for a key PostHog knows, 401 for one it does not (FLAGS_DOC;
        capture answers 200 to any well-formed key)."""
        problem = _key_shape(self.key)
        if problem:
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} (posthog): the api_key {problem}, so "
                "PostHog refuses it",
                hint=KEY_HINT,
            )
        body = orjson.dumps({"api_key": self.key, "distinct_id": "undertow-key-check"})
        with capture.context(keys=(), operation="check", batch=None):
            response = await self.send(
                "POST", "/flags", body=body, params={"v": "2"}, expect=frozenset({200})
            )
        if response.status == 200:
            self._verified = True
            return
        raise FatalDeliveryError(
            f"destination {self.instance_name!r} (posthog): the key check on /flags was "
            f"answered {response.describe()}",
            hint="check base_url (the ingestion host, e.g. https://us.i.posthog.com); set "
            "`verify_key: false` for an instance without /flags",
        )

    # -- shapes -------------------------------------------------------------------------------

    def _body(self, call: Call) -> dict[str, Any]:
        return {
            "api_key": self.key,
            "historical_migration": self.config.historical_migration,
            "batch": call.bodies,
        }

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        if (batch.object or "users") == "users":
            properties = {k: v for k, v in record.items() if k not in IDENTITY}
            text = f"{batch.sync}:{batch.keys[index]}:{batch.payloads[index]}"
            event: dict[str, Any] = {
                "event": "$set",
                "distinct_id": str(key),
                "properties": {"$set": properties},
                "uuid": str(uuid.uuid5(NAMESPACE, text)),
            }
        else:
            name = record.get("event")
            if name in (None, "") or isinstance(name, dict | list):
                return Reject(
                    "no `event` for this row: map `event` to the event's name (PostHog refuses "
                    "the whole request for one event without a name)"
                )
            event = {"event": str(name), "distinct_id": str(key)}
            if record.get("timestamp") is not None:
                when = event_time(record["timestamp"])
                if when is None:
                    return Reject(f"`timestamp` {record['timestamp']!r} is not a timestamp")
                event["timestamp"] = when
            skip = {"event", "timestamp", "uuid", *IDENTITY}
            event["properties"] = {k: v for k, v in record.items() if k not in skip}
            event["uuid"] = event_uuid(record.get("uuid"), derived_event_id(batch, index))
        size = len(orjson.dumps(event))
        if size > MAX_EVENT_BYTES:
            return Reject(
                f"the event is {size:,} bytes, more than the {MAX_EVENT_BYTES:,} PostHog's "
                f"libraries send (PostHog discards events over 1 MB): {WARNINGS_DOC}"
            )
        return event

    def preview(self, batch: Batch) -> list[Any]:
        return self.shaped_preview(batch)


def event_uuid(given: Any, derived: str) -> str:
    """The event's ``uuid``: a mapped UUID as it is, any other mapped value hashed into one
    (capture refuses a request holding a uuid that is not a UUID), else one derived from the
    row's key."""
    if given not in (None, "") and not isinstance(given, dict | list | bool):
        try:
            return str(uuid.UUID(str(given)))
        except ValueError:
            return str(uuid.uuid5(NAMESPACE, str(given)))
    return str(uuid.uuid5(NAMESPACE, derived))


def _key_shape(key: str) -> str | None:
    """Why capture refuses this key's shape, or None (CAPTURE_SOURCE token.rs)."""
    key = key.strip()
    if not key:
        return "is empty"
    if len(key) > MAX_KEY:
        return f"is longer than {MAX_KEY} characters"
    if not key.isascii() or "\0" in key:
        return "holds characters PostHog does not accept"
    if key.startswith("phx_"):
        return "is a personal API key (phx_), which capture does not take"
    return None


__all__ = ["PostHogConfig", "PostHogDestination", "event_uuid"]
