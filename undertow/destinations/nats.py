"""NATS JetStream destination: acknowledged publishes, deduplicated by ``Nats-Msg-Id`` (nats-py).

    destinations:
      events: {type: nats, servers: "nats://host:4222", subject: "users.{operation}",
               stream: USERS}

Each message carries ``Nats-Msg-Id`` = the record's stable id (``<run>-<batch>:<key>``, the
same when a batch is sent again), so JetStream drops a message it already stored: a kill -9
mid-run, a lost ack or a retried batch adds **no** duplicate as long as the resend comes
within the stream's duplicate window (``duplicate_window``, 2 minutes unless the stream says
otherwise: https://docs.nats.io/nats-concepts/jetstream/streams#configuration). A record
counts as accepted only once its ``PubAck`` arrived (a duplicate ack too). ``stream`` makes
the server check that the subject lands in that stream (``Nats-Expected-Stream``).

Errors: no stream captures the subject -> the record is rejected naming the subject; the
server's ``max_payload`` (1 MB by default, https://docs.nats.io/running-a-nats-service/
configuration#limits) rejects bigger messages before sending; no ack within ``timeout`` ->
failed, resent next run (deduplicated); a lost connection -> the batch is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr

from undertow.destinations._queue import (
    Message,
    Outcome,
    QueueConfig,
    QueueDestination,
    Refused,
    Unconfirmed,
)
from undertow.destinations.base import Batch, DestinationConfig
from undertow.errors import FatalDeliveryError, RetryableError
from undertow.redact import redact, register_secret
from undertow.sources.base import missing_driver

if TYPE_CHECKING:
    from nats.aio.client import Client

DEDUPE_DOC = "https://docs.nats.io/using-nats/developer/develop_jetstream/model_deep_dive#message-deduplication"


class NatsConfig(QueueConfig):
    type: Literal["nats"] = "nats"
    servers: str | list[str] = "nats://127.0.0.1:4222"
    subject: str = "{sync}.{operation}"
    """Template over ``{operation}``, ``{sync}``, ``{key}`` and the record's fields."""
    stream: str | None = Field(default=None, min_length=1)
    """When set, the server refuses a message that would not land in this stream."""
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    max_pending: int = Field(default=4000, ge=1)
    """Publishes awaiting their ack at once."""


def _nats() -> Any:
    try:
        import nats
        import nats.js.errors
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise missing_driver("nats-py", "nats") from exc
    return nats


