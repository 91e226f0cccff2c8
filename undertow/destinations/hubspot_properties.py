"""HubSpot properties: the metadata ``undertow validate`` reads (object types and their
properties), and property values as HubSpot takes them (text).

``GET /crm/v3/properties/{objectType}`` lists an object type's properties (name, whether its
values are unique, whether it is read-only); a type HubSpot does not have answers 400 "Unable
to infer object type from: ...", and ``GET /crm/v3/schemas`` lists the custom objects (their
fully qualified names and objectTypeIds) for a did-you-mean. Each object's properties are read
once per destination instance (one per validate call or run of a sync), never per row or batch.

https://developers.hubspot.com/docs/api-reference/legacy/crm/properties/get-properties
https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/schemas/get-schema
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from undertow.destinations.base import Operation
from undertow.destinations.kit import parse_json
from undertow.errors import FatalDeliveryError, did_you_mean

if TYPE_CHECKING:
    from undertow.destinations._http import Response
    from undertow.destinations.hubspot import HubSpotDestination

STANDARD_OBJECTS = ("contacts", "companies", "deals")
"""The standard objects Undertow writes by name (others by their objectTypeId, ``0-5``)."""

OBJECT_PATTERN = r"\d+-\d+|p\d*_[A-Za-z0-9_]+"
"""Besides a standard name, what ``object:`` may be: an objectTypeId (``2-123``, ``0-3``) or a
custom object's fully qualified name (``p123_cars``). Anything else is refused before a
request (``Destination.object_name_problem``)."""
OBJECT_NAME = re.compile(rf"^(?:contacts|companies|deals|{OBJECT_PATTERN})$")

PROPERTIES_DOC = (
    "https://developers.hubspot.com/docs/api-reference/legacy/crm/properties/get-properties"
)
SCHEMAS_DOC = (
    "https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/schemas/get-schema"
)
UNIQUE_DOC = "https://developers.hubspot.com/docs/api-reference/crm-properties-v3/guide"
WRITES = frozenset({Operation.UPSERT, Operation.UPDATE, Operation.INSERT})
BY_ID = frozenset({Operation.UPSERT, Operation.UPDATE, Operation.DELETE})


def unknown_type(response: Response, body: Any) -> bool:
    """HubSpot's answer for an object type it does not have (400 "Unable to infer ...")."""
    message = body.get("message") if isinstance(body, dict) else None
    return response.status in (400, 404) and "infer object type" in str(message or "")


@dataclass(frozen=True)
class Properties:
    """One object type's properties, as the properties API lists them."""

    object: str
    by_name: Mapping[str, Mapping[str, Any]]

    @classmethod
    def from_json(cls, object_: str, body: Any) -> Properties:
        results = body.get("results") if isinstance(body, dict) else None
        found = {
            str(p["name"]): p
            for p in results or []
            if isinstance(p, dict) and isinstance(p.get("name"), str) and not p.get("archived")
        }
        return cls(object_, found)

    def unique(self, name: str) -> bool:
        return name == "hs_object_id" or bool(self.by_name.get(name, {}).get("hasUniqueValue"))

    def read_only(self, name: str) -> bool:
        meta = self.by_name.get(name, {}).get("modificationMetadata")
        return isinstance(meta, dict) and meta.get("readOnlyValue") is True

    def unknown(self, field: str, *, also: Iterable[str] = ()) -> str | None:
        """Why ``field`` is not a property of the object (None when it is)."""
        if field in self.by_name:
            return None
        closest = did_you_mean(field, [*self.by_name, *also])
        return (
            f"HubSpot {self.object} have no property {field!r}"
            + (f"; {closest}" if closest else "")
            + " (property names are HubSpot's internal names, e.g. 'firstname'; create a "
            "custom property in Settings > Properties first)"
        )

    def problems(
        self,
        *,
        sync: str,
        match: Mapping[str, str],
        fields: Iterable[str],
        operations: frozenset[Operation],
        not_properties: Iterable[str] = (),
    ) -> list[str]:
        """Unknown or read-only mapped properties, and a match property that is not unique."""
        skip = set(not_properties)
        out: list[str] = []
        if operations & WRITES:
            for field in fields:
                if field in skip:
                    continue
                problem = self.unknown(field, also=skip)
                if problem is not None:
                    out.append(f"sync {sync!r}: {problem}; every row would be rejected")
                elif self.read_only(field):
                    out.append(
                        f"sync {sync!r}: HubSpot {self.object} property {field!r} is read-only "
                        "(HubSpot sets it); remove it from mappings"
                    )
        if operations & BY_ID:
            for field in match:
                problem = self.unknown(field)
                if problem is not None:
                    out.append(f"sync {sync!r}: match: {problem}")
                elif not self.unique(field):
                    out.append(
                        f"sync {sync!r}: match: HubSpot {self.object} property {field!r} does "
                        "not have unique values, so HubSpot cannot upsert, update or delete by "
                        "it; match on a property created with 'unique values' "
                        f"(hasUniqueValue, {UNIQUE_DOC}), e.g. email for contacts, domain for "
                        "companies"
                    )
        return out


