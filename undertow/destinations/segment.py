"""Segment: identify, group and track calls through the HTTP Tracking API batch, on the kit.

How a batch maps to Segment (``docs/destinations/segment.md``)::

    users   upsert  POST /v1/batch  {"batch": [{"type": "identify", "userId", "traits", "messageId"}]}
    groups  upsert                  {"type": "group", "groupId", "userId", "traits", "messageId"}
    events  insert                  {"type": "track", "userId", "event", "properties",
                                     "timestamp", "messageId"}

``specs/segment/NOTES.md``: HTTP Basic with the source's write key as username; a request
holds at most 500 KB and each message 32 KB (400 above: the kit splits requests to fit and
rejects a bigger message before sending). Segment answers 200 ``{"success": true}`` for
everything else, a wrong write key included (the messages are dropped where no one sees
them), so per-message problems are not reported: the connector refuses what Segment would
drop (no ``userId``/``anonymousId``, a ``track`` without ``event``) before sending.
Segment deduplicates on ``messageId``: an event's is derived from a mapped ``message_id`` or
the row's primary key, a profile's from the row and its values, so a resend after a crash
is dropped and a changed row is a new message.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any, ClassVar

import orjson
from pydantic import Field, SecretStr

from undertow.destinations.base import (
    Batch,
    Capabilities,
    DemoProfile,
    MatchRule,
    Operation,
    RateLimit,
)
from undertow.destinations.kit import (
    Auth,
    BasicAuth,
    Endpoint,
    HttpConfig,
    HttpDestination,
    Reject,
    envelope,
)
from undertow.destinations.kit.engagement import derived_event_id, event_time, events_object
from undertow.errors import FatalDeliveryError
from undertow.redact import register_secret

HTTP_API_DOC = (
    "https://www.twilio.com/docs/segment/connections/sources/catalog/libraries/server/http-api"
)
LIMITS_DOC = "https://www.twilio.com/docs/segment/connections/rate-limits"
MAX_REQUEST_BYTES = 500_000
"""A /v1/batch request holds at most 500 KB. HTTP_API_DOC (specs/segment)"""
MAX_MESSAGE_BYTES = 32_000
"""Each message at most 32 KB. HTTP_API_DOC"""
BATCH = 100
"""Messages per request: Segment states no count, only the 500 KB; 100 is what its own
libraries send."""
RATE = RateLimit(10, 1.0, LIMITS_DOC)
"""1,000 events a second per workspace without prior arrangement (LIMITS_DOC; above it
Segment may queue): 10 requests of 100."""
USERS = ("user_id", "anonymous_id")
WIRE = {"user_id": "userId", "anonymous_id": "anonymousId"}
KEY_HINT = (
    "check the source's write key (Connections > Sources > your HTTP API source > Settings > "
    "API Keys) and base_url https://events.eu1.segmentapis.com for an EU workspace"
)


class SegmentConfig(HttpConfig):
    """``destinations: {seg: {type: segment, write_key: "${SEGMENT_WRITE_KEY}"}}``."""

    write_key: SecretStr = Field(description="an HTTP API source's write key")
    base_url: str = "https://api.segment.io"
    """``https://events.eu1.segmentapis.com`` for an EU workspace (data sent to
    api.segment.io is answered 200 and dropped)."""
    batch_size: int = Field(default=BATCH, ge=1, le=2000)
    max_concurrency: int = Field(default=4, ge=1, le=32)
    requests_per_second: int = Field(default=RATE.requests, ge=1)


def _caps(**extra: Any) -> Capabilities:
    base = Capabilities(
        operations=frozenset({Operation.UPSERT}),
        max_batch_size=BATCH,
        max_concurrency=4,
        rate_limit=RATE,
        per_record_results=False,
        requires_match=True,
        match=MatchRule.exactly_one(*USERS, example="match: {user_id: customer_id}"),
        max_request_bytes=MAX_REQUEST_BYTES,
        bisect=True,
        docs=(HTTP_API_DOC, LIMITS_DOC),
        cite={"rate_limit": LIMITS_DOC, "max_request_bytes": HTTP_API_DOC},
    )
    return replace(base, **extra)


OBJECTS: dict[str, Capabilities] = {
    "users": _caps(),
    "groups": _caps(
        match=MatchRule.exactly_one("group_id", example="match: {group_id: account_id}")
    ),
    "events": events_object(
        _caps(),
        event_id="message_id",
    ),
}

BATCH_ENDPOINT = Endpoint("POST", "/v1/batch", body=envelope("batch"), ok=frozenset({200}))


class SegmentDestination(HttpDestination[SegmentConfig]):
    """Identify, group and track calls into a Segment HTTP API source."""

    name = "segment"
    vendor = "Segment"
    objects = tuple(OBJECTS)
    fake = "undertow.testing.segment:SegmentFake"
    docs_url = HTTP_API_DOC
    capabilities = _caps(operations=frozenset({Operation.UPSERT, Operation.INSERT}))
    object_capabilities: ClassVar[dict[str, Capabilities]] = OBJECTS
    duplicate_keys = True  # a group holds many users; Segment takes any messages
    endpoints: ClassVar[dict[Any, Endpoint]] = {
        Operation.UPSERT: BATCH_ENDPOINT,
        Operation.INSERT: BATCH_ENDPOINT,
    }
    auth_hint = KEY_HINT
    demo = DemoProfile(
        destination="""\
