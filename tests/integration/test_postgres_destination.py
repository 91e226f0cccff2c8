"""The PostgreSQL destination against the real server on this machine (never skipped)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import orjson
import psycopg
import pytest
from pydantic import SecretStr

from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.postgres import PostgresConfig, PostgresDestination, infer_type
from undertow.errors import FatalDeliveryError, RetryableError
from undertow.testing.server import free_port

pytestmark = pytest.mark.integration

T = TypeVar("T")


def make_batch(
    records: list[dict[str, Any]],
    operation: Operation = Operation.UPSERT,
    *,
    match: tuple[str, ...] = ("id",),
    number: int = 1,
) -> Batch:
    return Batch(
        sync="users_to_pg",
        operation=operation,
        number=number,
        idempotency_key=f"k{number}",
        keys=[str(r.get("id")) for r in records],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={m: [r.get(m) for r in records] for m in match},
    )


def make_dest(url: str, table: str = "users", **config: Any) -> PostgresDestination:
    return PostgresDestination(PostgresConfig(url=url, table=table, **config), name="pg")


def run(dest: PostgresDestination, action: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await action()
        finally:
            await dest.close()

    return asyncio.run(main())


def write(dest: PostgresDestination, *batches: Batch) -> list[BatchResult]:
    async def all_batches() -> list[BatchResult]:
        return [await dest.write_batch(b) for b in batches]

    return run(dest, all_batches)


def sql(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def db(pg_database: str) -> str:
    sql(
        pg_database,
        "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, seats integer,"
        " meta jsonb, signed_up timestamptz)",
    )
    return pg_database


def rows(url: str, table: str = "users") -> list[tuple[Any, ...]]:
    return sql(url, f"SELECT id, email, seats FROM {table} ORDER BY id")


def test_upsert_inserts_then_updates_only_the_sent_fields(db: str) -> None:
    dest = make_dest(db)
    first = make_batch(
        [
            {"id": 1, "email": "a@x.io", "seats": 3, "meta": {"tier": ["gold"]}},
            {"id": 2, "email": "b@x.io", "seats": 5, "signed_up": "2024-05-01T10:00:00+02:00"},
        ]
    )
    second = make_batch([{"id": 1, "email": "a2@x.io"}, {"id": 3, "email": "c@x.io"}], number=2)
    results = write(dest, first, second)

    assert results == [BatchResult(), BatchResult()]
    assert rows(db) == [(1, "a2@x.io", 3), (2, "b@x.io", 5), (3, "c@x.io", None)]
    meta, signed_up = sql(db, "SELECT meta, signed_up::text FROM users WHERE id = 1")[0]
    assert meta == {"tier": ["gold"]}
    assert signed_up is None
    [(when,)] = sql(db, "SELECT signed_up AT TIME ZONE 'UTC' FROM users WHERE id = 2")
    assert when.isoformat() == "2024-05-01T08:00:00"


def test_insert_rejects_only_the_duplicate_rows(db: str) -> None:
    sql(db, "INSERT INTO users (id, email) VALUES (2, 'old@x.io')")
    dest = make_dest(db)
    [result] = write(
        dest,
        make_batch(
            [{"id": 1, "email": "a@x.io"}, {"id": 2, "email": "b@x.io"}, {"id": 3, "email": "c"}],
            Operation.INSERT,
        ),
    )
    assert list(result.rejected) == [1]
    assert "duplicate key" in result.rejected[1]
    assert "already exists" in result.rejected[1]
    assert rows(db) == [(1, "a@x.io", None), (2, "old@x.io", None), (3, "c", None)]


def test_a_bad_value_rejects_its_row_and_the_others_are_written(db: str) -> None:
    dest = make_dest(db)
    [result] = write(
        dest,
        make_batch(
            [
                {"id": 1, "email": "a@x.io", "seats": 2},
                {"id": 2, "email": "b@x.io", "seats": "lots"},
                {"id": 3, "email": None},
                {"id": 4, "email": "d@x.io", "signed_up": "yesterday-ish"},
                {"id": 5, "email": "e@x.io", "seats": 9},
            ]
        ),
    )
    assert sorted(result.rejected) == [1, 2, 3]
    assert 'invalid input syntax for type integer: "lots"' in result.rejected[1]
    assert "null value" in result.rejected[2] and '"email"' in result.rejected[2]
    assert "timestamp" in result.rejected[3]
    assert rows(db) == [(1, "a@x.io", 2), (5, "e@x.io", 9)]


def test_update_changes_existing_rows_and_finds_missing_ones_not_found(db: str) -> None:
    sql(db, "INSERT INTO users (id, email, seats) VALUES (1, 'a@x.io', 1), (2, 'b@x.io', 1)")
    dest = make_dest(db)
    [result] = write(
        dest,
        make_batch(
            [{"id": 2, "seats": 7}, {"id": 99, "seats": 1}, {"id": 1, "email": "a2@x.io"}],
            Operation.UPDATE,
        ),
    )
    # not found (skipped in update mode by the pipeline), never rejected
    assert result.rejected == {} and list(result.not_found) == [1]
    assert "no row with key 99" in result.not_found[1]
    assert "public.users" in result.not_found[1]
    assert rows(db) == [(1, "a2@x.io", 1), (2, "b@x.io", 7)]


def test_update_not_found_is_still_attributed_when_another_row_is_bad(db: str) -> None:
    sql(db, "INSERT INTO users (id, email) VALUES (1, 'a@x.io')")
    dest = make_dest(db)
    [result] = write(
        dest,
        make_batch(
            [{"id": 1, "seats": 4}, {"id": 1, "seats": "x"}, {"id": 50, "seats": 1}],
            Operation.UPDATE,
        ),
    )
    assert sorted(result.rejected) == [1] and list(result.not_found) == [2]
    assert "invalid input syntax" in result.rejected[1]
    assert "no row with key 50" in result.not_found[2]
    assert rows(db) == [(1, "a@x.io", 4)]


def test_delete_removes_rows_and_missing_rows_count_as_deleted(db: str) -> None:
    sql(db, "INSERT INTO users (id, email) VALUES (1, 'a@x.io'), (2, 'b@x.io'), (3, 'c@x.io')")
    dest = make_dest(db)
    [result] = write(dest, make_batch([{"id": 1}, {"id": 3}, {"id": 42}], Operation.DELETE))
    assert result == BatchResult()
    assert rows(db) == [(2, "b@x.io", None)]


def test_create_table_from_the_first_batch(pg_database: str) -> None:
    dest = make_dest(pg_database, table="new_users", create_table=True)
    run(dest, dest.check)  # a missing table is fine when it will be created
    [result] = write(
        dest,
        make_batch(
            [
                {"email": "a@x.io", "id": 1, "seats": 2, "score": 1.5, "vip": True, "tags": []},
                {"email": "b@x.io", "id": 2, "seats": None, "score": 2, "vip": False, "x": None},
            ],
            match=("email",),
        ),
    )
    assert result == BatchResult()
    columns = sql(
        pg_database,
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_name = 'new_users' ORDER BY ordinal_position",
    )
    assert columns == [
        ("email", "text"),
        ("id", "bigint"),
        ("seats", "bigint"),
        ("score", "double precision"),
        ("vip", "boolean"),
        ("tags", "jsonb"),
        ("x", "text"),
    ]
    [(pk,)] = sql(
        pg_database,
        "SELECT array_agg(a.attname::text) FROM pg_index i JOIN pg_attribute a"
        " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
        " WHERE i.indrelid = 'new_users'::regclass AND i.indisprimary",
    )
    assert pk == ["email"]
    # and the created table takes upserts on its match column straight away
    write(dest, make_batch([{"email": "a@x.io", "id": 10}], match=("email",), number=2))
    assert sql(pg_database, "SELECT id FROM new_users WHERE email = 'a@x.io'") == [(10,)]


def test_upsert_without_a_unique_index_prints_the_index_to_create(pg_database: str) -> None:
    sql(pg_database, 'CREATE TABLE "Leads" (id bigint, "E-mail" text)')
    dest = make_dest(pg_database, table="Leads")
    batch = make_batch([{"id": 1, "E-mail": "a@x.io"}], match=("E-mail",))
    expected = 'CREATE UNIQUE INDEX ON "public"."Leads" ("E-mail");'

    with pytest.raises(FatalDeliveryError) as info:
        write(dest, batch)
    assert expected in str(info.value)

    check = make_dest(pg_database, table="Leads")
    with pytest.raises(FatalDeliveryError) as checked:
        run(check, lambda: check.check(operation=Operation.UPSERT, match=["E-mail"]))
    assert expected in str(checked.value)

    # the printed statement works as is, and then the upsert goes through
    sql(pg_database, expected)
    run(check, lambda: check.check(operation=Operation.UPSERT, match=["E-mail"]))
    assert write(make_dest(pg_database, table="Leads"), batch) == [BatchResult()]
    assert sql(pg_database, 'SELECT id, "E-mail" FROM "Leads"') == [(1, "a@x.io")]


def test_odd_identifiers_are_quoted_never_pasted(pg_database: str) -> None:
    sql(pg_database, 'CREATE SCHEMA "crm data"')
    sql(
        pg_database,
        'CREATE TABLE "crm data"."x""; DROP TABLE y; --" (k text PRIMARY KEY, "v v" int)',
    )
    dest = make_dest(pg_database, table='x"; DROP TABLE y; --', schema="crm data")
    [result] = write(dest, make_batch([{"k": "a", "v v": 1}], match=("k",)))
    assert result == BatchResult()
    assert sql(pg_database, 'SELECT * FROM "crm data"."x""; DROP TABLE y; --"') == [("a", 1)]


def test_fields_that_are_not_columns_and_null_keys_are_rejected(db: str) -> None:
    dest = make_dest(db)
    [result] = write(
        dest,
        make_batch([{"id": 1, "email": "a@x.io", "nickname": "A"}, {"id": None, "email": "b"}]),
    )
    assert "nickname" in result.rejected[0] and "not columns" in result.rejected[0]
    assert "null" in result.rejected[1]
    assert rows(db) == []


def test_check_reports_a_missing_table(pg_database: str) -> None:
    dest = make_dest(pg_database, table="nope")
    with pytest.raises(FatalDeliveryError, match="does not exist") as info:
        run(dest, dest.check)
    assert "create_table" in str(info.value)
    with pytest.raises(FatalDeliveryError, match="does not exist"):
        write(dest, make_batch([{"id": 1}]))


@pytest.fixture
def limited_role(db: str) -> Iterator[str]:
    """A login role that may only INSERT into users; yields its URL."""
    role = f"ut_role_{uuid.uuid4().hex[:8]}"
    sql(db, f"CREATE ROLE {role} LOGIN")
    sql(db, f"GRANT INSERT, SELECT ON users TO {role}")
    try:
        yield db.replace("postgres@", f"{role}@")
    finally:
        sql(db, f"REVOKE ALL ON users FROM {role}")
        sql(db, f"DROP ROLE {role}")


def test_check_reports_missing_privileges(limited_role: str) -> None:
    dest = make_dest(limited_role)
    with pytest.raises(FatalDeliveryError) as info:
        run(dest, dest.check)
    message = str(info.value)
    assert "lacks the UPDATE, DELETE privilege(s)" in message
    assert 'GRANT UPDATE, DELETE ON "public"."users"' in message
    run(dest, lambda: dest.check(operation=Operation.INSERT))  # enough for inserts

    with pytest.raises(FatalDeliveryError, match="permission denied"):
        write(dest, make_batch([{"id": 1}], Operation.DELETE))


def test_unknown_user_is_fatal_and_the_password_never_shows(pg_database: str) -> None:
    url = pg_database.replace("postgres@", "nobody_here:hunter2-secret@")
    dest = make_dest(url)
    with pytest.raises(FatalDeliveryError) as info:
        write(dest, make_batch([{"id": 1, "email": "a"}]))
    assert "cannot log in" in str(info.value)
    assert "hunter2-secret" not in str(info.value)
    assert "hunter2-secret" not in repr(dest.config)


def test_server_down_is_retryable() -> None:
    dest = PostgresDestination(
        PostgresConfig(
            host="127.0.0.1",
            port=free_port(),
            database="x",
            password=SecretStr("pw-9f8e7d"),
            table="t",
        ),
        name="pg",
    )
    with pytest.raises(RetryableError) as info:
        write(dest, make_batch([{"id": 1}]))
    assert "cannot connect" in str(info.value)
    assert "pw-9f8e7d" not in str(info.value)


def test_config_takes_a_url_or_parts_not_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        PostgresConfig(url="postgresql://h/db", host="h", table="t")
    with pytest.raises(ValueError, match="give `url`"):
        PostgresConfig(table="t")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1, None, 2], "bigint"),
        ([1, 2.5], "double precision"),
        ([True, False], "boolean"),
        (["a", 1], "text"),
        ([{"a": 1}, [1]], "jsonb"),
        ([None], "text"),
    ],
)
def test_infer_type(values: list[Any], expected: str) -> None:
    assert infer_type(values) == expected


def test_check_after_open_reuses_the_connection(db: str) -> None:
    dest = make_dest(db)

    async def open_then_check() -> bool:
        await dest.open()
        before = dest._conn
        await dest.check(operation=Operation.UPSERT, match=["id"])
        return before is dest._conn and before is not None and not before.closed

    assert run(dest, open_then_check)
