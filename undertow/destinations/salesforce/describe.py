"""``undertow validate`` against the org's own metadata: the sObject describe call.

``GET /sobjects/{object}/describe`` lists every field with the properties Salesforce
enforces on writes; :func:`sync_problems` turns them into the problems a sync would hit at
run time, before anything is sent:

* an object the org does not have (with the closest names from ``GET /sobjects``);
* a mapped field the object does not have (did-you-mean), or one the integration user
  cannot write (not createable / not updateable);
* a required field (createable, not nillable, not defaulted on create) that an insert or
  upsert does not map: every new record would be rejected ``REQUIRED_FIELD_MISSING``;
* a ``match`` field missing, or not usable to find a record: upsert needs an External ID
  field (``externalId``) or one Salesforce marks ``idLookup``; update and delete take
  ``Id`` or such a field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from undertow.destinations.base import Operation
from undertow.errors import did_you_mean

DESCRIBE_DOC = (
    "https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/"
    "dome_sobject_describe.htm"
)
FIELD_PROPERTIES_DOC = (
    "https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/"
    "sforce_api_calls_describesobjects_describesobjectresult.htm"
)
"""What ``createable``, ``nillable``, ``defaultedOnCreate``, ``externalId`` and ``idLookup``
mean (idLookup: "can be used to specify a record in an upsert call")."""


@dataclass(frozen=True)
class FieldInfo:
    name: str
    type: str
    nillable: bool
    createable: bool
    updateable: bool
    defaulted: bool
    external_id: bool
    id_lookup: bool

    @property
    def required(self) -> bool:
        return self.createable and not self.nillable and not self.defaulted

    @property
    def identifies(self) -> bool:
        """True when upsert, update and delete can find a record by this field."""
        return self.external_id or self.id_lookup


@dataclass(frozen=True)
class Describe:
    name: str
    fields: dict[str, FieldInfo]
    """Fields by casefolded API name (Salesforce API names are case-insensitive)."""

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Describe:
        fields: dict[str, FieldInfo] = {}
        for item in body.get("fields") or []:
            if not isinstance(item, dict) or not item.get("name"):
                continue
            info = FieldInfo(
                name=str(item["name"]),
                type=str(item.get("type", "string")),
                nillable=bool(item.get("nillable", True)),
                createable=bool(item.get("createable", False)),
                updateable=bool(item.get("updateable", False)),
                defaulted=bool(item.get("defaultedOnCreate", False)),
                external_id=bool(item.get("externalId", False)),
                id_lookup=bool(item.get("idLookup", False)),
            )
            fields[info.name.casefold()] = info
        return cls(str(body.get("name", "")), fields)

    def field(self, name: str) -> FieldInfo | None:
        return self.fields.get(name.casefold())

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields.values()]


def unknown_object(sync: str, name: str, known: Iterable[str]) -> str:
    return (
        f"sync {sync!r}: the Salesforce org has no sObject {name!r}"
        + _closest(name, known)
        + " (custom objects end in __c; `object:` takes the API name, not the label)"
    )


def _closest(name: str, known: Iterable[str]) -> str:
    hint = did_you_mean(name, list(known))
    return f"; {hint}" if hint else ""


def sync_problems(
    describe: Describe,
    *,
    sync: str,
    match: Mapping[str, str],
    fields: list[str],
    operations: Iterable[Operation],
) -> list[str]:
    """What the sync would run into at run time (see the module docstring)."""
    ops = set(operations)
    where = f"sync {sync!r}: {describe.name}"
    creates = bool(ops & {Operation.INSERT, Operation.UPSERT})
    updates = bool(ops & {Operation.UPDATE, Operation.UPSERT})
    problems: list[str] = []
    mapped: set[str] = set()
    for name in fields:
        info = describe.field(name)
        if info is None:
            problems.append(
                f"{where} has no field {name!r}"
                + _closest(name, describe.names)
                + " (Salesforce refuses the whole request for a field the object does not "
                "have; custom fields end in __c)"
            )
            continue
        mapped.add(info.name)
        if creates and not info.createable and info.name != "Id":
            problems.append(
                f"{where}: field {info.name!r} cannot be set on new records (it is not "
                "createable: a formula, a system field, or read-only for the integration user)"
            )
        elif updates and not info.updateable and not creates:
            problems.append(
                f"{where}: field {info.name!r} cannot be updated (not updateable for the "
                "integration user)"
            )
    for name in match:
        info = describe.field(name)
        if info is None:
            problems.append(
                f"{where}: the match field {name!r} is not a field of {describe.name}"
                + _closest(name, describe.names)
            )
            continue
        mapped.add(info.name)
        if info.name != "Id" and not info.identifies:
            problems.append(
                f"{where}: the match field {info.name!r} is not marked as an External ID, so "
                "Salesforce cannot find records by it; in Setup > Object Manager > "
                f"{describe.name} > Fields, edit {info.name} and tick External ID (or match "
                "on an External ID field)"
            )
        if Operation.UPSERT in ops and info.name == "Id":
            problems.append(
                f"{where}: upsert needs an External ID field in `match:`, not Id (upsert "
                "creates records, which have no Id yet); use mode: update to write by Id"
            )
    if creates:
        missing = [f.name for f in describe.fields.values() if f.required and f.name not in mapped]
        if missing:
            problems.append(
                f"{where}: required field(s) {', '.join(missing)} not mapped; Salesforce "
                "rejects every new record without them (REQUIRED_FIELD_MISSING)"
            )
    return problems
