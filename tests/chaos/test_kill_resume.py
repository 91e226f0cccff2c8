"""kill -9 at random moments of `undertow run`, repeatedly, for every sync mode, with the model
changing between runs and a seeded fault plan on the webhook receiver; then runs until
quiet. Nothing lost, nothing sent twice except the batches in flight at a kill (or whose
answer a fault lost), no run left unfinished, and the next run sends nothing."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from harness import (
    ROWS,
    SYNC,
    Model,
    StateFile,
    WebhookBook,
    all_final,
    converge,
    final_state_matches,
    kill_during,
    run,
    summary,
    write_project,
)

from undertow.testing.faults import FaultPlan, Ledger
from undertow.testing.server import serve_in_thread
from undertow.testing.webhook import WebhookReceiver

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

BATCH = 500
CONCURRENCY = 4
RATES = {
    "503": 0.03,
    "500": 0.01,
    "502": 0.01,
    "429": 0.02,
    "429-bare": 0.01,
    "timeout": 0.01,
    "drop": 0.03,
    "partial": 0.03,
    "slow": 0.04,
}
# kill aims per round; the model changes after each round. The first round's killed run is
# then finished; the second's is left unfinished while the model changes again, so the
# resume finishes its old plan and the next run sends the newer changes.
ROUNDS = [("extract", "after-send"), ("mid-batch", "startup")]
CHANGES = {
    "upsert": {"update": 4_000, "add": 2_000},
    "update": {"update": 4_000, "add": 2_000},
    "insert": {"add": 5_000},
    "mirror": {"update": 3_000, "add": 2_000, "remove": 2_000},
}


@pytest.mark.parametrize(
    ("mode", "seed"), [("upsert", 101), ("insert", 202), ("update", 303), ("mirror", 404)]
)
def test_kill_9_repeatedly_then_converge(tmp_path: Path, mode: str, seed: int) -> None:
    rng = random.Random(seed)
    # a timeout fault answers after 5 s, past the client's 4 s: a loaded machine's slow normal
    # answer must not be lost where the fault plan lost none
    plan = FaultPlan(seed, RATES, timeout_delay=5.0)
    hook = WebhookReceiver(delay=0.02, faults=plan, ledger=Ledger(key="id", version="version"))
    model = Model(tmp_path, ROWS, rng)
    state = StateFile(tmp_path)
    book = WebhookBook(hook, plan)
    with serve_in_thread(hook.app) as server:
        write_project(
            tmp_path,
            f'{{type: webhook, url: "{server.url}/hooks", batch_size: {BATCH}, '
            f"max_concurrency: {CONCURRENCY}, timeout: 4.0}}",
            mode=mode,
        )
        finished = []
        for number, aims in enumerate(ROUNDS):
            if number:
                finished.append(run(tmp_path))
                assert finished[-1].code == 0, finished[-1].err[-2000:]
            for aim in aims:
                book.mark()
                landed, at = kill_during(
                    tmp_path,
                    aim,
                    rng,
                    seen=lambda: len(hook.requests),
                    state=state,
                )
                if landed != "finished":
                    book.after_kill(aim, landed, at, state)
            model.change(**CHANGES[mode])
        book.mark()
        results, longest_resume = converge(tmp_path, lambda: len(hook.requests))

        final_state_matches(hook.ledger.state if hook.ledger else {}, model.expected(mode))
        figures = book.check(CONCURRENCY)
        statuses = state.statuses()
        assert all_final(statuses), statuses
    summary(
        f"kill-resume[{mode}]",
        {
            **figures,
            "seed": seed,
            "landed": sorted(k.landed for k in book.kills),
            "records_checked": len(model.expected(mode)),
            "faults": dict(plan.counts),
            "runs": dict(statuses),
            "converge_runs": len(results),
            "longest_resume_s": round(max([longest_resume] + [r.seconds for r in finished]), 2),
            "sync": SYNC,
        },
    )
