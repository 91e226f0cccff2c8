"""Braze: user attributes, custom events, purchases and subscription groups, on the HTTP kit.

How a batch maps to Braze (``docs/destinations/braze.md`` has the user's view)::

    users                upsert/update  POST /users/track {"attributes": [...]}    75 per request
                         delete         POST /users/delete {"external_ids": [...]} 50 per request
    events               insert         POST /users/track {"events": [...]}        (events)
    purchases            insert         POST /users/track {"purchases": [...]}     (events)
    subscription_groups  add/remove     POST /v2/subscription/status/set           (membership)

Braze answers ``/users/track`` with 201 even when some objects failed: ``errors[]`` names
each by ``index`` in the array sent, and the other objects are applied (the kit's
``errors_by_index``). A whole-request 400 that names no object is bisected. Braze sends no
``Retry-After``: a 429 waits until ``X-RateLimit-Reset`` (epoch seconds), and every answer's
``X-RateLimit-Remaining`` slows the budget down before a 429.

Braze does not deduplicate events or purchases (a resend counts twice), so both objects
declare no ``event_id``: the deliver stage marks each batch before sending it and never
sends again a batch whose answer a crash lost (``pipeline/deliver.py``).

Nested values: an object or a list of objects (``recently_viewed: [{sku, name,
viewed_at}]``) is a Braze nested custom attribute / array of objects; timestamps inside it
go as ``{"$time": ...}`` so Braze types them as times (``nested_time: false`` sends text).
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
    RecordKind,
)
from undertow.destinations.kit import (
    Auth,
    BearerAuth,
    Call,
    Endpoint,
    HttpConfig,
    HttpDestination,
    RateHeaders,
    Reject,
    SlowDown,
    envelope,
    errors_by_index,
)
from undertow.destinations.kit.engagement import (
    by_list,
    chunks,
    event_time,
    events_object,
    parse_time,
)
from undertow.errors import FatalDeliveryError

# -- vendor limits, each next to the doc that states it ------------------------------------

TRACK_DOC = "https://www.braze.com/docs/api/endpoints/user_data/post_user_track/"
DELETE_DOC = "https://www.braze.com/docs/api/endpoints/user_data/post_user_delete/"
LIMITS_DOC = "https://www.braze.com/docs/api/api_limits/"
SUBSCRIPTION_DOC = (
    "https://www.braze.com/docs/api/endpoints/subscription_groups/"
    "post_update_user_subscription_group_status_v2/"
)
ARRAY_DOC = (
    "https://www.braze.com/docs/user_guide/data/activation/custom_data/custom_attributes/"
    "array_of_objects/"
)
NESTED_DOC = (
    "https://www.braze.com/docs/user_guide/data/activation/custom_data/custom_attributes/"
    "nested_custom_attribute_support/"
)

MAX_OBJECTS = 75
"""Objects per /users/track request (75 attributes, events or purchases; newer accounts: 75
across the three arrays, which a batch of one object type meets either way). TRACK_DOC"""
TRACK_RATE = RateLimit(3000, 3.0, LIMITS_DOC)
"""3,000 /users/track requests per 3 seconds per workspace. LIMITS_DOC"""
MAX_DELETE = 50
"""Identifiers per /users/delete request. DELETE_DOC"""
DELETE_RATE = RateLimit(20_000, 60.0, DELETE_DOC)
"""20,000 requests a minute, shared with /users/alias/new, /users/identify, ... DELETE_DOC"""
MAX_SUBSCRIPTION = 50
"""Users per subscription status request. SUBSCRIPTION_DOC"""
SUBSCRIPTION_RATE = RateLimit(5000, 60.0, SUBSCRIPTION_DOC)
"""5,000 requests a minute shared by /subscription/status/set and its v2. SUBSCRIPTION_DOC"""
MAX_REQUEST_BYTES = 4_000_000
"""Any request over 4 MB is refused with 413. TRACK_DOC"""
MAX_ARRAY_BYTES = 100_000
"""An array of objects holds at most 100 KB (Braze drops a bigger update, answering
success). ARRAY_DOC"""

IDENTIFIERS = ("external_id", "user_alias", "braze_id", "email", "phone")
GROUP_IDENTIFIERS = {"external_id": "external_ids", "email": "emails", "phone": "phones"}
DELETE_KEYS = {
    "external_id": "external_ids",
    "user_alias": "user_aliases",
    "braze_id": "braze_ids",
    "email": "email_addresses",
    "phone": "phone_numbers",
}
KEY_HINT = (
    "check the REST API key (Settings > APIs and Identifiers) and its users.track, "
    "users.delete and subscription.status.set permissions, and that base_url is your "
    "instance's REST endpoint (e.g. https://rest.iad-01.braze.com)"
)


class BrazeConfig(HttpConfig):
    """``destinations: {braze: {type: braze, api_key: "${BRAZE_API_KEY}", base_url: ...}}``."""

    api_key: SecretStr = Field(description="a REST API key")
    base_url: str = "https://rest.iad-01.braze.com"
    """Your instance's REST endpoint (``rest.fra-01.braze.eu`` for EU-01, ...)."""
    batch_size: int = Field(default=MAX_OBJECTS, ge=1, le=MAX_OBJECTS)
    max_concurrency: int = Field(default=8, ge=1, le=64)
    rate_limit_per_3s: int = Field(default=TRACK_RATE.requests, ge=1)
    alias_label: str | None = None
    """The alias label when a sync matches on ``user_alias`` (the column is its name)."""
    nested_time: bool = True
    """Send timestamps inside objects as Braze times (``{"$time": ...}``)."""


