"""A faithful local fake of Klaviyo's API (revision 2026-07-15): profile bulk import jobs, list
membership, bulk events, profile lookups.

It follows ``../shared/specs/klaviyo`` (the OpenAPI file and SOURCE.txt) and Klaviyo's docs
(links in ``docs/destinations/klaviyo.md``):

* ``Authorization: Klaviyo-API-Key <private key>`` and a ``revision`` header on every
  request; bodies are JSON:API (``application/vnd.api+json``; anything else is a 415).
* ``POST /api/profile-bulk-import-jobs``: at most 10,000 profiles and 5 MB (413 above), each
  profile at most 100 KB and naming ``email``, ``phone_number`` or ``external_id`` (else a 400
  whose ``source.pointer`` names the profile); answers **202** with the job, ``queued``. The
  job runs when polled: after ``polls_to_complete`` polls of ``GET
  /api/profile-bulk-import-jobs/{id}`` it is ``complete`` with ``completed_count`` and
  ``failed_count``; profiles with a bad email or phone fail there and are listed by ``GET
  .../{id}/import-errors`` (``source.pointer`` and ``original_payload``, 20 a page by default,
  ``page[size]`` up to 100, ``links.next``). Profiles are upserted on email, phone or external
  id; ``relationships.lists`` adds them to the list. A job is not idempotent: importing again
  makes a new job (the profiles converge).
* ``POST /api/event-bulk-create-jobs``: at most 1,000 events, each with a profile identifier
  and a metric name; 202. Klaviyo keeps the first event of a profile and metric with a given
  ``unique_id`` (default: its time to the second) and drops the repeats.
* ``GET /api/profiles?filter=any(email,[...])`` (or ``external_id``, ``phone_number``), and
  ``DELETE /api/lists/{id}/relationships/profiles`` (at most 1,000 ids; 204).
* Each endpoint has its own windows, as Klaviyo's rate limits are per endpoint: 10 requests
  a second and 150 a minute (Get Profiles: 75 and 700), answered with 429, ``Retry-After``
  and Klaviyo's ``throttled`` error. (Klaviyo's per-endpoint ``RateLimit-*`` headers are not
  sent: the connector paces from its own exact windows.)

Not confirmed: the exact texts of Klaviyo's error ``detail`` strings (the shapes are the
spec's), and whether the bulk events 202 carries a body (here it carries none).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import FakeAPI, RecordStore, Window, now_iso

MAX_PROFILES = 10_000
MAX_REQUEST = 5_000_000
MAX_PROFILE = 100_000
MAX_EVENTS = 1000
MAX_REMOVE = 1000
IDENTIFIERS = ("email", "phone_number", "external_id")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+[1-9]\d{6,14}$")
_FILTER = re.compile(r"^any\((email|external_id|phone_number),(\[.*\])\)$")
JSONAPI = "application/vnd.api+json"


def error(status: int, code: str, detail: str, pointer: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "status": status,
        "code": code,
        "title": code.replace("_", " ").capitalize(),
        "detail": detail,
        "source": {"pointer": pointer} if pointer else {},
    }
    return entry


class KlaviyoFake(FakeAPI):
    """An in-memory Klaviyo account served as a Starlette app (``.app``)."""

    type = "klaviyo"
    vendor = "Klaviyo"
    request_id_header = "cid"

    def __init__(
        self,
        token: str = "pk_demo_0000_local_fake",
        *,
        per_second: int = 10,
        per_minute: int = 150,
        window_seconds: float = 1.0,
        polls_to_complete: int = 1,
        hold: Callable[[str, Any], float] | None = None,
    ) -> None:
        self.token = token
        self.per_second, self.per_minute, self.window_seconds = (
            per_second,
            per_minute,
            window_seconds,
        )
        self.endpoint_windows: dict[str, list[Window]] = {}
        self.polls_to_complete = polls_to_complete
        self.hold = hold
        """(path, body) -> seconds to wait *after applying* before answering."""
        self.profiles = RecordStore(caseless=("email",), id_format=lambda n: f"01P{n:023d}")
        self.lists: dict[str, set[str]] = {}
        """list id -> profile ids."""
        self.jobs: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        """Every event kept (repeats of a unique_id are dropped, as Klaviyo does)."""
        self.dropped_events = 0
        self._seen: set[tuple[str, str, str]] = set()
        super().__init__(auth=self._authorized)

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.endpoint_windows.clear()

    def windows_for(self, captured: Any) -> list[Window]:
        """The windows of the endpoint the request names (ids replaced)."""
        parts = captured.path.strip("/").split("/")
        if len(parts) >= 3 and parts[1] in ("profile-bulk-import-jobs", "lists"):
            parts[2] = "{id}"
        key = f"{captured.method} /{'/'.join(parts)}"
        lookup = key == "GET /api/profiles"
        found = self.endpoint_windows.get(key)
        if found is None:
            burst = 75 if lookup else self.per_second
            steady = 700 if lookup else self.per_minute
            found = self.endpoint_windows[key] = [
                Window(burst, self.window_seconds, f"{key} burst"),
                Window(steady, 60.0 * self.window_seconds, f"{key} steady"),
            ]
        return found

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Klaviyo-API-Key {self.token}"

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/lists", self.get_lists, methods=["GET"]),
            Route("/api/profile-bulk-import-jobs", self.create_job, methods=["POST"]),
            Route("/api/profile-bulk-import-jobs/{job_id}", self.get_job, methods=["GET"]),
            Route(
                "/api/profile-bulk-import-jobs/{job_id}/import-errors", self.errors, methods=["GET"]
            ),
            Route("/api/event-bulk-create-jobs", self.create_events, methods=["POST"]),
            Route("/api/profiles", self.get_profiles, methods=["GET"]),
            Route("/api/lists/{list_id}/relationships/profiles", self.remove, methods=["DELETE"]),
        ]

    # -- common -----------------------------------------------------------------------------

    def respond(
        self, status: int, body: Any = None, headers: dict[str, str] | None = None
    ) -> Response:
        answer = super().respond(status, body, headers)
        if body is not None and not isinstance(body, bytes | str):
            answer.headers["content-type"] = JSONAPI
        return answer

    def slow_down(self, window: Window | None) -> Response:
        detail = "Request was throttled. Expected available in 1 second."
        return self.respond(
            429, {"errors": [error(429, "throttled", detail)]}, {"Retry-After": "1"}
        )

    def unauthorized(self, captured: Any) -> Response:
        detail = "Incorrect authentication credentials."
        return self.respond(401, {"errors": [error(401, "not_authenticated", detail)]})

    def members(self, list_id: str) -> set[str]:
        """The emails (or external ids) of a list's members."""
        out = set()
        for pid in self.lists.get(list_id, set()):
            fields = self.profiles.get(pid, {})
            out.add(str(fields.get("email") or fields.get("external_id") or pid))
        return out

    def profile(self, email: str) -> dict[str, Any] | None:
        return self.profiles.by_email(email)

    async def _admit(self, request: Request, *, body: bool) -> tuple[Any, Response | None]:
        captured, early = await self.admit(request)
        if early is not None:
            return None, early
        if not request.headers.get("revision"):
            detail = "A revision header is required (format: YYYY-MM-DD)."
            return None, self.respond(400, {"errors": [error(400, "invalid", detail)]})
        if body:
            if JSONAPI not in request.headers.get("content-type", ""):
                detail = f"Content-Type must be {JSONAPI}"
                return None, self.respond(
                    415, {"errors": [error(415, "unsupported_media_type", detail)]}
                )
            if len(captured.raw) > MAX_REQUEST:
                return None, self.respond(
                    413, {"errors": [error(413, "too_large", "Payload exceeds 5MB")]}
                )
        return captured, None

    async def _answer(self, path: str, body: Any, response: Response) -> Response:
        if self.hold is not None:
            seconds = self.hold(path, body)
            if seconds:
                await asyncio.sleep(seconds)
        return response

    async def get_lists(self, request: Request) -> Response:
        _, early = await self._admit(request, body=False)
        if early is not None:
            return early
        data = [{"type": "list", "id": i, "attributes": {"name": i}} for i in sorted(self.lists)]
        return self.respond(200, {"data": data, "links": {"self": str(request.url)}})

    # -- profiles ---------------------------------------------------------------------------

    async def create_job(self, request: Request) -> Response:
        captured, early = await self._admit(request, body=True)
        if early is not None:
            return early
        body = captured.body
        data = body.get("data") if isinstance(body, dict) else None
        profiles = ((data or {}).get("attributes") or {}).get("profiles", {}).get("data")
        if not isinstance(profiles, list) or not profiles:
            detail = "'data.attributes.profiles.data' must be a non-empty list"
            return self.respond(400, {"errors": [error(400, "invalid", detail, "/data")]})
        if len(profiles) > MAX_PROFILES:
            detail = f"{len(profiles)} profiles: at most {MAX_PROFILES} per job"
            return self.respond(
                400, {"errors": [error(400, "invalid", detail, "/data/attributes/profiles/data")]}
            )
        problems = []
        dumps = orjson.dumps
        for index, profile in enumerate(profiles):
            attributes = profile.get("attributes") if isinstance(profile, dict) else None
            if not isinstance(attributes, dict) or profile.get("type") != "profile":
                pointer = f"/data/attributes/profiles/data/{index}"
                problems.append(error(400, "invalid", "a profile resource is required", pointer))
            elif not (
                attributes.get("email")
                or attributes.get("phone_number")
                or attributes.get("external_id")
            ):
                detail = "One of email, phone_number or external_id is required"
                pointer = f"/data/attributes/profiles/data/{index}/attributes"
                problems.append(error(400, "invalid", detail, pointer))
            elif len(dumps(profile)) > MAX_PROFILE:
                pointer = f"/data/attributes/profiles/data/{index}"
                problems.append(error(400, "invalid", "Profile payload exceeds 100KB", pointer))
        if problems:
            return self.respond(400, {"errors": problems})
        relationships = (data or {}).get("relationships") or {}
        lists = (relationships.get("lists") or {}).get("data") or []
        self.note_batch(len(profiles))
        job_id = str(uuid.uuid4())
        with self._lock:
            self.jobs[job_id] = {
                "profiles": profiles,
                "lists": [str(entry.get("id")) for entry in lists],
                "polls": 0,
                "status": "queued",
                "created_at": now_iso(),
                "errors": [],
                "completed_count": 0,
            }
        answer = self.respond(202, {"data": self._job(job_id, request)})
        return await self._answer("/api/profile-bulk-import-jobs", body, answer)

    def _job(self, job_id: str, request: Request) -> dict[str, Any]:
        job = self.jobs[job_id]
        done = job["status"] == "complete"
        base = str(request.base_url).rstrip("/")
        return {
            "type": "profile-bulk-import-job",
            "id": job_id,
            "attributes": {
                "status": job["status"],
                "created_at": job["created_at"],
                "total_count": len(job["profiles"]),
                "completed_count": job["completed_count"],
                "failed_count": len(job["errors"]),
                "completed_at": now_iso() if done else None,
                "expires_at": None,
                "started_at": job["created_at"] if job["status"] != "queued" else None,
            },
            "links": {"self": f"{base}/api/profile-bulk-import-jobs/{job_id}"},
        }

    def _run(self, job: dict[str, Any]) -> None:
        """Apply the job's profiles: upsert on an identifier, a bad email or phone fails."""
        stamp = now_iso()  # one job, one time: its profiles are imported together
        email_ok, phone_ok = _EMAIL.match, _PHONE.match
        completed = 0
        for index, profile in enumerate(job["profiles"]):
            attributes = profile["attributes"]
            email = attributes.get("email")
            phone = attributes.get("phone_number")
            if email is not None and not email_ok(str(email)):
                pointer = f"/data/attributes/profiles/data/{index}/attributes"
                detail = f"Invalid email address {email!r}"
                job["errors"].append((error(400, "invalid", detail, f"{pointer}/email"), profile))
                continue
            if phone is not None and not phone_ok(str(phone)):
                pointer = f"/data/attributes/profiles/data/{index}/attributes"
                detail = f"Invalid phone number {phone!r} (E.164 expected)"
                job["errors"].append(
                    (error(400, "invalid", detail, f"{pointer}/phone_number"), profile)
                )
                continue
            pid = self._upsert(attributes, stamp)
            for list_id in job["lists"]:
                self.lists.setdefault(list_id, set()).add(pid)
            completed += 1
        job["completed_count"] += completed
        job["status"] = "complete"

    def _upsert(self, attributes: dict[str, Any], stamp: str | None = None) -> str:
        for field in IDENTIFIERS:
            value = attributes.get(field)
            if value:
                found = self.profiles.find(field, value)
                if found is not None:
                    merged = dict(attributes)
                    if "properties" in attributes:
                        merged["properties"] = {
                            **(self.profiles[found].get("properties") or {}),
                            **(attributes.get("properties") or {}),
                        }
                    self.profiles.modify(found, merged, stamp=stamp)
                    return found
        return self.profiles.create(attributes, stamp=stamp)  # create stores a copy

    async def get_job(self, request: Request) -> Response:
        _, early = await self._admit(request, body=False)
        if early is not None:
            return early
        job_id = request.path_params["job_id"]
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return self.respond(
                    404, {"errors": [error(404, "not_found", f"job {job_id} not found")]}
                )
            job["polls"] += 1
            if job["status"] != "complete":
                job["status"] = "processing"
                if job["polls"] >= self.polls_to_complete:
                    self._run(job)
            return self.respond(200, {"data": self._job(job_id, request)})

    async def errors(self, request: Request) -> Response:
        _, early = await self._admit(request, body=False)
        if early is not None:
            return early
        job = self.jobs.get(request.path_params["job_id"])
        if job is None:
            return self.respond(404, {"errors": [error(404, "not_found", "job not found")]})
        size = int(request.query_params.get("page[size]", "20"))
        if not 1 <= size <= 100:
            return self.respond(400, {"errors": [error(400, "invalid", "page[size] is 1 to 100")]})
        start = int(request.query_params.get("page[cursor]", "0") or 0)
        page = job["errors"][start : start + size]
        data = [
            {
                "type": "import-error",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{id(job)}-{start + i}")),
                "attributes": {
                    "code": entry["code"],
                    "title": entry["title"],
                    "detail": entry["detail"],
                    "source": entry["source"],
                    "original_payload": payload,
                },
            }
            for i, (entry, payload) in enumerate(page)
        ]
        here = str(request.url)
        links: dict[str, Any] = {"self": here}
        if start + size < len(job["errors"]):
            base = str(request.url.remove_query_params("page[cursor]"))
            joiner = "&" if "?" in base else "?"
            links["next"] = f"{base}{joiner}page[cursor]={start + size}"
        return self.respond(200, {"data": data, "links": links})

    # -- events -----------------------------------------------------------------------------

    async def create_events(self, request: Request) -> Response:
        captured, early = await self._admit(request, body=True)
        if early is not None:
            return early
        body = captured.body
        prefix = "/data/attributes/events-bulk-create/data"
        try:
            entries = body["data"]["attributes"]["events-bulk-create"]["data"]
        except (KeyError, TypeError):
            detail = "'data.attributes.events-bulk-create.data' is required"
            return self.respond(400, {"errors": [error(400, "invalid", detail, "/data")]})
        if not isinstance(entries, list) or len(entries) > MAX_EVENTS:
            detail = f"at most {MAX_EVENTS} events per request"
            return self.respond(400, {"errors": [error(400, "invalid", detail, prefix)]})
        problems, accepted = [], []
        for index, entry in enumerate(entries):
            attributes = (entry or {}).get("attributes") or {}
            who = ((attributes.get("profile") or {}).get("data") or {}).get("attributes") or {}
            events = ((attributes.get("events") or {}).get("data")) or []
            if not any(who.get(k) for k in IDENTIFIERS):
                problems.append(
                    error(400, "invalid", "a profile identifier is required", f"{prefix}/{index}")
                )
                continue
            if who.get("email") is not None and not _EMAIL.match(str(who["email"])):
                detail = f"Invalid email address {who['email']!r}"
                problems.append(error(400, "invalid", detail, f"{prefix}/{index}"))
                continue
            for event in events:
                metric = ((event.get("attributes") or {}).get("metric") or {}).get("data") or {}
                if not (metric.get("attributes") or {}).get("name"):
                    problems.append(
                        error(400, "invalid", "a metric name is required", f"{prefix}/{index}")
                    )
                    break
            else:
                accepted.append((who, events))
        if problems:
            return self.respond(400, {"errors": problems})
        self.note_batch(len(entries))
        with self._lock:
            for who, events in accepted:
                pid = self._upsert(dict(who))
                for event in events:
                    attributes = event["attributes"]
                    metric = attributes["metric"]["data"]["attributes"]["name"]
                    time = attributes.get("time") or now_iso()[:19]
                    unique = str(attributes.get("unique_id") or time[:19])
                    if (pid, metric, unique) in self._seen:
                        self.dropped_events += 1
                        continue
                    self._seen.add((pid, metric, unique))
                    self.events.append({"profile": pid, "metric": metric, **attributes})
        answer = self.respond(202)
        return await self._answer("/api/event-bulk-create-jobs", body, answer)

    # -- lookups and removals ---------------------------------------------------------------

    async def get_profiles(self, request: Request) -> Response:
        _, early = await self._admit(request, body=False)
        if early is not None:
            return early
        raw = request.query_params.get("filter", "")
        match = _FILTER.match(raw)
        if match is None:
            return self.respond(
                400, {"errors": [error(400, "invalid", f"unsupported filter {raw!r}")]}
            )
        field, values = match.group(1), json.loads(match.group(2))
        if len(values) > 100:
            return self.respond(400, {"errors": [error(400, "invalid", "at most 100 values")]})
        data = []
        for value in values:
            pid = self.profiles.find(field, value)
            if pid is not None:
                data.append(
                    {
                        "type": "profile",
                        "id": pid,
                        "attributes": {field: self.profiles[pid].get(field)},
                    }
                )
        return self.respond(200, {"data": data, "links": {"self": str(request.url)}})

    async def remove(self, request: Request) -> Response:
        captured, early = await self._admit(request, body=True)
        if early is not None:
            return early
        data = (captured.body or {}).get("data") if isinstance(captured.body, dict) else None
        if not isinstance(data, list) or not data or len(data) > MAX_REMOVE:
            detail = f"'data' must list 1 to {MAX_REMOVE} profiles"
            return self.respond(400, {"errors": [error(400, "invalid", detail, "/data")]})
        self.note_batch(len(data))
        with self._lock:
            members = self.lists.setdefault(request.path_params["list_id"], set())
            for entry in data:
                members.discard(str(entry.get("id")))
        return self.respond(204)


__all__ = ["KlaviyoFake"]
