"""``after: [dbt]`` on a sync of a dbt model: run when dbt rebuilt that model successfully.

The dbt project is a copy of the shop fixture (real dbt-duckdb artifacts); its
``run_results.json`` is rewritten to simulate dbt invocations (``rewrite_run_results``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from dbt_support import copy_shop, materialize
from orch_support import Workspace, rewrite_run_results

from undertow.config import load_project
from undertow.errors import ConfigError
from undertow.orchestration.schedule import ManualClock
from undertow.orchestration.signals import DbtProject, resolve_watch
from undertow.samples import build_customers
from undertow.state.store import RunStatus


def write(root: Path, model: str, after: str) -> None:
    (root / "undertow.yml").write_text(
        textwrap.dedent(
            f"""\
            name: orch
            sources: {{warehouse: {{type: duckdb, path: ../warehouse.duckdb}}}}
            destinations: {{out: {{type: file, path: out/a.jsonl}}}}
            models:
              active: {model}
            syncs:
              crm: {{model: active, destination: out, mappings: {{email: email}}, after: {after}}}
            """
        )
    )


DBT_MODEL = "{source: warehouse, dbt: {project_dir: ../shop, model: active_customers}}"


def test_after_dbt_waits_for_the_rebuild_of_the_sync_model(
    ws: Workspace, clock: ManualClock, tmp_path: Path
) -> None:
    shop = copy_shop(tmp_path)
    build_customers(tmp_path / "warehouse.duckdb", 20)
    materialize(shop, tmp_path / "warehouse.duckdb")
    write(ws.root, DBT_MODEL, "[dbt]")
    project = ws.load()
    sched = ws.scheduler(project, clock)

    def dbt_ran(results: dict[str, str], invocation: str) -> None:
        clock.advance(minutes=5)
        at = clock.now()
        rewrite_run_results(shop, results, at=at, invocation=invocation, package="shop")

    dbt_ran({"customer_emails": "success"}, "other-model")
    assert sched.tick() == []
    assert project.sync_status("crm")["waiting_for"] == [
        "dbt model active_customers: never completed"
    ]
    dbt_ran({"active_customers": "error"}, "failed")
    assert sched.tick() == []  # rebuilt but failed: not "rebuilt successfully"
    dbt_ran({"active_customers": "success"}, "rebuilt")
    assert sched.tick() == ["crm"]
    assert sched.records[-1].status == RunStatus.SUCCEEDED
    assert len(ws.lines("a.jsonl")) == sched.records[-1].counts["sent"] > 0

    # the default is the model's own node, not a guess from its SQL
    after = project.config.syncs["crm"].after[0].dbt
    assert after is not None and after.project_dir is None
    dbt = DbtProject(ws.root, resolve_watch(after, project.config.models["active"]))
    ref = project.config.models["active"].dbt
    assert [m.unique_id for m in dbt.watched("crm", "select 1", ref)] == [
        "model.shop.active_customers"
    ]


def test_after_dbt_needs_a_dbt_model_or_a_project_dir(ws: Workspace) -> None:
    write(ws.root, "{source: warehouse, sql: select 1 as id, primary_key: id}", "[dbt]")
    with pytest.raises(ConfigError) as info:
        load_project(ws.root)
    assert info.value.key == "syncs.crm.after.0"
    assert "`after: [dbt]` waits for the rebuild of the sync's dbt model, but model 'active'" in (
        str(info.value)
    )
    assert "after: [{dbt: {project_dir: ../analytics}}]" in str(info.value)
