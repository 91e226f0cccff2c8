"""Helpers of the orchestration tests (a module with a unique name: ``conftest`` is not
importable from test files when several folders have one)."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from undertow.orchestration.schedule import ManualClock
from undertow.orchestration.scheduler import Scheduler
from undertow.project import Project

FIXTURES = Path(__file__).parent / "fixtures"


class Workspace:
    """A project folder: ``users`` in a DuckDB warehouse, syncs written per test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "out").mkdir(exist_ok=True)
        self.warehouse = root / "wh.duckdb"
        self.users(3, updated=datetime.now(UTC))
        self.projects: list[Project] = []

    def sql(self, statement: str, params: list[Any] | None = None) -> None:
        with duckdb.connect(str(self.warehouse)) as con:
            con.execute(statement, params or [])

    def users(self, count: int, *, updated: datetime, plan: str = "free") -> None:
        self.sql(
            "create or replace table users as select i as id, 'u' || i || '@x.com' as email, "
            f"'{plan}' as plan, ?::timestamptz as updated_at from range(1, {count} + 1) t(i)",
            [updated],
        )

    def write(self, syncs: str, extra: str = "", *, models: str = "") -> None:
        """``syncs`` under `syncs:`; ``models`` more lines under `models:`; ``extra`` top-level."""
        head = """
        name: orch
        sources:
          wh: {type: duckdb, path: wh.duckdb}
        destinations:
          out_a: {type: file, path: out/a.jsonl}
          out_b: {type: file, path: out/b.jsonl}
          out_c: {type: file, path: out/c.jsonl}
          out_d: {type: file, path: out/d.jsonl}
        models:
          users: {source: wh, sql: "select id, email, plan, updated_at from users", primary_key: id}
        """
        text = textwrap.dedent(head) + models + textwrap.dedent(extra) + "syncs:\n"
        text += textwrap.indent(textwrap.dedent(syncs).strip() + "\n", "  ")
        (self.root / "undertow.yml").write_text(text)

    def load(self) -> Project:
        project = Project.load(str(self.root))
        self.projects.append(project)
        return project

    def scheduler(self, project: Project, clock: ManualClock) -> Scheduler:
        return Scheduler(project, clock=clock, inline=True)

    def lines(self, name: str) -> list[dict[str, Any]]:
        path = self.root / "out" / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        for project in self.projects:
            project.close()


def rewrite_run_results(
    project_dir: Path,
    results: dict[str, str],
    *,
    at: datetime,
    invocation: str,
    package: str = "analytics",
) -> None:
    """Simulate a dbt invocation: ``results`` maps model name -> status (success/error)."""
    path = project_dir / "target" / "run_results.json"
    data = json.loads(path.read_text())
    template = data["results"][0]
    out = []
    for name, status in results.items():
        entry = json.loads(json.dumps(template))
        entry["unique_id"] = f"model.{package}.{name}"
        entry["status"] = status
        for timing in entry["timing"]:
            timing["started_at"] = (at - timedelta(seconds=2)).isoformat().replace("+00:00", "Z")
            timing["completed_at"] = (at - timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
        out.append(entry)
    data["results"] = out
    data["metadata"]["generated_at"] = at.isoformat().replace("+00:00", "Z")
    data["metadata"]["invocation_id"] = invocation
    path.write_text(json.dumps(data))