def _users(**extra: Any) -> Capabilities:
    base = Capabilities(
        operations=frozenset({Operation.UPSERT, Operation.UPDATE, Operation.DELETE}),
        max_batch_size=MAX_OBJECTS,
        max_concurrency=8,
        rate_limit=TRACK_RATE,
        per_record_results=True,
        requires_match=True,
        match=MatchRule.exactly_one(*IDENTIFIERS, example="match: {external_id: customer_id}"),
        bisect=True,
        max_request_bytes=MAX_REQUEST_BYTES,
        docs=(TRACK_DOC, DELETE_DOC, LIMITS_DOC, SUBSCRIPTION_DOC, ARRAY_DOC),
        cite={
            "max_batch_size": TRACK_DOC,
            "rate_limit": LIMITS_DOC,
            "max_request_bytes": TRACK_DOC,
        },
    )
    return replace(base, **extra)


EVENTS = events_object(_users())
OBJECTS: dict[str, Capabilities] = {
    "users": _users(),
    "events": EVENTS,
    "purchases": EVENTS,
    "subscription_groups": _users(
        operations=frozenset({Operation.ADD, Operation.REMOVE}),
        kind=RecordKind.MEMBERSHIP,
        max_batch_size=MAX_SUBSCRIPTION,
        per_record_results=False,
        match=MatchRule.exactly_one(*GROUP_IDENTIFIERS, example="match: {external_id: id}"),
        cite={"max_batch_size": SUBSCRIPTION_DOC, "rate_limit": SUBSCRIPTION_DOC},
    ),
}

SIGNALS = (
    # no Retry-After: wait until X-RateLimit-Reset (UTC epoch seconds)
    SlowDown(wait_header="x-ratelimit-reset", wait_kind="epoch", default_wait=3.0, min_wait=0.5),
)

TRACK = {
    name: Endpoint(
        "POST",
        "/users/track",
        body=envelope(array),
        read=errors_by_index("errors[*]", index="index", code="", message="type"),
        ok=frozenset({200, 201}),
    )
    for name, array in (("users", "attributes"), ("events", "events"), ("purchases", "purchases"))
}


def _time_marked(value: Any, *, top: bool) -> Any:
    """Nested timestamps as ``{"$time": ...}`` (Braze's nested time type)."""
    if isinstance(value, dict):
        return {k: _time_marked(v, top=False) for k, v in value.items()}
    if isinstance(value, list):
        return [_time_marked(v, top=top) if isinstance(v, dict | list) else v for v in value]
    if not top and _looks_like_time(value):
        return {"$time": value}
    return value


def _looks_like_time(value: Any) -> bool:
    """ISO 8601 text (``2026-03-01``, ``2026-03-01T10:00:00+00:00``), not any number."""
    return (
        isinstance(value, str)
        and len(value) >= 10
        and value[4:5] == "-"
        and value[7:8] == "-"
        and parse_time(value) is not None
    )


