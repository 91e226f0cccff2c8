"""PostgresSource against the real PostgreSQL on this machine (the pg_database fixture)."""

from __future__ import annotations

import datetime as dt
import decimal
import socket
import uuid

import psycopg
import pyarrow as pa
import pytest
from pydantic import SecretStr

from tests.conftest import PG_HOST, PG_PORT
from undertow.errors import ModelError, SourceError
from undertow.sources.postgres import PostgresConfig, PostgresSource

pytestmark = pytest.mark.integration

TYPES_SQL = """
    select id, small, big, real4, double8, price, ratio, label, code, fixed, guid, flag, day,
           at, at_tz, doc, docb, ints, texts, nums, blob, span
    from typed order by id
"""


def make_source(url: str, **config: object) -> PostgresSource:
    cfg = PostgresConfig.model_validate({"type": "postgres", "url": url, **config})
    return PostgresSource(cfg, name="pg")


@pytest.fixture
def typed(pg_database: str) -> str:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(
            """
            create table typed (
                id int4 primary key, small int2, big int8, real4 float4, double8 float8,
                price numeric(12, 2), ratio numeric, label text, code varchar(10),
                fixed char(3), guid uuid, flag bool, day date, at timestamp,
                at_tz timestamptz, doc json, docb jsonb, ints int4[], texts text[],
                nums numeric(6, 1)[], blob bytea, span interval
            );
            insert into typed values
              (1, 7, 9000000000, 1.5, 2.25, 1234.56, 3.14159265358979323846, 'héllo, "world"',
               'ab', 'x', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', true, '2024-05-01',
               '2024-05-01 12:30:00.123456', '2024-05-01 12:30:00+02', '{"a": [1, 2]}',
               '{"b": null}', '{1, null, 3}', '{"a,b", "", null}', '{1.5, 2.0}',
               '\\x00ff10', '1 day 2 hours'),
              (2, null, null, null, null, null, null, '', null, null, null, false, null,
               null, null, null, null, '{}', null, null, null, null)
            """
        )
    return pg_database


def test_types(typed: str) -> None:
    src = make_source(typed)
    schema = src.describe(TYPES_SQL, model="typed")
    expected = {
        "id": pa.int32(),
        "small": pa.int16(),
        "big": pa.int64(),
        "real4": pa.float32(),
        "double8": pa.float64(),
        "price": pa.decimal128(12, 2),
        "ratio": pa.string(),
        "label": pa.string(),
        "code": pa.string(),
        "fixed": pa.string(),
        "guid": pa.string(),
        "flag": pa.bool_(),
        "day": pa.date32(),
        "at": pa.timestamp("us"),
        "at_tz": pa.timestamp("us", tz="UTC"),
        "doc": pa.string(),
        "docb": pa.string(),
        "ints": pa.list_(pa.int32()),
        "texts": pa.list_(pa.string()),
        "nums": pa.list_(pa.decimal128(6, 1)),
        "blob": pa.binary(),
        "span": pa.string(),
    }
    assert {f.name: f.type for f in schema} == expected
    table = src.extract(TYPES_SQL, model="typed").read_all()
    assert table.schema == schema
    first, second = table.to_pylist()
    assert first == {
        "id": 1,
        "small": 7,
        "big": 9000000000,
        "real4": 1.5,
        "double8": 2.25,
        "price": decimal.Decimal("1234.56"),
        "ratio": "3.14159265358979323846",
        "label": 'héllo, "world"',
        "code": "ab",
        "fixed": "x  ",
        "guid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "flag": True,
        "day": dt.date(2024, 5, 1),
        "at": dt.datetime(2024, 5, 1, 12, 30, 0, 123456),
        "at_tz": dt.datetime(2024, 5, 1, 10, 30, tzinfo=dt.UTC),
        "doc": '{"a": [1, 2]}',
        "docb": '{"b": null}',
        "ints": [1, None, 3],
        "texts": ["a,b", "", None],
        "nums": [decimal.Decimal("1.5"), decimal.Decimal("2.0")],
        "blob": b"\x00\xff\x10",
        "span": "P1DT2H",
    }
    assert second["label"] == ""  # an empty string is not NULL
    assert second["ints"] == []
    assert all(second[k] is None for k in ("small", "price", "guid", "day", "at_tz", "texts"))


def test_streams_many_batches(pg_database: str) -> None:
    src = make_source(pg_database)
    sql = "select i, md5(i::text) as h, now() as at from generate_series(1, 50000) i"
    reader = src.extract(sql, model="series", batch_rows=4000)
    sizes = [batch.num_rows for batch in reader]
    assert sum(sizes) == 50000
    assert len(sizes) >= 12
    assert max(sizes) <= 4000


