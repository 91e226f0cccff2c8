"""Records as Salesforce takes them, sObject Collections answers, and record-id lookups.

Values: text, numbers, booleans and null go as they are (null clears the field); a list
becomes a multi-select picklist value ``a;b;c``; a nested object is refused before sending
(Salesforce fields hold one value). Dates and timestamps arrive from the mapping as ISO
8601 text, which Salesforce reads.

sObject Collections answer 200 with one result per record in the order sent; a 400 (the
body could not be read: a value of the wrong JSON type, an unknown field) names no record,
so the kit bisects the request to find the records at fault.

Update and delete by an external ID need record ids: :func:`lookup` asks SOQL
(``SELECT Id, <field> FROM <object> WHERE <field> IN (...)``), a few hundred values per
query so the URL stays short.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import quote

from undertow.destinations._http import Response
from undertow.destinations.base import BatchResult
from undertow.destinations.kit import Call, Reject, not_confirmed, parse_json
from undertow.errors import FatalDeliveryError, RejectedBatchError
from undertow.redact import trim

GONE = frozenset({"ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY"})
"""Delete results meaning the record is not there (already deleted): the delete is done."""
NUMERIC = frozenset({"double", "int", "currency", "percent", "long"})
SOQL_CHUNK = 200
SOQL_URL_CHARS = 8_000


def shape_fields(record: dict[str, Any]) -> dict[str, Any] | Reject:
    """A mapped record as Salesforce field values (or why it cannot be sent)."""
    out: dict[str, Any] = {}
    for name, value in record.items():
        if isinstance(value, dict):
            return Reject(
                f"field {name!r} is a nested object; a Salesforce field holds one value (map "
                "its parts to separate fields, or render it with a template)"
            )
        if isinstance(value, list):
            items = [v for v in value if v is not None]
            if any(isinstance(v, dict | list) for v in items):
                return Reject(f"field {name!r} holds a list of lists or objects")
            text = [_text(v) for v in items]
            if any(";" in t for t in text):
                return Reject(
                    f"field {name!r} has a list item containing ';', the separator of "
                    "Salesforce multi-select picklists"
                )
            out[name] = ";".join(text)
        else:
            out[name] = value
    return out


TEXT = frozenset(
    {
        "string",
        "textarea",
        "email",
        "phone",
        "url",
        "picklist",
        "multipicklist",
        "combobox",
        "reference",
        "id",
        "encryptedstring",
    }
)


def as_field_types(body: dict[str, Any], described: Any) -> dict[str, Any]:
    """Numbers and booleans bound for text fields as text (``42`` -> ``"42"``), per the
    object's describe; other values as they are."""
    out = dict(body)
    for name, value in body.items():
        if isinstance(value, bool | int | float) and name != "attributes":
            info = described.field(name)
            if info is not None and info.type in TEXT:
                out[name] = _text(value)
    return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def error_text(error: Any) -> str:
    """``Salesforce <code>: <message> (fields: a, b)`` from an error object."""
    if not isinstance(error, dict):
        return trim(f"Salesforce: {error}", 500)
    code = error.get("statusCode") or error.get("errorCode") or "ERROR"
    text = f"Salesforce {code}: {error.get('message') or 'no message'}"
    fields = error.get("fields")
    if isinstance(fields, list) and fields:
        text += f" (fields: {', '.join(map(str, fields))})"
    return trim(text, 500)


def refusal(call: Call, response: Response, body: Any) -> RejectedBatchError:
    """A whole-request 4xx: Salesforce's own message, or the safe description."""
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return RejectedBatchError(error_text(body[0]))
    return RejectedBatchError(f"Salesforce refused the request: {response.describe()}")


def unknown_object(call: Call, response: Response) -> FatalDeliveryError:
    return FatalDeliveryError(
        f"sync {call.batch.sync!r}: the Salesforce org has no sObject {call.object!r} (or the "
        f"integration user cannot see it): {response.describe()}",
        hint="`object:` takes the API name (custom objects end in __c); `undertow validate` "
        "lists the closest names",
    )


