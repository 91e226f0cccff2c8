"""A faithful local fake of Braze's REST API: /users/track, /users/delete, subscription groups.

It answers as ``../shared/specs/braze/NOTES.md`` and Braze's docs say (links in
``docs/destinations/braze.md``):

* ``Authorization: Bearer <REST API key>``; anything else is a 401.
* ``POST /users/track`` with ``attributes``, ``events`` and ``purchases`` arrays: at most 75
  objects per array (``limit_mode="per_array"``, the legacy limit) or 75 across the three
  (``"total"``, newer accounts), else a 400 naming the limit and nothing is applied. Every
  object needs one identifier (``external_id``, ``user_alias``, ``braze_id``, ``email``,
  ``phone``). A bad object does not fail the others: the answer is still **201** with
  ``errors: [{type, input_array, index}]`` and the rest applied.
* Attributes are set-semantics (replaying is harmless); ``_update_existing_only: true``
  never creates a user. Nested objects and arrays of objects are stored as sent; a nested
  ``{"$time": ...}`` must hold an ISO 8601 time; nested keys may not contain spaces; an array
  of objects over 100 KB is dropped while the request still succeeds (as Braze documents).
* Events (``name``, ``time`` required) and purchases (``product_id``, ``currency`` of three
  letters, ``price``, ``time``) are **not deduplicated**: every copy is kept in
  :attr:`BrazeFake.events` / :attr:`BrazeFake.purchases`, as Braze counts a resend twice.
* ``POST /users/delete``: at most 50 identifiers; unknown users are no error (201 ``deleted``).
* ``POST /v2/subscription/status/set``: ``subscription_groups`` of ``subscription_group_id``,
  ``subscription_state`` (``subscribed``/``unsubscribed``) and at most 50 ``external_ids``,
  ``emails`` or ``phones``; an invalid email fails the whole request with 400.
* Any request over 4 MB is a 413. The rolling window (3,000 requests per 3 s) answers 429
  with ``X-RateLimit-*`` headers and **no** ``Retry-After``; every answer carries
  ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (epoch seconds).

Not confirmed from Braze's docs: the exact wording of error ``type`` strings and of the 400
bodies (the shapes are documented, the texts here are ours).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.destinations.kit.engagement import parse_time
from undertow.testing.fakes import FakeAPI, Window, bearer, now_iso
from undertow.testing.faults import FaultPlan

MAX_OBJECTS = 75
MAX_DELETE = 50
MAX_SUBSCRIPTION = 50
MAX_REQUEST = 4_000_000
MAX_ARRAY_BYTES = 100_000
IDENTIFIERS = ("external_id", "user_alias", "braze_id", "email", "phone")
ARRAYS = ("attributes", "events", "purchases")
_NOT_ATTRIBUTES = frozenset(IDENTIFIERS) - {"email"}
"""Keys of an attributes object that name the user rather than set an attribute."""
_PLAIN = frozenset({str, int, bool, type(None)})
"""Value types with nothing to check at an object's top level."""
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")


class _ObjectError(Exception):
    """One object of a /users/track array that Braze refuses (an ``errors[]`` entry)."""


def identity(obj: dict[str, Any]) -> str | None:
    """The user an object names: ``external_id:42``, ``email:a@x.com``, ``alias:label:name``."""
    for field in IDENTIFIERS:
        value = obj.get(field)
        if value in (None, ""):
            continue
        if field == "user_alias":
            if not isinstance(value, dict) or not value.get("alias_name"):
                raise _ObjectError("'user_alias' must be an object with alias_name and alias_label")
            return f"alias:{value.get('alias_label')}:{value['alias_name']}"
        text = str(value).casefold() if field == "email" else str(value)
        return f"{field}:{text}"
    return None


