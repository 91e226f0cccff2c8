"""SQLiteSource on real SQLite files made in tmp_path (no sockets)."""

from __future__ import annotations

import datetime as dt
import decimal
import sqlite3
from pathlib import Path

import pyarrow as pa
import pytest

from undertow.errors import ModelError, SourceError
from undertow.pipeline.run import projected_sql
from undertow.registry import source_class
from undertow.sources.sqlite import SQLiteConfig, SQLiteSource

pytestmark = pytest.mark.unit


@pytest.fixture
def project(tmp_path: Path) -> Path:
    conn = sqlite3.connect(tmp_path / "app.db")
    conn.executescript(
        """
        create table typed (
            id integer primary key, big bigint, name varchar(20), note text, score real,
            price decimal(12, 2), amount numeric, flag boolean, day date, at datetime,
            blob blob, anything
        );
        insert into typed values
            (1, 9000000000, 'héllo, "world"', 'x', 1.5, 1234.56, 7, 1, '2024-05-01',
             '2024-05-01 12:30:00.123', x'00ff10', 'free text'),
            (2, null, '', null, null, null, null, 0, null, null, null, 42);
        create table users (id integer primary key, email text);
        """
    )
    conn.executemany(
        "insert into users values (?, ?)", [(i, f"u{i}@example.com") for i in range(1, 5001)]
    )
    conn.commit()
    conn.close()
    return tmp_path


def source(project: Path, **config: object) -> SQLiteSource:
    cfg = SQLiteConfig.model_validate({"type": "sqlite", "path": "app.db", **config})
    return SQLiteSource(cfg, name="app", base_dir=str(project))


def test_declared_types_map_to_arrow(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # the path is relative to the project, not the working directory
    src = source(project)
    src.check()
    sql = "select * from typed order by id"
    schema = src.describe(sql, model="typed")
    assert {f.name: f.type for f in schema} == {
        "id": pa.int64(),
        "big": pa.int64(),
        "name": pa.string(),
        "note": pa.string(),
        "score": pa.float64(),
        "price": pa.decimal128(12, 2),
        "amount": pa.float64(),
        "flag": pa.bool_(),
        "day": pa.date32(),
        "at": pa.timestamp("us"),
        "blob": pa.binary(),
        "anything": pa.string(),  # no declared type, text then integer: a string
    }
    table = src.extract(sql, model="typed").read_all()
    assert table.schema == schema
    first, second = table.to_pylist()
    assert first == {
        "id": 1,
        "big": 9000000000,
        "name": 'héllo, "world"',
        "note": "x",
        "score": 1.5,
        "price": decimal.Decimal("1234.56"),
        "amount": 7.0,
        "flag": True,
        "day": dt.date(2024, 5, 1),
        "at": dt.datetime(2024, 5, 1, 12, 30, 0, 123000),
        "blob": b"\x00\xff\x10",
        "anything": "free text",
    }
    assert second["anything"] == "42"
    assert second["flag"] is False
    assert second["name"] == ""


def test_expressions_are_typed_from_their_values(project: Path) -> None:
    src = source(project)
    sql = "select count(*) as n, avg(id) as mean, max(email) as last, null as empty from users"
    schema = src.describe(sql, model="m")
    assert [f.type for f in schema] == [pa.int64(), pa.float64(), pa.string(), pa.string()]
    assert src.extract(sql, model="m").read_all().to_pylist() == [
        {"n": 5000, "mean": 2500.5, "last": "u9@example.com", "empty": None}
    ]


def test_streams_in_batches_and_registers(project: Path) -> None:
    src = source(project)
    reader = src.extract("select id, email from users", model="users", batch_rows=700)
    sizes = [b.num_rows for b in reader]
    assert sum(sizes) == 5000
    assert max(sizes) <= 700
    assert source_class("sqlite") is SQLiteSource


def test_a_value_that_does_not_fit_names_the_column(project: Path) -> None:
    conn = sqlite3.connect(project / "app.db")
    conn.execute("insert into typed (id, big) values (3, 'not a number')")
    conn.commit()
    conn.close()
    with pytest.raises(ModelError) as info:
        source(project).extract("select id, big from typed", model="m").read_all()
    assert "'big'" in str(info.value)
    assert "not a number" in str(info.value)


def test_projected_sql(project: Path) -> None:
    src = source(project)
    sql = projected_sql('select id, email as "e mail" from users -- note', ["e mail"])
    table = src.extract(sql, model="m").read_all()
    assert table.num_rows == 5000
    assert table.schema.names == ["e mail"]


def test_read_only(project: Path) -> None:
    with pytest.raises(ModelError):
        source(project).extract("delete from users returning id", model="m")
    assert source(project).extract("select count(*) as n from users", model="m").read_all()[
        "n"
    ].to_pylist() == [5000]


@pytest.mark.parametrize(
    ("sql", "position", "words"),
    [
        ("select id,\n  nope from users", 14, "no such column: nope"),
        ("select id frm users where", 15, "syntax error"),
        ("select id from missing_table", 16, "no such table"),
    ],
)
def test_sql_error_has_the_position(project: Path, sql: str, position: int, words: str) -> None:
    src = source(project)
    for call in (src.describe, src.extract):
        with pytest.raises(ModelError) as info:
            call(sql, model="broken")
        assert info.value.position == position
        assert words in str(info.value)


def test_one_statement_only(project: Path) -> None:
    with pytest.raises(ModelError, match="exactly one SELECT"):
        source(project).describe("select 1; select 2", model="m")


def test_missing_file_says_where_it_looked(project: Path) -> None:
    with pytest.raises(SourceError) as info:
        source(project, path="nope.db").check()
    assert str(project / "nope.db") in str(info.value)


def test_closing_early_closes_the_file(project: Path) -> None:
    reader = source(project).extract("select * from users", model="m", batch_rows=10)
    reader.read_next_batch()
    reader.close()
    conn = sqlite3.connect(project / "app.db")  # an exclusive write works: nobody reads
    conn.execute("begin exclusive")
    conn.rollback()
    conn.close()
    with pytest.raises(pa.ArrowException):
        reader.read_next_batch()
