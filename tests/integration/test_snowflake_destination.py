"""SnowflakeDestination against fakesnow's server: the real snowflake-connector-python over
Snowflake's HTTP protocol to a local emulator (DuckDB underneath), so the staging statements,
the MERGE and the connector's error classes are the real ones.

Marked ``warehouses`` (own venv: ``make test-warehouses``), except the config, catalog and
missing-driver tests at the top, which need no driver. What fakesnow cannot prove (see
docs/destinations/snowflake.md): Snowflake's own SQL compiler and its MERGE on a real
warehouse, its error texts and SQLSTATEs for refused values, VARCHAR(n) lengths (fakesnow
does not enforce them: the check here rejects those rows before Snowflake could), grants and
roles, and logins (fakesnow accepts any; a refused login is tested on a local endpoint that
answers the login request as Snowflake documents it).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from undertow.destinations import catalog
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.snowflake import SnowflakeDestination, SnowflakeTableConfig
from undertow.errors import FatalDeliveryError, RetryableError, UndertowError
from undertow.registry import destination_class

pytestmark = pytest.mark.integration

PASSWORD = "sf-dest-pw-4417"


def make(**config: object) -> SnowflakeDestination:
    values: dict[str, object] = {
        "type": "snowflake",
        "account": "acme-prod",
        "user": "UNDERTOW",
        "password": PASSWORD,
        "database": "ANALYTICS",
        "schema": "CRM",
        "table": "users_out",
    }
    values.update(config)
    return SnowflakeDestination(SnowflakeTableConfig.model_validate(values), name="wh_out")


def batch(
    rows: list[dict[str, Any]], op: Operation, number: int = 0, sync: str = "users_to_wh"
) -> Batch:
    keyless = op is Operation.INSERT  # an insert has no match: the id is a mapped field
    return Batch(
        sync=sync,
        operation=op,
        number=number,
        idempotency_key=f"r-{number}",
        keys=[str(r["id"]) for r in rows],
        payloads=[
            orjson.dumps({k: v for k, v in r.items() if k != "id" or keyless}).decode()
            for r in rows
        ],
        identifiers={} if keyless else {"id": [r["id"] for r in rows]},
    )


def write(
    dest: SnowflakeDestination, rows: list[dict[str, Any]], op: Operation = Operation.UPSERT
) -> BatchResult:
    async def main() -> BatchResult:
        await dest.open()
        try:
            return await dest.write_batch(batch(rows, op))
        finally:
            await dest.close()

    return asyncio.run(main())


# -- no driver needed ---------------------------------------------------------------------------


def test_registered_and_listed_in_the_catalog() -> None:
    assert destination_class("snowflake") is SnowflakeDestination
    described = catalog.describe("snowflake")
    assert described["operations"] == ["delete", "insert", "update", "upsert"]
    assert described["per_record_results"] is True
    assert "merge" in described["docs"]


def test_config_needs_the_table_home_and_takes_the_source_url() -> None:
    with pytest.raises(ValidationError, match="database"):
        SnowflakeTableConfig.model_validate(
            {"type": "snowflake", "account": "a", "user": "u", "table": "t"}
        )
    config = SnowflakeTableConfig.model_validate(
        {
            "type": "snowflake",
            "url": "snowflake://loader:url-pw-889@acme-prod/ANALYTICS/crm?warehouse=LOAD",
            "table": "customer scores",
        }
    )
    dest = SnowflakeDestination(config, name="wh_out")
    assert dest.qualified == "ANALYTICS.CRM.customer scores"  # plain names upper-cased
    assert (config.warehouse, config.user) == ("LOAD", "loader")
    from undertow.redact import redact

    assert "url-pw-889" not in redact("login as loader:url-pw-889 refused")


def test_missing_driver_names_the_destination_and_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "snowflake.connector", None)
    dest = make()
    with pytest.raises(FatalDeliveryError) as caught:
        write(dest, [{"id": 1, "email": "a@x.io"}])
    assert "wh_out" in str(caught.value) and "users_to_wh" in str(caught.value)
    assert caught.value.hint == 'pip install "undertow[snowflake]"'


def test_failure_hints_name_the_grants_and_the_warehouse() -> None:
    dest = make(role="LOADER")
    refused = Exception("003001 (42501): SQL access control error: Insufficient privileges")
    hint = dest.failure_hint(refused)
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE ANALYTICS.CRM.USERS_OUT" in hint
    assert "TO ROLE LOADER" in hint
    idle = Exception("000606 (57P03): No active warehouse selected in the current session.")
    assert "`warehouse:`" in dest.failure_hint(idle)
    assert "rolled back" in dest.failure_hint(Exception("something else"))


# -- against fakesnow ---------------------------------------------------------------------------

FAKESNOW_ARROW = "ignore:Arrow output on a DB-API result:UserWarning"


@pytest.fixture
def wh(
    fakesnow_server: dict[str, Any],
) -> Iterator[tuple[Callable[..., SnowflakeDestination], Any]]:
    """A destination factory on a schema of its own, and a function running SQL there."""
    from warehouse_support import fakesnow_source

    schema = f"UT_{uuid.uuid4().hex[:10].upper()}"
    source = fakesnow_source(fakesnow_server, schema)

    def sql(statement: str) -> list[tuple[Any, ...]]:
        session = source.session()
        try:
            if statement.lstrip().upper().startswith("SELECT"):
                return list(session.rows(statement))
            session.execute(statement)
            return []
        finally:
            session.close()

    def factory(**config: object) -> SnowflakeDestination:
        values: dict[str, object] = {
            "account": fakesnow_server["account"],
            "host": fakesnow_server["host"],
            "port": fakesnow_server["port"],
            "protocol": "http",
            "schema": schema,
        }
        values.update(config)
        return make(**values)

    try:
        yield factory, sql
    finally:
        sql(f"DROP SCHEMA IF EXISTS ANALYTICS.{schema}")


CREATE = (
    "CREATE TABLE users_out (id NUMBER(38,0) NOT NULL, email VARCHAR(40) NOT NULL,"
    " plan VARCHAR(20), score NUMBER(10,2), attrs VARIANT)"
)


def rows(n: int, version: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": i, "email": f"u{i}@x.io", "plan": f"p{version}", "score": i + version / 4}
        for i in range(n)
    ]


def table(sql: Any) -> dict[int, tuple[Any, ...]]:
    found = sql("SELECT id, email, plan, score FROM users_out ORDER BY id")
    return {int(r[0]): (r[1], r[2], float(r[3]) if r[3] is not None else None) for r in found}


@pytest.mark.warehouses
@pytest.mark.filterwarnings(FAKESNOW_ARROW)
def test_upsert_is_idempotent_then_update_and_delete(wh: Any) -> None:
    factory, sql = wh
    sql(CREATE)
    dest = factory()
    assert write(dest, rows(5)) == BatchResult()
    assert write(dest, rows(5)) == BatchResult()  # the same batch again: nothing doubles
    assert len(sql("SELECT id FROM users_out")) == 5
    assert write(dest, rows(6, version=1)) == BatchResult()
    assert table(sql) == {i: (f"u{i}@x.io", "p1", i + 0.25) for i in range(6)}

    update = [{"id": 1, "plan": "gold"}, {"id": 99, "plan": "none"}]
    result = write(dest, update, Operation.UPDATE)
    assert result.rejected == {} and list(result.not_found) == [1]  # skipped, not rejected
    assert "no row with key 99" in result.not_found[1]
    assert table(sql)[1] == ("u1@x.io", "gold", 1.25), "fields not sent are kept"
    assert write(dest, [{"id": 1, "plan": "gold"}], Operation.UPDATE) == BatchResult()

    assert write(dest, [{"id": 2}, {"id": 77}], Operation.DELETE) == BatchResult()
    assert sorted(table(sql)) == [0, 1, 3, 4, 5]
    assert write(dest, [{"id": 2}], Operation.DELETE) == BatchResult(), "already gone"

    inserted = write(dest, [{"id": 50, "email": "new@x.io"}], Operation.INSERT)
    assert inserted == BatchResult() and table(sql)[50] == ("new@x.io", None, None)


@pytest.mark.warehouses
@pytest.mark.filterwarnings(FAKESNOW_ARROW)
def test_rows_with_different_fields_and_duplicate_keys_in_one_merge(wh: Any) -> None:
    factory, sql = wh
    sql(CREATE)
    dest = factory()
    assert write(dest, rows(3)) == BatchResult()
    mixed = [
        {"id": 0, "plan": "only-plan"},  # no email, no score: those columns are kept
        {"id": 1, "email": "one@x.io", "plan": "p9", "score": 9.5, "attrs": {"k": [1, "a"]}},
        {"id": 7, "email": "seven@x.io"},
    ]
    assert write(dest, mixed) == BatchResult()
    got = table(sql)
    assert got[0] == ("u0@x.io", "only-plan", 0.0)
    assert got[1] == ("one@x.io", "p9", 9.5)
    assert got[7] == ("seven@x.io", None, None)
    [(attrs,)] = sql("SELECT attrs FROM users_out WHERE id = 1")
    assert json.loads(attrs) == {"k": [1, "a"]}

    b = batch([{"id": 3, "email": "first@x.io"}, {"id": 4, "email": "last@x.io"}], Operation.UPSERT)
    b.identifiers["id"] = [3, 3]  # two rows of one batch match the same key: the last wins

    async def main() -> BatchResult:
        try:
            return await dest.write_batch(b)
        finally:
            await dest.close()

    assert asyncio.run(main()) == BatchResult()
    assert sql("SELECT email FROM users_out WHERE id = 3") == [("last@x.io",)]


@pytest.mark.warehouses
@pytest.mark.filterwarnings(FAKESNOW_ARROW)
def test_bad_rows_are_rejected_alone_naming_the_field_never_the_value(wh: Any) -> None:
    factory, sql = wh
    sql(CREATE)
    records = rows(5)
    records[1]["score"] = "not-a-number-secret"
    records[2]["email"] = None  # NOT NULL
    records[3]["plan"] = "x" * 21  # VARCHAR(20)
    result = write(factory(), records)
    assert sorted(result.rejected) == [1, 2, 3], result
    assert "field score" in result.rejected[1] and "NUMBER(10,2)" in result.rejected[1]
    assert "not-a-number-secret" not in result.rejected[1]
    assert "NOT NULL" in result.rejected[2]
    assert "VARCHAR(20)" in result.rejected[3]
    assert sorted(table(sql)) == [0, 4]


@pytest.mark.warehouses
@pytest.mark.filterwarnings(FAKESNOW_ARROW)
def test_create_table_from_the_first_batch(wh: Any) -> None:
    factory, sql = wh
    dest = factory(create_table=True)
    first = [{"id": 1, "email": "a@x.io", "active": True, "ratio": 0.5, "tags": ["a", "b"]}]
    assert write(dest, first) == BatchResult()
    assert write(dest, [dict(first[0], ratio=0.75)]) == BatchResult()
    got = sql("SELECT id, email, active, ratio, tags FROM users_out")
    assert [(int(a), b, c, float(d), json.loads(e)) for a, b, c, d, e in got] == [
        (1, "a@x.io", True, 0.75, ["a", "b"])
    ]
    # a delete before the table exists has nothing to delete
    assert write(factory(create_table=True, table="never_made"), [{"id": 1}], Operation.DELETE) == (
        BatchResult()
    )


@pytest.mark.warehouses
@pytest.mark.filterwarnings(FAKESNOW_ARROW)
def test_missing_table_names_the_sync_and_table_and_says_how_to_fix(wh: Any) -> None:
    factory, sql = wh
    dest = factory(table="no_such_table")
    with pytest.raises(FatalDeliveryError) as caught:
        write(dest, rows(1))
    message = str(caught.value)
    assert "sync 'users_to_wh'" in message and "NO_SUCH_TABLE" in message
    assert "does not exist" in message and PASSWORD not in message
    assert "create_table: true" in (caught.value.hint or "")
    assert "GRANT" in (caught.value.hint or "")
    assert caught.value.sync == "users_to_wh" and caught.value.destination == "wh_out"

    sql(CREATE)
    records = rows(2)
    records[0]["colour"] = "red"
    result = write(factory(), records)
    assert list(result.rejected) == [0] and "colour" in result.rejected[0]

    async def check() -> None:
        try:
            await factory().check(operation=Operation.UPSERT, match=["nope"])  # type: ignore[call-arg]
        finally:
            pass

    with pytest.raises(UndertowError, match="nope"):
        asyncio.run(check())


@pytest.mark.warehouses
@pytest.mark.filterwarnings(FAKESNOW_ARROW)
def test_a_whole_project_mirrors_into_snowflake(wh: Any, tmp_path: Path) -> None:
    """Two runs through the pipeline: upsert everything, then a change and a removed row."""
    from project_support import users_project, warehouse

    factory, sql = wh
    dest = factory()
    c = dest.config
    block = (
        f"sf: {{type: snowflake, account: {c.account}, host: {c.host}, port: {c.port}, "
        f"protocol: http, user: U, password: {PASSWORD}, database: ANALYTICS, "
        f"schema: {c.schema_}, table: users_out, create_table: true}}"
    )
    syncs = (
        "  users_to_sf:\n    model: users\n    destination: sf\n    mode: mirror\n"
        "    match: {id: id}\n    mappings: {id: id, email: email}\n"
    )
    project = users_project(
        tmp_path, [(i, f"u{i}@x.io") for i in range(40)], syncs=syncs, destinations=block
    )
    [first] = project.run(["users_to_sf"])
    assert first.status == "succeeded", first.error
    assert len(sql("SELECT id FROM users_out")) == 40
    warehouse(tmp_path, "update users set email = 'changed@x.io' where id = 3")
    warehouse(tmp_path, "delete from users where id = 5")
    [second] = project.run(["users_to_sf"])
    assert second.status == "succeeded", second.error
    assert sql("SELECT email FROM users_out WHERE id = 3") == [("changed@x.io",)]
    assert sql("SELECT id FROM users_out WHERE id = 5") == []
    assert len(sql("SELECT id FROM users_out")) == 39


@pytest.mark.warehouses
@pytest.mark.filterwarnings(FAKESNOW_ARROW)
def test_a_value_the_check_missed_is_rejected_by_a_row_by_row_merge(
    wh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the check switched off, the batch's MERGE fails on one value (atomic: nothing
    written); it is run again row by row and only that row is rejected, in Snowflake's words."""
    from undertow.destinations import snowflake

    factory, sql = wh
    sql(CREATE)
    monkeypatch.setattr(snowflake._Plan, "why", lambda self: "NULL")
    records = rows(4)
    records[2]["score"] = "twelve"
    result = write(factory(), records)
    assert list(result.rejected) == [2], result
    assert result.rejected[2].startswith("Snowflake refused the row:")
    assert sorted(table(sql)) == [0, 1, 3]


