"""OpenAPI conformance: every request a connector sends and every answer its fake returns,
validated against the vendor's OpenAPI file in ``../shared/specs`` (openapi-core).

Shared by every vendor with a spec file (Intercom and Stripe here; Klaviyo and Slack next)::

    contract = Contract(SPECS / "intercom/intercom-2.14-contacts.openapi.yaml",
                        outside={409: "error", 429: "error"})
    with recording(fake) as (url, exchanges):      # the fake's app, wrapped
        ...run the connector against url...
    contract.assert_conforms(exchanges)             # every exchange, or a list of problems

A :class:`Recorder` wraps the fake's ASGI app and keeps each exchange byte for byte: the
request as the connector sent it (method, path, query, headers, body) and the answer as the
fake wrote it. :meth:`Contract.problems` validates the request (path, parameters, security,
body schema) and the answer (status declared for the operation, body schema). What a spec
file leaves out but its SOURCE.txt or the vendor's docs state (Intercom's 409 and 429 are
not in the file) is declared where the contract is built: ``outside`` maps such a status to
the component schema its body must follow, ``extra`` lists requests outside the file (an
endpoint the trimmed spec dropped) with the reason; anything else is a problem.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_schema_validator import OAS30Validator
from werkzeug.datastructures import Headers, ImmutableMultiDict

from undertow.testing.stripe import unflatten  # bracket notation = OpenAPI's deepObject


@dataclass
class Exchange:
    """One request to a fake and its answer, as they went over the wire."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b""

    def json(self) -> Any:
        return orjson.loads(self.response_body) if self.response_body else None

    def __str__(self) -> str:
        return f"{self.method} {self.path} -> {self.status}"


