"""MySQLSource against the real MariaDB on this machine (the mariadb_database fixture)."""

from __future__ import annotations

import datetime as dt
import decimal
import socket
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pyarrow as pa
import pymysql
import pytest
from pydantic import SecretStr

from tests.conftest import MARIADB_HOST, MARIADB_PORT, MARIADB_USER
from undertow.errors import ModelError, SourceError
from undertow.pipeline.run import projected_sql
from undertow.registry import source_class
from undertow.sources.mysql import MySQLConfig, MySQLSource

pytestmark = pytest.mark.integration


def make_source(url: str, **config: object) -> MySQLSource:
    cfg = MySQLConfig.model_validate({"type": "mariadb", "url": url, **config})
    return MySQLSource(cfg, name="shop")


def run(url: str, *statements: str) -> None:
    parts = urlsplit(url)
    conn = pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username,
        database=parts.path.lstrip("/"),
        autocommit=True,
    )
    with conn, conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


@pytest.fixture
def typed(mariadb_database: str) -> str:
    run(
        mariadb_database,
        """
        create table typed (
            id int primary key, flag tinyint(1), tiny tinyint, utiny tinyint unsigned,
            ubig bigint unsigned, price decimal(12, 2), fine decimal(30, 20),
            huge decimal(65, 30), f float, d double, label varchar(20), fixed char(3),
            doc json, e enum('a', 'b'), s set('x', 'y'), bin varbinary(10), blb blob,
            txt text, day date, at datetime(6), ts timestamp(3) null, t time, y year
        )
        """,
        "set time_zone = '+02:00'",
        """
        insert into typed values
          (1, 1, -5, 250, 18446744073709551615, 1234.56, 1.12345678901234567890,
           12345678901234567890123456789012345.123456789012345678901234567890, 1.5, 2.25,
           'héllo, "world"', 'ab', '{"a": [1, 2]}', 'b', 'x,y', x'00ff10', x'0102', 'long',
           '2024-05-01', '2024-05-01 12:30:00.123456', '2024-05-01 12:30:00.123',
           '12:30:01', 2024),
          (2, null, null, null, null, null, null, null, null, null, '', null, null, null,
           null, null, null, null, null, null, null, null, null)
        """,
    )
    return mariadb_database


def test_types(typed: str) -> None:
    src = make_source(typed)
    sql = "select * from typed order by id"
    schema = src.describe(sql, model="typed")
    assert {f.name: f.type for f in schema} == {
        "id": pa.int32(),
        "flag": pa.bool_(),
        "tiny": pa.int8(),
        "utiny": pa.uint8(),
        "ubig": pa.uint64(),
        "price": pa.decimal128(12, 2),
        "fine": pa.decimal128(30, 20),
        "huge": pa.string(),
        "f": pa.float32(),
        "d": pa.float64(),
        "label": pa.string(),
        "fixed": pa.string(),
        "doc": pa.string(),
        "e": pa.string(),
        "s": pa.string(),
        "bin": pa.binary(),
        "blb": pa.binary(),
        "txt": pa.string(),
        "day": pa.date32(),
        "at": pa.timestamp("us"),
        "ts": pa.timestamp("us", tz="UTC"),
        "t": pa.time64("us"),
        "y": pa.int16(),
    }
    table = src.extract(sql, model="typed").read_all()
    assert table.schema == schema
    first, second = table.to_pylist()
    assert first == {
        "id": 1,
        "flag": True,
        "tiny": -5,
        "utiny": 250,
        "ubig": 18446744073709551615,
        "price": decimal.Decimal("1234.56"),
        "fine": decimal.Decimal("1.12345678901234567890"),
        "huge": "12345678901234567890123456789012345.123456789012345678901234567890",
        "f": 1.5,
        "d": 2.25,
        "label": 'héllo, "world"',
        "fixed": "ab",
        "doc": '{"a": [1, 2]}',
        "e": "b",
        "s": "x,y",
        "bin": b"\x00\xff\x10",
        "blb": b"\x01\x02",
        "txt": "long",
        "day": dt.date(2024, 5, 1),
        "at": dt.datetime(2024, 5, 1, 12, 30, 0, 123456),
        "ts": dt.datetime(2024, 5, 1, 10, 30, 0, 123000, tzinfo=dt.UTC),
        "t": dt.time(12, 30, 1),
        "y": 2024,
    }
    assert second["label"] == ""  # an empty string is not NULL
    assert all(v is None for k, v in second.items() if k not in ("id", "label"))


