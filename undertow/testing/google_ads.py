"""A faithful local fake of the Data Manager API's audience member ingestion (Customer Match).

It follows Google's Data Manager API reference and limits page (links in
``docs/destinations/google_customer_match.md``):

* ``Authorization: Bearer <token>``; anything else is a 401 ``UNAUTHENTICATED``.
* ``POST /v1/audienceMembers:ingest`` and ``:remove``: ``destinations`` (an
  ``operatingAccount`` of type ``GOOGLE_ADS`` and a ``productDestinationId``),
  ``audienceMembers`` (at most **10,000**, each at most 10 user identifiers),
  ``encoding: HEX``; ingest also needs ``termsOfService.customerMatchTermsOfServiceStatus:
  ACCEPTED``. Validation happens on arrival: a member it refuses makes the request a 400
  ``INVALID_ARGUMENT`` whose ``google.rpc.BadRequest`` names it
  (``audience_members[3].user_data.user_identifiers[0]``); nothing of that request applies.
* An accepted request answers ``{"requestId": ...}`` and applies; ``GET
  /v1/requestStatus:retrieve?requestId=`` answers ``PROCESSING`` for its first ``polls``
  polls, then ``SUCCESS`` (or ``PARTIAL_SUCCESS`` with ``errorCounts`` when some members had a
  hash Google could not match to a format, here an all-zero digest).
* A member is identified by any of its identifiers (email, phone, or its address).
* 300 requests a minute per project: past it, 429 ``RESOURCE_EXHAUSTED`` with a
  ``google.rpc.RetryInfo`` ``retryDelay``.

Not confirmed: the fake's exact ``fieldViolations`` paths and descriptions, ``retryDelay``
on the 429 (the limits page says only ``RESOURCE_EXHAUSTED`` and 429), and how many polls a
real request stays ``PROCESSING``.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import CapturedRequest, FakeAPI, Window, bearer

MAX_MEMBERS = 10_000
MAX_IDENTIFIERS = 10
_HEX = re.compile(r"^[0-9a-f]{64}$")
ZERO = "0" * 64
REGIONS = re.compile(r"^[A-Z]{2}$")


class GoogleAdsFake(FakeAPI):
    """Customer Match audiences of Google Ads accounts, served as a Starlette app."""

    type = "google_customer_match"
    vendor = "Google"
    request_id_header = None

    def __init__(
        self,
        token: str = "google-demo-0000-local-fake",
        *,
        per_minute: int = 300,
        window_seconds: float = 60.0,
        polls: int = 1,
    ) -> None:
        self.polls = polls
        self.members: dict[str, dict[int, dict[str, Any]]] = {}
        """``<account>/<audience>`` -> member id -> its identifiers."""
        self.index: dict[str, dict[str, int]] = {}
        self.statuses: dict[str, dict[str, Any]] = {}
        self.raw_values: list[str] = []
        self._next = 0
        super().__init__(auth=bearer(token), windows=[Window(per_minute, window_seconds, "ingest")])

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/audienceMembers:ingest", self.ingest, methods=["POST"]),
            Route("/v1/audienceMembers:remove", self.remove, methods=["POST"]),
            Route("/v1/requestStatus:retrieve", self.status, methods=["GET"]),
        ]

    def windows_for(self, captured: CapturedRequest) -> list[Window]:
        return self.windows if captured.method == "POST" else []

    def error(
        self, status: int, code: str, message: str, details: list[Any] | None = None
    ) -> Response:
        body = {
            "error": {"code": status, "message": message, "status": code, "details": details or []}
        }
        return self.respond(status, body)

    def unauthorized(self, captured: CapturedRequest) -> Response:
        return self.error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")

    def slow_down(self, window: Window | None) -> Response:
        wait = max(1, int(window.reset_in(self.clock()) + 0.999)) if window else 1
        details = [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED"},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{wait}s"},
        ]
        return self.error(
            429, "RESOURCE_EXHAUSTED", "Quota exceeded for requests per minute.", details
        )

    def audience(
        self, account: str = "1234567890", audience: str = "9876543210"
    ) -> list[dict[str, Any]]:
        return list(self.members.get(f"{account}/{audience}", {}).values())

    # -- the member store -------------------------------------------------------------------

    @staticmethod
    def keys_of(member: dict[str, Any]) -> list[str]:
        out = []
        for ident in member.get("userIdentifiers", []):
            if "emailAddress" in ident:
                out.append("e:" + ident["emailAddress"])
            elif "phoneNumber" in ident:
                out.append("p:" + ident["phoneNumber"])
            elif "address" in ident:
                a = ident["address"]
                out.append(
                    f"a:{a.get('givenName')}:{a.get('familyName')}:{a.get('regionCode')}:{a.get('postalCode')}"
                )
        return out

    def _apply(self, where: str, members: list[dict[str, Any]], add: bool) -> None:
        store = self.members.setdefault(where, {})
        index = self.index.setdefault(where, {})
        for member in members:
            data = (
                member.get("userData") or (member.get("compositeData") or {}).get("userData") or {}
            )
            keys = self.keys_of(data)
            found = next((index[k] for k in keys if k in index), None)
            if add:
                if found is None:
                    self._next += 1
                    found = self._next
                    store[found] = {"keys": set()}
                store[found]["keys"].update(keys)
                store[found]["consent"] = member.get("consent")
                for key in keys:
                    index[key] = found
            elif found is not None:
                for key in store.pop(found)["keys"]:
                    index.pop(key, None)

    # -- routes -----------------------------------------------------------------------------

    def _check(self, body: Any, *, ingest: bool) -> tuple[str | None, Response | None, int]:
        if not isinstance(body, dict):
            return None, self.error(400, "INVALID_ARGUMENT", "Invalid JSON payload."), 0
        destinations = body.get("destinations") or []
        if not destinations or not isinstance(destinations[0], dict):
            return None, self.error(400, "INVALID_ARGUMENT", "destinations is required."), 0
        dest = destinations[0]
        account = (dest.get("operatingAccount") or {}).get("accountId")
        audience = dest.get("productDestinationId")
        if (
            (dest.get("operatingAccount") or {}).get("accountType") != "GOOGLE_ADS"
            or not account
            or not audience
        ):
            return (
                None,
                self.error(
                    400,
                    "INVALID_ARGUMENT",
                    "destinations[0] needs a GOOGLE_ADS operatingAccount and a productDestinationId.",
                ),
                0,
            )
        members = body.get("audienceMembers")
        if not isinstance(members, list) or not members:
            return None, self.error(400, "INVALID_ARGUMENT", "audience_members is required."), 0
        if len(members) > MAX_MEMBERS:
            return (
                None,
                self.error(
                    400,
                    "INVALID_ARGUMENT",
                    f"audience_members has {len(members)} items; the limit is 10000.",
                ),
                0,
            )
        if body.get("encoding") != "HEX":
            return (
                None,
                self.error(
                    400, "INVALID_ARGUMENT", "encoding must be HEX or BASE64 for hashed data."
                ),
                0,
            )
        if (
            ingest
            and (body.get("termsOfService") or {}).get("customerMatchTermsOfServiceStatus")
            != "ACCEPTED"
        ):
            return (
                None,
                self.error(
                    400,
                    "INVALID_ARGUMENT",
                    "TERMS_OF_SERVICE_NOT_ACCEPTED: customer match terms of service must be accepted.",
                ),
                0,
            )
        violations = []
        zeros = 0
        for i, member in enumerate(members):
            data = (
                member.get("userData") or (member.get("compositeData") or {}).get("userData") or {}
            )
            idents = data.get("userIdentifiers") or []
            if not idents or len(idents) > MAX_IDENTIFIERS:
                violations.append(
                    {
                        "field": f"audience_members[{i}].user_data.user_identifiers",
                        "description": f"must hold 1 to {MAX_IDENTIFIERS} user identifiers",
                    }
                )
                continue
            for j, ident in enumerate(idents):
                where = f"audience_members[{i}].user_data.user_identifiers[{j}]"
                values = [ident.get("emailAddress"), ident.get("phoneNumber")]
                address = ident.get("address")
                if isinstance(address, dict):
                    values += [address.get("givenName"), address.get("familyName")]
                    if not REGIONS.match(str(address.get("regionCode", ""))):
                        violations.append(
                            {
                                "field": where + ".address.region_code",
                                "description": "INVALID_COUNTRY_CODE: region_code must be a two-letter ISO 3166-1 code",
                            }
                        )
                for value in values:
                    if value is None:
                        continue
                    if not _HEX.match(str(value)):
                        self.raw_values.append(str(value)[:3])
                        violations.append(
                            {
                                "field": where,
                                "description": "INVALID_HEX_ENCODING: not a hex-encoded SHA-256 hash",
                            }
                        )
                    elif value == ZERO:
                        zeros += 1
        if violations:
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": violations,
                }
            ]
            return (
                None,
                self.error(
                    400, "INVALID_ARGUMENT", "Request contains an invalid argument.", details
                ),
                0,
            )
        self.note_batch(len(members))
        return f"{account}/{audience}", None, zeros

    async def _write(self, request: Request, *, add: bool) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        where, bad, zeros = self._check(captured.body, ingest=add)
        if bad is not None or where is None:
            return bad or self.error(400, "INVALID_ARGUMENT", "invalid")
        if captured.body.get("validateOnly") is True:
            return self.respond(200, {})
        with self._lock:
            self._apply(where, captured.body["audienceMembers"], add)
            request_id = secrets.token_hex(8)
            count = len(captured.body["audienceMembers"])
            self.statuses[request_id] = {
                "polls": 0,
                "count": count,
                "zeros": zeros,
                "add": add,
                "where": where,
            }
        return self.respond(200, {"requestId": request_id})

    async def ingest(self, request: Request) -> Response:
        return await self._write(request, add=True)

    async def remove(self, request: Request) -> Response:
        return await self._write(request, add=False)

    async def status(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        found = self.statuses.get(captured.query.get("requestId", ""))
        if found is None:
            return self.error(404, "NOT_FOUND", "Request id not found.")
        with self._lock:
            found["polls"] += 1
            done = found["polls"] > self.polls
        account, audience = found["where"].split("/")
        entry: dict[str, Any] = {
            "destination": {
                "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": account},
                "productDestinationId": audience,
            },
            "requestStatus": "PROCESSING",
        }
        if done:
            entry["requestStatus"] = "PARTIAL_SUCCESS" if found["zeros"] else "SUCCESS"
            kind = (
                "audienceMembersIngestionStatus" if found["add"] else "audienceMembersRemovalStatus"
            )
            entry[kind] = {
                "userDataIngestionStatus": {
                    "recordCount": str(found["count"]),
                    "userIdentifierCount": str(found["count"]),
                }
            }
            if found["zeros"]:
                entry["errorInfo"] = {
                    "errorCounts": [
                        {
                            "recordCount": str(found["zeros"]),
                            "reason": "PROCESSING_ERROR_REASON_INVALID_FORMAT",
                        }
                    ]
                }
        return self.respond(200, {"requestStatusPerDestination": [entry]})
