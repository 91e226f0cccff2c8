"""Customer.io: people, objects and events through the Track API v2 batch, on the HTTP kit.

How a batch maps to Customer.io (``docs/destinations/customerio.md``)::

    people   upsert  POST /api/v2/batch  {"batch": [{"type": "person", "action": "identify", ...}]}
             delete                      {"type": "person", "action": "delete", ...}
    objects  upsert/delete               {"type": "object", "identifiers": {object_type_id, object_id}}
    events   insert                      {"type": "person", "action": "event", "name", "id": ULID}

One request holds at most 500 KB and each item at most 32 KB (``specs/customerio``): the kit
splits a batch to fit and rejects a bigger item before sending. Customer.io answers 200, or
207 with ``errors[{batch_index, reason, field, message}]`` naming the items it refused (the
others are applied). Events carry an ``id`` (a ULID) that Customer.io deduplicates by: a
resend after a crash is dropped.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import orjson
from pydantic import Field, SecretStr

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
    Auth,
    BasicAuth,
    Endpoint,
    HttpConfig,
    HttpDestination,
    Reject,
    envelope,
    errors_by_index,
)
from undertow.destinations.kit.engagement import (
    epoch_seconds,
    event_id,
    events_object,
    is_ulid,
    stable_ulid,
)
from undertow.errors import FatalDeliveryError

BATCH_DOC = "https://docs.customer.io/api/track/#operation/batch"
LIMITS_DOC = "https://docs.customer.io/api/track/#section/Limits"
MAX_REQUEST_BYTES = 500_000
"""A /api/v2/batch request is under 500 KB. BATCH_DOC (specs/customerio)"""
MAX_ITEM_BYTES = 32_000
"""Each item of a batch is at most 32 KB. BATCH_DOC"""
RATE = RateLimit(100, 1.0, LIMITS_DOC)
"""Fair use: 100 requests a second across the Track API (not strictly enforced). LIMITS_DOC"""
BATCH = 1000
"""Items per request: Customer.io states the 500 KB cap, no count; 1,000 is our default."""
KEY_HINT = (
    "check the site_id and the Track API key (Workspace Settings > API Credentials > Track "
    "API keys), and base_url https://track-eu.customer.io for an EU account"
)
PEOPLE = ("id", "email", "cio_id")


class CustomerIOConfig(HttpConfig):
    """``destinations: {cio: {type: customerio, site_id: ..., api_key: "${CIO_API_KEY}"}}``."""

    site_id: str = Field(min_length=1)
    api_key: SecretStr = Field(description="a Track API key")
    base_url: str = "https://track.customer.io"
    """``https://track-eu.customer.io`` for an account in the EU region."""
    batch_size: int = Field(default=BATCH, ge=1, le=10_000)
    max_concurrency: int = Field(default=4, ge=1, le=32)
    object_type_id: str | None = None
    """The object type (``1``, ...) of an ``objects`` sync that does not map it per row."""


def _caps(**extra: Any) -> Capabilities:
    base = Capabilities(
        operations=frozenset({Operation.UPSERT, Operation.DELETE}),
        max_batch_size=BATCH,
        max_concurrency=4,
        rate_limit=RATE,
        per_record_results=True,
        requires_match=True,
        match=MatchRule.exactly_one(*PEOPLE, example="match: {id: customer_id}"),
        max_request_bytes=MAX_REQUEST_BYTES,
        bisect=True,
        docs=(BATCH_DOC, LIMITS_DOC),
        cite={"rate_limit": LIMITS_DOC, "max_request_bytes": BATCH_DOC},
    )
    return replace(base, **extra)


OBJECTS: dict[str, Capabilities] = {
    "people": _caps(),
    "objects": _caps(match=MatchRule.exactly_one("object_id", example="match: {object_id: id}")),
    "events": events_object(
        _caps(),
        event_id="event_id",  # sent as the event's "id" (a person's "id" is an identifier)
    ),
}

BATCH_ENDPOINT = Endpoint(
    "POST",
    "/api/v2/batch",
    body=envelope("batch"),
    read=errors_by_index("errors[*]", index="batch_index", code="reason", message="message"),
    ok=frozenset({200}),
    answers=frozenset({207}),
)


