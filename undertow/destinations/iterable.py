"""Iterable: users (bulk update, delete), list membership and bulk events, on the HTTP kit.

How a batch maps to Iterable (``docs/destinations/iterable.md`` has the user's view)::

    users         upsert  POST /api/users/bulkUpdate {"users": [...]}         4 MB, 5 req/s
                  delete  DELETE /api/users/{email} | /api/users/byUserId/{id}   one per record
    list_members  add     POST /api/lists/subscribe {"listId", "subscribers"}
                  remove  POST /api/lists/unsubscribe {"listId", "subscribers"}
    events        insert  POST /api/events/trackBulk {"events": [...]}        10 req/s

Iterable answers 200 with per-record failures as *lists of identifiers by reason*
(``failedUpdates.invalidEmails``, ``notFoundUserIds``, ..., and ``invalidEmails`` on list
calls), not indexes: each value names its row. Its 429 says when to come back in the body
(``params.rateLimitReset``, seconds), not in a header. Each endpoint has its own limit.

Events carry an ``id``: "if an event exists with that id, the event will be updated", so a
resend after a crash does not add an event (mapped, or derived from the row's primary key).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar
from urllib.parse import quote

from pydantic import Field, SecretStr

from undertow.destinations._http import Response
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
    Call,
    Endpoint,
    HeaderAuth,
    HttpConfig,
    HttpDestination,
    Reject,
    SlowDown,
    envelope,
    first_at,
    values_at,
)
from undertow.destinations.kit.engagement import by_list, epoch_seconds, event_id, events_object
from undertow.errors import RejectedBatchError
from undertow.redact import trim

# -- vendor limits, each next to the doc that states it ------------------------------------

API_DOC = "https://api.iterable.com/api/docs"
BULK_UPDATE_DOC = "https://api.iterable.com/api/docs#users_bulkUpdateUser"
TRACK_BULK_DOC = "https://api.iterable.com/api/docs#events_trackBulk"
LISTS_DOC = "https://api.iterable.com/api/docs#lists_subscribe"
DELETE_DOC = "https://api.iterable.com/api/docs#users_delete"
LIMITS_DOC = (
    "https://support.iterable.com/hc/en-us/articles/204780579-API-Overview-and-Sample-Payloads"
)

MAX_REQUEST_BYTES = 4_000_000
"""bulkUpdate: a request body of at most 4 MB (specs/iterable NOTES). BULK_UPDATE_DOC"""
BULK_UPDATE_RATE = RateLimit(5, 1.0, BULK_UPDATE_DOC)
"""users/bulkUpdate: 5 requests a second per project. BULK_UPDATE_DOC"""
TRACK_BULK_RATE = RateLimit(10, 1.0, TRACK_BULK_DOC)
"""events/trackBulk: 10 requests a second per project. TRACK_BULK_DOC"""
DELETE_RATE = RateLimit(100, 1.0, DELETE_DOC)
"""DELETE /api/users/...: 100 requests a second per project (specs/iterable NOTES)."""
LIST_RATE = RateLimit(25, 1.0, LISTS_DOC)
"""lists/subscribe and unsubscribe: Iterable's reference states no rate; 25 a second is our
conservative default (``list_rate_per_second``), not a documented figure."""
BATCH = 1000
"""Users, subscribers or events per request: Iterable states a 4 MB body, no count; 1,000 is
our default (``batch_size``), the body is split to fit 4 MB."""

IDENTIFIERS = ("email", "userId")
KEY_HINT = (
    "check the API key (Integrations > API Keys): it must be a server-side key of the "
    "project, and base_url https://api.eu.iterable.com for an EU project"
)
REASONS = {
    "invalidEmails": "invalid email",
    "invalidUserIds": "invalid userId",
    "notFoundEmails": "no user with this email",
    "notFoundUserIds": "no user with this userId",
    "forgottenEmails": "the user was forgotten (GDPR)",
    "forgottenUserIds": "the user was forgotten (GDPR)",
    "conflictEmails": "the email belongs to another user",
    "conflictUserIds": "the userId belongs to another user",
    "invalidDataEmails": "invalid data fields",
    "invalidDataUserIds": "invalid data fields",
}


class IterableConfig(HttpConfig):
    """``destinations: {iterable: {type: iterable, api_key: "${ITERABLE_API_KEY}"}}``."""

    api_key: SecretStr = Field(description="a server-side API key")
    base_url: str = "https://api.iterable.com"
    """``https://api.eu.iterable.com`` for a project in Iterable's EU data center."""
    batch_size: int = Field(default=BATCH, ge=1, le=10_000)
    max_concurrency: int = Field(default=4, ge=1, le=32)
    merge_nested_objects: bool = False
    """bulkUpdate ``mergeNestedObjects``: merge nested objects instead of replacing them."""
    list_rate_per_second: int = Field(default=LIST_RATE.requests, ge=1)


