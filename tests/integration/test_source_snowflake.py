"""SnowflakeSource against fakesnow's server: the real snowflake-connector-python talking
Snowflake's HTTP protocol to a local emulator (DuckDB underneath), so describe-only
requests, Arrow result chunks and the connector's error classes are the real ones.

Marked ``warehouses`` (own venv: ``make test-warehouses``), except the config, error-format
and missing-driver tests at the top, which need no driver. What fakesnow cannot prove: the
real Snowflake's SQL compiler, its error texts (positions are tested on messages copied
from Snowflake's format), grants and roles, and key-pair login (the key is loaded and
converted here, but fakesnow accepts any credentials). See docs/sources/snowflake.md.
"""

from __future__ import annotations

import datetime as dt
import decimal
import sys
from typing import Any

import pyarrow as pa
import pytest
import sqlglot
from pydantic import ValidationError

from undertow.errors import ModelError, SourceError
from undertow.pipeline.run import projected_sql
from undertow.redact import redact
from undertow.registry import source_class
from undertow.sources.snowflake import SnowflakeConfig, SnowflakeSource, arrow_type

pytestmark = pytest.mark.integration

ODD = ["ID", "e-mail", "First Name", 'dq"uote', "select"]


def make(**config: object) -> SnowflakeSource:
    values: dict[str, object] = {
        "type": "snowflake",
        "account": "acme-prod",
        "user": "UNDERTOW",
        "password": "sf-password-000",
    }
    values.update(config)
    return SnowflakeSource(SnowflakeConfig.model_validate(values), name="sf")


def test_registered_under_its_type() -> None:
    assert source_class("snowflake") is SnowflakeSource


def test_projection_parses_as_snowflake_and_keeps_odd_column_names() -> None:
    sql = projected_sql("select * from analytics.crm.users;", ODD, make().quote_identifier)
    tree = sqlglot.parse_one(sql, read="snowflake")
    assert [c.name for c in tree.selects] == ODD


def test_url_fills_the_keys_and_secrets_are_redacted() -> None:
    config = SnowflakeConfig.model_validate(
        {"url": "snowflake://reader:url-pass-123@acme-prod/ANALYTICS/CRM?warehouse=WH&role=R"}
    )
    assert (config.account, config.user, config.database, config.schema_) == (
        "acme-prod",
        "reader",
        "ANALYTICS",
        "CRM",
    )
    assert (config.warehouse, config.role) == ("WH", "R")
    source = SnowflakeSource(config, name="sf")
    assert "url-pass-123" not in redact("login failed for url-pass-123")
    assert source.connect_kwargs()["session_parameters"]["TIMEZONE"] == "UTC"


def test_config_errors() -> None:
    with pytest.raises(ValidationError, match="account"):
        SnowflakeConfig.model_validate({"user": "u"})
    with pytest.raises(ValidationError, match="not both"):
        SnowflakeConfig.model_validate(
            {"account": "a", "user": "u", "private_key": "k", "private_key_file": "k.p8"}
        )


def test_error_position_from_snowflake_message() -> None:
    sql = "select id,\n  email form users"
    exc = Exception(
        "001003 (42000): SQL compilation error:\n"
        "syntax error line 2 at position 13 unexpected 'users'."
    )
    error = make()._model_error(exc, sql, model="m")
    assert error.position == sql.index("users") + 1


@pytest.mark.parametrize(
    ("code", "precision", "scale", "expected"),
    [
        (0, 38, 0, pa.int64()),
        (0, 12, 2, pa.decimal128(12, 2)),
        (1, None, None, pa.float64()),
        (2, None, None, pa.string()),
        (3, None, None, pa.date32()),
        (8, 0, 9, pa.timestamp("ns")),
        (8, 0, 3, pa.timestamp("us")),
        (7, 0, 9, pa.timestamp("ns", tz="UTC")),
        (6, 0, 6, pa.timestamp("us", tz="UTC")),
        (5, None, None, pa.string()),
        (11, None, None, pa.binary()),
        (12, 0, 9, pa.time64("ns")),
        (13, None, None, pa.bool_()),
    ],
)
def test_type_mapping(code: int, precision: int | None, scale: int | None, expected: Any) -> None:
    assert arrow_type(code, precision, scale) == expected


def test_missing_driver_says_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "snowflake.connector", None)
    with pytest.raises(SourceError, match=r'pip install "undertow\[snowflake\]"'):
        make().check()


# -- against fakesnow ---------------------------------------------------------------------------

FAKESNOW_COPY = "ignore:Arrow output on a DB-API result:UserWarning"