class CustomerIODestination(HttpDestination[CustomerIOConfig]):
    """People, objects and events in a Customer.io workspace."""

    name = "customerio"
    vendor = "Customer.io"
    objects = tuple(OBJECTS)
    fake = "undertow.testing.customerio:CustomerIOFake"
    docs_url = BATCH_DOC
    capabilities = _caps(
        operations=frozenset({Operation.UPSERT, Operation.DELETE, Operation.INSERT})
    )
    object_capabilities: ClassVar[dict[str, Capabilities]] = OBJECTS
    endpoints: ClassVar[dict[Any, Any]] = {
        Operation.UPSERT: BATCH_ENDPOINT,
        Operation.DELETE: BATCH_ENDPOINT,
        Operation.INSERT: BATCH_ENDPOINT,
    }
    auth_hint = KEY_HINT
    demo = DemoProfile(
        destination="""\
type: customerio
site_id: demo-site
api_key: ${FAKE_TOKEN}
base_url: ${FAKE_URL}""",
        sync="""\
object: people
mode: upsert
match: {id: customer_id}
mappings:
  email: email
  first_name: first_name
  last_name: last_name
  plan: plan
  seats: seats
  mrr: mrr
  country: country
  signup_date: signup_date
  recently_viewed: recently_viewed""",
        token="cio-demo-0000-local-fake",
    )

    def make_auth(self) -> Auth:
        return BasicAuth(self.config.site_id, self.config.api_key.get_secret_value())

    def capabilities_for(self, object: str | None) -> Capabilities:
        caps = OBJECTS.get(object or "people", self.capabilities)
        return replace(
            caps,
            max_batch_size=min(caps.max_batch_size, self.config.batch_size),
            max_concurrency=self.config.max_concurrency,
        )

    async def write_batch(self, batch: Batch) -> BatchResult:
        if (batch.object or "people") not in OBJECTS:
            raise self.unknown_object(batch)
        if batch.operation not in OBJECTS[batch.object or "people"].operations:
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: destination {self.instance_name!r} (customerio) cannot "
                f"{batch.operation.value} {batch.object or 'people'}",
                hint="use one of the modes the object takes (docs/destinations/customerio.md)",
            )
        return await super().write_batch(batch)

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        field = next(iter(batch.identifiers), "id")
        object_ = batch.object or "people"
        if object_ == "objects":
            kind_id = record.get("object_type_id") or self.config.object_type_id
            if kind_id in (None, ""):
                return Reject(
                    "no object_type_id: map `object_type_id` or set it on the destination"
                )
            item: dict[str, Any] = {
                "type": "object",
                "identifiers": {"object_type_id": str(kind_id), "object_id": str(key)},
            }
            skip = {"object_type_id", field}
        else:
            item = {"type": "person", "identifiers": {field: key}}
            skip = {field}
        if batch.operation is Operation.DELETE:
            item["action"] = "delete"
        elif object_ == "events":
            name = record.get("name")
            if name in (None, ""):
                return Reject("no `name` for this event: map `name` (Customer.io needs it)")
            given = event_id(batch, index, record, "event_id")
            item.update(
                action="event", name=str(name), id=given if is_ulid(given) else stable_ulid(given)
            )
            if record.get("timestamp") is not None:
                seconds = epoch_seconds(record["timestamp"])
                if seconds is None:
                    return Reject(f"`timestamp` {record['timestamp']!r} is not a timestamp")
                item["timestamp"] = seconds
            skip |= {"name", "event_id", "timestamp"}
            item["attributes"] = {k: v for k, v in record.items() if k not in skip}
        else:
            item["action"] = "identify"
            item["attributes"] = {k: v for k, v in record.items() if k not in skip}
        size = len(orjson.dumps(item))
        if size > MAX_ITEM_BYTES:
            return Reject(
                f"the item is {size:,} bytes, more than Customer.io's {MAX_ITEM_BYTES:,} per "
                f"batch item: {BATCH_DOC}"
            )
        return item

    def shape_raw(
        self, payload: str, *, batch: Batch, key: Any, index: int
    ) -> orjson.Fragment | None:
        """A person's identify or delete spliced from the record's JSON text, the same JSON
        :meth:`shape` makes, when the record does not hold the match field (``shape`` leaves
        it out of the attributes) and the item is clearly under 32 KB; anything else (objects,
        events, a larger item) goes through :meth:`shape`."""
        if (batch.object or "people") != "people":
            return None
        field = next(iter(batch.identifiers), "id")
        head = '{"type":"person","identifiers":' + orjson.dumps({field: key}).decode()
        if batch.operation is Operation.DELETE:
            return orjson.Fragment(head + ',"action":"delete"}')
        if (
            batch.operation is not Operation.UPSERT
            or payload[:1] != "{"
            or f'"{field}"' in payload
            or len(payload) > MAX_ITEM_BYTES // 4  # at most 4 bytes a character: surely under
        ):
            return None
        return orjson.Fragment(f'{head},"action":"identify","attributes":{payload}}}')

    def preview(self, batch: Batch) -> list[Any]:
        return self.shaped_preview(batch)


__all__ = ["CustomerIOConfig", "CustomerIODestination"]
