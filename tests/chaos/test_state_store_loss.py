"""The PostgreSQL state store goes away in the middle of delivery: its connections are
terminated, then refused. The run fails cleanly (one StateError line, exit 1, no
traceback), no batch is checkpointed that the destination did not answer, and the next
run resumes: the destination ends equal to the model, resends only the batches in flight."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import psycopg
import pytest
from harness import (
    ROWS,
    Model,
    PgState,
    WebhookBook,
    all_final,
    converge,
    final_state_matches,
    start,
    summary,
    wait_for,
    write_project,
)

from undertow.testing.faults import Ledger
from undertow.testing.server import serve_in_thread
from undertow.testing.webhook import WebhookReceiver

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

CONCURRENCY = 4


def terminate(admin: psycopg.Connection[tuple[object, ...]], dbname: str) -> int:
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (dbname,),
    ).fetchall()
    return len(rows)


def test_state_store_goes_away_mid_delivery(tmp_path: Path, pg_database: str) -> None:
    rng = random.Random(707)
    server_url, dbname = pg_database.rsplit("/", 1)
    admin_url = f"{server_url}/{os.environ.get('UNDERTOW_TEST_PG_DB', 'test')}"
    hook = WebhookReceiver(delay=0.05, ledger=Ledger(key="id", version="version"))
    model = Model(tmp_path, ROWS, rng)
    state = PgState(pg_database)
    book = WebhookBook(hook)
    terminated = 0
    with (
        serve_in_thread(hook.app) as server,
        psycopg.connect(admin_url, autocommit=True) as admin,
    ):
        write_project(
            tmp_path,
            f'{{type: webhook, url: "{server.url}/hooks", batch_size: 500, '
            f"max_concurrency: {CONCURRENCY}}}",
            state=pg_database,
        )
        outcomes = []
        for phase in ("terminate", "refuse"):
            book.mark()
            before = len(hook.requests)
            proc = start(tmp_path, json=False)
            target = before + rng.randint(3, 10)
            assert wait_for(lambda: len(hook.requests) >= target, proc, 60)  # noqa: B023
            if phase == "refuse":
                admin.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false')
            try:
                # terminate every connection of the state store, repeatedly for a while
                deadline = time.monotonic() + (1.5 if phase == "terminate" else 30)
                while proc.poll() is None and time.monotonic() < deadline:
                    terminated += terminate(admin, dbname)
                    time.sleep(rng.uniform(0.01, 0.05))
                out, err = proc.communicate(timeout=60)
            finally:
                admin.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
            text = out.decode() + err.decode()
            assert "Traceback" not in text, text[-3000:]
            outcomes.append(proc.returncode)
            if phase == "refuse":
                assert proc.returncode == 1, text[-2000:]
                assert "state store" in text, text[-2000:]
            else:
                assert proc.returncode in (0, 1), text[-2000:]
            kill = book.after_kill(phase, "delivery", 0.0, state)
            # nothing checkpointed that the receiver did not answer
            answered = {
                r.headers["idempotency-key"] for r in hook.requests if 200 <= r.status < 300
            }
            assert state.checkpointed() <= answered
            assert len(kill.in_flight) <= CONCURRENCY
            model.change(update=5_000, add=1_000)

        _, longest_resume = converge(tmp_path, lambda: len(hook.requests))
        final_state_matches(hook.ledger.state if hook.ledger else {}, model.expected("upsert"))
        figures = book.check(CONCURRENCY)
        statuses = state.statuses()
        assert all_final(statuses), statuses
    summary(
        "state-store-loss",
        {
            **figures,
            "exit_codes": outcomes,
            "backends_terminated": terminated,
            "records_checked": len(model.expected("upsert")),
            "runs": dict(statuses),
            "longest_resume_s": round(longest_resume, 2),
        },
    )
