"""Helpers shared by the bad-input catalogue's tests (``docs/bad-input.md``): sample
projects written in a folder, in-process runs with a fast retry policy, and the check that
nothing was lost (a healthy run afterwards delivers exactly the rows not yet accepted).
"""

from __future__ import annotations

import contextlib
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pytest

from undertow.pipeline.deliver import RetryPolicy
from undertow.pipeline.run import SyncContext
from undertow.project import Project
from undertow.state.store import RunRecord, RunStatus
from undertow.testing.server import serve_in_thread
from undertow.testing.webhook import WebhookReceiver

if TYPE_CHECKING:
    from tests.e2e.conftest import Result

IDS = [1, 2, 3, 4, 5]


def expect_fail(result: Result, *needles: str) -> None:
    assert result.code == 1, result
    for needle in needles:
        assert needle in result.text, f"{needle!r} missing from:\n{result}"
    assert "Traceback" not in result.text, result


def users(folder: Path, rows: list[tuple[Any, ...]] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(folder / "warehouse.duckdb")) as con:
        con.execute("CREATE OR REPLACE TABLE users (id INTEGER, email VARCHAR, plan VARCHAR)")
        rows = rows if rows is not None else [(i, f"u{i}@example.com", "free") for i in IDS]
        if rows:
            con.executemany("INSERT INTO users VALUES (?, ?, ?)", rows)


def write(
    folder: Path,
    destination: str,
    *,
    sync: str = "",
    sql: str = "select id, email, plan from users",
    mappings: str = "{id: id, email: email, plan: plan}",
) -> None:
    (folder / "undertow.yml").write_text(
        f"""
name: bad
sources:
  warehouse: {{type: duckdb, path: warehouse.duckdb}}
destinations:
  dest: {destination}
models:
  users: {{source: warehouse, sql: "{sql}", primary_key: id}}
syncs:
  users_sync:
    model: users
    destination: dest
    mappings: {mappings}
    max_rejected_ratio: 1
{sync}"""
    )


def hook(url: str, extra: str = "") -> str:
    return f'{{type: webhook, url: "{url}", batch_size: 1, max_concurrency: 1{extra}}}'


def load(folder: Path) -> Project:
    """The project, with a retry policy that fails over in milliseconds."""
    project = Project.load(str(folder))
    context = project.context

    def fast(name: str) -> SyncContext:
        ctx = context(name)
        ctx.retry = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)
        return ctx

    project.context = fast  # type: ignore[method-assign]
    return project


def run_once(folder: Path) -> tuple[RunRecord, dict[str, str]]:
    """One run; its record and {row key: reason} of its row errors."""
    project = load(folder)
    try:
        [record] = project.run(["users_sync"])
        return record, {e.row_key: e.reason for e in project.errors(record.id)}
    finally:
        project.close()


def redirect(folder: Path, destination: str) -> None:
    """Point the sync's destination somewhere else (the user fixed the URL, the server...)."""
    text = (folder / "undertow.yml").read_text()
    start = text.index("  dest: ") + len("  dest: ")
    end = text.index("\n", start)
    (folder / "undertow.yml").write_text(text[:start] + destination + text[end:])


def ids_of(receiver: WebhookReceiver) -> list[int]:
    return sorted(int(r["id"]) for r in receiver.records)


def healthy_run_sends(folder: Path, expected: list[int]) -> None:
    """Nothing lost: a run against a healthy receiver delivers exactly ``expected``."""
    fine = WebhookReceiver()
    with serve_in_thread(fine.app) as server:
        redirect(folder, hook(server.url + "/hook"))
        record, errors = run_once(folder)
    assert record.status is RunStatus.SUCCEEDED, (record.error, errors)
    assert ids_of(fine) == expected


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A real, small file system (tmpfs of ``size``) mounted at ``where``: a full disk that
    the kernel reports as ENOSPC. Needs root (tests and CI run as root here)."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"cannot mount a small tmpfs at {where} ({done.stderr.strip()}): the full-disk "
            "tests need root; run them as root, e.g. `sudo make test`",
            pytrace=False,
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def grow(where: Path, size: str) -> None:
    """Give the small disk more room (the user freed some space)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` bind-mounted read-only onto itself: nothing can be written there, not
    even by root (EROFS). Needs root, like :func:`small_disk`."""
    done = subprocess.run(
        ["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.fail(
            f"cannot bind-mount {folder} ({done.stderr.strip()}): the read-only folder "
            "tests need root; run them as root, e.g. `sudo make test`",
            pytrace=False,
        )
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)
