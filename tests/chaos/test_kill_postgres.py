"""kill -9 of `undertow run` into a real PostgreSQL table (mode mirror, the model changing
between runs). Triggers log every row the destination applied with its transaction, so a
duplicate can be traced to the batch that carried it first: it must be the last
transaction a killed process committed (the batch in flight at the kill: the destination's
concurrency is 1, and the next batch is sent only after the previous one's checkpoint)."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import (
    ROWS,
    Kill,
    Model,
    StateFile,
    all_final,
    converge,
    kill_during,
    run,
    summary,
    write_project,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

SETUP = """
CREATE TABLE users_out (id bigint PRIMARY KEY, email text, plan text, version int);
CREATE TABLE audit (seq bigserial PRIMARY KEY, id bigint, version int, op text,
                    tx bigint NOT NULL DEFAULT txid_current());
CREATE TABLE commits (seq bigserial PRIMARY KEY, tx bigint UNIQUE);
CREATE FUNCTION log_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO audit (id, version, op) VALUES (OLD.id, OLD.version, 'delete');
  ELSE
    INSERT INTO audit (id, version, op) VALUES (NEW.id, NEW.version, 'write');
  END IF;
  RETURN NULL;
END $$;
CREATE FUNCTION log_tx() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO commits (tx) VALUES (txid_current()) ON CONFLICT DO NOTHING;
  RETURN NULL;
END $$;
CREATE TRIGGER rows AFTER INSERT OR UPDATE OR DELETE ON users_out
  FOR EACH ROW EXECUTE FUNCTION log_row();
CREATE TRIGGER txs AFTER INSERT OR UPDATE OR DELETE ON users_out
  FOR EACH STATEMENT EXECUTE FUNCTION log_tx();
"""
ROUNDS = [("extract", "after-send", "mid-batch"), ("mid-batch", "startup")]


def test_kill_9_into_postgres(tmp_path: Path, pg_database: str) -> None:
    rng = random.Random(505)
    model = Model(tmp_path, ROWS, rng)
    state = StateFile(tmp_path)
    with psycopg.connect(pg_database, autocommit=True) as db:
        db.execute(SETUP)

        def seen() -> int:
            row = db.execute("SELECT coalesce(max(seq), 0) FROM commits").fetchone()
            return int(row[0]) if row else 0

        write_project(
            tmp_path,
            f'{{type: postgres, url: "{pg_database}", table: users_out, batch_size: 1000}}',
            mode="mirror",
            match="{id: id}",
        )
        kills: list[Kill] = []
        last_tx_of_killed: set[int] = set()
        finished = []
        for number, aims in enumerate(ROUNDS):
            if number:
                finished.append(run(tmp_path))
                assert finished[-1].code == 0, finished[-1].err[-2000:]
            for aim in aims:
                mark = seen()
                landed, at = kill_during(tmp_path, aim, rng, seen=seen, state=state)
                if landed == "finished":
                    continue
                kills.append(Kill(aim, landed, at=at))
                last = db.execute(
                    "SELECT tx FROM commits WHERE seq > %s ORDER BY seq DESC LIMIT 1", (mark,)
                ).fetchone()
                if last:
                    last_tx_of_killed.add(int(last[0]))
            model.change(update=3_000, add=2_000, remove=2_000)
        results, longest_resume = converge(tmp_path, seen)

        rows = db.execute("SELECT id, email, plan, version FROM users_out").fetchall()
        got = {r[0]: {"id": r[0], "email": r[1], "plan": r[2], "version": r[3]} for r in rows}
        assert got == model.expected("mirror")

        first_tx: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for ident, version, op, tx in db.execute(
            "SELECT id, version, op, tx FROM audit ORDER BY seq"
        ).fetchall():
            first_tx[ident, version, op].append(int(tx))
        duplicates = {k: txs for k, txs in first_tx.items() if len(txs) > 1}
        resent_tx = set()
        for kv, txs in duplicates.items():
            for tx in txs[:-1]:
                assert tx in last_tx_of_killed, (
                    f"{kv} applied in transactions {txs}; {tx} was not the last commit "
                    "of a killed run"
                )
                resent_tx.add(tx)
    statuses = state.statuses()
    assert all_final(statuses), statuses
    summary(
        "kill-resume[postgres]",
        {
            "kills": len(kills),
            "landed": sorted(k.landed for k in kills),
            "resent_batches": len(resent_tx),
            "applied_twice": len(duplicates),
            "records_checked": len(got),
            "runs": dict(statuses),
            "converge_runs": len(results),
            "longest_resume_s": round(max([longest_resume] + [r.seconds for r in finished]), 2),
        },
    )
