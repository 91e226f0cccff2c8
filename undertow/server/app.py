"""The HTTP API of ``undertow serve`` (FastAPI; the OpenAPI document is at /openapi.json and
browsable at /docs).

Every endpoint but ``/health`` needs ``Authorization: Bearer <token>`` (the server's API
token; a webhook signal may have its own). Handlers call the :class:`Project` facade only.

    GET  /health                          liveness, no auth
    GET  /metrics                         Prometheus text format
    GET  /api/syncs                       every sync: schedule, last run, next run, lag, SLA
    GET  /api/syncs/{sync}                one sync
    POST /api/syncs/{sync}/trigger        queue a run ({"full": true} resends every row)
    POST /api/syncs/{sync}/pause          stop scheduling it
    POST /api/syncs/{sync}/resume
    GET  /api/syncs/{sync}/runs           recent runs with their counts
    GET  /api/runs/{run_id}               one run
    GET  /api/runs/{run_id}/errors        its rejected and failed rows
    POST /api/signals/{name}              an upstream says "loaded" (a `webhooks:` signal)
"""

from __future__ import annotations

import asyncio
import hmac
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from undertow.errors import ConfigError, UndertowError
from undertow.redact import redact
from undertow.results import RunSummary, SyncStatus

if TYPE_CHECKING:
    from undertow.orchestration.scheduler import Scheduler
    from undertow.project import Project

try:
    __version__ = version("undertow")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0"

bearer = HTTPBearer(auto_error=False, description="The API token of `undertow serve`.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


class TriggerRequest(BaseModel):
    full: bool = Field(default=False, description="Resend every row, not only the changes.")


class TriggerResponse(BaseModel):
    sync: str
    queued: bool
    trigger_id: int
    full: bool


class SignalResponse(BaseModel):
    signal: str
    received_at: str


class PauseResponse(BaseModel):
    sync: str
    paused: bool


class Health(BaseModel):
    status: str
    version: str
    scheduler: str


class RowErrorOut(BaseModel):
    run_id: str
    sync: str
    key: str
    kind: str
    operation: str | None
    batch: int | None
    reason: str


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def create_app(project: Project, *, token: str, scheduler: Scheduler | None = None) -> FastAPI:
    """The API over ``project``; ``token`` guards everything but /health."""
    from undertow.server.metrics import registry_for

    app = FastAPI(
        title="Undertow",
        version=__version__,
        description="Reverse ETL: syncs, runs, triggers, signals and metrics of one project.",
    )
    registry = registry_for(project)

    def require(credentials: Credentials) -> None:
        if credentials is None or not _same(credentials.credentials, token):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong API token: send `Authorization: Bearer <token>`",
                headers={"WWW-Authenticate": "Bearer"},
            )

    Auth = Depends(require)

    @app.exception_handler(UndertowError)
    async def undertow_error(_request: Request, exc: UndertowError) -> JSONResponse:
        text = str(exc)
        missing = text.startswith(("unknown ", "no run ")) or (
            isinstance(exc, ConfigError) and "unknown" in text
        )
        status = 404 if missing else 400
        return JSONResponse(
            status_code=status, content={"error": redact(str(exc)), "type": type(exc).__name__}
        )

    @app.get("/health", response_model=Health, tags=["server"])
    def health() -> Health:
        alive = scheduler is not None and not scheduler.stop.is_set()
        return Health(
            status="ok",
            version=__version__,
            scheduler="running" if alive else ("stopped" if scheduler else "off"),
        )

    @app.get("/metrics", dependencies=[Auth], tags=["server"], response_class=Response)
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/syncs", dependencies=[Auth], tags=["syncs"])
    def list_syncs() -> list[SyncStatus]:
        return project.status()

    @app.get("/api/syncs/{sync}", dependencies=[Auth], tags=["syncs"])
    def get_sync(sync: str) -> SyncStatus:
        return project.sync_status(sync)

    @app.post(
        "/api/syncs/{sync}/trigger",
        dependencies=[Auth],
        tags=["syncs"],
        status_code=202,
        response_model=TriggerResponse,
    )
    def trigger(sync: str, body: TriggerRequest | None = None) -> TriggerResponse:
        full = body.full if body is not None else False
        queued = project.trigger(sync, full=full, reason="api")
        return TriggerResponse(sync=sync, queued=True, trigger_id=queued, full=full)

    @app.post(
        "/api/syncs/{sync}/pause", dependencies=[Auth], tags=["syncs"], response_model=PauseResponse
    )
    def pause(sync: str) -> PauseResponse:
        project.pause(sync)
        return PauseResponse(sync=sync, paused=True)

    @app.post(
        "/api/syncs/{sync}/resume",
        dependencies=[Auth],
        tags=["syncs"],
        response_model=PauseResponse,
    )
    def resume(sync: str) -> PauseResponse:
        project.resume(sync)
        return PauseResponse(sync=sync, paused=False)

    @app.get("/api/syncs/{sync}/runs", dependencies=[Auth], tags=["runs"])
    def list_runs(sync: str, limit: int = 20) -> list[RunSummary]:
        return [r.as_dict() for r in project.runs(sync, limit=max(1, min(limit, 500)))]

    @app.get("/api/runs/{run_id}", dependencies=[Auth], tags=["runs"])
    def get_run(run_id: str) -> RunSummary:
        return project.get_run(run_id).as_dict()

    @app.get(
        "/api/runs/{run_id}/errors",
        dependencies=[Auth],
        tags=["runs"],
        response_model=list[RowErrorOut],
    )
    def run_errors(run_id: str, limit: int = 100) -> list[RowErrorOut]:
        return [
            RowErrorOut(
                run_id=e.run_id,
                sync=e.sync,
                key=e.row_key,
                kind=e.kind,
                operation=e.operation,
                batch=e.batch_no,
                reason=redact(e.reason),
            )
            for e in project.errors(run_id, limit=max(1, min(limit, 10_000)))
        ]

    @app.post(
        "/api/signals/{name}", tags=["signals"], status_code=202, response_model=SignalResponse
    )
    async def signal(name: str, request: Request, credentials: Credentials) -> SignalResponse:
        expected = project.signal_token(name) if name in project.config.webhooks else token
        if expected is None or credentials is None or not _same(credentials.credentials, expected):
            raise HTTPException(
                status_code=401,
                detail=f"missing or wrong token for signal {name!r}",
                headers={"WWW-Authenticate": "Bearer"},
            )
        detail: dict[str, Any] = {}
        raw = await request.body()
        if raw:
            try:
                parsed = await request.json()
            except ValueError:
                raise HTTPException(status_code=422, detail="the body must be JSON") from None
            detail = parsed if isinstance(parsed, dict) else {"body": parsed}
        at = await asyncio.to_thread(project.signal, name, detail)
        return SignalResponse(signal=name, received_at=at)

    return app