@pytest.mark.warehouses
@pytest.mark.filterwarnings(FAKESNOW_ARROW)
def test_check_on_a_missing_database_is_fatal_with_the_grants(wh: Any) -> None:
    factory, _ = wh

    async def check() -> None:
        dest = factory(database="NO_SUCH_DB")
        try:
            await dest.check()
        finally:
            await dest.close()

    with pytest.raises(FatalDeliveryError) as caught:
        asyncio.run(check())
    # fakesnow answers an unknown database's INFORMATION_SCHEMA with no rows (Snowflake with
    # 002003 "does not exist or not authorized": the next test): the table is missing
    assert "wh_out" in str(caught.value) and "NO_SUCH_DB" in str(caught.value)
    assert "GRANT USAGE ON DATABASE" in (caught.value.hint or "")


@pytest.mark.warehouses
def test_a_refused_metadata_read_is_fatal_with_the_grants(monkeypatch: pytest.MonkeyPatch) -> None:
    """Snowflake's answer to a role that may not see the database (its text and code, raised
    as the connector raises it), on the metadata read of ``check``."""
    from snowflake.connector.errors import ProgrammingError

    def refused(self: Any, conn: Any) -> None:
        raise ProgrammingError(
            msg="Database 'ANALYTICS' does not exist or not authorized.",
            errno=2003,
            sqlstate="02000",
        )

    dest = make(role="LOADER")
    monkeypatch.setattr(SnowflakeDestination, "connect", lambda self, sync=None: object())
    monkeypatch.setattr(SnowflakeDestination, "load_table", refused)
    with pytest.raises(FatalDeliveryError) as caught:
        asyncio.run(dest.check())
    assert "cannot read the table's columns" in str(caught.value)
    hint = caught.value.hint or ""
    assert 'GRANT USAGE ON DATABASE "ANALYTICS" TO ROLE LOADER' in hint
    assert "CREATE TABLE ON SCHEMA ANALYTICS.CRM" in hint


