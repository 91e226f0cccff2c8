"""The object types and properties of the HubSpot fake (:mod:`undertow.testing.hubspot`).

HubSpot names an object type in a path by its name (``contacts``, ``companies``, ``deals``),
its ``objectTypeId`` (``0-1``, ``0-2``, ``0-3``; custom objects ``2-<id>``) or, for a custom
object, its ``fullyQualifiedName`` (``p<portalId>_<name>``); anything else is a 400 "Unable to
infer object type from: ...". Each type has its properties, as the properties API lists them
(``GET /crm/v3/properties/{objectType}``): HubSpot's default ones, the custom ones a test
declares, and for a custom object the ones of its schema (``GET /crm/v3/schemas``). A property
with ``hasUniqueValue`` may be an upsert's ``idProperty``.

Docs: https://developers.hubspot.com/docs/api-reference/legacy/crm/properties/get-properties,
https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/schemas/get-schema
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from undertow.testing.fakes import now_iso

PORTAL_ID = 7878787
"""The fake account's portal id (custom objects are named ``p7878787_<name>``)."""

STANDARD = {
    "contacts": ("0-1", "CONTACT"),
    "companies": ("0-2", "COMPANY"),
    "deals": ("0-3", "DEAL"),
}
"""Standard object types the fake keeps: name -> (objectTypeId, HubSpot's singular name)."""

READ_ONLY = ("hs_object_id", "createdate", "lastmodifieddate", "hs_lastmodifieddate")

_DEFAULTS: dict[str, list[str]] = {
    # a subset of HubSpot's default properties of each object (names as the API lists them)
    "contacts": [
        "email",
        "firstname",
        "lastname",
        "phone",
        "mobilephone",
        "company",
        "website",
        "jobtitle",
        "address",
        "city",
        "state",
        "zip",
        "country",
        "lifecyclestage",
        "hs_lead_status",
        "hubspot_owner_id",
    ],
    "companies": [
        "domain",
        "name",
        "phone",
        "website",
        "address",
        "city",
        "state",
        "zip",
        "country",
        "industry",
        "numberofemployees",
        "annualrevenue",
        "description",
        "lifecyclestage",
        "hubspot_owner_id",
    ],
    "deals": [
        "dealname",
        "amount",
        "dealstage",
        "pipeline",
        "closedate",
        "dealtype",
        "description",
        "hubspot_owner_id",
        "hs_priority",
    ],
}
_UNIQUE = {"contacts": {"email"}, "companies": {"domain"}, "deals": set()}


def property_json(name: str, *, unique: bool = False, read_only: bool = False) -> dict[str, Any]:
    """One property as ``GET /crm/v3/properties/{objectType}`` lists it."""
    stamp = now_iso()
    return {
        "name": name,
        "label": name.replace("_", " ").capitalize(),
        "type": "string",
        "fieldType": "text",
        "groupName": "undertow_fake",
        "description": "",
        "displayOrder": -1,
        "hasUniqueValue": unique,
        "hidden": False,
        "formField": not read_only,
        "calculated": False,
        "externalOptions": False,
        "archived": False,
        "createdAt": stamp,
        "updatedAt": stamp,
        "options": [],
        "modificationMetadata": {
            "archivable": not read_only,
            "readOnlyDefinition": read_only,
            "readOnlyValue": read_only,
        },
    }


@dataclass
class ObjectType:
    """One object type of the account: its names and its properties."""

    name: str
    """The name the fake's stores use: ``contacts``, or a custom object's fully qualified name."""
    type_id: str
    singular: str
    custom: bool = False
    short_name: str | None = None
    """A custom object's own name (``cars`` of ``p7878787_cars``)."""
    properties: dict[str, dict[str, Any]] = field(default_factory=dict)
    required: list[str] = field(default_factory=list)

    def add(self, name: str, *, unique: bool = False, read_only: bool = False) -> None:
        if name in self.properties:
            self.properties[name]["hasUniqueValue"] |= unique
            return
        self.properties[name] = property_json(name, unique=unique, read_only=read_only)

    @property
    def unique(self) -> set[str]:
        return {n for n, p in self.properties.items() if p["hasUniqueValue"]} | {"hs_object_id"}

    def schema_json(self) -> dict[str, Any]:
        """The custom object as the schemas API describes it."""
        stamp = now_iso()
        return {
            "id": self.type_id.split("-", 1)[1],
            "objectTypeId": self.type_id,
            "fullyQualifiedName": self.name,
            "name": self.short_name or self.name,
            "labels": {"singular": self.singular, "plural": f"{self.singular}s"},
            "requiredProperties": list(self.required),
            "searchableProperties": [],
            "primaryDisplayProperty": self.required[0] if self.required else None,
            "properties": [p for n, p in self.properties.items() if n not in READ_ONLY],
            "associations": [],
            "metaType": "PORTAL_SPECIFIC",
            "archived": False,
            "createdAt": stamp,
            "updatedAt": stamp,
        }


class ObjectTypes:
    """Every object type of the fake account, found by any name HubSpot accepts in a path."""

    def __init__(
        self,
        properties: Mapping[str, Iterable[str]] | None = None,
        unique: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.types: dict[str, ObjectType] = {}
        self._next_custom = 101
        for name, (type_id, singular) in STANDARD.items():
            kind = ObjectType(name, type_id, singular)
            for prop in READ_ONLY:
                kind.add(prop, read_only=True)
            for prop in _DEFAULTS[name]:
                kind.add(prop, unique=prop in _UNIQUE[name])
            self.types[name] = kind
        for name, props in (properties or {}).items():
            for prop in props:
                self.resolve_or_fail(name).add(prop)
        for name, props in (unique or {}).items():
            for prop in props:
                self.resolve_or_fail(name).add(prop, unique=True)

    def resolve(self, segment: str) -> ObjectType | None:
        """The type a path segment names (name, objectTypeId or fully qualified name)."""
        found = self.types.get(segment) or self.types.get(segment.casefold())
        if found is not None:
            return found
        return next((t for t in self.types.values() if t.type_id == segment), None)

    def resolve_or_fail(self, segment: str) -> ObjectType:
        found = self.resolve(segment)
        if found is None:
            raise KeyError(f"the HubSpot fake has no object type {segment!r}")
        return found

    def add_custom(
        self,
        name: str,
        properties: Iterable[str] = (),
        *,
        unique: Iterable[str] = (),
        required: Iterable[str] = (),
    ) -> ObjectType:
        """Define a custom object (as ``POST /crm/v3/schemas`` would); its fully qualified
        name is ``p<portal>_<name>`` and its objectTypeId ``2-<n>``."""
        kind = ObjectType(
            f"p{PORTAL_ID}_{name}",
            f"2-{self._next_custom}",
            name.replace("_", " ").capitalize(),
            custom=True,
            short_name=name,
            required=list(required),
        )
        self._next_custom += 1
        for prop in READ_ONLY:
            kind.add(prop, read_only=True)
        unique_set = set(unique)
        for prop in [*properties, *unique_set]:
            kind.add(prop, unique=prop in unique_set)
        self.types[kind.name] = kind
        return kind

    def custom(self) -> list[ObjectType]:
        return [t for t in self.types.values() if t.custom]
