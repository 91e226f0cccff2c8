"""Klaviyo: profiles through bulk import jobs, list membership, events, on the HTTP kit.

How a batch maps to Klaviyo (``docs/destinations/klaviyo.md`` has the user's view)::

    profiles      upsert  POST /api/profile-bulk-import-jobs              (async job, 10,000 / 5 MB)
    list_members  add     POST /api/profile-bulk-import-jobs + relationships.lists   (async job)
                  remove  GET /api/profiles?filter=any(email,[...]) -> ids,
                          DELETE /api/lists/{id}/relationships/profiles   (1,000 ids a request)
    events        insert  POST /api/event-bulk-create-jobs                (unique_id deduplicates)

A profile import is asynchronous (``async_jobs``): the job is submitted, recorded in the state
store, then polled (``GET /api/profile-bulk-import-jobs/{id}``); when it completes with
failures, ``GET .../import-errors`` names each failed profile (by its JSON pointer into the
request, or by its identifier in ``original_payload``) and only those rows are rejected. A
run killed while a job runs resumes by polling that job, never by importing again. A batch
larger than 5 MB is split into several jobs, all recorded with the batch.

Membership removals and events answer at once: ``submit_batch`` returns their result.
Klaviyo keeps the first event of a profile and metric with a given ``unique_id``, so events
carry one (mapped, or derived from the row's primary key): a resend after a crash is dropped.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any, ClassVar

import orjson
from pydantic import Field, SecretStr

from undertow.destinations._http import Response
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    DemoProfile,
    Job,
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
    Item,
    Reject,
    SlowDown,
    message_of,
    not_confirmed,
    parse_json,
    values_at,
)
from undertow.destinations.kit.engagement import (
    by_list,
    chunks,
    event_id,
    event_time,
    events_object,
    expand,
    ranges,
)
from undertow.errors import FatalDeliveryError, RejectedBatchError
from undertow.redact import trim

# -- vendor limits, each next to the doc that states it ------------------------------------

IMPORT_DOC = "https://developers.klaviyo.com/en/reference/bulk_import_profiles"
JOB_DOC = "https://developers.klaviyo.com/en/reference/get_bulk_import_profiles_job"
ERRORS_DOC = "https://developers.klaviyo.com/en/reference/get_errors_for_bulk_import_profiles_job"
EVENTS_DOC = "https://developers.klaviyo.com/en/reference/bulk_create_events"
REMOVE_DOC = "https://developers.klaviyo.com/en/reference/remove_profiles_from_list"
PROFILES_DOC = "https://developers.klaviyo.com/en/reference/get_profiles"
LIMITS_DOC = "https://developers.klaviyo.com/en/docs/rate_limits_and_error_handling"
REVISION = "2026-07-15"
"""The API revision the connector speaks (header ``revision``; the spec in specs/klaviyo)."""

MAX_PROFILES = 10_000
"""Profiles per bulk import job request. IMPORT_DOC (and specs/klaviyo)"""
MAX_REQUEST_BYTES = 5_000_000
"""Payload of one bulk import request: 5 MB. IMPORT_DOC"""
MAX_PROFILE_BYTES = 100_000
"""One profile in a bulk import: 100 KB. IMPORT_DOC"""
BURST = RateLimit(10, 1.0, IMPORT_DOC)
STEADY = RateLimit(150, 60.0, IMPORT_DOC)
"""Bulk import, bulk create events and list relationships: 10/s burst, 150/min steady (the
``M`` tier). IMPORT_DOC, EVENTS_DOC, REMOVE_DOC"""
MAX_EVENTS = 1000
"""Events per bulk create request (Klaviyo's reference for Bulk Create Events; the trimmed
spec in specs/klaviyo does not cover events). EVENTS_DOC"""
MAX_REMOVE = 1000
"""Profiles per Remove Profiles from List request. REMOVE_DOC"""
MAX_FILTER = 100
"""Values in one ``any(email, [...])`` filter and profiles per page of Get Profiles."""
LOOKUP_BURST = RateLimit(75, 1.0, PROFILES_DOC)
LOOKUP_STEADY = RateLimit(700, 60.0, PROFILES_DOC)
"""Get Profiles: 75/s burst, 700/min steady (the ``L`` tier). PROFILES_DOC"""
M_TIER = (BURST, STEADY)

IDENTIFIERS = ("email", "external_id", "phone_number")
STANDARD = frozenset(
    {"email", "phone_number", "external_id", "first_name", "last_name", "organization",
     "locale", "title", "image"}
)  # fmt: skip
LOCATION = frozenset(
    {"address1", "address2", "city", "country", "latitude", "longitude", "region", "zip",
     "timezone", "ip"}
)  # fmt: skip
JSONAPI = "application/vnd.api+json"
KEY_HINT = (
    "check the private API key (Settings > API keys) and its scopes: profiles:write, "
    "lists:write, events:write (and profiles:read, lists:read for jobs and removals)"
)


class KlaviyoConfig(HttpConfig):
    """``destinations: {klaviyo: {type: klaviyo, api_key: "${KLAVIYO_API_KEY}"}}``."""

    api_key: SecretStr = Field(description="a private API key (pk_...)")
    base_url: str = "https://a.klaviyo.com"
    revision: str = REVISION
    batch_size: int = Field(default=MAX_PROFILES, ge=1, le=MAX_PROFILES)
    poll_interval: float = Field(default=2.0, gt=0)
    """Seconds between two polls of an import job."""
    rate_per_second: int = Field(default=BURST.requests, ge=1)
    rate_per_minute: int = Field(default=STEADY.requests, ge=1)


def _caps(**extra: Any) -> Capabilities:
    base = Capabilities(
        operations=frozenset({Operation.UPSERT}),
        max_batch_size=MAX_PROFILES,
        max_concurrency=4,
        rate_limit=BURST,
        rate_limits=(STEADY,),
        per_record_results=True,
        requires_match=True,
        match=MatchRule.exactly_one(*IDENTIFIERS, example="match: {email: email}"),
        max_request_bytes=MAX_REQUEST_BYTES,
        max_payload_bytes=MAX_PROFILE_BYTES,
        docs=(IMPORT_DOC, JOB_DOC, ERRORS_DOC, EVENTS_DOC, REMOVE_DOC, LIMITS_DOC),
        cite={
            "max_batch_size": IMPORT_DOC,
            "rate_limit": IMPORT_DOC,
            "max_request_bytes": IMPORT_DOC,
            "max_payload_bytes": IMPORT_DOC,
        },
    )
    return replace(base, **extra)


OBJECTS: dict[str, Capabilities] = {
    "profiles": _caps(),
    "list_members": _caps(
        operations=frozenset({Operation.ADD, Operation.REMOVE}),
        kind=RecordKind.MEMBERSHIP,
        max_batch_size=MAX_REMOVE,
        cite={"max_batch_size": REMOVE_DOC, "rate_limit": REMOVE_DOC},
    ),
    "events": events_object(
        _caps(),
        event_id="unique_id",
        max_batch_size=MAX_EVENTS,
        bisect=True,
        max_payload_bytes=None,
        cite={"max_batch_size": EVENTS_DOC, "rate_limit": EVENTS_DOC},
    ),
}


def pointer_index(error: Any, prefix: str) -> int | None:
    """The item index a JSON:API error points at (``/data/attributes/.../data/3/...``)."""
    pointer = values_at(error, "source.pointer")
    text = next(pointer, None) if isinstance(error, dict) else None
    if not isinstance(text, str) or not text.startswith(prefix):
        return None
    head = text[len(prefix) :].lstrip("/").split("/", 1)[0]
    return int(head) if head.isdigit() else None


def klaviyo_message(error: Any) -> str:
    return message_of("Klaviyo", error, code="code", message="detail")


EVENTS_PREFIX = "/data/attributes/events-bulk-create/data"
PROFILES_PREFIX = "/data/attributes/profiles/data"


def read_events(call: Call, response: Response, body: Any) -> BatchResult:
    """202: every event accepted. A 4xx creates none of them: the request is refused whole
    and the kit bisects it, so the bad event is rejected with Klaviyo's message and the
    others are sent again."""
    if not 400 <= response.status < 500:
        return BatchResult()
    first = next(values_at(body, "errors[*]"), None)
    raise RejectedBatchError(
        klaviyo_message(first) if first else f"Klaviyo refused the request: {response.describe()}"
    )


def _events_body(call: Call) -> Any:
    entries = {"data": call.bodies}
    return {
        "data": {"type": "event-bulk-create-job", "attributes": {"events-bulk-create": entries}}
    }


EVENTS = Endpoint(
    "POST",
    "/api/event-bulk-create-jobs",
    body=_events_body,
    read=read_events,
    ok=frozenset({200, 201, 202, 204}),
    content_type=JSONAPI,
    windows=M_TIER,
)
JOB = Endpoint("GET", "/api/profile-bulk-import-jobs/{id}", ok=frozenset({200}), windows=M_TIER)
ERRORS = Endpoint(
    "GET", "/api/profile-bulk-import-jobs/{id}/import-errors", ok=frozenset({200}), windows=M_TIER
)
LOOKUP = Endpoint(
    "GET", "/api/profiles", ok=frozenset({200}), windows=(LOOKUP_BURST, LOOKUP_STEADY)
)
REMOVE = Endpoint(
    "DELETE",
    "/api/lists/{id}/relationships/profiles",
    ok=frozenset({204}),
    content_type=JSONAPI,
    windows=M_TIER,
)


class KlaviyoDestination(HttpDestination[KlaviyoConfig]):
    """Profiles, list membership and events in a Klaviyo account."""

    name = "klaviyo"
    vendor = "Klaviyo"
    objects = tuple(OBJECTS)
    fake = "undertow.testing.klaviyo:KlaviyoFake"
    docs_url = IMPORT_DOC
    capabilities = _caps(
        operations=frozenset({Operation.UPSERT, Operation.ADD, Operation.REMOVE, Operation.INSERT})
    )
    object_capabilities: ClassVar[dict[str, Capabilities]] = OBJECTS
    async_jobs = True
    endpoint_windows = True  # Klaviyo limits each endpoint on its own (LIMITS_DOC)
    signals = (SlowDown(default_wait=1.0),)  # 429 with Retry-After (seconds)
    # RateLimit-* headers are per endpoint: the exact windows above are what paces
    check_path = "/api/lists"
    auth_hint = KEY_HINT
    demo = DemoProfile(
        destination="""\
