"""The message brokers of this machine for the queue destination tests (a plugin of
``tests/conftest.py``): RabbitMQ :5672, NATS JetStream :4222, Redis :6379, Mosquitto :1883.

Each fixture gives a uniquely named place to publish to (a queue, a stream, a stream key, a
topic), a way to read back everything that arrived, and removes what it created. A broker
that is down fails the test with the command that starts it; nothing is ever skipped.
Private servers (for credentials and ACL refusals) run on free ports and are stopped after.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from undertow.testing.server import free_port

RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/"
RABBIT_START = "rabbitmq-server -detached"
NATS_URL = "nats://127.0.0.1:4222"
NATS_START = (
    "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- "
    "-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
)
REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_START = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
    "--dir /var/lib/redis --logfile /var/log/redis/ci.log"
)
MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883
MQTT_START = "mosquitto -d -c /etc/mosquitto/mosquitto.conf"


def require(host: str, port: int, what: str, start: str) -> None:
    """Fail (never skip) when nothing listens on host:port, saying how to start it."""
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        pytest.fail(
            f"{what} is not reachable at {host}:{port} ({exc}).\nStart it with: {start}",
            pytrace=False,
        )


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@dataclass
class Arrived:
    """Every message a broker delivered to the test, decoded."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    """The message ids Undertow gave (``<run>-<batch>:<key>``)."""
    batches: list[str] = field(default_factory=list)
    """The ``undertow-batch`` header of each message."""
    addresses: list[str] = field(default_factory=list)

    def add(self, body: bytes, message_id: str, batch: str, address: str = "") -> None:
        self.bodies.append(orjson.loads(body))
        self.ids.append(message_id)
        self.batches.append(batch)
        self.addresses.append(address)

    def __len__(self) -> int:
        return len(self.bodies)


# -- RabbitMQ ----------------------------------------------------------------------------------


@dataclass
class RabbitQueue:
    name: str
    url: str = RABBIT_URL
    got: Arrived = field(default_factory=Arrived)

    def read(self) -> Arrived:
        """Everything that arrived so far (reading takes the messages off the queue, so
        they are kept here)."""
        import aio_pika

        async def main() -> Arrived:
            got = self.got
            conn = await aio_pika.connect(self.url)
            async with conn:
                channel = await conn.channel()
                await channel.set_qos(prefetch_count=2000)
                queue = await channel.declare_queue(self.name, passive=True)
                waiting = queue.declaration_result.message_count or 0
                if not waiting:
                    return got
                async with queue.iterator(no_ack=True) as messages:
                    async for message in messages:
                        headers = message.headers or {}
                        batch = headers.get("undertow-batch", b"")
                        got.add(
                            message.body,
                            str(message.message_id),
                            batch.decode() if isinstance(batch, bytes) else str(batch),
                            message.routing_key or "",
                        )
                        waiting -= 1
                        if waiting == 0:
                            break
                return got

        return asyncio.run(main())


@pytest.fixture
def rabbit_queue() -> Iterator[RabbitQueue]:
    """A durable queue of a unique name on the default exchange (routing key = its name)."""
    import aio_pika

    require("127.0.0.1", 5672, "RabbitMQ", RABBIT_START)
    name = unique("ut-q-")

    async def declare() -> None:
        conn = await aio_pika.connect(RABBIT_URL)
        async with conn:
            channel = await conn.channel()
            await channel.declare_queue(name, durable=True)

    async def delete() -> None:
        conn = await aio_pika.connect(RABBIT_URL)
        async with conn:
            channel = await conn.channel()
            await channel.queue_delete(name)

    asyncio.run(declare())
    try:
        yield RabbitQueue(name)
    finally:
        asyncio.run(delete())


# -- NATS JetStream ----------------------------------------------------------------------------


@dataclass
class NatsStream:
    name: str
    subject: str
    """The stream captures ``<subject>.>``."""

    def read(self) -> Arrived:
        import nats

        async def main() -> Arrived:
            got = Arrived()
            nc = await nats.connect(NATS_URL)
            try:
                js = nc.jetstream()
                info = await js.stream_info(self.name)
                for seq in range(info.state.first_seq, info.state.last_seq + 1):
                    if not info.state.messages:
                        break
                    msg = await js.get_msg(self.name, seq)
                    headers = msg.headers or {}
                    got.add(
                        msg.data or b"",
                        headers.get("Nats-Msg-Id", ""),
                        headers.get("undertow-batch", ""),
                        msg.subject or "",
                    )
            finally:
                await nc.close()
            return got

        return asyncio.run(main())


@pytest.fixture
def nats_stream() -> Iterator[NatsStream]:
    import nats

    require("127.0.0.1", 4222, "NATS (with JetStream)", NATS_START)
    stream = NatsStream(unique("UT_"), unique("ut."))

    async def setup(create: bool) -> None:
        nc = await nats.connect(NATS_URL)
        try:
            js = nc.jetstream()
            if create:
                await js.add_stream(name=stream.name, subjects=[f"{stream.subject}.>"])
            else:
                with contextlib.suppress(Exception):
                    await js.delete_stream(stream.name)
        finally:
            await nc.close()

    asyncio.run(setup(True))
    try:
        yield stream
    finally:
        asyncio.run(setup(False))


# -- Redis Streams -----------------------------------------------------------------------------


@dataclass
class RedisStream:
    key: str
    url: str = REDIS_URL

    def entries(self) -> list[tuple[str, dict[str, str]]]:
        import redis

        client = redis.Redis.from_url(self.url, decode_responses=True)
        try:
            return [(i, dict(f)) for i, f in client.xrange(self.key)]
        finally:
            client.close()

    def read(self) -> Arrived:
        got = Arrived()
        for _, fields in self.entries():
            got.add(fields["data"].encode(), fields["id"], fields["id"].split(":")[0], self.key)
        return got


@pytest.fixture
def redis_stream() -> Iterator[RedisStream]:
    import redis

    require("127.0.0.1", 6379, "Redis", REDIS_START)
    stream = RedisStream(unique("ut:stream:"))
    try:
        yield stream
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(stream.key, f"{stream.key}:undertow:runs")
        client.close()


# -- MQTT --------------------------------------------------------------------------------------


class MqttSubscriber:
    """A QoS 1 subscriber to ``<topic>/#`` running in a thread, collecting every message."""

    def __init__(self, host: str, port: int, topic: str, **auth: Any) -> None:
        import paho.mqtt.client as mqtt

        self.topic = topic
        self.arrived = Arrived()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=unique("ut-sub-")
        )
        if auth:
            self.client.username_pw_set(auth["username"], auth["password"])
        self.client.max_queued_messages_set(0)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.connect(host, port)
        self.client.loop_start()
        self.client.subscribe(f"{topic}/#", qos=1)
        if not self._ready.wait(10):
            raise AssertionError(f"no SUBACK from the MQTT broker at {host}:{port}")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        props = dict(getattr(message.properties, "UserProperty", []) or [])
        with self._lock:
            batch = props.get("undertow-batch", "")
            key = orjson.loads(message.payload).get("key", "")
            self.arrived.add(message.payload, f"{batch}:{key}", batch, message.topic)

    def read(self, settle: float = 0.3) -> Arrived:
        last, since = -1, time.monotonic()
        while time.monotonic() - since < settle:
            with self._lock:
                now = len(self.arrived)
            if now != last:
                last, since = now, time.monotonic()
            time.sleep(0.02)
        return self.arrived

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_topic() -> Iterator[MqttSubscriber]:
    require(MQTT_HOST, MQTT_PORT, "Mosquitto", MQTT_START)
    subscriber = MqttSubscriber(MQTT_HOST, MQTT_PORT, unique("ut/"))
    try:
        yield subscriber
    finally:
        subscriber.stop()


# -- private servers (credentials, ACLs) -------------------------------------------------------


@contextlib.contextmanager
def private_server(
    argv: list[str], port: int, what: str, ready: Callable[[], bool] | None = None
) -> Iterator[int]:
    """Run a server binary of this machine on a free port for one test, then stop it."""
    binary = shutil.which(argv[0]) or argv[0]
    proc = subprocess.Popen([binary, *argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                if ready is None or ready():
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"{what} did not start on :{port}: {err[-800:]}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Mosquitto with a password file and an ACL: user ``writer`` may publish only below
    ``allowed/``; anonymous clients are refused."""
    port = free_port()
    passwords = tmp_path / "passwd"
    passwords.write_text("")
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwords), "writer", "s3cret-mqtt-pw"], check=True
    )
    acl = tmp_path / "acl"
    acl.write_text("user writer\ntopic readwrite allowed/#\n")
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"user root\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
        f"acl_file {acl}\npersistence false\n"
    )
    with private_server(["mosquitto", "-c", str(conf)], port, "mosquitto"):
        yield {
            "host": "127.0.0.1",
            "port": port,
            "username": "writer",
            "password": "s3cret-mqtt-pw",
        }
