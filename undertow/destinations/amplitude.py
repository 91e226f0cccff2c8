"""Amplitude: user properties through the Identify API and events through HTTP V2, on the kit.

How a batch maps to Amplitude (``docs/destinations/amplitude.md``)::

    users   upsert  POST /identify      api_key=...&identification=[{"user_id", "user_properties":
                                        {"$set": {...}}}]                 (form)
    events  insert  POST /2/httpapi     {"api_key", "events": [{"user_id", "event_type", "time",
                                        "insert_id", "event_properties"}], "options"}  2,000 / 1 MB

``specs/amplitude/NOTES.md``: the API key travels in the body (registered as a secret, so no
message or capture shows it). A 413 means the request is too large: the kit splits it in
halves and sends each (``bisect``). A 400 names the events it refused
(``events_with_invalid_fields``, ``events_with_missing_fields``, ``silenced_events``) and
ingests none: those are rejected and the rest is sent again at once. A 429 throttles the
users of that request for about 30 s: that request waits (``throttle_seconds``) and goes
again, while the other requests go on. Amplitude deduplicates events on ``insert_id`` (with
the user or device) for 7 days: every event carries one derived from a mapped ``insert_id``
or the row's primary key, so a resend after a crash is dropped.
"""

from __future__ import annotations

import hashlib
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
    Call,
    Endpoint,
    HttpConfig,
    HttpDestination,
    Item,
    Reject,
    SlowDown,
    whole_reason,
)
from undertow.destinations.kit.engagement import event_id, events_object, parse_time
from undertow.errors import FatalDeliveryError, RejectedBatchError
from undertow.redact import register_secret, trim

HTTP_V2_DOC = "https://amplitude.com/docs/apis/analytics/http-v2"
IDENTIFY_DOC = "https://amplitude.com/docs/apis/analytics/identify"
MAX_EVENTS = 2000
"""Events per HTTP V2 request. HTTP_V2_DOC (specs/amplitude)"""
MAX_REQUEST_BYTES = 1_000_000
"""An HTTP V2 request holds at most 1 MB (413 above). HTTP_V2_DOC"""
RATE = RateLimit(100, 1.0, HTTP_V2_DOC)
"""100 batches a second (the Starter plan's stated limit; other plans state none for the
project, only per user). HTTP_V2_DOC"""
THROTTLE_SECONDS = 30.0
"""A throttled user or device: back off about 30 s. HTTP_V2_DOC (specs/amplitude)"""
USER_EPS = 30
"""Events a second one user or device may send before it is throttled. HTTP_V2_DOC"""
RESEND = "the request was refused for other events of it; sent again"
KEY_HINT = (
    "check the project's API key (Settings > Projects > API Keys) and base_url "
    "https://api.eu.amplitude.com for an EU project"
)
IDS = ("user_id", "device_id")


class AmplitudeConfig(HttpConfig):
    """``destinations: {amp: {type: amplitude, api_key: "${AMPLITUDE_API_KEY}"}}``."""

    api_key: SecretStr = Field(description="the project's API key")
    base_url: str = "https://api2.amplitude.com"
    """``https://api.eu.amplitude.com`` for an EU project."""
    batch_size: int = Field(default=MAX_EVENTS, ge=1, le=MAX_EVENTS)
    max_concurrency: int = Field(default=8, ge=1, le=32)
    min_id_length: int = Field(default=5, ge=1)
    """Shortest ``user_id`` / ``device_id`` events may carry (Amplitude's default is 5;
    sent as ``options.min_id_length``)."""
    throttle_seconds: float = Field(default=THROTTLE_SECONDS, gt=0)
    """How long a throttled request waits before it goes again."""


def _caps(**extra: Any) -> Capabilities:
    base = Capabilities(
        operations=frozenset({Operation.UPSERT}),
        max_batch_size=MAX_EVENTS,
        max_concurrency=8,
        rate_limit=RATE,
        per_record_results=True,
        requires_match=True,
        match=MatchRule.exactly_one(*IDS, example="match: {user_id: email}"),
        max_request_bytes=MAX_REQUEST_BYTES,
        bisect=True,
        retryable_statuses=frozenset({408, 500, 502, 503, 504}),
        docs=(HTTP_V2_DOC, IDENTIFY_DOC),
        cite={
            "max_batch_size": HTTP_V2_DOC,
            "rate_limit": HTTP_V2_DOC,
            "max_request_bytes": HTTP_V2_DOC,
        },
    )
    return replace(base, **extra)


OBJECTS: dict[str, Capabilities] = {
    "users": _caps(),
    "events": events_object(
        _caps(),
        event_id="insert_id",
    ),
}


