"""Conformance against the vendor's own OpenAPI file: every request a connector sends, and
every answer its fake returns, validated with openapi-core (a dev dependency).

    contract = Contract.load(SPECS / "intercom" / "intercom-2.14-contacts.openapi.yaml")
    fake = IntercomFake(token)
    fake.app = contract.watch(fake.app)        # before serving it
    with fake.serve():
        ... run the connector suite against it ...
    contract.assert_clean()                    # names each violation: method, path, why

:meth:`Contract.watch` wraps an ASGI app: it keeps each request's method, path, query,
headers and body and the answer's status, headers and body, and validates both once the
answer is complete, as if the request had gone to the spec's first server (the fake's own
host and port are not in the spec). Requests to the fakes kit's own paths
(``/__undertow_fake__/...``) are skipped. ``only`` narrows the check to paths the spec
describes (a trimmed spec leaves out endpoints the fake also serves): the rest are counted
in :attr:`Contract.skipped` rather than reported.

Vendors without a shippable OpenAPI file (NOTES.md only, like HubSpot) get a test per stated
fact instead: ``tests/conformance/test_hubspot_conformance.py`` is the pattern.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


@dataclass
class Violation:
    """One request or answer the spec does not allow."""

    side: str
    """``request`` (what the connector sent) or ``response`` (what the fake answered)."""
    method: str
    path: str
    status: int | None
    errors: list[str]

    def __str__(self) -> str:
        where = f"{self.method} {self.path}" + (f" -> {self.status}" if self.status else "")
        return f"{self.side} {where}: " + "; ".join(self.errors)


@dataclass
class _Request:
    host_url: str
    path: str
    method: str
    parameters: Any
    content_type: str
    body: bytes | None
    full_url_pattern: str | None = None


@dataclass
class _Response:
    status_code: int
    headers: Any
    content_type: str
    data: bytes | None


@dataclass
class Contract:
    """A vendor's OpenAPI description and what was checked against it."""

    spec: Any
    server: str
    only: tuple[str, ...] = ()
    violations: list[Violation] = field(default_factory=list)
    checked: int = 0
    skipped: int = 0

    @classmethod
    def load(cls, path: Path, *, only: Iterable[str] = ()) -> Contract:
        from openapi_core import OpenAPI

        if not path.exists():
            raise FileNotFoundError(f"the vendor's OpenAPI file is missing: {path}")
        spec = OpenAPI.from_file_path(str(path))
        raw = _load(path)
        servers = raw.get("servers") or [{"url": "http://localhost"}]
        server = str(servers[0]["url"]).rstrip("/")
        return cls(spec=spec, server=server, only=tuple(only))

    # -- validation ---------------------------------------------------------------------------

    def check(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        status: int | None = None,
        response_headers: dict[str, str] | None = None,
        response_body: bytes | None = None,
    ) -> list[Violation]:
        """Validate one exchange (the answer too when ``status`` is given)."""
        from openapi_core.datatypes import RequestParameters
        from werkzeug.datastructures import Headers, ImmutableMultiDict

        if path.startswith("/__undertow_fake__/"):
            return []
        if self.only and not any(path.startswith(p) for p in self.only):
            self.skipped += 1
            return []
        self.checked += 1
        sent = Headers(list((headers or {}).items()))
        request = _Request(
            host_url=self.server,
            path=path,
            method=method.lower(),
            parameters=RequestParameters(
                query=ImmutableMultiDict(parse_qsl(query, keep_blank_values=True)), header=sent
            ),
            content_type=(sent.get("content-type") or "").lower(),
            body=body or None,
        )
        found: list[Violation] = []
        request_errors = _errors(lambda: self.spec.validate_request(request))
        if request_errors:
            found.append(Violation("request", method, path, None, request_errors))
        if status is not None:
            got = Headers(list((response_headers or {}).items()))
            response = _Response(
                status_code=status,
                headers=got,
                content_type=(got.get("content-type") or "").lower(),
                data=response_body or None,
            )
            response_errors = _errors(lambda: self.spec.validate_response(request, response))
            if response_errors:
                found.append(Violation("response", method, path, status, response_errors))
        self.violations.extend(found)
        return found

    def assert_clean(self) -> None:
        """Fail with every violation listed (and when nothing was checked at all)."""
        assert self.checked, "no exchange was checked against the spec"
        if self.violations:
            lines = "\n".join(f"  - {v}" for v in self.violations[:20])
            raise AssertionError(f"{len(self.violations)} violation(s) of the spec:\n{lines}")

    # -- the ASGI wrapper ---------------------------------------------------------------------

    def watch(self, app: ASGIApp) -> ASGIApp:
        """``app``, with every request and answer through it validated."""

        async def wrapped(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
            if scope.get("type") != "http":
                await app(scope, receive, send)
                return
            chunks: list[bytes] = []
            answer: dict[str, Any] = {"body": []}

            async def receive_and_keep() -> Any:
                message = await receive()
                if message.get("type") == "http.request":
                    chunks.append(message.get("body", b""))
                return message

            async def send_and_keep(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    answer["status"] = message["status"]
                    answer["headers"] = {
                        k.decode("latin-1"): v.decode("latin-1")
                        for k, v in message.get("headers", [])
                    }
                elif message["type"] == "http.response.body":
                    answer["body"].append(message.get("body", b""))
                    if not message.get("more_body"):
                        judge()  # before the client has the answer: a test sees the result
                await send(message)

            def judge() -> None:
                headers = {
                    k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])
                }
                self.check(
                    scope["method"],
                    scope["path"],
                    query=scope.get("query_string", b"").decode("latin-1"),
                    headers=headers,
                    body=b"".join(chunks),
                    status=answer.get("status"),
                    response_headers=answer.get("headers"),
                    response_body=b"".join(answer["body"]),
                )

            await app(scope, receive_and_keep, send_and_keep)

        return wrapped


def _errors(call: Callable[[], Any]) -> list[str]:
    from openapi_core.exceptions import OpenAPIError

    try:
        call()
    except OpenAPIError as exc:
        reasons = [str(exc)[:500]]
        cause = exc.__cause__
        if cause is not None and str(cause) not in reasons[0]:
            reasons.append(str(cause)[:500])
        return reasons
    return []


def _load(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        loaded: dict[str, Any] = yaml.safe_load(text)
        return loaded
    parsed: dict[str, Any] = json.loads(text)
    return parsed