class NatsDestination(QueueDestination[NatsConfig]):
    """Publish each record (or batch) to NATS JetStream, acknowledged and deduplicated."""

    name: ClassVar[str] = "nats"
    address_key: ClassVar[str] = "subject"
    forbidden: ClassVar[str] = ".*>"
    allow_empty: ClassVar[bool] = False
    deduplicates: ClassVar[bool] = True
    docs_url: ClassVar[str | None] = DEDUPE_DOC

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        super().__init__(config, name=name)
        servers = self.config.servers
        self._servers = [servers] if isinstance(servers, str) else list(servers)
        for server in self._servers:
            register_secret(urlsplit(server).password)
        for secret in (self.config.password, self.config.token):
            if secret is not None:
                register_secret(secret.get_secret_value())
        self._nc: Client | None = None
        self._js: Any = None
        self._lock = asyncio.Lock()

    def endpoint(self) -> str:
        parts = urlsplit(self._servers[0])
        return f"nats://{parts.hostname}:{parts.port or 4222}"

    def where(self) -> str:
        return f"nats destination {self.instance_name!r} ({self.endpoint()})"

    async def _connect(self) -> Client:
        if self._nc is not None and self._nc.is_connected:
            return self._nc
        _nats()
        await self._drop()
        config = self.config
        options: dict[str, Any] = {
            "servers": self._servers,
            "connect_timeout": max(1, int(config.timeout)),
            "allow_reconnect": False,
            "max_reconnect_attempts": 0,
        }
        if config.user is not None:
            options["user"] = config.user
        if config.password is not None:
            options["password"] = config.password.get_secret_value()
        if config.token is not None:
            options["token"] = config.token.get_secret_value()

        async def quiet(exc: Exception) -> None:  # nats-py logs every error otherwise
            return None

        from nats.aio.client import Client

        client = Client()
        try:
            await client.connect(**options, error_cb=quiet)
            self._nc = client
            self._js = client.jetstream(publish_async_max_pending=config.max_pending)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await client.close()  # a refused login leaves the socket open otherwise
            text = redact(str(exc) or type(exc).__name__)
            if "authorization" in text.lower() or "auth" in type(exc).__name__.lower():
                raise FatalDeliveryError(
                    f"{self.where()}: the server refused the credentials ({text})",
                    hint="check `user`/`password` or `token` (or the credentials in `servers`)",
                ) from None
            raise RetryableError(
                f"{self.where()}: cannot connect ({text})",
                hint="check `servers` and that nats-server runs with JetStream (-js)",
            ) from None
        return self._nc

    async def _drop(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):  # already broken
                await self._nc.close()
        self._nc = self._js = None

    async def open(self) -> None:
        async with self._lock:
            await self._connect()

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    async def check(self) -> None:
        """Connect, and when the subject is static, find the stream that captures it."""
        nats = _nats()
        async with self._lock:
            await self._connect()
        js = self._js
        try:
            await js.account_info()
        except nats.js.errors.Error as exc:
            raise FatalDeliveryError(
                f"{self.where()}: JetStream is not available ({redact(str(exc))})",
                hint="start nats-server with -js, or enable JetStream for this account",
            ) from None
        if self.address.static:
            subject = self.address.template
            try:
                found = await js.find_stream_name_by_subject(subject)
            except nats.js.errors.NotFoundError:
                raise FatalDeliveryError(
                    f"{self.where()}: no JetStream stream captures subject {subject!r}",
                    hint=f"add it to a stream: nats stream add NAME --subjects {subject!r}",
                ) from None
            if self.config.stream and found != self.config.stream:
                raise FatalDeliveryError(
                    f"{self.where()}: subject {subject!r} lands in stream {found!r}, not in "
                    f"{self.config.stream!r}",
                    hint="fix `stream` or the stream's subjects",
                )

    def max_message_bytes(self) -> int | None:
        return self._nc.max_payload if self._nc is not None and self._nc.is_connected else None

    async def publish(self, batch: Batch, messages: list[Message]) -> list[Outcome]:
        nats = _nats()
        async with self._lock:
            await self._connect()
        js = self._js
        timeout = self.config.timeout
        try:
            futures = []
            for message in messages:
                headers = {**message.headers, "Nats-Msg-Id": message.id}
                futures.append(
                    await js.publish_async(
                        message.address,
                        message.body,
                        wait_stall=timeout,
                        stream=self.config.stream,
                        headers=headers,
                    )
                )
            done, _ = await asyncio.wait(futures, timeout=timeout)
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.StaleConnectionError,
            OSError,
        ) as exc:
            async with self._lock:
                await self._drop()
            raise RetryableError(
                f"{self.where()}: the connection failed during batch {batch.number}: "
                f"{redact(str(exc) or type(exc).__name__)}",
                hint="the batch is sent again; JetStream drops the messages it already has",
            ) from None
        except nats.js.errors.TooManyStalledMsgsError:
            raise RetryableError(
                f"{self.where()}: no acks for {self.config.max_pending} pending publishes "
                f"within {timeout:g}s",
                hint="the batch is sent again (deduplicated by Nats-Msg-Id)",
            ) from None
        outcomes: list[Outcome] = []
        for message, future in zip(messages, futures, strict=True):
            if future not in done:
                future.cancel()
                outcomes.append(Unconfirmed(f"no JetStream ack within {timeout:g}s"))
                continue
            error = future.exception()
            if error is None:
                outcomes.append(None)
            elif isinstance(
                error, nats.js.errors.NoStreamResponseError | nats.errors.NoRespondersError
            ):
                outcomes.append(
                    Refused(f"no JetStream stream captures subject {message.address!r}")
                )
            elif isinstance(error, nats.js.errors.APIError):
                outcomes.append(
                    Refused(
                        f"JetStream refused the message: {redact(error.description or str(error))}"
                    )
                )
            else:
                outcomes.append(Unconfirmed(f"no JetStream ack: {redact(str(error))}"))
        return outcomes
