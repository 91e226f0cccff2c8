"""Google Sheets destination: mirror a model into one tab, rows kept in key order.

    destinations:
      ops_sheet: {type: google_sheets, spreadsheet_id: "1AbC...", sheet: Customers,
                  credentials_file: "${GOOGLE_APPLICATION_CREDENTIALS}"}
    syncs:
      customers_to_sheet: {model: customers, destination: ops_sheet, mode: mirror,
                           match: {id: id}, mappings: {id: id, name: name, plan: plan}}

The tab belongs to the sync. Its first row is the header, from the mapping (the match field
first, then the mapped fields in order; a new field adds a column at the right). Every other
row is one record, **in key order** (numbers before text, numbers by value): a changed row is
updated in place, a removed row deleted (the rows below move up), an added row inserted at
its key's place (at the end when its key is the largest, as with growing ids).

How: the tab is read once per run (the header and every row), the batch is applied to that
copy, and the rows that differ are written with **one** ``values.batchUpdate`` per batch
(``valueInputOption: RAW``, so a value that starts with ``=`` stays text; rows that moved up
at the end are blanked in the same request). The request is atomic, so a kill -9 leaves the
tab as of the last batch, and the next run, which reads the tab again, writes the same rows
again: nothing is duplicated. Records are accepted only when Google answered 200.

Auth: a service account's JSON key (``credentials_file`` or ``credentials``), exchanged for
an access token with the OAuth 2.0 JWT bearer grant (RS256, scope ``spreadsheets``); share
the spreadsheet with the account's ``client_email`` as an editor.

Limits (https://developers.google.com/sheets/api/limits): 300 requests per minute per
project and 60 per minute per user (a service account is one user), both paced exactly;
429 ``RESOURCE_EXHAUSTED`` backs off; 10 million cells per spreadsheet
(https://support.google.com/drive/answer/37603).
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlsplit

import orjson
from pydantic import Field, SecretStr, model_validator

from undertow.destinations._http import DRY_RUN_TOKEN, HttpClient, dry_run_active
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    DestinationConfig,
    MatchRule,
    Operation,
    RateLimit,
)
from undertow.destinations.kit import Auth, HttpConfig, HttpDestination
from undertow.errors import FatalDeliveryError
from undertow.redact import redact, register_secret, trim
from undertow.sources.base import missing_driver

LIMITS_DOC = "https://developers.google.com/sheets/api/limits"
UPDATE_DOC = (
    "https://developers.google.com/sheets/api/reference/rest/v4/spreadsheets.values/batchUpdate"
)
AUTH_DOC = "https://developers.google.com/identity/protocols/oauth2/service-account#httprest"
SCOPE = "https://www.googleapis.com/auth/spreadsheets"
MAX_BATCH = 1000


class GoogleSheetsConfig(HttpConfig):
    type: Literal["google_sheets"] = "google_sheets"
    base_url: str = "https://sheets.googleapis.com"
    spreadsheet_id: str = Field(min_length=1)
    """The id in the spreadsheet's URL: docs.google.com/spreadsheets/d/<id>/edit."""
    sheet: str = Field(default="Sheet1", min_length=1)
    """The tab (it must exist)."""
    credentials: SecretStr | None = None
    """The service account's JSON key, as text."""
    credentials_file: str | None = None
    """Or the path of that JSON key file (relative to the project)."""
    batch_size: int = Field(default=MAX_BATCH, ge=1, le=MAX_BATCH)

    @model_validator(mode="after")
    def _one_key(self) -> GoogleSheetsConfig:
        if (self.credentials is None) == (self.credentials_file is None):
            raise ValueError("give the service account key as `credentials_file` or `credentials`")
        return self


