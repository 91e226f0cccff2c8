"""BigQuerySource without BigQuery: no emulator of BigQuery runs here.

What these tests prove: the SQL Undertow sends (the model projected by the pipeline, the
warehouse diff engine's statements) parses as BigQuery SQL with sqlglot and names the
right columns, however odd their names; the dry-run job options; the type mapping of the
documented types; the error positions read from BigQuery's message format; the config
and its errors; the missing-driver hint. What they do not prove: that BigQuery accepts
it, or the driver calls (query, dry run, Storage Read API) - see docs/sources/bigquery.md.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pyarrow as pa
import pytest
import sqlglot
from pydantic import ValidationError
from sqlglot import exp

from undertow.errors import SourceError
from undertow.pipeline.diff_warehouse import WarehouseDiffEngine, row_hash_sql
from undertow.pipeline.run import projected_sql
from undertow.redact import redact
from undertow.registry import source_class
from undertow.sources.bigquery import BigQueryConfig, BigQuerySource, arrow_type, model_error

pytestmark = pytest.mark.unit

ODD = ["id", "e-mail", "First Name", "back`tick", "naïve", "select"]


def source(**config: object) -> BigQuerySource:
    values: dict[str, object] = {"type": "bigquery", "project": "acme-prod", "dataset": "crm"}
    values.update(config)
    return BigQuerySource(BigQueryConfig.model_validate(values), name="bq")


def test_registered_under_its_type() -> None:
    assert source_class("bigquery") is BigQuerySource


def test_projection_parses_as_bigquery_and_keeps_odd_column_names() -> None:
    sql = projected_sql(
        "select * from `acme-prod.crm.users` -- trailing comment;", ODD, source().quote_identifier
    )
    tree = sqlglot.parse_one(sql, read="bigquery")
    assert [c.name for c in tree.selects] == ODD
    table = tree.find(exp.Table)
    assert table is not None
    assert (table.catalog, table.db, table.name) == ("acme-prod", "crm", "users")


def test_quote_identifier_escapes_backticks() -> None:
    quoted = source().quote_identifier("back`tick")
    assert quoted.startswith("`")
    column = sqlglot.parse_one(f"SELECT {quoted} FROM t", read="bigquery").selects[0]
    assert column.name == "back`tick"


def test_describe_is_a_dry_run_that_bills_nothing() -> None:
    options = source(maximum_bytes_billed=10**9).job_options(dry_run=True)
    assert options["dry_run"] is True
    assert options["use_query_cache"] is False
    assert options["default_dataset"] == "acme-prod.crm"
    assert options["maximum_bytes_billed"] == 10**9
    assert source().job_options(dry_run=False)["dry_run"] is False


def test_warehouse_engine_sql_parses_as_bigquery() -> None:
    src = source()
    engine = WarehouseDiffEngine(src, "users to crm", sql="select * from crm.users;", model="m")
    assert engine.dialect == "bigquery"
    template = f'SELECT m."id", {row_hash_sql(["e-mail", "First Name"], "m")} AS _ut_hash FROM "__ut_model__" AS m'
    sql = engine.render(template, ["id", "e-mail", "First Name"])
    tree = sqlglot.parse_one(sql, read="bigquery")
    assert "`e-mail`" in sql
    assert tree.find(exp.MD5) is not None or "MD5" in sql.upper()


@pytest.mark.parametrize(
    ("kind", "mode", "expected"),
    [
        ("INTEGER", "NULLABLE", pa.int64()),
        ("FLOAT", "NULLABLE", pa.float64()),
        ("NUMERIC", "NULLABLE", pa.decimal128(38, 9)),
        ("BIGNUMERIC", "NULLABLE", pa.decimal256(76, 38)),
        ("BOOLEAN", "REQUIRED", pa.bool_()),
        ("STRING", "NULLABLE", pa.string()),
        ("BYTES", "NULLABLE", pa.binary()),
        ("DATE", "NULLABLE", pa.date32()),
        ("DATETIME", "NULLABLE", pa.timestamp("us")),
        ("TIMESTAMP", "NULLABLE", pa.timestamp("us", tz="UTC")),
        ("TIME", "NULLABLE", pa.time64("us")),
        ("JSON", "NULLABLE", pa.string()),
        ("GEOGRAPHY", "NULLABLE", pa.string()),
        ("STRING", "REPEATED", pa.list_(pa.string())),
    ],
)
def test_type_mapping(kind: str, mode: str, expected: pa.DataType) -> None:
    assert arrow_type(SimpleNamespace(name="c", field_type=kind, mode=mode, fields=())) == expected


def test_struct_type_mapping() -> None:
    inner = SimpleNamespace(name="city", field_type="STRING", mode="NULLABLE", fields=())
    field = SimpleNamespace(name="address", field_type="RECORD", mode="REPEATED", fields=[inner])
    assert arrow_type(field) == pa.list_(pa.struct([pa.field("city", pa.string())]))


def test_error_position_from_bigquery_message() -> None:
    sql = "select id,\n  email form users"
    exc = Exception('Syntax error: Expected end of input but got identifier "users" at [2:14]')
    error = model_error(exc, sql, model="m", source="bq")
    assert error.position == sql.index("users") + 1
    assert "at character" in str(error)


def test_access_denied_says_which_role_to_grant() -> None:
    exc = SimpleNamespace(message="Access Denied: Table acme-prod:crm.users", code=403)
    error = model_error(exc, "select 1", model="m", source="bq")  # type: ignore[arg-type]
    assert "roles/bigquery.dataViewer" in str(error)


def test_url_fills_project_dataset_and_location() -> None:
    config = BigQueryConfig.model_validate({"url": "bigquery://acme-prod/crm?location=EU"})
    assert (config.project, config.dataset, config.location) == ("acme-prod", "crm", "EU")


def test_credentials_json_must_be_a_service_account_key() -> None:
    with pytest.raises(ValidationError, match="not JSON"):
        BigQueryConfig.model_validate({"project": "p", "credentials_json": "{oops"})
    with pytest.raises(ValidationError, match="not both"):
        BigQueryConfig.model_validate(
            {"project": "p", "credentials_file": "k.json", "credentials_json": "{}"}
        )


def test_private_key_is_redacted() -> None:
    key = {"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEsecret"}
    source(credentials_json=json.dumps(key))
    assert "MIIEsecret" not in redact("failed with -----BEGIN PRIVATE KEY-----\nMIIEsecret")


def test_missing_driver_says_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "google.cloud.bigquery", None)
    with pytest.raises(SourceError, match=r'pip install "undertow\[bigquery\]"'):
        source().describe("select 1", model="m")
