"""The shared HTTP client of HTTP destinations: aiohttp, status classes, safe messages.

Status classes follow singer-sdk: 429, 5xx, timeouts and connection errors (DNS included)
are retryable (``RetryableError``, with ``Retry-After`` honoured by the deliver stage);
401/403 and TLS failures are fatal (credentials and certificates will not fix themselves
mid-run); other 4xx are returned to the connector,
which turns them into per-record rejections (``RejectedBatchError`` by default).

Only an explicit success is a success. Redirects are never followed (aiohttp follows them by
default): a 3xx answer reaches the caller, which by default stops the run, naming where the
redirect pointed, and never re-sends the body or the credentials there. The client sends only
to its own origin (scheme, host, port) and to origins it was told about (``also``): an
absolute URL elsewhere is refused before anything leaves.

Messages carry the method, the path, the status, the vendor's request id and a trimmed,
redacted body; never a token, a query string or a record's values.

Inside :func:`dry_run` (``undertow test --dry-run``) nothing leaves the machine: the first
request a destination makes is handed to the capture listeners as it would have been sent
(headers and body redacted like any captured exchange) and :class:`DryRunStop` ends the
delivery there. An OAuth scheme that logs in first (:func:`dry_run_active`) skips the login
and sends :data:`DRY_RUN_TOKEN` in place of the token it would have obtained.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import email.utils
import io
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from undertow.destinations import capture
from undertow.errors import FatalDeliveryError, RejectedBatchError, RetryableError
from undertow.redact import redact_url, trim

LARGE_BODY_BYTES = 2**20
"""Bodies above this are streamed from a buffer rather than written in one call."""

REQUEST_ID_HEADERS = ("x-request-id", "x-hubspot-correlation-id", "request-id", "x-amzn-requestid")

DRY_RUN_TOKEN = "<access token from the OAuth login, not fetched in a dry run>"
"""What an OAuth scheme puts in place of its token in a dry run (not a secret)."""

_dry_run: contextvars.ContextVar[bool] = contextvars.ContextVar("undertow_dry_run", default=False)


class DryRunStop(BaseException):
    """Raised in a dry run where the first request would have been sent.

    A ``BaseException`` so that no connector's ``except Exception`` turns it into a
    rejected or failed record: it ends the delivery, which :func:`dry_run`'s caller expects.
    """

    def __init__(self, method: str, url: str) -> None:
        super().__init__(f"{method} {redact_url(url)}")
        self.method, self.url = method, url


@contextlib.contextmanager
def dry_run() -> Iterator[None]:
    """Within this context (and the tasks it starts), no HTTP request is sent."""
    token = _dry_run.set(True)
    try:
        yield
    finally:
        _dry_run.reset(token)


def dry_run_active() -> bool:
    return _dry_run.get()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    method: str
    url: str

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None

    @property
    def request_id(self) -> str | None:
        for name in REQUEST_ID_HEADERS:
            if name in self.headers:
                return self.headers[name]
        return None

    @property
    def location(self) -> str | None:
        """Where a redirect points, without query string or user info (safe to show)."""
        target = self.headers.get("location")
        return redact_url(target) if target else None

    def describe(self) -> str:
        """`POST /crm/v3/... -> 400 (request id abc): trimmed body` — safe for messages."""
        path = urlsplit(self.url).path or "/"
        rid = f" (request id {self.request_id})" if self.request_id else ""
        body = trim(self.body.decode("utf-8", "replace")) if self.body else "(empty body)"
        return f"{self.method} {path} -> {self.status}{rid}: {body}"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, the default port made explicit."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


class HttpClient:
    """One aiohttp session per destination instance; opened lazily, closed by ``close``."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        max_connections: int = 16,
        also: Iterable[str] = (),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = headers or {}
        self.timeout = timeout
        self.max_connections = max_connections
        self.origins = {origin(self.base_url), *(origin(u) for u in also)}
        """Where this client may send requests (its base URL's origin and ``also``)."""
        self._session: aiohttp.ClientSession | None = None

    def allow(self, url: str) -> None:
        """Also send to ``url``'s origin (e.g. an instance URL learnt at login)."""
        self.origins.add(origin(url))

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            if origin(path) not in self.origins:
                raise FatalDeliveryError(
                    f"refused to send to {redact_url(path)}: not this destination's origin "
                    f"({redact_url(self.base_url)}); its body and credentials stay here",
                    hint="an answer pointed to another host; report it if the vendor documents it",
                )
            return path
        return f"{self.base_url}/{path.lstrip('/')}" if path else self.base_url

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str | None = "application/json",
        raise_for_status: bool = True,
    ) -> Response:
        """Send a request; raise for transport errors, 429, 5xx, 3xx, 401 and 403.

        Other statuses (2xx and the remaining 4xx) are returned for the connector to read.
        With ``raise_for_status=False`` every status is returned (transport errors still
        raise): for a vendor whose 429 or 401 needs reading before classing, the connector
        reads it first and then calls :func:`raise_for_status_class` itself. Redirects are
        never followed.
        """
        url = self.url(path)
        raw = orjson.dumps(json) if json is not None else body
        data: bytes | io.BytesIO | None = raw
        if raw is not None and len(raw) > LARGE_BODY_BYTES:
            # aiohttp writes a big bytes body in one go (and warns that it blocks the loop);
            # a file-like body is streamed in chunks
            data = io.BytesIO(raw)
        send_headers = {"Content-Type": content_type} if content_type else {}
        if headers:
            send_headers.update(headers)
        if _dry_run.get():
            capture.emit(
                method=method,
                url=url,
                started_at=time.time(),
                request_headers={**self.headers, **send_headers},
                request_body=raw,
                error=capture.DRY_RUN_NOTE,
                duration=0.0,
            )
            raise DryRunStop(method, url)
        session = await self.session()
        started = time.time()
        try:
            async with session.request(
                method,
                url,
                data=data,
                headers=send_headers,
                params=params,
                allow_redirects=False,
            ) as resp:
                payload = await resp.read()
                response = Response(
                    status=resp.status,
                    headers={k.lower(): v for k, v in resp.headers.items()},
                    body=payload,
                    method=method,
                    url=url,
                )
        except BaseException as exc:
            if capture.active():
                capture.emit(
                    method=method,
                    url=url,
                    started_at=started,
                    request_headers={**self.headers, **send_headers},
                    request_body=raw,
                    error=f"{type(exc).__name__}: {exc}",
                )
            # redacted only on this path: every request paid for it before
            error = self._transport_error(f"{method} {redact_url(url)}", url, exc)
            if error is None:
                raise
            raise error from exc
        if capture.active():
            capture.emit(
                method=method,
                url=url,
                started_at=started,
                request_headers={**self.headers, **send_headers},
                request_body=raw,
                status=response.status,
                response_headers=response.headers,
                response_body=response.body,
                request_id=response.request_id,
            )
        if raise_for_status:
            raise_for_status_class(response)
        return response

    def _transport_error(self, where: str, url: str, exc: BaseException) -> Exception | None:
        """The Undertow error for a transport failure; None for anything else (re-raised)."""
        if isinstance(exc, TimeoutError):
            return RetryableError(
                f"{where} timed out after {self.timeout:g}s",
                hint="the destination is slow; the batch is retried with backoff",
            )
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            host = urlsplit(url).hostname
            return RetryableError(
                f"{where}: cannot resolve host {host!r} ({exc.os_error.strerror or exc.os_error})",
                hint="check the spelling of the URL's host and this machine's DNS",
            )
        if isinstance(exc, aiohttp.ClientSSLError):
            # a certificate that is not trusted, or a port that does not speak TLS: no retry
            # fixes either, so stop the run (the rows stay undelivered for the next run)
            return FatalDeliveryError(
                f"{where}: TLS handshake failed ({exc})",
                hint="if the server speaks plain HTTP on that port, use an http:// URL; if its "
                "certificate is self-signed or expired, fix the certificate on the server",
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return RetryableError(
                f"{where}: cannot connect ({exc.os_error.strerror or exc.os_error})",
                hint="check the URL and that the destination is reachable from this machine",
            )
        if isinstance(exc, aiohttp.ClientError | asyncio.IncompleteReadError | ConnectionError):
            return RetryableError(f"{where}: connection failed ({type(exc).__name__}: {exc})")
        return None


def redirect_error(response: Response, vendor: str = "the destination") -> FatalDeliveryError:
    """The error for a 3xx answer: not delivered, not followed, says where it pointed."""
    where = f" to {response.location}" if response.location else ""
    return FatalDeliveryError(
        f"{vendor} answered {response.status}, a redirect{where}, which Undertow never "
        f"follows (the batch and its credentials are not sent on); nothing in it is counted "
        f"as delivered: {response.describe()}",
        hint="point the destination's URL at the final address (a login page here usually "
        "means the URL or its credentials are wrong)",
    )


def raise_for_status_class(response: Response) -> None:
    """Raise the error class a status belongs to; return for 2xx and plain 4xx."""
    status = response.status
    if 300 <= status < 400:
        raise redirect_error(response)
    if status == 429:
        raise RetryableError(
            f"rate limited: {response.describe()}",
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
    if status >= 500 or status == 408:
        raise RetryableError(
            f"server error: {response.describe()}",
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
    if status in (401, 403):
        raise FatalDeliveryError(
            f"not authorised: {response.describe()}",
            hint="check the destination's credentials (token, key) and their scopes",
        )


def reject_batch(response: Response) -> RejectedBatchError:
    """The error for a 4xx that refuses every record of the batch."""
    return RejectedBatchError(f"destination refused the batch: {response.describe()}")
