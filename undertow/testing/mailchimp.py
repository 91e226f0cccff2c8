"""A local fake of the Mailchimp Marketing API: one account's audiences, their members and tags.

It follows ``../shared/specs/mailchimp/NOTES.md`` and the Marketing API reference (links in
``docs/destinations/mailchimp.md``):

* HTTP Basic ``anystring:<api key>`` (or ``Bearer <key>``); anything else is a 401 problem
  document (RFC 7807: ``type``, ``title``, ``status``, ``detail``, ``instance``).
* ``GET /3.0/ping``: ``{"health_status": "Everything's Chimpy!"}``.
* ``POST /3.0/lists/{list_id}``: at most 500 ``members`` (more: 400); with
  ``update_existing`` an existing member is updated, without it a repeat is an
  ``ERROR_CONTACT_EXISTS``. The answer is **200 even when members fail**: ``new_members``,
  ``updated_members``, ``errors`` (``email_address``, ``error``, ``error_code``),
  ``total_created``, ``total_updated``, ``error_count``. An invalid email or status, or a
  merge field the audience lacks, fails that member alone.
* ``DELETE /3.0/lists/{id}/members/{hash}`` archives (204); ``POST .../actions/
  delete-permanent`` deletes (204); an unknown member is a 404.
* Tags are static segments: ``GET/POST /3.0/lists/{id}/segments``, and ``POST
  .../segments/{segment_id}`` with ``members_to_add`` / ``members_to_remove`` (at most 500
  each): an email that is not a member of the audience is listed in ``errors``.
* **At most 10 requests at once per key**: the 11th gets a 429 problem (no ``Retry-After``).
  ``hold`` keeps each answer that many seconds, so a test can reach the cap.

Not confirmed (the fake's choice, said in the docs page): the wording of error messages,
whether an unknown merge field fails a member or is ignored (here: fails it), and how the
segment endpoint reports emails that are not members (here: in ``errors``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import CapturedRequest, FakeAPI, bearer, now_iso

MAX_MEMBERS = 500
MAX_CONNECTIONS = 10
STATUSES = {"subscribed", "unsubscribed", "cleaned", "pending", "transactional"}
DEFAULT_MERGE_FIELDS = ("FNAME", "LNAME", "ADDRESS", "PHONE", "BIRTHDAY")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_TAG = re.compile(r"^[A-Z][A-Z0-9_]{0,9}$")


def member_hash(email: str) -> str:
    return hashlib.md5(email.strip().lower().encode(), usedforsecurity=False).hexdigest()


class MailchimpFake(FakeAPI):
    """An in-memory Mailchimp account served as a Starlette app (``.app``)."""

    type = "mailchimp"
    vendor = "Mailchimp"
    request_id_header = None

    def __init__(
        self,
        token: str = "0000demo0local0fake0000000000000-us1",
        *,
        merge_fields: tuple[str, ...] | None = None,
        any_merge_field: bool = True,
        hold: float = 0.0,
        connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.token = token
        self.merge_fields = set(merge_fields or DEFAULT_MERGE_FIELDS)
        """Merge tags every audience has; with ``any_merge_field`` any valid tag is created."""
        self.any_merge_field = any_merge_field
        self.hold = hold
        self.connections = connections
        self.in_flight = 0
        self.most_in_flight = 0
        self.members: dict[str, dict[str, dict[str, Any]]] = {}
        """list id -> subscriber hash -> member (``status`` ``archived`` once archived)."""
        self.segments: dict[str, dict[str, dict[str, Any]]] = {}
        """list id -> segment id -> {id, name, type, members: set of hashes}."""
        self._next_segment = 1000
        check_bearer = bearer(token)

        def auth(request: Request) -> bool:
            header = request.headers.get("authorization", "")
            if header.lower().startswith("bearer "):
                return check_bearer(request)
            if not header.lower().startswith("basic "):
                return False
            try:
                decoded = base64.b64decode(header.split(" ", 1)[1]).decode()
            except (ValueError, binascii.Error):
                return False
            return decoded.split(":", 1)[-1] == token  # any user name, as Mailchimp says

        super().__init__(auth=auth)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/3.0/ping", self.ping, methods=["GET"]),
            Route("/3.0/lists/{list_id}", self.batch_subscribe, methods=["POST"]),
            Route("/3.0/lists/{list_id}/members/{hash}", self.archive, methods=["DELETE"]),
            Route(
                "/3.0/lists/{list_id}/members/{hash}/actions/delete-permanent",
                self.delete_permanent,
                methods=["POST"],
            ),
            Route("/3.0/lists/{list_id}/segments", self.list_segments, methods=["GET"]),
            Route("/3.0/lists/{list_id}/segments", self.create_segment, methods=["POST"]),
            Route(
                "/3.0/lists/{list_id}/segments/{segment_id}",
                self.segment_members,
                methods=["POST"],
            ),
        ]

    # -- what tests read --------------------------------------------------------------------

    def member(self, email: str, list_id: str | None = None) -> dict[str, Any] | None:
        """The audience member with this email (archived ones are None)."""
        for lid, members in self.members.items():
            if list_id is None or lid == list_id:
                found = members.get(member_hash(email))
                if found is not None and found["status"] != "archived":
                    return found
        return None

    def active(self, list_id: str | None = None) -> int:
        return sum(
            1
            for lid, members in self.members.items()
            if list_id is None or lid == list_id
            for m in members.values()
            if m["status"] != "archived"
        )

    def tagged(self, tag: str, list_id: str | None = None) -> set[str]:
        """Emails holding ``tag``."""
        out: set[str] = set()
        for lid, segments in self.segments.items():
            if list_id is not None and lid != list_id:
                continue
            for segment in segments.values():
                if segment["name"] == tag:
                    members = self.members.get(lid, {})
                    out |= {members[h]["email_address"] for h in segment["members"] if h in members}
        return out

    # -- the vendor's answers ---------------------------------------------------------------

    def problem(self, status: int, title: str, detail: str, instance: str = "") -> Response:
        slug = title.lower().replace(" ", "-")
        return self.respond(
            status,
            {
                "type": f"https://mailchimp.com/developer/marketing/docs/errors/#{slug}",
                "title": title,
                "status": status,
                "detail": detail,
                "instance": instance or now_iso(),
            },
            {"Content-Type": "application/problem+json"},
        )

    def slow_down(self, window: Any) -> Response:
        return self.problem(
            429, "Too Many Requests",
            f"You have exceeded the limit of {self.connections} simultaneous connections.",
        )  # fmt: skip

    def unauthorized(self, captured: CapturedRequest) -> Response:
        return self.problem(
            401, "API Key Invalid", "Your API key may be invalid, or you've attempted to access "
            "the wrong datacenter.",
        )  # fmt: skip

    async def _enter(self, request: Request) -> tuple[CapturedRequest, Response | None]:
        captured, early = await self.admit(request)
        if early is not None:
            return captured, early
        with self._lock:
            if self.in_flight >= self.connections:
                self.slow_downs += 1
                answer = self.slow_down(None)
                captured.status = 429
                return captured, answer
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        return captured, None

    async def _leave(self, answer: Response) -> Response:
        try:
            if self.hold:
                await asyncio.sleep(self.hold)
        finally:
            with self._lock:
                self.in_flight -= 1
        return answer

    # -- routes -----------------------------------------------------------------------------

    async def ping(self, request: Request) -> Response:
        _, early = await self._enter(request)
        if early is not None:
            return early
        return await self._leave(self.respond(200, {"health_status": "Everything's Chimpy!"}))

    def _valid_merge(self, fields: Any) -> str:
        if not isinstance(fields, dict):
            return "merge_fields must be an object"
        for name, value in fields.items():
            known = name in self.merge_fields or (self.any_merge_field and _TAG.match(name))
            if not known:
                return f"Your merge fields were invalid: {name} is not a merge field"
            if isinstance(value, list):
                return f"Your merge fields were invalid: {name} must be a string"
        return ""

    async def batch_subscribe(self, request: Request) -> Response:
        captured, early = await self._enter(request)
        if early is not None:
            return early
        body = captured.body
        list_id = request.path_params["list_id"]
        members = body.get("members") if isinstance(body, dict) else None
        if not isinstance(members, list):
            return await self._leave(
                self.problem(400, "Invalid Resource", "The resource submitted could not be "
                             "validated: members is required")
            )  # fmt: skip
        if len(members) > MAX_MEMBERS:
            return await self._leave(
                self.problem(400, "Invalid Resource", f"The resource submitted could not be "
                             f"validated: members must contain at most {MAX_MEMBERS} items")
            )  # fmt: skip
        self.note_batch(len(members))
        update = bool(body.get("update_existing"))
        new: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        with self._lock:
            audience = self.members.setdefault(list_id, {})
            for member in members:
                email = str(member.get("email_address") or "") if isinstance(member, dict) else ""
                reason, code = self._member_problem(member, email)
                if not reason:
                    key = member_hash(email)
                    existing = audience.get(key)
                    if existing is not None and existing["status"] != "archived" and not update:
                        reason = f"{email} is already a list member. Use PUT to insert or update."
                        code = "ERROR_CONTACT_EXISTS"
                if reason:
                    errors.append({"email_address": email, "error": reason, "error_code": code})
                    continue
                stored = self._apply(audience, member, email)
                (updated if existing is not None else new).append(stored)
        answer = {
            "new_members": [self._public(m, list_id) for m in new],
            "updated_members": [self._public(m, list_id) for m in updated],
            "errors": errors,
            "total_created": len(new),
            "total_updated": len(updated),
            "error_count": len(errors),
        }
        return await self._leave(self.respond(200, answer))

    def _member_problem(self, member: Any, email: str) -> tuple[str, str]:
        if not isinstance(member, dict) or not _EMAIL.match(email):
            return (
                f"{email or 'The email address'} looks fake or invalid, please enter a real "
                "email address.",
                "ERROR_GENERIC",
            )
        if member.get("status") not in STATUSES:
            return (f"Invalid status {member.get('status')!r} for {email}", "ERROR_GENERIC")
        problem = self._valid_merge(member.get("merge_fields", {}))
        return (problem, "ERROR_GENERIC") if problem else ("", "")

    @staticmethod
    def _apply(audience: dict[str, dict[str, Any]], member: dict[str, Any], email: str) -> Any:
        key = member_hash(email)
        stored = audience.get(key)
        if stored is None or stored["status"] == "archived":
            stored = audience[key] = {
                "id": key, "email_address": email, "merge_fields": {}, "tags": [],
                "created_at": now_iso(),
            }  # fmt: skip
        stored["status"] = member["status"]
        stored["merge_fields"].update(member.get("merge_fields") or {})
        for name in ("language", "vip", "email_type", "location"):
            if name in member:
                stored[name] = member[name]
        for tag in member.get("tags") or []:
            if tag not in stored["tags"]:
                stored["tags"].append(tag)
        stored["last_changed"] = now_iso()
        return stored

    @staticmethod
    def _public(member: dict[str, Any], list_id: str) -> dict[str, Any]:
        return {**member, "list_id": list_id, "unique_email_id": member["id"][:10]}

    async def _gone(self, request: Request, permanent: bool) -> Response:
        _, early = await self._enter(request)
        if early is not None:
            return early
        list_id, key = request.path_params["list_id"], request.path_params["hash"]
        with self._lock:
            audience = self.members.get(list_id, {})
            found = audience.get(key)
            if found is None or (found["status"] == "archived" and not permanent):
                return await self._leave(
                    self.problem(404, "Resource Not Found", "The requested resource could not "
                                 "be found.")
                )  # fmt: skip
            if permanent:
                del audience[key]
            else:
                found["status"] = "archived"
            for segment in self.segments.get(list_id, {}).values():
                segment["members"].discard(key)
        return await self._leave(self.respond(204))

    async def archive(self, request: Request) -> Response:
        return await self._gone(request, permanent=False)

    async def delete_permanent(self, request: Request) -> Response:
        return await self._gone(request, permanent=True)

    # -- tags (static segments) -------------------------------------------------------------

    async def list_segments(self, request: Request) -> Response:
        captured, early = await self._enter(request)
        if early is not None:
            return early
        list_id = request.path_params["list_id"]
        wanted = captured.query.get("type")
        count = min(1000, int(captured.query.get("count", "10")))
        offset = int(captured.query.get("offset", "0"))
        with self._lock:
            found = [
                {k: v for k, v in s.items() if k != "members"} | {"member_count": len(s["members"])}
                for s in self.segments.get(list_id, {}).values()
                if wanted is None or s["type"] == wanted
            ]
        page = found[offset : offset + count]
        body = {"segments": page, "list_id": list_id, "total_items": len(found)}
        return await self._leave(self.respond(200, body))

    async def create_segment(self, request: Request) -> Response:
        captured, early = await self._enter(request)
        if early is not None:
            return early
        list_id = request.path_params["list_id"]
        body = captured.body if isinstance(captured.body, dict) else {}
        name = body.get("name")
        if not isinstance(name, str) or not name or len(name) > 100:
            return await self._leave(
                self.problem(400, "Invalid Resource", "name must be 1 to 100 characters")
            )
        with self._lock:
            segments = self.segments.setdefault(list_id, {})
            if any(s["name"] == name for s in segments.values()):
                return await self._leave(
                    self.problem(400, "Invalid Resource", f"Tag {name!r} already exists.")
                )
            self._next_segment += 1
            segment = {"id": self._next_segment, "name": name, "type": "static",
                       "members": set(), "list_id": list_id}  # fmt: skip
            segments[str(segment["id"])] = segment
        public = {k: v for k, v in segment.items() if k != "members"} | {"member_count": 0}
        return await self._leave(self.respond(200, public))

    async def segment_members(self, request: Request) -> Response:
        captured, early = await self._enter(request)
        if early is not None:
            return early
        list_id, segment_id = request.path_params["list_id"], request.path_params["segment_id"]
        body = captured.body if isinstance(captured.body, dict) else {}
        add = body.get("members_to_add") or []
        remove = body.get("members_to_remove") or []
        if not isinstance(add, list) or not isinstance(remove, list):
            return await self._leave(self.problem(400, "Invalid Resource", "emails must be lists"))
        if len(add) > MAX_MEMBERS or len(remove) > MAX_MEMBERS:
            return await self._leave(
                self.problem(400, "Invalid Resource", f"members_to_add and members_to_remove "
                             f"take at most {MAX_MEMBERS} emails each")
            )  # fmt: skip
        self.note_batch(max(len(add), len(remove)))
        with self._lock:
            segment = self.segments.get(list_id, {}).get(segment_id)
            if segment is None:
                return await self._leave(
                    self.problem(404, "Resource Not Found", "The requested resource could not "
                                 "be found.")
                )  # fmt: skip
            audience = self.members.get(list_id, {})
            added, removed, missing = [], [], []
            for email in add:
                key = member_hash(str(email))
                if key not in audience or audience[key]["status"] == "archived":
                    missing.append(email)
                    continue
                segment["members"].add(key)
                added.append(self._public(audience[key], list_id))
            for email in remove:
                key = member_hash(str(email))
                if key in segment["members"]:
                    segment["members"].discard(key)
                    removed.append(self._public(audience[key], list_id))
        errors = (
            [{"email_addresses": missing, "error": "Email addresses are not members of the "
              "audience"}] if missing else []
        )  # fmt: skip
        answer = {
            "members_added": added,
            "members_removed": removed,
            "errors": errors,
            "total_added": len(added),
            "total_removed": len(removed),
            "error_count": len(missing),
        }
        return await self._leave(self.respond(200, answer))


__all__ = ["MailchimpFake", "member_hash"]
