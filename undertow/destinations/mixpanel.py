"""Mixpanel: user profiles through /engage and events through /import, on the HTTP kit.

How a batch maps to Mixpanel (``docs/destinations/mixpanel.md``)::

    users   upsert  POST /engage?verbose=1   [{"$token", "$distinct_id", "$set": {...}}]  2,000
            delete                           [{"$token", "$distinct_id", "$delete": ""}]
    events  insert  POST /import?strict=1    [{"event", "properties": {time, distinct_id,
                                               "$insert_id", ...}}]               2,000 / 10 MB

``/import`` with ``strict=1`` ingests the valid events of a batch and answers 400 with
``failed_records[{index, insert_id, field, message}]`` for the others (``specs/mixpanel``).
Mixpanel deduplicates events on (event, time, distinct_id, ``$insert_id``): every event
carries an ``$insert_id`` derived from a mapped ``insert_id`` or from the row's primary key,
so a batch sent again after a crash is dropped. ``/engage`` answers 200 even when an update
is invalid; ``verbose=1`` makes it say so in the body (``{"status": 0, "error": ...}``), and
such a refusal names no update, so the kit bisects the batch. A 429 carries no
``Retry-After``: the sync's backoff decides the wait.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from typing import Any, ClassVar

import orjson
from pydantic import Field, SecretStr, model_validator

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
    Call,
    Endpoint,
    HttpConfig,
    HttpDestination,
    Reject,
    SlowDown,
    envelope,
    errors_by_index,
    whole_reason,
)
from undertow.destinations.kit.engagement import event_id, events_object, parse_time
from undertow.errors import FatalDeliveryError, RejectedBatchError
from undertow.redact import register_secret, trim

IMPORT_DOC = "https://docs.mixpanel.com/reference/import-events"
ENGAGE_DOC = "https://docs.mixpanel.com/reference/profile-batch-update"
PROFILE_LIMITS_DOC = "https://docs.mixpanel.com/reference/user-profile-limits"
LIMITS_DOC = "https://docs.mixpanel.com/reference/rate-limits"
ERRORS_DOC = "https://docs.mixpanel.com/troubleshooting/errors/429-rate-limit-exceeded"

MAX_EVENTS = 2000
"""Events per /import request. IMPORT_DOC (specs/mixpanel)"""
MAX_UPDATES = 2000
"""Profile updates per /engage request. PROFILE_LIMITS_DOC"""
MAX_REQUEST_BYTES = 10_000_000
"""An /import request holds at most 10 MB of uncompressed JSON. IMPORT_DOC"""
MAX_EVENT_BYTES = 1_000_000
"""Each event (and each profile update) is under 1 MB. IMPORT_DOC, PROFILE_LIMITS_DOC"""
MAX_PROPERTIES = 255
"""An event has fewer than 255 properties. IMPORT_DOC"""
RATE = RateLimit(15, 1.0, LIMITS_DOC)
"""2 GB of JSON a minute or ~30k events a second per project, on a rolling minute
(LIMITS_DOC): 15 requests of 2,000 a second, paced per second so a minute's budget is never
spent in a burst."""
INSERT_ID = re.compile(r"^[A-Za-z0-9-]{1,36}$")
"""``$insert_id``: at most 36 characters, letters, digits and dashes. IMPORT_DOC"""
KEY_HINT = (
    "check the project token (Project Settings > Access Keys) or the service account "
    "username, secret and project_id; base_url https://api-eu.mixpanel.com for an EU project"
)


class MixpanelConfig(HttpConfig):
    """``destinations: {mp: {type: mixpanel, project_token: "${MIXPANEL_TOKEN}"}}``."""

    project_token: SecretStr = Field(description="the project token")
    base_url: str = "https://api.mixpanel.com"
    """``https://api-eu.mixpanel.com`` or ``https://api-in.mixpanel.com`` by residency."""
    api_secret: SecretStr | None = None
    """The project secret for /import (legacy; else the project token authenticates)."""
    service_account: str | None = None
    """A service account's username for /import (preferred by Mixpanel)."""
    service_account_secret: SecretStr | None = None
    project_id: str | None = None
    """Required with a service account."""
    batch_size: int = Field(default=MAX_EVENTS, ge=1, le=MAX_EVENTS)
    max_concurrency: int = Field(default=10, ge=1, le=32)
    """Mixpanel sees its best results with 10-20 concurrent clients (ERRORS_DOC)."""
    requests_per_second: int = Field(default=RATE.requests, ge=1)

    @model_validator(mode="after")
    def _service_account_complete(self) -> MixpanelConfig:
        given = [self.service_account, self.service_account_secret, self.project_id]
        if self.service_account and not all(given):
            raise ValueError(
                "a service account needs service_account, service_account_secret and project_id"
            )
        return self


