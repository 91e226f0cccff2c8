"""PostgreSQL `json`/`jsonb` columns mapped directly go out as JSON values; MariaDB's `JSON`
is LONGTEXT on the wire (nothing marks it), so it takes `json:` (the real servers of this
machine, the `file` destination)."""

from __future__ import annotations

from pathlib import Path

import orjson
import psycopg
import pymysql
import pytest

from undertow.project import Project

pytestmark = pytest.mark.integration


def run_and_read(
    folder: Path, source: str, sql: str, mappings: str = "{id: id, doc: doc, raw: raw}"
) -> dict[str, object]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "undertow.yml").write_text(
        f"""name: js
sources:
  wh: {source}
destinations:
  out: {{type: file, path: out.jsonl, format: jsonl}}
models:
  m: {{source: wh, sql: "{sql}", primary_key: id}}
syncs:
  s: {{model: m, destination: out, mode: upsert, mappings: {mappings}}}
"""
    )
    project = Project.load(str(folder))
    try:
        [record] = project.run(["s"])
        assert str(record.status) == "succeeded", record.error
    finally:
        project.close()
    [line] = (folder / "out.jsonl").read_bytes().splitlines()
    row: dict[str, object] = orjson.loads(line)
    return row


def test_postgres_jsonb_and_json_columns_go_out_as_json(tmp_path: Path, pg_database: str) -> None:
    with psycopg.connect(pg_database, autocommit=True) as con:
        con.execute("create table t (id int, doc jsonb, raw json)")
        con.execute("""insert into t values (1, '{"a": [1, 2], "b": null}', '{"n": 1.50}')""")
    row = run_and_read(
        tmp_path / "p", f'{{type: postgres, url: "{pg_database}"}}', "select * from t"
    )
    assert row["doc"] == {"a": [1, 2], "b": None}
    assert row["raw"] == {"n": 1.5}


def test_mariadb_json_columns_take_json_to_go_out_as_json(
    tmp_path: Path, mariadb_database: str
) -> None:
    name = mariadb_database.rsplit("/", 1)[1]
    with pymysql.connect(host="127.0.0.1", port=3306, user="root", database=name) as con:
        with con.cursor() as cur:
            cur.execute("create table t (id int, doc json, raw json)")
            cur.execute("""insert into t values (1, '{"a": [1, 2]}', '[true, null]')""")
        con.commit()
    row = run_and_read(
        tmp_path / "p",
        f'{{type: mariadb, url: "{mariadb_database}"}}',
        "select * from t",
        "{id: id, doc: {json: doc}, raw: raw}",
    )
    assert row["doc"] == {"a": [1, 2]}
    assert row["raw"] == "[true, null]"  # docs/sources/mysql.md says why
