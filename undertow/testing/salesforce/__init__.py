"""A faithful local fake of a Salesforce org: OAuth, describe, sObject Collections, Bulk API 2.0.

Used by the connector tests, the conformance tests and ``undertow demo --destination
salesforce``::

    fake = SalesforceFake("client-secret")            # client credentials
    fake = SalesforceFake(private_key_pem)            # JWT bearer (verified for real)
    fake = SalesforceFake("5Aep...", kind="refresh_token")
    with fake.serve() as url:
        ...   # base_url: url (the login URL; instance_url comes back from the token call)
    fake.records("Contact").by("Customer_Id__c", "42")

It answers as ``../shared/specs/salesforce/NOTES.md`` and the Postman items there describe
(``docs/destinations/salesforce.md`` has the vendor links):

* ``POST /services/oauth2/token`` (:mod:`.oauth`): client credentials, JWT bearer, refresh
  token; ``instance_url`` in the answer is where the REST API lives (``instance_host`` makes
  it a different origin from the login URL, as it is on Salesforce);
* ``Authorization: Bearer <access token>`` on every REST call, else 401
  ``INVALID_SESSION_ID``; sessions expire after ``session_seconds``;
* ``GET /services/data/`` (versions), ``/vNN.0/limits``, ``/vNN.0/sobjects`` and
  ``/vNN.0/sobjects/{object}/describe`` from the org's metadata (:mod:`.schema`);
* sObject Collections, single-record sObject REST and the SOQL the connector sends
  (:mod:`.rest`); Bulk API 2.0 ingest jobs (:mod:`.bulk`), processed ``job_seconds`` after
  the client closes them;
* the daily API request allocation as an exact rolling 24 h window: over it, 403
  ``REQUEST_LIMIT_EXCEEDED`` ("TotalRequests Limit exceeded."); ``throttle_next`` answers
  the concurrent-request variant; ``Sforce-Limit-Info: api-usage=N/M`` on every answer.

Seeded faults (``fault_plan``) apply to sObject Collections writes; a ``ledger`` records
every applied record with its sObject.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import CapturedRequest, RecordStore, Window
from undertow.testing.faults import FaultPlan, Ledger
from undertow.testing.salesforce.base import PREFIX, sf_error
from undertow.testing.salesforce.bulk import JobError, Jobs
from undertow.testing.salesforce.oauth import ConnectedApp, Sessions, TokenError
from undertow.testing.salesforce.records import Org
from undertow.testing.salesforce.rest import RestRoutes
from undertow.testing.salesforce.schema import Field, SObject, default_objects

DEMO_CLIENT_ID = "3MVG9undertow.demo.connected.app"
DEMO_USERNAME = "integration@undertow-demo.example"
DAILY_REQUESTS = 100_000
"""Enterprise Edition's base daily allocation (100,000 + 1,000 per licence)."""
VERSIONS = ("58.0", "59.0", "60.0", "61.0", "62.0", "63.0", "64.0", "65.0", "66.0")

__all__ = ["DEMO_CLIENT_ID", "DEMO_USERNAME", "Field", "SObject", "SalesforceFake"]