type: segment
write_key: ${FAKE_TOKEN}
base_url: ${FAKE_URL}""",
        sync="""\
object: users
mode: upsert
match: {user_id: customer_id}
mappings:
  email: email
  first_name: first_name
  last_name: last_name
  plan: plan
  seats: seats
  mrr: mrr
  country: country
  signup_date: signup_date""",
        token="seg-demo-0000-local-fake",
    )

    def make_auth(self) -> Auth:
        key = self.config.write_key.get_secret_value()
        register_secret(key)
        return BasicAuth(key, "")

    def capabilities_for(self, object: str | None) -> Capabilities:
        caps = OBJECTS.get(object or "users", self.capabilities)
        return replace(
            caps,
            max_batch_size=min(caps.max_batch_size, self.config.batch_size),
            max_concurrency=self.config.max_concurrency,
            rate_limit=RateLimit(self.config.requests_per_second, 1.0, LIMITS_DOC),
        )

    def endpoint_for(self, batch: Batch) -> Endpoint:
        object_ = batch.object or "users"
        if object_ not in OBJECTS:
            raise self.unknown_object(batch)
        if batch.operation not in OBJECTS[object_].operations:
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: destination {self.instance_name!r} (segment) cannot "
                f"{batch.operation.value} {object_} (the Tracking API only adds messages; "
                "deleting a user is a Segment privacy request)",
                hint="users and groups take upsert, events insert (docs/destinations/segment.md)",
            )
        return BATCH_ENDPOINT

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        object_ = batch.object or "users"
        field = next(iter(batch.identifiers), "user_id")
        if object_ == "groups":
            who = {WIRE[f]: str(record[f]) for f in USERS if record.get(f) not in (None, "")}
            if not who:
                return Reject(
                    "no user_id or anonymous_id for this group row: map `user_id` (Segment "
                    "drops a group call without one)"
                )
            message: dict[str, Any] = {"type": "group", "groupId": str(key), **who}
            message["traits"] = {k: v for k, v in record.items() if k not in {*USERS, field}}
            message["messageId"] = _content_id(batch, index)
        elif object_ == "events":
            name = record.get("event")
            if name in (None, ""):
                return Reject(
                    "no `event` for this row: map `event` (Segment drops a track call without one)"
                )
            message = {"type": "track", WIRE[field]: str(key), "event": str(name)}
            given = record.get("message_id")
            message["messageId"] = (
                str(given) if given not in (None, "") else derived_event_id(batch, index)
            )
            if record.get("timestamp") is not None:
                when = event_time(record["timestamp"])
                if when is None:
                    return Reject(f"`timestamp` {record['timestamp']!r} is not a timestamp")
                message["timestamp"] = when
            skip = {"event", "message_id", "timestamp", *USERS}
            message["properties"] = {k: v for k, v in record.items() if k not in skip}
        else:
            message = {"type": "identify", WIRE[field]: str(key)}
            message["traits"] = {k: v for k, v in record.items() if k not in USERS}
            message["messageId"] = _content_id(batch, index)
        size = len(orjson.dumps(message))
        if size > MAX_MESSAGE_BYTES:
            return Reject(
                f"the message is {size:,} bytes, more than Segment's {MAX_MESSAGE_BYTES:,} per "
                f"message: {HTTP_API_DOC}"
            )
        return message

    def preview(self, batch: Batch) -> list[Any]:
        return self.shaped_preview(batch)


def _content_id(batch: Batch, index: int) -> str:
    """A profile message's id: the same for the same row and values (a resend is dropped),
    new when the row changes (a new message)."""
    text = f"{batch.sync}:{batch.keys[index]}:{batch.payloads[index]}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


__all__ = ["SegmentConfig", "SegmentDestination"]
