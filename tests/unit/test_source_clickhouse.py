"""ClickHouseSource: the SQL it generates (parsed by sqlglot's ClickHouse dialect, no engine
needed), and - marked ``warehouses``, run by ``make test-warehouses`` - the real ClickHouse
engine in-process through chDB (describe, extract, types, errors). The clickhouse-connect
(server) path shares the SQL and the type mapping but its network calls are not tested here.
"""

from __future__ import annotations

import datetime as dt
import decimal
import importlib
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlglot
from pydantic import ValidationError

from undertow.errors import ModelError, SourceError
from undertow.pipeline.run import projected_sql
from undertow.registry import source_class
from undertow.sources.clickhouse import (
    ClickHouseConfig,
    ClickHouseSource,
    column,
    describe_sql,
    extract_sql,
)

pytestmark = pytest.mark.unit

ODD = ["id", "e-mail", "First Name", 'dq"uote', "select"]


def server() -> ClickHouseSource:
    config = ClickHouseConfig.model_validate(
        {"type": "clickhouse", "host": "ch.internal", "password": "ch-secret-pass"}
    )
    return ClickHouseSource(config, name="ch")


def test_registered_under_its_type() -> None:
    assert source_class("clickhouse") is ClickHouseSource


def test_projection_parses_as_clickhouse_and_keeps_odd_column_names() -> None:
    sql = projected_sql("select * from crm.users;", ODD, server().quote_identifier)
    tree = sqlglot.parse_one(sql, read="clickhouse")
    assert [c.name for c in tree.selects] == ODD


def test_extract_sql_converts_what_arrow_cannot_hold() -> None:
    columns = [
        column("id", "UInt64"),
        column("at", "DateTime('Europe/Paris')"),
        column("u", "Nullable(UUID)"),
        column("e-mail", "LowCardinality(Nullable(String))"),
    ]
    sql = extract_sql("select * from crm.users", columns)
    tree = sqlglot.parse_one(sql, read="clickhouse")
    assert [c.alias_or_name for c in tree.selects] == ["id", "at", "u", "e-mail"]
    assert "toDateTime64(\"at\", 6, 'UTC')" in sql
    assert 'toString("u")' in sql


def test_describe_sql_wraps_the_model() -> None:
    assert describe_sql("select 1 as a;\n") == "DESCRIBE (\nselect 1 as a\n)"


@pytest.mark.parametrize(
    ("ch_type", "expected"),
    [
        ("UInt64", pa.uint64()),
        ("Nullable(Int32)", pa.int32()),
        ("LowCardinality(Nullable(String))", pa.string()),
        ("Float64", pa.float64()),
        ("Bool", pa.bool_()),
        ("Decimal(10, 2)", pa.decimal128(10, 2)),
        ("Decimal64(4)", pa.decimal128(18, 4)),
        ("Decimal(76, 10)", pa.string()),
        ("Date32", pa.date32()),
        ("DateTime", pa.timestamp("us", tz="UTC")),
        ("DateTime64(3, 'UTC')", pa.timestamp("us", tz="UTC")),
        ("DateTime64(9)", pa.timestamp("ns", tz="UTC")),
        ("Array(Nullable(Int64))", pa.list_(pa.int64())),
        ("UUID", pa.string()),
        ("Map(String, UInt8)", pa.string()),
        ("Int128", pa.string()),
        ("Enum8('a' = 1)", pa.string()),
    ],
)
def test_type_mapping(ch_type: str, expected: pa.DataType) -> None:
    assert column("c", ch_type).arrow == expected


def test_config_url_and_errors() -> None:
    config = ClickHouseConfig.model_validate(
        {"url": "clickhouses://reader:pw%40x@ch.example.com:9440/crm"}
    )
    assert (config.host, config.port, config.user, config.database) == (
        "ch.example.com",
        9440,
        "reader",
        "crm",
    )
    assert config.secure is True
    assert config.password is not None and config.password.get_secret_value() == "pw@x"
    with pytest.raises(ValidationError, match="not both"):
        ClickHouseConfig.model_validate({"host": "h", "path": ":memory:"})
    with pytest.raises(ValidationError, match="set `url` or `host`"):
        ClickHouseConfig.model_validate({})


def test_missing_driver_says_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "clickhouse_connect", None)
    with pytest.raises(SourceError, match=r'pip install "undertow\[clickhouse\]"'):
        server().check()


# -- the real ClickHouse engine, in-process (chDB) ---------------------------------------------