class AmplitudeDestination(HttpDestination[AmplitudeConfig]):
    """User properties and events in an Amplitude project."""

    name = "amplitude"
    vendor = "Amplitude"
    objects = tuple(OBJECTS)
    fake = "undertow.testing.amplitude:AmplitudeFake"
    docs_url = HTTP_V2_DOC
    capabilities = _caps(operations=frozenset({Operation.UPSERT, Operation.INSERT}))
    object_capabilities: ClassVar[dict[str, Capabilities]] = OBJECTS
    auth_hint = KEY_HINT
    demo = DemoProfile(
        destination="""\
type: amplitude
api_key: ${FAKE_TOKEN}
base_url: ${FAKE_URL}""",
        sync="""\
object: users
mode: upsert
match: {user_id: email}
mappings:
  first_name: first_name
  last_name: last_name
  plan: plan
  seats: seats
  mrr: mrr
  country: country
  signup_date: signup_date""",
        token="amp-demo-0000-local-fake",
    )

    def __init__(self, config: Any, *, name: str) -> None:
        super().__init__(config, name=name)
        self.key = self.config.api_key.get_secret_value()
        register_secret(self.key)  # it travels in every body
        # a 429 holds the users of that request only: that request waits, the others go on
        self.signals = (  # type: ignore[misc]
            SlowDown(
                name="throttled",
                retry_after=False,
                default_wait=self.config.throttle_seconds,
                penalize=False,
            ),
        )
        self.identify = Endpoint(
            "POST",
            "/identify",
            body=self._identify_body,
            read=self._read_identify,
            # 200 answers the text "success", not JSON: handed to the reader as it is
            ok=frozenset(),
            answers=frozenset({200}),
            form=True,
        )
        self.httpapi = Endpoint(
            "POST",
            "/2/httpapi",
            body=self._events_body,
            read=self._read_events,
            ok=frozenset({200}),
            answers=frozenset({413}),
        )

    def capabilities_for(self, object: str | None) -> Capabilities:
        caps = OBJECTS.get(object or "users", self.capabilities)
        return replace(
            caps,
            max_batch_size=min(caps.max_batch_size, self.config.batch_size),
            max_concurrency=self.config.max_concurrency,
        )

    def endpoint_for(self, batch: Batch) -> Endpoint:
        object_ = batch.object or "users"
        if object_ not in OBJECTS:
            raise self.unknown_object(batch)
        if batch.operation not in OBJECTS[object_].operations:
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: destination {self.instance_name!r} (amplitude) cannot "
                f"{batch.operation.value} {object_} (Amplitude deletes users only through its "
                "User Privacy API)",
                hint="users take upsert, events take insert (docs/destinations/amplitude.md)",
            )
        return self.httpapi if object_ == "events" else self.identify

    async def write_batch(self, batch: Batch) -> BatchResult:
        endpoint = self.endpoint_for(batch)
        field = self.match_field(batch)
        result = BatchResult()
        items = self.items(batch, field, result)
        if not items:
            return result
        call = Call(batch, items, batch.object, field, self.vendor)
        # a request holding more than USER_EPS events of one user is throttled however long
        # it waits: at most that many per user in each request (identify: one per user)
        for part in per_user(items, USER_EPS):
            await self.deliver_call(endpoint, call.subset(part), result)
        return result

    # -- shapes -----------------------------------------------------------------------------

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        field = next(iter(batch.identifiers), "user_id")
        if (batch.object or "users") == "users":
            properties = {k: v for k, v in record.items() if k not in IDS}
            return {field: str(key), "user_properties": {"$set": properties}}
        name = record.get("event_type")
        if name in (None, ""):
            return Reject("no `event_type` for this row: map `event_type` to the event's name")
        if len(str(key)) < self.config.min_id_length:
            return Reject(
                f"{field} {str(key)!r} is shorter than min_id_length "
                f"{self.config.min_id_length} (set `min_id_length:` on the destination)"
            )
        event: dict[str, Any] = {
            field: str(key),
            "event_type": str(name),
            "insert_id": insert_id(event_id(batch, index, record, "insert_id")),
        }
        if record.get("time") is not None:
            when = parse_time(record["time"])
            if when is None:
                return Reject(f"`time` {record['time']!r} is not a timestamp")
            event["time"] = int(when.timestamp() * 1000)
        skip = {"event_type", "time", "insert_id", *IDS, "user_properties"}
        event["event_properties"] = {k: v for k, v in record.items() if k not in skip}
        if isinstance(record.get("user_properties"), dict):
            event["user_properties"] = record["user_properties"]
        size = len(orjson.dumps(event))
        if size > MAX_REQUEST_BYTES // 2:
            return Reject(f"the event is {size:,} bytes; Amplitude takes 1 MB a request")
        return event

    def shape_raw(
        self, payload: str, *, batch: Batch, key: Any, index: int
    ) -> orjson.Fragment | None:
        """A user's identification built around its payload's JSON text (the same JSON
        :meth:`shape` makes), when the record maps neither id field itself."""
        if (
            (batch.object or "users") != "users"
            or '"user_id"' in payload
            or '"device_id"' in payload
        ):
            return None
        field = next(iter(batch.identifiers), "user_id")
        who = orjson.dumps({field: str(key)}).decode()[:-1]
        return orjson.Fragment(f'{who},"user_properties":{{"$set":{payload}}}}}')

    def _identify_body(self, call: Call) -> dict[str, str | bytes]:
        return {"api_key": self.key, "identification": orjson.dumps(call.bodies)}

    def _events_body(self, call: Call) -> dict[str, Any]:
        return {
            "api_key": self.key,
            "events": call.bodies,
            "options": {"min_id_length": self.config.min_id_length},
        }

    # -- answers ----------------------------------------------------------------------------

    def _key_refused(self, text: str) -> None:
        if "api_key" in text.lower().replace(" ", "_"):
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} (amplitude): Amplitude refused the API "
                f"key: {trim(text, 300)}",
                hint=KEY_HINT,
            )

    def _read_identify(self, call: Call, response: Any, body: Any) -> BatchResult:
        text = response.body.decode("utf-8", "replace") if response.body else ""
        if response.status == 200 and text.strip().strip('"') == "success":
            return BatchResult()
        if response.status == 200:
            return BatchResult.all_failed(
                len(call.items),
                f"Amplitude's answer is not the documented success, so the update is not "
                f"confirmed (sent again by the next run): {response.describe()}",
            )
        self._key_refused(text)
        raise RejectedBatchError(whole_reason(call, response, body, message="error"))

    def _read_events(self, call: Call, response: Any, body: Any) -> BatchResult:
        if response.status == 200:
            return BatchResult()
        if response.status == 413:
            raise RejectedBatchError(
                f"Amplitude refused the request as too large (413): {response.describe()}"
            )
        if isinstance(body, dict):
            self._key_refused(f"{body.get('missing_field') or ''} {body.get('error') or ''}")
            named = _named_events(body)
            if named:
                result = BatchResult()
                for position in range(len(call.items)):
                    if position in named:
                        result.rejected[position] = named[position]
                    else:
                        result.failed[position] = RESEND
                return result
        raise RejectedBatchError(whole_reason(call, response, body, message="error"))

    async def call(self, endpoint: Endpoint, call: Call, *, path: str | None = None) -> BatchResult:
        """One request; after a 400 naming some events, the others go again at once."""
        result = await super().call(endpoint, call, path=path)
        again = [p for p, reason in result.failed.items() if reason == RESEND]
        if not again:
            return result
        for position in again:
            del result.failed[position]
        sub = await self.call(endpoint, call.subset([call.items[p] for p in again]), path=path)
        result.merge(sub, again)
        return result

    def preview(self, batch: Batch) -> list[Any]:
        return self.shaped_preview(batch)


