"""A small OpenAPI 3 conformance checker for fakes and connectors (requests and answers).

    spec = OpenAPI.load("../shared/specs/slack/slack-web-chat.postMessage.openapi.json")
    problems = spec.check_request("POST", "/chat.postMessage", content_type, body)
    problems = spec.check_response("POST", "/chat.postMessage", 200, body)

It covers what the vendor specs in ``../shared/specs`` use: ``$ref`` into
``#/components``, ``type`` (one or a list), ``required``, ``properties``,
``additionalProperties`` (true/false or a schema), ``items``, ``enum``, ``pattern``,
``minItems``/``maxItems``, ``uniqueItems``, ``minLength``/``maxLength``,
``minimum``/``maximum``, ``anyOf``/``oneOf``/``allOf``. Form-encoded bodies
(``application/x-www-form-urlencoded``) are checked with each value read as its declared
scalar type, as OpenAPI serialises them. Unknown keywords are ignored (``format`` is
informative here). A problem is one line naming the JSON path and why.

Written for this project because the kit's shared helper is not on main yet; it is
intentionally small and has its own tests (``tests/unit/test_openapi_checker.py``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


class OpenAPI:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    @classmethod
    def load(cls, path: str | Path) -> OpenAPI:
        return cls(orjson.loads(Path(path).read_bytes()))

    def operation(self, method: str, path: str) -> dict[str, Any]:
        found = self.document.get("paths", {}).get(path, {}).get(method.lower())
        if found is None:
            raise KeyError(f"the spec has no {method.upper()} {path}")
        return dict(found)

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            ref = str(schema["$ref"])
            if not ref.startswith("#/"):
                raise ValueError(f"only local $ref are supported, not {ref!r}")
            node: Any = self.document
            for part in ref[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            schema = node
        return schema

    # -- requests and answers ----------------------------------------------------------------

    def check_request(self, method: str, path: str, content_type: str, body: Any) -> list[str]:
        op = self.operation(method, path)
        content = op.get("requestBody", {}).get("content", {})
        media = content_type.split(";")[0].strip().lower()
        if media not in content:
            return [
                f"{method} {path}: content type {media!r} is not one the spec accepts ({', '.join(content)})"
            ]
        schema = content[media].get("schema", {})
        if media == "application/x-www-form-urlencoded":
            body = self._coerce_form(schema, body)
        return self.validate(schema, body, "body")

    def check_response(self, method: str, path: str, status: int, body: Any) -> list[str]:
        responses = self.operation(method, path).get("responses", {})
        answer = responses.get(str(status)) or responses.get("default")
        if answer is None:
            return [f"{method} {path}: status {status} is not in the spec"]
        content = answer.get("content", {}).get("application/json")
        if content is None:
            return []
        return self.validate(content.get("schema", {}), body, f"{status} body")

    def _coerce_form(self, schema: dict[str, Any], body: Any) -> Any:
        schema = self.resolve(schema)
        if not isinstance(body, dict):
            return body
        out: dict[str, Any] = {}
        for name, value in body.items():
            declared = self.resolve(schema.get("properties", {}).get(name, {})).get("type")
            out[name] = _scalar(value, declared)
        return out

    # -- JSON Schema, the subset the specs use ---------------------------------------------

    def validate(self, schema: dict[str, Any], value: Any, where: str) -> list[str]:
        schema = self.resolve(schema)
        problems: list[str] = []
        for key in ("allOf",):
            for sub in schema.get(key, []):
                problems += self.validate(sub, value, where)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if options and not any(not self.validate(o, value, where) for o in options):
                problems.append(f"{where}: matches none of the {key} schemas")
        kind = schema.get("type")
        if kind is not None:
            kinds = kind if isinstance(kind, list) else [kind]
            if not any(_is(value, k) for k in kinds):
                return [
                    *problems,
                    f"{where}: {type(value).__name__} {_show(value)} is not {'/'.join(kinds)}",
                ]
        if "enum" in schema and value not in schema["enum"]:
            problems.append(f"{where}: {_show(value)} is not one of {schema['enum']}")
        if isinstance(value, str):
            if "pattern" in schema and not re.search(schema["pattern"], value):
                problems.append(f"{where}: {_show(value)} does not match {schema['pattern']!r}")
            if len(value) < schema.get("minLength", 0):
                problems.append(f"{where}: shorter than {schema['minLength']}")
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                problems.append(f"{where}: longer than {schema['maxLength']}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                problems.append(f"{where}: below {schema['minimum']}")
            if "maximum" in schema and value > schema["maximum"]:
                problems.append(f"{where}: above {schema['maximum']}")
        if isinstance(value, list):
            if len(value) < schema.get("minItems", 0):
                problems.append(f"{where}: fewer than {schema['minItems']} items")
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                problems.append(f"{where}: more than {schema['maxItems']} items")
            if schema.get("uniqueItems") and len({orjson.dumps(v) for v in value}) < len(value):
                problems.append(f"{where}: items are not unique")
            if "items" in schema:
                for n, item in enumerate(value):
                    problems += self.validate(schema["items"], item, f"{where}[{n}]")
        if isinstance(value, dict):
            properties = schema.get("properties", {})
            for name in schema.get("required", []):
                if name not in value:
                    problems.append(f"{where}: required {name!r} is missing")
            extra = schema.get("additionalProperties", True)
            for name, item in value.items():
                if name in properties:
                    problems += self.validate(properties[name], item, f"{where}.{name}")
                elif extra is False:
                    problems.append(f"{where}: {name!r} is not a property the spec allows")
                elif isinstance(extra, dict):
                    problems += self.validate(extra, item, f"{where}.{name}")
        return problems


def _is(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(kind, (object,)))


def _scalar(value: Any, declared: Any) -> Any:
    if not isinstance(value, str):
        return value
    if declared == "boolean" and value in ("true", "false"):
        return value == "true"
    if declared in ("integer", "number"):
        try:
            return int(value) if declared == "integer" else float(value)
        except ValueError:
            return value
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
