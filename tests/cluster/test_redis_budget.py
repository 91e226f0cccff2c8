"""The Redis rate budget against the real Redis: the same rules as the in-process budget
(an exact rolling window, places held until the answer, an in-flight cap, vendor pauses),
shared by every client; a permit of a process that died is reaped after its lease; an
unreachable Redis is a retryable delivery error, never a request sent unpaced."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis as redis_py
from cluster_support import REDIS_URL, Broker, make_broker

from undertow.destinations.base import RateLimit
from undertow.destinations.rate import WaitTooLong
from undertow.errors import RetryableError
from undertow.workers.budget import RedisBudget

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]


@pytest.fixture
def prefix() -> Iterator[str]:
    gen = make_broker("redis")
    broker: Broker = next(gen)
    yield broker.prefix
    for _ in gen:
        pass


def budget(prefix: str, limits: list[RateLimit], **kw: object) -> RedisBudget:
    return RedisBudget(redis_py.Redis.from_url(REDIS_URL), "acct", limits, prefix=prefix, **kw)  # type: ignore[arg-type]


def test_two_clients_share_one_exact_window(prefix: str) -> None:
    one, two = budget(prefix, [RateLimit(5, 0.5)]), budget(prefix, [RateLimit(5, 0.5)])

    async def go() -> list[float]:
        starts: list[float] = []

        async def request(b: RedisBudget) -> None:
            permit = await b.acquire()
            starts.append(time.monotonic())
            await asyncio.sleep(0.01)
            await b.release(permit)

        await asyncio.gather(*(request(one if i % 2 else two) for i in range(15)))
        return sorted(starts)

    starts = asyncio.run(go())
    # never more than 5 starts in any 0.5 s (places are held until 0.5 s after the answer)
    for i in range(len(starts) - 5):
        assert starts[i + 5] - starts[i] >= 0.5 - 0.02, starts
    assert starts[-1] - starts[0] >= 1.0  # 15 requests at 5 per 0.5 s: at least two waits


def test_in_flight_cap_and_pause_and_max_wait(prefix: str) -> None:
    capped = budget(prefix, [RateLimit(100, 1.0)], max_in_flight=2)

    async def go() -> None:
        a = await capped.acquire()
        await capped.acquire()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(capped.acquire(), 0.2)  # a third waits for an answer
        await capped.release(a)
        await asyncio.wait_for(capped.acquire(), 1.0)
        await capped.penalize(30, "Retry-After: 30")
        with pytest.raises(WaitTooLong, match="Retry-After: 30"):
            await capped.acquire(max_wait=5)

    asyncio.run(go())


def test_a_dead_processes_permit_is_reaped_after_its_lease(prefix: str) -> None:
    short = budget(prefix, [RateLimit(1, 0.2)], lease=0.5)

    async def go() -> float:
        await short.acquire()  # never released: the process died
        started = time.monotonic()
        await short.acquire()
        return time.monotonic() - started

    waited = asyncio.run(go())
    assert 0.4 <= waited < 2.0, waited


def test_an_unreachable_redis_is_a_retryable_error() -> None:
    dead = RedisBudget(
        redis_py.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5),
        "acct",
        [RateLimit(5, 1.0)],
    )
    with pytest.raises(RetryableError, match=r"shared rate budget .* unreachable"):
        asyncio.run(dead.acquire())