class PropertyBook:
    """The object types and properties one destination instance has read (a cache)."""

    def __init__(self, destination: HubSpotDestination) -> None:
        self.destination = destination
        self.cache: dict[str, Properties | None] = {}

    async def properties(self, object_: str) -> Properties | None:
        """The object's properties (one request per object), None when HubSpot has no such
        object type."""
        if object_ not in self.cache:
            response = await self.destination.send(
                "GET", f"/crm/v3/properties/{object_}", expect=frozenset({200})
            )
            body = parse_json(response)
            if unknown_type(response, body):
                self.cache[object_] = None
            elif response.status != 200 or not isinstance(body, dict):
                raise FatalDeliveryError(
                    f"destination {self.destination.instance_name!r} (hubspot): cannot read "
                    f"the properties of {object_}: {response.describe()}",
                    hint="give the private app the crm.schemas.*.read scopes of the objects it "
                    f"writes ({PROPERTIES_DOC})",
                )
            else:
                self.cache[object_] = Properties.from_json(object_, body)
        return self.cache[object_]

    async def object_names(self) -> list[str]:
        """Standard names plus every custom object's fully qualified name and objectTypeId."""
        names = list(STANDARD_OBJECTS)
        response = await self.destination.send("GET", "/crm/v3/schemas", expect=frozenset({200}))
        body = parse_json(response)
        for schema in body.get("results", []) if isinstance(body, dict) else []:
            if isinstance(schema, dict):
                names += [
                    str(schema[k]) for k in ("fullyQualifiedName", "objectTypeId") if k in schema
                ]
        return names


def unknown_object(sync: str, name: str, known: list[str]) -> str:
    """A sync's object that HubSpot does not have, with the closest names."""
    closest = did_you_mean(name, known) or next(
        (f"did you mean {k!r}?" for k in known if k.casefold().endswith(f"_{name.casefold()}")),
        None,
    )
    return (
        f"sync {sync!r}: HubSpot has no object type {name!r}"
        + (f"; {closest}" if closest else "")
        + f" (known: {', '.join(known)}); a custom object is named by its fully qualified "
        f"name (p<portal id>_<name>) or objectTypeId (2-<id>): {SCHEMAS_DOC}"
    )


# -- value shaping (HubSpot property values are text) ---------------------------------------


def shape_value(value: Any) -> str | None:
    """One scalar as HubSpot text; None for a value that is not a finite scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, str):
        return value
    return None


def shape_properties(record: dict[str, Any]) -> tuple[dict[str, str], str | None]:
    """A record as HubSpot properties, or the reason it cannot be sent.

    None clears a property (HubSpot clears a value given as ""); lists become HubSpot's
    multi-select format ``a;b``; nested objects are refused.
    """
    properties: dict[str, str] = {}
    for field, value in record.items():
        if value is None:
            properties[field] = ""
        elif isinstance(value, dict):
            return {}, (
                f"field {field!r} is a nested object; HubSpot properties take text, numbers, "
                "booleans or lists (map it to separate fields, or render it with a template)"
            )
        elif isinstance(value, list):
            options: list[str] = []
            for item in value:
                if item is None:
                    continue
                text = shape_value(item)
                if text is None:
                    return {}, (
                        f"field {field!r} holds a list with a nested value; HubSpot "
                        "multi-select properties take a flat list of text values"
                    )
                if ";" in text:
                    return {}, (
                        f"field {field!r} has a list item containing ';', HubSpot's "
                        "multi-select separator"
                    )
                options.append(text)
            properties[field] = ";".join(options)
        else:
            text = shape_value(value)
            if text is None:
                return {}, f"field {field!r} is not a finite number or text"
            properties[field] = text
    return properties, None
