"""What every route of the fake Salesforce org shares: errors, versions, the org's state."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from undertow.testing.fakes import CapturedRequest, FakeAPI
from undertow.testing.salesforce.bulk import Jobs
from undertow.testing.salesforce.oauth import Sessions
from undertow.testing.salesforce.records import Org

PREFIX = "/services/data/v{version}"
_VERSION = re.compile(r"^(\d{2,3})\.0$")
NOT_FOUND = "The requested resource does not exist"


def sf_error(code: str, message: str, fields: list[str] | None = None) -> list[dict[str, Any]]:
    """Salesforce's REST error body: a JSON array of ``{"message", "errorCode"}``."""
    error: dict[str, Any] = {"message": message, "errorCode": code}
    if fields is not None:
        error["fields"] = fields
    return [error]


class SalesforceBase(FakeAPI):
    """State and helpers of the fake org (the routes live in the mixins built on it)."""

    type = "salesforce"
    vendor = "Salesforce"
    request_id_header = None

    org: Org
    jobs: Jobs
    sessions: Sessions
    job_seconds: float
    query_page: int
    min_version: int = 31

    def error(
        self, status: int, code: str, message: str, fields: list[str] | None = None
    ) -> Response:
        return self.respond(status, sf_error(code, message, fields))

    def not_found(self) -> Response:
        return self.error(404, "NOT_FOUND", NOT_FOUND)

    def version(self, request: Request, minimum: int | None = None) -> str | None:
        """The request's API version (``62.0``), or None when the org does not serve it."""
        match = _VERSION.match(str(request.path_params.get("version", "")))
        if match is None:
            return None
        number = int(match.group(1))
        if number < (minimum or self.min_version) or number > 99:
            return None
        return f"{number}.0"

    async def enter(
        self, request: Request, minimum: int | None = None
    ) -> tuple[CapturedRequest, str, Response | None]:
        """Admit a REST request (auth, allocations, scripts) and read its version."""
        captured, early = await self.admit(request)
        if early is not None:
            return captured, "", early
        version = self.version(request, minimum)
        if version is None:
            return captured, "", self.not_found()
        return captured, version, None
