"""A local fake of SendGrid's Marketing Campaigns contacts API: asynchronous contact upserts,
their import status, lists, searches by email and deletes.

It follows Twilio SendGrid's v3 API reference (links in ``docs/destinations/sendgrid.md``):

* ``Authorization: Bearer <API key>``; anything else is a 401 ``{"errors": [{"field": null,
  "message": "authorization required"}]}``.
* ``PUT /v3/marketing/contacts`` ``{"list_ids"?, "contacts": [...]}``: at most 30,000 contacts
  and 6 MB; a contact needs an identifier (``email`` here). A request that fails validation is
  a **400** ``{"errors": [{"field": "contacts[3].email", "message": ...}]}`` and imports
  nothing; otherwise **202** ``{"job_id", "_metadata"}`` and the contacts are imported later.
* ``GET /v3/marketing/contacts/imports/{id}``: ``status`` ``pending`` until the job is done
  (``job_seconds`` after it was accepted, or when polled ``polls_to_finish`` times), then
  ``completed``, ``errored`` (some contacts failed; ``results.errors_url`` is a CSV of them)
  or ``failed``; ``results`` has ``requested_count``, ``created_count``, ``updated_count``,
  ``errored_count``. A contact whose custom field has another type fails in the job.
* ``GET /v3/marketing/field_definitions``: ``custom_fields`` (id, name, field_type) and
  ``reserved_fields``.
* ``POST /v3/marketing/contacts/search/emails`` (at most 100): ``{"result": {email: {"contact":
  {...}} | {"error": "contact not found"}}}``, a 404 when none is found.
* ``DELETE /v3/marketing/contacts?ids=`` and ``DELETE /v3/marketing/lists/{id}/contacts?
  contact_ids=`` (at most 100 ids): 202 ``{"job_id"}``.
* ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (epoch seconds) on every answer; a full
  window is a 429 with them (SendGrid publishes no number: ``rate`` per ``window_seconds``
  here).

Not confirmed (the fake's choices, said in the docs page): the errors file's format (here a
CSV with ``email`` and ``error`` columns), the field path of a refused contact in a 400, and
the rate of these endpoints.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import CapturedRequest, FakeAPI, Window, bearer, now_iso

MAX_CONTACTS = 30_000
MAX_BYTES = 6_000_000
MAX_IDS = 100
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
RESERVED = (
    "email", "phone_number_id", "external_id", "anonymous_id", "alternate_emails",
    "address_line_1", "address_line_2", "city", "state_province_region", "country",
    "postal_code", "first_name", "last_name", "unique_name",
)  # fmt: skip
DEFAULT_FIELDS = {"plan": "Text", "seats": "Number", "signup_date": "Date", "mrr": "Number"}


class SendGridFake(FakeAPI):
    """An in-memory SendGrid Marketing account served as a Starlette app (``.app``)."""

    type = "sendgrid"
    vendor = "SendGrid"
    request_id_header = None

    def __init__(
        self,
        token: str = "SG.demo-0000-local-fake",
        *,
        job_seconds: float = 0.0,
        polls_to_finish: int = 1,
        rate: int = 600,
        window_seconds: float = 60.0,
        custom_fields: dict[str, str] | None = None,
    ) -> None:
        self.job_seconds = job_seconds
        self.polls_to_finish = polls_to_finish
        self.window = Window(rate, window_seconds, "rate")
        self.contacts: dict[str, dict[str, Any]] = {}
        """Lower-cased email -> contact (``id``, ``email``, reserved and ``custom_fields``)."""
        self.lists: dict[str, set[str]] = {}
        """List id -> contact ids."""
        self.field_defs = {
            f"e{n}_{kind[0]}": (name, kind)
            for n, (name, kind) in enumerate((custom_fields or DEFAULT_FIELDS).items(), start=1)
        }
        """Custom field id -> (name, type)."""
        self.jobs: dict[str, dict[str, Any]] = {}
        self.submissions = 0
        self.errors_files: dict[str, str] = {}
        super().__init__(auth=bearer(token), windows=[self.window])

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v3/marketing/contacts", self.upsert, methods=["PUT"]),
            Route("/v3/marketing/contacts", self.delete_contacts, methods=["DELETE"]),
            Route("/v3/marketing/contacts/imports/{job_id}", self.job_status, methods=["GET"]),
            Route("/v3/marketing/contacts/search/emails", self.search, methods=["POST"]),
            Route("/v3/marketing/field_definitions", self.fields, methods=["GET"]),
            Route("/v3/marketing/lists/{list_id}/contacts", self.remove, methods=["DELETE"]),
            Route("/downloads/errors/{job_id}.csv", self.errors_file, methods=["GET"]),
        ]

    # -- what tests read --------------------------------------------------------------------

    def contact(self, email: str) -> dict[str, Any] | None:
        return self.contacts.get(email.casefold())

    def custom(self, email: str) -> dict[str, Any]:
        """A contact's custom fields by name."""
        found = self.contact(email) or {}
        return {self.field_defs[k][0]: v for k, v in found.get("custom_fields", {}).items()}

    def members(self, list_id: str) -> set[str]:
        by_id = {c["id"]: c["email"] for c in self.contacts.values()}
        return {by_id[i] for i in self.lists.get(list_id, set()) if i in by_id}

    def finish_jobs(self) -> None:
        with self._lock:
            for job in self.jobs.values():
                if job["status"] == "pending":
                    self._run(job)

    # -- the vendor's answers ---------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        now = self.clock()
        return {
            "X-RateLimit-Limit": str(self.window.limit),
            "X-RateLimit-Remaining": str(self.window.remaining(now)),
            "X-RateLimit-Reset": str(math.ceil(time.time() + self.window.reset_in(now))),
        }

    def slow_down(self, window: Window | None) -> Response:
        return self.respond(429, {"errors": [{"field": None, "message": "too many requests"}]})

    def unauthorized(self, captured: CapturedRequest) -> Response:
        return self.respond(401, {"errors": [{"field": None, "message": "authorization required"}]})

    def bad(self, field: str | None, message: str, status: int = 400) -> Response:
        return self.respond(status, {"errors": [{"field": field, "message": message}]})

    # -- contacts ---------------------------------------------------------------------------

    async def upsert(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        if len(captured.raw) > MAX_BYTES:
            return self.bad(None, "request body is larger than 6 MB", 413)
        body = captured.body if isinstance(captured.body, dict) else {}
        contacts = body.get("contacts")
        if not isinstance(contacts, list) or not contacts:
            return self.bad("contacts", "contacts is required")
        if len(contacts) > MAX_CONTACTS:
            return self.bad("contacts", f"at most {MAX_CONTACTS} contacts per request")
        errors = []
        for n, contact in enumerate(contacts):
            email = contact.get("email") if isinstance(contact, dict) else None
            if not isinstance(email, str) or not _EMAIL.match(email):
                errors.append({"field": f"contacts[{n}].email",
                               "message": "email address is invalid"})  # fmt: skip
                continue
            for key in contact.get("custom_fields") or {}:
                if key not in self.field_defs:
                    errors.append({"field": f"contacts[{n}].custom_fields.{key}",
                                   "message": f"custom field {key} does not exist"})  # fmt: skip
        if errors:
            return self.respond(400, {"errors": errors})
        self.note_batch(len(contacts))
        job_id = str(uuid.uuid4())
        with self._lock:
            self.submissions += 1
            self.jobs[job_id] = {
                "id": job_id, "status": "pending", "job_type": "upsert", "polls": 0,
                "accepted": self.clock(), "contacts": contacts,
                "list_ids": [str(i) for i in body.get("list_ids") or []],
            }  # fmt: skip
        meta = {"self": f"{self.url}/v3/marketing/contacts/imports/{job_id}"}
        return self.respond(202, {"job_id": job_id, "_metadata": meta})

    def _valid(self, contact: dict[str, Any]) -> str:
        for key, value in (contact.get("custom_fields") or {}).items():
            kind = self.field_defs[key][1]
            if kind == "Number" and (isinstance(value, bool) or not isinstance(value, int | float)):
                return f"custom field {self.field_defs[key][0]} must be a number"
        return ""

    def _run(self, job: dict[str, Any]) -> None:
        created = updated = 0
        failed: list[tuple[str, str]] = []
        for contact in job["contacts"]:
            problem = self._valid(contact)
            if problem:
                failed.append((contact["email"], problem))
                continue
            key = contact["email"].casefold()
            stored = self.contacts.get(key)
            if stored is None:
                stored = self.contacts[key] = {"id": str(uuid.uuid4()), "created_at": now_iso(),
                                               "custom_fields": {}}  # fmt: skip
                created += 1
            else:
                updated += 1
            for name, value in contact.items():
                if name == "custom_fields":
                    stored["custom_fields"].update(value or {})
                elif name in RESERVED:
                    stored[name] = value
            stored["updated_at"] = now_iso()
            for list_id in job["list_ids"]:
                self.lists.setdefault(list_id, set()).add(stored["id"])
        results: dict[str, Any] = {
            "requested_count": len(job["contacts"]),
            "created_count": created,
            "updated_count": updated,
            "deleted_count": 0,
            "errored_count": len(failed),
        }
        if failed:
            lines = ["email,error"] + [f"{e},{m}" for e, m in failed]
            self.errors_files[job["id"]] = "\n".join(lines) + "\n"
            results["errors_url"] = f"{self.url}/downloads/errors/{job['id']}.csv"
        job["results"] = results
        job["status"] = (
            "failed" if len(failed) == len(job["contacts"]) else "errored" if failed
            else "completed"
        )  # fmt: skip
        job["finished_at"] = now_iso()

    async def job_status(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        with self._lock:
            job = self.jobs.get(request.path_params["job_id"])
            if job is None:
                return self.bad(None, "job not found", 404)
            job["polls"] += 1
            due = self.clock() - job["accepted"] >= self.job_seconds
            if job["status"] == "pending" and due and job["polls"] >= self.polls_to_finish:
                self._run(job)
            public: dict[str, Any] = {k: job[k] for k in ("id", "status", "job_type")}
            if "results" in job:
                public["results"] = job["results"]
                public["finished_at"] = job["finished_at"]
        return self.respond(200, public)

    async def errors_file(self, request: Request) -> Response:
        await self.capture(request)  # logged; it takes no credentials (a download URL)
        text = self.errors_files.get(request.path_params["job_id"])
        if text is None:
            return Response(status_code=404)
        return Response(text, media_type="text/csv")

    async def fields(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        custom = [{"id": k, "name": n, "field_type": t} for k, (n, t) in self.field_defs.items()]
        reserved = [{"id": f"_rf{n}", "name": name, "field_type": "Text"}
                    for n, name in enumerate(RESERVED)]  # fmt: skip
        return self.respond(200, {"custom_fields": custom, "reserved_fields": reserved})

    async def search(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        emails = captured.body.get("emails") if isinstance(captured.body, dict) else None
        if not isinstance(emails, list) or not emails or len(emails) > 100:
            return self.bad("emails", "emails: 1 to 100 addresses")
        result: dict[str, Any] = {}
        with self._lock:
            for email in emails:
                found = self.contacts.get(str(email).casefold())
                result[email] = {"contact": found} if found else {"error": "contact not found"}
        if not any("contact" in v for v in result.values()):
            return self.bad(None, "no contacts found", 404)
        return self.respond(200, {"result": result})

    def _ids(self, captured: CapturedRequest, name: str) -> list[str] | Response:
        ids = [i for i in captured.query.get(name, "").split(",") if i]
        if not ids or len(ids) > MAX_IDS:
            return self.bad(name, f"{name}: 1 to {MAX_IDS} ids")
        return ids

    async def delete_contacts(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        ids = self._ids(captured, "ids")
        if isinstance(ids, Response):
            return ids
        self.note_batch(len(ids))
        with self._lock:
            for key in [k for k, c in self.contacts.items() if c["id"] in ids]:
                del self.contacts[key]
            for members in self.lists.values():
                members.difference_update(ids)
        return self.respond(202, {"job_id": str(uuid.uuid4())})

    async def remove(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        ids = self._ids(captured, "contact_ids")
        if isinstance(ids, Response):
            return ids
        self.note_batch(len(ids))
        with self._lock:
            members = self.lists.get(request.path_params["list_id"])
            if members is None:
                return self.bad(None, "list not found", 404)
            members.difference_update(ids)
        return self.respond(202, {"job_id": str(uuid.uuid4())})


__all__ = ["SendGridFake"]