def public_key_of(private_pem: str) -> str | None:
    """The public key of a PEM private key (None when the text is not one)."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    except (ValueError, TypeError):
        return None
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


class SalesforceFake(RestRoutes):
    """An in-memory Salesforce org served as a Starlette app (``.app``)."""

    def __init__(
        self,
        credential: str = "demo-token",
        *,
        kind: Literal["auto", "client_secret", "private_key", "refresh_token"] = "auto",
        client_id: str = DEMO_CLIENT_ID,
        client_secret: str | None = None,
        username: str = DEMO_USERNAME,
        certificate: str | None = None,
        refresh_tokens: Iterable[str] = (),
        run_as_user: bool = True,
        my_domain: bool = True,
        session_seconds: float = 7200.0,
        instance_host: str | None = None,
        daily_api_requests: int = DAILY_REQUESTS,
        job_seconds: float = 0.2,
        query_page: int = 2000,
        objects: Mapping[str, SObject] | None = None,
        fault_plan: FaultPlan | None = None,
        ledger: Ledger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if kind == "auto":
            kind = "private_key" if "PRIVATE KEY-----" in credential else "client_secret"
        tokens = set(refresh_tokens)
        if kind == "client_secret":
            client_secret = client_secret or credential
        elif kind == "private_key":
            certificate = certificate or public_key_of(credential)
        else:
            tokens.add(credential)
        self.app_config = ConnectedApp(
            client_id, client_secret, username, certificate, tokens, run_as_user
        )
        self.sessions = Sessions(
            self.app_config, session_seconds=session_seconds, my_domain=my_domain, clock=clock
        )
        self.instance_host = instance_host
        self.job_seconds = job_seconds
        self.query_page = query_page
        self.cursors = {}
        self.org = Org({**default_objects(), **(objects or {})}, ledger)
        self.jobs = Jobs(self.org)
        self.hold_jobs = False
        """True: closed Bulk jobs wait (InProgress) until :meth:`release_jobs`."""
        self.held: list[str] = []
        self.polls: Counter[str] = Counter()
        """``GET /jobs/ingest/{id}`` answers per job id."""
        super().__init__(
            auth=lambda request: self.sessions.valid(request.headers.get("authorization")),
            windows=[Window(daily_api_requests, 86_400.0, "TotalRequests")],
            fault_plan=fault_plan,
            ledger=ledger,
            clock=clock,
        )

    # -- what tests read ---------------------------------------------------------------------

    def records(self, sobject: str) -> RecordStore:
        """The records of one sObject (Salesforce id -> fields)."""
        return self.org.store(sobject)

    def release_jobs(self) -> None:
        """Process the jobs held by ``hold_jobs`` now (and stop holding new ones)."""
        self.hold_jobs = False
        while self.held:
            self.jobs.process(self.held.pop(0))

    @property
    def daily_limit(self) -> int:
        return self.windows[0].limit

    def reset(self) -> None:
        with self._lock:
            super().reset()
            self.org.reset()
            self.jobs.jobs.clear()

    # -- the vendor's answers ----------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        window = self.windows[0]
        used = window.limit - window.remaining(self.clock())
        return {"Sforce-Limit-Info": f"api-usage={used}/{window.limit}"}

    def slow_down(self, window: Window | None) -> Response:
        if window is not None:
            body = sf_error("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        else:
            body = sf_error(
                "REQUEST_LIMIT_EXCEEDED",
                "ConcurrentRequests (Concurrent API Requests) Limit exceeded.",
            )
        return self.respond(403, body)

    def unauthorized(self, captured: CapturedRequest) -> Response:
        return self.respond(401, sf_error("INVALID_SESSION_ID", "Session expired or invalid"))

    def routes(self) -> list[BaseRoute]:
        p = PREFIX
        return [
            Route("/services/oauth2/token", self._token, methods=["POST"]),
            Route("/services/data", self._versions, methods=["GET"]),
            Route("/services/data/", self._versions, methods=["GET"]),
            Route(f"{p}/limits", self._limits, methods=["GET"]),
            Route(f"{p}/sobjects", self._global, methods=["GET"]),
            Route(f"{p}/sobjects/{{object}}/describe", self._describe, methods=["GET"]),
            *self.rest_routes(),
            Route(f"{p}/jobs/ingest", self._jobs, methods=["GET", "POST"]),
            Route(f"{p}/jobs/ingest/{{job}}", self._job, methods=["GET", "PATCH", "DELETE"]),
            Route(f"{p}/jobs/ingest/{{job}}/batches", self._upload, methods=["PUT"]),
            Route(f"{p}/jobs/ingest/{{job}}/{{which}}", self._results, methods=["GET"]),
        ]

    # -- OAuth and metadata ------------------------------------------------------------------

    def instance_url(self, request: Request) -> str:
        base = str(request.base_url).rstrip("/")
        if not self.instance_host:
            return base
        parts = urlsplit(base)
        netloc = f"{self.instance_host}:{parts.port}" if parts.port else self.instance_host
        return urlunsplit((parts.scheme, netloc, "", "", ""))

    async def _token(self, request: Request) -> Response:
        captured = await self.capture(request)  # the token endpoint is not a REST API call
        if "x-www-form-urlencoded" not in request.headers.get("content-type", ""):
            body = TokenError("invalid_request", "invalid content type").body()
            return self._answer(captured, 400, body)
        form = captured.body if isinstance(captured.body, dict) else {}
        login_url = str(request.base_url).rstrip("/")
        try:
            answer = self.sessions.login(form, self.instance_url(request), login_url)
        except TokenError as exc:
            return self._answer(captured, exc.status, exc.body())
        return self._answer(captured, 200, answer)

    def _answer(self, captured: CapturedRequest, status: int, body: Any) -> Response:
        captured.status = status
        return self.respond(status, body, {"Cache-Control": "no-cache,must-revalidate,no-store"})

    async def _versions(self, request: Request) -> Response:
        await self.capture(request)  # not counted against the allocation, as documented
        return self.respond(
            200,
            [{"label": f"v{v}", "url": f"/services/data/v{v}", "version": v} for v in VERSIONS],
        )

    async def _limits(self, request: Request) -> Response:
        _, _, early = await self.enter(request)
        if early is not None:
            return early
        window = self.windows[0]
        remaining = window.remaining(self.clock())
        return self.respond(
            200,
            {
                "DailyApiRequests": {"Max": window.limit, "Remaining": remaining},
                "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000},
                "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000},
            },
        )

    async def _global(self, request: Request) -> Response:
        _, _, early = await self.enter(request)
        if early is not None:
            return early
        sobjects = [
            {k: v for k, v in o.describe().items() if k != "fields"}
            for o in self.org.objects.values()
        ]
        return self.respond(200, {"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": sobjects})

    async def _describe(self, request: Request) -> Response:
        _, _, early = await self.enter(request)
        if early is not None:
            return early
        sobject = self.org.sobject(request.path_params["object"])
        if sobject is None:
            return self.not_found()
        return self.respond(200, sobject.describe())

    # -- Bulk API 2.0 ingest -----------------------------------------------------------------

    async def _jobs(self, request: Request) -> Response:
        captured, version, early = await self.enter(request, 41)
        if early is not None:
            return early
        if request.method == "GET":
            records = [j.info(full=False) for j in self.jobs.jobs.values()]
            return self.respond(200, {"done": True, "records": records, "nextRecordsUrl": None})
        try:
            job = self.jobs.create(captured.body, version)
        except JobError as exc:
            return self.respond(exc.status, exc.body())
        return self.respond(200, job.info(full=False))

    async def _job(self, request: Request) -> Response:
        captured, _, early = await self.enter(request, 41)
        if early is not None:
            return early
        job_id = request.path_params["job"]
        try:
            if request.method == "GET":
                info = self.jobs.get(job_id).info(full=True)
                self.polls[job_id] += 1
                return self.respond(200, info)
            if request.method == "DELETE":
                self.jobs.delete(job_id)
                return self.respond(204)
            state = captured.body.get("state") if isinstance(captured.body, dict) else None
            job = self.jobs.close(job_id, state)
        except JobError as exc:
            return self.respond(exc.status, exc.body())
        if job.state == "UploadComplete":
            self._schedule(job_id)
        return self.respond(200, job.info(full=False))

    def _schedule(self, job_id: str) -> None:
        """Salesforce's background processing: InProgress at once, done ``job_seconds`` later."""
        if self.hold_jobs:
            self.jobs.start(job_id)
            self.held.append(job_id)
            return
        loop = asyncio.get_running_loop()
        loop.call_later(self.job_seconds / 2, self.jobs.start, job_id)
        loop.call_later(self.job_seconds, self.jobs.process, job_id)

    async def _upload(self, request: Request) -> Response:
        captured, _, early = await self.enter(request, 41)
        if early is not None:
            return early
        if not request.headers.get("content-type", "").startswith("text/csv"):
            return self.respond(
                400, sf_error("INVALIDCONTENTTYPE", "Content-Type must be text/csv")
            )
        try:
            rows = self.jobs.upload(request.path_params["job"], captured.raw)
        except JobError as exc:
            return self.respond(exc.status, exc.body())
        self.note_batch(rows)
        return self.respond(201)

    async def _results(self, request: Request) -> Response:
        _, _, early = await self.enter(request, 41)
        if early is not None:
            return early
        which = request.path_params["which"]
        if which not in ("successfulResults", "failedResults", "unprocessedrecords"):
            return self.not_found()
        try:
            text = self.jobs.results(request.path_params["job"], which)
        except JobError as exc:
            return self.respond(exc.status, exc.body())
        extra = {**self.headers(), "Content-Type": "text/csv"}
        return Response(text, status_code=200, headers=extra, media_type="text/csv")