def test_tinyint1_as_int_when_asked(typed: str) -> None:
    src = make_source(typed, tinyint1_as_bool=False)
    table = src.extract("select flag from typed where id = 1", model="m").read_all()
    assert table.schema.field("flag").type == pa.int8()
    assert table.to_pylist() == [{"flag": 1}]


def test_streams_many_batches_with_fields_instead_of_url(mariadb_database: str) -> None:
    parts = urlsplit(mariadb_database)
    cfg = MySQLConfig(
        type="mysql",
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username,
        database=parts.path.lstrip("/"),
    )
    src = MySQLSource(cfg, name="shop")
    src.check()
    sql = "select seq as i, md5(seq) as h from seq_1_to_50000"
    sizes = [batch.num_rows for batch in src.extract(sql, model="series", batch_rows=4000)]
    assert sum(sizes) == 50000
    assert len(sizes) >= 12
    assert max(sizes) <= 4000


def test_registered_under_both_names() -> None:
    assert source_class("mysql") is MySQLSource
    assert source_class("mariadb") is MySQLSource


def test_projected_sql_quotes_with_backticks(typed: str) -> None:
    src = make_source(typed)
    model = "select id, label as `odd ``name`` here` from typed -- trailing comment"
    sql = projected_sql(model, ["odd `name` here", "id"], src.quote_identifier)
    rows = src.extract(sql, model="m").read_all().sort_by("id").to_pylist()
    assert rows[0] == {"odd `name` here": 'héllo, "world"', "id": 1}


def test_extract_is_read_only(typed: str) -> None:
    src = make_source(typed)
    rows = src.extract("select @@session.tx_read_only as ro", model="m").read_all()
    assert rows.to_pylist() == [{"ro": 1}]


def test_connections_are_closed(typed: str) -> None:
    src = make_source(typed)
    src.check()
    src.describe("select 1 as x", model="m")
    src.extract("select 1 as x", model="m").read_all()
    early = src.extract("select seq from seq_1_to_200000", model="m", batch_rows=100)
    early.read_next_batch()
    early.close()
    dbname = urlsplit(typed).path.lstrip("/")
    conn = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root")
    with conn, conn.cursor() as cur:
        deadline = time.monotonic() + 5  # KILL QUERY and the disconnect take a moment
        while True:
            cur.execute(
                "select info from information_schema.processlist where db = %s and id <> "
                "connection_id()",
                (dbname,),
            )
            left = cur.fetchall()
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert left == ()