class Recorder:
    """An ASGI middleware that records every exchange with the app it wraps."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.exchanges: list[Exchange] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = Exchange(
            method=scope["method"],
            path=scope["path"],
            query=parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True),
            headers={k.decode().lower(): v.decode() for k, v in scope["headers"]},
            body=b"",
        )

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

        await self.app(scope, receiving, sending)
        self.exchanges.append(exchange)


@contextlib.contextmanager
def recording(fake: Any) -> Iterator[tuple[str, list[Exchange]]]:
    """Serve ``fake`` with its app wrapped in a :class:`Recorder`; yields (url, exchanges)."""
    recorder = Recorder(fake.app)
    fake.app = recorder
    try:
        with fake.serve() as url:
            yield url, recorder.exchanges
    finally:
        fake.app = recorder.app


@dataclass
class _Request:
    host_url: str
    path: str
    method: str
    parameters: RequestParameters
    body: bytes | None
    content_type: str


@dataclass
class _Response:
    status_code: int
    data: bytes | None
    headers: Mapping[str, Any]
    content_type: str


def _problem(exc: Exception) -> str:
    parts = [f"{type(exc).__name__}: {exc}"]
    for inner in getattr(exc, "schema_errors", None) or []:
        parts.append(f"  {getattr(inner, 'message', inner)}")
    cause = exc.__cause__
    while cause is not None:
        parts.append(f"  caused by {type(cause).__name__}: {cause}")
        for inner in getattr(cause, "schema_errors", None) or []:
            parts.append(f"    {getattr(inner, 'message', inner)}")
        cause = cause.__cause__
    return "\n".join(parts)


class Contract:
    """A vendor's OpenAPI file, and what its SOURCE.txt adds (see the module docstring)."""

    def __init__(
        self,
        spec: Path,
        *,
        outside: Mapping[int, str] | None = None,
        extra: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        self.spec_path = spec
        self.document: dict[str, Any] = _nullable(_load(spec))
        self.openapi = OpenAPI.from_dict(self.document)
        self.server = str(self.document["servers"][0]["url"]).rstrip("/")
        self.outside = dict(outside or {})
        self.extra = [(m.upper(), re.compile(p), why) for m, p, why in extra]

    def schema(self, name: str) -> dict[str, Any]:
        return dict(self.document["components"]["schemas"][name])

    def is_extra(self, exchange: Exchange) -> str | None:
        for method, pattern, why in self.extra:
            if exchange.method == method and pattern.fullmatch(exchange.path):
                return why
        return None

    def problems(self, exchange: Exchange, *, requests: bool = True) -> list[str]:
        """What in this exchange the spec (plus ``outside``/``extra``) does not allow
        (``requests=False``: the answer only, for a request that is wrong on purpose)."""
        if self.is_extra(exchange) is not None:
            return []
        request = _Request(
            host_url=self.server,
            path=exchange.path,
            method=exchange.method.lower(),
            parameters=RequestParameters(
                query=ImmutableMultiDict(exchange.query),
                header=Headers(list(exchange.headers.items())),
            ),
            body=exchange.body or None,
            content_type=exchange.headers.get("content-type", ""),
        )
        found: list[str] = []
        operation = self.operation(exchange)
        if not requests:
            pass
        elif operation is not None and _needs_brackets(operation[1]):
            found += [f"{exchange}: request: {p}" for p in self._form_request(exchange, *operation)]
        else:
            try:
                self.openapi.validate_request(request)
            except Exception as exc:  # openapi-core's errors share no base worth naming
                found.append(f"{exchange}: request: {_problem(exc)}")
        response = _Response(
            status_code=exchange.status,
            data=exchange.response_body or None,
            headers=Headers(list(exchange.response_headers.items())),
            content_type=exchange.response_headers.get("content-type", ""),
        )
        try:
            self.openapi.validate_response(request, response)
        except ResponseNotFound:
            found += self._outside(exchange)
        except Exception as exc:
            found.append(f"{exchange}: response: {_problem(exc)}")
        return found

    def _outside(self, exchange: Exchange) -> list[str]:
        """A status the spec does not declare for the operation: its SOURCE.txt must."""
        schema = self.outside.get(exchange.status)
        if schema is None:
            return [f"{exchange}: status {exchange.status} is not in the spec or its notes"]
        validator = OAS30Validator(
            {**self.schema(schema), "components": self.document["components"]}
        )
        errors = [e.message for e in validator.iter_errors(exchange.json())]
        return [f"{exchange}: {schema} body: {e}" for e in errors]

    def operation(self, exchange: Exchange) -> tuple[dict[str, str], dict[str, Any]] | None:
        """(path parameters, operation with its path-level parameters) for an exchange."""
        paths = sorted(self.document["paths"].items(), key=lambda kv: kv[0].count("{"))
        for template, item in paths:
            pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
            found = re.fullmatch(pattern, exchange.path)
            operation = item.get(exchange.method.lower())
            if found is not None and isinstance(operation, dict):
                params = [*item.get("parameters", []), *operation.get("parameters", [])]
                return found.groupdict(), {**operation, "parameters": params}
        return None

    def _form_request(
        self, exchange: Exchange, path_values: dict[str, str], operation: dict[str, Any]
    ) -> list[str]:
        """A request with a form body or deepObject parameters (openapi-core 0.23 cannot
        deserialize deepObject): parameters and body read in bracket notation, cast to their
        schema's types, then validated with the schema."""
        found: list[str] = []
        header = exchange.headers.get("authorization", "")
        schemes = self.document.get("components", {}).get("securitySchemes", {})
        wanted = [
            str(schemes[name].get("scheme", "")).lower()
            for requirement in operation.get("security", self.document.get("security", []))
            for name in requirement
        ]
        if wanted and not any(header.lower().startswith(w + " ") for w in wanted):
            found.append(f"security: no Authorization with scheme {' or '.join(wanted)}")
        for param in operation["parameters"]:
            param = self.resolve(param)
            name, where, schema = param["name"], param["in"], param.get("schema", {})
            if where == "path":
                value: Any = path_values.get(name)
            elif where == "header":
                value = exchange.headers.get(name.lower())
            elif param.get("style") == "deepObject":
                pairs = [(k, v) for k, v in exchange.query if k.startswith(name + "[")]
                value = unflatten(pairs).get(name) if pairs else None
            else:
                values = [v for k, v in exchange.query if k == name]
                value = values if schema.get("type") == "array" else (values[0] if values else None)
            if value is None:
                if param.get("required"):
                    found.append(f"the required {where} parameter {name!r} is missing")
                continue
            found += [f"{where} parameter {name!r}: {e}" for e in self._errors(schema, value)]
        body = operation.get("requestBody")
        kind = exchange.headers.get("content-type", "").split(";")[0].strip()
        if body is None or not exchange.body:
            if body is not None and body.get("required"):
                found.append("the required body is missing")
            return found
        content = body.get("content", {})
        if kind not in content:
            return [*found, f"content type {kind!r} is not one of {sorted(content)}"]
        schema = content[kind].get("schema", {})
        if kind == "application/x-www-form-urlencoded":
            parsed: Any = unflatten(parse_qsl(exchange.body.decode(), keep_blank_values=True))
        else:
            parsed = orjson.loads(exchange.body)
        return found + [f"body: {e}" for e in self._errors(schema, parsed)]

    def resolve(self, node: Any) -> Any:
        """A ``$ref`` followed (to its end) inside the document."""
        while isinstance(node, dict) and "$ref" in node:
            target: Any = self.document
            for part in str(node["$ref"]).removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def _errors(self, schema: dict[str, Any], value: Any) -> list[str]:
        typed = _cast(self, schema, value)
        validator = OAS30Validator({**schema, "components": self.document["components"]})
        return [e.message for e in validator.iter_errors(typed)]

    def assert_conforms(self, exchanges: Sequence[Exchange], *, requests: bool = True) -> None:
        assert exchanges, "nothing was recorded"
        found = [p for e in exchanges for p in self.problems(e, requests=requests)]
        assert not found, "\n".join(found)


def _needs_brackets(operation: dict[str, Any]) -> bool:
    """A form body or a deepObject parameter: read in bracket notation by the contract."""
    content = (operation.get("requestBody") or {}).get("content", {})
    return "application/x-www-form-urlencoded" in content or any(
        isinstance(p, dict) and p.get("style") == "deepObject" for p in operation["parameters"]
    )


def _cast(contract: Contract, schema: Any, value: Any) -> Any:
    """Form text cast to what the schema wants (``"3"`` for an integer is 3), where it can."""
    schema = contract.resolve(schema)
    if not isinstance(schema, dict):
        return value
    for key in ("anyOf", "oneOf"):
        if key in schema:
            for option in schema[key]:
                typed = _cast(contract, option, value)
                validator = OAS30Validator(
                    {**contract.resolve(option), "components": contract.document["components"]}
                )
                if validator.is_valid(typed):
                    return typed
            return value
    for option in schema.get("allOf", []):
        value = _cast(contract, option, value)
    kind = schema.get("type")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            k: _cast(contract, properties.get(k, extra if isinstance(extra, dict) else {}), v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_cast(contract, schema.get("items", {}), v) for v in value]
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


def _nullable(node: Any) -> Any:
    """OAS 3.0 ``nullable`` next to ``anyOf``/``oneOf``/``allOf`` (no ``type``): the value may
    be null, as the vendors' own fixtures show; openapi-schema-validator only honours
    ``nullable`` next to ``type``, so such a schema gains an explicit null alternative."""
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


def _load(spec: Path) -> dict[str, Any]:
    text = spec.read_text()
    if spec.suffix == ".json":
        return dict(orjson.loads(text))
    import yaml

    return dict(yaml.safe_load(text))
