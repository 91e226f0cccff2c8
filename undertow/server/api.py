"""The JSON API of ``undertow serve`` under ``/api``: what the web UI shows and does, too.

Every route needs the API token (see :mod:`undertow.server.auth`); handlers call the
:class:`~undertow.project.Project` facade only. The serialisers here (``*_out``) are shared
with the web UI, so a page never shows what the API would not answer.

    GET  /api/syncs                       every sync: schedule, last run, next run, lag, SLA
    GET  /api/syncs/{sync}                one sync
    POST /api/syncs/{sync}/trigger        queue a run ({"full": true} resends every row)
    POST /api/syncs/{sync}/pause          stop scheduling it
    POST /api/syncs/{sync}/resume
    GET  /api/syncs/{sync}/runs           recent runs with their counts
    GET  /api/runs/{run_id}               one run
    GET  /api/runs/{run_id}/errors        its rejected and failed rows
    GET  /api/runs/{run_id}/events        the run as it progresses (Server-Sent Events)
    GET  /api/syncs/{sync}/config         model SQL, mapping, schedule, parents
    POST /api/syncs/{sync}/retry          queue a run of only the rejected and failed rows
    GET  /api/syncs/{sync}/model          model preview: the first rows
    GET  /api/syncs/{sync}/plan           plan preview: what the next run would send
    POST /api/syncs/{sync}/test           test a row: {"key": {"id": "42"}, "dry_run": false}
    GET  /api/syncs/{sync}/debugger       the live debugger's requests (?status=4xx&key=42)
    GET  /api/syncs/{sync}/debugger/events    new requests as they arrive (SSE)
    GET  /api/debugger/{entry_id}         one request with its headers and bodies
    POST /api/signals/{name}              an upstream says "loaded" (a `webhooks:` signal)
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from undertow.redact import redact
from undertow.results import PlanDocument, RunSummary, SyncStatus
from undertow.server import stream
from undertow.server.auth import Auth, same

if TYPE_CHECKING:
    from undertow.project import Project
    from undertow.state.store import RowError


ModelT = TypeVar("ModelT", bound=BaseModel)


class TriggerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    full: bool = Field(default=False, description="Resend every row, not only the changes.")


async def json_body(request: Request, model: type[ModelT]) -> ModelT:
    """The request's JSON body as ``model``, whatever its content type: ``curl -d '{...}'``
    sends ``application/x-www-form-urlencoded``, and a body that is JSON is taken as JSON.
    No body is the model's defaults; anything else is a 422 saying what is wrong."""
    raw = await request.body()
    try:
        data = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise HTTPException(status_code=422, detail="the body must be JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise HTTPException(status_code=422, detail=f"invalid body: {problems}") from None


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


class TestRequest(BaseModel):
    key: dict[str, str] = Field(description="The row's primary key: {column: value}.")
    dry_run: bool = Field(default=False, description="Show the record; send nothing.")


class RowErrorOut(BaseModel):
    run_id: str
    sync: str
    key: str
    kind: str
    operation: str | None
    batch: int | None
    reason: str
    attempts: int | None = None
    first_failed_at: str | None = None
    last_failed_at: str | None = None
    resolved_at: str | None = None


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def row_error_out(error: RowError) -> RowErrorOut:
    return RowErrorOut(
        run_id=error.run_id,
        sync=error.sync,
        key=error.row_key,
        kind=error.kind,
        operation=error.operation,
        batch=error.batch_no,
        reason=redact(error.reason),
        attempts=error.attempts,
        first_failed_at=_iso(error.first_failed_at),
        last_failed_at=_iso(error.last_failed_at),
        resolved_at=_iso(error.resolved_at),
    )


def auth_dependency(auth: Auth) -> Any:
    """The FastAPI dependency every protected API route uses."""

    def require(request: Request) -> None:
        if auth.caller(request) is None:
            raise HTTPException(
                status_code=401,
                detail="missing or wrong API token: send `Authorization: Bearer <token>` "
                "(or log in to the web UI; a session's unsafe requests also need its "
                "X-CSRF-Token)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return Depends(require)


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def api_router(project: Project, auth: Auth, stopping: threading.Event | None = None) -> APIRouter:
    """The ``/api`` routes over ``project``; streams end when ``stopping`` is set."""
    guard = auth_dependency(auth)
    router = APIRouter(prefix="/api")

    @router.get("/syncs", dependencies=[guard], tags=["syncs"])
    def list_syncs() -> list[SyncStatus]:
        return project.status()

    @router.get("/syncs/{sync}", dependencies=[guard], tags=["syncs"])
    def get_sync(sync: str) -> SyncStatus:
        return project.sync_status(sync)

    @router.get("/workers", dependencies=[guard], tags=["workers"])
    def list_workers() -> list[dict[str, Any]]:
        """The cluster's workers (``undertow worker``): state (running, draining, lost,
        stopped), last heartbeat, processes, queues, and the runs each executes now."""
        return project.workers()

    @router.post(
        "/syncs/{sync}/trigger",
        dependencies=[guard],
        tags=["syncs"],
        status_code=202,
        response_model=TriggerResponse,
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": TriggerRequest.model_json_schema()}},
            }
        },
    )
    async def trigger(sync: str, request: Request) -> TriggerResponse:
        body = await json_body(request, TriggerRequest)
        full = body.full
        queued = await asyncio.to_thread(project.trigger, sync, full=full, reason="api")
        return TriggerResponse(sync=sync, queued=True, trigger_id=queued, full=full)

    @router.post(
        "/syncs/{sync}/pause", dependencies=[guard], tags=["syncs"], response_model=PauseResponse
    )
    def pause(sync: str) -> PauseResponse:
        project.pause(sync)
        return PauseResponse(sync=sync, paused=True)

    @router.post(
        "/syncs/{sync}/resume", dependencies=[guard], tags=["syncs"], response_model=PauseResponse
    )
    def resume(sync: str) -> PauseResponse:
        project.resume(sync)
        return PauseResponse(sync=sync, paused=False)

    @router.get("/syncs/{sync}/runs", dependencies=[guard], tags=["runs"])
    def list_runs(sync: str, limit: int = 20) -> list[RunSummary]:
        return [r.as_dict() for r in project.runs(sync, limit=max(1, min(limit, 500)))]

    @router.get("/runs/{run_id}", dependencies=[guard], tags=["runs"])
    def get_run(run_id: str) -> RunSummary:
        return project.get_run(run_id).as_dict()

    @router.get(
        "/runs/{run_id}/errors",
        dependencies=[guard],
        tags=["runs"],
        response_model=list[RowErrorOut],
    )
    def run_errors(run_id: str, limit: int = 100) -> list[RowErrorOut]:
        rows = project.errors(run_id, limit=max(1, min(limit, 10_000)))
        return [row_error_out(e) for e in rows]

    @router.get("/runs/{run_id}/events", dependencies=[guard], tags=["runs"])
    async def run_events(run_id: str, request: Request) -> StreamingResponse:
        """``event: run`` (the run, as ``GET /api/runs/{run_id}``) at every change, then
        ``event: end`` once it has finished."""
        await asyncio.to_thread(project.get_run, run_id)  # 404 before the stream starts
        return stream.response(
            stream.run_updates(request, project, run_id, _json, stopping=stopping)
        )

    @router.get("/syncs/{sync}/config", dependencies=[guard], tags=["syncs"])
    def sync_config(sync: str) -> dict[str, Any]:
        return project.sync_config(sync)

    @router.post("/syncs/{sync}/retry", dependencies=[guard], tags=["syncs"], status_code=202)
    def retry(sync: str) -> TriggerResponse:
        queued = project.trigger(sync, reason="retry")
        return TriggerResponse(sync=sync, queued=True, trigger_id=queued, full=False)

    @router.get("/syncs/{sync}/model", dependencies=[guard], tags=["preview"])
    def model_preview(sync: str, limit: int = 20) -> dict[str, Any]:
        return project.preview_model(sync, limit=limit)

    @router.get("/syncs/{sync}/plan", dependencies=[guard], tags=["preview"])
    def plan_preview(sync: str, limit: int = 10) -> PlanDocument:
        return project.plan(sync, limit=max(1, min(limit, 100))).as_dict()

    @router.post("/syncs/{sync}/test", dependencies=[guard], tags=["preview"])
    def test_row(sync: str, body: TestRequest) -> dict[str, Any]:
        return project.test_row(sync, body.key, dry_run=body.dry_run).as_dict()

    @router.get("/syncs/{sync}/debugger", dependencies=[guard], tags=["debugger"])
    def debugger(
        sync: str,
        status: str | None = None,
        key: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        entries = project.debug_entries(
            sync, status=status, key=key, run_id=run_id, limit=max(1, min(limit, 1000))
        )
        return [e.as_dict(bodies=False) for e in entries]

    @router.get("/syncs/{sync}/debugger/events", dependencies=[guard], tags=["debugger"])
    async def debugger_events(
        sync: str,
        request: Request,
        status: str | None = None,
        key: str | None = None,
        after: int | None = None,
    ) -> StreamingResponse:
        """``event: entry`` (a request with its bodies) for each new request."""
        await asyncio.to_thread(project.debug_entries, sync, status=status, limit=1)
        return stream.response(
            stream.debugger_updates(
                request,
                project,
                sync,
                lambda e: _json(e.as_dict()),
                after_id=after,
                status=status,
                key=key,
                stopping=stopping,
            )
        )

    @router.get("/debugger/{entry_id}", dependencies=[guard], tags=["debugger"])
    def debugger_entry(entry_id: int) -> dict[str, Any]:
        return project.debug_entry(entry_id).as_dict()

    @router.post(
        "/signals/{name}", tags=["signals"], status_code=202, response_model=SignalResponse
    )
    async def signal(name: str, request: Request) -> SignalResponse:
        # a signal with its own `token:` takes only that one; the others take the server's
        # API token, however it was given (env, --token or `server: {token:}`)
        hook = project.config.webhooks.get(name)
        own = hook.token.get_secret_value() if hook is not None and hook.token else None
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        expected = own or auth.token
        if scheme.lower() != "bearer" or not given or not same(given.strip(), expected):
            raise HTTPException(
                status_code=401,
                detail=f"missing or wrong token for signal {name!r}",
                headers={"WWW-Authenticate": "Bearer"},
            )
        detail: dict[str, Any] = {}
        raw = await request.body()
        if raw:
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise HTTPException(status_code=422, detail="the body must be JSON") from None
            detail = parsed if isinstance(parsed, dict) else {"body": parsed}
        at = await asyncio.to_thread(project.signal, name, detail)
        return SignalResponse(signal=name, received_at=at)

    return router
