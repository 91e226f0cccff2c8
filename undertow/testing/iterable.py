"""A faithful local fake of Iterable's API: users bulk update and delete, list subscribe and
unsubscribe, bulk event tracking.

It follows ``../shared/specs/iterable/NOTES.md`` and Iterable's API reference (links in
``docs/destinations/iterable.md``):

* ``Api-Key: <server-side key>``; anything else is a 401 ``BadApiKey``.
* ``POST /api/users/bulkUpdate``: ``users`` each naming ``email`` or ``userId``; adds or
  overwrites top-level ``dataFields`` and leaves the others (``mergeNestedObjects`` merges
  nested objects). A field's type cannot change once set: a user whose value has another
  type fails (``invalidDataEmails``). The answer is **200** with ``successCount``,
  ``failCount`` and ``failedUpdates`` (lists of identifiers by reason), never indexes.
* ``POST /api/lists/subscribe`` and ``/unsubscribe`` (``listId`` a number, ``subscribers``):
  200 with ``successCount``, ``failCount``, ``invalidEmails``, ``invalidUserIds``.
* ``POST /api/events/trackBulk``: ``eventName`` required; an event whose ``id`` exists is
  updated, not added (:attr:`IterableFake.events` holds one per id).
* ``DELETE /api/users/{email}`` and ``/api/users/byUserId/{userId}``.
* A body over 4 MB is a 400 ``BatchTooLarge``. Each endpoint has its own window
  (bulkUpdate 5/s, trackBulk 10/s, deletes 100/s, lists 25/s); a full one answers 429 with
  ``params.rateLimitReset`` (seconds) in the body and no ``Retry-After``.

Not confirmed: the lists endpoints' rate (Iterable's reference states none: 25/s is the
connector's conservative default), and the code of a delete of an unknown user (here a 400
``NotFound``).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import CapturedRequest, FakeAPI, Window, now_iso

MAX_BODY = 4_000_000
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
RATES = {"bulkUpdate": 5, "trackBulk": 10, "delete": 100, "lists": 25, "read": 100}


def kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "string"


class IterableFake(FakeAPI):
    """An in-memory Iterable project served as a Starlette app (``.app``)."""

    type = "iterable"
    vendor = "Iterable"
    request_id_header = None

    def __init__(
        self,
        token: str = "iterable-demo-0000-local-fake",
        *,
        window_seconds: float = 1.0,
        rates: dict[str, int] | None = None,
        hold: Callable[[str, Any], float] | None = None,
    ) -> None:
        self.token = token
        self.rates = {**RATES, **(rates or {})}
        self.window_seconds = window_seconds
        self.hold = hold
        self.users: dict[str, dict[str, Any]] = {}
        """``email:a@x.com`` or ``userId:42`` -> {email, userId, dataFields}."""
        self.field_types: dict[str, str] = {}
        """The project's user fields and their types (fixed once set)."""
        self.lists: dict[int, set[str]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        """Event id -> the event (an existing id is updated)."""
        self.event_writes = 0
        self._windows: dict[str, Window] = {}
        super().__init__(auth=lambda r: r.headers.get("api-key") == token)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/lists", self.get_lists, methods=["GET"]),
            Route("/api/users/bulkUpdate", self.bulk_update, methods=["POST"]),
            Route("/api/lists/subscribe", self.subscribe, methods=["POST"]),
            Route("/api/lists/unsubscribe", self.unsubscribe, methods=["POST"]),
            Route("/api/events/trackBulk", self.track_bulk, methods=["POST"]),
            Route("/api/users/byUserId/{user_id:path}", self.delete_user_id, methods=["DELETE"]),
            Route("/api/users/{email:path}", self.delete_email, methods=["DELETE"]),
        ]

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._windows.clear()

    def windows_for(self, captured: CapturedRequest) -> list[Window]:
        path = captured.path
        name = (
            "bulkUpdate"
            if path.endswith("/bulkUpdate")
            else "trackBulk"
            if path.endswith("/trackBulk")
            else "lists"
            if path.startswith("/api/lists/")
            else "delete"
            if captured.method == "DELETE"
            else "read"
        )
        found = self._windows.get(name)
        if found is None:
            found = self._windows[name] = Window(self.rates[name], self.window_seconds, name)
        return [found]

    def slow_down(self, window: Window | None) -> Response:
        reset = math.ceil(window.reset_in(self.clock())) if window else 1
        params = {
            "rateLimitLimit": window.limit if window else 0,
            "rateLimitRemaining": 0,
            "rateLimitReset": max(1, reset),
        }
        return self.respond(
            429, {"msg": "Rate limit exceeded", "code": "RateLimitExceeded", "params": params}
        )

    def unauthorized(self, captured: Any) -> Response:
        return self.respond(401, {"msg": "Invalid API key", "code": "BadApiKey", "params": None})

    def user(self, field: str, value: Any) -> dict[str, Any] | None:
        text = str(value).casefold() if field == "email" else str(value)
        return self.users.get(f"{field}:{text}")

    def members(self, list_id: int) -> set[str]:
        return set(self.lists.get(list_id, set()))

    # -- common -----------------------------------------------------------------------------

    async def _read(self, request: Request) -> tuple[Any, Response | None]:
        captured, early = await self.admit(request)
        if early is not None:
            return None, early
        if len(captured.raw) > MAX_BODY:
            return None, self.bad("BatchTooLarge", "Request body exceeds 4MB")
        if request.method == "POST" and not isinstance(captured.body, dict):
            return None, self.bad("BadJsonBody", "Request body is not a JSON object")
        return captured.body, None

    def bad(self, code: str, msg: str) -> Response:
        return self.respond(400, {"msg": msg, "code": code, "params": None})

    async def _answer(self, path: str, body: Any, response: Response) -> Response:
        if self.hold is not None:
            seconds = self.hold(path, body)
            if seconds:
                await asyncio.sleep(seconds)
        return response

    def _identity(self, who: dict[str, Any], failed: dict[str, list[str]]) -> str | None:
        email, user_id = who.get("email"), who.get("userId")
        prefer = bool(who.get("preferUserId"))
        if user_id not in (None, "") and (prefer or email in (None, "")):
            if not isinstance(user_id, str) or user_id != user_id.strip() or len(user_id) > 512:
                failed["invalidUserIds"].append(str(user_id))
                return None
            return f"userId:{user_id}"
        if email in (None, ""):
            return None
        if not _EMAIL.match(str(email)):
            failed["invalidEmails"].append(str(email))
            return None
        return f"email:{str(email).casefold()}"

    @staticmethod
    def _failed() -> dict[str, list[str]]:
        return {
            name: []
            for name in (
                "invalidEmails",
                "invalidUserIds",
                "notFoundEmails",
                "notFoundUserIds",
                "forgottenEmails",
                "forgottenUserIds",
                "conflictEmails",
                "conflictUserIds",
                "invalidDataEmails",
                "invalidDataUserIds",
            )
        }

    def _upsert(self, who: str, obj: dict[str, Any], data: dict[str, Any], merge: bool) -> str:
        """The field type problem, or '' once applied."""
        for name, value in data.items():
            if value is None:
                continue
            known = self.field_types.get(name)
            if known is not None and known != kind(value):
                return f"field {name!r} is a {known}, not a {kind(value)}"
        created = [n for n, v in data.items() if v is not None and n not in self.field_types]
        for name in created:
            self.field_types[name] = kind(data[name])
        user = self.users.setdefault(who, {"dataFields": {}})
        for key in ("email", "userId"):
            if obj.get(key) not in (None, ""):
                user[key] = obj[key]
        fields = user["dataFields"]
        for name, value in data.items():
            if merge and isinstance(value, dict) and isinstance(fields.get(name), dict):
                fields[name] = {**fields[name], **value}
            else:
                fields[name] = value
        user["updated_at"] = now_iso()
        return ""

    # -- users ------------------------------------------------------------------------------

    async def bulk_update(self, request: Request) -> Response:
        body, early = await self._read(request)
        if early is not None:
            return early
        users = body.get("users")
        if not isinstance(users, list):
            return self.bad("BadParams", "'users' is required")
        self.note_batch(len(users))
        failed = self._failed()
        success = 0
        created: list[str] = []
        with self._lock:
            for obj in users:
                who = self._identity(obj, failed) if isinstance(obj, dict) else None
                if who is None:
                    continue
                data = obj.get("dataFields") or {}
                before = set(self.field_types)
                problem = self._upsert(who, obj, data, bool(obj.get("mergeNestedObjects")))
                if problem:
                    failed[
                        "invalidData" + ("UserIds" if who.startswith("userId:") else "Emails")
                    ].append(
                        str(obj.get("userId") if who.startswith("userId:") else obj.get("email"))
                    )
                    continue
                created += sorted(set(self.field_types) - before)
                success += 1
        answer = {
            "successCount": success,
            "failCount": len(users) - success,
            "createdFields": created,
            "failedUpdates": failed,
        }
        return await self._answer("/api/users/bulkUpdate", body, self.respond(200, answer))

    async def _delete(self, request: Request, who: str) -> Response:
        _, early = await self._read(request)
        if early is not None:
            return early
        with self._lock:
            gone = self.users.pop(who, None)
            for members in self.lists.values():
                members.discard(who)
        if gone is None:
            return self.respond(
                400, {"msg": "User does not exist", "code": "NotFound", "params": None}
            )
        return self.respond(200, {"msg": "User deleted", "code": "Success", "params": None})

    async def delete_email(self, request: Request) -> Response:
        return await self._delete(request, f"email:{request.path_params['email'].casefold()}")

    async def delete_user_id(self, request: Request) -> Response:
        return await self._delete(request, f"userId:{request.path_params['user_id']}")

    async def get_lists(self, request: Request) -> Response:
        _, early = await self._read(request)
        if early is not None:
            return early
        return self.respond(
            200, {"lists": [{"id": i, "name": f"list {i}"} for i in sorted(self.lists)]}
        )

    # -- lists ------------------------------------------------------------------------------

    async def _membership(self, request: Request, join: bool) -> Response:
        body, early = await self._read(request)
        if early is not None:
            return early
        list_id, subscribers = body.get("listId"), body.get("subscribers")
        if (
            isinstance(list_id, bool)
            or not isinstance(list_id, int)
            or not isinstance(subscribers, list)
        ):
            return self.bad("BadParams", "'listId' (a number) and 'subscribers' are required")
        self.note_batch(len(subscribers))
        failed = self._failed()
        success = 0
        with self._lock:
            members = self.lists.setdefault(list_id, set())
            for obj in subscribers:
                who = self._identity(obj, failed) if isinstance(obj, dict) else None
                if who is None:
                    continue
                if join:
                    problem = self._upsert(who, obj, obj.get("dataFields") or {}, False)
                    if problem:
                        failed["invalidDataEmails"].append(str(obj.get("email")))
                        continue
                    members.add(who)
                else:
                    members.discard(who)
                success += 1
        answer = {
            "successCount": success,
            "failCount": len(subscribers) - success,
            "invalidEmails": failed["invalidEmails"],
            "invalidUserIds": failed["invalidUserIds"],
            "failedUpdates": failed,
        }
        path = request.url.path
        return await self._answer(path, body, self.respond(200, answer))

    async def subscribe(self, request: Request) -> Response:
        return await self._membership(request, True)

    async def unsubscribe(self, request: Request) -> Response:
        return await self._membership(request, False)

    # -- events -----------------------------------------------------------------------------

    async def track_bulk(self, request: Request) -> Response:
        body, early = await self._read(request)
        if early is not None:
            return early
        events = body.get("events")
        if not isinstance(events, list):
            return self.bad("BadParams", "'events' is required")
        for event in events:
            if not isinstance(event, dict) or not event.get("eventName"):
                return self.bad("BadParams", "eventName is required for every event")
            if len(str(event.get("id", ""))) > 512:
                return self.bad("BadParams", "event id is longer than 512 bytes")
        self.note_batch(len(events))
        failed = self._failed()
        success = 0
        with self._lock:
            for event in events:
                who = self._identity(event, failed)
                if who is None:
                    continue
                self.users.setdefault(who, {"dataFields": {}, "email": event.get("email")})
                event_id = str(event.get("id") or f"generated-{len(self.events)}")
                self.events[event_id] = {**event, "user": who, "received_at": now_iso()}
                self.event_writes += 1
                success += 1
        answer = {
            "successCount": success,
            "failCount": len(events) - success,
            "createdFields": [],
            "filteredOutFields": [],
            "failedUpdates": failed,
        }
        return await self._answer("/api/events/trackBulk", body, self.respond(200, answer))


__all__ = ["IterableFake"]