class ServiceAccountAuth(Auth):
    """OAuth 2.0 for a service account: a signed JWT exchanged for an hour's access token."""

    def __init__(self, info: dict[str, Any], *, scope: str, timeout: float, where: str) -> None:
        for field in ("client_email", "private_key", "token_uri"):
            if not info.get(field):
                raise FatalDeliveryError(
                    f"{where}: the service account key has no {field!r}",
                    hint="download a JSON key (IAM > Service accounts > Keys > Add key > JSON)",
                )
        register_secret(info["private_key"])
        self.info = info
        self.scope = scope
        self.where = where
        self.token: str | None = None
        self.expires = 0.0
        uri = urlsplit(info["token_uri"])
        self.token_path = uri.path or "/"
        self.client = HttpClient(f"{uri.scheme}://{uri.netloc}", timeout=timeout)

    def headers(self) -> dict[str, str]:
        token = self.token or (DRY_RUN_TOKEN if dry_run_active() else None)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def assertion(self) -> str:
        try:
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import padding
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise missing_driver("cryptography", "google-sheets") from exc
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": self.info.get("private_key_id", "")}
        claims = {
            "iss": self.info["client_email"],
            "scope": self.scope,
            "aud": self.info["token_uri"],
            "iat": now,
            "exp": now + 3600,
        }
        signing = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
        try:
            key = serialization.load_pem_private_key(self.info["private_key"].encode(), None)
        except ValueError:
            raise FatalDeliveryError(
                f"{self.where}: the service account's private_key is not a PEM RSA key",
                hint="use the JSON key file exactly as Google Cloud downloaded it",
            ) from None
        signature = key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr, call-arg, arg-type]
        return f"{signing}.{_b64(signature)}"

    async def ensure(self) -> None:
        if dry_run_active():  # a dry run sends nothing, the token request included
            return
        if self.token is None or time.time() > self.expires - 60:
            await self.refresh(self.client)

    async def refresh(self, client: HttpClient) -> bool:
        from urllib.parse import urlencode

        body = urlencode(
            {
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": self.assertion(),
            }
        ).encode()
        response = await self.client.request(
            "POST",
            self.token_path,
            body=body,
            content_type="application/x-www-form-urlencoded",
            raise_for_status=False,
        )
        if response.status != 200:
            raise FatalDeliveryError(
                f"{self.where}: Google refused the service account's key: {response.describe()}",
                hint="check that the key was not deleted or disabled (IAM > Service accounts) "
                "and that this machine's clock is right",
            )
        answer = response.json()
        token = str(answer.get("access_token", ""))
        register_secret(token)
        self.token = token
        self.expires = time.time() + float(answer.get("expires_in", 3600))
        return True

    async def close(self) -> None:
        await self.client.close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def column_letters(n: int) -> str:
    """1 -> A, 27 -> AA."""
    out = ""
    while n:
        n, rest = divmod(n - 1, 26)
        out = chr(65 + rest) + out
    return out


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


