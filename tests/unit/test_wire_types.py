"""Model types that a first week of use trips over, end to end through `validate` and `run`:
a DuckDB INTERVAL (mapped or not) and a HUGEINT, sent as docs/mapping.md's wire formats say."""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson
import pytest

from undertow.project import Project

pytestmark = pytest.mark.unit


def project(folder: Path, select: str, mappings: str) -> Project:
    folder.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(folder / "wh.duckdb")) as con:
        con.execute(f"create or replace table t as {select}")
    (folder / "undertow.yml").write_text(
        f"""name: types
sources:
  wh: {{type: duckdb, path: wh.duckdb}}
destinations:
  out: {{type: file, path: out.jsonl, format: jsonl}}
models:
  m: {{source: wh, sql: select * from t, primary_key: id}}
syncs:
  s:
    model: m
    destination: out
    mode: upsert
    mappings: {mappings}
"""
    )
    return Project.load(str(folder))


def sent(folder: Path) -> list[dict[str, object]]:
    """The records the file destination wrote, without its ``operation`` field."""
    lines = (folder / "out.jsonl").read_bytes().splitlines()
    return [{k: v for k, v in orjson.loads(line).items() if k != "operation"} for line in lines]


def test_an_unmapped_interval_column_neither_breaks_validate_nor_run(tmp_path: Path) -> None:
    proj = project(
        tmp_path / "p",
        "select 1 as id, 'a@x.com' as email, interval 3 day as waited",
        "{id: id, email: email}",
    )
    try:
        assert proj.validate(connect=False) == []
        [record] = proj.run(["s"])
        assert str(record.status) == "succeeded", record.error
        assert sent(tmp_path / "p") == [{"id": 1, "email": "a@x.com"}]
        assert proj.plan("s").counts.extracted == 1
    finally:
        proj.close()


@pytest.mark.parametrize(
    ("interval", "iso"),
    [
        ("interval 90 second", "PT1M30S"),
        ("interval 3 day", "P3D"),
        ("interval '1 year 2 months 3 days 04:05:06.5'", "P1Y2M3DT4H5M6.5S"),
        ("interval 0 second", "PT0S"),
        ("- interval 26 hour", "PT-26H"),
        ("interval '-14 months'", "P-1Y-2M"),
    ],
)
def test_a_mapped_interval_goes_out_as_an_iso_8601_duration(
    tmp_path: Path, interval: str, iso: str
) -> None:
    proj = project(
        tmp_path / "p", f"select 1 as id, {interval} as waited", "{id: id, waited: waited}"
    )
    try:
        [record] = proj.run(["s"])
        assert str(record.status) == "succeeded", record.error
        assert sent(tmp_path / "p") == [{"id": 1, "waited": iso}]
    finally:
        proj.close()


def test_hugeint_values_go_out_as_numbers_with_every_digit(tmp_path: Path) -> None:
    big = 170141183460469231731687303715884105727  # the largest HUGEINT
    proj = project(
        tmp_path / "p",
        f"select 1 as id, {big}::hugeint as big union all select 2, -5::hugeint "
        "union all select 3, null::hugeint",
        "{id: id, big: big, label: {template: '{{ row.big }}'}}",
    )
    try:
        [record] = proj.run(["s"])
        assert str(record.status) == "succeeded", record.error
        body = (tmp_path / "p" / "out.jsonl").read_text()
        assert f'"big":{big}' in body  # a JSON number, not a string, all 39 digits
        by_id = {r["id"]: r for r in sent(tmp_path / "p")}
        assert by_id[2]["big"] == -5 and by_id[3]["big"] is None
        assert by_id[1]["label"] == str(big)
    finally:
        proj.close()


def test_a_decimal_column_still_goes_out_as_exact_text(tmp_path: Path) -> None:
    proj = project(
        tmp_path / "p",
        "select 1 as id, 12.50::decimal(38, 0) as d0, 12.50::decimal(10, 2) as d2",
        "{id: id, d0: d0, d2: d2}",
    )
    try:
        [record] = proj.run(["s"])
        assert str(record.status) == "succeeded", record.error
        assert sent(tmp_path / "p") == [{"id": 1, "d0": "13", "d2": "12.50"}]
    finally:
        proj.close()


def test_a_duckdb_json_column_mapped_directly_goes_out_as_json(tmp_path: Path) -> None:
    proj = project(
        tmp_path / "p",
        """select 1 as id, '{"plan": "pro", "seats": 12.50}'::json as settings""",
        "{id: id, settings: settings, as_text: {column: settings, cast: string}}",
    )
    try:
        [record] = proj.run(["s"])
        assert str(record.status) == "succeeded", record.error
        [row] = sent(tmp_path / "p")
        assert row["settings"] == {"plan": "pro", "seats": 12.5}
        assert orjson.loads(str(row["as_text"])) == {"plan": "pro", "seats": 12.5}
        assert '"seats": 12.50' in (tmp_path / "p" / "out.jsonl").read_text()  # as written
    finally:
        proj.close()
