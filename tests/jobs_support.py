"""An asynchronous job API of our own, for the tests of the kit's job support: a fake on the
fakes kit (submit a batch, poll its job, per-record results when it completes, shaped like
Zendesk's ``job_status``) and a kit destination for it (``type: jobs``).

``python tests/jobs_support.py run SYNC --project DIR`` runs the ``undertow`` command with
the ``jobs`` destination registered, so a chaos test can kill -9 a real process mid-job.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections import Counter
from typing import Any, ClassVar

import orjson
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.destinations.base import Job
from undertow.sdk import (
    Auth,
    Batch,
    BatchResult,
    BearerAuth,
    Capabilities,
    HttpConfig,
    HttpDestination,
    MatchRule,
    Operation,
    message_of,
    parse_json,
)
from undertow.testing.fakes import FakeAPI, RecordStore, bearer

TOKEN = "jobs-secret-token-1234"


class JobsFake(FakeAPI):
    """Submit ``POST /api/jobs {"users": [...]}`` -> ``{"job_status": {"id", "status"}}``; poll
    ``GET /api/jobs/{id}``: queued, working, then completed with ``results`` per index.
    Records are applied when the job completes; an email without ``@`` fails its record."""

    type = "jobs"
    vendor = "Jobs"

    def __init__(self, token: str = TOKEN, *, polls_to_complete: int = 2) -> None:
        super().__init__(auth=bearer(token))
        self.polls_to_complete = polls_to_complete
        self.users = RecordStore()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.submitted: Counter[str] = Counter()
        """How many times each batch body was submitted (by digest)."""
        self.polls: Counter[str] = Counter()
        self._lock2 = threading.Lock()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/jobs", self.submit, methods=["POST"]),
            Route("/api/jobs/{id}", self.poll, methods=["GET"]),
        ]

    async def submit(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        users = captured.body["users"]
        self.note_batch(len(users))
        with self._lock2:
            job_id = f"job-{len(self.jobs) + 1}"
            self.jobs[job_id] = {"users": users, "polls": 0, "results": None}
            self.submitted[hashlib.sha256(captured.raw).hexdigest()] += 1
        return self.respond(200, {"job_status": {"id": job_id, "status": "queued"}})

    async def poll(self, request: Request) -> Response:
        _, early = await self.admit(request)
        if early is not None:
            return early
        job_id = request.path_params["id"]
        with self._lock2:
            job = self.jobs.get(job_id)
            if job is None:
                return self.respond(404, {"error": "RecordNotFound"})
            job["polls"] += 1
            self.polls[job_id] += 1
            if job["results"] is None and job["polls"] >= self.polls_to_complete:
                job["results"] = self._apply(job["users"])
            status = "completed" if job["results"] is not None else "working"
            body = {"job_status": {"id": job_id, "status": status, "results": job["results"]}}
        return self.respond(200, body)

    def _apply(self, users: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = []
        for index, user in enumerate(users):
            email = str(user.get("email"))
            if "@" not in email:
                results.append({"index": index, "error": "EmailInvalid", "details": email})
                continue
            _, created = self.users.upsert("email", email, user)
            results.append({"index": index, "status": "Created" if created else "Updated"})
        return results


class JobsConfig(HttpConfig):
    token: SecretStr
    base_url: str = "https://jobs.example"


class JobsDestination(HttpDestination[JobsConfig]):
    """A kit destination on an asynchronous job API."""

    name = "jobs"
    vendor = "Jobs"
    async_jobs = True
    poll_interval: ClassVar[float] = 0.05
    capabilities = Capabilities(
        operations=frozenset({Operation.UPSERT}),
        max_batch_size=100,
        max_concurrency=1,
        per_record_results=True,
        match=MatchRule.exactly_one("email"),
    )

    def make_auth(self) -> Auth:
        return BearerAuth(self.config.token.get_secret_value())

    async def write_batch(self, batch: Batch) -> BatchResult:
        raise AssertionError("an async job destination is never asked to write_batch")

    async def submit_batch(self, batch: Batch) -> Job | BatchResult:
        body = {"users": batch.records()}
        response = await self.send("POST", "/api/jobs", body=orjson.dumps(body))
        answer = parse_json(response)
        if response.status != 200 or not isinstance(answer, dict):
            return BatchResult.all_rejected(len(batch), f"Jobs refused: {response.describe()}")
        job_id = str(answer["job_status"]["id"])
        return Job(job_id, {"url": f"/api/jobs/{job_id}"})

    async def poll_job(self, job: Job, batch: Batch) -> BatchResult | None:
        response = await self.send("GET", job.data["url"], expect=frozenset({200}))
        status = (parse_json(response) or {}).get("job_status") or {}
        if status.get("status") != "completed":
            return None
        result = BatchResult()
        for item in status.get("results") or []:
            if "error" in item:
                result.rejected[int(item["index"])] = message_of(
                    "Jobs", item, code="error", message="details"
                )
        return result


def main() -> None:
    from undertow import registry
    from undertow.cli import main as cli

    registry._classes[(registry.DESTINATIONS_GROUP, "jobs")] = JobsDestination
    sys.argv = ["undertow", *sys.argv[1:]]
    cli()


if __name__ == "__main__":
    main()