# -- logins (fakesnow accepts any) ----------------------------------------------------------


class _RefusingLogin(BaseHTTPRequestHandler):
    """Answers Snowflake's login request the way Snowflake refuses a wrong password
    (HTTP 200, ``success: false``, code 390100), so the connector raises its own error."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = json.dumps(
            {
                "data": {"nextAction": "RETRY_LOGIN", "authnMethod": "USERNAME_PASSWORD"},
                "code": "390100",
                "message": "Incorrect username or password was specified.",
                "success": False,
                "headers": None,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.warehouses
def test_refused_login_is_fatal_names_the_sync_and_never_shows_the_password() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusingLogin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dest = make(host="127.0.0.1", port=server.server_address[1], protocol="http")
        with pytest.raises(FatalDeliveryError) as caught:
            write(dest, rows(1))
    finally:
        server.shutdown()
        server.server_close()
    message = str(caught.value)
    assert "sync 'users_to_wh'" in message and "ANALYTICS.CRM.USERS_OUT" in message
    assert "refused user 'UNDERTOW'" in message
    assert PASSWORD not in message and PASSWORD not in (caught.value.hint or "")
    assert "check `user` and the password" in (caught.value.hint or "")


@pytest.mark.warehouses
def test_unreachable_account_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    dest = make(host="127.0.0.1", port=port, protocol="http", login_timeout=3)
    with pytest.raises(RetryableError) as caught:
        write(dest, rows(1))
    assert "wh_out" in str(caught.value) and PASSWORD not in str(caught.value)
