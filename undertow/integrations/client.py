"""A tiny client of the ``undertow serve`` API: trigger a sync and wait for its run."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from undertow.errors import UndertowError
from undertow.redact import redact

FINAL = ("succeeded", "failed", "cancelled", "skipped")


class SyncFailed(UndertowError):
    """A sync run ended in anything but ``succeeded``."""

    def __init__(self, run: dict[str, Any]) -> None:
        self.run = run
        super().__init__(
            f"sync {run.get('sync')!r} run {run.get('run_id')} ended {run.get('status')}: "
            f"{run.get('error') or 'no error message'}",
            hint=f"`undertow runs {run.get('sync')}` and `undertow errors {run.get('run_id')}` "
            "show what happened",
        )


class UndertowClient:
    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = redact(exc.read().decode(errors="replace")[:300])
            raise UndertowError(
                f"{method} {path} on undertow serve answered {exc.code}: {detail}",
                hint="check the URL and the API token"
                if exc.code == 401
                else "check the sync name (`GET /api/syncs` lists them)",
            ) from None
        except OSError as exc:
            raise UndertowError(
                f"undertow serve at {self.url} cannot be reached: {exc}",
                hint="is `undertow serve` running there?",
            ) from None

    def runs(self, sync: str, limit: int = 5) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.call("GET", f"/api/syncs/{sync}/runs?limit={limit}")
        return found

    def run_and_wait(
        self, sync: str, *, full: bool = False, timeout: float = 3600.0, poll: float = 2.0
    ) -> dict[str, Any]:
        """Trigger ``sync``, wait for the run it starts, raise SyncFailed unless it succeeded."""
        before = {r["run_id"] for r in self.runs(sync, limit=20)}
        self.call("POST", f"/api/syncs/{sync}/trigger", {"full": full})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for run in self.runs(sync):
                if run["run_id"] not in before and run["status"] in FINAL:
                    if run["status"] != "succeeded":
                        raise SyncFailed(run)
                    return run
            time.sleep(poll)
        raise UndertowError(
            f"sync {sync!r} did not finish within {timeout:.0f}s",
            hint="raise the timeout, or look at `GET /api/syncs/{sync}`",
        )


def run_in_process(
    project_dir: str, syncs: list[str], *, full: bool = False
) -> list[dict[str, Any]]:
    """Run ``syncs`` of the project in ``project_dir`` here; raise SyncFailed on a failure."""
    from undertow.project import Project

    project = Project.load(project_dir)
    try:
        done = project.run(syncs, full=full, trigger="orchestrator")
        # the same JSON objects as the HTTP API's, so both paths return one shape
        records: list[dict[str, Any]] = [dict(r.as_dict()) for r in done]
    finally:
        project.close()
    for record in records:
        if record["status"] != "succeeded":
            raise SyncFailed(record)
    return records