@pytest.fixture
def sf(fakesnow_server: dict[str, Any]) -> SnowflakeSource:
    source = make(
        account=fakesnow_server["account"],
        host=fakesnow_server["host"],
        port=fakesnow_server["port"],
        protocol="http",
        database="ANALYTICS",
        schema="CRM",
    )
    session = source.session()
    try:
        session.execute(
            """CREATE OR REPLACE TABLE users (id NUMBER(38, 0), email VARCHAR,
               amount NUMBER(10, 2), score FLOAT, active BOOLEAN, born DATE,
               seen TIMESTAMP_NTZ, attrs VARIANT)"""
        )
        session.execute(
            """INSERT INTO users
               SELECT seq4(), 'u' || seq4() || '@x.io', seq4() / 4, 0.5, seq4() % 2 = 0,
                      '2000-01-02', '2024-03-01 10:00:00', PARSE_JSON('{"k": 1}')
               FROM TABLE(GENERATOR(ROWCOUNT => 25))"""
        )
    finally:
        session.close()
    return source


@pytest.mark.warehouses
@pytest.mark.filterwarnings(FAKESNOW_COPY)
def test_describe_only_maps_types(sf: SnowflakeSource) -> None:
    schema = sf.describe("SELECT * FROM users;", model="m")
    assert schema.names == ["ID", "EMAIL", "AMOUNT", "SCORE", "ACTIVE", "BORN", "SEEN", "ATTRS"]
    assert schema.field("ID").type == pa.int64()
    assert schema.field("AMOUNT").type == pa.decimal128(10, 2)
    assert schema.field("SCORE").type == pa.float64()
    assert schema.field("ACTIVE").type == pa.bool_()
    assert schema.field("BORN").type == pa.date32()
    assert pa.types.is_timestamp(schema.field("SEEN").type)
    assert schema.field("ATTRS").type == pa.string()


@pytest.mark.warehouses
@pytest.mark.filterwarnings(FAKESNOW_COPY)
def test_extract_streams_bounded_batches_with_the_described_schema(sf: SnowflakeSource) -> None:
    sql = "SELECT * FROM users ORDER BY id"
    reader = sf.extract(sql, model="m", batch_rows=10)
    batches = list(reader)
    assert reader.schema == sf.describe(sql, model="m")
    assert [b.num_rows for b in batches] == [10, 10, 5]
    rows = pa.Table.from_batches(batches).to_pylist()
    assert rows[3]["ID"] == 3 and rows[3]["EMAIL"] == "u3@x.io"
    assert rows[3]["AMOUNT"] == decimal.Decimal("0.75")
    assert rows[0]["BORN"] == dt.date(2000, 1, 2)
    assert rows[0]["SEEN"] == dt.datetime(2024, 3, 1, 10)
    assert rows[0]["ATTRS"].replace(" ", "").replace("\n", "") == '{"k":1}'


@pytest.mark.warehouses
@pytest.mark.filterwarnings(FAKESNOW_COPY)
def test_projected_model_keeps_quoted_names(sf: SnowflakeSource) -> None:
    sql = projected_sql(
        'SELECT id AS "e-mail id", email FROM users', ["e-mail id"], sf.quote_identifier
    )
    assert sf.extract(sql, model="m").read_all().column_names == ["e-mail id"]


@pytest.mark.warehouses
@pytest.mark.filterwarnings(FAKESNOW_COPY)
def test_bad_sql_is_a_model_error(sf: SnowflakeSource) -> None:
    with pytest.raises(ModelError, match="model 'm' on source 'sf' failed"):
        sf.describe("SELECT nope FROM users", model="m")
    with pytest.raises(ModelError):
        sf.extract("SELECT * FROM missing_table", model="m")


@pytest.mark.warehouses
@pytest.mark.filterwarnings(FAKESNOW_COPY)
def test_check_and_empty_result(sf: SnowflakeSource) -> None:
    sf.check()
    reader = sf.extract("SELECT id FROM users WHERE id > 100", model="m")
    assert reader.read_all().num_rows == 0
    assert reader.schema == pa.schema([("ID", pa.int64())])


@pytest.mark.warehouses
def test_key_pair_is_loaded_as_pkcs8_der(tmp_path: Any) -> None:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        pytest.fail(
            "cryptography (a dependency of snowflake-connector-python) is not installed: run "
            "`make test-warehouses`",
            pytrace=False,
        )
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase-1"),
    )
    (tmp_path / "rsa_key.p8").write_bytes(pem)
    source = make(
        private_key_file="rsa_key.p8", private_key_passphrase="passphrase-1", password=None
    )
    source.base_dir = str(tmp_path)
    der = source.connect_kwargs()["private_key"]
    loaded = serialization.load_der_private_key(der, password=None)
    assert loaded.private_numbers() == key.private_numbers()
    bad = make(private_key="not a key", password=None)
    with pytest.raises(SourceError, match="private key cannot be loaded"):
        bad.connect_kwargs()
