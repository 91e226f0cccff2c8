"""Live updates over Server-Sent Events: a run as it progresses, the debugger as requests
arrive. The JSON API streams JSON; the web UI streams the same updates as HTML fragments.

Both read the state store through the facade, every :data:`POLL_SECONDS`, so they see runs
made by this server, by ``undertow run`` in another process or by a worker elsewhere alike.
A stream ends when the run ends (``event: end``), when the client goes away, or when the
server shuts down; a comment line every :data:`KEEPALIVE_SECONDS` keeps proxies from
closing an idle stream.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

if TYPE_CHECKING:
    from undertow.project import Project
    from undertow.results import RunSummary
    from undertow.state.debug_log import DebugEntry

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}


def event(name: str, data: str) -> str:
    """One SSE event; every line of ``data`` gets its own ``data:`` field."""
    lines = data.splitlines() or [""]
    return f"event: {name}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


def response(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=HEADERS)


async def _gone(request: Request, stopping: threading.Event | None) -> bool:
    return (stopping is not None and stopping.is_set()) or await request.is_disconnected()


async def run_updates(
    request: Request,
    project: Project,
    run_id: str,
    render: Callable[[RunSummary], str],
    *,
    stopping: threading.Event | None = None,
) -> AsyncIterator[str]:
    """``event: run`` with ``render(run)`` each time the run changes; ``event: end`` after
    the last one once the run has finished."""
    last: Any = None
    quiet = time.monotonic()
    while not await _gone(request, stopping):
        record = await asyncio.to_thread(project.get_run, run_id)
        state = record.as_dict()
        if state != last:
            last = state
            quiet = time.monotonic()
            yield event("run", await asyncio.to_thread(render, state))
            if record.status.final:
                yield event("end", state["status"])
                return
        elif time.monotonic() - quiet > KEEPALIVE_SECONDS:
            quiet = time.monotonic()
            yield ": keepalive\n\n"
        await asyncio.sleep(POLL_SECONDS)


async def debugger_updates(
    request: Request,
    project: Project,
    sync: str,
    render: Callable[[DebugEntry], str],
    *,
    after_id: int | None = None,
    status: str | None = None,
    key: str | None = None,
    stopping: threading.Event | None = None,
) -> AsyncIterator[str]:
    """``event: entry`` with ``render(entry)`` for each new request of ``sync`` (oldest
    first), from ``after_id`` on (default: only those arriving from now)."""
    if after_id is None:
        newest = await asyncio.to_thread(project.debug_entries, sync, limit=1)
        after_id = newest[0].id if newest else 0
    quiet = time.monotonic()
    yield ": connected\n\n"
    while not await _gone(request, stopping):
        entries = await asyncio.to_thread(
            project.debug_entries,
            sync,
            status=status,
            key=key,
            after_id=after_id,
            limit=50,
            bodies=True,
        )
        for entry in entries:
            after_id = entry.id
            yield event("entry", await asyncio.to_thread(render, entry))
        if entries:
            quiet = time.monotonic()
        elif time.monotonic() - quiet > KEEPALIVE_SECONDS:
            quiet = time.monotonic()
            yield ": keepalive\n\n"
        await asyncio.sleep(POLL_SECONDS)