def _key(value: Any) -> str:
    """A key as the sheet and the model agree on it (3 and 3.0 are the same key)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _order(value: Any) -> tuple[int, float, str]:
    text = _key(value)
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


class GoogleSheetsDestination(HttpDestination[GoogleSheetsConfig]):
    """Keep a Google Sheets tab equal to the model, in key order."""

    name: ClassVar[str] = "google_sheets"
    vendor: ClassVar[str] = "Google Sheets"
    fake: ClassVar[str | None] = "undertow.testing.google_sheets:GoogleSheetsFake"
    docs_url: ClassVar[str | None] = UPDATE_DOC
    auth_hint: ClassVar[str] = (
        "share the spreadsheet with the service account's client_email as an editor, and "
        "enable the Google Sheets API for its project"
    )
    capabilities: ClassVar[Capabilities] = Capabilities(
        operations=frozenset(
            {Operation.UPSERT, Operation.INSERT, Operation.UPDATE, Operation.DELETE}
        ),
        max_batch_size=MAX_BATCH,
        max_concurrency=1,  # row positions depend on every batch before
        shared_delivery=False,
        rate_limit=RateLimit(60, 60.0, LIMITS_DOC),  # per user per project
        rate_limits=(RateLimit(300, 60.0, LIMITS_DOC),),  # per project
        per_record_results=True,
        match=MatchRule.exactly_one(example="match: {id: id}"),
        match_operations=frozenset(Operation),
        cite={"rate_limit": LIMITS_DOC, "rate_limits": LIMITS_DOC, "max_batch_size": UPDATE_DOC},
    )

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        self._grid: list[list[Any]] | None = None
        self._lock = asyncio.Lock()
        super().__init__(config, name=name)

    def where(self) -> str:
        return f"google_sheets destination {self.instance_name!r} (tab {self.config.sheet!r})"

    def capabilities_for(self, object: str | None) -> Capabilities:
        from dataclasses import replace

        return replace(self.capabilities, max_batch_size=self.config.batch_size)

    def _key_info(self) -> dict[str, Any]:
        config = self.config
        if config.credentials is not None:
            text = config.credentials.get_secret_value()
            source = "`credentials`"
        else:
            path = Path(str(config.credentials_file))
            if not path.is_absolute():
                path = Path(self.base_dir) / path
            try:
                text = path.read_text()
            except OSError as exc:
                raise FatalDeliveryError(
                    f"{self.where()}: cannot read the service account key {str(path)!r} "
                    f"({exc.strerror})",
                    hint="fix `credentials_file` (a path relative to the project, or absolute)",
                ) from None
            source = str(path)
        try:
            info = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise FatalDeliveryError(
                f"{self.where()}: the service account key in {source} is not JSON",
                hint="use the JSON key file exactly as Google Cloud downloaded it",
            ) from None
        if not isinstance(info, dict):
            raise FatalDeliveryError(f"{self.where()}: the key in {source} is not a JSON object")
        return info

    @property
    def sa(self) -> ServiceAccountAuth:
        """The service account's auth, built on first use (the key file is read then, once
        ``base_dir`` is the project folder)."""
        if not isinstance(self.auth, ServiceAccountAuth):
            self.auth = ServiceAccountAuth(
                self._key_info(), scope=SCOPE, timeout=self.config.timeout, where=self.where()
            )
        return self.auth

    def _path(self, suffix: str = "") -> str:
        return f"/v4/spreadsheets/{quote(self.config.spreadsheet_id, safe='')}{suffix}"

    def _tab(self) -> str:
        return "'" + self.config.sheet.replace("'", "''") + "'"

    async def close(self) -> None:
        await super().close()
        if isinstance(self.auth, ServiceAccountAuth):
            await self.auth.close()
        self._grid = None

    async def check(self) -> None:
        await self.sa.ensure()
        response = await self.send("GET", self._path(), params={"fields": "sheets.properties"})
        self._answer(response, "reading the spreadsheet")
        titles = [s["properties"]["title"] for s in response.json().get("sheets", [])]
        if self.config.sheet not in titles:
            raise FatalDeliveryError(
                f"{self.where()}: the spreadsheet has no tab {self.config.sheet!r}",
                hint=f"tabs are: {', '.join(titles)}; create the tab or fix `sheet`",
            )

    def _answer(self, response: Any, doing: str) -> None:
        if response.status == 404:
            raise FatalDeliveryError(
                f"{self.where()}: spreadsheet {self.config.spreadsheet_id!r} not found while "
                f"{doing}",
                hint="check `spreadsheet_id` and share the spreadsheet with "
                f"{self.sa.info['client_email']}",
            )
        if response.status != 200:
            raise FatalDeliveryError(
                f"{self.where()}: Google Sheets refused {doing}: {response.describe()}",
                hint="check `sheet` (the tab's exact name)",
            )

    async def _load(self) -> list[list[Any]]:
        if self._grid is None:
            await self.check()
            response = await self.send(
                "GET",
                self._path(f"/values/{quote(self._tab(), safe='')}"),
                params={"valueRenderOption": "UNFORMATTED_VALUE", "majorDimension": "ROWS"},
            )
            self._answer(response, "reading the tab")
            self._grid = [list(r) for r in response.json().get("values", [])]
        return self._grid

    async def write_batch(self, batch: Batch) -> BatchResult:
        async with self._lock:
            await self.sa.ensure()
            grid = await self._load()
            try:
                return await self._write(batch, grid)
            except BaseException:
                self._grid = None  # read the tab again before the next write
                raise

    async def _write(self, batch: Batch, grid: list[list[Any]]) -> BatchResult:
        (field,) = batch.identifiers or {"": []}
        if not field:
            raise FatalDeliveryError(
                f"{self.where()}: sync {batch.sync!r} needs `match:` naming the key column",
                hint="add e.g. `match: {id: id}`",
            )
        keys = batch.identifiers[field]
        records = [{} for _ in keys] if batch.operation is Operation.DELETE else batch.records()
        header = [str(h) for h in grid[0]] if grid else []
        if header and field not in header:
            raise FatalDeliveryError(
                f"{self.where()}: the tab's header has no column {field!r} (the match field)",
                hint="clear the tab, or name the key column in its first row",
            )
        new_header = header or [field]
        for record in records:
            for name in record:
                if name not in new_header:
                    new_header.append(name)
        key_col = new_header.index(field)
        rows: dict[str, list[Any]] = {}
        for number, row in enumerate(grid[1:], start=2):
            value = row[key_col] if key_col < len(row) else ""
            if value in ("", None):
                if any(c not in ("", None) for c in row):
                    raise FatalDeliveryError(
                        f"{self.where()}: row {number} has no {field!r}: the tab must hold only "
                        "this sync's rows",
                        hint="move other data to another tab",
                    )
                continue
            if _key(value) in rows:
                raise FatalDeliveryError(
                    f"{self.where()}: {field!r} {value!r} is in two rows (row {number} is the "
                    "second)",
                    hint="remove the duplicate row from the tab",
                )
            rows[_key(value)] = list(row)
        result = BatchResult()
        for index, (value, record) in enumerate(zip(keys, records, strict=True)):
            if value is None or value == "":
                result.rejected[index] = f"the match field {field!r} is empty"
                continue
            key = _key(value)
            if batch.operation is Operation.DELETE:
                rows.pop(key, None)
                continue
            if batch.operation is Operation.UPDATE and key not in rows:
                result.rejected[index] = (
                    f"no row with {field} {value!r} in tab {self.config.sheet!r}; update does "
                    "not add rows (use mode upsert)"
                )
                continue
            row = rows.get(key, [])
            row = row + [""] * (len(new_header) - len(row))
            row[key_col] = value
            for name, cell in record.items():
                row[new_header.index(name)] = _cell(cell)
            rows[key] = row
        ordered = sorted(rows, key=lambda k: _order(rows[k][key_col]))
        new_grid = [new_header] + [rows[k] for k in ordered]
        data = self._changes(grid, new_grid)
        if not data:
            return result
        self.note(len(batch))
        response = await self.send(
            "POST",
            self._path("/values:batchUpdate"),
            json={"valueInputOption": "RAW", "data": data},
        )
        if response.status == 200:
            self._grid = new_grid
            return result
        if 400 <= response.status < 500:
            message = _google_message(response)
            for index in range(len(batch)):
                result.rejected.setdefault(index, f"Google Sheets refused the batch: {message}")
            return result
        raise FatalDeliveryError(
            f"{self.where()}: unexpected answer to values.batchUpdate: {response.describe()}"
        )

    def note(self, size: int) -> None:
        """Hook for tests and stats (the batch size written)."""

    def _changes(self, old: list[list[Any]], new: list[list[Any]]) -> list[dict[str, Any]]:
        """Value ranges covering every row that differs (contiguous runs), blanking the rows
        the new grid no longer has."""
        width = max([len(r) for r in old] + [len(r) for r in new] + [1])
        blank = [""] * width

        def padded(row: list[Any]) -> list[Any]:
            return [("" if c is None else c) for c in row] + [""] * (width - len(row))

        height = max(len(old), len(new))
        changed: list[int] = []
        for i in range(height):
            before = padded(old[i]) if i < len(old) else blank
            after = padded(new[i]) if i < len(new) else blank
            if before != after:
                changed.append(i)
        data: list[dict[str, Any]] = []
        start = 0
        while start < len(changed):
            end = start
            while end + 1 < len(changed) and changed[end + 1] == changed[end] + 1:
                end += 1
            first, last = changed[start], changed[end]
            values = [padded(new[i]) if i < len(new) else blank for i in range(first, last + 1)]
            data.append(
                {
                    "range": f"{self._tab()}!A{first + 1}:{column_letters(width)}{last + 1}",
                    "majorDimension": "ROWS",
                    "values": values,
                }
            )
            start = end + 1
        return data


def _google_message(response: Any) -> str:
    try:
        error = response.json().get("error", {})
        return trim(redact(f"{error.get('status', response.status)}: {error.get('message', '')}"))
    except Exception:  # not Google's JSON
        return str(response.describe())
