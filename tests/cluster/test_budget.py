"""One destination account, one budget, however many processes: 4 `undertow run` processes
running 4 syncs against an account allowing 20 requests per rolling second see no 429 with
the budget in Redis, and do without it (each process then keeps its own)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_support import REDIS_URL, Broker, make_broker

from undertow.testing.budget_run import run_all, write
from undertow.testing.server import serve_in_thread
from undertow.testing.window import WindowedAccount

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

LIMIT = 20
SYNCS = 4
ROWS = 300  # 30 requests of 10 per sync: 120 requests, 6 s at the limit


@pytest.fixture
def redis() -> Iterator[Broker]:
    yield from make_broker("redis")


def test_the_shared_budget_keeps_four_processes_under_the_accounts_limit(
    tmp_path: Path, redis: Broker
) -> None:
    account = WindowedAccount(LIMIT)
    with serve_in_thread(account.app) as server:
        names = write(
            tmp_path, url=server.url, syncs=SYNCS, rows=ROWS, batch=10, limit=LIMIT,
            budget=REDIS_URL, prefix=redis.prefix,
        )  # fmt: skip
        outcome = run_all(tmp_path, names)
    assert outcome.codes == [0] * SYNCS, outcome.outputs
    assert account.refused == 0
    assert account.busiest_window() <= LIMIT
    assert account.records == SYNCS * ROWS
    assert len(account.accepted) == SYNCS * ROWS // 10
    # the budget is used, not wasted: at least 90% of the limit end to end
    assert account.rate() >= 0.9 * LIMIT, account.rate()
    print(
        f"\nshared budget: {account.rate():.1f} req/s of {LIMIT}, 0 x 429, busiest "
        f"window {account.busiest_window()}"
    )


def test_without_the_shared_budget_the_processes_overspend(tmp_path: Path) -> None:
    account = WindowedAccount(LIMIT)
    with serve_in_thread(account.app) as server:
        names = write(
            tmp_path, url=server.url, syncs=SYNCS, rows=ROWS, batch=10, limit=LIMIT,
            budget=None, prefix=f"ut-{uuid.uuid4().hex[:8]}",
        )  # fmt: skip
        outcome = run_all(tmp_path, names)
    # every process keeps its own budget of 20/s: together they send far more, the account
    # refuses the excess; the retries (Retry-After honoured) still deliver every row
    assert account.refused > 0
    assert account.records == SYNCS * ROWS, outcome.outputs
    print(f"\nwithout the shared budget: {account.refused} x 429")