def test_extract_runs_in_a_read_only_transaction(pg_database: str) -> None:
    src = make_source(pg_database)
    sql = "select current_setting('transaction_read_only') as ro"
    assert src.extract(sql, model="m").read_all().to_pylist() == [{"ro": "on"}]
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("create sequence s")
    with pytest.raises(ModelError, match="read-only transaction"):
        src.extract("select nextval('s') as n", model="m")


def test_connections_are_closed(pg_database: str) -> None:
    src = make_source(pg_database)
    src.check()
    src.describe("select 1 as x", model="m")
    src.extract("select 1 as x", model="m").read_all()
    early = src.extract("select i from generate_series(1, 200000) i", model="m", batch_rows=100)
    early.read_next_batch()
    early.close()
    dbname = pg_database.rsplit("/", 1)[1]
    with psycopg.connect(pg_database, autocommit=True) as conn:
        (count,) = conn.execute(
            "select count(*) from pg_stat_activity where datname = %s and pid <> pg_backend_pid()",
            (dbname,),
        ).fetchone() or (None,)
    assert count == 0


@pytest.mark.parametrize(
    ("sql", "position", "words"),
    [
        ("select id,\n  nope from typed", 14, 'column "nope" does not exist'),
        ("select id from typed where", 27, "syntax error"),
        ("select 'é€', nope from typed;", 14, 'column "nope" does not exist'),
    ],
)
def test_sql_error_has_the_position(typed: str, sql: str, position: int, words: str) -> None:
    src = make_source(typed)
    for call in (src.describe, src.extract):
        with pytest.raises(ModelError) as info:
            call(sql, model="broken")
        assert info.value.position == position
        assert info.value.model == "broken"
        assert words in str(info.value)


def test_runtime_error_is_a_model_error(pg_database: str) -> None:
    with pytest.raises(ModelError, match="division by zero"):
        make_source(pg_database).extract(
            "select 1 / (i - 3) as x from generate_series(1, 5) i", model="m"
        )


def test_bad_user_message_names_the_user_not_the_password(pg_database: str) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    url = f"postgresql://nobody_{uuid.uuid4().hex[:6]}:{password}@{PG_HOST}:{PG_PORT}/test"
    with pytest.raises(SourceError) as info:
        make_source(url).check()
    message = str(info.value)
    assert "nobody_" in message
    assert password not in message
    assert password not in repr(info.value.args)


def test_password_field_never_appears(pg_database: str) -> None:
    password = f"secret-{uuid.uuid4().hex}"
    cfg = PostgresConfig(
        host=PG_HOST, port=PG_PORT, user="ghost_user", password=SecretStr(password), database="x"
    )
    with pytest.raises(SourceError) as info:
        PostgresSource(cfg, name="pg").check()
    assert "ghost_user" in str(info.value)
    assert password not in str(info.value)


def test_unreachable_port_is_a_clear_source_error() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = make_source(f"postgresql://postgres@127.0.0.1:{port}/test", connect_timeout=2)
    with pytest.raises(SourceError) as info:
        src.check()
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "pg_isready" in message


def test_schema_search_path(pg_database: str) -> None:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("create schema crm; create table crm.accounts as select 7 as id")
    src = make_source(pg_database, schema_search_path=["crm", "public"])
    assert src.extract("select id from accounts", model="m").read_all().to_pylist() == [{"id": 7}]


def test_config_needs_url_or_host() -> None:
    with pytest.raises(ValueError, match="url"):
        PostgresConfig.model_validate({"type": "postgres"})


SAFE_SQL = """
    select id, small, big, real4, double8, price, ratio, label, code, fixed, flag, day, at,
           at_tz, doc, docb, ints, texts, blob
    from typed order by id
"""


def test_adbc_and_copy_read_the_same_rows(typed: str) -> None:
    adbc = make_source(typed, reader="adbc")
    copy = make_source(typed, reader="copy")
    via_adbc = adbc.extract(SAFE_SQL, model="typed").read_all()
    via_copy = copy.extract(SAFE_SQL, model="typed").read_all()
    assert via_adbc.schema == adbc.describe(SAFE_SQL, model="typed")
    assert via_adbc.to_pylist() == via_copy.to_pylist()
    assert via_adbc.column("price").type == pa.decimal128(12, 2)
    assert via_adbc.column("ratio").to_pylist()[0] == "3.14159265358979323846"


def test_adbc_nan_in_a_decimal_column_is_a_model_error(pg_database: str) -> None:
    with pytest.raises(ModelError, match="cast the column"):
        make_source(pg_database, reader="adbc").extract(
            "select 'NaN'::numeric(6, 2) as x", model="m"
        )