@pytest.mark.parametrize(
    ("sql", "position", "words"),
    [
        ("select id,\n  nope from typed", 14, "Unknown column 'nope'"),
        ("select id from typed where", 27, "SQL syntax"),
        ("select id frm typed where id = 1", 15, "SQL syntax"),  # `frm`: an alias
        ("select 'é€', id from\n missing_table;", 23, "doesn't exist"),
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


def test_bad_user_message_names_the_user_not_the_password() -> None:
    password = f"pw-{uuid.uuid4().hex}"
    url = f"mysql://nobody_{uuid.uuid4().hex[:6]}:{password}@{MARIADB_HOST}:{MARIADB_PORT}/test"
    with pytest.raises(SourceError) as info:
        make_source(url).check()
    message = str(info.value)
    assert "nobody_" in message
    assert "Access denied" in message
    assert password not in message
    assert password not in repr(info.value.args)


def test_password_field_never_appears() -> None:
    password = f"secret-{uuid.uuid4().hex}"
    cfg = MySQLConfig(
        host=MARIADB_HOST, port=MARIADB_PORT, user="ghost_user", password=SecretStr(password)
    )
    with pytest.raises(SourceError) as info:
        MySQLSource(cfg, name="shop").check()
    assert "ghost_user" in str(info.value)
    assert password not in str(info.value)


def test_unknown_database(mariadb_database: str) -> None:
    with pytest.raises(SourceError, match="SHOW DATABASES"):
        make_source(mariadb_database + "_nope").check()


def test_unreachable_port_is_a_clear_source_error() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = make_source(f"mysql://root@127.0.0.1:{port}/test", connect_timeout=2)
    with pytest.raises(SourceError) as info:
        src.check()
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "mysqladmin ping" in message


def test_config_needs_url_or_host() -> None:
    with pytest.raises(ValueError, match="url"):
        MySQLConfig.model_validate({"type": "mysql"})
    with pytest.raises(ValueError, match="mysql://"):
        MySQLConfig.model_validate({"type": "mysql", "url": "postgresql://x@y/z"})


# -- check_access: least-privilege checks for `undertow validate` ----------------------------


def admin_run(*statements: str) -> None:
    conn = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user=MARIADB_USER)
    with conn, conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


@pytest.fixture
def limited(mariadb_database: str) -> Iterator[tuple[str, str, str]]:
    """A user 'ut_ro_<hex>'@'%' with SELECT on table `users` only (`orders` next to it);
    yields its name, the database and a URL connecting as it. The user is dropped after."""
    dbname = urlsplit(mariadb_database).path.lstrip("/")
    name = f"ut_ro_{uuid.uuid4().hex[:10]}"
    password = f"pw-{uuid.uuid4().hex}"
    run(mariadb_database, "create table users (id int)", "create table orders (id int)")
    admin_run(f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'")
    try:
        admin_run(f"GRANT SELECT ON `{dbname}`.`users` TO '{name}'@'%'")
        url = f"mysql://{name}:{password}@{MARIADB_HOST}:{MARIADB_PORT}/{dbname}"
        yield name, dbname, url
    finally:
        admin_run(f"DROP USER IF EXISTS '{name}'@'%'")


@pytest.fixture
def scratch() -> Iterator[str]:
    """A unique scratch database name (with `_`, a wildcard in grants); dropped after."""
    name = f"ut_scr_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        admin_run(f"DROP DATABASE IF EXISTS `{name}`")


def test_check_access_root_has_no_problems(mariadb_database: str, scratch: str) -> None:
    dbname = urlsplit(mariadb_database).path.lstrip("/")
    run(mariadb_database, "create table users (id int)")
    src = make_source(mariadb_database)
    assert src.check_access(["users", f"{dbname}.users"], scratch_schema=scratch) == []
    assert src.check_access([], scratch_schema=dbname) == []  # an existing database too


def test_check_access_names_a_missing_table(mariadb_database: str) -> None:
    dbname = urlsplit(mariadb_database).path.lstrip("/")
    problems = make_source(mariadb_database).check_access(["nope", "other_db_nope.t"])
    assert [p.message for p in problems] == [
        f"source 'shop': table or view {dbname}.nope does not exist",
        "source 'shop': table or view other_db_nope.t does not exist",
    ]
    assert all(p.grants == () for p in problems)


def test_check_access_gives_the_select_grant(limited: tuple[str, str, str]) -> None:
    name, dbname, url = limited
    src = make_source(url)
    src.check()
    problems = src.check_access(["users", "orders", f"{dbname}.orders", "nope"])
    assert len(problems) == 2  # `orders` and `<db>.orders` are one table: one problem
    orders, nope = problems
    assert orders.grants == (f"GRANT SELECT ON `{dbname}`.`orders` TO '{name}'@'%';",)
    assert f"user '{name}'@'%' cannot read {dbname}.orders (missing SELECT" in orders.message
    # a table this user may not read and one that does not exist look the same to it
    assert f"cannot read {dbname}.nope" in nope.message
    assert "no such table" in nope.message

    admin_run(*[g for g in orders.grants])
    assert src.check_access(["users", "orders", f"{dbname}.orders"]) == []
    assert src.extract("select id from orders", model="m").read_all().num_rows == 0


def test_check_access_lists_the_scratch_privileges(
    limited: tuple[str, str, str], scratch: str
) -> None:
    name, dbname, url = limited
    src = make_source(url)
    escaped = scratch.replace("_", "\\_")
    grant = f"GRANT CREATE, DROP, SELECT, INSERT, DELETE, ALTER ON `{escaped}`.* TO '{name}'@'%';"
    [problem] = src.check_access([], scratch_schema=scratch)
    assert problem.grants == (grant,)
    assert problem.message == (
        f"source 'shop': the warehouse diff engine keeps its tables in database {scratch!r} "
        "(not there yet, the engine creates it, or not visible to this user), where user "
        f"'{name}'@'%' lacks CREATE, DROP, SELECT, INSERT, DELETE and ALTER"
    )

    # some of them, on the database once it exists: only the others are missing
    admin_run(
        f"CREATE DATABASE `{scratch}`", f"GRANT SELECT, INSERT ON `{escaped}`.* TO '{name}'@'%'"
    )
    [problem] = src.check_access([], scratch_schema=scratch)
    assert problem.message.endswith(f"'{name}'@'%' lacks CREATE, DROP, DELETE and ALTER")
    assert f"database {scratch!r}, where" in problem.message
    assert problem.grants == (grant,)

    admin_run(f"DROP DATABASE `{scratch}`", *problem.grants)
    assert src.check_access(["users"], scratch_schema=scratch) == []
    # and they are enough for what the warehouse engine does there
    parts = urlsplit(url)
    conn = pymysql.connect(
        host=parts.hostname, port=parts.port, user=parts.username, password=parts.password
    )
    with conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS `{scratch}`")
        cur.execute(f"CREATE TABLE `{scratch}`.a AS SELECT id FROM `{dbname}`.users")
        cur.execute(f"INSERT INTO `{scratch}`.a VALUES (1)")
        cur.execute(f"DELETE FROM `{scratch}`.a WHERE id = 1")
        cur.execute(f"ALTER TABLE `{scratch}`.a RENAME TO `{scratch}`.b")
        cur.execute(f"DROP TABLE `{scratch}`.b")
    # a lookalike database (`_` is a wildcard unless escaped) gets nothing
    lookalike = scratch.replace("_", "x", 1)
    [problem] = src.check_access([], scratch_schema=lookalike)
    assert "lacks CREATE, DROP, SELECT, INSERT, DELETE and ALTER" in problem.message


def test_check_access_sees_grants_through_a_default_role(
    limited: tuple[str, str, str], scratch: str
) -> None:
    name, dbname, url = limited
    role = f"ut_role_{uuid.uuid4().hex[:10]}"
    inner = f"ut_role_{uuid.uuid4().hex[:10]}"
    admin_run(f"CREATE ROLE `{role}`", f"CREATE ROLE `{inner}`")
    try:
        admin_run(
            f"GRANT SELECT ON `{dbname}`.`orders` TO `{role}`",
            f"GRANT CREATE, DROP, SELECT ON `{scratch}`.* TO `{role}`",
            f"GRANT INSERT, DELETE, ALTER ON `{scratch}`.* TO `{inner}`",
            f"GRANT `{inner}` TO `{role}`",
            f"GRANT `{role}` TO '{name}'@'%'",
        )
        src = make_source(url)
        read, write = src.check_access(["orders"], scratch_schema=scratch)  # role not enabled
        assert f"cannot read {dbname}.orders" in read.message
        assert "lacks CREATE, DROP, SELECT, INSERT, DELETE and ALTER" in write.message
        admin_run(f"SET DEFAULT ROLE `{role}` FOR '{name}'@'%'")
        assert src.check_access(["users", "orders"], scratch_schema=scratch) == []
    finally:
        admin_run(f"DROP ROLE IF EXISTS `{role}`", f"DROP ROLE IF EXISTS `{inner}`")


def test_check_access_global_grants_count(limited: tuple[str, str, str], scratch: str) -> None:
    name, _, url = limited
    admin_run(f"GRANT ALL PRIVILEGES ON *.* TO '{name}'@'%'")
    assert make_source(url).check_access(["orders"], scratch_schema=scratch) == []


def test_check_access_connection_error_is_a_source_error() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = make_source(f"mysql://root@127.0.0.1:{port}/test", connect_timeout=2)
    with pytest.raises(SourceError, match="mysqladmin ping"):
        src.check_access(["users"], scratch_schema="undertow")
