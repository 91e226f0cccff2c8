"""Webhook destination: POST (or PUT/PATCH) each batch of records as one JSON body.

Default body, built by concatenating the records' JSON texts (no re-encoding)::

    {"sync": "users_to_hook", "operation": "upsert", "records": [{...}, {...}]}

Every request carries the batch's idempotency key (``Idempotency-Key`` by default), stable
across a resend of the same batch, so a receiver can drop duplicates.

Statuses (through :class:`undertow.destinations._http.HttpClient`): 2xx accepted; 429, 5xx,
408, timeouts and connection errors retryable (``Retry-After`` honoured); 401/403 fatal;
any other 4xx rejects every record of the batch with the trimmed response.

``url: local://inbox.jsonl`` starts a built-in receiver on 127.0.0.1 for the run and appends
every request it gets to that file (relative to the project): for trying a project out.

Per-record errors: a 2xx response whose JSON body is ``{"errors": [{"index": 3, "message":
"..."}]}`` rejects the records at those indexes (0-based, in the order sent); the others are
accepted. See ``docs/destinations/webhook.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from undertow.destinations._http import HttpClient, Response
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    Destination,
    DestinationConfig,
    Operation,
    RateLimit,
)
from undertow.errors import ConfigError, FatalDeliveryError
from undertow.headers import check_headers
from undertow.redact import redact, redact_url, register_secret, trim

if TYPE_CHECKING:  # the local receiver (uvicorn) is imported only for local:// URLs
    import jinja2

    from undertow.testing.server import RunningServer

_CREDENTIAL_WORDS = ("authorization", "token", "key", "secret", "password", "auth", "cookie")
_CONNECT_TIMEOUT = 10.0


def is_credential_header(name: str) -> bool:
    """True for header names whose values are credentials (Authorization, *token*, *key*...)."""
    lowered = name.lower()
    return any(word in lowered for word in _CREDENTIAL_WORDS)


class RateLimitConfig(BaseModel):
    """At most ``requests`` requests every ``per_seconds`` seconds."""

    model_config = ConfigDict(extra="forbid")
    requests: int = Field(gt=0)
    per_seconds: float = Field(gt=0)


LOCAL_SCHEME = "local://"


class WebhookConfig(DestinationConfig):
    type: Literal["webhook"] = "webhook"
    url: str
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, str | SecretStr] = Field(default_factory=dict)
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    max_concurrency: int = Field(default=4, ge=1, le=64)
    rate_limit: RateLimitConfig | None = None
    timeout: float = Field(default=30.0, gt=0)
    body_template: str | None = None
    idempotency_header: str = "Idempotency-Key"
    max_record_bytes: int | None = Field(default=None, gt=0)
    """The receiver's limit per record (JSON bytes): bigger records are rejected unsent."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value.startswith(LOCAL_SCHEME) and len(value) > len(LOCAL_SCHEME):
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"{redact_url(value)!r} is not an http(s) URL; write it as https://host/path (or local://FILE for the built-in receiver)"
            )
        return value

    @field_validator("headers")
    @classmethod
    def _hide_credentials(cls, value: dict[str, str | SecretStr]) -> dict[str, str | SecretStr]:
        """Credential-looking header values become SecretStr so no repr or dump shows them."""
        check_headers(value)  # no CR/LF: a clear config error, not a traceback mid-run
        return {
            name: SecretStr(v) if isinstance(v, str) and is_credential_header(name) else v
            for name, v in value.items()
        }


