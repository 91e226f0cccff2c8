"""A local fake of the Google Sheets API v4 (values) with service-account OAuth, for the tests.

What it does as Google documents it:

* ``POST /token``: the OAuth 2.0 JWT bearer grant of a service account
  (https://developers.google.com/identity/protocols/oauth2/service-account#httprest): the
  assertion's RS256 signature is checked against the account's public key, and its ``iss``,
  ``aud``, ``scope`` and ``exp``; the answer is ``{"access_token", "expires_in": 3599,
  "token_type": "Bearer"}``, or 400 ``{"error": "invalid_grant"}``.
* ``GET /v4/spreadsheets/{id}`` (sheets' properties), ``GET .../values/{range}`` (rows of
  the range, trailing empty cells and rows dropped, as Google does), ``POST
  .../values:batchUpdate`` (``valueInputOption`` required, A1 ranges, all-or-nothing) and
  ``POST .../values:batchClear``;
* errors in Google's shape ``{"error": {"code", "message", "status"}}``: 401 without a
  valid token, 404 for an unknown spreadsheet, 400 for a bad range or an unknown tab, the
  10,000,000-cell limit of a spreadsheet, and 429 ``RESOURCE_EXHAUSTED`` when the per-minute
  quota (60 requests per minute per user, https://developers.google.com/sheets/api/limits)
  is spent (``window_seconds`` shortens the minute for tests).

``fake.grid(tab)`` is the tab's cells (rows of values) for the tests to compare.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import FakeAPI, Window

SCOPE = "https://www.googleapis.com/auth/spreadsheets"
CELL_LIMIT = 10_000_000
_A1 = re.compile(
    r"^(?:'?(?P<tab>(?:[^'!]|'')+)'?!)?(?P<c1>[A-Z]*)(?P<r1>\d*)(?::(?P<c2>[A-Z]*)(?P<r2>\d*))?$"
)


def column_number(letters: str) -> int:
    n = 0
    for ch in letters:
        n = n * 26 + ord(ch) - 64
    return n


def _b64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def service_account(token_uri: str) -> tuple[dict[str, Any], Any]:
    """A new RSA service account: (its JSON key, as Google's console writes it; its public key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "undertow-test",
        "private_key_id": uuid.uuid4().hex,
        "private_key": pem,
        "client_email": "undertow@undertow-test.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    }
    return info, key.public_key()


class GoogleSheetsFake(FakeAPI):
    type = "google_sheets"
    vendor = "Google Sheets"
    request_id_header = None

    def __init__(
        self,
        public_key: Any = None,
        *,
        client_email: str = "undertow@undertow-test.iam.gserviceaccount.com",
        spreadsheet: str = "sheet-1",
        tabs: tuple[str, ...] = ("Sheet1",),
        window_seconds: float = 60.0,
        per_minute: int = 60,
    ) -> None:
        self.public_key = public_key
        self.client_email = client_email
        self.tokens: set[str] = set()
        self.spreadsheet = spreadsheet
        self.tabs: dict[str, list[list[Any]]] = {tab: [] for tab in tabs}
        self.writes = 0
        super().__init__(
            auth=self._authorized, windows=[Window(per_minute, window_seconds, "per-minute")]
        )

    def _authorized(self, request: Request) -> bool:
        if request.url.path == "/token":
            return True
        value = request.headers.get("authorization", "")
        return value.startswith("Bearer ") and value[7:] in self.tokens

    def routes(self) -> list[BaseRoute]:
        base = "/v4/spreadsheets/{sid}"
        return [
            Route("/token", self.token, methods=["POST"]),
            Route(base, self.get_spreadsheet, methods=["GET"]),
            Route(base + "/values:batchUpdate", self.batch_update, methods=["POST"]),
            Route(base + "/values:batchClear", self.batch_clear, methods=["POST"]),
            Route(base + "/values/{range:path}", self.get_values, methods=["GET"]),
        ]

    # -- answers in Google's shape -----------------------------------------------------------

    def error(self, code: int, status: str, message: str) -> Response:
        return self.respond(code, {"error": {"code": code, "message": message, "status": status}})

    def unauthorized(self, captured: Any) -> Response:
        return self.error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, "
            "login cookie or other valid authentication credential.",
        )

    def slow_down(self, window: Window | None) -> Response:
        return self.error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Write requests' and limit 'Write requests per "
            "minute per user' of service 'sheets.googleapis.com'.",
        )

    def grid(self, tab: str = "Sheet1") -> list[list[Any]]:
        return [list(row) for row in self.tabs[tab]]

    # -- OAuth -------------------------------------------------------------------------------

    async def token(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        form = captured.body if isinstance(captured.body, dict) else {}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self.respond(400, {"error": "unsupported_grant_type"})
        try:
            self._verify(str(form.get("assertion", "")), str(request.url))
        except ValueError as exc:
            return self.respond(400, {"error": "invalid_grant", "error_description": str(exc)})
        token = "ya29.fake-" + uuid.uuid4().hex
        self.tokens.add(token)
        return self.respond(
            200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}
        )

    def _verify(self, assertion: str, url: str) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        parts = assertion.split(".")
        if len(parts) != 3:
            raise ValueError("Invalid JWT: not three segments")
        header, claims = orjson.loads(_b64(parts[0])), orjson.loads(_b64(parts[1]))
        if header.get("alg") != "RS256":
            raise ValueError("Invalid JWT: alg must be RS256")
        try:
            self.public_key.verify(
                _b64(parts[2]),
                f"{parts[0]}.{parts[1]}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            raise ValueError("Invalid JWT Signature.") from None
        now = time.time()
        if claims.get("iss") != self.client_email:
            raise ValueError("Invalid issuer")
        if claims.get("aud") != url:
            raise ValueError(f"Invalid audience {claims.get('aud')!r}")
        if SCOPE not in str(claims.get("scope", "")).split():
            raise ValueError("Invalid scope")
        if (
            not (claims.get("iat", 0) - 300 <= now < claims.get("exp", 0))
            or claims["exp"] - claims["iat"] > 3600
        ):
            raise ValueError("Invalid JWT: Token must be a short-lived token (60 minutes)")

    # -- spreadsheets ------------------------------------------------------------------------

    def _unknown(self, sid: str) -> Response | None:
        if sid != self.spreadsheet:
            return self.error(404, "NOT_FOUND", "Requested entity was not found.")
        return None

    async def get_spreadsheet(self, request: Request) -> Response:
        _captured, early = await self.admit(request)
        if early is not None:
            return early
        missing = self._unknown(request.path_params["sid"])
        if missing is not None:
            return missing
        sheets = [
            {"properties": {"sheetId": n, "title": tab, "index": n, "sheetType": "GRID"}}
            for n, tab in enumerate(self.tabs)
        ]
        return self.respond(200, {"spreadsheetId": self.spreadsheet, "sheets": sheets})

    def _range(self, text: str) -> tuple[str, int, int, int | None, int | None]:
        """(tab, first row, first column, last row, last column), 1-based, None = open."""
        bare = (
            text[1:-1].replace("''", "'") if text.startswith("'") and text.endswith("'") else text
        )
        if "!" not in text and bare in self.tabs:  # a tab's name alone: the whole tab
            return bare, 1, 1, None, None
        match = _A1.match(text)
        if match is None:
            raise ValueError(f"Unable to parse range: {text}")
        tab = match["tab"]
        if tab is None:
            tab = next(iter(self.tabs))
        if tab not in self.tabs:
            raise ValueError(f"Unable to parse range: {text}")
        c1 = column_number(match["c1"]) if match["c1"] else 1
        r1 = int(match["r1"]) if match["r1"] else 1
        if match["c2"] is None and match["r2"] is None:
            if match["c1"] or match["r1"]:  # a single cell, or A:A / 1:1 forms need two ends
                return tab, r1, c1, r1 if match["r1"] else None, c1 if match["c1"] else None
            return tab, 1, 1, None, None
        c2 = column_number(match["c2"]) if match["c2"] else None
        r2 = int(match["r2"]) if match["r2"] else None
        return tab, r1, c1, r2, c2

    async def get_values(self, request: Request) -> Response:
        _captured, early = await self.admit(request)
        if early is not None:
            return early
        missing = self._unknown(request.path_params["sid"])
        if missing is not None:
            return missing
        text = request.path_params["range"]
        try:
            tab, r1, c1, r2, c2 = self._range(text)
        except ValueError as exc:
            return self.error(400, "INVALID_ARGUMENT", str(exc))
        rows = self.tabs[tab][r1 - 1 : r2]
        values = [row[c1 - 1 : c2] for row in rows]
        values = [_trim(row) for row in values]
        while values and not values[-1]:
            values.pop()
        body: dict[str, Any] = {"range": text, "majorDimension": "ROWS"}
        if values:
            body["values"] = values
        return self.respond(200, body)

    async def batch_update(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        missing = self._unknown(request.path_params["sid"])
        if missing is not None:
            return missing
        body = captured.body if isinstance(captured.body, dict) else {}
        if body.get("valueInputOption") not in ("RAW", "USER_ENTERED"):
            return self.error(
                400, "INVALID_ARGUMENT", "Invalid valueInputOption: INPUT_VALUE_OPTION_UNSPECIFIED"
            )
        planned: list[tuple[str, int, int, list[list[Any]]]] = []
        cells = 0
        for item in body.get("data", []):
            try:
                tab, r1, c1, _, _ = self._range(str(item.get("range", "")))
            except ValueError as exc:
                return self.error(400, "INVALID_ARGUMENT", str(exc))
            values = item.get("values", [])
            planned.append((tab, r1, c1, values))
            cells += sum(len(r) for r in values)
        self.note_batch(sum(len(p[3]) for p in planned))
        grown = {tab: [list(r) for r in rows] for tab, rows in self.tabs.items()}
        for tab, r1, c1, values in planned:
            grid = grown[tab]
            for offset, row in enumerate(values):
                index = r1 - 1 + offset
                while len(grid) <= index:
                    grid.append([])
                target = grid[index]
                while len(target) < c1 - 1 + len(row):
                    target.append("")
                for col, value in enumerate(row):
                    target[c1 - 1 + col] = "" if value is None else value
        total = sum(max((len(r) for r in g), default=0) * len(g) for g in grown.values())
        if total > CELL_LIMIT:
            return self.error(
                400,
                "INVALID_ARGUMENT",
                "This action would increase the number of cells in the workbook above the "
                f"limit of {CELL_LIMIT} cells.",
            )
        self.tabs = {tab: _trim_rows([_trim(r) for r in rows]) for tab, rows in grown.items()}
        self.writes += 1
        return self.respond(
            200,
            {
                "spreadsheetId": self.spreadsheet,
                "totalUpdatedRows": sum(len(p[3]) for p in planned),
                "totalUpdatedCells": cells,
                "totalUpdatedSheets": len({p[0] for p in planned}),
            },
        )

    async def batch_clear(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        missing = self._unknown(request.path_params["sid"])
        if missing is not None:
            return missing
        body = captured.body if isinstance(captured.body, dict) else {}
        cleared = []
        for text in body.get("ranges", []):
            try:
                tab, r1, c1, r2, c2 = self._range(str(text))
            except ValueError as exc:
                return self.error(400, "INVALID_ARGUMENT", str(exc))
            grid = self.tabs[tab]
            for index in range(r1 - 1, min(len(grid), r2 if r2 else len(grid))):
                row = grid[index]
                for col in range(c1 - 1, min(len(row), c2 if c2 else len(row))):
                    row[col] = ""
                grid[index] = _trim(row)
            cleared.append(text)
        self.tabs = {tab: _trim_rows(rows) for tab, rows in self.tabs.items()}
        self.writes += 1
        return self.respond(200, {"spreadsheetId": self.spreadsheet, "clearedRanges": cleared})


def _trim_rows(rows: list[list[Any]]) -> list[list[Any]]:
    """The values of a tab as Google returns them: no empty rows at the end."""
    out = list(rows)
    while out and not out[-1]:
        out.pop()
    return out


def _trim(row: list[Any]) -> list[Any]:
    out = list(row)
    while out and out[-1] in ("", None):
        out.pop()
    return out
