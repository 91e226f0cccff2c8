"""The table destinations on the shared write path (``_table.SyncTable``): MySQL/MariaDB on this
machine's real MariaDB, DuckDB on a file. One suite, each backend says how to read its table."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from undertow.destinations.base import Batch, BatchResult, Destination, Operation
from undertow.destinations.duckdb import DuckDBDestination
from undertow.destinations.mysql import MySQLDestination
from undertow.errors import FatalDeliveryError, UndertowError

pytestmark = pytest.mark.integration


@dataclass
class Backend:
    make: Callable[..., Destination]
    sql: Callable[[str], list[tuple[Any, ...]]]
    """Run a statement on the destination database; rows for a query."""
    table: str = "users_out"


@pytest.fixture(params=["mariadb", "duckdb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "mariadb":
        import pymysql

        url: str = request.getfixturevalue("mariadb_database")

        def run(statement: str) -> list[tuple[Any, ...]]:
            from urllib.parse import urlsplit

            parts = urlsplit(url)
            conn = pymysql.connect(
                host=parts.hostname, port=parts.port, user=parts.username, database=parts.path[1:]
            )
            try:
                with conn.cursor() as cur:
                    cur.execute(statement)
                    rows = list(cur.fetchall())
                conn.commit()
                return rows
            finally:
                conn.close()

        def make(**config: Any) -> Destination:
            values = {"type": "mysql", "url": url, "table": "users_out", **config}
            return MySQLDestination(MySQLDestination.Config.model_validate(values), name="db_out")

        yield Backend(make, run)
    else:
        path = tmp_path / "dest.duckdb"

        def run(statement: str) -> list[tuple[Any, ...]]:
            with duckdb.connect(str(path)) as con:
                result = con.execute(statement)
                try:
                    return list(result.fetchall())
                except duckdb.InvalidInputException:
                    return []

        def make(**config: Any) -> Destination:
            values = {"type": "duckdb", "path": str(path), "table": "users_out", **config}
            return DuckDBDestination(DuckDBDestination.Config.model_validate(values), name="db_out")

        yield Backend(make, run)


CREATE = "CREATE TABLE users_out (id BIGINT PRIMARY KEY, email VARCHAR(100) NOT NULL, plan VARCHAR(20), score INT)"


def batch(rows: list[dict[str, Any]], op: Operation, number: int = 0) -> Batch:
    return Batch(
        sync="users_out",
        operation=op,
        number=number,
        idempotency_key=f"r-{number}",
        keys=[str(r["id"]) for r in rows],
        payloads=[orjson.dumps({k: v for k, v in r.items() if k != "id"}).decode() for r in rows],
        identifiers={"id": [r["id"] for r in rows]} if op is not Operation.INSERT else {},
    )


def write(
    dest: Destination, rows: list[dict[str, Any]], op: Operation = Operation.UPSERT
) -> BatchResult:
    async def main() -> BatchResult:
        await dest.open()
        try:
            return await dest.write_batch(batch(rows, op))
        finally:
            await dest.close()

    return asyncio.run(main())


def rows(n: int, version: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": i, "email": f"u{i}@x.com", "plan": f"p{version}", "score": i * 10 + version}
        for i in range(n)
    ]


def table(backend: Backend) -> dict[int, tuple[Any, ...]]:
    return {
        int(r[0]): tuple(r[1:]) for r in backend.sql("SELECT id, email, plan, score FROM users_out")
    }


def test_upsert_twice_then_update_delete_and_a_missing_row(backend: Backend) -> None:
    backend.sql(CREATE)
    dest = backend.make()
    assert write(dest, rows(5)) == BatchResult()
    assert write(dest, rows(5)) == BatchResult()
    assert write(dest, rows(5, version=1)) == BatchResult()
    assert table(backend) == {i: (f"u{i}@x.com", "p1", i * 10 + 1) for i in range(5)}
    update = [{"id": 1, "plan": "gold"}, {"id": 99, "plan": "none"}]
    result = write(dest, update, Operation.UPDATE)
    assert result.rejected == {} and list(result.not_found) == [1]  # skipped, not rejected
    assert "no row with key 99" in result.not_found[1]
    assert table(backend)[1][1] == "gold"
    same = write(dest, [{"id": 1, "plan": "gold"}], Operation.UPDATE)
    assert same == BatchResult(), "an update that changes nothing is not a missing row"
    assert write(dest, [{"id": 2}, {"id": 77}], Operation.DELETE) == BatchResult()
    assert sorted(table(backend)) == [0, 1, 3, 4]


def test_a_bad_row_is_rejected_alone_with_the_database_message(backend: Backend) -> None:
    backend.sql(CREATE)
    good = rows(4)
    good[2]["email"] = None  # NOT NULL
    good[1]["score"] = "not a number"
    result = write(backend.make(), good)
    assert sorted(result.rejected) == [1, 2], result
    assert "refused the row" in result.rejected[2]
    assert sorted(table(backend)) == [0, 3]


def test_unknown_field_and_null_match_are_rejected_before_sending(backend: Backend) -> None:
    backend.sql(CREATE)
    records = rows(3)
    records[0]["colour"] = "red"
    dest = backend.make()
    result = write(dest, records)
    assert list(result.rejected) == [0] and "colour" in result.rejected[0]
    b = batch(rows(2), Operation.UPSERT)
    b.identifiers["id"][1] = None

    async def main() -> BatchResult:
        try:
            return await dest.write_batch(b)
        finally:
            await dest.close()

    nulls = asyncio.run(main())
    assert list(nulls.rejected) == [1] and "null" in nulls.rejected[1]


def test_create_table_from_the_first_batch(backend: Backend) -> None:
    dest = backend.make(create_table=True)
    records = [{"id": 1, "email": "a@x.com", "active": True, "ratio": 0.5, "tags": ["a", "b"]}]
    assert write(dest, records) == BatchResult()
    assert write(dest, [dict(records[0], ratio=0.75)]) == BatchResult()
    got = backend.sql("SELECT id, email, ratio FROM users_out")
    assert [(int(a), b, float(c)) for a, b, c in got] == [(1, "a@x.com", 0.75)]


def test_missing_table_unique_index_and_columns_are_clear(backend: Backend) -> None:
    dest = backend.make()
    with pytest.raises(FatalDeliveryError, match="does not exist") as caught:
        write(dest, rows(1))
    assert "create_table" in (caught.value.hint or "")
    backend.sql(
        "CREATE TABLE users_out (id BIGINT, email VARCHAR(100), plan VARCHAR(20), score INT)"
    )
    with pytest.raises(FatalDeliveryError, match="unique index") as caught:
        write(backend.make(), rows(1))
    assert "CREATE UNIQUE INDEX" in (caught.value.hint or "")

    async def check() -> None:
        try:
            await dest.check(operation=Operation.UPSERT, match=["nope"])  # type: ignore[call-arg]
        finally:
            await dest.close()

    with pytest.raises(UndertowError, match="nope"):
        asyncio.run(check())


def test_mysql_bad_password_is_fatal_and_never_shown(mariadb_database: str) -> None:
    url = mariadb_database.replace("root@", "root:wr0ng-maria-pw@")
    dest = MySQLDestination(
        MySQLDestination.Config.model_validate({"type": "mysql", "url": url, "table": "t"}),
        name="db_out",
    )

    async def check() -> None:
        try:
            await dest.check()
        finally:
            await dest.close()

    with pytest.raises(FatalDeliveryError) as caught:
        asyncio.run(check())
    assert "db_out" in str(caught.value) and "wr0ng-maria-pw" not in str(caught.value)
    assert caught.value.hint


def test_duckdb_casts_mixed_values_and_json_in_the_database(tmp_path: Path) -> None:
    """The Arrow path: a column of mixed numbers and text, a JSON object, an int as text."""
    path = tmp_path / "mixed.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(
            "CREATE TABLE users_out (id BIGINT PRIMARY KEY, note VARCHAR, tags JSON, n INT)"
        )
    values = {"type": "duckdb", "path": str(path), "table": "users_out"}
    dest = DuckDBDestination(DuckDBDestination.Config.model_validate(values), name="db_out")
    mixed = [
        {"id": 1, "note": 7, "tags": {"a": [1]}, "n": "5"},
        {"id": 2, "note": "x", "tags": None, "n": 6},
        {"id": 3, "note": None, "tags": [1, "b"], "n": "not a number"},
    ]
    result = write(dest, mixed)
    assert list(result.rejected) == [2] and "DuckDB refused the row" in result.rejected[2]
    with duckdb.connect(str(path)) as con:
        got = con.execute("SELECT id, note, tags::VARCHAR, n FROM users_out ORDER BY id").fetchall()
    assert got == [(1, "7", '{"a":[1]}', 5), (2, "x", None, 6)]


def test_an_update_sync_to_a_table_skips_the_rows_it_lacks(tmp_path: Path) -> None:
    """Through a project: 3 of 5 rows missing from the table are skipped (counted, not
    toward max_rejected_ratio, not sent again until they change), never rejected."""
    from undertow.project import Project
    from undertow.state.store import RunStatus

    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
        con.execute("create table users as select i as id, 'u' || i || '@x.com' as email "
                    "from range(1, 6) t(i)")  # fmt: skip
    with duckdb.connect(str(tmp_path / "out.duckdb")) as con:
        con.execute("create table contacts (id bigint primary key, email varchar)")
        con.execute("insert into contacts values (1, 'old1@x.com'), (2, 'old2@x.com')")
    (tmp_path / "undertow.yml").write_text(
        """
name: skip
sources:
  wh: {type: duckdb, path: wh.duckdb}
destinations:
  out: {type: duckdb, path: out.duckdb, table: contacts}
models:
  users: {source: wh, sql: "select id, email from users", primary_key: id}
syncs:
  users_out:
    model: users
    destination: out
    mode: update
    match: {id: id}
    mappings: {email: email}
"""
    )
    project = Project.load(str(tmp_path))
    try:
        [first] = project.run(["users_out"])
        assert first.status is RunStatus.SUCCEEDED, first.error
        assert (first.counts["succeeded"], first.counts["skipped"]) == (2, 3)
        assert first.counts["rejected"] == 0
        [skipped] = {e.kind for e in project.errors(first.id)}
        assert skipped == "skipped"
        [second] = project.run(["users_out"])
        assert second.counts["sent"] == 0  # not sent again until the row changes
    finally:
        project.close()
    with duckdb.connect(str(tmp_path / "out.duckdb"), read_only=True) as con:
        got = con.execute("select id, email from contacts order by id").fetchall()
    assert got == [(1, "u1@x.com"), (2, "u2@x.com")]  # update created nothing
