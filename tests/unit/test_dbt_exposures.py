"""The syncs as a dbt exposures file (``Project.dbt_exposures``); that dbt parses it is
tested with real dbt in tests/orchestrators/test_dbt.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from dbt_support import copy_shop

from undertow.errors import ConfigError
from undertow.project import Project

pytestmark = pytest.mark.unit


def load(base: Path, body: str) -> Project:
    root = base / "proj"
    root.mkdir(exist_ok=True)
    head = """\
        name: shop_syncs
        sources:
          warehouse: {type: duckdb, path: ../warehouse.duckdb}
        destinations:
          crm: {type: hubspot, token: "${HUBSPOT_TOKEN}"}
          out: {type: file, path: out.jsonl}
        """
    (root / "undertow.yml").write_text(textwrap.dedent(head) + textwrap.dedent(body))
    return Project.load(str(root), require_secrets=False)


PROJECT = """\
    server: {url: "https://undertow.example.com/"}
    models:
      active: {source: warehouse, dbt: {project_dir: ../shop, model: active_customers}}
      leads: {source: warehouse, dbt: {project_dir: ../shop, package: marketing, model: leads}}
      status: {source: warehouse, dbt: {project_dir: ../shop, model: customer_status, version: 1}}
      plans: {source: warehouse, sql: "select * from main.plan_summary", primary_key: plan}
      other: {source: warehouse, sql: "select 1 as id", primary_key: id}
    syncs:
      customers to crm:
        model: active
        destination: crm
        object: contacts
        match: {email: email}
        description: Active customers for the sales team.
      leads_out: {model: leads, destination: out, mode: mirror}
      status_out: {model: status, destination: out}
      plans_out: {model: plans, destination: out}
      waits: {model: other, destination: out, after: [{dbt: {project_dir: ../shop, models: [accounts]}}]}
      unrelated: {model: other, destination: out}
    """


def test_one_exposure_per_sync_that_reads_a_dbt_model(tmp_path: Path) -> None:
    shop = copy_shop(tmp_path)
    project = load(tmp_path, PROJECT)
    try:
        result = project.dbt_exposures(owner="Data team", email="data@example.com")
    finally:
        project.close()
    assert result.dbt_project == shop
    assert result.skipped == ["unrelated"]
    assert result.text.startswith("# Written by `undertow dbt exposures`")
    parsed = yaml.safe_load(result.text)
    assert parsed["version"] == 2
    by_name = {e["name"]: e for e in parsed["exposures"]}
    assert list(by_name) == ["customers_to_crm", "leads_out", "status_out", "plans_out", "waits"]
    crm = by_name["customers_to_crm"]  # a name dbt accepts ([\w-]+)
    assert crm["type"] == "application"
    assert crm["label"] == "customers to crm → crm"
    assert crm["url"] == "https://undertow.example.com/syncs/customers%20to%20crm"
    assert crm["depends_on"] == ["ref('active_customers')"]
    assert crm["owner"] == {"name": "Data team", "email": "data@example.com"}
    assert crm["description"] == (
        "Undertow sync `customers to crm` (upsert) sends the rows of model `active` to object "
        "`contacts` of destination `crm` (hubspot).\n\nActive customers for the sales team."
    )
    assert crm["meta"]["undertow"] == {
        "project": "shop_syncs",
        "sync": "customers to crm",
        "destination": "crm",
        "destination_type": "hubspot",
        "mode": "upsert",
        "object": "contacts",
    }
    assert by_name["leads_out"]["depends_on"] == ["ref('marketing', 'leads')"]
    assert by_name["status_out"]["depends_on"] == ["ref('customer_status', v=1)"]
    assert by_name["plans_out"]["depends_on"] == ["ref('plan_summary')"]  # read by its SQL
    assert by_name["waits"]["depends_on"] == ["ref('accounts')"]  # waited for


def test_no_url_without_server_url(tmp_path: Path) -> None:
    copy_shop(tmp_path)
    project = load(tmp_path, PROJECT.replace('server: {url: "https://undertow.example.com/"}', ""))
    try:
        result = project.dbt_exposures()
    finally:
        project.close()
    assert all("url" not in e for e in result.exposures)
    assert result.exposures[0]["owner"] == {"name": "Undertow"}


def test_projects_without_dbt_and_with_two_dbt_projects(tmp_path: Path) -> None:
    shop = copy_shop(tmp_path)
    project = load(
        tmp_path,
        """\
        models:
          other: {source: warehouse, sql: "select 1 as id", primary_key: id}
        syncs:
          s: {model: other, destination: out}
        """,
    )
    with pytest.raises(ConfigError) as info:
        project.dbt_exposures()
    project.close()
    assert "reads no dbt model and waits for no dbt project" in str(info.value)

    second = tmp_path / "second"
    second.mkdir()
    (second / "target").mkdir()
    (second / "target" / "manifest.json").write_text(
        (shop / "target" / "manifest.json").read_text()
    )
    project = load(
        tmp_path,
        """\
        models:
          a: {source: warehouse, dbt: {project_dir: ../shop, model: active_customers}}
          b: {source: warehouse, dbt: {project_dir: ../second, model: accounts}}
        syncs:
          s: {model: a, destination: out}
          t: {model: b, destination: out}
        """,
    )
    try:
        with pytest.raises(ConfigError) as info:
            project.dbt_exposures()
        assert "reads several dbt projects" in str(info.value) and "--dbt-project" in str(
            info.value
        )
        chosen = project.dbt_exposures(dbt_project="../second")
        assert chosen.dbt_project == second
        assert [e["name"] for e in chosen.exposures] == ["t"] and chosen.skipped == ["s"]
        with pytest.raises(ConfigError) as info:
            project.dbt_exposures(dbt_project="../third")
        assert "reads no dbt project at '../third'" in str(info.value)
    finally:
        project.close()
