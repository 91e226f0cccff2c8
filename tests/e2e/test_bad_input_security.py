"""The bad-input catalogue, security: the warehouse is read-only to Undertow, secrets never
leak in any encoding, header values cannot split a request, templates and YAML cannot run
away, and data never drives the terminal (``docs/bad-input.md``: "Security").
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import signal
import sqlite3
import time
import urllib.error
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from bad_support import expect_fail, ids_of, run_once, users, write
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from undertow import registry
from undertow.errors import ModelError
from undertow.orchestration import alerts
from undertow.orchestration.alerts import Alert
from undertow.orchestration.config import WebhookChannel
from undertow.state.store import RunStatus
from undertow.testing.server import serve_in_thread

if TYPE_CHECKING:
    from tests.e2e.conftest import Receiver, SampleProject

pytestmark = pytest.mark.e2e

WRITES = "select 1 as id; commit; delete from {table}"


def _model_project(project: SampleProject, source: str, sql: str) -> None:
    project.write(
        f"""
        name: ro
        sources: {{warehouse: {source}}}
        destinations: {{out: {{type: file, path: out/o.jsonl}}}}
        models: {{m: {{source: warehouse, sql: {json.dumps(sql)}, primary_key: id}}}}
        syncs: {{s: {{model: m, destination: out}}}}
        """
    )


# -- the warehouse is read-only ---------------------------------------------------------------


@pytest.fixture
def pg_table(pg_database: str) -> tuple[str, str]:
    import psycopg

    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 5) g")
    return pg_database, "t"


def _pg_count(url: str, table: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("command", [["validate", "--offline"], ["plan", "s"], ["run", "s"]])
def test_postgres_model_with_a_write_after_it(
    project: SampleProject, pg_table: tuple[str, str], command: list[str]
) -> None:
    """Before: ``validate --offline`` emptied the table (the COMMIT ended the read-only
    transaction, the DELETE ran in autocommit)."""
    url, table = pg_table
    _model_project(project, f'{{type: postgres, url: "{url}"}}', WRITES.format(table=table))
    r = project.run(*command)
    expect_fail(r, "a model must be exactly one SELECT statement", "3 statements", "'COMMIT'")
    assert _pg_count(url, table) == 5, "the table is untouched"


def test_postgres_single_statement_that_writes_is_refused_by_postgres(
    project: SampleProject, pg_table: tuple[str, str]
) -> None:
    """One statement that writes (a data-modifying CTE) passes the one-query check;
    PostgreSQL refuses it inside the cursor and the READ ONLY transaction around it."""
    url, table = pg_table
    sql = f"with gone as (delete from {table} returning id) select id from gone"
    _model_project(project, f'{{type: postgres, url: "{url}"}}', sql)
    for args in (("validate", "--offline"), ("run", "s")):
        r = project.run(*args)
        expect_fail(r, "data-modifying statements")
    assert _pg_count(url, table) == 5


def _maria(url: str) -> Any:
    import pymysql

    host, port, db = re.match(r"mysql://[^@]+@([^:/]+):(\d+)/(\w+)", url).groups()  # type: ignore[union-attr]
    return pymysql.connect(host=host, port=int(port), user="root", database=db, autocommit=True)


def test_mariadb_model_with_a_write_after_it(project: SampleProject, mariadb_database: str) -> None:
    with _maria(mariadb_database) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT)")
        cur.execute("INSERT INTO t VALUES (1), (2), (3)")
    _model_project(project, f'{{type: mysql, url: "{mariadb_database}"}}', WRITES.format(table="t"))
    r = project.run("run", "s")
    expect_fail(r, "a model must be exactly one SELECT statement")
    with _maria(mariadb_database) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM t")
        assert cur.fetchone() == (3,), "the table is untouched"


@pytest.mark.parametrize("kind", ["duckdb", "sqlite"])
def test_embedded_warehouses_refuse_writes(project: SampleProject, kind: str) -> None:
    if kind == "duckdb":
        project.sql("CREATE TABLE t AS SELECT 1 AS id")
        source = "{type: duckdb, path: warehouse.duckdb}"
    else:
        with sqlite3.connect(project.root / "wh.sqlite") as con:
            con.execute("CREATE TABLE t (id INTEGER)")
            con.execute("INSERT INTO t VALUES (1)")
        source = "{type: sqlite, path: wh.sqlite}"
    for sql in (WRITES.format(table="t"), "delete from t", "drop table t"):
        _model_project(project, source, sql)
        r = project.run("run", "s")
        expect_fail(r, "a model must be exactly one SELECT statement")


def test_every_source_refuses_before_it_connects() -> None:
    """Every registered source class, built in or a plugin, has the one-query check in
    front of ``describe``, ``extract`` and ``load_into_duckdb`` (no connection is made:
    the check runs first, so an unconfigured instance is enough to prove it)."""
    for type_name in registry.source_types():
        cls = registry.source_class(type_name)
        source = object.__new__(cls)
        source.instance_name = "w"
        calls = [
            (source.describe, WRITES.format(table="t")),
            (source.extract, "update t set id = 2"),
            (source.load_into_duckdb, "select 1; select 2"),
        ]
        for method, sql in calls:
            with pytest.raises(ModelError, match="exactly one SELECT"):
                method(sql, model="m")


@pytest.mark.parametrize(
    "sql",
    [
        "select 'a;b' as id",
        "select 1 as id -- ; delete from t",
        "select 1 as id /* ; drop table t */",
        'select 1 as id, 2 as "we;ird"',
        "select 1 as id;",
        "select 1 as id ;\n;\n",
        "with x as (select 1 as id) select * from x",
        "(select 1 as id)",
        "from (select 1 as id)",
    ],
)
def test_one_query_with_semicolons_inside_is_fine(project: SampleProject, sql: str) -> None:
    _model_project(project, "{type: duckdb, path: warehouse.duckdb}", sql)
    project.sql("SELECT 1")
    r = project.run("validate", "--offline")
    assert r.code == 0, r


# -- secrets in every encoding ----------------------------------------------------------------

SECRET = "tok/EN+" + uuid.uuid4().hex[:12] + "=="


def _forms(secret: str) -> dict[str, str]:
    return {
        "raw": secret,
        "json \\/": json.dumps(secret)[1:-1].replace("/", "\\/"),
        "url": quote(secret, safe=""),
        "base64 user:pass": base64.b64encode(f"svc:{secret}".encode()).decode(),
    }


def test_a_token_echoed_back_never_leaks(project: SampleProject, receiver: Receiver) -> None:
    """A 401 that echoes the request's credentials, JSON-escaped (``\\/``), URL-encoded
    and as basic auth: before, the token came out almost whole in the CLI, --json,
    --debug and 23 times in the state database."""
    project.users([(1, "a@x.com", "free"), (2, "b@x.com", "free")])
    echo = {"error": "bad credentials", "echo": _forms(SECRET)}
    receiver.fake.queue_response(401, json.dumps(echo), times=5)
    project.write(
        f"""
        name: secrets
        sources: {{warehouse: {{type: duckdb, path: warehouse.duckdb}}}}
        destinations:
          hook:
            type: webhook
            url: "{receiver.url}"
            headers: {{X-Api-Key: "${{HOOK_TOKEN}}"}}
        models: {{users: {{source: warehouse, sql: select * from users, primary_key: id}}}}
        syncs: {{s: {{model: users, destination: hook}}}}
        """
    )
    env = {"HOOK_TOKEN": SECRET}
    outputs = [
        project.run("run", "s", env=env),
        project.run("run", "s", "--json", env=env),
        project.run("run", "s", "--debug", env=env),
        project.run("runs", "s", "--json", env=env),
        project.run("errors", "--sync", "s", env=env),
    ]
    assert "not authorised" in outputs[0].text, outputs[0]
    state = (project.root / ".undertow" / "state.db").read_bytes()
    for name, form in _forms(SECRET).items():
        for r in outputs:
            assert form not in r.text, (name, r)
        assert form.encode() not in state, name
    assert any(q.headers.get("x-api-key") == SECRET for q in receiver.fake.requests)


# -- header values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("pat-abc\n", "a line break (LF) at its end"),
        ("pat-abc\r\n", "a carriage return (CR) at its end"),
        ("pat\r\nX-Injected: 1", "a carriage return (CR) at position 4"),
    ],
)
@pytest.mark.parametrize("where", ["webhook header", "hubspot token"])
def test_header_values_from_the_environment(
    project: SampleProject, value: str, says: str, where: str
) -> None:
    destination = (
        '{type: webhook, url: "http://127.0.0.1:9/x", headers: {Authorization: "${TOKEN}"}}'
        if where == "webhook header"
        else '{type: hubspot, token: "${TOKEN}"}'
    )
    project.write(
        f"""
        name: headers
        destinations: {{crm: {destination}}}
        """
    )
    for args in (("validate", "--offline"), ("status",)):
        r = project.run(*args, env={"TOKEN": value})
        expect_fail(r, "undertow.yml:2 destinations.crm", says, "which an HTTP header cannot")
        assert "pat-abc" not in r.text and "pat" not in r.text.replace("path", "")


def test_a_control_character_from_the_dotenv_file(project: SampleProject) -> None:
    """An environment variable cannot hold a NUL byte, but the project's .env can."""
    (project.root / ".env").write_text('TOKEN="pat\x00abc"\n')
    project.write(
        """
        name: headers
        destinations: {crm: {type: hubspot, token: "${TOKEN}"}}
        """
    )
    r = project.run("validate", "--offline")
    expect_fail(r, "the value has a NUL byte at position 4")


