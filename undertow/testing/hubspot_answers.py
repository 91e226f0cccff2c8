"""HubSpot's answer shapes for the fake (:mod:`undertow.testing.hubspot`): error bodies, the
checks that refuse a whole batch request with a 400, and per-record problems.

Shapes from https://developers.hubspot.com/docs/api-reference/error-handling and the batch
endpoints' references (``../shared/specs/hubspot/NOTES.md``).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_INPUTS = 100
"""Inputs per batch request (https://developers.hubspot.com/docs/api-reference/crm-contacts-v3/guide)."""


def text(value: Any) -> str | None:
    """A property value as HubSpot stores it: text (numbers and booleans become text)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def error_body(category: str, message: str, correlation_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "status": "error",
        "message": message,
        "correlationId": correlation_id,
        "category": category,
        **extra,
    }


class InputError(Exception):
    """A per-record problem: becomes one entry of ``errors[]`` (or a 400 without trace ids)."""

    def __init__(
        self, category: str, message: str, context: dict[str, list[str]], code: str = ""
    ) -> None:
        super().__init__(message)
        self.category = category
        self.message = message
        self.context = context
        self.code = code or category


def request_problem(body: Any, operation: str) -> str | None:
    """A whole-request problem (HubSpot answers 400 and writes nothing), or None."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        return "Invalid input JSON: the body must be an object with an `inputs` array."
    inputs = body["inputs"]
    if len(inputs) > MAX_INPUTS:
        return (
            f"Too many inputs: {len(inputs)}. A batch request accepts at most {MAX_INPUTS} inputs."
        )
    ids: list[str] = []
    for position, item in enumerate(inputs):
        if not isinstance(item, dict):
            return f"Invalid input JSON at inputs[{position}]: expected an object."
        if operation != "create" and not isinstance(item.get("id"), str | int):
            return f"inputs[{position}].id is required."
        if "id" in item:
            ids.append(str(item["id"]))
        props = item.get("properties", {})
        if operation in ("create", "update", "upsert") and not isinstance(props, dict):
            return f"Invalid input JSON at inputs[{position}].properties: expected an object."
        for key, value in (props or {}).items() if isinstance(props, dict) else ():
            if isinstance(value, dict | list):
                kind = "Object" if isinstance(value, dict) else "Array"
                token = "START_OBJECT" if isinstance(value, dict) else "START_ARRAY"
                return (
                    f"Invalid input JSON on inputs[{position}].properties.{key}: Cannot "
                    f"deserialize value of type `java.lang.String` from {kind} value "
                    f"(token `JsonToken.{token}`)"
                )
    if operation in ("update", "upsert", "read"):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            return f"Duplicate IDs found in batch input: {duplicates}. IDs must be unique"
    return None


def with_injected_errors(body: dict[str, Any], refused: list[dict[str, Any]]) -> dict[str, Any]:
    """A write's answer with a ``partial`` fault's refused inputs added to ``errors``."""
    errors = body.setdefault("errors", [])
    for item in refused:
        context: dict[str, list[str]] = {"ids": [str(item.get("id"))]}
        if "objectWriteTraceId" in item:
            context["objectWriteTraceId"] = [str(item["objectWriteTraceId"])]
        errors.append(
            {
                "status": "error",
                "category": "INTERNAL_ERROR",
                "message": "injected per-record failure",
                "context": context,
                "errors": [],
            }
        )
    body["numErrors"] = len(errors)
    return body


def check_email(email: Any, context: dict[str, list[str]]) -> None:
    """Raise HubSpot's per-record error for a contact's invalid email."""
    if email in (None, "") or _EMAIL.match(str(email)):
        return
    detail = orjson.dumps(
        [
            {
                "isValid": False,
                "message": f"Email address {email} is invalid",
                "error": "INVALID_EMAIL",
                "name": "email",
            }
        ]
    ).decode()
    raise InputError("VALIDATION_ERROR", f"Property values were not valid: {detail}", context)