def _nested_problem(field: str, value: Any) -> str | None:
    """Why Braze would refuse or drop a nested value, or None (NESTED_DOC, ARRAY_DOC)."""
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        size = len(orjson.dumps(value))
        if size > MAX_ARRAY_BYTES:
            return (
                f"field {field!r} is an array of objects of {size:,} bytes, more than Braze's "
                f"{MAX_ARRAY_BYTES:,} (Braze would drop the update): {ARRAY_DOC}"
            )
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, inner in node.items():
                if " " in key:
                    return f"field {field!r} has a nested key with a space ({key!r}): {NESTED_DOC}"
                stack.append(inner)
        elif isinstance(node, list):
            stack.extend(node)
    return None


class BrazeDestination(HttpDestination[BrazeConfig]):
    """Users, events, purchases and subscription groups in a Braze workspace."""

    name = "braze"
    vendor = "Braze"
    objects = tuple(OBJECTS)
    fake = "undertow.testing.braze:BrazeFake"
    docs_url = TRACK_DOC
    capabilities = _users(
        operations=frozenset(
            {
                Operation.UPSERT,
                Operation.UPDATE,
                Operation.DELETE,
                Operation.INSERT,
                Operation.ADD,
                Operation.REMOVE,
            }
        )
    )
    object_capabilities: ClassVar[dict[str, Capabilities]] = OBJECTS
    signals = SIGNALS
    rate_headers = RateHeaders(remaining="x-ratelimit-remaining", reset="x-ratelimit-reset")
    auth_hint = KEY_HINT
    demo = DemoProfile(
        destination="""\
type: braze
api_key: ${FAKE_TOKEN}
base_url: ${FAKE_URL}""",
        sync="""\
object: users
mode: upsert
match: {external_id: customer_id}
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
        token="braze-demo-0000-local-fake",
    )

    def make_auth(self) -> Auth:
        return BearerAuth(self.config.api_key.get_secret_value())

    def capabilities_for(self, object: str | None) -> Capabilities:
        caps = OBJECTS.get(object or "users", self.capabilities)
        track = RateLimit(self.config.rate_limit_per_3s, TRACK_RATE.per_seconds, LIMITS_DOC)
        return replace(
            caps,
            max_batch_size=min(caps.max_batch_size, self.config.batch_size),
            max_concurrency=self.config.max_concurrency,
            rate_limit=track,
        )

    # -- write -----------------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> BatchResult:
        object_ = batch.object or "users"
        if object_ not in OBJECTS:
            raise self.unknown_object(batch)
        field = self.match_field(batch)
        if field == "user_alias" and not self.config.alias_label:
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: destination {self.instance_name!r} matches on "
                "user_alias but has no alias_label; nothing was sent",
                hint="set `alias_label:` in the destination (the label of your aliases)",
            )
        result = BatchResult()
        items = self.items(batch, field, result)
        if not items:
            return result
        call = Call(batch, items, object_, field, self.vendor)
        if object_ == "subscription_groups":
            await self._subscriptions(call, result)
        elif batch.operation is Operation.DELETE:
            await self._delete(call, result)
        else:
            await self.deliver_call(TRACK[object_], call, result)
        return result

    def identifier(self, field: str | None, key: Any) -> dict[str, Any]:
        if field == "user_alias":
            return {"user_alias": {"alias_name": str(key), "alias_label": self.config.alias_label}}
        return {str(field): key}

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        object_ = batch.object or "users"
        field = next(iter(batch.identifiers), None)
        if object_ == "subscription_groups":
            return record
        if batch.operation is Operation.DELETE:
            return {"_alias_label": self.config.alias_label}
        values = dict(record)  # email and phone are standard attributes too
        # only objects and arrays can hold a refused key or a nested time: a scalar (most
        # values of most records) is checked by its type alone
        nested = [k for k, v in values.items() if isinstance(v, dict | list)]
        for name in nested:
            problem = _nested_problem(name, values[name])
            if problem:
                return Reject(problem)
        if self.config.nested_time:
            for name in nested:
                values[name] = _time_marked(values[name], top=True)
        body = self.identifier(field, key)
        if object_ == "users":
            body.update((k, v) for k, v in values.items() if k != field)
            body["_update_existing_only"] = batch.operation is Operation.UPDATE
            return body
        return self._event(object_, values, body, field)

    def shape_raw(
        self, payload: str, *, batch: Batch, key: Any, index: int
    ) -> orjson.Fragment | None:
        """A users upsert/update whose record holds no nested object (no ``{`` past its
        first character: nothing to check or time-mark) and no field the body sets itself:
        the identifier, the record's fields as mapped, the flag, without a round trip
        through Python values (the same JSON :meth:`shape` makes)."""
        if (
            (batch.object or "users") != "users"
            or batch.operation not in (Operation.UPSERT, Operation.UPDATE)
            or payload[:1] != "{"
            or payload[-1:] != "}"
            or payload.find("{", 1) != -1
        ):
            return None
        field = next(iter(batch.identifiers), None)
        if f'"{field}"' in payload or '"_update_existing_only"' in payload:
            return None
        ident = orjson.dumps(self.identifier(field, key)).decode()[:-1]
        fields = payload[1:-1]
        flag = "true" if batch.operation is Operation.UPDATE else "false"
        return orjson.Fragment(
            f'{ident},{fields},"_update_existing_only":{flag}}}'
            if fields
            else f'{ident},"_update_existing_only":{flag}}}'
        )

    def _event(
        self, object_: str, values: dict[str, Any], body: dict[str, Any], field: str | None
    ) -> Any:
        """An event or a purchase: its fields, everything else under ``properties``."""
        when = event_time(values.get("time"))
        if when is None:
            return Reject(
                f"no readable `time` for this {object_[:-1]} (Braze needs when it happened): "
                "map `time` to a timestamp column"
            )
        required: tuple[str, ...] = (
            ("name",) if object_ == "events" else ("product_id", "currency", "price")
        )
        own = required + (("app_id",) if object_ == "events" else ("quantity",))
        for name in required:
            if values.get(name) in (None, ""):
                return Reject(f"no `{name}` for this {object_[:-1]}: map `{name}` (Braze needs it)")
        properties = dict(values.get("properties") or {})
        skip = {*own, "time", "properties", str(field)}
        properties.update((k, v) for k, v in values.items() if k not in skip)
        body.update((k, values[k]) for k in own if values.get(k) is not None)
        body["time"] = when
        if properties:
            body["properties"] = properties
        return body

    def preview(self, batch: Batch) -> list[Any]:
        return self.shaped_preview(batch)

    async def _delete(self, call: Call, result: BatchResult) -> None:
        """POST /users/delete, 50 identifiers a request; unknown users are no error."""
        for part in chunks(call.items, MAX_DELETE):
            await self.deliver_call(DELETE, call.subset(part), result)

    async def _subscriptions(self, call: Call, result: BatchResult) -> None:
        """POST /v2/subscription/status/set per group, 50 users a request."""
        groups = by_list(call.items, "subscription_group_id", result, vendor="Braze")
        for members in groups.values():
            for part in chunks(members, MAX_SUBSCRIPTION):
                await self.deliver_call(SUBSCRIBE, call.subset(part), result)


def _delete_body(call: Call) -> Any:
    field = str(call.match_field)
    if field == "user_alias":
        label = call.items[0].body.get("_alias_label") if call.items else None
        values: list[Any] = [{"alias_name": str(i.key), "alias_label": label} for i in call.items]
    else:
        values = [i.key for i in call.items]
    return {DELETE_KEYS[field]: values}


def _subscription_body(call: Call) -> Any:
    state = "subscribed" if call.batch.operation is Operation.ADD else "unsubscribed"
    group = str(call.items[0].record["subscription_group_id"]) if call.items else ""
    return {
        "subscription_groups": [
            {
                "subscription_group_id": group,
                "subscription_state": state,
                GROUP_IDENTIFIERS[str(call.match_field)]: [i.key for i in call.items],
            }
        ]
    }


OK = frozenset({200, 201})
DELETE = Endpoint("POST", "/users/delete", body=_delete_body, ok=OK, windows=(DELETE_RATE,))
SUBSCRIBE = Endpoint(
    "POST",
    "/v2/subscription/status/set",
    body=_subscription_body,
    ok=OK,
    windows=(SUBSCRIPTION_RATE,),
)


__all__ = ["BrazeConfig", "BrazeDestination"]
