"""The broker destinations against the real servers of this machine: RabbitMQ, NATS JetStream,
Redis Streams and Mosquitto (tests/broker_support.py). Every record must arrive once, carry
its stable id, and count as accepted only after the broker confirmed it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from broker_support import (
    MqttSubscriber,
    NatsStream,
    RabbitQueue,
    RedisStream,
    private_server,
    unique,
)

from undertow.destinations import capture
from undertow.destinations.base import Batch, BatchResult, Destination, Operation
from undertow.destinations.mqtt import MqttDestination
from undertow.destinations.nats import NatsDestination
from undertow.destinations.rabbitmq import RabbitMQDestination
from undertow.destinations.redis_streams import RedisStreamsDestination
from undertow.errors import ConfigError, UndertowError
from undertow.pipeline.deliver import DeliveryReport, Outcome, RetryPolicy, deliver
from undertow.testing.server import free_port

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)


def make(cls: type[Destination], **config: Any) -> Destination:
    return cls(cls.Config.model_validate({"type": cls.name, **config}), name="q_out")


def records(n: int, version: int = 0, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": i, "email": f"u{i}@x.com", "plan": f"p{i % 3}", "version": version}
        for i in range(start, start + n)
    ]


def batch_of(rows: list[dict[str, Any]], op: Operation, number: int, run: str = "r1") -> Batch:
    return Batch(
        sync="users_out",
        operation=op,
        number=number,
        idempotency_key=f"{run}-{number}",
        keys=[str(r["id"]) for r in rows],
        payloads=[orjson.dumps(r).decode() for r in rows],
        identifiers={"id": [r["id"] for r in rows]} if op is not Operation.INSERT else {},
        run_id=run,
    )


def send(
    destination: Destination,
    rows: list[dict[str, Any]],
    op: Operation = Operation.UPSERT,
    *,
    run: str = "r1",
    first: int = 0,
) -> tuple[DeliveryReport, BatchResult]:
    size = destination.capabilities_for(None).max_batch_size
    merged = BatchResult()

    async def batches() -> AsyncIterator[Batch]:
        for number, start in enumerate(range(0, len(rows), size)):
            yield batch_of(rows[start : start + size], op, first + number, run)

    def on_outcome(outcome: Outcome) -> None:
        offset = (outcome.batch.number - first) * size
        merged.merge(outcome.result, [offset + i for i in range(len(outcome.batch))])

    async def main() -> DeliveryReport:
        await destination.open()
        try:
            return await deliver(
                destination,
                batches(),
                concurrency=destination.capabilities_for(None).max_concurrency,
                rate_limit=None,
                on_outcome=on_outcome,
                stop=asyncio.Event(),
                policy=FAST,
                max_wait=5.0,
            )
        finally:
            await destination.close()

    return asyncio.run(main()), merged


def ok(destination: Destination, rows: list[dict[str, Any]], **kw: Any) -> BatchResult:
    report, result = send(destination, rows, **kw)
    assert report.stopped is None, report.stopped
    return result


def check_fails(destination: Destination) -> UndertowError:
    async def main() -> None:
        try:
            await destination.check()
        finally:
            await destination.close()

    with pytest.raises(UndertowError) as caught:
        asyncio.run(main())
    return caught.value


# -- RabbitMQ ----------------------------------------------------------------------------------


def test_rabbitmq_publishes_every_record_confirmed_with_its_id(rabbit_queue: RabbitQueue) -> None:
    dest = make(
        RabbitMQDestination, url=rabbit_queue.url, routing_key=rabbit_queue.name, batch_size=40
    )
    rows = records(100)
    assert ok(dest, rows) == BatchResult()
    assert ok(dest, rows[:3], op=Operation.DELETE, first=10) == BatchResult()
    got = rabbit_queue.read()
    assert len(got) == 103
    assert [b["record"]["id"] for b in got.bodies[:100]] == list(range(100))
    assert got.bodies[0] == {
        "sync": "users_out",
        "operation": "upsert",
        "key": "0",
        "record": rows[0],
    }
    assert got.ids[0] == "r1-0:0" and got.batches[0] == "r1-0"
    assert [b["operation"] for b in got.bodies[100:]] == ["delete"] * 3


def test_rabbitmq_unroutable_records_are_rejected_not_lost(rabbit_queue: RabbitQueue) -> None:
    """The routing key comes from a column: rows of plan p1 go to a queue nobody declared."""
    dest = make(RabbitMQDestination, url=rabbit_queue.url, routing_key=rabbit_queue.name + "{plan}")
    rows = [dict(r, plan="" if r["id"] % 3 == 0 else "-missing") for r in records(6)]
    result = ok(dest, rows)
    assert sorted(result.rejected) == [1, 2, 4, 5]
    assert "unroutable" in result.rejected[1] and "-missing" in result.rejected[1]
    assert [b["record"]["id"] for b in rabbit_queue.read().bodies] == [0, 3]


def test_rabbitmq_batch_messages_and_a_null_routing_field(rabbit_queue: RabbitQueue) -> None:
    dest = make(
        RabbitMQDestination,
        url=rabbit_queue.url,
        routing_key=rabbit_queue.name + "{tag}",
        message="batch",
        batch_size=10,
    )
    rows = [dict(r, tag="") for r in records(25)]
    rows[4]["tag"] = None
    result = ok(dest, rows)
    assert (
        list(result.rejected) == [4]
        and "'tag'" in result.rejected[4]
        and "null" in result.rejected[4]
    )
    got = rabbit_queue.read()
    assert len(got) == 3  # 10 - 1, 10, 5
    assert [len(b["records"]) for b in got.bodies] == [9, 10, 5]
    assert got.bodies[0]["keys"] == [str(i) for i in range(10) if i != 4]
    assert got.ids == ["r1-0", "r1-1", "r1-2"]


def test_rabbitmq_bad_password_and_missing_exchange_are_clear() -> None:
    from broker_support import RABBIT_START, require

    require("127.0.0.1", 5672, "RabbitMQ", RABBIT_START)
    wrong = "amqp://guest:wr0ng-rabbit-pw@127.0.0.1:5672/"
    error = check_fails(make(RabbitMQDestination, url=wrong, routing_key="x"))
    assert "q_out" in str(error) and "wr0ng-rabbit-pw" not in str(error) and error.hint
    error = check_fails(
        make(
            RabbitMQDestination, url="amqp://guest:guest@127.0.0.1:5672/", exchange=unique("nope-")
        )
    )
    assert "does not exist" in str(error) and "declare" in (error.hint or "")


# -- NATS JetStream ----------------------------------------------------------------------------


def test_nats_acks_every_record_and_drops_a_resent_batch(nats_stream: NatsStream) -> None:
    subject = nats_stream.subject + ".{operation}"
    dest = make(NatsDestination, subject=subject, stream=nats_stream.name, batch_size=50)
    rows = records(120)
    assert ok(dest, rows) == BatchResult()
    # the same batches again (a resend after a kill -9): JetStream drops them all
    assert ok(dest, rows) == BatchResult()
    got = nats_stream.read()
    assert len(got) == 120
    assert sorted(got.ids) == sorted(f"r1-{i // 50}:{i}" for i in range(120))
    assert set(got.addresses) == {nats_stream.subject + ".upsert"}
    # a new run's ids are new
    assert ok(dest, rows[:5], run="r2") == BatchResult()
    assert len(nats_stream.read()) == 125


def test_nats_subject_without_a_stream_rejects_the_record(nats_stream: NatsStream) -> None:
    dest = make(NatsDestination, subject="{plan}", message="record")
    rows = records(3)
    rows[1]["plan"] = unique("nostream")
    rows[0]["plan"] = rows[2]["plan"] = nats_stream.subject + "_x"  # no stream either
    rows[0]["plan"] = "a.b"  # a dot would add a subject token: refused before sending
    result = ok(dest, rows)
    assert "'.'" in result.rejected[0]
    assert "no JetStream stream captures subject" in result.rejected[1]
    error = check_fails(make(NatsDestination, subject=unique("nothing.here.")[:-1]))
    assert "no JetStream stream captures" in str(error) and "nats stream add" in (error.hint or "")


def test_nats_bad_credentials_on_a_private_server() -> None:
    port = free_port()
    argv = ["nats-server", "-a", "127.0.0.1", "-p", str(port), "--user", "u", "--pass", "natspw-9"]
    with private_server(argv, port, "nats-server"):
        wrong = make(
            NatsDestination,
            servers=f"nats://127.0.0.1:{port}",
            subject="x",
            user="u",
            password="bad-nats-pw",
        )
        error = check_fails(wrong)
        assert "q_out" in str(error) and "bad-nats-pw" not in str(error) and error.hint


# -- Redis Streams -----------------------------------------------------------------------------


def test_redis_xadd_ids_from_the_run_make_a_resend_a_no_op(redis_stream: RedisStream) -> None:
    dest = make(RedisStreamsDestination, stream=redis_stream.key, batch_size=30)
    rows = records(70)
    assert ok(dest, rows) == BatchResult()
    first = redis_stream.entries()
    assert len(first) == 70
    base = first[0][0].split("-")[0]
    assert [e[0] for e in first[:2]] == [f"{base}-0", f"{base}-1"]
    assert first[30][0] == f"{base}-1000000"  # batch 1, message 0
    assert (
        ok(make(RedisStreamsDestination, stream=redis_stream.key, batch_size=30), rows)
        == BatchResult()
    )
    assert len(redis_stream.entries()) == 70, "a resend of the same run added entries"
    # the next run gets ids above the last ones
    assert ok(dest, rows[:2], run="r2") == BatchResult()
    after = redis_stream.entries()
    assert len(after) == 72 and int(after[-1][0].split("-")[0]) > int(base)
    assert orjson.loads(after[0][1]["data"])["record"] == rows[0]


def test_redis_another_producer_on_the_stream_stops_the_run(redis_stream: RedisStream) -> None:
    import redis

    dest = make(RedisStreamsDestination, stream=redis_stream.key)
    assert ok(dest, records(3)) == BatchResult()  # batch 0 of run r1
    client = redis.Redis.from_url(redis_stream.url)
    client.xadd(redis_stream.key, {"data": "{}"}, id="99999999999999-0")
    client.close()
    report, _ = send(dest, records(3, start=3), first=1)  # batch 1 of the same run
    assert report.stopped is not None and "another producer" in str(report.stopped)
    assert len(redis_stream.entries()) == 4


def test_redis_wrong_password_on_a_private_server() -> None:
    port = free_port()
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--requirepass",
        "redispw-1",
    ]
    with private_server(argv, port, "redis-server"):
        url = f"redis://:bad-redis-pw@127.0.0.1:{port}/0"
        error = check_fails(make(RedisStreamsDestination, url=url, stream="s"))
        assert (
            "q_out" in str(error)
            and "bad-redis-pw" not in str(error)
            and "credentials" in str(error)
        )


# -- MQTT --------------------------------------------------------------------------------------


def test_mqtt_publishes_qos1_with_topic_from_a_column(mqtt_topic: MqttSubscriber) -> None:
    dest = make(MqttDestination, topic=mqtt_topic.topic + "/{plan}", batch_size=25)
    rows = records(60)
    assert ok(dest, rows) == BatchResult()
    got = mqtt_topic.read()
    assert len(got) == 60
    assert sorted(b["record"]["id"] for b in got.bodies) == list(range(60))
    assert set(got.addresses) == {f"{mqtt_topic.topic}/p{i}" for i in range(3)}
    assert "r1-0:0" in got.ids


def test_mqtt_broker_refusal_is_a_rejection_and_bad_login_is_clear(
    private_mosquitto: dict[str, Any],
) -> None:
    server = private_mosquitto
    subscriber = MqttSubscriber(
        server["host"], server["port"], "allowed", username="writer", password=server["password"]
    )
    try:
        dest = make(
            MqttDestination,
            **{k: server[k] for k in ("host", "port", "username", "password")},
            topic="{plan}/x",
        )
        rows = records(4)
        rows[1]["plan"] = rows[3]["plan"] = "forbidden"
        rows[0]["plan"] = rows[2]["plan"] = "allowed"
        result = ok(dest, rows)
        assert sorted(result.rejected) == [1, 3]
        assert "0x87" in result.rejected[1] and "authori" in result.rejected[1].lower()
        assert sorted(b["record"]["id"] for b in subscriber.read().bodies) == [0, 2]
    finally:
        subscriber.stop()
    bad = make(
        MqttDestination,
        host=server["host"],
        port=server["port"],
        username="writer",
        password="bad-mqtt-pw",
        topic="t",
    )
    error = check_fails(bad)
    assert "q_out" in str(error) and "bad-mqtt-pw" not in str(error) and error.hint


# -- shared ------------------------------------------------------------------------------------


def test_address_templates_are_checked_when_the_project_loads() -> None:
    with pytest.raises(ConfigError, match="empty"):
        make(NatsDestination, subject="a.{}")
    with pytest.raises(ConfigError, match="format spec"):
        make(MqttDestination, topic="a/{id:03d}")


def test_captures_show_queue_traffic_without_secrets(
    rabbit_queue: RabbitQueue, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[capture.Exchange] = []
    caplog.set_level(logging.DEBUG)
    with capture.listening(seen.append):
        ok(
            make(RabbitMQDestination, url=rabbit_queue.url, routing_key=rabbit_queue.name),
            records(3),
        )
    assert len(seen) == 1
    exchange = seen[0]
    assert exchange.method == "PUBLISH" and exchange.status == 200
    assert exchange.url.endswith("/" + rabbit_queue.name) and "guest:guest" not in exchange.url
    assert exchange.request_body is not None and '"u0@x.com"' in exchange.request_body
    assert exchange.response_body == "confirmed 3, rejected 0, failed 0"
    assert exchange.context.sync == "users_out" and exchange.context.batch == 0