def test_header_names_that_are_not_tokens(project: SampleProject) -> None:
    project.write(
        """
        name: headers
        destinations:
          hook: {type: webhook, url: "http://127.0.0.1:9/x", headers: {"X Api: Key": v}}
        """
    )
    r = project.run("validate", "--offline")
    expect_fail(r, "header name 'X Api: Key' is not a valid HTTP field name")


# -- templates --------------------------------------------------------------------------------

# no output: the time limit stops it (a loop that writes a character per step trips the
# size limit first on a fast machine, which the size cases below cover)
SLOW = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"


@pytest.mark.parametrize(
    ("template", "says"),
    [
        (SLOW, "template stopped: it ran longer than 1 s on this row"),
        ("{{ 'x' * 400000000 }}", "it would build a value of 400,000,000 characters"),
        ("{{ email|center(400000000) }}", "it would build a value of 400,000,000 characters"),
        ("{{ email.ljust(5000000) }}", "it would build a value of 5,000,000 characters"),
        ("{{ '%0999999999d' % id }}", "it would build a value of 999,999,999 characters"),
        ("{{ (id + 1) ** 99999999 }}", "the power 99999999 is too large"),
        (
            "{% for i in range(999) %}{{ email }}{{ 'y' * 2000 }}{% endfor %}",
            "more than the limit of 1,000,000 per row",
        ),
    ],
)
def test_templates_are_bounded_per_row(folder: Path, fake: Any, template: str, says: str) -> None:
    """The template runs away on row 1 only: row 1 is rejected with the reason, row 2 is
    sent, and the run takes seconds, not minutes."""
    receiver, url = fake
    users(folder, [(1, "a@x.com", "free"), (2, "b@x.com", "pro")])
    bounded = "{% if id == 1 %}" + template + "{% else %}ok{% endif %}"
    mappings = "{id: id, t: {template: '" + bounded.replace("'", "''") + "'}}"
    write(folder, f'{{type: webhook, url: "{url}"}}', mappings=mappings)
    started = time.monotonic()
    record, errors = run_once(folder)
    assert time.monotonic() - started < 30
    assert record.status is RunStatus.SUCCEEDED and record.warning is not None
    assert list(errors) == ["1"] and says in errors["1"], errors
    assert errors["1"].startswith("field 't': template stopped: ")
    assert ids_of(receiver) == [2]


