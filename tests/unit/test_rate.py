"""Rate budgets: exact rolling windows, shared per account, slowed down by the vendor."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from undertow.destinations.base import RateLimit
from undertow.destinations.rate import (
    Interrupted,
    LocalBudget,
    WaitTooLong,
    budget_for,
    pause,
)

pytestmark = pytest.mark.unit


def overlaps(spans: list[tuple[float, float]], window: float) -> int:
    """The most requests the vendor can have seen in one window: for each request j, those
    that started no later and whose answer came less than ``window`` before j started."""
    worst = 0
    for start_j, _ in spans:
        seen = sum(1 for s, e in spans if s <= start_j and e > start_j - window)
        worst = max(worst, seen)
    return worst


async def traffic(
    budget: LocalBudget, count: int, concurrency: int, latency: tuple[float, float], seed: int
) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    spans: list[tuple[float, float]] = []
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            permit = await budget.acquire()
            start = time.monotonic()
            await asyncio.sleep(rng.uniform(*latency))
            spans.append((start, time.monotonic()))
            await budget.release(permit)

    await asyncio.gather(*(one() for _ in range(count)))
    return spans


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_never_more_than_the_limit_in_any_rolling_window_whatever_the_latency(seed: int) -> None:
    budget = LocalBudget("acme", [RateLimit(5, 0.25)])
    spans = asyncio.run(traffic(budget, 24, 4, (0.0, 0.04), seed))
    assert len(spans) == 24
    assert overlaps(spans, 0.25) <= 5
    assert budget.in_flight == 0 and budget.started == 24


def test_the_limit_is_reached_not_undershot() -> None:
    budget = LocalBudget("acme", [RateLimit(10, 0.2)])
    started = time.monotonic()
    asyncio.run(traffic(budget, 30, 10, (0.0, 0.001), 7))
    elapsed = time.monotonic() - started
    # 10 at once, then 10 more after each window: about two windows for 30 requests
    assert 0.38 <= elapsed < 0.8


def test_two_windows_hold_at_once() -> None:
    budget = LocalBudget("acme", [RateLimit(3, 0.1), RateLimit(5, 0.5)])
    spans = asyncio.run(traffic(budget, 8, 8, (0.0, 0.002), 3))
    assert overlaps(spans, 0.1) <= 3
    assert overlaps(spans, 0.5) <= 5


def test_in_flight_cap_holds_across_threads_and_event_loops() -> None:
    budget = LocalBudget("acme", [], max_in_flight=2)
    peak = [0]
    lock = threading.Lock()
    live = [0]

    async def worker() -> None:
        for _ in range(10):
            permit = await budget.acquire()
            with lock:
                live[0] += 1
                peak[0] = max(peak[0], live[0])
            await asyncio.sleep(0.002)
            with lock:
                live[0] -= 1
            await budget.release(permit)

    threads = [threading.Thread(target=lambda: asyncio.run(worker())) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert peak[0] == 2
    assert budget.started == 30 and budget.in_flight == 0


def test_penalize_pauses_everyone_and_a_pause_past_max_wait_is_refused() -> None:
    budget = LocalBudget("acme", [RateLimit(100, 1.0)])

    async def main() -> float:
        await budget.penalize(0.15, "HubSpot asked to slow down")
        started = time.monotonic()
        await budget.release(await budget.acquire())
        waited = time.monotonic() - started
        await budget.penalize(86_400, "Retry-After: 86400")
        with pytest.raises(WaitTooLong) as caught:
            await budget.acquire(max_wait=900)
        assert caught.value.seconds > 86_000
        assert "Retry-After: 86400" in str(caught.value)
        return waited

    assert asyncio.run(main()) >= 0.14


def test_stop_ends_a_wait_at_once() -> None:
    budget = LocalBudget("acme", [RateLimit(1, 60.0)])

    async def main() -> float:
        stop = asyncio.Event()
        await budget.release(await budget.acquire())  # the window is now full for 60 s
        asyncio.get_running_loop().call_later(0.05, stop.set)
        started = time.monotonic()
        with pytest.raises(Interrupted):
            await budget.acquire(stop=stop)
        return time.monotonic() - started

    assert asyncio.run(main()) < 1.0


def test_pause_is_interrupted_by_stop() -> None:
    async def main() -> float:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        started = time.monotonic()
        with pytest.raises(Interrupted):
            await pause(86_400, stop)
        return time.monotonic() - started

    assert asyncio.run(main()) < 1.0


def test_the_vendors_remaining_count_slows_down_before_a_429() -> None:
    budget = LocalBudget("acme", [RateLimit(100, 10.0)])

    async def main() -> float:
        await budget.observe(remaining=0, reset_in=0.15)  # another app spent the account
        started = time.monotonic()
        await budget.release(await budget.acquire())
        return time.monotonic() - started

    assert asyncio.run(main()) >= 0.14


def test_a_generous_vendor_count_changes_nothing() -> None:
    budget = LocalBudget("acme", [RateLimit(2, 10.0)])

    async def main() -> None:
        await budget.observe(remaining=500, reset_in=10)
        for _ in range(2):
            await budget.release(await budget.acquire())
        with pytest.raises(WaitTooLong):
            await budget.acquire(max_wait=1.0)  # our own window is the stricter one

    asyncio.run(main())


def test_one_budget_per_account_and_the_stricter_limit_wins() -> None:
    first = budget_for("hubspot:abc", [RateLimit(190, 10.0)])
    second = budget_for("hubspot:abc", [RateLimit(100, 10.0)], max_in_flight=3)
    other = budget_for("hubspot:def", [RateLimit(190, 10.0)])
    assert first is second and first is not other
    assert isinstance(first, LocalBudget)
    assert [w.limit for w in first._windows] == [100]
    assert first.max_in_flight == 3
