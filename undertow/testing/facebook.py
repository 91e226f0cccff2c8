"""A faithful local fake of Facebook's Custom Audience users edges.

It follows ``../shared/specs/facebook/NOTES.md`` and Meta's "Custom Audience Users" reference
(links in ``docs/destinations/facebook_audiences.md``):

* Auth: ``Authorization: Bearer <token>`` or an ``access_token`` parameter; anything else is
  a 400 ``OAuthException`` code 190 (Graph answers an invalid token with a 400).
* ``GET /{version}/{audience_id}?fields=id``: the audience, or 400 code 100 subcode 33.
* ``POST`` (add) and ``DELETE`` (remove) ``/{version}/{audience_id}/users``,
  ``POST /{version}/{audience_id}/usersreplace``: form or JSON, ``payload`` =
  ``{"schema": [...] | "EMAIL_SHA256", "data": [[...], ...]}`` (a JSON string in a form);
  at most **10,000 rows** a request (else 400 code 100). The answer is 200 with
  ``audience_id``, ``session_id``, ``num_received``, ``num_invalid_entries`` and
  ``invalid_entry_samples`` (value -> reason), never indexes.
* Hashed keys must be SHA-256 hex: anything else is an invalid entry, and the fake keeps it
  in :attr:`FacebookFake.raw_values` (the tests assert no raw value ever arrives). A
  ``MADID`` must be a lower-case UUID.
* A person is a member row; a row sharing any identifier value with a member is that member
  (add updates it, remove deletes it). Adding an existing member is a no-op.
* ``usersreplace`` sessions: ``session`` = ``{session_id, batch_seq, last_batch_flag,
  estimated_num_total}``; the audience keeps its members until the batch with
  ``last_batch_flag: true``, which replaces them with every row the session received
  (:attr:`FacebookFake.sessions` records the sequence numbers seen). A request to a finished
  session is a 400.
* Throttling: a full window answers **400 with error code 80003** (custom audience Business
  Use Case limit; no ``Retry-After``) and ``X-Business-Use-Case-Usage`` with
  ``estimated_time_to_regain_access`` in minutes (0 below a minute).

Not confirmed: the exact error subcodes and messages for an oversized payload and a finished
session (the reference gives none), whether Facebook accepts ``batch_seq`` gaps, and how long
an unfinished session lives (the fake keeps it).
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import STATS_PATH, CapturedRequest, FakeAPI, Window

MAX_USERS = 10_000
CALLS_PER_HOUR = 190_040
HASHED = frozenset(
    {"EMAIL", "PHONE", "FN", "LN", "FI", "ZIP", "CT", "ST", "COUNTRY", "DOBY", "DOBM", "DOBD"}
    | {"GEN", "F5FIRST", "F5LAST", "EMAIL_SHA256", "PHONE_SHA256"}
)
CLEAR = frozenset({"EXTERN_ID", "MADID", "PAGEUID", "LOOKALIKE_VALUE"})
IDENTIFIERS = ("EXTERN_ID", "EMAIL", "PHONE", "MADID", "PAGEUID")
_HEX = re.compile(r"^[0-9a-f]{64}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Audience:
    """Members of one audience, indexed by every identifier value they carry."""

    def __init__(self) -> None:
        self.members: dict[int, dict[str, str]] = {}
        self.index: dict[tuple[str, str], int] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self.members)

    def find(self, row: dict[str, str]) -> int | None:
        for key in IDENTIFIERS:
            value = row.get(key)
            if value and (key, value) in self.index:
                return self.index[(key, value)]
        return None

    def add(self, row: dict[str, str]) -> None:
        found = self.find(row)
        if found is None:
            self._next += 1
            found = self._next
            self.members[found] = {}
        self.members[found].update(row)
        for key in IDENTIFIERS:
            if row.get(key):
                self.index[(key, row[key])] = found

    def remove(self, row: dict[str, str]) -> None:
        found = self.find(row)
        if found is None:
            return
        member = self.members.pop(found)
        for key in IDENTIFIERS:
            if member.get(key):
                self.index.pop((key, member[key]), None)


class FacebookFake(FakeAPI):
    """One ad account's customer-list audiences served as a Starlette app (``.app``)."""

    type = "facebook_audiences"
    vendor = "Facebook"
    request_id_header = "x-fb-trace-id"

    def __init__(
        self,
        token: str = "facebook-demo-0000-local-fake",
        *,
        audiences: tuple[str, ...] = ("23850000000000001",),
        calls_per_hour: int = CALLS_PER_HOUR,
        window_seconds: float = 3600.0,
        hold: Callable[[str, Any], float] | None = None,
    ) -> None:
        self.token = token
        self.hold = hold
        """``hold(path, payload) -> seconds``: wait this long after applying, before answering."""
        self.audiences: dict[str, Audience] = {a: Audience() for a in audiences}
        self.sessions: dict[int, dict[str, Any]] = {}
        """Session id -> ``{"seqs": [...], "rows": [...], "done": bool, "audience": id}``."""
        self.raw_values: list[tuple[str, str]] = []
        """(key, first characters) of every value of a hashed key that was not SHA-256 hex."""
        self.received = 0
        window = Window(calls_per_hour, window_seconds, "custom_audience")
        super().__init__(auth=self._authorized, windows=[window])

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None
        given = given or request.query_params.get("access_token")
        return given is not None and secrets.compare_digest(given, self.token)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/{version}/{audience}/users", self.users, methods=["POST", "DELETE"]),
            Route("/{version}/{audience}/usersreplace", self.replace, methods=["POST"]),
            Route("/{version}/{audience}", self.audience, methods=["GET"]),
        ]

    def reset(self) -> None:
        super().reset()
        with self._lock:
            for name in self.audiences:
                self.audiences[name] = Audience()
            self.sessions.clear()
            self.raw_values.clear()

    # -- vendor answers ---------------------------------------------------------------------

    def error(
        self, code: int, message: str, *, subcode: int | None = None, kind: str = "OAuthException"
    ) -> dict[str, Any]:
        error: dict[str, Any] = {"message": message, "type": kind, "code": code}
        if subcode is not None:
            error["error_subcode"] = subcode
        error["fbtrace_id"] = secrets.token_urlsafe(8)
        return {"error": error}

    def unauthorized(self, captured: CapturedRequest) -> Response:
        return self.respond(
            400,
            self.error(190, "Invalid OAuth access token - Cannot parse access token"),
            {"WWW-Authenticate": 'OAuth "Facebook Platform" "invalid_token"'},
        )

    def slow_down(self, window: Window | None) -> Response:
        reset = window.reset_in(self.clock()) if window else 0.0
        minutes = math.ceil(reset / 60) if reset >= 60 else 0
        usage = {
            "act_1": [
                {
                    "type": "custom_audience",
                    "call_count": 100,
                    "total_cputime": 10,
                    "total_time": 10,
                    "estimated_time_to_regain_access": minutes,
                }
            ]
        }
        body = self.error(
            80003,
            "(#80003) There have been too many calls to this ad-account. Wait a bit and try again.",
            subcode=2446079,
        )
        return self.respond(400, body, {"X-Business-Use-Case-Usage": orjson.dumps(usage).decode()})

    def members(self, audience: str | None = None) -> list[dict[str, str]]:
        return list(self.audiences[audience or next(iter(self.audiences))].members.values())

    # -- routes -----------------------------------------------------------------------------

    async def audience(self, request: Request) -> Response:
        if request.url.path == STATS_PATH:  # this route's pattern covers the stats path too
            return await self._stats(request)
        _, early = await self.admit(request)
        if early is not None:
            return early
        audience = request.path_params["audience"]
        if audience not in self.audiences:
            return self.respond(400, self.missing(audience))
        return self.respond(200, {"id": audience})

    def missing(self, audience: str) -> dict[str, Any]:
        return self.error(
            100,
            f"Unsupported get request. Object with ID '{audience}' does not exist, cannot be "
            "loaded due to missing permissions, or does not support this operation",
            subcode=33,
            kind="GraphMethodException",
        )

    async def _payload(
        self, request: Request
    ) -> tuple[str, CapturedRequest | None, Any, Response | None]:
        captured, early = await self.admit(request)
        audience = request.path_params["audience"]
        if early is not None:
            return audience, None, None, early
        if audience not in self.audiences:
            return audience, captured, None, self.respond(400, self.missing(audience))
        body = captured.body if isinstance(captured.body, dict) else {}
        payload = body.get("payload")
        if isinstance(payload, str):
            try:
                payload = orjson.loads(payload)
            except orjson.JSONDecodeError:
                payload = None
        schema = payload.get("schema") if isinstance(payload, dict) else None
        data = payload.get("data") if isinstance(payload, dict) else None
        if isinstance(schema, str):
            schema = [schema]
        if not isinstance(schema, list) or not isinstance(data, list) or not schema:
            return audience, captured, None, self.invalid("(#100) Missing or invalid payload")
        unknown = [k for k in schema if k not in HASHED | CLEAR]
        if unknown:
            return audience, captured, None, self.invalid(f"(#100) Invalid schema: {unknown[0]}")
        if len(data) > MAX_USERS:
            return (
                audience,
                captured,
                None,
                self.invalid(f"(#100) payload[data] has {len(data)} rows, more than 10000"),
            )
        if any(not isinstance(row, list) or len(row) != len(schema) for row in data):
            return audience, captured, None, self.invalid("(#100) Each row must match schema")
        self.note_batch(len(data))
        return audience, captured, (schema, data, body), None

    def invalid(self, message: str) -> Response:
        return self.respond(400, self.error(100, message))

    def _rows(
        self, schema: list[str], data: list[list[Any]]
    ) -> tuple[list[dict[str, str]], dict[str, str], int]:
        rows: list[dict[str, str]] = []
        samples: dict[str, str] = {}
        invalid = 0
        for raw in data:
            row: dict[str, str] = {}
            bad: tuple[str, str] | None = None
            for key, value in zip(schema, raw, strict=True):
                text = "" if value is None else str(value)
                if not text:
                    continue
                if key in HASHED and not _HEX.match(text):
                    with self._lock:
                        self.raw_values.append((key, text[:3]))
                    bad = (text, f"{key} is not a SHA-256 hash of a normalised value")
                elif key == "MADID" and not _UUID.match(text):
                    bad = (text, "MADID is not a lower-case advertising id (UUID)")
                row[key.removesuffix("_SHA256")] = text
            if bad is not None or not row:
                invalid += 1
                if bad is not None and len(samples) < 10:
                    samples[bad[0]] = bad[1]
                continue
            rows.append(row)
        return rows, samples, invalid

    def _answer(
        self, audience: str, sent: int, invalid: int, samples: dict[str, str], **extra: Any
    ) -> dict[str, Any]:
        self.received += sent
        return {
            "audience_id": audience,
            "session_id": str(extra.get("session_id") or secrets.randbelow(2**62)),
            "num_received": sent,
            "num_invalid_entries": invalid,
            "invalid_entry_samples": samples,
        }

    async def _held(self, path: str, payload: Any, response: Response) -> Response:
        if self.hold is not None:
            seconds = self.hold(path, payload)
            if seconds:
                await asyncio.sleep(seconds)
        return response

    async def users(self, request: Request) -> Response:
        audience, _, parsed, early = await self._payload(request)
        if early is not None:
            return early
        schema, data, _ = parsed
        rows, samples, invalid = self._rows(schema, data)
        with self._lock:
            members = self.audiences[audience]
            for row in rows:
                if request.method == "DELETE":
                    members.remove(row)
                else:
                    members.add(row)
        answer = self.respond(200, self._answer(audience, len(data), invalid, samples))
        return await self._held(request.url.path, (schema, data), answer)

    async def replace(self, request: Request) -> Response:
        audience, _, parsed, early = await self._payload(request)
        if early is not None:
            return early
        schema, data, body = parsed
        session = body.get("session")
        if isinstance(session, str):
            try:
                session = orjson.loads(session)
            except orjson.JSONDecodeError:
                session = None
        if not isinstance(session, dict) or not isinstance(session.get("session_id"), int):
            return self.invalid("(#100) usersreplace needs a session with a session_id")
        sid = session["session_id"]
        seq = session.get("batch_seq")
        if not isinstance(seq, int) or seq < 1:
            return self.invalid("(#100) session batch_seq must be a positive integer")
        rows, samples, invalid = self._rows(schema, data)
        with self._lock:
            state = self.sessions.setdefault(
                sid, {"seqs": [], "rows": {}, "done": False, "audience": audience}
            )
            if state["done"]:
                return self.invalid(f"(#100) The replace session {sid} has already ended")
            state["seqs"].append(seq)
            state["rows"][seq] = rows  # a batch sent again replaces its first copy
            if session.get("last_batch_flag") is True:
                members = Audience()
                for batch_rows in state["rows"].values():
                    for row in batch_rows:
                        members.add(row)
                self.audiences[audience] = members
                state["done"] = True
        answer = self.respond(
            200, self._answer(audience, len(data), invalid, samples, session_id=sid)
        )
        return await self._held(request.url.path, (schema, data, session), answer)
