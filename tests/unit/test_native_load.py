"""The local engine loads a DuckDB source's model inside its own connection (no Arrow round
trip): the source's file, attached databases and relative file paths must all still work."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from undertow.config.models import Mode
from undertow.destinations.base import Capabilities, Operation
from undertow.errors import ModelError
from undertow.pipeline.diff import DiffSpec, LocalDiffEngine
from undertow.pipeline.plan import make_plan
from undertow.project import Project
from undertow.sources.duckdb import DuckDBConfig, DuckDBSource


def _project(root: Path) -> None:
    with duckdb.connect(str(root / "wh.duckdb")) as con:
        con.execute("create table users as select i as id, 'u' || i as name from range(5) t(i)")
    with duckdb.connect(str(root / "crm.duckdb")) as con:
        con.execute("create table plans as select i as id, 'pro' as plan from range(5) t(i)")
    (root / "data").mkdir()
    (root / "data" / "scores.csv").write_text("id,score\n0,10\n1,11\n2,12\n3,13\n4,14\n")
    (root / "undertow.yml").write_text(
        """
name: native
sources:
  wh: {type: duckdb, path: wh.duckdb, attach: {crm: crm.duckdb}}
destinations:
  out: {type: file, path: out.jsonl}
models:
  users:
    source: wh
    sql: >
      select u.id, u.name, p.plan, s.score
      from users u join crm.plans p using (id) join 'data/scores.csv' s using (id)
    primary_key: id
syncs:
  users_out: {model: users, destination: out}
"""
    )


def test_a_run_reads_the_file_attached_databases_and_relative_csv(tmp_path: Path) -> None:
    _project(tmp_path)
    project = Project.load(str(tmp_path))
    try:
        (run,) = project.run(["users_out"])
    finally:
        project.close()
    assert str(run.status) == "succeeded", run.error
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in lines}
    assert sorted(by_id) == [0, 1, 2, 3, 4]
    assert by_id[3] == {"operation": "upsert", "id": 3, "name": "u3", "plan": "pro", "score": 13}


def _engine_and_spec(tmp_path: Path) -> tuple[LocalDiffEngine, DiffSpec, object]:
    caps = Capabilities(operations=frozenset(Operation), max_batch_size=10)
    plan = make_plan(sync="s", mode=Mode.UPSERT, destination="d", caps=caps)
    spec = DiffSpec(sync="s", keys=["id"], columns=["id", "name"], fingerprint=1)
    return LocalDiffEngine(tmp_path / "state", "s"), spec, plan


def test_a_failing_model_is_a_model_error_and_the_connection_is_left_clean(
    tmp_path: Path,
) -> None:
    _project(tmp_path)
    source = DuckDBSource(
        DuckDBConfig(type="duckdb", path="wh.duckdb"), name="wh", base_dir=str(tmp_path)
    )
    engine, spec, plan = _engine_and_spec(tmp_path)
    try:
        load = source.load_into_duckdb("select id, nme as name from users", model="users")
        assert load is not None
        with pytest.raises(ModelError) as err:
            engine.build("r1", load, spec, plan, 10)  # type: ignore[arg-type]
        assert "users" in str(err.value) and "nme" in str(err.value)
        # the source was detached: the engine's own database is current again
        attached = {
            r[0]
            for r in engine.con.execute("select database_name from duckdb_databases()").fetchall()
        }
        assert "_ut_source" not in attached
        good = source.load_into_duckdb("select id, name from users", model="users")
        stats = engine.build("r2", good, spec, plan, 10)  # type: ignore[arg-type]
        assert stats.added == 5
    finally:
        engine.close()


def test_two_statements_are_refused(tmp_path: Path) -> None:
    _project(tmp_path)
    source = DuckDBSource(
        DuckDBConfig(type="duckdb", path="wh.duckdb"), name="wh", base_dir=str(tmp_path)
    )
    engine, _spec, _plan = _engine_and_spec(tmp_path)
    try:
        with pytest.raises(ModelError, match="exactly one SELECT"):  # before anything runs
            source.load_into_duckdb("drop table users; select 1 as id", model="users")
    finally:
        engine.close()
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        assert con.execute("select count(*) from users").fetchall() == [(5,)]