def _chdb() -> Any:
    try:
        return importlib.import_module("chdb")
    except ImportError:
        pytest.fail(
            'chdb is not installed: run `make test-warehouses`, or `pip install -e ".[dev,'
            'clickhouse,warehouse-emulators]"` in this virtualenv',
            pytrace=False,
        )


@pytest.fixture
def chdb_source(tmp_path: Path) -> ClickHouseSource:
    _chdb()
    src = ClickHouseSource(
        ClickHouseConfig.model_validate({"type": "clickhouse", "path": str(tmp_path / "ch")}),
        name="ch",
    )
    session = src.session()
    try:
        session.execute(
            """CREATE TABLE users (
                 id UInt64, email Nullable(String), seen DateTime, at64 DateTime64(3),
                 uid UUID, amount Decimal(10, 2), tags Array(String), attrs Map(String, Int32),
                 plan Enum8('free' = 1, 'pro' = 2), day Date
               ) ENGINE = MergeTree ORDER BY id"""
        )
        session.execute(
            """INSERT INTO users SELECT number, if(number = 1, NULL, concat('u', toString(number),
                 '@x.io')), toDateTime('2024-03-01 10:00:00', 'UTC'),
                 toDateTime64('2024-03-01 10:00:00.125', 3, 'UTC'),
                 toUUID('00000000-0000-0000-0000-00000000000' || toString(number % 10)),
                 toDecimal64(number, 2) / 4, ['a', 'b'], map('k', toInt32(number)),
                 if(number % 2 = 0, 'free', 'pro'), toDate('2024-03-02')
               FROM numbers(25)"""
        )
    finally:
        session.close()
    return src


@pytest.mark.warehouses
def test_chdb_describe_reads_no_rows_and_maps_types(chdb_source: ClickHouseSource) -> None:
    schema = chdb_source.describe("SELECT * FROM users", model="m")
    assert schema == pa.schema(
        [
            ("id", pa.uint64()),
            ("email", pa.string()),
            ("seen", pa.timestamp("us", tz="UTC")),
            ("at64", pa.timestamp("us", tz="UTC")),
            ("uid", pa.string()),
            ("amount", pa.decimal128(10, 2)),
            ("tags", pa.list_(pa.string())),
            ("attrs", pa.string()),
            ("plan", pa.string()),
            ("day", pa.date32()),
        ]
    )


@pytest.mark.warehouses
def test_chdb_extract_streams_bounded_batches_with_the_described_schema(
    chdb_source: ClickHouseSource,
) -> None:
    sql = "SELECT * FROM users ORDER BY id;"
    reader = chdb_source.extract(sql, model="m", batch_rows=10)
    batches = list(reader)
    assert reader.schema == chdb_source.describe(sql, model="m")
    assert sum(b.num_rows for b in batches) == 25
    assert max(b.num_rows for b in batches) <= 10
    rows = pa.Table.from_batches(batches).to_pylist()
    assert rows[0]["email"] == "u0@x.io" and rows[1]["email"] is None
    assert rows[0]["seen"] == dt.datetime(2024, 3, 1, 10, tzinfo=dt.UTC)
    assert rows[0]["at64"] == dt.datetime(2024, 3, 1, 10, 0, 0, 125000, tzinfo=dt.UTC)
    assert rows[3]["uid"] == "00000000-0000-0000-0000-000000000003"
    assert rows[3]["amount"] == decimal.Decimal("0.75")
    assert rows[2]["attrs"] == "{'k':2}"
    assert rows[1]["plan"] == "pro"


@pytest.mark.warehouses
def test_chdb_syntax_error_has_the_position_in_the_model(chdb_source: ClickHouseSource) -> None:
    sql = "SELECT id\nFROM users WHERE id >> 1"
    with pytest.raises(ModelError) as caught:
        chdb_source.describe(sql, model="m")
    assert caught.value.position is not None
    assert sql[caught.value.position - 1 :].startswith(">")


@pytest.mark.warehouses
def test_chdb_unknown_column_is_a_model_error(chdb_source: ClickHouseSource) -> None:
    with pytest.raises(ModelError, match="nope"):
        chdb_source.extract("SELECT nope FROM users", model="m")


@pytest.mark.warehouses
def test_chdb_check_and_empty_result(chdb_source: ClickHouseSource) -> None:
    chdb_source.check()
    reader = chdb_source.extract("SELECT id FROM users WHERE id > 100", model="m")
    assert reader.read_all().num_rows == 0
    assert reader.schema == pa.schema([("id", pa.uint64())])
