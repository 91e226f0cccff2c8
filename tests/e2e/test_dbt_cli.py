"""`undertow validate` and `undertow dbt exposures` on a project of dbt models, as a user runs
them: the shop dbt fixture (real dbt-duckdb artifacts) beside the Undertow project."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from dbt_support import copy_shop

if TYPE_CHECKING:
    from tests.e2e.conftest import SampleProject

pytestmark = pytest.mark.e2e

PROJECT = """
    name: shop_syncs
    server: {url: "https://undertow.example.com"}
    sources:
      warehouse: {type: duckdb, path: ../warehouse.duckdb}
    destinations:
      out: {type: file, path: out/a.jsonl}
      crm: {type: hubspot, token: "${HUBSPOT_TOKEN}"}
    models:
      active: {source: warehouse, dbt: {project_dir: ../shop, model: active_customers}}
      other: {source: warehouse, sql: select 1 as id, primary_key: id}
    syncs:
      to_crm: {model: active, destination: crm, object: contacts, match: {email: email}, after: [dbt]}
      unrelated: {model: other, destination: out}
    """


def test_validate_names_the_dbt_problems_in_full(project: SampleProject) -> None:
    copy_shop(project.root.parent)
    project.write(
        """
        name: shop_syncs
        sources:
          warehouse: {type: duckdb, path: ../warehouse.duckdb}
        destinations:
          out: {type: file, path: out/a.jsonl}
        models:
          typo: {source: warehouse, dbt: {project_dir: ../shop, model: active_customer}}
          emails: {source: warehouse, dbt: {project_dir: ../shop, model: customer_emails}}
          plain: {source: warehouse, sql: select 1 as id, primary_key: id}
        syncs:
          s: {model: plain, destination: out, after: [dbt]}
        """
    )
    r = project.run("validate", "--offline")
    assert r.code == 1, r
    assert "undertow.yml:7 models.typo.dbt.model: unknown dbt model 'active_customer'; " in r.err
    assert "did you mean 'active_customers'?" in r.err
    assert "undertow.yml:8 models.emails.primary_key: cannot tell the primary key" in r.err
    # the words in brackets survive the terminal's markup
    assert "add `data_tests: [unique, not_null]` to the key column" in r.err
    assert "syncs.s.after.0: `after: [dbt]` waits for the rebuild of the sync's dbt model" in (
        r.err
    )


def test_exposures_to_stdout_and_to_a_file(project: SampleProject) -> None:
    shop = copy_shop(project.root.parent)
    project.write(PROJECT)
    # no HUBSPOT_TOKEN: writing exposures needs no connector secret
    r = project.run("dbt", "exposures")
    assert r.code == 0, r
    document = yaml.safe_load(r.out)
    [exposure] = document["exposures"]
    assert exposure["name"] == "to_crm"
    assert exposure["url"] == "https://undertow.example.com/syncs/to_crm"
    assert exposure["depends_on"] == ["ref('active_customers')"]
    assert "left out: unrelated (reads no model of" in r.err

    target = shop / "models" / "undertow_exposures.yml"
    r = project.run("dbt", "exposures", "--out", str(target), "--owner", "Data", "--json")
    assert r.code == 0, r
    answer = r.json()
    assert answer["path"] == str(target) and answer["skipped"] == ["unrelated"]
    assert answer["dbt_project"] == str(shop)
    written = yaml.safe_load(target.read_text())
    assert written["exposures"][0]["owner"] == {"name": "Data"}


def test_exposures_without_any_dbt_model_fails_with_the_fix(project: SampleProject) -> None:
    project.write(
        """
        name: plain
        sources: {warehouse: {type: duckdb, path: warehouse.duckdb}}
        destinations: {out: {type: file, path: out/a.jsonl}}
        models: {m: {source: warehouse, sql: select 1 as id, primary_key: id}}
        syncs: {s: {model: m, destination: out}}
        """
    )
    r = project.run("dbt", "exposures", "--out", str(Path(project.root) / "x.yml"))
    assert r.code == 1, r
    assert "reads no dbt model and waits for no dbt project" in r.err
    assert not (project.root / "x.yml").exists()
