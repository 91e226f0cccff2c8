"""A local fake of Marketo's REST API: the identity endpoint, leads and static list membership.

It follows Adobe's Marketo REST API docs (links in ``docs/destinations/marketo.md``):

* ``POST`` (or ``GET``) ``/identity/oauth/token`` with ``grant_type=client_credentials``,
  ``client_id``, ``client_secret`` (form or query): ``{"access_token", "token_type":
  "bearer", "expires_in", "scope"}``; wrong credentials are a **401** (the only HTTP-level
  error of the identity endpoint).
* Every REST call answers **HTTP 200**, with ``success: false`` and ``errors: [{code,
  message}]`` for a failed request: 600/601/602 (token missing, invalid, expired), 606
  (more than 100 calls in 20 s), 607 (daily quota), 615 (more than 10 calls at once),
  1003 (too many records or values), 1013 (no such list).
* ``POST /rest/v1/leads.json`` ``{"action", "lookupField", "input"}``: at most 300 leads;
  one ``result`` per input **in order**, ``created`` / ``updated`` / ``skipped`` with
  ``reasons`` (1004 lead not found on updateOnly, 1005 lead already exists on createOnly,
  1006 unknown field, 1007 several leads match, 1003 invalid value).
* ``GET /rest/v1/leads.json?filterType=&filterValues=&fields=``: the leads found (at most 300
  values). ``POST /rest/v1/leads/delete.json`` ``{"input": [{"id"}]}``.
* ``POST`` / ``DELETE /rest/v1/lists/{listId}/leads.json`` ``{"input": [{"id"}]}``: at most 300;
  ``added`` / ``removed`` / ``skipped`` (1004) per id.

Not confirmed (the fake's choices, said in the docs page): the code for more than 300 records
(here 1003), the reason code of an invalid email (here 1003), and whether the list calls take
ids in the body (here, as the ``input`` array) as well as the documented ``id`` query params.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import CapturedRequest, FakeAPI, Window, now_iso

MAX = 300
CONCURRENT = 10
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
STANDARD_FIELDS = {
    "id", "email", "firstName", "lastName", "company", "phone", "title", "country", "city",
    "state", "postalCode", "leadSource", "unsubscribed", "externalId",
}  # fmt: skip


class MarketoFake(FakeAPI):
    """An in-memory Marketo instance served as a Starlette app (``.app``)."""

    type = "marketo"
    vendor = "Marketo"
    request_id_header = None

    def __init__(
        self,
        token: str = "marketo-demo-secret-0000-local-fake",
        *,
        client_id: str = "demo-client",
        rate: int = 100,
        window_seconds: float = 20.0,
        concurrent: int = CONCURRENT,
        daily_quota: int | None = None,
        token_seconds: int = 3600,
        strict_fields: bool = False,
        hold: float = 0.0,
    ) -> None:
        self.client_id = client_id
        self.client_secret = token
        self.concurrent = concurrent
        self.daily_quota = daily_quota
        self.token_seconds = token_seconds
        self.strict_fields = strict_fields
        self.fields = set(STANDARD_FIELDS)
        """Lead fields the instance has (any field name is created unless ``strict_fields``)."""
        self.hold = hold
        self.tokens: dict[str, float] = {}
        """Access token -> the clock time it expires."""
        self.leads: dict[int, dict[str, Any]] = {}
        self.lists: dict[int, set[int]] = {}
        """Static list id -> lead ids (a test creates a list with :meth:`add_list`)."""
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self._next_id = 1
        super().__init__(
            auth=self._token_ok, windows=[Window(rate, window_seconds, "100 calls / 20 s")]
        )

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/identity/oauth/token", self.identity, methods=["GET", "POST"]),
            Route("/rest/v1/leads.json", self.sync_leads, methods=["POST"]),
            Route("/rest/v1/leads.json", self.get_leads, methods=["GET"]),
            Route("/rest/v1/leads/delete.json", self.delete_leads, methods=["POST"]),
            Route("/rest/v1/lists/{list_id}/leads.json", self.list_add, methods=["POST"]),
            Route("/rest/v1/lists/{list_id}/leads.json", self.list_remove, methods=["DELETE"]),
        ]

    # -- what tests use ---------------------------------------------------------------------

    def add_list(self, list_id: int) -> None:
        self.lists.setdefault(list_id, set())

    def lead(self, field: str, value: Any) -> dict[str, Any] | None:
        wanted = str(value).casefold()
        for lead in self.leads.values():
            if str(lead.get(field, "")).casefold() == wanted:
                return lead
        return None

    def expire_tokens(self) -> None:
        with self._lock:
            self.tokens = dict.fromkeys(self.tokens, 0.0)

    # -- the vendor's answers ---------------------------------------------------------------

    def failure(self, code: str, message: str) -> Response:
        return self.respond(200, {"requestId": self._rid(), "success": False,
                                  "errors": [{"code": code, "message": message}]})  # fmt: skip

    def ok(self, result: list[Any], **extra: Any) -> Response:
        return self.respond(
            200, {"requestId": self._rid(), "success": True, "result": result, **extra}
        )

    @staticmethod
    def _rid() -> str:
        return f"{secrets.token_hex(2)}#{secrets.token_hex(6)}"

    def slow_down(self, window: Window | None) -> Response:
        return self.failure("606", "Max rate limit '100' exceeded with in '20' secs")

    def _token_ok(self, request: Request) -> bool:
        if request.url.path == "/identity/oauth/token":
            return True
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        return token in self.tokens and self.tokens[token] > self.clock()

    def unauthorized(self, captured: CapturedRequest) -> Response:
        if not captured.credentials:
            return self.failure("600", "Access token not specified")
        return self.failure("601", "Access token invalid")

    async def _enter(self, request: Request) -> tuple[CapturedRequest, Response | None]:
        captured, early = await self.admit(request)
        if early is not None:
            return captured, self._expired(request, early)
        with self._lock:
            if self.daily_quota is not None and self.calls >= self.daily_quota:
                return captured, self.failure("607", "Daily quota reached")
            if self.in_flight >= self.concurrent:
                self.slow_downs += 1
                return captured, self.failure("615", "Concurrent access limit reached")
            self.calls += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        return captured, None

    def _expired(self, request: Request, early: Response) -> Response:
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        if token in self.tokens and self.tokens[token] <= self.clock():
            return self.failure("602", "Access token expired")
        return early

    async def _leave(self, answer: Response) -> Response:
        try:
            if self.hold:
                await asyncio.sleep(self.hold)
        finally:
            with self._lock:
                self.in_flight -= 1
        return answer

    # -- identity ---------------------------------------------------------------------------

    async def identity(self, request: Request) -> Response:
        captured = await self.capture(request)
        values = dict(captured.query)
        if isinstance(captured.body, dict):
            values.update(captured.body)
        if (
            values.get("grant_type") != "client_credentials"
            or values.get("client_id") != self.client_id
            or values.get("client_secret") != self.client_secret
        ):
            captured.status = 401
            return self.respond(
                401, {"error": "unauthorized", "error_description": "Bad client credentials"}
            )
        token = f"{secrets.token_hex(8)}-{secrets.token_hex(4)}:ab"
        with self._lock:
            self.tokens[token] = self.clock() + self.token_seconds
        return self.respond(200, {"access_token": token, "token_type": "bearer",
                                  "expires_in": self.token_seconds,
                                  "scope": "api@example.com"})  # fmt: skip

    # -- leads ------------------------------------------------------------------------------

    async def sync_leads(self, request: Request) -> Response:
        captured, early = await self._enter(request)
        if early is not None:
            return early
        body = captured.body if isinstance(captured.body, dict) else {}
        action = body.get("action", "createOrUpdate")
        field = body.get("lookupField", "email")
        leads = body.get("input")
        if not isinstance(leads, list) or action not in (
            "createOrUpdate",
            "createOnly",
            "updateOnly",
            "createDuplicate",
        ):
            return await self._leave(self.failure("609", "Invalid JSON"))  # fmt: skip
        if len(leads) > MAX:
            return await self._leave(self.failure("1003", f"Too many records: at most {MAX}"))
        self.note_batch(len(leads))
        with self._lock:
            index = self._index(field)  # one pass per request, not per lead
            results = [self._sync_one(lead, action, field, index) for lead in leads]
        return await self._leave(self.ok(results))

    def _index(self, field: str) -> dict[str, list[int]]:
        """Lead ids by the casefolded value of ``field`` (the lookup of one request)."""
        index: dict[str, list[int]] = {}
        for lead_id, lead in self.leads.items():
            index.setdefault(str(lead.get(field, "")).casefold(), []).append(lead_id)
        return index

    def _sync_one(
        self, lead: Any, action: str, field: str, index: dict[str, list[int]]
    ) -> dict[str, Any]:
        def skipped(code: str, message: str) -> dict[str, Any]:
            return {"status": "skipped", "reasons": [{"code": code, "message": message}]}

        if not isinstance(lead, dict) or lead.get(field) in (None, ""):
            return skipped("1003", f"Value for lookup field '{field}' is required")
        for name, value in lead.items():
            if name not in self.fields:
                if self.strict_fields:
                    return skipped("1006", f"Field '{name}' not found")
                self.fields.add(name)
            if isinstance(value, dict | list):
                return skipped("1003", f"Invalid value for field '{name}'")
        if "email" in lead and lead["email"] and not _EMAIL.match(str(lead["email"])):
            return skipped("1003", f"Invalid email address '{lead['email']}'")
        wanted = str(lead[field]).casefold()
        matches = index.get(wanted, [])
        if len(matches) > 1 and action != "createDuplicate":
            return skipped("1007", "Multiple lead match lookup criteria")
        if matches and action == "createOnly":
            return skipped("1005", "Lead already exists")
        if not matches and action == "updateOnly":
            return skipped("1004", "Lead not found")
        if matches and action != "createDuplicate":
            lead_id = matches[0]
            self.leads[lead_id].update(lead)
            self.leads[lead_id]["updatedAt"] = now_iso()
            return {"id": lead_id, "status": "updated"}
        lead_id = self._next_id
        self._next_id += 1
        self.leads[lead_id] = {**lead, "id": lead_id, "createdAt": now_iso()}
        index.setdefault(wanted, []).append(lead_id)
        return {"id": lead_id, "status": "created"}

    async def get_leads(self, request: Request) -> Response:
        captured, early = await self._enter(request)
        if early is not None:
            return early
        field = captured.query.get("filterType", "")
        values = [v for v in captured.query.get("filterValues", "").split(",") if v]
        if not field or not values:
            return await self._leave(self.failure("1003", "filterType and filterValues needed"))
        if len(values) > MAX:
            return await self._leave(self.failure("1003", f"Too many values: at most {MAX}"))
        wanted = {v.casefold() for v in values}
        names = [n for n in captured.query.get("fields", "").split(",") if n] or ["id", "email"]
        with self._lock:
            found = [
                {n: lead.get(n) for n in names} | {"id": lead["id"]}
                for lead in self.leads.values()
                if str(lead.get(field, "")).casefold() in wanted
            ]
        return await self._leave(self.ok(found))

    def _ids(self, body: Any) -> list[Any] | None:
        entries = body.get("input") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            return None
        return [e.get("id") if isinstance(e, dict) else None for e in entries]

    async def delete_leads(self, request: Request) -> Response:
        captured, early = await self._enter(request)
        if early is not None:
            return early
        ids = self._ids(captured.body)
        if ids is None or len(ids) > MAX:
            return await self._leave(self.failure("1003", f"input: 1 to {MAX} lead ids"))
        self.note_batch(len(ids))
        results = []
        with self._lock:
            for lead_id in ids:
                if self.leads.pop(lead_id, None) is None:
                    results.append({"id": lead_id, "status": "skipped",
                                    "reasons": [{"code": "1004", "message": "Lead not found"}]})  # fmt: skip
                    continue
                for members in self.lists.values():
                    members.discard(lead_id)
                results.append({"id": lead_id, "status": "deleted"})
        return await self._leave(self.ok(results))

    async def _membership(self, request: Request, join: bool) -> Response:
        captured, early = await self._enter(request)
        if early is not None:
            return early
        list_id = (
            int(request.path_params["list_id"]) if request.path_params["list_id"].isdigit() else -1
        )
        ids = self._ids(captured.body)
        if ids is None and "id" in captured.query:
            ids = [int(v) for v in request.query_params.getlist("id") if v.isdigit()]
        if ids is None or len(ids) > MAX:
            return await self._leave(self.failure("1003", f"input: 1 to {MAX} lead ids"))
        self.note_batch(len(ids))
        with self._lock:
            members = self.lists.get(list_id)
            if members is None:
                return await self._leave(self.failure("1013", f"Static list {list_id} not found"))
            results = []
            for lead_id in ids:
                missing = lead_id not in self.leads or (not join and lead_id not in members)
                if missing:
                    message = "Lead not found" if lead_id not in self.leads else "Lead not in list"
                    results.append({"id": lead_id, "status": "skipped",
                                    "reasons": [{"code": "1004", "message": message}]})  # fmt: skip
                    continue
                (members.add if join else members.discard)(lead_id)
                results.append({"id": lead_id, "status": "added" if join else "removed"})
        return await self._leave(self.ok(results))

    async def list_add(self, request: Request) -> Response:
        return await self._membership(request, True)

    async def list_remove(self, request: Request) -> Response:
        return await self._membership(request, False)


__all__ = ["MarketoFake"]
