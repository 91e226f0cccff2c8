"""A faithful local fake of Zendesk Support's users and organizations APIs, with job statuses.

It answers as ``../shared/specs/zendesk/NOTES.md`` describes (``docs/destinations/zendesk.md``
has the vendor links)::

    fake = ZendeskFake("api-token", email="admin@example.com")
    with fake.serve() as url:
        ...   # base_url: url
    fake.users.by("external_id", "42")

* ``Authorization: Basic base64("{email}/token:{api_token}")`` (or ``Bearer <oauth token>``);
  anything else is 401 ``{"error": "Couldn't authenticate you"}``.
* ``POST /api/v2/users/create_or_update_many`` and ``/users/create_many``: at most 100
  users; 200 with a queued ``job_status``; the work happens ``job_seconds`` later. Each
  user matches by ``external_id`` (caseless), else by ``email``. ``job_status.results`` has
  one entry per user with its ``index``: ``{"id", "action", "status": "Created|Updated"}``
  or ``{"status": "Failed", "error", "details"}``. Bulk user import switched off: 403.
* ``POST /api/v2/organizations/create_or_update`` (one organization, matched by ``id`` or
  ``external_id``; 201 created, 200 updated, 422 for a taken name) and
  ``/organizations/create_many`` (a job).
* ``DELETE /api/v2/{users|organizations}/destroy_many?ids=|external_ids=``: at most 100, a
  job.
* ``GET /api/v2/job_statuses/{id}`` (and ``show_many?ids=``): ``queued`` -> ``working`` ->
  ``completed``; a job status is gone (404) ``job_ttl`` seconds after it was queued. At most
  ``job_limit`` jobs queued or working at once: more get 429 with ``Retry-After``.
* A per-minute rolling window (``rate_limit_per_minute``, the plan's limit) answered with
  429 and ``Retry-After: <seconds>``; ``X-Rate-Limit``/``X-Rate-Limit-Remaining`` and
  ``ratelimit-*`` headers on every answer.
* ``GET /api/v2/users/me``, ``/user_fields``, ``/organization_fields``.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.destinations.zendesk import ORGANIZATION_ATTRIBUTES, USER_ATTRIBUTES
from undertow.testing.fakes import CapturedRequest, FakeAPI, RecordStore, Window, now_iso
from undertow.testing.faults import Ledger

MAX_PER_JOB = 100
PER_MINUTE = 200
"""The Team plan's limit, the lowest Zendesk documents (Undertow's default too)."""
JOB_LIMIT = 30
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
ROLES = ("end-user", "agent", "admin")


@dataclass
class JobStatus:
    id: str
    job_type: str
    total: int
    queued_at: float
    status: str = "queued"
    progress: int | None = None
    message: str | None = None
    results: list[dict[str, Any]] | None = None
    work: Callable[[], list[dict[str, Any]]] | None = field(default=None, repr=False)

    def body(self, base: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "job_type": self.job_type,
            "url": f"{base}/api/v2/job_statuses/{self.id}.json",
            "total": self.total,
            "progress": self.progress,
            "status": self.status,
            "message": self.message,
            "results": self.results,
        }


class ZendeskFake(FakeAPI):
    """An in-memory Zendesk Support account served as a Starlette app (``.app``)."""

    type = "zendesk"
    vendor = "Zendesk"
    request_id_header = "x-request-id"

    def __init__(
        self,
        token: str = "demo-token",
        *,
        email: str = "admin@example.com",
        oauth_tokens: Iterable[str] = (),
        rate_limit_per_minute: int = PER_MINUTE,
        window_seconds: float = 60.0,
        job_seconds: float = 0.2,
        job_limit: int = JOB_LIMIT,
        job_ttl: float = 3600.0,
        bulk_import: bool = True,
        user_fields: Iterable[str] = ("plan", "seats", "mrr", "signup_date"),
        organization_fields: Iterable[str] = ("plan", "region"),
        ledger: Ledger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        basic = "Basic " + base64.b64encode(f"{email}/token:{token}".encode()).decode()
        allowed = {basic, *(f"Bearer {t}" for t in oauth_tokens)}
        self.email = email
        self.window_seconds = window_seconds
        self.job_seconds = job_seconds
        self.job_limit = job_limit
        self.job_ttl = job_ttl
        self.bulk_import = bulk_import
        self.user_fields = list(user_fields)
        self.organization_fields = list(organization_fields)
        self.users = RecordStore(caseless=("email", "external_id"), first_id=360_000_001)
        self.organizations = RecordStore(caseless=("external_id", "name"), first_id=900_000_001)
        self.jobs: dict[str, JobStatus] = {}
        super().__init__(
            auth=lambda request: request.headers.get("authorization") in allowed,
            windows=[Window(rate_limit_per_minute, window_seconds, "per minute")],
            ledger=ledger,
            clock=clock,
        )

    # -- what tests read ---------------------------------------------------------------------

    def store(self, name: str) -> RecordStore:
        return self.users if name == "users" else self.organizations

    def reset(self) -> None:
        with self._lock:
            super().reset()
            self.users.clear()
            self.organizations.clear()
            self.jobs.clear()

    # -- the vendor's answers ----------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        api = "/api/v2"
        return [
            Route(f"{api}/users/me", self._me, methods=["GET"]),
            Route(f"{api}/users/me.json", self._me, methods=["GET"]),
            Route(f"{api}/user_fields", self._fields, methods=["GET"]),
            Route(f"{api}/organization_fields", self._fields, methods=["GET"]),
            Route(f"{api}/users/create_or_update", self._user_upsert, methods=["POST"]),
            Route(f"{api}/users/create_or_update_many", self._users_many, methods=["POST"]),
            Route(f"{api}/users/create_many", self._users_many, methods=["POST"]),
            Route(f"{api}/users/destroy_many", self._destroy_many, methods=["DELETE"]),
            Route(f"{api}/organizations/create_or_update", self._org_upsert, methods=["POST"]),
            Route(f"{api}/organizations/create_many", self._orgs_many, methods=["POST"]),
            Route(f"{api}/organizations/destroy_many", self._destroy_many, methods=["DELETE"]),
            Route(f"{api}/job_statuses", self._job_list, methods=["GET"]),
            Route(f"{api}/job_statuses/show_many", self._job_many, methods=["GET"]),
            Route(f"{api}/job_statuses/{{id}}", self._job, methods=["GET"]),
        ]

    def unauthorized(self, captured: CapturedRequest) -> Response:
        return self.respond(401, {"error": "Couldn't authenticate you"})

    def slow_down(self, window: Window | None) -> Response:
        now = self.clock()
        wait = max(1, round(window.reset_in(now))) if window else 1
        return self.respond(
            429, "Number of allowed API requests per minute exceeded", {"Retry-After": str(wait)}
        )

    def headers(self) -> dict[str, str]:
        window = self.windows[0]
        now = self.clock()
        remaining = window.remaining(now)
        reset = max(0, round(window.reset_in(now)))
        return {
            "X-Rate-Limit": str(window.limit),
            "X-Rate-Limit-Remaining": str(remaining),
            "ratelimit-limit": str(window.limit),
            "ratelimit-remaining": str(remaining),
            "ratelimit-reset": str(reset),
        }

    def _error(self, status: int, error: str, description: str, **extra: Any) -> Response:
        return self.respond(status, {"error": error, "description": description, **extra})

    def _base(self, request: Request) -> str:
        return str(request.base_url).rstrip("/")

    # -- account metadata --------------------------------------------------------------------

    async def _me(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        user = {"id": 1, "name": "Admin", "email": self.email, "role": "admin", "active": True}
        return self.respond(200, {"user": user})

    async def _fields(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        users = request.url.path.endswith("user_fields")
        keys = self.user_fields if users else self.organization_fields
        name = "user_fields" if users else "organization_fields"
        items = [
            {
                "id": n + 1,
                "key": k,
                "type": "text",
                "title": k.replace("_", " ").title(),
                "active": True,
            }
            for n, k in enumerate(keys)
        ]
        return self.respond(200, {name: items, "next_page": None, "count": len(items)})

    # -- jobs --------------------------------------------------------------------------------

    def _running(self) -> int:
        return sum(1 for j in self.jobs.values() if j.status in ("queued", "working"))

    def _queue(
        self, request: Request, job_type: str, total: int, work: Callable[[], list[dict[str, Any]]]
    ) -> Response:
        with self._lock:
            if self._running() >= self.job_limit:
                self.slow_downs += 1
                return self.respond(
                    429,
                    {
                        "error": "TooManyJobs",
                        "description": f"Only {self.job_limit} jobs may be queued or running",
                    },
                    {"Retry-After": str(max(1, round(self.job_seconds)))},
                )
            job = JobStatus(uuid.uuid4().hex, job_type, total, self.clock(), work=work)
            self.jobs[job.id] = job
        loop = asyncio.get_running_loop()
        loop.call_later(self.job_seconds / 2, self._start, job.id)
        loop.call_later(self.job_seconds, self._finish, job.id)
        return self.respond(200, {"job_status": job.body(self._base(request))})

    def _start(self, job_id: str) -> None:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is not None and job.status == "queued":
                job.status, job.progress = "working", 0

    def _finish(self, job_id: str) -> None:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None or job.work is None:
                return
            job.results = job.work()
            job.status, job.progress, job.work = "completed", job.total, None
            job.message = f"Completed at {now_iso()}"

    def _alive(self, job_id: str) -> JobStatus | None:
        job = self.jobs.get(job_id.removesuffix(".json"))
        if job is None or self.clock() - job.queued_at > self.job_ttl:
            return None
        return job

    async def _job(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        job = self._alive(request.path_params["id"])
        if job is None:
            return self._error(404, "RecordNotFound", "Not found")
        return self.respond(200, {"job_status": job.body(self._base(request))})

    async def _job_many(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        ids = [i for i in request.query_params.get("ids", "").split(",") if i]
        found = [j for j in (self._alive(i) for i in ids) if j is not None]
        return self.respond(200, {"job_statuses": [j.body(self._base(request)) for j in found]})

    async def _job_list(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        alive = [j for j in (self._alive(i) for i in list(self.jobs)) if j is not None]
        latest = sorted(alive, key=lambda j: j.queued_at)[-100:]  # only the latest 100
        return self.respond(200, {"job_statuses": [j.body(self._base(request)) for j in latest]})

    # -- users -------------------------------------------------------------------------------

    async def _user_upsert(self, request: Request) -> Response:
        """One user, synchronously: 201 created or 200 updated, with a ``Location`` header."""
        captured, early = await self.admit(request)
        if early is not None:
            return early
        body = captured.body
        user = body.get("user") if isinstance(body, dict) else None
        if not isinstance(user, dict):
            return self._error(400, "InvalidPayload", 'the body must be {"user": {...}}')
        with self._lock:
            result = self._user(0, user, True)
        if result.get("status") == "Failed":
            return self._error(
                422,
                "RecordInvalid",
                "Record validation errors",
                details={"base": [{"description": result["details"]}]},
            )
        object_id = str(result["id"])
        location = f"{self._base(request)}/api/v2/users/{object_id}.json"
        user_body = {"id": result["id"], **self.users[object_id]}
        status = 201 if result["action"] == "create" else 200
        return self.respond(status, {"user": user_body}, {"Location": location})

    def _items(self, body: Any, key: str) -> list[Any] | str:
        if not isinstance(body, dict) or not isinstance(body.get(key), list):
            return f"the body must be an object with a `{key}` array"
        items: list[Any] = body[key]
        if len(items) > MAX_PER_JOB:
            return f"Too many {key}: {len(items)}; at most {MAX_PER_JOB} per request"
        return items

    async def _users_many(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        if not self.bulk_import:
            return self._error(403, "Forbidden", "Bulk user import is not enabled for this account")
        items = self._items(captured.body, "users")
        if isinstance(items, str):
            return self._error(400, "InvalidPayload", items)
        self.note_batch(len(items))
        upsert = request.url.path.endswith("create_or_update_many")
        users = list(items)

        def work() -> list[dict[str, Any]]:
            return [self._user(n, u, upsert) for n, u in enumerate(users)]

        kind = "bulk_create_or_update_users" if upsert else "bulk_create_users"
        return self._queue(request, kind, len(users), work)

    def _user(self, index: int, user: Any, upsert: bool) -> dict[str, Any]:
        if not isinstance(user, dict):
            return {
                "index": index,
                "status": "Failed",
                "error": "InvalidUser",
                "details": "each user must be an object",
            }
        names = {k: user[k] for k in ("email", "external_id") if user.get(k) not in (None, "")}
        found = None
        if upsert:
            if "external_id" in names:
                found = self.users.find("external_id", names["external_id"])
            if found is None and "email" in names:
                found = self.users.find("email", names["email"])
        kind = "UserUpdateError" if found else "UserCreateError"
        problems = self._user_problems(user, creating=found is None)
        if problems:
            return {
                "index": index,
                "status": "Failed",
                "error": kind,
                "details": "; ".join(problems),
                **names,
            }
        fields = {k: v for k, v in user.items() if k in USER_ATTRIBUTES}
        if found is None:
            fields.setdefault("role", "end-user")
        if found is None:
            other = self.users.find("email", names.get("email"))
            if other is not None:
                email = names["email"]
                return {
                    "index": index,
                    "status": "Failed",
                    "error": kind,
                    **names,
                    "details": f"Email: {email} is already being used by another user",
                }
            object_id = self.users.create(fields)
            action, status = "create", "Created"
        else:
            merged = dict(fields)
            if isinstance(fields.get("user_fields"), dict):
                merged["user_fields"] = {
                    **(self.users[found].get("user_fields") or {}),
                    **fields["user_fields"],
                }
            self.users.modify(found, merged)
            object_id, action, status = found, "update", "Updated"
        if self.ledger is not None:
            self.ledger.apply(action, {"id": object_id, **self.users[object_id]})
        return {"index": index, "id": int(object_id), "action": action, "status": status, **names}

    def _user_problems(self, user: dict[str, Any], *, creating: bool) -> list[str]:
        problems = []
        email = user.get("email")
        if email not in (None, "") and not _EMAIL.match(str(email)):
            problems.append(f"Email: {email} is not properly formatted")
        if creating and not str(user.get("name") or "").strip():
            problems.append("Name: is too short (minimum one character)")
        if user.get("role") not in (None, *ROLES):
            problems.append(f"Role: {user.get('role')} is not included in the list")
        if user.get("user_fields") is not None and not isinstance(user["user_fields"], dict):
            problems.append("User fields: must be an object of field keys and values")
        return problems

    # -- organizations -----------------------------------------------------------------------

    async def _org_upsert(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        body = captured.body
        org = body.get("organization") if isinstance(body, dict) else None
        if not isinstance(org, dict):
            return self._error(400, "InvalidPayload", 'the body must be {"organization": {...}}')
        self.note_batch(1)
        with self._lock:
            found = None
            if org.get("id") is not None and str(org["id"]) in self.organizations:
                found = str(org["id"])
            elif org.get("external_id") not in (None, ""):
                found = self.organizations.find("external_id", org["external_id"])
            outcome = self._org_write(org, found)
        if isinstance(outcome, Response):
            return outcome
        object_id, created = outcome
        return self.respond(201 if created else 200, {"organization": self._org(object_id)})

    def _org_write(self, org: dict[str, Any], found: str | None) -> Response | tuple[str, bool]:
        fields = {k: v for k, v in org.items() if k in ORGANIZATION_ATTRIBUTES}
        name = fields.get("name")
        if found is None and not str(name or "").strip():
            return self._invalid("name", "Name: cannot be blank", "BlankValue")
        if name not in (None, ""):
            other = self.organizations.find("name", name)
            if other is not None and other != found:
                return self._invalid(
                    "name", f"Name: {name} has already been taken", "DuplicateValue"
                )
        if found is None:
            object_id = self.organizations.create(fields)
        else:
            self.organizations.modify(found, fields)
            object_id = found
        if self.ledger is not None:
            self.ledger.apply("upsert", {"id": object_id, **self.organizations[object_id]})
        return object_id, found is None

    def _invalid(self, key: str, description: str, error: str) -> Response:
        details = {key: [{"description": description, "error": error}]}
        return self._error(422, "RecordInvalid", "Record validation errors", details=details)

    def _org(self, object_id: str) -> dict[str, Any]:
        record = self.organizations[object_id]
        return {
            "id": int(object_id),
            **record,
            "created_at": self.organizations.created_at[object_id],
            "updated_at": self.organizations.updated_at[object_id],
        }

    async def _orgs_many(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        items = self._items(captured.body, "organizations")
        if isinstance(items, str):
            return self._error(400, "InvalidPayload", items)
        self.note_batch(len(items))
        orgs = list(items)

        def work() -> list[dict[str, Any]]:
            results = []
            for n, org in enumerate(orgs):
                outcome = self._org_write(org, None) if isinstance(org, dict) else None
                if isinstance(outcome, tuple):
                    results.append(
                        {"index": n, "id": int(outcome[0]), "action": "create", "status": "Created"}
                    )
                else:
                    details = "each organization must be an object"
                    if isinstance(outcome, Response):
                        details = str(outcome.body, "utf-8")
                    results.append(
                        {
                            "index": n,
                            "status": "Failed",
                            "error": "OrganizationCreateError",
                            "details": details,
                        }
                    )
            return results

        return self._queue(request, "bulk_create_organizations", len(orgs), work)

    # -- deletes -----------------------------------------------------------------------------

    async def _destroy_many(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        users = "/users/" in request.url.path
        store = self.users if users else self.organizations
        by = "external_ids" if "external_ids" in request.query_params else "ids"
        values = [v for v in request.query_params.get(by, "").split(",") if v]
        if not values:
            return self._error(400, "InvalidPayload", "give ids or external_ids")
        if len(values) > MAX_PER_JOB:
            return self._error(400, "InvalidPayload", f"at most {MAX_PER_JOB} ids per request")
        self.note_batch(len(values))

        def work() -> list[dict[str, Any]]:
            results = []
            for n, value in enumerate(values):
                object_id = (
                    store.find("external_id", value)
                    if by == "external_ids"
                    else (value if value in store else None)
                )
                if object_id is None:
                    results.append(
                        {
                            "index": n,
                            "status": "Failed",
                            "error": "RecordNotFound",
                            "details": f"{value} not found",
                            by[:-1]: value,
                        }
                    )
                    continue
                record = dict(store[object_id])
                store.archive(object_id)
                if self.ledger is not None:
                    self.ledger.apply("delete", {"id": object_id, **record})
                results.append(
                    {
                        "index": n,
                        "id": int(object_id),
                        "action": "delete",
                        "status": "Deleted",
                        "success": True,
                    }
                )
            return results

        kind = "bulk_delete_users" if users else "bulk_delete_organizations"
        return self._queue(request, kind, len(values), work)