def test_ctrl_c_stops_a_slow_template(project: SampleProject, receiver: Receiver) -> None:
    """Before: a nested-loop template ran for minutes and ignored Ctrl-C. Each row here
    takes a fraction of a second (under the per-row limit), 400 rows in all."""
    project.sql("CREATE TABLE users AS SELECT i AS id, 'u' || i AS email FROM range(400) t(i)")
    inner = "{% for i in range(300) %}{% for j in range(300) %}{% endfor %}{% endfor %}"
    project.write(
        f"""
        name: slow
        sources: {{warehouse: {{type: duckdb, path: warehouse.duckdb}}}}
        destinations: {{hook: {{type: webhook, url: "{receiver.url}"}}}}
        models: {{users: {{source: warehouse, sql: select * from users, primary_key: id}}}}
        syncs:
          s:
            model: users
            destination: hook
            mappings: {{id: id, t: {{template: '{inner}{{{{ email }}}}'}}}}
        """
    )
    proc = project.start("run", "s")
    try:
        state = project.root / ".undertow" / "state.db"
        deadline = time.monotonic() + 60
        while _latest_status(state) != "delivering":  # the templates are rendering now
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        time.sleep(1)
        assert proc.poll() is None, "still mapping"
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        _out, err = proc.communicate(timeout=20)
        stopped = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert stopped < 10, f"took {stopped:.1f}s to stop"
    assert "Traceback" not in err, err
    assert _latest_status(state) == "cancelled"
    assert len(receiver.records()) < 400


def _latest_status(state: Path) -> str | None:
    if not state.exists():
        return None
    with contextlib.closing(sqlite3.connect(state, timeout=10)) as con:
        try:
            row = con.execute(
                "select status from undertow_runs order by created_at desc limit 1"
            ).fetchone()
        except sqlite3.OperationalError:  # not migrated yet
            return None
    return None if row is None else str(row[0])


# -- YAML -------------------------------------------------------------------------------------


