"""The dbt fixture projects (tests/fixtures/dbt, real dbt-duckdb artifacts) for the tests.

``copy_shop`` lays the ``shop`` dbt project and its local packages in a temporary folder;
``materialize`` builds its models in a DuckDB warehouse the way dbt-duckdb's ``table``
materialization does (``create table <relation> as <compiled SQL>``), replaying the compiled
SQL that ``dbt build`` recorded in the manifest, so the main suite needs no dbt.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb

from undertow.project import Project

DBT_FIXTURES = Path(__file__).parent / "fixtures" / "dbt"
SHOP_FOLDERS = ("shop", "marketing", "dbt_utils_lite")


def copy_shop(base: Path) -> Path:
    """Copy the ``shop`` dbt project (and its packages) under ``base``; return its folder."""
    for folder in SHOP_FOLDERS:
        shutil.copytree(DBT_FIXTURES / folder, base / folder, ignore=shutil.ignore_patterns("logs"))
    return base / "shop"


def materialize(dbt_project: Path, warehouse: Path) -> list[str]:
    """Create every table model of the manifest in ``warehouse``; return their unique ids.

    The warehouse file must be named as the dbt profile's (``warehouse.duckdb``): the
    compiled SQL names its relations ``"warehouse"."main"."..."``.
    """
    manifest = json.loads((dbt_project / "target" / "manifest.json").read_text())
    nodes = {
        uid: node
        for uid, node in manifest["nodes"].items()
        if node["resource_type"] == "model" and node["config"]["materialized"] != "ephemeral"
    }
    done: list[str] = []

    def build(uid: str, con: duckdb.DuckDBPyConnection) -> None:
        if uid in done:
            return
        for parent in nodes[uid]["depends_on"]["nodes"]:
            if parent in nodes:
                build(parent, con)
        node = nodes[uid]
        con.execute(f"create or replace table {node['relation_name']} as {node['compiled_code']}")
        done.append(uid)

    with duckdb.connect(str(warehouse)) as con:
        for uid in sorted(nodes):
            build(uid, con)
    return done


def offline_problems(root: Path) -> dict[str, str]:
    """``undertow validate --offline`` of the project in ``root``: key -> message."""
    project = Project.load(str(root))
    try:
        return {p.key or "": p.message for p in project.validate(connect=False)}
    finally:
        project.close()
