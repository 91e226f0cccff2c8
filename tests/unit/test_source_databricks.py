"""DatabricksSource without Databricks: no emulator of a Databricks SQL warehouse runs here.

What these tests prove: the SQL Undertow sends (the ``LIMIT 0`` describe, the model
projected by the pipeline, the warehouse diff engine's statements) parses as Databricks SQL
with sqlglot and names the right columns; the connection arguments; the error positions
read from Databricks' message format; the config and the missing-driver hint. What they do
not prove: that a SQL warehouse accepts it, or the connector calls (see
docs/sources/databricks.md).
"""

from __future__ import annotations

import sys

import pytest
import sqlglot
from pydantic import ValidationError
from sqlglot import exp

from undertow.errors import SourceError
from undertow.pipeline.diff_warehouse import WarehouseDiffEngine
from undertow.pipeline.run import projected_sql
from undertow.redact import redact
from undertow.registry import source_class
from undertow.sources.databricks import (
    DatabricksConfig,
    DatabricksSource,
    describe_sql,
    model_error,
)

pytestmark = pytest.mark.unit

ODD = ["id", "e-mail", "First Name", "back`tick", "select"]
MODEL = "select *\nfrom main.crm.users -- the users;\n;"


def source(**config: object) -> DatabricksSource:
    values: dict[str, object] = {
        "type": "databricks",
        "server_hostname": "dbc-1234.cloud.databricks.com",
        "http_path": "/sql/1.0/warehouses/abc",
        "access_token": "dapi-secret-token-0001",
    }
    values.update(config)
    return DatabricksSource(DatabricksConfig.model_validate(values), name="dbx")


def test_registered_under_its_type() -> None:
    assert source_class("databricks") is DatabricksSource


def test_describe_sql_is_the_model_with_limit_0() -> None:
    sql = describe_sql(MODEL)
    tree = sqlglot.parse_one(sql, read="databricks")
    limit = tree.args["limit"]
    assert limit.expression.name == "0"
    inner = tree.find(exp.Subquery)
    assert inner is not None
    table = inner.find(exp.Table)
    assert table is not None
    assert (table.catalog, table.db, table.name) == ("main", "crm", "users")
    assert sql.startswith("SELECT * FROM (\nselect *\n")  # the model starts on line 2


def test_projection_parses_as_databricks_and_keeps_odd_column_names() -> None:
    sql = projected_sql(MODEL, ODD, source().quote_identifier)
    tree = sqlglot.parse_one(sql, read="databricks")
    assert [c.name for c in tree.selects] == ODD
    assert "`back``tick`" in sql


def test_warehouse_engine_sql_parses_as_databricks() -> None:
    engine = WarehouseDiffEngine(source(), "users", sql=MODEL, model="m", schema="undertow")
    assert engine.dialect == "databricks"
    sql = engine.render('SELECT m."e-mail" FROM "__ut_model__" AS m', ["id", "e-mail"])
    tree = sqlglot.parse_one(sql, read="databricks")
    assert tree.selects[0].name == "e-mail"


def test_error_position_counts_the_describe_wrapper_line() -> None:
    text = "select id,\n  emial from users"
    exc = Exception(
        "[UNRESOLVED_COLUMN.WITH_SUGGESTION] A column with name `emial` cannot be resolved. "
        "SQLSTATE: 42703; line 3, pos 2"
    )
    error = model_error(exc, text, model="m", source="dbx", line_offset=1)
    assert error.position == text.index("emial") + 1


def test_connect_kwargs_and_schema_alias() -> None:
    kwargs = source(catalog="main", schema="crm").connect_kwargs()
    assert kwargs["server_hostname"] == "dbc-1234.cloud.databricks.com"
    assert kwargs["http_path"] == "/sql/1.0/warehouses/abc"
    assert (kwargs["catalog"], kwargs["schema"]) == ("main", "crm")
    assert kwargs["session_configuration"]["TIMEZONE"] == "UTC"


def test_url_fills_the_fields_and_the_token_is_redacted() -> None:
    config = DatabricksConfig.model_validate(
        {
            "url": "databricks://token:dapi-url-token-77@dbc-9.cloud.databricks.com?http_path=/sql/1.0/warehouses/x"
        }
    )
    assert config.server_hostname == "dbc-9.cloud.databricks.com"
    assert config.http_path == "/sql/1.0/warehouses/x"
    DatabricksSource(config, name="dbx")
    assert "dapi-url-token-77" not in redact("token dapi-url-token-77 rejected")


def test_config_errors() -> None:
    with pytest.raises(ValidationError, match="http_path"):
        DatabricksConfig.model_validate({"server_hostname": "dbc-1.cloud.databricks.com"})
    with pytest.raises(ValidationError, match="without https"):
        DatabricksConfig.model_validate(
            {"server_hostname": "https://dbc-1.cloud.databricks.com", "http_path": "/x"}
        )


def test_missing_driver_says_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "databricks.sql", None)
    with pytest.raises(SourceError, match=r'pip install "undertow\[databricks\]"'):
        source().check()