def test_a_yaml_alias_bomb(project: SampleProject) -> None:
    lines = ["name: bomb", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    (project.root / "undertow.yml").write_text("\n".join(lines) + "\n")
    assert (project.root / "undertow.yml").stat().st_size < 700
    r = project.run("validate", "--offline")
    expect_fail(r, "the file expands to more than 200,000 values", "alias")
    assert r.seconds < 20


def test_a_project_file_too_large(project: SampleProject) -> None:
    (project.root / "undertow.yml").write_text("name: big\n# " + "x" * (11 * 1024 * 1024))
    r = project.run("validate", "--offline")
    expect_fail(r, "more than the 10,485,760 a project file may be")


# -- the terminal -----------------------------------------------------------------------------

ESC = "\x1b"


def test_markup_and_escapes_from_data_are_printed_escaped(
    project: SampleProject, receiver: Receiver
) -> None:
    """Rich markup in a row key (``[/bold]``) crashed ``errors``, ``run`` and ``status``;
    ANSI escapes in data reached the terminal raw. Here the keys, a value and the
    destination's answer carry both, through every command that prints them."""
    keys = ["[/bold]", f"{ESC}[31mred{ESC}[0m", "[link=file:///etc]x[/link]", "a\rb"]
    project.sql("CREATE TABLE users (id VARCHAR, note VARCHAR)")
    project.sql(*(f"INSERT INTO users VALUES ({sql_text(k)}, {sql_text(k)})" for k in keys))
    receiver.fake.queue_response(400, f"[bold]bad[/] {ESC}]0;pwned{ESC}\\ {ESC}[2J", times=4)
    project.write(
        f"""
        name: markup
        sources: {{warehouse: {{type: duckdb, path: warehouse.duckdb}}}}
        destinations: {{hook: {{type: webhook, url: "{receiver.url}", batch_size: 1}}}}
        models: {{users: {{source: warehouse, sql: select * from users, primary_key: id}}}}
        syncs: {{s: {{model: users, destination: hook, max_rejected_ratio: 1}}}}
        """
    )
    first = project.run("run", "s")
    run_id = json.loads(project.run("runs", "s", "--json").out)[0]["run_id"]
    outputs = [
        first,
        project.run("errors", run_id),
        project.run("errors", "--sync", "s"),
        project.run("status"),
        project.run("runs", "s"),
        project.run("plan", "s"),
        project.run("retry", "s"),
    ]
    for r in outputs:
        assert "Traceback" not in r.text and "MarkupError" not in r.text, r
        assert ESC not in r.text and "\r" not in r.text, r
    shown = outputs[1].out + outputs[2].out
    assert "[/bold]" in shown and "[link=file:///etc]x[/link]" in shown
    assert "\\x1b[31mred\\x1b[0m" in shown and "a\\x0db" in shown
    assert "\\x1b]0;pwned" in shown


def sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def test_json_output_keeps_data_exact(project: SampleProject) -> None:
    """Escaping is for the terminal only: --json keeps the data exact."""
    project.sql("CREATE TABLE users AS SELECT '[/bold]' AS id")
    project.write(
        """
        name: exact
        sources: {warehouse: {type: duckdb, path: warehouse.duckdb}}
        destinations: {out: {type: file, path: out/o.jsonl}}
        models: {users: {source: warehouse, sql: select * from users, primary_key: id}}
        syncs: {s: {model: users, destination: out}}
        """
    )
    r = project.run("plan", "s", "--json")
    assert r.code == 0 and r.json()["samples"][0]["key"] == "[/bold]", r


# -- redirects of Undertow's own calls --------------------------------------------------------


class Recorder:
    """A server that records every request (any method) and answers ``status``."""

    def __init__(self, status: int = 200, location: str | None = None) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.status, self.location = status, location
        self.app = Starlette(routes=[Route("/{p:path}", self.handle, methods=["GET", "POST"])])

    async def handle(self, request: Request) -> Response:
        self.seen.append((request.method, dict(request.headers)))
        headers = {"location": self.location} if self.location else None
        return Response("moved", status_code=self.status, headers=headers)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_an_alert_webhook_redirect_is_a_failure_and_never_followed(status: int) -> None:
    """urllib followed 301/302/303 (a POST became a GET to the other host, the alert's
    headers and signature with it) and counted the other host's 200 as sent."""
    elsewhere = Recorder()
    with serve_in_thread(elsewhere.app) as other:
        redirector = Recorder(status, location=f"{other.url}/steal")
        with serve_in_thread(redirector.app) as server:
            channel = WebhookChannel(
                type="webhook", url=f"{server.url}/alerts", headers={"X-Api-Key": "k-123"}
            )
            alert = Alert(
                "p", "s", "run_failed", True, datetime.now(UTC), "boom", "undertow runs s"
            )
            with pytest.raises(urllib.error.HTTPError) as info:
                alerts.send(channel, alert)
    assert info.value.code == status
    assert len(redirector.seen) == 1 and elsewhere.seen == [], "never followed"