type: klaviyo
api_key: ${FAKE_TOKEN}
base_url: ${FAKE_URL}
poll_interval: 0.2""",
        sync="""\
object: profiles
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
        token="pk_demo_0000_local_fake",
    )

    def __init__(self, config: Any, *, name: str) -> None:
        super().__init__(config, name=name)
        self.poll_interval = self.config.poll_interval  # type: ignore[misc]

    def make_auth(self) -> Auth:
        return HeaderAuth(
            "Authorization", self.config.api_key.get_secret_value(), prefix="Klaviyo-API-Key "
        )

    def default_headers(self) -> dict[str, str]:
        return {"revision": self.config.revision, "Accept": JSONAPI}

    def capabilities_for(self, object: str | None) -> Capabilities:
        caps = OBJECTS.get(object or "profiles", self.capabilities)
        return replace(
            caps,
            max_batch_size=min(caps.max_batch_size, self.config.batch_size),
            rate_limit=RateLimit(self.config.rate_per_second, 1.0, IMPORT_DOC),
            rate_limits=(RateLimit(self.config.rate_per_minute, 60.0, IMPORT_DOC),),
        )

    # -- shaping ---------------------------------------------------------------------------

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        field = next(iter(batch.identifiers), "email")
        if batch.object == "events":
            return self._event(record, batch=batch, key=key, index=index, field=field)
        if batch.object == "list_members" and batch.operation is Operation.REMOVE:
            return {field: key}
        attributes: dict[str, Any] = {field: key}
        location: dict[str, Any] = {}
        properties: dict[str, Any] = {}
        for name, value in record.items():
            if name == "list_id" and batch.object == "list_members":
                continue
            if name in STANDARD:
                attributes[name] = value
            elif name in LOCATION:
                location[name] = value
            elif name == "properties" and isinstance(value, dict):
                properties.update(value)
            else:
                properties[name] = value  # lists of objects go as they are
        attributes[field] = key
        if location:
            attributes["location"] = location
        if properties:
            attributes["properties"] = properties
        encoded = orjson.dumps({"type": "profile", "attributes": attributes})
        if len(encoded) > MAX_PROFILE_BYTES:
            return Reject(
                f"the profile is {len(encoded):,} bytes, more than Klaviyo's "
                f"{MAX_PROFILE_BYTES:,} per profile in a bulk import: {IMPORT_DOC}"
            )
        # encoded once (the size check needs it): a job's body splices the 10,000 profiles
        # as they are, and the dicts are freed now, not held while the job runs
        return orjson.Fragment(encoded)

    def _event(
        self, record: dict[str, Any], *, batch: Batch, key: Any, index: int, field: str
    ) -> Any:
        metric = record.get("metric")
        if metric in (None, ""):
            return Reject("no `metric` for this event: map `metric` (the event's name in Klaviyo)")
        attributes: dict[str, Any] = {
            "metric": {"data": {"type": "metric", "attributes": {"name": str(metric)}}},
            "unique_id": event_id(batch, index, record, "unique_id"),
        }
        if record.get("time") is not None:
            when = event_time(record["time"])
            if when is None:
                return Reject(f"`time` {record['time']!r} is not a timestamp")
            attributes["time"] = when
        if record.get("value") is not None:
            attributes["value"] = record["value"]
        skip = {"metric", "unique_id", "time", "value", field}
        properties = dict(record.get("properties") or {})
        properties.update((k, v) for k, v in record.items() if k not in skip | {"properties"})
        attributes["properties"] = properties
        profile = {"data": {"type": "profile", "attributes": {field: key}}}
        return {
            "type": "event-bulk-create",
            "attributes": {
                "profile": profile,
                "events": {"data": [{"type": "event", "attributes": attributes}]},
            },
        }

    def preview(self, batch: Batch) -> list[Any]:
        return self.shaped_preview(batch)

    # -- submit and poll -------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> BatchResult:
        """Outside the deliver stage's job protocol (tests): submit, then poll to the end."""
        answer = await self.submit_batch(batch)
        while isinstance(answer, Job):
            polled = await self.poll_job(answer, batch)
            if polled is not None:
                return polled
            await asyncio.sleep(self.poll_interval)
        return answer

    async def submit_batch(self, batch: Batch) -> Job | BatchResult:
        if batch.object not in OBJECTS:
            raise self.unknown_object(batch)
        if batch.operation not in OBJECTS[batch.object].operations:
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: destination {self.instance_name!r} (klaviyo) cannot "
                f"{batch.operation.value} {batch.object}",
                hint="use one of the modes the object takes (docs/destinations/klaviyo.md)",
            )
        field = self.match_field(batch)
        result = BatchResult()
        items = self.items(batch, field, result)
        call = Call(batch, items, batch.object, field, self.vendor)
        if not items:
            return result
        if batch.object == "events":
            await self.deliver_call(EVENTS, call, result)
            return result
        if batch.object == "list_members" and batch.operation is Operation.REMOVE:
            await self._remove(call, result)
            return result
        groups: dict[str | None, list[Item]] = {None: items}
        if batch.object == "list_members":
            groups = {k: v for k, v in by_list(items, "list_id", result, vendor="Klaviyo").items()}
        jobs: list[dict[str, Any]] = []
        for list_id, members in groups.items():
            await self._import(call.subset(members), list_id, result, jobs)
        if not jobs:
            return result
        rejected = {str(i): reason for i, reason in result.rejected.items()}
        return Job(jobs[0]["id"], {"jobs": jobs, "rejected": rejected})

    def _import_body(self, list_id: str | None) -> Any:
        def build(call: Call) -> Any:
            data: dict[str, Any] = {
                "type": "profile-bulk-import-job",
                "attributes": {"profiles": {"data": call.bodies}},
            }
            if list_id is not None:
                data["relationships"] = {"lists": {"data": [{"type": "list", "id": list_id}]}}
            return {"data": data}

        return build

    async def _import(
        self, call: Call, list_id: str | None, result: BatchResult, jobs: list[dict[str, Any]]
    ) -> None:
        """One import job per part that fits 5 MB; refusals rejected per profile."""
        endpoint = Endpoint(
            "POST", "/api/profile-bulk-import-jobs", body=self._import_body(list_id),
            ok=frozenset({202}), content_type=JSONAPI, windows=M_TIER,
        )  # fmt: skip
        for part in self._fit(endpoint, call, result):
            body, _ = self.encode(endpoint, part)
            response = await self.send_to(endpoint, body=body)
            parsed = parse_json(response)
            if response.status == 202:
                job_id = next(values_at(parsed, "data.id"), None)
                if isinstance(job_id, str) and job_id:
                    jobs.append({"id": job_id, "items": ranges([i.index for i in part.items])})
                    continue
            if 400 <= response.status < 500:
                # a refused job imports nothing: reject the profiles it names, submit the rest
                rest = self._refused(part, parsed, response, result)
                if rest and len(rest) < len(part.items):
                    await self._import(part.subset(rest), list_id, result, jobs)
            else:
                result.merge(not_confirmed(part, response), [i.index for i in part.items])

    @staticmethod
    def _refused(call: Call, body: Any, response: Response, result: BatchResult) -> list[Item]:
        """Reject the profiles a refusal names (all, if it names none); the others."""
        named: dict[int, str] = {}
        for error in values_at(body, "errors[*]"):
            index = pointer_index(error, PROFILES_PREFIX)
            if index is not None and 0 <= index < len(call.items):
                named[call.items[index].index] = klaviyo_message(error)
        if named:
            result.rejected.update(named)
            return [i for i in call.items if i.index not in named]
        first = next(values_at(body, "errors[*]"), None)
        reason = klaviyo_message(first) if first else f"Klaviyo refused: {response.describe()}"
        for item in call.items:
            result.rejected[item.index] = reason
        return []

    async def poll_job(self, job: Job, batch: Batch) -> BatchResult | None:
        result = BatchResult(rejected={int(k): v for k, v in job.data.get("rejected", {}).items()})
        keys = {f: batch.identifiers.get(f, []) for f in IDENTIFIERS}
        for sub in job.data.get("jobs", []):
            response = await self.send_to(JOB, f"/api/profile-bulk-import-jobs/{sub['id']}")
            attributes = next(values_at(parse_json(response), "data.attributes"), None)
            if response.status != 200 or not isinstance(attributes, dict):
                return None  # not readable now: polled again (never submitted again)
            status = attributes.get("status")
            indices = expand(sub["items"])
            if status in ("queued", "processing"):
                return None
            if status == "cancelled":
                for index in indices:
                    result.failed[index] = f"Klaviyo cancelled import job {sub['id']}; sent again"
                continue
            if attributes.get("failed_count"):
                await self._import_errors(sub["id"], indices, keys, result)
        return result

    async def _import_errors(
        self, job_id: str, indices: list[int], keys: dict[str, list[Any]], result: BatchResult
    ) -> None:
        """Each failed profile of a completed job, by pointer or by identifier value."""
        by_value = {
            str(values[i]).casefold(): i
            for values in keys.values()
            for i in indices
            if i < len(values) and values[i] is not None
        }
        path: str | None = f"/api/profile-bulk-import-jobs/{job_id}/import-errors"
        while path:
            response = await self.send_to(ERRORS, path)
            body = parse_json(response)
            for error in values_at(body, "data[*]"):
                attributes = error.get("attributes") if isinstance(error, dict) else None
                if not isinstance(attributes, dict):
                    continue
                index = pointer_index(attributes, PROFILES_PREFIX)
                target = indices[index] if index is not None and index < len(indices) else None
                if target is None:
                    payload = attributes.get("original_payload") or {}
                    found = [
                        v for v in values_at(payload, "attributes") if isinstance(v, dict)
                    ] or [payload]
                    for name in IDENTIFIERS:
                        value = found[0].get(name) if isinstance(found[0], dict) else None
                        if value is not None and str(value).casefold() in by_value:
                            target = by_value[str(value).casefold()]
                            break
                if target is not None:
                    result.rejected[target] = klaviyo_message(attributes)
            following = next(values_at(body, "links.next"), None)
            path = _relative(following) if isinstance(following, str) and following else None

    # -- removals --------------------------------------------------------------------------

    async def _remove(self, call: Call, result: BatchResult) -> None:
        """Find each member's profile id, then remove the ids from its list; a person
        Klaviyo does not know is not on the list: accepted."""
        field = str(call.match_field)
        for list_id, members in by_list(call.items, "list_id", result, vendor="Klaviyo").items():
            ids: list[str] = []
            for part in chunks(members, MAX_FILTER):
                values = json.dumps([str(i.key) for i in part])
                response = await self.send_to(
                    LOOKUP,
                    params={
                        "filter": f"any({field},{values})",
                        "page[size]": str(MAX_FILTER),
                        "fields[profile]": field,
                    },
                )
                if response.status != 200:
                    reason = f"Klaviyo did not find the profiles: {response.describe()}"
                    for item in part:
                        result.failed[item.index] = reason
                    continue
                ids += [str(v) for v in values_at(parse_json(response), "data[*].id")]
            for batch_ids in [ids[i : i + MAX_REMOVE] for i in range(0, len(ids), MAX_REMOVE)]:
                body = {"data": [{"type": "profile", "id": i} for i in batch_ids]}
                path = f"/api/lists/{list_id}/relationships/profiles"
                response = await self.send_to(REMOVE, path, body=orjson.dumps(body))
                if response.status != 204:
                    parsed = parse_json(response)
                    first = next(values_at(parsed, "errors[*]"), None)
                    reason = klaviyo_message(first) if first else response.describe()
                    for item in members:
                        if item.index not in result.failed:
                            result.rejected[item.index] = trim(f"Klaviyo: {reason}", 500)


def _relative(url: str) -> str:
    """A ``links.next`` URL as a path on the same origin (the client sends nowhere else)."""
    marker = url.find("/api/")
    return url[marker:] if marker >= 0 else url


__all__ = ["KlaviyoConfig", "KlaviyoDestination"]
