"""kill -9 of `undertow run` into each real broker: a 50,000-row sync is killed mid-delivery,
then run again. Every row must arrive; a row may arrive twice only in a batch that was in
flight at the kill (seen by the broker, no checkpoint in the state store), and never on
JetStream (Nats-Msg-Id) or Redis Streams (entry ids derived from the run), which drop resends.

NATS and Redis send a message per record (50,000 messages: their per-record ids are what
deduplicates); RabbitMQ and MQTT a message per batch (``message: batch``), which keeps the
test within make test's time on a loaded 2-core machine while proving the same rule (a batch
is confirmed, then checkpointed). RabbitMQ's batches are of 200 records: 50 batch messages
of 1,000 were all confirmed on a quiet machine before one poll of the queue (a new AMQP
connection each time) could see the first, and the kill came after the run. ``bench/destinations.py`` measures the
per-record rates.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from broker_support import Arrived, MqttSubscriber, NatsStream, RabbitQueue, RedisStream
from harness import ROWS, Model, StateFile, converge, kill_during, settle, summary, write_project

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

BATCH = 1000
RABBIT_BATCH = 200


def _rabbit(
    request: pytest.FixtureRequest,
) -> tuple[str, Callable[[], Arrived], Callable[[], int], int]:
    import aio_pika

    queue: RabbitQueue = request.getfixturevalue("rabbit_queue")
    block = (
        f'{{type: rabbitmq, url: "{queue.url}", routing_key: "{queue.name}", '
        f"batch_size: {RABBIT_BATCH}, message: batch}}"
    )

    def count() -> int:
        """Records held (a message carries a batch), plus the messages already read off."""
        import asyncio

        async def main() -> int:
            conn = await aio_pika.connect(queue.url)
            async with conn:
                channel = await conn.channel()
                declared = await channel.declare_queue(queue.name, passive=True)
                return int(declared.declaration_result.message_count or 0)

        return (asyncio.run(main()) + len(queue.got)) * RABBIT_BATCH

    return block, queue.read, count, 4


def _nats(
    request: pytest.FixtureRequest,
) -> tuple[str, Callable[[], Arrived], Callable[[], int], int]:
    stream: NatsStream = request.getfixturevalue("nats_stream")
    block = f'{{type: nats, subject: "{stream.subject}.{{operation}}", stream: {stream.name}, batch_size: {BATCH}}}'

    def count() -> int:
        import asyncio

        import nats

        async def main() -> int:
            nc = await nats.connect("nats://127.0.0.1:4222")
            try:
                return int((await nc.jetstream().stream_info(stream.name)).state.messages)
            finally:
                await nc.close()

        return asyncio.run(main())

    return block, stream.read, count, 4


def _redis(
    request: pytest.FixtureRequest,
) -> tuple[str, Callable[[], Arrived], Callable[[], int], int]:
    import redis

    stream: RedisStream = request.getfixturevalue("redis_stream")
    block = f'{{type: redis_streams, stream: "{stream.key}", batch_size: {BATCH}}}'
    client = redis.Redis.from_url(stream.url)
    request.addfinalizer(client.close)
    return block, stream.read, lambda: int(client.xlen(stream.key)), 1


def _mqtt(
    request: pytest.FixtureRequest,
) -> tuple[str, Callable[[], Arrived], Callable[[], int], int]:
    sub: MqttSubscriber = request.getfixturevalue("mqtt_topic")
    block = (
        f'{{type: mqtt, topic: "{sub.topic}/{{operation}}", batch_size: {BATCH}, message: batch}}'
    )
    return block, sub.read, lambda: len(sub.arrived) * BATCH, 4


BROKERS = {"rabbitmq": _rabbit, "nats": _nats, "redis_streams": _redis, "mqtt": _mqtt}
DEDUPLICATES = {"nats", "redis_streams"}


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_kill_9_mid_run_then_a_run_delivers_every_row(
    broker: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(f"queues-{broker}")
    block, read, count, concurrency = BROKERS[broker](request)
    model = Model(tmp_path, ROWS, rng)
    state = StateFile(tmp_path)
    write_project(tmp_path, block)

    polled = [0.0, 0]

    def batches_seen() -> int:
        """Batches the broker holds (polled at most every 50 ms: it asks the broker)."""
        if time.monotonic() - polled[0] > 0.05:
            polled[:] = [time.monotonic(), count() // BATCH]
        return int(polled[1])

    landed, at = kill_during(tmp_path, "mid-batch", rng, seen=batches_seen, state=state)
    assert landed == "delivery", f"the kill landed at {landed} ({at:.2f}s)"
    settle(count)
    before = read()
    before_count = count()
    checkpointed = state.checkpointed()
    in_flight = set(before.batches) - checkpointed
    assert len(in_flight) <= concurrency, (in_flight, concurrency)
    assert 0 < before_count < ROWS, (
        f"{before_count} records before the kill at {at:.2f}s ({len(before)} messages read): "
        "it missed the run"
    )

    results, _ = converge(tmp_path, batches_seen)
    assert results[0].json["status"] == "succeeded", results[0].err[-2000:]
    settle(count)
    got = read()

    carried = [
        (record["id"], batch)
        for body, batch in zip(got.bodies, got.batches, strict=True)
        for record in (body["records"] if "records" in body else [body["record"]])
    ]
    ids = Counter(row for row, _ in carried)
    assert set(ids) == set(model.rows), (
        f"{len(set(model.rows) - set(ids))} rows never arrived (e.g. "
        f"{sorted(set(model.rows) - set(ids))[:5]})"
    )
    twice = {i: n for i, n in ids.items() if n > 1}
    carriers: dict[int, set[str]] = {}
    for row, batch in carried:
        if row in twice:
            carriers.setdefault(row, set()).add(batch)
    for row, batches in carriers.items():
        assert batches <= in_flight, (
            f"row {row} arrived twice, from batches {batches}, not in flight"
        )
    if broker in DEDUPLICATES:
        assert not twice, f"{len(twice)} rows arrived twice on {broker}, which deduplicates"
    figures: dict[str, Any] = {
        "kill_at_s": round(at, 2),
        "records_before_kill": before_count,
        "in_flight_batches": len(in_flight),
        "rows_twice": len(twice),
        "messages": len(got),
    }
    summary(f"kill-resume[{broker}]", figures)
