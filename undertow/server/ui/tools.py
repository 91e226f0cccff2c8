"""The "look before you run" pages of the web UI: model preview, plan preview, test a row.

Each shows what the matching API route answers (``/api/syncs/{sync}/model``, ``/plan``,
``/test``), through the same facade calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from undertow.errors import UndertowError
from undertow.server.auth import Caller

if TYPE_CHECKING:
    from undertow.server.ui.pages import Pages


def add_routes(router: APIRouter, pages: Pages) -> None:
    project = pages.project

    @pages.page
    def model_page(request: Request, caller: Caller, sync: str) -> Response:
        preview = project.preview_model(sync, limit=20)
        return pages.render(
            request,
            "model.html",
            caller,
            sync=sync,
            tab="model",
            status=project.sync_status(sync),
            preview=preview,
        )

    @pages.page
    def plan_page(request: Request, caller: Caller, sync: str) -> Response:
        plan = project.plan(sync, limit=10).as_dict()
        return pages.render(
            request,
            "plan.html",
            caller,
            sync=sync,
            tab="plan",
            status=project.sync_status(sync),
            plan=plan,
        )

    @pages.page
    def test_page(request: Request, caller: Caller, sync: str) -> Response:
        return test_view(pages, request, caller, sync, {}, None, None)

    router.add_api_route("/syncs/{sync}/model", model_page, methods=["GET"])
    router.add_api_route("/syncs/{sync}/plan", plan_page, methods=["GET"])
    router.add_api_route("/syncs/{sync}/test", test_page, methods=["GET"])


def test_view(
    pages: Pages,
    request: Request,
    caller: Caller,
    sync: str,
    key: dict[str, str],
    result: dict[str, Any] | None,
    error: str | None,
) -> Response:
    config = pages.project.sync_config(sync)
    return pages.render(
        request,
        "test.html",
        caller,
        code=200 if error is None else 400,
        sync=sync,
        tab="test",
        status=pages.project.sync_status(sync),
        key_columns=config["primary_key"],
        key=key,
        result=result,
        error=error,
    )


async def test_action(
    pages: Pages, request: Request, caller: Caller, sync: str, form: dict[str, str]
) -> Response:
    """POST /syncs/{sync}/test: the facade's ``test_row``, shown on the test page."""
    import asyncio

    config = await asyncio.to_thread(pages.project.sync_config, sync)
    key = {c: form.get(f"key.{c}", "").strip() for c in config["primary_key"]}
    dry_run = form.get("dry_run") == "1"
    try:
        result = await asyncio.to_thread(pages.project.test_row, sync, key, dry_run=dry_run)
    except UndertowError as exc:
        text = str(exc) + (f" ({exc.hint})" if exc.hint else "")
        return await asyncio.to_thread(test_view, pages, request, caller, sync, key, None, text)
    return await asyncio.to_thread(
        test_view, pages, request, caller, sync, key, result.as_dict(), None
    )
