"""Undertow and real dbt (dbt-core 1.10, dbt-duckdb) on the shop fixture project.

* ``dbt parse`` accepts the file ``undertow dbt exposures`` writes, and its manifest then
  holds one exposure per sync, depending on the right model nodes;
* after a real ``dbt build``, the demo's model as a dbt model syncs the rows of the SQL it
  stands for, and ``validate`` says the manifest is stale once the model's file changes,
  until ``dbt parse`` runs again (dbt's own checksum of the file, read back).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest
from dbt_support import copy_shop, offline_problems

from undertow.project import Project
from undertow.samples import build_customers

BIN = Path(sys.executable).parent


def dbt(project: Path, *args: str) -> str:
    exe = BIN / "dbt"
    if not exe.exists():
        pytest.fail(
            f"dbt is not installed next to {sys.executable}: run `make test-orchestrators`",
            pytrace=False,
        )
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    done = subprocess.run(
        [str(exe), *args, "--profiles-dir", str(project.parent)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"dbt {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    project = copy_shop(tmp_path)
    build_customers(tmp_path / "warehouse.duckdb", 300)
    (tmp_path / "profiles.yml").write_text(
        "shop:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
        f"      path: {tmp_path / 'warehouse.duckdb'}\n      threads: 1\n"
    )
    dbt(project, "deps")
    return project


UNDERTOW_YML = """\
name: shop_syncs
server: {url: "https://undertow.example.com"}
sources:
  warehouse: {type: duckdb, path: ../warehouse.duckdb}
destinations:
  out: {type: file, path: out/customers.jsonl}
  sql_out: {type: file, path: out/sql.jsonl}
  crm: {type: hubspot, token: "${HUBSPOT_TOKEN}"}
models:
  active_customers: {source: warehouse, dbt: {project_dir: ../shop, model: active_customers}}
  demo_sql: {source: warehouse, sql: select * from customers where active, primary_key: customer_id}
  leads: {source: warehouse, dbt: {project_dir: ../shop, package: marketing, model: leads}}
  status_v1: {source: warehouse, dbt: {project_dir: ../shop, model: customer_status, version: 1}}
syncs:
  customers_to_file: {model: active_customers, destination: out, after: [dbt]}
  demo_sql_to_file: {model: demo_sql, destination: sql_out}
  leads to crm: {model: leads, destination: crm, object: contacts, match: {email: email}}
  status_out: {model: status_v1, destination: out}
"""


def undertow(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "undertow"), *args, "--project", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_dbt_parse_accepts_the_exposures_file(shop: Path, tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "undertow.yml").write_text(UNDERTOW_YML)
    out = shop / "models" / "undertow_exposures.yml"
    done = undertow(root, "dbt", "exposures", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wrote 3 exposures" in done.stdout, done.stdout
    log = dbt(shop, "parse", "--no-partial-parse", "--show-all-deprecations")
    assert "undertow_exposures" not in log, log  # no warning or deprecation about the file
    manifest = json.loads((shop / "target" / "manifest.json").read_text())
    exposures = {e["name"]: e for e in manifest["exposures"].values()}
    depends = {name: e["depends_on"]["nodes"] for name, e in exposures.items()}
    assert depends == {  # demo_sql_to_file reads a dbt source's table, no dbt model
        "customers_to_file": ["model.shop.active_customers"],
        "leads_to_crm": ["model.marketing.leads"],
        "status_out": ["model.shop.customer_status.v1"],
    }
    crm = exposures["leads_to_crm"]
    assert crm["type"] == "application"
    assert crm["url"] == "https://undertow.example.com/syncs/leads%20to%20crm"
    assert "destination `crm` (hubspot)" in crm["description"]
    assert crm["owner"]["name"] == "Undertow"


def test_a_dbt_built_model_syncs_the_rows_of_its_sql(shop: Path, tmp_path: Path) -> None:
    dbt(shop, "build")
    root = tmp_path / "proj"
    root.mkdir()
    (root / "undertow.yml").write_text(UNDERTOW_YML)
    (root / ".env").write_text("HUBSPOT_TOKEN=pat-not-used\n")  # validate offline sends nothing
    (root / "out").mkdir()
    project = Project.load(str(root))
    try:
        assert [p.message for p in project.validate(connect=False)] == []
        records = project.run(["customers_to_file", "demo_sql_to_file"])
    finally:
        project.close()
    assert [str(r.status) for r in records] == ["succeeded", "succeeded"], [
        r.error for r in records
    ]
    dbt_rows = (root / "out" / "customers.jsonl").read_text().splitlines()
    sql_rows = (root / "out" / "sql.jsonl").read_text().splitlines()
    assert sorted(map(json.loads, dbt_rows), key=str) == sorted(map(json.loads, sql_rows), key=str)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        row = con.execute("select count(*) from customers where active").fetchone()
    assert row is not None and len(dbt_rows) == row[0] > 200

    model_file = shop / "models" / "active_customers.sql"
    model_file.write_text(model_file.read_text() + "and seats > 1\n")
    [(key, message)] = offline_problems(root).items()
    assert key == "models.active_customers.dbt"
    assert "the dbt manifest is stale" in message and str(model_file) in message
    dbt(shop, "parse")
    assert offline_problems(root) == {}


def test_exposures_of_a_project_file(tmp_path: Path) -> None:
    """A sync whose SQL reads no dbt model is left out (and said so)."""
    copy_shop(tmp_path)
    root = tmp_path / "proj"
    root.mkdir()
    (root / "undertow.yml").write_text(textwrap.dedent(UNDERTOW_YML))
    done = undertow(root, "dbt", "exposures")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# Written by `undertow dbt exposures`")
    assert "demo_sql_to_file" not in done.stdout
    assert "left out: demo_sql_to_file (reads no model of" in done.stderr
