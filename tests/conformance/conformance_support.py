"""What the conformance tests share: a plain HTTP call to a fake, a connector run of one
batch, and the check that a docs page still states each vendor fact next to its source.

For vendors with no file in ``../shared/specs`` (Attio, Pipedrive) the contract is the
vendor's public docs, cited on ``docs/destinations/<type>.md``; each fact a conformance test
relies on is listed with its URL, and :func:`assert_docs_state` fails when the page stops
saying it, so the test is revisited with the page.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from undertow.destinations.base import Batch, BatchResult, Destination, Operation

DOCS = Path(__file__).resolve().parents[2] / "docs" / "destinations"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def call(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    form: bytes | None = None,
) -> Answer:
    """One request with urllib (not the connector's client): what a fake answers anyone."""
    data = form if form is not None else (orjson.dumps(body) if body is not None else None)
    request = urllib.request.Request(url + path, data=data, method=method)
    kind = "application/x-www-form-urlencoded" if form is not None else "application/json"
    request.add_header("Content-Type", kind)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            status, got = response.status, dict(response.headers.items())
    except urllib.error.HTTPError as error:
        with error:
            raw = error.read()
            status, got = error.code, dict(error.headers.items())
    parsed = orjson.loads(raw) if raw and raw.lstrip()[:1] in (b"{", b"[") else raw or None
    return Answer(status, {k.lower(): v for k, v in got.items()}, parsed)


def batch(
    records: list[dict[str, Any]],
    *,
    operation: Operation = Operation.UPSERT,
    match: str | None = None,
    object: str | None = None,
    sync: str = "conformance",
) -> Batch:
    return Batch(
        sync=sync,
        operation=operation,
        number=0,
        idempotency_key="conformance-0",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={match: [r.get(match) for r in records]} if match else {},
        object=object,
    )


def write(destination: Destination, b: Batch) -> BatchResult:
    """Send one batch through the destination (opened and closed around it)."""

    async def go() -> BatchResult:
        await destination.open()
        try:
            return await destination.write_batch(b)
        finally:
            await destination.close()

    return asyncio.run(go())


def assert_docs_state(page: str, facts: list[tuple[str, str]]) -> None:
    """Each (fact, source URL) is on the page, the URL in the same table row or line."""
    text = (DOCS / page).read_text()
    lines = text.splitlines()
    for fact, url in facts:
        assert any(fact in line and url in line for line in lines), (
            f"{page} no longer states {fact!r} next to {url}: revisit this conformance test"
        )


@dataclass
class Exchange:
    """One request to a fake and its answer, as they went over the wire."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b""

    def json(self) -> Any:
        return orjson.loads(self.response_body) if self.response_body else None


def recorded(app: Any, exchanges: list[Exchange]) -> Any:
    """``app``, keeping every exchange in ``exchanges`` (what the tests assert on; the
    spec's verdict comes from ``Contract.watch`` around it)."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        exchange = Exchange(scope["method"], scope["path"], headers, b"")

        async def receiving() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                exchange.body += message.get("body", b"")
            return message

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                exchange.response_headers = {
                    k.decode().lower(): v.decode() for k, v in message.get("headers", [])
                }
            elif message["type"] == "http.response.body":
                exchange.response_body += message.get("body", b"")
            await send(message)

        await app(scope, receiving, sending)
        exchanges.append(exchange)

    return wrapped
