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

What a trimmed file leaves out but its SOURCE.txt states is declared at load: ``outside``
maps a status the file does not give an operation (Intercom's 409 and 429) to the component
schema its body must follow. Two readings make real files checkable: a form body or a
``deepObject`` parameter (Stripe) is read in bracket notation (``a[b][0]=x``) and cast to its
schema's types before validation (openapi-core 0.23 cannot deserialize ``deepObject``); and
``nullable: true`` beside ``anyOf``/``oneOf``/``allOf`` (no ``type``) means the value may be
null, as the vendors' own fixtures show (openapi-schema-validator honours ``nullable`` only
beside ``type``), so such a schema gains an explicit null alternative.

Vendors without a shippable OpenAPI file (NOTES.md only, like HubSpot) get a test per stated
fact instead: ``tests/conformance/test_hubspot_conformance.py`` is the pattern.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
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
    document: dict[str, Any] = field(default_factory=dict)
    outside: Mapping[int, str] = field(default_factory=dict)
    """Status -> component schema, for statuses the file leaves out (its SOURCE.txt says)."""
    violations: list[Violation] = field(default_factory=list)
    checked: int = 0
    skipped: int = 0

    @classmethod
    def load(
        cls, path: Path, *, only: Iterable[str] = (), outside: Mapping[int, str] | None = None
    ) -> Contract:
        from openapi_core import OpenAPI

        if not path.exists():
            raise FileNotFoundError(f"the vendor's OpenAPI file is missing: {path}")
        document = _nullable(_load(path))
        spec = OpenAPI.from_dict(document)
        servers = document.get("servers") or [{"url": "http://localhost"}]
        server = str(servers[0]["url"]).rstrip("/")
        return cls(
            spec=spec,
            server=server,
            only=tuple(only),
            document=document,
            outside=dict(outside or {}),
        )

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
        operation = self.operation(method, path)
        if operation is not None and _needs_brackets(operation[1]):
            pairs = parse_qsl(query, keep_blank_values=True)
            request_errors = self._bracket_request(pairs, headers or {}, body, *operation)
        else:
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
            response_errors = self._response_errors(request, response)
            if response_errors:
                found.append(Violation("response", method, path, status, response_errors))
        self.violations.extend(found)
        return found

    def _response_errors(self, request: _Request, response: _Response) -> list[str]:
        from openapi_core.templating.responses.exceptions import ResponseNotFound
        from openapi_schema_validator import OAS30Validator

        try:
            return _errors(lambda: self.spec.validate_response(request, response), reraise=True)
        except ResponseNotFound:
            schema = self.outside.get(response.status_code)
            if schema is None:
                return [f"status {response.status_code} is not in the spec or its notes"]
        body = json.loads(response.data) if response.data else None
        validator = OAS30Validator(
            {**self.document["components"]["schemas"][schema], "components": self.components}
        )
        return [f"{schema}: {e.message}" for e in validator.iter_errors(body)]

    @property
    def components(self) -> dict[str, Any]:
        found: dict[str, Any] = self.document.get("components", {})
        return found

    def operation(self, method: str, path: str) -> tuple[dict[str, str], dict[str, Any]] | None:
        """(path parameters, operation with its path-level parameters), or None."""
        paths = sorted(self.document.get("paths", {}).items(), key=lambda kv: kv[0].count("{"))
        for template, item in paths:
            pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
            found = re.fullmatch(pattern, path)
            operation = item.get(method.lower())
            if found is not None and isinstance(operation, dict):
                params = [*item.get("parameters", []), *operation.get("parameters", [])]
                return found.groupdict(), {**operation, "parameters": params}
        return None

    def resolve(self, node: Any) -> Any:
        """A ``$ref`` followed (to its end) inside the document."""
        while isinstance(node, dict) and "$ref" in node:
            target: Any = self.document
            for part in str(node["$ref"]).removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def _bracket_request(
        self,
        pairs: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
        body: bytes | None,
        path_values: dict[str, str],
        operation: dict[str, Any],
    ) -> list[str]:
        """A request with a form body or deepObject parameters, read in bracket notation."""
        found: list[str] = []
        lowered = {k.lower(): v for k, v in headers.items()}
        schemes = self.components.get("securitySchemes", {})
        wanted = [
            str(schemes.get(name, {}).get("scheme", "")).lower()
            for requirement in operation.get("security", self.document.get("security", []))
            for name in requirement
        ]
        auth = lowered.get("authorization", "").lower()
        if wanted and not any(auth.startswith(w + " ") for w in wanted):
            found.append(f"security: no Authorization with scheme {' or '.join(wanted)}")
        for param in operation["parameters"]:
            param = self.resolve(param)
            name, where, schema = param["name"], param["in"], param.get("schema", {})
            value: Any
            if where == "path":
                value = path_values.get(name)
            elif where == "header":
                value = lowered.get(name.lower())
            elif param.get("style") == "deepObject":
                inner = [(k, v) for k, v in pairs if k.startswith(name + "[")]
                value = brackets(inner).get(name) if inner else None
            else:
                values = [v for k, v in pairs if k == name]
                value = values if schema.get("type") == "array" else (values[0] if values else None)
            if value is None:
                if param.get("required"):
                    found.append(f"the required {where} parameter {name!r} is missing")
                continue
            found += [
                f"{where} parameter {name!r}: {e}" for e in self._schema_errors(schema, value)
            ]
        declared = operation.get("requestBody")
        kind = lowered.get("content-type", "").split(";")[0].strip()
        if declared is None or not body:
            if declared is not None and declared.get("required"):
                found.append("the required body is missing")
            return found
        content = declared.get("content", {})
        if kind not in content:
            return [*found, f"content type {kind!r} is not one of {sorted(content)}"]
        if kind == "application/x-www-form-urlencoded":
            parsed: Any = brackets(parse_qsl(body.decode(), keep_blank_values=True))
        else:
            parsed = json.loads(body)
        schema = content[kind].get("schema", {})
        return found + [f"body: {e}" for e in self._schema_errors(schema, parsed)]

    def _schema_errors(self, schema: dict[str, Any], value: Any) -> list[str]:
        from openapi_schema_validator import OAS30Validator

        validator = OAS30Validator({**schema, "components": self.components})
        return [e.message for e in validator.iter_errors(self.cast(schema, value))]

    def cast(self, schema: Any, value: Any) -> Any:
        """Form text cast to what the schema wants (``"3"`` for an integer is 3), where it can."""
        from openapi_schema_validator import OAS30Validator

        schema = self.resolve(schema)
        if not isinstance(schema, dict):
            return value
        for key in ("anyOf", "oneOf"):
            if key in schema:
                for option in schema[key]:
                    typed = self.cast(option, value)
                    resolved = self.resolve(option)
                    if OAS30Validator({**resolved, "components": self.components}).is_valid(typed):
                        return typed
                return value
        for option in schema.get("allOf", []):
            value = self.cast(option, value)
        if isinstance(value, dict):
            properties = schema.get("properties", {})
            extra = schema.get("additionalProperties")
            fallback = extra if isinstance(extra, dict) else {}
            return {k: self.cast(properties.get(k, fallback), v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.cast(schema.get("items", {}), v) for v in value]
        kind = schema.get("type")
        if isinstance(value, str):
            try:
                if kind == "integer":
                    return int(value)
                if kind == "number":
                    return float(value)
            except ValueError:
                return value
            if kind == "boolean" and value in ("true", "false"):
                return value == "true"
        return value

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


def _errors(call: Callable[[], Any], *, reraise: bool = False) -> list[str]:
    from openapi_core.exceptions import OpenAPIError
    from openapi_core.templating.responses.exceptions import ResponseNotFound

    try:
        call()
    except ResponseNotFound:
        if reraise:
            raise
        return ["the spec declares no answer with this status"]
    except OpenAPIError as exc:
        reasons = [str(exc)[:500]]
        cause = exc.__cause__
        if cause is not None and str(cause) not in reasons[0]:
            reasons.append(str(cause)[:500])
        return reasons
    return []


def brackets(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Form pairs in bracket notation (``a[b][0]=x``, OpenAPI's ``deepObject``) as nested
    objects and lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node: Any = root
        for part, following in zip(parts, [*parts[1:], None], strict=True):
            if following is None:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    fixed = _lists(root)
    return fixed if isinstance(fixed, dict) else {}


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        fixed = {k: _lists(v) for k, v in node.items()}
        if fixed and all(k.isdigit() for k in fixed):
            return [fixed[k] for k in sorted(fixed, key=int)]
        return fixed
    return node


def _needs_brackets(operation: dict[str, Any]) -> bool:
    content = (operation.get("requestBody") or {}).get("content", {})
    return "application/x-www-form-urlencoded" in content or any(
        isinstance(p, dict) and p.get("style") == "deepObject" for p in operation["parameters"]
    )


def _nullable(node: Any) -> Any:
    """``nullable`` beside ``anyOf``/``oneOf``/``allOf`` as an explicit null alternative."""
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable(v) for k, v in node.items()}
    if node.get("nullable") is True and "type" not in node:
        null = {"type": "string", "nullable": True, "enum": [None]}
        for key in ("anyOf", "oneOf"):
            if key in node:
                return {**node, key: [*node[key], null]}
        if "allOf" in node:
            rest = {k: v for k, v in node.items() if k not in ("allOf", "nullable")}
            return {"anyOf": [{"allOf": node["allOf"], **rest}, null]}
    return node


def _load(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        loaded: dict[str, Any] = yaml.safe_load(text)
        return loaded
    parsed: dict[str, Any] = json.loads(text)
    return parsed