class WebhookDestination(Destination[WebhookConfig]):
    """Send batches of records to any HTTP endpoint as JSON."""

    name: ClassVar[str] = "webhook"
    sends_http: ClassVar[bool] = True
    capabilities: ClassVar[Capabilities] = Capabilities(
        operations=frozenset(Operation),
        max_batch_size=1000,
        max_concurrency=4,
        per_record_results=True,
        idempotency_key=True,
    )

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        super().__init__(config, name=name)
        config = self.config
        headers: dict[str, str] = {}
        for header, value in config.headers.items():
            plain = value.get_secret_value() if isinstance(value, SecretStr) else value
            if isinstance(value, SecretStr) or is_credential_header(header):
                register_secret(plain)
                scheme, _, credential = plain.partition(" ")
                if credential and scheme.isalpha():  # "Bearer abc": the bare token too
                    register_secret(credential.strip())
            headers[header] = plain
        self._client = HttpClient(
            config.url,
            headers=headers,
            timeout=config.timeout,
            max_connections=config.max_concurrency,
        )
        rate = config.rate_limit
        self._rate_limit = RateLimit(rate.requests, rate.per_seconds) if rate else None
        self._local: RunningServer | None = None
        self._template: jinja2.Template | None = None
        self._template_vars: set[str] = set()
        if config.body_template is not None:
            self._template, self._template_vars = _compile(config.body_template, name)

    def capabilities_for(self, object: str | None) -> Capabilities:
        return Capabilities(
            operations=self.capabilities.operations,
            max_batch_size=self.config.batch_size,
            max_concurrency=self.config.max_concurrency,
            rate_limit=self._rate_limit,
            per_record_results=True,
            idempotency_key=True,
            max_payload_bytes=self.config.max_record_bytes,
        )

    @property
    def _url(self) -> str:
        return self._local.url if self._local is not None else self.config.url

    async def open(self) -> None:
        """For a ``local://FILE`` URL, start the built-in receiver that appends to FILE."""
        if self.config.url.startswith(LOCAL_SCHEME) and self._local is None:
            from undertow.testing.server import start_server
            from undertow.testing.webhook import WebhookReceiver

            inbox = Path(self.config.url[len(LOCAL_SCHEME) :])
            if not inbox.is_absolute():
                inbox = Path(self.base_dir) / inbox
            receiver = WebhookReceiver(inbox=inbox)
            self._local = await asyncio.to_thread(start_server, receiver.app)
            self._client.allow(self._local.url)  # the built-in receiver is this URL's origin

    async def close(self) -> None:
        await self._client.close()
        if self._local is not None:
            await asyncio.to_thread(self._local.stop)
            self._local = None

    async def check(self) -> None:
        """Resolve the host and open a TCP connection to it; nothing is sent."""
        if self.config.url.startswith(LOCAL_SCHEME):
            target = self.config.url[len(LOCAL_SCHEME) :]
            folder = (Path(self.base_dir) / target).parent
            if not target or not folder.is_dir():
                raise FatalDeliveryError(
                    f"webhook destination {self.instance_name!r}: the local inbox folder "
                    f"{folder} does not exist",
                    hint="create the folder, or use `url: local://inbox.jsonl`",
                )
            return
        parts = urlsplit(self.config.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        where = f"webhook destination {self.instance_name!r} ({redact_url(self.config.url)})"
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), _CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            raise FatalDeliveryError(
                f"{where}: cannot resolve host {host!r} ({exc})",
                hint="check the spelling of the URL's host and this machine's DNS",
            ) from exc
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), _CONNECT_TIMEOUT
            )
        except TimeoutError as exc:
            raise FatalDeliveryError(
                f"{where}: no answer from {host}:{port} within {_CONNECT_TIMEOUT:g}s",
                hint="a firewall may drop the connection; check the port and network access",
            ) from exc
        except OSError as exc:
            raise FatalDeliveryError(
                f"{where}: cannot connect to {host}:{port} ({exc.strerror or exc})",
                hint="check the URL's port and that the receiver is running and reachable",
            ) from exc
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def write_batch(self, batch: Batch) -> BatchResult:
        if self._template is not None:
            rendered = self._render(batch)
            if isinstance(rendered, BatchResult):
                return rendered
            body = rendered
        else:
            body = (
                b'{"sync":'
                + orjson.dumps(batch.sync)
                + b',"operation":"'
                + batch.operation.value.encode()
                + b'","records":'
                + batch.json_array()
                + b"}"
            )
        headers = {self.config.idempotency_header: batch.idempotency_key}
        # concurrency and the rate limit are the deliver stage's job (capabilities_for)
        response = await self._client.request(
            self.config.method, self._url, body=body, headers=headers
        )
        if response.status >= 400:
            reason = f"destination refused the batch: {response.describe()}"
            return BatchResult.all_rejected(len(batch), reason)
        return _per_record_errors(response, len(batch))

    def _render(self, batch: Batch) -> bytes | BatchResult:
        assert self._template is not None
        context: dict[str, Any] = {
            "sync": batch.sync,
            "operation": batch.operation.value,
            "batch": batch.number,
            "idempotency_key": batch.idempotency_key,
        }
        if "records" in self._template_vars:
            context["records"] = batch.records()
        if "records_json" in self._template_vars:
            context["records_json"] = batch.json_array().decode()
        import jinja2  # imported by _compile already: a template exists

        try:
            text = self._template.render(context)
        except jinja2.exceptions.SecurityError as exc:
            reason = f"body_template was refused by the sandbox: {exc}"
            return BatchResult.all_rejected(len(batch), redact(reason))
        except jinja2.TemplateError as exc:
            reason = f"body_template failed to render: {type(exc).__name__}: {exc}"
            return BatchResult.all_rejected(len(batch), redact(reason))
        body = text.encode()
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            reason = (
                f"body_template did not render valid JSON ({exc}); rendered: {trim(text, 120)}"
                " — use the tojson filter for values, e.g. {{ records | tojson }}"
            )
            return BatchResult.all_rejected(len(batch), reason)
        return body


def _compile(source: str, name: str) -> tuple[jinja2.Template, set[str]]:
    import jinja2  # only a destination with a body_template imports Jinja
    from jinja2 import meta
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
    env.policies["json.dumps_function"] = lambda obj, **_: orjson.dumps(obj).decode()
    env.policies["json.dumps_kwargs"] = {}
    try:
        parsed = env.parse(source)
        template = env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(
            f"body_template has a syntax error on its line {exc.lineno}: {exc.message}",
            key=f"destinations.{name}.body_template",
            hint="see docs/destinations/webhook.md for the variables a template can use",
        ) from exc
    return template, set(meta.find_undeclared_variables(parsed))


def _per_record_errors(response: Response, size: int) -> BatchResult:
    """Read ``{"errors": [{"index": i, "message": "..."}]}`` from a 2xx answer."""
    if b'"errors"' not in response.body:
        return BatchResult()
    try:
        payload = response.json()
    except orjson.JSONDecodeError:
        return BatchResult()
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if not isinstance(errors, list):
        return BatchResult()
    rejected: dict[int, str] = {}
    for error in errors:
        if not isinstance(error, dict):
            continue
        index = error.get("index")
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < size:
            message = error.get("message") or "rejected by the receiver (no message)"
            rejected[index] = f"receiver rejected the record: {trim(str(message))}"
    return BatchResult(rejected=rejected)
