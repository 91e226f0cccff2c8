"""The API's own documentation, served offline and behind the token.

FastAPI's default ``/docs`` page loads Swagger UI from a CDN (blank on a machine without
internet) and ``/openapi.json`` is open to anyone. Here both need the API token like every
other route (a browser logged in to the UI has it as its session), and the page loads the
Swagger UI bundle shipped inside the package (``static/vendor/swagger-ui``, see its README).
The page has no inline script, so it runs under the same Content-Security-Policy as the UI.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from undertow.server.auth import Auth

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{title} — API</title>
<link rel="icon" href="/static/vendor/swagger-ui/favicon-32x32.png">
<link rel="stylesheet" href="/static/vendor/swagger-ui/swagger-ui.css">
</head><body data-openapi="/openapi.json">
<div id="swagger-ui"></div>
<script src="/static/vendor/swagger-ui/swagger-ui-bundle.js"></script>
<script src="/static/ui/swagger-init.js"></script>
</body></html>
"""


def add_docs(app: FastAPI, auth: Auth) -> None:
    """Add ``GET /openapi.json`` and ``GET /docs`` (the app must have neither already)."""

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(request: Request) -> Response:
        if auth.caller(request) is None:
            return JSONResponse(
                {"detail": "missing or wrong API token: send `Authorization: Bearer <token>`"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        document: dict[str, Any] = app.openapi()
        return JSONResponse(document)

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> Response:
        if auth.caller(request) is None:
            return RedirectResponse(f"/login?next={quote('/docs')}", status_code=303)
        return HTMLResponse(PAGE.format(title=escape(app.title)))
