"""status, runs and errors read history only: they work without the connectors' secrets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from undertow.errors import ConfigError
from undertow.project import Project

UNDERTOW = str(Path(sys.executable).parent / "undertow")


def _project(root: Path) -> None:
    with duckdb.connect(str(root / "wh.duckdb")) as con:
        con.execute("create table users as select i as id from range(3) t(i)")
    (root / "undertow.yml").write_text(
        """
name: history
sources:
  wh: {type: duckdb, path: wh.duckdb}
destinations:
  hook: {type: webhook, url: "${UT_TEST_HOOK_URL}", headers: {Authorization: "Bearer ${UT_TEST_TOKEN}"}}
models:
  users: {source: wh, sql: select id from users, primary_key: id}
syncs:
  users_hook: {model: users, destination: hook}
"""
    )


def test_history_loads_without_secrets_and_using_the_connector_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UT_TEST_HOOK_URL", raising=False)
    monkeypatch.delenv("UT_TEST_TOKEN", raising=False)
    _project(tmp_path)
    with pytest.raises(ConfigError, match="UT_TEST_HOOK_URL"):
        Project.load(str(tmp_path))  # a run needs them: strict by default
    project = Project.load(str(tmp_path), require_secrets=False)
    try:
        (row,) = project.status()
        assert row["sync"] == "users_hook" and row["last_run"] is None
        assert project.runs("users_hook") == []
        with pytest.raises(ConfigError, match="UT_TEST_HOOK_URL") as err:
            project.destination("hook")
        assert "export UT_TEST_HOOK_URL" in str(err.value)
    finally:
        project.close()


def test_the_cli_status_and_runs_work_without_secrets(tmp_path: Path) -> None:
    _project(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for command in (["status"], ["runs", "users_hook"]):
        done = subprocess.run(
            [UNDERTOW, *command, "--project", str(tmp_path), "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [UNDERTOW, "run", "users_hook", "--project", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1 and "UT_TEST_HOOK_URL" in done.stderr
