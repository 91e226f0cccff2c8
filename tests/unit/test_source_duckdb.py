"""DuckDBSource on real DuckDB files made in tmp_path (no sockets)."""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from undertow.errors import ModelError, SourceError
from undertow.sources.duckdb import DuckDBConfig, DuckDBSource

pytestmark = pytest.mark.unit


@pytest.fixture
def project(tmp_path: Path) -> Path:
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        con.execute(
            "create table users as select range as id, 'user' || range as name from range(1000)"
        )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "plans.csv").write_text("plan,price\nfree,0\npro,12.5\n")
    pq.write_table(
        pa.table({"id": [1, 2, 3], "country": ["fr", "de", None]}),
        tmp_path / "data" / "countries.parquet",
    )
    return tmp_path


def source(project: Path, **config: object) -> DuckDBSource:
    cfg = DuckDBConfig.model_validate({"type": "duckdb", "path": "warehouse.duckdb", **config})
    return DuckDBSource(cfg, name="warehouse", base_dir=str(project))


def test_check_and_extract_from_relative_database_file(project: Path) -> None:
    src = source(project)
    src.check()
    with src.extract("select id, name from users order by id", model="users") as reader:
        table = reader.read_all()
    assert table.num_rows == 1000
    assert table.schema.names == ["id", "name"]
    assert table.column("name")[999].as_py() == "user999"


def test_models_read_csv_and_parquet_by_paths_relative_to_the_project(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")  # the process's working directory must not matter
    src = source(project, path=":memory:")
    sql = (
        "select c.id, c.country, p.plan, p.price from 'data/*.parquet' c "
        "join read_csv('data/plans.csv') p on (c.id = 1 and p.plan = 'pro') order by c.id"
    )
    table = src.extract(sql, model="m").read_all()
    assert table.to_pylist() == [{"id": 1, "country": "fr", "plan": "pro", "price": 12.5}]
    assert src.describe(sql, model="m").names == ["id", "country", "plan", "price"]


def test_types(project: Path) -> None:
    sql = """
        select 12.345::decimal(10, 3) as amount,
               timestamptz '2024-05-01 12:30:00+02' as at,
               date '2024-05-01' as day,
               [1, 2, null] as numbers,
               {'a': 1, 'b': 'x'} as nested,
               null as nothing
    """
    src = source(project)
    schema = src.describe(sql, model="types")
    assert schema.field("amount").type == pa.decimal128(10, 3)
    assert schema.field("at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("day").type == pa.date32()
    assert schema.field("numbers").type == pa.list_(pa.int32())
    assert pa.types.is_struct(schema.field("nested").type)
    assert schema.field("nothing").type == pa.null()
    row = src.extract(sql, model="types").read_all().to_pylist()[0]
    assert row["amount"] == decimal.Decimal("12.345")
    assert row["at"] == dt.datetime(2024, 5, 1, 10, 30, tzinfo=dt.UTC)
    assert row["day"] == dt.date(2024, 5, 1)
    assert row["numbers"] == [1, 2, None]
    assert row["nested"] == {"a": 1, "b": "x"}
    assert row["nothing"] is None


def test_streams_in_several_batches_and_closes_the_database(project: Path) -> None:
    src = source(project)
    reader = src.extract("select * from range(10000)", model="m", batch_rows=1000)
    sizes = [batch.num_rows for batch in reader]
    assert sum(sizes) == 10000
    assert len(sizes) >= 5
    assert max(sizes) <= 2048  # DuckDB's batch size is approximate (vector-aligned)
    # Exhausted: the file is closed, so a writer can open it.
    with duckdb.connect(str(project / "warehouse.duckdb")) as con:
        con.execute("insert into users values (5000, 'new')")


def test_closing_a_reader_early_closes_the_connection(project: Path) -> None:
    src = source(project)
    reader = src.extract("select * from range(1000000)", model="m", batch_rows=1000)
    assert reader.read_next_batch().num_rows > 0
    reader.close()
    with duckdb.connect(str(project / "warehouse.duckdb")) as con:  # no lock left behind
        con.execute("insert into users values (5001, 'new')")


@pytest.mark.parametrize(
    ("sql", "position", "words"),
    [
        ("select id,\n  nope from users", 14, "nope"),
        ("select 'é€', nope from users", 14, "nope"),
        ("select id from users where", 22, "syntax error"),
    ],
)
def test_sql_error_has_the_character_position(
    project: Path, sql: str, position: int, words: str
) -> None:
    src = source(project)
    for call in (src.describe, src.extract):
        with pytest.raises(ModelError) as info:
            call(sql, model="active_users")
        err = info.value
        assert err.position == position
        assert err.model == "active_users"
        assert err.source == "warehouse"
        assert words in str(err)
        assert f"at character {position}" in str(err)


def test_a_model_must_be_one_select(project: Path) -> None:
    with pytest.raises(ModelError, match="exactly one SELECT"):
        source(project).describe("delete from users; select 1", model="m")


def test_runtime_error_in_the_first_batch_is_a_model_error(project: Path) -> None:
    with pytest.raises(ModelError, match="Could not convert"):
        source(project).extract("select ('x' || range)::int from range(10)", model="m")


def test_missing_database_file_says_where_it_looked(project: Path) -> None:
    src = source(project, path="nope/warehouse.duckdb")
    with pytest.raises(SourceError) as info:
        src.check()
    message = str(info.value)
    assert str(project / "nope" / "warehouse.duckdb") in message
    assert "hint:" in message
    assert not (project / "nope").exists()  # nothing was created


def test_attach_and_settings(project: Path) -> None:
    with duckdb.connect(str(project / "crm.duckdb")) as con:
        con.execute("create table accounts as select 42 as id")
    src = source(project, attach={"crm": "crm.duckdb"}, settings={"threads": 1})
    sql = "select id, current_setting('threads') as threads from crm.accounts"
    assert src.extract(sql, model="m").read_all().to_pylist() == [{"id": 42, "threads": 1}]


def test_unknown_setting_is_a_source_error(project: Path) -> None:
    with pytest.raises(SourceError, match="not_a_setting"):
        source(project, settings={"not_a_setting": 1}).check()
