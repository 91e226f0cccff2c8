"""What a first week of use trips over, through the real `undertow` command: each test failed
before its fix (issue 15, part 2)."""

from __future__ import annotations

from importlib.metadata import version
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import SampleProject

pytestmark = pytest.mark.e2e


def test_version_prints_the_installed_version(project: SampleProject) -> None:
    result = project.run("--version", project=False)
    assert result.code == 0, result
    assert result.out.strip() == f"undertow {version('undertow')}"


def test_runs_marks_a_run_that_succeeded_with_a_warning(project: SampleProject) -> None:
    project.users([(1, "a@x.com", "free"), (2, "b@x.com", "free"), (2, "b2@x.com", "pro")])
    project.write(
        """
        name: warn
        sources:
          warehouse: {type: duckdb, path: warehouse.duckdb}
        destinations:
          out: {type: file, path: out/users.jsonl, format: jsonl}
        models:
          users: {source: warehouse, sql: select * from users, primary_key: id}
        syncs:
          users_out:
            model: users
            destination: out
            mode: upsert
            max_rejected_ratio: 1
        """
    )
    ran = project.run("run", "users_out")
    assert ran.code == 0 and "with warning" in ran.out, ran
    listed = project.run("runs", "users_out")
    assert listed.code == 0, listed
    assert "succeeded with warning" in " ".join(listed.out.split()), listed
    assert "2 of 3 row(s) rejected" in " ".join(listed.out.split()), listed


def test_a_missing_variable_does_not_hide_the_other_problems(project: SampleProject) -> None:
    project.users([(1, "a@x.com", "free")])
    project.write(
        """
        name: problems
        sources:
          warehouse: {type: duckdb, path: warehouse.duckdb}
        destinations:
          out: {type: file, path: out/users.jsonl, format: jsonl}
          crm: {type: hubspot, token: "${HUBSPOT_TOKEN}"}
        models:
          users: {source: warehouse, sql: select * from users, primary_key: id}
          broken: {source: warehouse, sql: select nope from users, primary_key: id}
        syncs:
          users_out:
            model: users
            destination: out
            mode: upsert
            mappings: {id: id, email: emial}
          users_crm:
            model: users
            destination: crm
            object: contacts
            mode: upsert
            match: {email: email}
        """
    )
    result = project.run("validate", "--offline")
    assert result.code == 1, result
    text = result.text
    assert "HUBSPOT_TOKEN is not set" in text, result
    assert text.count("HUBSPOT_TOKEN is not set") == 1, "reported once, not once per user"
    assert "models.broken" in text and '"nope"' in text, result
    assert "syncs.users_out" in text and "did you mean 'email'" in text, result
    assert "3 problem(s) found" in text, result
