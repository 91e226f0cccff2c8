"""RabbitMQ destination: publish records to an exchange with publisher confirms (aio-pika).

    destinations:
      events: {type: rabbitmq, url: "amqp://user:${RABBIT_PASSWORD}@host:5672/vhost",
               exchange: users, routing_key: "users.{plan}"}

Every message is persistent (delivery mode 2), ``application/json``, with ``message_id`` the
record's stable id (``<run>-<batch>:<key>``) and headers ``undertow-sync``,
``undertow-batch``, ``undertow-operation``. Messages are published ``mandatory``: one that no
queue is bound to receive comes back from the broker and its records are **rejected**
("unroutable"), never counted as delivered. A record is accepted only once the broker's
publisher confirm (``basic.ack``) for its message arrived; a ``basic.nack`` (the broker could
not take it, e.g. a full queue with ``overflow: reject-publish``) leaves it failed for the
next run. RabbitMQ does not deduplicate: a kill -9 may send the batches in flight again
(consumers can drop them by ``message_id``).

Limits: https://www.rabbitmq.com/docs/confirms (publisher confirms),
https://www.rabbitmq.com/docs/publishers#unroutable (mandatory), routing keys up to 255
bytes (AMQP 0-9-1 shortstr, https://www.rabbitmq.com/amqp-0-9-1-reference).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import SecretStr, field_validator

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
    import aio_pika

CONFIRMS_DOC = "https://www.rabbitmq.com/docs/confirms"
MAX_ROUTING_KEY = 255


class RabbitMQConfig(QueueConfig):
    type: Literal["rabbitmq"] = "rabbitmq"
    url: SecretStr
    """``amqp://user:password@host:5672/vhost`` (``amqps://`` for TLS)."""
    exchange: str = ""
    """The exchange to publish to; ``""`` is the default exchange (routing key = queue name)."""
    routing_key: str = "{sync}.{operation}"
    """Template over ``{operation}``, ``{sync}``, ``{key}`` and the record's fields."""
    mandatory: bool = True
    """Reject records whose message no queue receives (else the broker drops them)."""

    @field_validator("url")
    @classmethod
    def _amqp(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if not text.startswith(("amqp://", "amqps://")):
            raise ValueError("`url` must start with amqp:// or amqps://")
        return value


def _aio_pika() -> Any:
    try:
        import aio_pika
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise missing_driver("aio-pika", "rabbitmq") from exc
    return aio_pika


class RabbitMQDestination(QueueDestination[RabbitMQConfig]):
    """Publish each record (or batch) to a RabbitMQ exchange, confirmed by the broker."""

    name: ClassVar[str] = "rabbitmq"
    address_key: ClassVar[str] = "routing_key"
    docs_url: ClassVar[str | None] = CONFIRMS_DOC

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        super().__init__(config, name=name)
        parts = urlsplit(self.config.url.get_secret_value())
        register_secret(parts.password)
        self._host = f"{parts.hostname or 'localhost'}:{parts.port or 5672}"
        self._vhost = parts.path.lstrip("/") or "/"
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._lock = asyncio.Lock()

    def endpoint(self) -> str:
        return f"amqp://{self._host}/{self._vhost}/{self.config.exchange or '(default)'}"

    def where(self) -> str:
        return f"rabbitmq destination {self.instance_name!r} ({self._host}, vhost {self._vhost})"

    async def _connect(self) -> aio_pika.abc.AbstractExchange:
        if self._exchange is not None and self._channel is not None and not self._channel.is_closed:
            return self._exchange
        pika = _aio_pika()
        await self._drop()
        try:
            self._connection = await pika.connect(
                self.config.url.get_secret_value(), timeout=self.config.timeout
            )
        except pika.exceptions.ProbableAuthenticationError as exc:
            raise FatalDeliveryError(
                f"{self.where()}: the broker refused the login ({redact(str(exc))})",
                hint="check the user and password in `url`, and that the user may use the vhost",
            ) from None
        except (OSError, TimeoutError, pika.exceptions.AMQPError) as exc:
            text = redact(str(exc) or type(exc).__name__)
            if "ACCESS_REFUSED" in text or "NOT_ALLOWED" in text or "access to vhost" in text:
                raise FatalDeliveryError(
                    f"{self.where()}: the broker refused the connection ({text})",
                    hint="check the credentials in `url` and the user's permissions on the vhost",
                ) from None
            raise RetryableError(
                f"{self.where()}: cannot connect ({text})",
                hint="check the host and port in `url` and that RabbitMQ is running",
            ) from None
        self._channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        if self.config.exchange:
            try:
                self._exchange = await self._channel.get_exchange(self.config.exchange)
            except pika.exceptions.ChannelNotFoundEntity:
                await self._drop()
                raise FatalDeliveryError(
                    f"{self.where()}: exchange {self.config.exchange!r} does not exist",
                    hint="declare it (rabbitmqadmin declare exchange name=... type=topic) or "
                    'use the default exchange (`exchange: ""`, routing key = queue name)',
                ) from None
            except pika.exceptions.ChannelAccessRefused as exc:
                await self._drop()
                raise FatalDeliveryError(
                    f"{self.where()}: no access to exchange {self.config.exchange!r} "
                    f"({redact(str(exc))})",
                    hint="grant the user configure/write permission on the exchange",
                ) from None
        else:
            self._exchange = self._channel.default_exchange
        return self._exchange

    async def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to release
                await self._connection.close()
        self._connection = self._channel = self._exchange = None

    async def open(self) -> None:
        async with self._lock:
            await self._connect()

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    async def check(self) -> None:
        async with self._lock:
            await self._connect()

    async def publish(self, batch: Batch, messages: list[Message]) -> list[Outcome]:
        pika = _aio_pika()
        async with self._lock:
            exchange = await self._connect()
        persistent = pika.DeliveryMode.PERSISTENT

        async def one(message: Message) -> Outcome:
            if len(message.address.encode()) > MAX_ROUTING_KEY:
                return Refused(
                    f"routing key {message.address[:60]!r}... is over {MAX_ROUTING_KEY} bytes"
                )
            amqp = pika.Message(
                message.body,
                message_id=message.id,
                content_type="application/json",
                delivery_mode=persistent,
                headers=dict(message.headers),
            )
            try:
                await exchange.publish(
                    amqp,
                    routing_key=message.address,
                    mandatory=self.config.mandatory,
                    timeout=self.config.timeout,
                )
            except pika.exceptions.PublishError as exc:
                frame = getattr(exc, "frame", None)
                text = getattr(frame, "reply_text", None) or str(exc)
                return Refused(
                    f"RabbitMQ returned the message unroutable ({text}): no queue is bound to "
                    f"exchange {self.config.exchange or '(default)'!r} for routing key "
                    f"{message.address!r}"
                )
            except pika.exceptions.DeliveryError as exc:
                return Unconfirmed(f"RabbitMQ refused to confirm the message (nack): {exc}")
            except TimeoutError:
                return Unconfirmed(
                    f"no publisher confirm within {self.config.timeout:g}s; the record is sent "
                    "again by the next run"
                )
            return None

        try:
            return list(await asyncio.gather(*(one(m) for m in messages)))
        except (OSError, pika.exceptions.AMQPError, ConnectionError) as exc:
            async with self._lock:
                await self._drop()
            raise RetryableError(
                f"{self.where()}: the connection failed during batch {batch.number}: "
                f"{redact(str(exc) or type(exc).__name__)}",
                hint="the batch is sent again; consumers may see its messages twice",
            ) from None
