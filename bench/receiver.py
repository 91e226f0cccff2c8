"""The benchmark's batch endpoint, in its own process: ``python -m bench.receiver PORT``.

It serves :class:`undertow.testing.webhook.WebhookReceiver` in ``fast`` mode (parse each body,
count its records, keep nothing) on 127.0.0.1:PORT, so the receiver does not share the GIL
with the sync it measures. ``GET /_bench/count`` answers ``{"records": N}``: the records
counted since the process started.
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from undertow.testing.webhook import WebhookReceiver

COUNT_PATH = "/_bench/count"


def build_app() -> Starlette:
    hook = WebhookReceiver(fast=True)

    async def count(request: Request) -> JSONResponse:
        return JSONResponse({"records": hook.record_count})

    return Starlette(routes=[Route(COUNT_PATH, count, methods=["GET"]), Mount("/", hook.app)])


def main(argv: list[str]) -> None:
    port = int(argv[1])
    uvicorn.run(
        build_app(),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


if __name__ == "__main__":
    main(sys.argv)
