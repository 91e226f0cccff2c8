"""`undertow destinations --json` lists every destination of issue 12, each with its docs page."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from undertow.cli import app

pytestmark = pytest.mark.e2e

PART4 = (
    "slack",
    "teams",
    "google_sheets",
    "rabbitmq",
    "nats",
    "redis_streams",
    "mqtt",
    "mysql",
    "mariadb",
    "duckdb",
    "snowflake",
    "s3",
    "sftp",
)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "destinations"


def test_destinations_json_lists_every_part_4_destination() -> None:
    result = CliRunner().invoke(app, ["destinations", "--json"])
    assert result.exit_code == 0, result.output
    entries = {e["type"]: e for e in orjson.loads(result.output)}
    for name in PART4:
        assert name in entries and "error" not in entries[name], entries.get(name)
        assert entries[name]["operations"], name
        page = "mysql" if name == "mariadb" else name
        assert (DOCS / f"{page}.md").is_file(), page
    assert entries["redis_streams"]["max_concurrency"] == 1
    assert entries["google_sheets"]["rate_limits"][0] == {
        "requests": 60,
        "per_seconds": 60.0,
        "doc": "https://developers.google.com/sheets/api/limits",
    }
