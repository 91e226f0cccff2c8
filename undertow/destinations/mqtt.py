"""MQTT destination: publish records at QoS 1, each confirmed by the broker's PUBACK (aiomqtt).

    destinations:
      devices: {type: mqtt, host: broker.example, port: 1883, topic: "users/{plan}",
                username: undertow, password: "${MQTT_PASSWORD}"}

QoS 1 is "at least once": the broker answers each PUBLISH with a PUBACK, and a record is
accepted only once that PUBACK arrived
(https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901236). MQTT 5 is
used, so a broker that refuses a message says why in the PUBACK's reason code (e.g. 0x87 not
authorized, 0x97 quota exceeded), and the record is rejected with it. The message's stable
id is ``<run>-<batch>:<key>``: the user property ``undertow-batch`` and the body's ``key``;
MQTT brokers do not deduplicate, so a kill -9 may send the batches in flight again. Topic values from
fields may not hold ``+``, ``#`` or ``/`` (they would change the topic's levels).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, ClassVar, Literal

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

_CLIENT_LOG = logging.getLogger("undertow.destinations.mqtt.client")
# aiomqtt warns once per publish when more than 10 await their PUBACK, which is the point here
_CLIENT_LOG.setLevel(logging.ERROR)

QOS_DOC = "https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901236"


class MqttConfig(QueueConfig):
    type: Literal["mqtt"] = "mqtt"
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    topic: str = "{sync}/{operation}"
    """Template over ``{operation}``, ``{sync}``, ``{key}`` and the record's fields."""
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = None
    tls: bool = False
    retain: bool = False
    max_inflight: int = Field(default=20, ge=1, le=1000)
    """PUBLISHes awaiting their PUBACK at once."""


def _aiomqtt() -> Any:
    try:
        import aiomqtt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise missing_driver("aiomqtt", "mqtt") from exc
    return aiomqtt


def _reason(code: int) -> str:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    try:
        name = ReasonCode(PacketTypes.PUBACK, identifier=code).getName()
    except Exception:  # a code paho does not know
        name = "unknown reason"
    return f"PUBACK reason code 0x{code:02X} ({name})"


def _confirming_client(mqtt: Any, **options: Any) -> Any:
    """An aiomqtt client whose publish returns the PUBACK's reason code.

    aiomqtt 2.x resolves a QoS 1 publish on the PUBACK but drops its MQTT 5 reason code, so a
    broker's refusal (0x87 not authorized) would look like a success. This keeps the code of
    each packet id and replays aiomqtt's own publish steps (pinned ``aiomqtt>=2.3,<3``).
    """

    class Client(mqtt.Client):  # type: ignore[misc, name-defined]
        reasons: dict[int, int]

        def _on_publish(
            self, client: Any, userdata: Any, mid: int, reason: Any, props: Any
        ) -> None:
            self.reasons[mid] = int(getattr(reason, "value", reason) or 0)
            super()._on_publish(client, userdata, mid, reason, props)

        async def publish_confirmed(
            self, topic: str, payload: bytes, *, retain: bool, properties: Any, timeout: float
        ) -> int:
            info = self._client.publish(topic, payload, 1, retain, properties)
            if info.rc != 0:
                raise mqtt.MqttCodeError(info.rc, "Could not publish message")
            if not info.is_published():
                event = asyncio.Event()
                with self._pending_call(info.mid, event, self._pending_publishes):
                    await self._wait_for(event.wait(), timeout=timeout)
            return self.reasons.pop(info.mid, 0)

    client = Client(**options)
    client.reasons = {}
    return client


class MqttDestination(QueueDestination[MqttConfig]):
    """Publish each record (or batch) to an MQTT broker at QoS 1."""

    name: ClassVar[str] = "mqtt"
    address_key: ClassVar[str] = "topic"
    forbidden: ClassVar[str] = "+#/"
    docs_url: ClassVar[str | None] = QOS_DOC

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        super().__init__(config, name=name)
        if self.config.password is not None:
            register_secret(self.config.password.get_secret_value())
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    def endpoint(self) -> str:
        return f"mqtt://{self.config.host}:{self.config.port}"

    def where(self) -> str:
        return f"mqtt destination {self.instance_name!r} ({self.config.host}:{self.config.port})"

    async def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        mqtt = _aiomqtt()
        from paho.mqtt.client import MQTTv5

        config = self.config
        client = _confirming_client(
            mqtt,
            hostname=config.host,
            port=config.port,
            username=config.username,
            password=config.password.get_secret_value() if config.password else None,
            identifier=config.client_id,
            protocol=MQTTv5,
            timeout=config.timeout,
            max_inflight_messages=config.max_inflight,
            tls_params=mqtt.TLSParameters() if config.tls else None,
            logger=_CLIENT_LOG,
        )
        stack = contextlib.AsyncExitStack()
        try:
            await stack.enter_async_context(client)
        except mqtt.MqttError as exc:
            text = redact(str(exc))
            if any(word in text.lower() for word in ("not authorized", "bad user", "password")):
                raise FatalDeliveryError(
                    f"{self.where()}: the broker refused the login ({text})",
                    hint="check `username` and `password`, and the broker's ACL",
                ) from None
            raise RetryableError(
                f"{self.where()}: cannot connect ({text})",
                hint="check `host` and `port` and that the broker is running",
            ) from None
        self._client, self._stack = client, stack
        return client

    async def _drop(self) -> None:
        if self._stack is not None:
            with contextlib.suppress(Exception):
                await self._stack.aclose()
        self._client = self._stack = None

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
        mqtt = _aiomqtt()
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        async with self._lock:
            client = await self._connect()
        timeout = self.config.timeout

        # one set of properties per batch: paho's Properties are costly to build, and the
        # message id is the batch's key plus the record's key (both in every message)
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ContentType = "application/json"
        properties.UserProperty = [("undertow-batch", batch.idempotency_key)]
        # aiomqtt scans its pending calls on every publish: keep them to the in-flight window
        window = asyncio.Semaphore(self.config.max_inflight)

        async def one(message: Message) -> Outcome:
            async with window:
                code = await client.publish_confirmed(
                    message.address,
                    message.body,
                    retain=self.config.retain,
                    properties=properties,
                    timeout=timeout,
                )
            if code >= 0x80:  # MQTT 5: 0x80 and above are failures
                return Refused(f"the broker refused the message: {_reason(code)}")
            return None

        try:
            return list(await asyncio.gather(*(one(m) for m in messages)))
        except mqtt.MqttError as exc:
            async with self._lock:
                await self._drop()
            text = redact(str(exc))
            if "timed out" in text.lower():
                return [Unconfirmed(f"no PUBACK within {timeout:g}s") for _ in messages]
            raise RetryableError(
                f"{self.where()}: the connection failed during batch {batch.number}: {text}",
                hint="the batch is sent again; subscribers may see its messages twice",
            ) from None
