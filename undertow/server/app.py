"""The HTTP app of ``undertow serve``: the JSON API, the web UI and the API docs (FastAPI).

    GET  /health            liveness, no auth
    GET  /login, POST /login, POST /logout     the web UI's session (the API token)
    GET  /static/...        the UI's CSS and JavaScript, shipped in the package, no auth
    GET  /metrics           Prometheus text format
    GET  /openapi.json      the OpenAPI document; GET /docs browses it (offline Swagger UI)
    /api/...                the JSON API (:mod:`undertow.server.api`)
    /, /syncs/..., /runs/...  the web UI (:mod:`undertow.server.ui`)

Everything but ``/health``, ``/login`` and ``/static`` needs the API token, as a bearer
header or as the UI's session (:mod:`undertow.server.auth`): the UI and the API grant the
same rights. Request bodies are bounded in size and JSON depth (:mod:`undertow.server.limits`);
every answer carries a Content-Security-Policy that allows this server's own scripts and
styles only (no page loads anything from elsewhere).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from undertow.errors import ConfigError, UndertowError
from undertow.redact import redact
from undertow.server.api import api_router, auth_dependency
from undertow.server.auth import Auth
from undertow.server.docs import add_docs
from undertow.server.limits import (
    MAX_BODY_BYTES,
    ASGIApp,
    BodyLimits,
    Message,
    Receive,
    Scope,
    Send,
)

if TYPE_CHECKING:
    from undertow.orchestration.scheduler import Scheduler
    from undertow.project import Project

try:
    __version__ = version("undertow")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0"

STATIC = Path(__file__).parent / "static"

SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


class Health(BaseModel):
    status: str
    version: str
    scheduler: str


class SecurityHeaders:
    """Add :data:`SECURITY_HEADERS` to every answer (pages and API alike); pages and API
    answers are never cached (they hold the project's data)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                headers += [h for h in self.headers if h[0] not in have]
                if not static and b"cache-control" not in have:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(
    project: Project,
    *,
    token: str,
    scheduler: Scheduler | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The app over ``project``; ``token`` guards everything but /health, /login, /static."""
    from undertow.server.metrics import registry_for
    from undertow.server.ui import ui_router

    app = FastAPI(
        title="Undertow",
        version=__version__,
        description="Reverse ETL: syncs, runs, triggers, signals and metrics of one project. "
        "Every route but /health needs the API token (`Authorization: Bearer <token>`).",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    auth = Auth(token)
    registry = registry_for(project)
    guard = auth_dependency(auth)

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

    @app.get("/metrics", dependencies=[guard], tags=["server"], response_class=Response)
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    stopping = scheduler.stop if scheduler is not None else None
    app.include_router(api_router(project, auth, stopping))
    add_docs(app, auth)
    app.include_router(ui_router(project, auth, scheduler))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodyLimits, max_body_bytes=max_body_bytes)
    return app