def _caps(**extra: Any) -> Capabilities:
    base = Capabilities(
        operations=frozenset({Operation.UPSERT, Operation.DELETE}),
        max_batch_size=MAX_UPDATES,
        max_concurrency=10,
        rate_limit=RATE,
        per_record_results=True,
        requires_match=True,
        match=MatchRule.exactly_one("distinct_id", example="match: {distinct_id: customer_id}"),
        max_request_bytes=MAX_REQUEST_BYTES,
        bisect=True,
        docs=(IMPORT_DOC, ENGAGE_DOC, PROFILE_LIMITS_DOC, LIMITS_DOC),
        cite={
            "max_batch_size": PROFILE_LIMITS_DOC,
            "rate_limit": LIMITS_DOC,
            "max_request_bytes": IMPORT_DOC,
        },
    )
    return replace(base, **extra)


OBJECTS: dict[str, Capabilities] = {
    "users": _caps(),
    "events": events_object(
        _caps(),
        max_batch_size=MAX_EVENTS,
        event_id="insert_id",
        cite={
            "max_batch_size": IMPORT_DOC,
            "rate_limit": LIMITS_DOC,
            "max_request_bytes": IMPORT_DOC,
        },
    ),
}


class MixpanelDestination(HttpDestination[MixpanelConfig]):
    """User profiles and events in a Mixpanel project."""

    name = "mixpanel"
    vendor = "Mixpanel"
    objects = tuple(OBJECTS)
    fake = "undertow.testing.mixpanel:MixpanelFake"
    docs_url = IMPORT_DOC
    capabilities = _caps(
        operations=frozenset({Operation.UPSERT, Operation.DELETE, Operation.INSERT})
    )
    object_capabilities: ClassVar[dict[str, Capabilities]] = OBJECTS
    # no Retry-After on a 429 (ERRORS_DOC): the backoff decides
    signals = (SlowDown(retry_after=False),)
    auth_hint = KEY_HINT
    demo = DemoProfile(
        destination="""\
type: mixpanel
project_token: ${FAKE_TOKEN}
base_url: ${FAKE_URL}""",
        sync="""\
object: users
mode: upsert
match: {distinct_id: customer_id}
mappings:
  $email: email
  $first_name: first_name
  $last_name: last_name
  plan: plan
  seats: seats
  mrr: mrr
  country: country
  signup_date: signup_date""",
        token="mp-demo-0000-local-fake",
    )

    def __init__(self, config: Any, *, name: str) -> None:
        super().__init__(config, name=name)
        self.token = self.config.project_token.get_secret_value()
        register_secret(self.token)  # it travels in /engage bodies and as a username
        self.engage = Endpoint(
            "POST",
            "/engage",
            body=envelope(None),
            read=self._read_engage,
            ok=frozenset({200}),
            params=lambda call: {"verbose": "1"},
        )

    def make_auth(self) -> Auth:
        secret = self.config.service_account_secret
        if self.config.service_account and secret is not None:
            return BasicAuth(self.config.service_account, secret.get_secret_value())
        if self.config.api_secret is not None:
            legacy = self.config.api_secret.get_secret_value()
            register_secret(legacy)
            return BasicAuth(legacy, "")
        token = self.config.project_token.get_secret_value()
        register_secret(token)
        return BasicAuth(token, "")

    def capabilities_for(self, object: str | None) -> Capabilities:
        caps = OBJECTS.get(object or "users", self.capabilities)
        return replace(
            caps,
            max_batch_size=min(caps.max_batch_size, self.config.batch_size),
            max_concurrency=self.config.max_concurrency,
            rate_limit=RateLimit(self.config.requests_per_second, 1.0, LIMITS_DOC),
        )

    def import_endpoint(self) -> Endpoint:
        params = {"strict": "1"}
        if self.config.project_id:
            params["project_id"] = self.config.project_id
        return Endpoint(
            "POST",
            "/import",
            body=envelope(None),
            read=errors_by_index(
                "failed_records[*]", index="index", code="field", message="message"
            ),
            ok=frozenset({200}),
            params=lambda call: params,
        )

    def endpoint_for(self, batch: Batch) -> Endpoint:
        object_ = batch.object or "users"
        if object_ not in OBJECTS:
            raise self.unknown_object(batch)
        if batch.operation not in OBJECTS[object_].operations:
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: destination {self.instance_name!r} (mixpanel) cannot "
                f"{batch.operation.value} {object_}",
                hint="users take upsert/mirror, events take insert (docs/destinations/mixpanel.md)",
            )
        return self.import_endpoint() if object_ == "events" else self.engage

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        if (batch.object or "users") == "events":
            return self._event(record, batch=batch, key=key, index=index)
        update: dict[str, Any] = {"$token": self.token, "$distinct_id": str(key)}
        if batch.operation is Operation.DELETE:
            update["$delete"] = ""
            return update
        update["$set"] = {k: v for k, v in record.items() if k != "distinct_id"}
        return _sized(update, "profile update")

    def _event(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        name = record.get("event")
        if name in (None, ""):
            return Reject("no `event` for this row: map `event` to the event's name")
        when = parse_time(record.get("time"))
        if when is None:
            return Reject(
                f"no readable `time` ({record.get('time')!r}): map `time` to a timestamp "
                "column (Mixpanel needs when the event happened)"
            )
        properties = {
            k: v
            for k, v in record.items()
            if k not in ("event", "time", "insert_id", "distinct_id")
        }
        if len(properties) + 3 >= MAX_PROPERTIES:
            return Reject(
                f"the event has {len(properties) + 3} properties; Mixpanel takes fewer than "
                f"{MAX_PROPERTIES}: {IMPORT_DOC}"
            )
        properties.update(
            time=int(when.timestamp() * 1000),
            distinct_id=str(key),
            **{"$insert_id": insert_id(event_id(batch, index, record, "insert_id"))},
        )
        return _sized({"event": str(name), "properties": properties}, "event")

    def _read_engage(self, call: Call, response: Any, body: Any) -> BatchResult:
        """``verbose=1``: ``{"status": 1, "error": null}``, or 0 with the batch's refusal."""
        if isinstance(body, dict) and body.get("status") == 1:
            return BatchResult()
        error = str(body.get("error") or "") if isinstance(body, dict) else ""
        if "$token" in error:
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} (mixpanel): Mixpanel refused the project "
                f"token: {trim(error, 300)}",
                hint=KEY_HINT,
            )
        raise RejectedBatchError(whole_reason(call, response, body, message="error"))

    def preview(self, batch: Batch) -> list[Any]:
        return self.shaped_preview(batch)


def insert_id(value: str) -> str:
    """A valid ``$insert_id``: the value when it is one, else 32 hex digits of its hash."""
    if INSERT_ID.match(value):
        return value
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def _sized(body: dict[str, Any], what: str) -> Any:
    size = len(orjson.dumps(body))
    if size >= MAX_EVENT_BYTES:
        return Reject(
            f"the {what} is {size:,} bytes; Mixpanel takes each under {MAX_EVENT_BYTES:,}: "
            f"{IMPORT_DOC}"
        )
    return body


__all__ = ["MixpanelConfig", "MixpanelDestination", "insert_id"]
