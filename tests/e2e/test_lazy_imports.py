"""What ``undertow run`` imports. Start-up is most of a run that sends few rows (the
1%-changed run of ``bench/side_by_side.py``), so a run of a DuckDB -> webhook project whose
model is plain SQL and whose mapping has no template must not import what only other
projects or commands need: sqlglot (the one-query check's tokenizer), Jinja (templates),
Rich (human output: a --json run prints none), the server (FastAPI, uvicorn), Celery, the
other warehouses' drivers.

SQLAlchemy is still imported (the state store is built on it); the day it is not, add it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Receiver, SampleProject

pytestmark = pytest.mark.e2e

NOT_IMPORTED = [
    "sqlglot", "jinja2", "rich", "fastapi", "uvicorn", "starlette", "celery", "kombu", "redis",
    "psycopg", "pymysql", "httpx", "undertow.server", "undertow.sync_logs", "undertow.checks",
    "undertow.pipeline.diff.warehouse",
]  # fmt: skip

DRIVER = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from undertow.cli import main
sys.argv[0] = "undertow"
main()
"""


def imported_by(
    project: SampleProject, *args: str
) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    listing = project.root / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(listing), *args, "--project", str(project.root)],
        cwd=project.root,
        env=project.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return set(json.loads(Path(listing).read_text())), proc


def write_hook_project(project: SampleProject, receiver: Receiver, mappings: str) -> None:
    """One upsert sync of the users model to the receiver, with these ``mappings`` (YAML)."""
    project.write(
        f"""
        name: lazy
        sources:
          wh: {{type: duckdb, path: warehouse.duckdb}}
        destinations:
          hook: {{type: webhook, url: "{receiver.url}"}}
        models:
          users: {{source: wh, sql: "select id, email, plan from users", primary_key: id}}
        syncs:
          users_to_hook:
            model: users
            destination: hook
            mode: upsert
            mappings: {mappings}
        """
    )


def test_a_plain_duckdb_to_webhook_run_imports_only_what_it_needs(
    project: SampleProject, receiver: Receiver
) -> None:
    project.users([(1, "a@x.com", "free"), (2, "b@x.com", "pro")])
    write_hook_project(project, receiver, "{email: email, plan: plan}")
    for run in ("first", "second"):
        if run == "second":
            project.sql("UPDATE users SET plan = 'team' WHERE id = 1")
        modules, proc = imported_by(project, "run", "users_to_hook", "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout)["status"] == "succeeded"
        unexpected = [
            name
            for name in NOT_IMPORTED
            if any(m == name or m.startswith(name + ".") for m in modules)
        ]
        assert unexpected == [], f"the {run} run imported {unexpected}"
    assert len(receiver.records()) == 3  # both rows, then the changed one


def test_a_template_still_imports_jinja(project: SampleProject, receiver: Receiver) -> None:
    project.users([(1, "a@x.com", "free")])
    write_hook_project(project, receiver, '{email: email, label: {template: "{{ plan | upper }}"}}')
    modules, proc = imported_by(project, "run", "users_to_hook", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "jinja2" in modules
    assert [r["label"] for r in receiver.records()] == ["FREE"]
