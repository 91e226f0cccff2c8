"""The side-by-side benchmark's batch endpoint: ``python -m bench.sink PORT``.

An aiohttp server that answers every POST at once with ``{}`` after counting the records of
its JSON body (``{"records": [...]}`` or a bare array, parsed with orjson), in its own process
so it does not share the GIL with the pipeline it measures. ``GET /_bench/count`` answers
``{"records": N}``; ``POST /_bench/reset`` sets N to 0. Every system of the side-by-side
(Undertow, the hand-built ceiling, dlt, drt-core) posts to the same sink.
"""

from __future__ import annotations

import sys

import orjson
from aiohttp import web

COUNT_PATH = "/_bench/count"
RESET_PATH = "/_bench/reset"


def build_app() -> web.Application:
    state = {"records": 0}

    async def receive(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        records = body.get("records", []) if isinstance(body, dict) else body
        state["records"] += len(records) if isinstance(records, list) else 1
        return web.Response(body=b"{}", content_type="application/json")

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"records": state["records"]})

    async def reset(request: web.Request) -> web.Response:
        state["records"] = 0
        return web.json_response({"records": 0})

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_get(COUNT_PATH, count)
    app.router.add_post(RESET_PATH, reset)
    app.router.add_route("*", "/{tail:.*}", receive)
    return app


def main(argv: list[str]) -> None:
    web.run_app(build_app(), host="127.0.0.1", port=int(argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main(sys.argv)
