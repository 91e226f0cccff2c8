"""The live pages of the web UI: a run as it progresses, and the debugger.

Both render once on the server (so they work without JavaScript) and, with it, subscribe
to a Server-Sent Events stream (:mod:`undertow.server.stream`) that sends each update as
an HTML fragment rendered by the same template; htmx's SSE extension swaps it in.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from undertow.redact import redact
from undertow.server import stream
from undertow.server.api import row_error_out
from undertow.server.auth import Caller
from undertow.state.debug_log import STATUS_CLASSES, DebugEntry

if TYPE_CHECKING:
    from undertow.server.ui.pages import Pages

STAGES = ("pending", "extracting", "diffing", "delivering")


def timeline(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's stages in order, each with its start, seconds and share of the run."""
    stages: dict[str, str] = run.get("stages") or {}
    marks = [(name, datetime.fromisoformat(stages[name])) for name in STAGES if name in stages]
    if not marks:
        return []
    end_text = run.get("finished_at")
    end = datetime.fromisoformat(end_text) if end_text else datetime.now(marks[0][1].tzinfo)
    total = max((end - marks[0][1]).total_seconds(), 1e-6)
    out = []
    for i, (name, start) in enumerate(marks):
        stop = marks[i + 1][1] if i + 1 < len(marks) else end
        seconds = max(0.0, (stop - start).total_seconds())
        out.append(
            {
                "stage": name,
                "start": start.isoformat(),
                "seconds": seconds,
                "share": round(100 * seconds / total, 2),
                "open": i + 1 == len(marks) and not end_text,
            }
        )
    return out


def add_routes(router: APIRouter, pages: Pages) -> None:
    project = pages.project

    def run_context(run: Mapping[str, Any]) -> dict[str, Any]:
        errors = [row_error_out(e) for e in project.errors(run["run_id"], limit=500)]
        done = None
        if run.get("total_batches"):
            done = min(100.0, 100.0 * run.get("sent", 0) / max(1, run.get("planned", 0) or 1))
        return {"run": run, "errors": errors, "stages": timeline(run), "progress": done}

    def render_run(run: Mapping[str, Any], csrf: str | None) -> str:
        html = pages.env.get_template("_run_live.html").render(
            csrf=csrf, path=f"/runs/{run['run_id']}", sync=run["sync"], **run_context(run)
        )
        return redact(html)

    @pages.page
    def run_page(request: Request, caller: Caller, run_id: str) -> Response:
        run = project.get_run(run_id).as_dict()
        return pages.render(
            request, "run.html", caller, sync=run["sync"], tab="runs", **run_context(run)
        )

    @pages.page
    def run_stream(request: Request, caller: Caller, run_id: str) -> Response:
        run_id = project.get_run(run_id).id
        return stream.response(
            stream.run_updates(
                request,
                project,
                run_id,
                lambda run: render_run(run, caller.csrf),
                stopping=pages.stopping,
            )
        )

    def render_entry(entry: DebugEntry) -> str:
        return redact(pages.env.get_template("_exchange.html").render(e=entry.as_dict()))

    def filters(request: Request) -> dict[str, str | None]:
        params = request.query_params
        status = params.get("status") or None
        key = (params.get("key") or "").strip() or None
        return {"status": status, "key": key}

    @pages.page
    def debugger_page(request: Request, caller: Caller, sync: str) -> Response:
        chosen = filters(request)
        entries = project.debug_entries(
            sync, limit=100, bodies=True, status=chosen["status"], key=chosen["key"]
        )
        newest = project.debug_entries(sync, limit=1)
        return pages.render(
            request,
            "debugger.html",
            caller,
            sync=sync,
            tab="debugger",
            status=project.sync_status(sync),
            entries=[e.as_dict() for e in entries],
            after=newest[0].id if newest else 0,
            chosen=chosen,
            classes=STATUS_CLASSES,
            settings=_settings(project, sync),
        )

    @pages.page
    def debugger_stream(request: Request, caller: Caller, sync: str) -> Response:
        project.sync(sync)
        after = request.query_params.get("after")
        return stream.response(
            stream.debugger_updates(
                request,
                project,
                sync,
                render_entry,
                after_id=int(after) if after and after.isdigit() else None,
                stopping=pages.stopping,
                status=filters(request)["status"],
                key=filters(request)["key"],
            )
        )

    router.add_api_route("/runs/{run_id}", run_page, methods=["GET"])
    router.add_api_route("/runs/{run_id}/stream", run_stream, methods=["GET"])
    router.add_api_route("/syncs/{sync}/debugger", debugger_page, methods=["GET"])
    router.add_api_route("/syncs/{sync}/debugger/stream", debugger_stream, methods=["GET"])


def _settings(project: Any, sync: str) -> dict[str, Any]:
    from undertow.debugger import settings_for

    settings = settings_for(project.config, sync)
    return {
        "enabled": settings.enabled,
        "keep": settings.keep,
        "max_age_days": round(settings.max_age.total_seconds() / 86400, 2),
        "payloads": settings.payloads,
    }