def _caps(**extra: Any) -> Capabilities:
    base = Capabilities(
        operations=frozenset({Operation.UPSERT, Operation.DELETE}),
        max_batch_size=BATCH,
        max_concurrency=4,
        rate_limit=BULK_UPDATE_RATE,
        per_record_results=True,
        requires_match=True,
        match=MatchRule.exactly_one(*IDENTIFIERS, example="match: {email: email}"),
        max_request_bytes=MAX_REQUEST_BYTES,
        bisect=True,
        docs=(API_DOC, BULK_UPDATE_DOC, TRACK_BULK_DOC, LISTS_DOC, LIMITS_DOC),
        cite={
            "rate_limit": BULK_UPDATE_DOC,
            "max_request_bytes": BULK_UPDATE_DOC,
        },
    )
    return replace(base, **extra)


OBJECTS: dict[str, Capabilities] = {
    "users": _caps(),
    "list_members": _caps(
        operations=frozenset({Operation.ADD, Operation.REMOVE}),
        kind=RecordKind.MEMBERSHIP,
        rate_limit=LIST_RATE,
        cite={"rate_limit": LISTS_DOC},
    ),
    "events": events_object(
        _caps(),
        event_id="id",
        rate_limit=TRACK_BULK_RATE,
        cite={"rate_limit": TRACK_BULK_DOC},
    ),
}


def read_failed(call: Call, response: Response, body: Any) -> BatchResult:
    """Per-record failures named by value in lists by reason; a 4xx refuses the request."""
    if 400 <= response.status < 500:
        message = first_at(body, "msg") if isinstance(body, dict) else None
        code = first_at(body, "code") if isinstance(body, dict) else None
        text = f"Iterable {code}: {message}" if message else f"Iterable: {response.describe()}"
        raise RejectedBatchError(trim(text, 500))
    if not isinstance(body, dict):
        return BatchResult.all_failed(
            len(call.items), f"Iterable's answer is not JSON: {response.describe()}"
        )
    by_value = {str(i.key).casefold(): p for p, i in enumerate(call.items) if i.key is not None}
    result = BatchResult()
    for where in ("failedUpdates", ""):
        source = body.get(where) if where else body
        if not isinstance(source, dict):
            continue
        for name, reason in REASONS.items():
            for value in values_at(source, f"{name}[*]"):
                position = by_value.get(str(value).casefold())
                if position is not None:
                    result.rejected[position] = f"Iterable {name}: {reason} ({value})"
    return result


GONE = frozenset({"NotFound", "UnknownEmailError", "UnknownUserIdError"})


def read_delete(call: Call, response: Response, body: Any) -> BatchResult:
    """200: deleted. A user Iterable does not have is already gone: accepted."""
    if 400 <= response.status < 500:
        code = first_at(body, "code") if isinstance(body, dict) else None
        if code in GONE:
            return BatchResult()
        return read_failed(call, response, body)
    return BatchResult()


def _list_body(call: Call) -> Any:
    return {
        "listId": call.items[0].body["listId"] if call.items else 0,
        "subscribers": [i.body["subscriber"] for i in call.items],
    }


OK = frozenset({200})
USERS = Endpoint(
    "POST",
    "/api/users/bulkUpdate",
    body=envelope("users"),
    read=read_failed,
    ok=OK,
    windows=(BULK_UPDATE_RATE,),
)
TRACK = Endpoint(
    "POST",
    "/api/events/trackBulk",
    body=envelope("events"),
    read=read_failed,
    ok=OK,
    windows=(TRACK_BULK_RATE,),
)
DELETE_BY = {
    "email": Endpoint(
        "DELETE",
        "/api/users/{key}",
        ok=OK,
        per_record=True,
        read=read_delete,
        windows=(DELETE_RATE,),
    ),
    "userId": Endpoint(
        "DELETE",
        "/api/users/byUserId/{key}",
        ok=OK,
        per_record=True,
        read=read_delete,
        windows=(DELETE_RATE,),
    ),
}


