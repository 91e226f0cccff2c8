"""dbt models as Undertow models, read from the real dbt-duckdb artifacts of tests/fixtures/dbt.

Every project here points at a copy of the ``shop`` dbt project; the warehouse is a DuckDB
file whose dbt tables are built from the manifest's compiled SQL (``dbt_support``).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import polars as pl
import pytest
from dbt_support import copy_shop, materialize, offline_problems

from undertow.config import load_project
from undertow.dbt.check import polars_type
from undertow.errors import ConfigError, ConfigErrors
from undertow.project import Project
from undertow.samples import build_customers

pytestmark = pytest.mark.unit


def write_project(base: Path, models: str, syncs: str = "", extra: str = "") -> Path:
    """``extra``: more lines under ``sources:``."""
    root = base / "proj"
    root.mkdir(exist_ok=True)
    text = textwrap.dedent(
        """\
        name: shop_syncs
        sources:
          warehouse: {type: duckdb, path: ../warehouse.duckdb}
        """
    )
    text += extra + textwrap.dedent(
        """\
        destinations:
          out: {type: file, path: out.jsonl}
        models:
        """
    )
    text += textwrap.indent(textwrap.dedent(models).strip() + "\n", "  ")
    if syncs:
        text += "syncs:\n" + textwrap.indent(textwrap.dedent(syncs).strip() + "\n", "  ")
    (root / "undertow.yml").write_text(text)
    return root


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """A copy of the shop dbt project beside an empty folder for the Undertow project."""
    return copy_shop(tmp_path)


def model(name: str, dbt: str, more: str = "") -> str:
    return f"{name}: {{source: warehouse, dbt: {{project_dir: ../shop, {dbt}}}{more}}}\n"


def errors_of(root: Path) -> list[ConfigError]:
    with pytest.raises(ConfigError) as info:
        load_project(root)
    error = info.value
    return error.errors if isinstance(error, ConfigErrors) else [error]


def line_of(root: Path, needle: str) -> int:
    lines = (root / "undertow.yml").read_text().splitlines()
    return next(i for i, line in enumerate(lines, start=1) if needle in line)


# -- what a dbt model becomes --------------------------------------------------------------


def test_relation_and_primary_key_come_from_the_manifest(shop: Path) -> None:
    root = write_project(
        shop.parent,
        model("active", "model: active_customers")
        + model("lines", "model: order_lines")
        + model("accounts", "model: accounts")
        + model("events", "model: customer_events")
        + model("leads", "package: marketing, model: leads")
        + model("status", "model: customer_status")
        + model("status_v1", "model: customer_status, version: 1")
        + "other: {source: elsewhere, dbt: {project_dir: ../shop, model: active_customers}}",
        extra="  elsewhere: {type: duckdb, path: ../other.duckdb}\n",
    )
    loaded = load_project(root)
    keys = {name: m.primary_key for name, m in loaded.config.models.items() if name != "other"}
    assert keys == {
        "active": ["customer_id"],  # unique + not_null tests
        "lines": ["order_id", "line_no"],  # dbt_utils.unique_combination_of_columns
        "accounts": ["account_id"],  # a primary_key constraint (enforced contract)
        "events": ["customer_id"],  # an incremental model's unique_key
        "leads": ["lead_id"],
        "status": ["customer_id"],
        "status_v1": ["customer_id"],
    }
    # relation_name, less the database when it is the DuckDB source's own file (the diff
    # engine attaches that file under its own alias); any other source reads it as dbt does
    assert loaded.model_sql["active"] == 'select * from "main"."active_customers"'
    assert loaded.model_sql["leads"] == 'select * from "main"."leads"'
    assert loaded.model_sql["other"] == 'select * from "warehouse"."main"."active_customers"'
    # a versioned model without `version:` is its latest version, as ref() picks it
    assert loaded.model_sql["status"].endswith('"customer_status_v2"')
    assert loaded.model_sql["status_v1"].endswith('"customer_status_v1"')
    assert loaded.dbt_models["lines"].key_from == (
        "its dbt_utils.unique_combination_of_columns test"
    )
    assert loaded.dbt_models["active"].node.unique_id == "model.shop.active_customers"


def test_a_written_primary_key_wins_over_the_tests(shop: Path) -> None:
    root = write_project(
        shop.parent,
        model("emails", "model: customer_emails", ", primary_key: email")
        + model("plans", "model: plan_summary", ", primary_key: plan"),
    )
    loaded = load_project(root)
    assert loaded.config.models["emails"].primary_key == ["email"]
    assert loaded.config.models["plans"].primary_key == ["plan"]
    assert loaded.dbt_models["emails"].key_from == "primary_key:"


def test_the_dbt_model_syncs_its_rows(shop: Path) -> None:
    build_customers(shop.parent / "warehouse.duckdb", 40)
    materialize(shop, shop.parent / "warehouse.duckdb")
    root = write_project(
        shop.parent,
        model("lines", "model: order_lines"),
        "lines_out: {model: lines, destination: out, mode: mirror}",
    )
    project = Project.load(str(root))
    try:
        assert project.validate() == []
        [record] = project.run(["lines_out"])
    finally:
        project.close()
    assert str(record.status) == "succeeded", record.error
    assert record.counts["sent"] == 80  # two lines per customer, keyed by (order_id, line_no)
    assert len((root / "out.jsonl").read_text().splitlines()) == 80


# -- errors name the file, the line and the key ---------------------------------------------


def test_unknown_dbt_model_offers_the_closest_name(shop: Path) -> None:
    root = write_project(shop.parent, model("active", "model: active_customer"))
    [error] = errors_of(root)
    assert f"undertow.yml:{line_of(root, 'active:')} models.active.dbt.model" in str(error)
    assert "unknown dbt model 'active_customer'; did you mean 'active_customers'?" in str(error)
    assert str(shop / "target" / "manifest.json") in str(error)
    assert "dbt parse" in str(error)


def test_unknown_package_disabled_ephemeral_and_bad_version(shop: Path) -> None:
    root = write_project(
        shop.parent,
        model("a", "package: marketng, model: leads")
        + model("b", "model: legacy_customers")
        + model("c", "model: recent_signups")
        + model("d", "model: customer_status, version: 3")
        + model("e", "model: active_customers, version: 1"),
    )
    errors = {e.key: str(e) for e in errors_of(root)}
    assert (
        "the dbt project has no package 'marketng'; did you mean 'marketing'?"
        in (errors["models.a.dbt.model"])
    )
    assert "dbt model 'legacy_customers' is disabled" in errors["models.b.dbt.model"]
    assert (
        "dbt model 'recent_signups' is ephemeral: it has no table or view to read"
        in (errors["models.c.dbt.model"])
    )
    assert (
        "dbt model 'customer_status' has no version 3 (versions: 1, 2)"
        in (errors["models.d.dbt.model"])
    )
    assert "has no version 1 (versions: none: it is not versioned)" in errors["models.e.dbt.model"]


def test_no_derivable_primary_key_asks_for_one(shop: Path) -> None:
    root = write_project(shop.parent, model("emails", "model: customer_emails"))
    [error] = errors_of(root)
    text = str(error)
    assert f"undertow.yml:{line_of(root, 'emails:')} models.emails.primary_key" in text
    assert "cannot tell the primary key of dbt model 'customer_emails'" in text
    assert "`primary_key: id`" in text and "data_tests: [unique, not_null]" in text


def test_two_candidate_keys_ask_which(shop: Path) -> None:
    root = write_project(shop.parent, model("plans", "model: plan_summary"))
    [error] = errors_of(root)
    assert error.key == "models.plans.primary_key"
    assert "several possible primary keys (columns with unique and not_null tests: " in str(error)
    assert "plan" in str(error) and "first_customer_id" in str(error)


def test_missing_manifest_and_missing_project_folder(shop: Path) -> None:
    (shop / "target" / "manifest.json").unlink()
    root = write_project(
        shop.parent,
        model("a", "model: active_customers")
        + "b: {source: warehouse, dbt: {project_dir: ../analytics, model: x}}\n",
    )
    errors = {e.key: str(e) for e in errors_of(root)}
    assert (
        f"no dbt manifest at {shop / 'target' / 'manifest.json'}"
        in (errors["models.a.dbt.project_dir"])
    )
    assert f"run `dbt parse` (or any dbt command) in {shop}" in errors["models.a.dbt.project_dir"]
    missing = shop.parent / "analytics"
    assert (
        f"the dbt project folder {str(missing)!r} does not exist"
        in (errors["models.b.dbt.project_dir"])
    )


def test_a_manifest_that_is_not_json(shop: Path) -> None:
    (shop / "target" / "manifest.json").write_text('{"metadata": {"dbt_')
    root = write_project(shop.parent, model("a", "model: active_customers"))
    [error] = errors_of(root)
    assert error.key == "models.a.dbt.project_dir"
    assert "cannot be read" in str(error) and "dbt may be writing it" in str(error)


def test_dbt_and_sql_together_is_refused(shop: Path) -> None:
    root = write_project(
        shop.parent, model("a", "model: active_customers", ", sql: select 1, primary_key: id")
    )
    [error] = errors_of(root)
    assert error.key == "models.a"
    assert "exactly one of `sql:` (inline SQL), `file:` (a .sql file path) or `dbt:`" in str(error)


# -- validate: a stale manifest; columns without querying -----------------------------------


def test_validate_says_when_the_manifest_is_stale(shop: Path) -> None:
    root = write_project(
        shop.parent,
        model("active", "model: active_customers"),
        "s: {model: active, destination: out}",
    )
    sql_file = shop / "models" / "active_customers.sql"
    # a newer file with the same text (a git checkout) is not stale: dbt records a checksum
    os.utime(sql_file, (2_000_000_000, 2_000_000_000))
    project = Project.load(str(root))
    assert project.validate(connect=False) == []
    project.close()

    sql_file.write_text(sql_file.read_text() + "  and plan <> 'free'\n")
    project = Project.load(str(root))
    try:
        [problem] = project.validate(connect=False)
    finally:
        project.close()
    assert problem.key == "models.active.dbt"
    assert (problem.file, problem.line) == (str(root / "undertow.yml"), line_of(root, "active:"))
    assert "the dbt manifest is stale:" in problem.message
    assert f"{sql_file} changed after dbt wrote {shop / 'target' / 'manifest.json'}" in (
        problem.message
    )
    assert f"run `dbt parse` (or dbt run) in {shop}" in problem.message


def test_offline_validate_checks_mappings_against_dbt_columns(shop: Path) -> None:
    # no warehouse file at all: the columns come from catalog.json / the enforced contract
    root = write_project(
        shop.parent,
        model("active", "model: active_customers") + model("accounts", "model: accounts"),
        """
        good: {model: active, destination: out, mappings: {email: email, seats: {column: seats, cast: string}}}
        typo: {model: active, destination: out, mappings: {email: emial}}
        cast: {model: active, destination: out, mappings: {when: {column: signup_date, cast: bool}}}
        acct: {model: accounts, destination: out, mappings: {country: country, n: {column: seats, cast: int}}}
        """,
    )
    problems = offline_problems(root)
    assert set(problems) == {"syncs.typo", "syncs.cast"}
    assert "unknown column 'emial'; did you mean 'email'?" in problems["syncs.typo"]
    # catalog.json says signup_date is a DATE: a bool cast is refused without a query
    assert "cannot cast column 'signup_date' of type Date to bool" in problems["syncs.cast"]
    assert not (shop.parent / "warehouse.duckdb").exists()


def test_offline_validate_without_catalog_describes_on_the_source(shop: Path) -> None:
    (shop / "target" / "catalog.json").unlink()
    build_customers(shop.parent / "warehouse.duckdb", 5)  # dbt has not built its models
    root = write_project(
        shop.parent,
        model("active", "model: active_customers") + model("accounts", "model: accounts"),
        """
        a: {model: active, destination: out, mappings: {email: email}}
        b: {model: accounts, destination: out, mappings: {country: country}}
        """,
    )
    problems = offline_problems(root)
    # accounts' enforced contract lists its columns; active_customers' documented columns
    # are not all of them, so it is described on the warehouse, where it does not exist yet
    assert set(problems) == {"models.active", "syncs.a"}
    assert "active_customers" in problems["models.active"]


@pytest.mark.parametrize(
    ("warehouse_type", "expected"),
    [
        ("BIGINT", pl.Int64()),
        ("integer", pl.Int64()),
        ("VARCHAR", pl.String()),
        ("character varying(256)", pl.String()),
        ("DOUBLE", pl.Float64()),
        ("BOOLEAN", pl.Boolean()),
        ("DATE", pl.Date()),
        ("TIMESTAMP WITH TIME ZONE", pl.Datetime("us", "UTC")),
        ("timestamp without time zone", pl.Datetime("us")),
        ("DECIMAL(12,2)", pl.Decimal(12, 2)),
        ("NUMBER(38,0)", pl.Int64()),
        ("VARCHAR[]", pl.List(pl.String())),
        ("STRUCT(a INTEGER)", pl.String()),
        (None, pl.String()),
    ],
)
def test_warehouse_types_read_back_as(warehouse_type: str | None, expected: pl.DataType) -> None:
    assert polars_type(warehouse_type) == expected