def read_collection(call: Call, response: Response, body: Any) -> BatchResult:
    """One sObject Collections answer: a result per record, in the order sent."""
    if response.status == 404:
        raise unknown_object(call, response)
    if 400 <= response.status < 500:
        raise refusal(call, response, body)
    if not isinstance(body, list) or len(body) != len(call.items):
        return not_confirmed(call, response)
    result = BatchResult()
    for position, item in enumerate(body):
        if isinstance(item, dict) and item.get("success") is True:
            continue
        errors = item.get("errors") if isinstance(item, dict) else None
        first = errors[0] if isinstance(errors, list) and errors else item
        result.rejected[position] = error_text(first)
    return result


def read_deletes(call: Call, response: Response, body: Any) -> BatchResult:
    """A Collections delete answer: a record already gone counts as deleted."""
    if 400 <= response.status < 500:
        raise refusal(call, response, body)
    if not isinstance(body, list) or len(body) != len(call.items):
        return not_confirmed(call, response)
    result = BatchResult()
    for position, item in enumerate(body):
        if not isinstance(item, dict) or item.get("success") is True:
            continue
        errors = item.get("errors") or [{}]
        first = errors[0] if isinstance(errors, list) and errors else item
        if isinstance(first, dict) and first.get("statusCode") in GONE:
            continue
        result.rejected[position] = error_text(first)
    return result


# -- SOQL lookups ------------------------------------------------------------------------------


def literal(value: Any, numeric: bool) -> str:
    """A SOQL literal: numbers bare on numeric fields, text quoted with its escapes."""
    if numeric:
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f"'{text}'"


def norm(value: Any, numeric: bool) -> str:
    """How lookups compare values: numbers by value, text caselessly (as external IDs match)."""
    if numeric:
        try:
            return repr(float(value))
        except (TypeError, ValueError):
            return str(value)
    return str(value).casefold()


def soql_chunks(sobject: str, field: str, values: Iterable[Any], numeric: bool) -> list[str]:
    """``SELECT Id, field FROM sobject WHERE field IN (...)`` queries covering ``values``."""
    head = f"SELECT Id, {field} FROM {sobject} WHERE {field} IN ("
    queries: list[str] = []
    current: list[str] = []
    size = len(quote(head))
    for value in values:
        text = literal(value, numeric)
        cost = len(quote(text)) + 3
        if current and (len(current) >= SOQL_CHUNK or size + cost > SOQL_URL_CHARS):
            queries.append(head + ", ".join(current) + ")")
            current, size = [], len(quote(head))
        current.append(text)
        size += cost
    if current:
        queries.append(head + ", ".join(current) + ")")
    return queries


Fetch = Callable[[str, "dict[str, str] | None"], Awaitable[Any]]


async def lookup(
    fetch: Fetch, sobject: str, field: str, values: list[Any], numeric: bool
) -> dict[str, list[str]]:
    """Record ids by the normalised value of ``field`` (several when the field is not unique).

    ``fetch(path, params)`` GETs a path and returns the parsed body; ``nextRecordsUrl`` pages
    are followed through it.
    """
    found: dict[str, list[str]] = {}
    for soql in soql_chunks(sobject, field, values, numeric):
        page: Any = await fetch("/query", {"q": soql})
        while True:
            for record in page.get("records", []) if isinstance(page, dict) else []:
                if isinstance(record, dict) and record.get("Id"):
                    key = norm(record.get(field), numeric)
                    found.setdefault(key, []).append(str(record["Id"]))
            following = page.get("nextRecordsUrl") if isinstance(page, dict) else None
            if not following:
                break
            page = await fetch(
                str(following).split("/services/data/", 1)[-1].split("/", 1)[-1], None
            )
    return found


__all__ = [
    "GONE",
    "NUMERIC",
    "error_text",
    "literal",
    "lookup",
    "norm",
    "parse_json",
    "read_collection",
    "read_deletes",
    "shape_fields",
    "soql_chunks",
]