def _named_events(body: dict[str, Any]) -> dict[int, str]:
    """Index -> why, from a 400's ``events_with_invalid_fields`` / ``_missing_fields`` /
    ``silenced_events``."""
    error = trim(str(body.get("error") or "invalid events"), 200)
    named: dict[int, str] = {}
    for key, what in (
        ("events_with_invalid_fields", "invalid"),
        ("events_with_missing_fields", "missing"),
    ):
        groups = body.get(key)
        if not isinstance(groups, dict):
            continue
        for field, indexes in groups.items():
            for index in indexes if isinstance(indexes, list) else ():
                if isinstance(index, int):
                    named.setdefault(index, f"Amplitude 400: {what} field {field!r} ({error})")
    for index in body.get("silenced_events") or ():
        if isinstance(index, int):
            named.setdefault(index, "Amplitude 400: the event's device or user is silenced")
    return named


def per_user(items: list[Item], most: int) -> list[list[Item]]:
    """The items in order, in parts holding at most ``most`` items of any one user."""
    parts: list[list[Item]] = []
    counts: list[dict[Any, int]] = []
    for item in items:
        who = str(item.key)
        for part, seen in zip(parts, counts, strict=True):
            if seen.get(who, 0) < most:
                part.append(item)
                seen[who] = seen.get(who, 0) + 1
                break
        else:
            parts.append([item])
            counts.append({who: 1})
    return parts


def insert_id(value: str) -> str:
    """The ``insert_id``: the value itself when short enough, else a hash of it."""
    return value if len(value) <= 64 else hashlib.sha256(value.encode()).hexdigest()[:40]


__all__ = ["AmplitudeConfig", "AmplitudeDestination"]