class IterableDestination(HttpDestination[IterableConfig]):
    """Users, list membership and events in an Iterable project."""

    name = "iterable"
    vendor = "Iterable"
    objects = tuple(OBJECTS)
    fake = "undertow.testing.iterable:IterableFake"
    docs_url = API_DOC
    capabilities = _caps(
        operations=frozenset(
            {Operation.UPSERT, Operation.DELETE, Operation.ADD, Operation.REMOVE, Operation.INSERT}
        )
    )
    object_capabilities: ClassVar[dict[str, Capabilities]] = OBJECTS
    endpoint_windows = True  # each endpoint has its own limit
    signals = (SlowDown(wait_path="params.rateLimitReset", wait_kind="seconds", default_wait=1.0),)
    check_path = "/api/lists"
    auth_hint = KEY_HINT
    demo = DemoProfile(
        destination="""\
type: iterable
api_key: ${FAKE_TOKEN}
base_url: ${FAKE_URL}""",
        sync="""\
object: users
mode: upsert
match: {email: email}
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
        token="iterable-demo-0000-local-fake",
    )

    def make_auth(self) -> Auth:
        return HeaderAuth("Api-Key", self.config.api_key.get_secret_value())

    def capabilities_for(self, object: str | None) -> Capabilities:
        caps = OBJECTS.get(object or "users", self.capabilities)
        if caps.kind is RecordKind.MEMBERSHIP:
            caps = replace(caps, rate_limit=RateLimit(self.config.list_rate_per_second, 1.0))
        return replace(
            caps,
            max_batch_size=min(caps.max_batch_size, self.config.batch_size),
            max_concurrency=self.config.max_concurrency,
        )

    def _lists(self, operation: Operation) -> Endpoint:
        path = "/api/lists/subscribe" if operation is Operation.ADD else "/api/lists/unsubscribe"
        rate = RateLimit(self.config.list_rate_per_second, 1.0, LISTS_DOC)
        return Endpoint("POST", path, body=_list_body, read=read_failed, ok=OK, windows=(rate,))

    # -- shaping ---------------------------------------------------------------------------

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        field = next(iter(batch.identifiers), "email")
        who = {field: key}
        if batch.operation is Operation.DELETE:
            return who
        if batch.object == "list_members":
            data = {k: v for k, v in record.items() if k not in ("list_id", field)}
            subscriber: dict[str, Any] = dict(who)
            if data and batch.operation is Operation.ADD:
                subscriber["dataFields"] = data
            if field == "userId":
                subscriber["preferUserId"] = True
            return {"listId": record.get("list_id"), "subscriber": subscriber}
        if batch.object == "events":
            name = record.get("eventName")
            if name in (None, ""):
                return Reject("no `eventName` for this event: map `eventName` (Iterable needs it)")
            event: dict[str, Any] = {
                **who,
                "eventName": str(name),
                "id": event_id(batch, index, record, "id"),
            }
            if record.get("createdAt") is not None:
                seconds = epoch_seconds(record["createdAt"])
                if seconds is None:
                    return Reject(f"`createdAt` {record['createdAt']!r} is not a timestamp")
                event["createdAt"] = seconds
            for name_ in ("campaignId", "templateId"):
                if record.get(name_) is not None:
                    event[name_] = record[name_]
            skip = {field, "eventName", "id", "createdAt", "campaignId", "templateId"}
            fields = dict(record.get("dataFields") or {})
            fields.update((k, v) for k, v in record.items() if k not in skip | {"dataFields"})
            if fields:
                event["dataFields"] = fields
            return event
        fields = dict(record.get("dataFields") or {})
        fields.update((k, v) for k, v in record.items() if k not in (field, "dataFields"))
        user: dict[str, Any] = {**who, "dataFields": fields}
        if field == "userId":
            user["preferUserId"] = True
        if self.config.merge_nested_objects:
            user["mergeNestedObjects"] = True
        return user

    def preview(self, batch: Batch) -> list[Any]:
        return self.shaped_preview(batch)

    # -- write -----------------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> BatchResult:
        object_ = batch.object or "users"
        if object_ not in OBJECTS:
            raise self.unknown_object(batch)
        if batch.operation not in OBJECTS[object_].operations:
            return await super().write_batch(batch)  # the kit's "cannot ..." error
        field = self.match_field(batch)
        result = BatchResult()
        items = self.items(batch, field, result)
        if not items:
            return result
        call = Call(batch, items, object_, field, self.vendor)
        if object_ == "events":
            await self.deliver_call(TRACK, call, result)
        elif object_ == "list_members":
            endpoint = self._lists(batch.operation)
            for list_id, members in by_list(items, "list_id", result, vendor="Iterable").items():
                if not list_id.isdigit():
                    for item in members:
                        result.rejected[item.index] = (
                            f"list_id {list_id!r} is not an Iterable list id (a number)"
                        )
                    continue
                for item in members:
                    item.body["listId"] = int(list_id)
                await self.deliver_call(endpoint, call.subset(members), result)
        elif batch.operation is Operation.DELETE:
            endpoint = DELETE_BY[str(field)]
            for item in items:
                item.key = quote(str(item.key), safe="")
            await self._per_record(endpoint, call, result)
        else:
            await self.deliver_call(USERS, call, result)
        return result


__all__ = ["IterableConfig", "IterableDestination"]
