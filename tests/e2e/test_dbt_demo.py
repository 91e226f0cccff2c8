"""The `undertow demo` model written as a dbt model sends HubSpot the same contacts.

The demo's own project (``undertow.demo.PROJECT_YML``, model ``select * from customers
where active``) and the same project whose model is ``dbt: {model: active_customers}`` of
the shop dbt fixture (``select * from {{ source('app', 'customers') }} where active``, key
from its unique + not_null tests) each sync into their own fake HubSpot, twice: the first
run and the run after a day of changes, with dbt's tables rebuilt in between as ``dbt run``
would. Both fakes end up holding the same contacts, and both runs count the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dbt_support import copy_shop, materialize

from undertow.demo import DEMO_TOKEN, PROJECT_YML
from undertow.project import Project
from undertow.samples import build_customers, change_customers
from undertow.testing.hubspot import DEMO_PROPERTIES, HubSpotFake
from undertow.testing.server import serve_in_thread

pytestmark = pytest.mark.e2e

DEMO_MODEL = "    sql: select * from customers where active\n    primary_key: customer_id\n"
DBT_MODEL = "    dbt: {project_dir: ../shop, model: active_customers}\n"


def project_yml(base_url: str, *, dbt: bool) -> str:
    text = (
        PROJECT_YML.replace("${HUBSPOT_TOKEN}", DEMO_TOKEN)
        .replace("${HUBSPOT_BASE_URL:-https://api.hubapi.com}", base_url)
        .replace("path: warehouse.duckdb", "path: ../warehouse.duckdb")
    )
    assert DEMO_MODEL in text, "the demo's model changed: update this test"
    return text.replace(DEMO_MODEL, DBT_MODEL) if dbt else text


def contacts(fake: HubSpotFake) -> dict[str, dict[str, Any]]:
    """The fake's contacts by email, without the ids and timestamps the fake assigns."""
    out = {}
    for props in fake.objects["contacts"].values():
        kept = {k: v for k, v in props.items() if not k.startswith(("hs_", "create", "last"))}
        out[str(props["email"])] = kept
    return out


def test_the_demo_model_as_a_dbt_model_syncs_the_same_rows(tmp_path: Path) -> None:
    shop = copy_shop(tmp_path)
    warehouse = tmp_path / "warehouse.duckdb"  # named as the dbt profile's database
    build_customers(warehouse, 600)
    materialize(shop, warehouse)
    # the demo's portal: its custom contact properties exist (validate reads them)
    fakes = {kind: HubSpotFake(DEMO_TOKEN, properties=DEMO_PROPERTIES) for kind in ("sql", "dbt")}
    counts: dict[str, list[dict[str, int]]] = {"sql": [], "dbt": []}
    with serve_in_thread(fakes["sql"].app) as sql_api, serve_in_thread(fakes["dbt"].app) as dbt_api:
        projects = {}
        for kind, api in (("sql", sql_api), ("dbt", dbt_api)):
            root = tmp_path / kind
            root.mkdir()
            (root / "undertow.yml").write_text(project_yml(api.url, dbt=kind == "dbt"))
            projects[kind] = Project.load(str(root))
        try:
            assert projects["dbt"].config.models["active_customers"].primary_key == ["customer_id"]
            for round_ in range(2):
                if round_:
                    change_customers(warehouse)
                    materialize(shop, warehouse)  # `dbt run` after the day's load
                for kind, project in projects.items():
                    assert project.validate() == []
                    [record] = project.run(["customers_to_hubspot"])
                    assert str(record.status) == "succeeded", record.error
                    counts[kind].append(
                        {k: record.counts[k] for k in ("extracted", "added", "changed", "sent")}
                    )
        finally:
            for project in projects.values():
                project.close()
    assert counts["dbt"] == counts["sql"]
    first, second = counts["dbt"]
    assert first["sent"] == first["extracted"] > 400
    assert 0 < second["sent"] < first["sent"]
    assert contacts(fakes["dbt"]) == contacts(fakes["sql"])
    assert len(contacts(fakes["dbt"])) == first["sent"] + second["added"]
