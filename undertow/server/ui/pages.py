"""The pages and actions of the web UI (see :mod:`undertow.server.ui` for the why).

Each page handler checks the session, calls the :class:`~undertow.project.Project` facade
through the API's serialisers (:mod:`undertow.server.api`), and renders a template. Each
action is a POST carrying the session's CSRF token; it calls the same facade method as
the matching API route and redirects back (303) with a notice.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from undertow.errors import UndertowError
from undertow.redact import redact
from undertow.server.auth import Auth, Caller, safe_next
from undertow.server.ui import charts
from undertow.server.ui.format import FILTERS

if TYPE_CHECKING:
    from undertow.orchestration.scheduler import Scheduler
    from undertow.project import Project

TEMPLATES = Path(__file__).parent.parent / "templates"
Handler = Callable[..., Awaitable[Response]]
ACTIONS = ("run", "full", "pause", "resume", "retry")


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    env.globals.update(sparkline=charts.sparkline, outcome_bars=charts.outcome_bars)
    return env


async def form_of(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as its first value per field."""
    raw = await request.body()
    parsed = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


class Pages:
    """Rendering, the session check and error pages, shared by every UI route."""

    def __init__(self, project: Project, auth: Auth, stopping: Any = None) -> None:
        self.project = project
        self.auth = auth
        self.env = environment()
        self.stopping = stopping
        """Set when the server shuts down: live streams end."""

    def render(
        self, request: Request, template: str, caller: Caller | None, code: int = 200, **ctx: Any
    ) -> HTMLResponse:
        notice = request.query_params.get("notice")
        html = self.env.get_template(template).render(
            project_name=self.project.config.name,
            csrf=caller.csrf if caller else None,
            notice=ctx.pop("notice", notice),
            notice_kind=ctx.pop("notice_kind", request.query_params.get("kind")),
            path=request.url.path,
            **ctx,
        )
        # a page never shows a secret, whatever a template was given
        return HTMLResponse(redact(html), status_code=code)

    def login_redirect(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    def page(self, fn: Callable[..., Response]) -> Handler:
        """Wrap a page handler (run in a thread: the facade blocks): log-in redirect, an
        UndertowError as an error page."""

        async def handler(request: Request, **params: Any) -> Response:
            caller = self.auth.caller(request)
            if caller is None:
                return self.login_redirect(request)
            try:
                return await asyncio.to_thread(fn, request, caller, **params)
            except UndertowError as exc:
                missing = str(exc).startswith(("unknown ", "no run "))
                return self.render(
                    request,
                    "error.html",
                    caller,
                    code=404 if missing else 400,
                    error=str(exc),
                    hint=exc.hint,
                )

        # FastAPI reads the route's parameters from the signature: the page's, less `caller`
        signature = inspect.signature(fn)
        handler.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p for name, p in signature.parameters.items() if name != "caller"]
        )
        return handler


def back(path: str, notice: str, kind: str = "ok") -> RedirectResponse:
    return RedirectResponse(f"{path}?{urlencode({'notice': notice, 'kind': kind})}", 303)


def ui_router(project: Project, auth: Auth, scheduler: Scheduler | None = None) -> APIRouter:
    from undertow.server.ui import live, tools

    pages = Pages(project, auth, scheduler.stop if scheduler is not None else None)
    router = APIRouter(include_in_schema=False)

    def run_in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return asyncio.to_thread(fn, *args, **kwargs)

    # -- session ----------------------------------------------------------------------------

    def login_page(
        request: Request, error: str | None = None, next_: str | None = None
    ) -> Response:
        # the form's token is rendered into the page and set as a cookie by one response
        response = HTMLResponse("")
        token = auth.set_login_token(response, request)
        page = pages.render(
            request,
            "login.html",
            None,
            code=401 if error else 200,
            login_csrf=token,
            next=safe_next(next_ or request.query_params.get("next")),
            error=error,
        )
        page.raw_headers.extend(h for h in response.raw_headers if h[0] == b"set-cookie")
        return page

    @router.get("/login")
    async def login_form(request: Request) -> Response:
        if auth.caller(request) is not None:
            return RedirectResponse(safe_next(request.query_params.get("next")), 303)
        return login_page(request)

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await form_of(request)
        if not auth.login_token_ok(request, form.get("login_csrf")):
            return login_page(request, "the login form expired: try again", form.get("next"))
        given = form.get("token", "")
        if not given or not auth.same_token(given):
            await asyncio.sleep(0.5)  # a wrong guess costs time
            return login_page(request, "wrong API token", form.get("next"))
        response = RedirectResponse(safe_next(form.get("next")), status_code=303)
        auth.set_session(response, request)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        form = await form_of(request)
        if auth.caller(request, form_csrf=form.get("csrf")) is None:
            return RedirectResponse("/login", 303)
        response = RedirectResponse("/login", status_code=303)
        auth.clear_session(response)
        return response

    # -- pages ------------------------------------------------------------------------------

    @pages.page
    def overview(request: Request, caller: Caller) -> Response:
        rows = project.status()
        history = {}
        for row in rows:
            runs = project.runs(row["sync"], limit=20)
            history[row["sync"]] = [r.as_dict() for r in reversed(runs)]
        return pages.render(request, "overview.html", caller, syncs=rows, history=history)

    @pages.page
    def sync_page(request: Request, caller: Caller, sync: str) -> Response:
        status = project.sync_status(sync)
        config = project.sync_config(sync)
        runs = [r.as_dict() for r in project.runs(sync, limit=50)]
        waiting = [r.as_dict() for r in project.rejected_rows(sync, limit=5)]
        return pages.render(
            request,
            "sync.html",
            caller,
            sync=sync,
            tab="overview",
            status=status,
            config=config,
            runs=runs,
            chart_runs=list(reversed(runs[:30])),
            waiting=waiting,
        )

    router.add_api_route("/", overview, methods=["GET"])
    router.add_api_route("/syncs/{sync}", sync_page, methods=["GET"])

    # -- actions ----------------------------------------------------------------------------

    @router.post("/syncs/{sync}/{action}")
    async def act(request: Request, sync: str, action: str) -> Response:
        form = await form_of(request)
        caller = auth.caller(request, form_csrf=form.get("csrf"))
        if caller is None:
            return pages.render(
                request,
                "error.html",
                None,
                code=403,
                error="this action needs a logged-in session and its CSRF token",
                hint="reload the page (or log in again) and retry",
            )
        back_to = safe_next(form.get("back") or f"/syncs/{quote(sync)}")
        try:
            if action == "test":
                return await tools.test_action(pages, request, caller, sync, form)
            notice = await run_in_thread(perform, project, sync, action)
        except UndertowError as exc:
            return back(back_to, str(exc), "bad")
        return back(back_to, notice)

    live.add_routes(router, pages)
    tools.add_routes(router, pages)
    return router


def perform(project: Project, sync: str, action: str) -> str:
    """One UI action through the facade (what the API's POST routes call); the notice."""
    if action == "run":
        project.trigger(sync, reason="ui")
        return f"queued a run of {sync}"
    if action == "full":
        project.trigger(sync, full=True, reason="ui")
        return f"queued a full resync of {sync} (every row is sent again)"
    if action == "pause":
        project.pause(sync)
        return f"paused {sync}: the scheduler starts no run of it until resumed"
    if action == "resume":
        project.resume(sync)
        return f"resumed {sync}"
    if action == "retry":
        project.trigger(sync, reason="retry")
        return f"queued a retry of the rejected and failed rows of {sync}"
    raise UndertowError(
        f"unknown action {action!r}",
        hint=f"one of {', '.join((*ACTIONS, 'test'))}",
    )
