"""The seeded fault plan: each fault does what it says to a real client over TCP, decisions
repeat for a seed, and a HubSpot sync through a faulty fake still ends equal to the model,
with every duplicate traced to an answer the fault plan lost."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import orjson
import pytest
from harness import Model, StateFile, all_final, converge, summary, write_project

from undertow.destinations.base import Batch, Operation
from undertow.destinations.webhook import WebhookConfig, WebhookDestination
from undertow.errors import RetryableError
from undertow.testing.faults import FAULTS, FaultPlan, Ledger, digest
from undertow.testing.hubspot import HubSpotFake
from undertow.testing.server import serve_in_thread
from undertow.testing.webhook import WebhookReceiver

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]


def batch(size: int = 10) -> Batch:
    payloads = [orjson.dumps({"id": i, "version": 1}).decode() for i in range(size)]
    return Batch("s", Operation.UPSERT, 0, "run-0", [str(i) for i in range(size)], payloads)


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_as_the_client_sees_it(fault: str) -> None:
    plan = FaultPlan(1, {fault: 1.0}, timeout_delay=1.0, slow_delay=0.1, max_in_a_row=1)
    hook = WebhookReceiver(faults=plan, ledger=Ledger(key="id", version="version"))
    with serve_in_thread(hook.app) as server:
        config = WebhookConfig(url=f"{server.url}/hooks", timeout=0.5)
        destination = WebhookDestination(config, name="out")

        async def send() -> object:
            try:
                return await destination.write_batch(batch())
            except RetryableError as exc:
                return exc
            finally:
                await destination.close()

        outcome = asyncio.run(send())
        assert hook.ledger is not None
        applied = len(hook.ledger.state)
        if fault in ("500", "502", "503", "429", "429-bare"):
            assert isinstance(outcome, RetryableError) and applied == 0
            assert (outcome.retry_after is not None) == (fault == "429"), outcome
        elif fault in ("timeout", "drop"):  # applied, but the client never heard
            assert isinstance(outcome, RetryableError) and applied == 10, outcome
            assert plan.lost_bodies == {digest(hook.requests[0].raw)}
        elif fault == "partial":
            assert not isinstance(outcome, RetryableError)
            assert len(outcome.rejected) == 1 and applied == 9  # type: ignore[attr-defined]
        else:  # slow: answered in time
            assert not isinstance(outcome, RetryableError) and applied == 10
        assert [e.fault for e in plan.events] == [fault]
        # the same body again: at most max_in_a_row faults in a row, then a normal answer
        assert plan.decide(hook.requests[0].raw, 10).fault is None


def test_decisions_repeat_for_a_seed_whatever_the_arrival_order() -> None:
    bodies = [f"body {i}".encode() for i in range(200)]
    rates = {"503": 0.2, "drop": 0.1, "partial": 0.1}
    first = [FaultPlan(9, rates).decide(b, 10).fault for b in bodies]
    shuffled = bodies[:]
    random.Random(1).shuffle(shuffled)
    plan = FaultPlan(9, rates)
    by_body = {b: plan.decide(b, 10).fault for b in shuffled}
    assert [by_body[b] for b in bodies] == first
    assert first != [FaultPlan(10, rates).decide(b, 10).fault for b in bodies]


HUBSPOT_RATES = {
    "500": 0.04,
    "503": 0.04,
    "timeout": 0.02,
    "drop": 0.05,
    "partial": 0.05,
    "slow": 0.05,
}


def test_hubspot_sync_through_faults(tmp_path: Path) -> None:
    seed = 808
    # the client waits 4 s, a timeout fault answers after 5 s: a loaded machine (a normal
    # answer taking over a second) must not lose answers the fault plan did not lose
    plan = FaultPlan(seed, HUBSPOT_RATES, timeout_delay=5.0)
    fake = HubSpotFake(
        "t0k3n",
        rate_limit_per_10s=100_000,
        fault_plan=plan,
        ledger=Ledger(key="email", version="version"),
    )
    model = Model(tmp_path, 5_000, random.Random(seed))
    state = StateFile(tmp_path)
    with serve_in_thread(fake.app) as server:
        write_project(
            tmp_path,
            f'{{type: hubspot, token: t0k3n, base_url: "{server.url}", timeout: 4.0, '
            "rate_limit_per_10s: 100000}",
            match="{email: email}",
            object_="contacts",
            mappings="{plan: plan, version: version}",
        )
        for _ in range(2):
            converge(tmp_path, lambda: len(fake.requests))
            model.change(update=1_000, add=500)
        converge(tmp_path, lambda: len(fake.requests))
    assert fake.ledger is not None
    got = {
        email: (props["plan"], int(props["version"] or 0))
        for email, props in fake.ledger.state.items()
    }
    assert got == {r["email"]: (r["plan"], r["version"]) for r in model.expected("upsert").values()}
    # every (email, version) applied twice was in a request whose answer a fault lost
    duplicates = fake.ledger.duplicates()
    lost_records = set()
    for request in fake.requests:
        if request.body and digest(orjson.dumps(request.body)) in plan.lost_bodies:
            lost_records |= {
                (i["id"], str(i["properties"]["version"])) for i in request.body["inputs"]
            }
    unexplained = set(duplicates) - lost_records
    assert not unexplained, sorted(unexplained)[:5]
    assert all_final(state.statuses())
    summary(
        "faults[hubspot]",
        {
            "seed": seed,
            "records_checked": len(got),
            "requests": len(fake.requests),
            "faults": dict(plan.counts),
            "applied_twice": len(duplicates),
            "explained": len(duplicates) - len(unexplained),
        },
    )