def _check_nested(value: Any, *, depth: int = 0) -> None:
    if isinstance(value, dict):
        if set(value) == {"$time"}:
            if parse_time(value["$time"]) is None:
                raise _ObjectError(f"'$time' value {value['$time']!r} is not a valid time")
            return
        for key, inner in value.items():
            if " " in key:
                raise _ObjectError(f"nested key {key!r} contains a space")
            if len(key) > 255:
                raise _ObjectError("nested key is longer than 255 characters")
            _check_nested(inner, depth=depth + 1)
    elif isinstance(value, list):
        for inner in value:
            _check_nested(inner, depth=depth + 1)
    elif isinstance(value, str) and depth and len(value) > 255:
        raise _ObjectError("nested string value is longer than 255 characters")
    elif isinstance(value, float) and not math.isfinite(value):
        raise _ObjectError("value is not a finite number")


def _oversized_array(value: Any) -> bool:
    objects = isinstance(value, list) and any(isinstance(v, dict) for v in value)
    return objects and len(orjson.dumps(value)) > MAX_ARRAY_BYTES


class BrazeFake(FakeAPI):
    """An in-memory Braze workspace served as a Starlette app (``.app``)."""

    type = "braze"
    vendor = "Braze"
    request_id_header = "x-request-id"

    def __init__(
        self,
        token: str = "braze-demo-0000-local-fake",
        *,
        rate_limit_per_3s: int = 3000,
        window_seconds: float = 3.0,
        limit_mode: str = "per_array",
        hold: Callable[[str, dict[str, Any]], float] | None = None,
        fault_plan: FaultPlan | None = None,
    ) -> None:
        self.window = Window(rate_limit_per_3s, window_seconds, "users/track")
        self.limit_mode = limit_mode
        self.hold = hold
        """(path, body) -> seconds to wait *after applying* before answering (tests that
        kill the client while a request is in flight)."""
        self.users: dict[str, dict[str, Any]] = {}
        """identity (``external_id:42``) -> attributes."""
        self.events: list[dict[str, Any]] = []
        """Every event object applied, in order (copies included: Braze keeps them)."""
        self.purchases: list[dict[str, Any]] = []
        self.groups: dict[str, set[str]] = {}
        """subscription group id -> identities subscribed."""
        self.deleted: list[str] = []
        super().__init__(auth=bearer(token), windows=[self.window], fault_plan=fault_plan)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/users/track", self.track, methods=["POST"]),
            Route("/users/delete", self.delete, methods=["POST"]),
            Route("/v2/subscription/status/set", self.subscription, methods=["POST"]),
        ]

    # -- what every answer carries --------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        now = self.clock()
        reset = math.ceil(time.time() + max(self.window.reset_in(now), 0.0))
        return {
            "X-RateLimit-Limit": str(self.window.limit),
            "X-RateLimit-Remaining": str(self.window.remaining(now)),
            "X-RateLimit-Reset": str(reset),
        }

    def slow_down(self, window: Window | None) -> Response:
        return self.respond(429, {"message": "API rate limit reached"})

    def unauthorized(self, captured: Any) -> Response:
        return self.respond(401, {"message": "Invalid API key"})

    def user(self, field: str, value: Any) -> dict[str, Any] | None:
        """The stored attributes of the user ``field`` names (``user("external_id", 42)``)."""
        text = str(value).casefold() if field == "email" else str(value)
        return self.users.get(f"{field}:{text}")

    def members(self, group: str) -> set[str]:
        return set(self.groups.get(group, set()))

    async def _read(self, request: Request) -> tuple[Any, Response | None]:
        captured, early = await self.admit(request)
        if early is not None:
            return None, early
        if len(captured.raw) > MAX_REQUEST:
            return None, self.respond(413, {"message": "Request entity too large"})
        if not isinstance(captured.body, dict):
            return None, self.respond(400, {"message": "Request body is not a JSON object"})
        return captured.body, None

    async def _answer(self, path: str, body: dict[str, Any], response: Response) -> Response:
        if self.hold is not None:
            seconds = self.hold(path, body)
            if seconds:
                await asyncio.sleep(seconds)
        return response

    # -- /users/track ---------------------------------------------------------------------------

    async def track(self, request: Request) -> Response:
        body, early = await self._read(request)
        if early is not None:
            return early
        arrays = {name: body.get(name) or [] for name in ARRAYS}
        if any(not isinstance(v, list) for v in arrays.values()):
            return self.respond(400, {"message": "attributes, events and purchases are arrays"})
        sizes = {name: len(v) for name, v in arrays.items()}
        total = sum(sizes.values())
        if self.limit_mode == "total" and total > MAX_OBJECTS:
            return self.respond(
                400, {"message": f"{total} objects: at most {MAX_OBJECTS} across the arrays"}
            )
        for name, size in sizes.items():
            if size > MAX_OBJECTS:
                return self.respond(400, {"message": f"{size} {name}: at most {MAX_OBJECTS}"})
        self.note_batch(total)
        fate = self.decide(orjson.dumps(body) if self.fault_plan else b"", total)
        if not fate.applies:
            return fate.refusal()
        await fate.before()
        errors: list[dict[str, Any]] = []
        processed = dict.fromkeys(ARRAYS, 0)
        with self._lock:
            for name, objects in arrays.items():
                for index, obj in enumerate(objects):
                    try:
                        if index in fate.rejected:
                            raise _ObjectError("injected per-object error")
                        self._apply(name, obj)
                        processed[name] += 1
                    except _ObjectError as exc:
                        errors.append({"type": str(exc), "input_array": name, "index": index})
        answer: dict[str, Any] = {"message": "success"}
        answer.update({f"{n}_processed": c for n, c in processed.items() if sizes[n]})
        if errors:
            answer["errors"] = errors
        return await fate.answer(
            await self._answer("/users/track", body, self.respond(201, answer))
        )

    def _apply(self, array: str, obj: Any) -> None:
        if not isinstance(obj, dict):
            raise _ObjectError(f"{array} objects must be JSON objects")
        who = identity(obj)
        if who is None:
            raise _ObjectError(
                "'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required"
            )
        if "email" in obj and obj["email"] and not _EMAIL.match(str(obj["email"])):
            raise _ObjectError(f"Invalid email address {obj['email']!r}")
        if array == "attributes":
            self._attributes(who, obj)
        elif array == "events":
            self._timed(obj, ("name",))
            self.events.append({"user": who, **obj, "received_at": now_iso()})
        else:
            self._timed(obj, ("product_id", "currency", "price"))
            if not _CURRENCY.match(str(obj["currency"])):
                raise _ObjectError(f"Invalid currency {obj['currency']!r}")
            if isinstance(obj["price"], bool) or not isinstance(obj["price"], int | float):
                raise _ObjectError("price must be a number")
            self.purchases.append({"user": who, **obj, "received_at": now_iso()})

    def _timed(self, obj: dict[str, Any], required: tuple[str, ...]) -> None:
        for name in required:
            if obj.get(name) in (None, ""):
                raise _ObjectError(f"'{name}' is required")
        if parse_time(obj.get("time")) is None:
            raise _ObjectError(f"'time' is required as an ISO 8601 time, got {obj.get('time')!r}")
        _check_nested(obj.get("properties") or {})

    def _attributes(self, who: str, obj: dict[str, Any]) -> None:
        values = {k: v for k, v in obj.items() if k not in _NOT_ATTRIBUTES}
        only_existing = bool(values.pop("_update_existing_only", False))
        dropped: list[str] = []
        for key, value in values.items():
            # _check_nested's rules by type, without its call for the plain scalars JSON
            # gives (nothing to check at the top level: most values of most objects)
            kind = type(value)
            if kind in _PLAIN:
                continue
            if kind is float:
                if not math.isfinite(value):
                    raise _ObjectError("value is not a finite number")
                continue
            if kind is not list:
                _check_nested(value)
                continue
            objects = False
            for inner in value:  # _check_nested(value), its short strings checked in place
                inner_kind = type(inner)
                if inner_kind is str:
                    if len(inner) > 255:
                        raise _ObjectError("nested string value is longer than 255 characters")
                elif inner_kind not in _PLAIN:
                    objects = objects or inner_kind is dict
                    _check_nested(inner, depth=1)
            if objects and len(orjson.dumps(value)) > MAX_ARRAY_BYTES:
                dropped.append(key)  # Braze drops the update and still answers success
        if only_existing and who not in self.users:
            return
        stored = self.users.setdefault(who, {})
        for field in IDENTIFIERS:
            value = obj.get(field)
            if value is not None and value != "":
                stored[field] = value
        for key in dropped:
            del values[key]
        for key, value in values.items():
            if value is None:
                stored.pop(key, None)
            else:
                stored[key] = value

    # -- /users/delete --------------------------------------------------------------------------

    async def delete(self, request: Request) -> Response:
        body, early = await self._read(request)
        if early is not None:
            return early
        fields = {
            "external_ids": "external_id",
            "braze_ids": "braze_id",
            "email_addresses": "email",
            "phone_numbers": "phone",
        }
        names: list[str] = []
        for key, field in fields.items():
            for value in body.get(key) or []:
                names.append(f"{field}:{str(value).casefold() if field == 'email' else value}")
        for alias in body.get("user_aliases") or []:
            if isinstance(alias, dict):
                names.append(f"alias:{alias.get('alias_label')}:{alias.get('alias_name')}")
        if not names:
            return self.respond(400, {"message": "no user identifiers to delete"})
        if len(names) > MAX_DELETE:
            return self.respond(400, {"message": f"{len(names)} identifiers: at most {MAX_DELETE}"})
        self.note_batch(len(names))
        deleted = 0
        with self._lock:
            for name in names:
                if self.users.pop(name, None) is not None:
                    deleted += 1
                    self.deleted.append(name)
                for members in self.groups.values():
                    members.discard(name)
        return self.respond(201, {"deleted": deleted, "message": "success"})

    # -- /v2/subscription/status/set ------------------------------------------------------------

    async def subscription(self, request: Request) -> Response:
        body, early = await self._read(request)
        if early is not None:
            return early
        groups = body.get("subscription_groups")
        if not isinstance(groups, list) or not groups:
            return self.respond(400, {"message": "'subscription_groups' is required"})
        changes: list[tuple[str, bool, list[str]]] = []
        size = 0
        for group in groups:
            if not isinstance(group, dict) or not group.get("subscription_group_id"):
                return self.respond(400, {"message": "'subscription_group_id' is required"})
            state = group.get("subscription_state")
            if state not in ("subscribed", "unsubscribed"):
                return self.respond(
                    400, {"message": "subscription_state must be 'subscribed' or 'unsubscribed'"}
                )
            given = [k for k in ("external_ids", "emails", "phones") if group.get(k)]
            if set(given) == {"emails", "phones"}:
                return self.respond(400, {"message": "emails and phones cannot be combined"})
            if not given:
                return self.respond(400, {"message": "external_ids, emails or phones is required"})
            names: list[str] = []
            for key in given:
                values = group[key]
                if len(values) > MAX_SUBSCRIPTION:
                    return self.respond(
                        400, {"message": f"{len(values)} {key}: at most {MAX_SUBSCRIPTION}"}
                    )
                for value in values:
                    if key == "emails" and not _EMAIL.match(str(value)):
                        return self.respond(400, {"message": f"Invalid email address {value!r}"})
                    field = {"external_ids": "external_id", "emails": "email", "phones": "phone"}
                    text = str(value).casefold() if key == "emails" else str(value)
                    names.append(f"{field[key]}:{text}")
            size += len(names)
            changes.append((str(group["subscription_group_id"]), state == "subscribed", names))
        self.note_batch(size)
        with self._lock:
            for group_id, subscribed, names in changes:
                members = self.groups.setdefault(group_id, set())
                if subscribed:
                    members.update(names)
                else:
                    members.difference_update(names)
        return await self._answer(
            "/v2/subscription/status/set", body, self.respond(201, {"message": "success"})
        )


__all__ = ["BrazeFake", "identity"]
