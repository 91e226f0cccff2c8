"""Associations between records in the HubSpot fake (:mod:`undertow.testing.hubspot`), v4 API.

* ``POST /crm/v4/associations/{from}/{to}/batch/associate/default``: inputs
  ``{"from": {"id"}, "to": {"id"}}``, the default (unlabeled) association, which HubSpot has
  only between its own objects (a custom object needs a type id);
* ``POST /crm/v4/associations/{from}/{to}/batch/create``: inputs with
  ``types: [{"associationCategory", "associationTypeId"}]``;
* ``GET /crm/v4/associations/{from}/{to}/labels``: the association types between two objects;
* ``POST /crm/v4/associations/{from}/{to}/batch/read``: inputs ``{"id"}``, each record's
  associations ``{"from": {"id"}, "to": [{"toObjectId", "associationTypes"}]}``;
* ``POST /crm/v4/associations/{from}/{to}/batch/archive``: inputs
  ``{"from": {"id"}, "to": [{"id"}]}``, every association of those pairs removed; 204.

Both writes answer 200 with ``results`` (each with its ``associationSpec``, ``from`` and
``to``), or 207 with ``errors`` for the inputs that name a record the account does not have
(category ``OBJECT_NOT_FOUND``, ``context.ids``); an object type in the path the account lacks
is a 400, as for the objects API. Associating the same pair twice keeps one association.
The number of inputs a request may hold is not stated in HubSpot's docs, so none is enforced.

https://developers.hubspot.com/docs/api-reference/crm-associations-v4/batch/post-crm-v4-associations-fromObjectType-toObjectType-batch-associate-default
https://developers.hubspot.com/docs/api/crm/associations
"""

from __future__ import annotations

from typing import Any

from undertow.testing.fakes import now_iso
from undertow.testing.hubspot_schemas import ObjectType

DEFAULT_TYPES = {
    ("contacts", "companies"): 279,
    ("companies", "contacts"): 280,
    ("deals", "contacts"): 3,
    ("contacts", "deals"): 4,
    ("deals", "companies"): 341,
    ("companies", "deals"): 342,
}
"""HubSpot's unlabeled association type ids between its objects (the ones its docs and code
examples use; a portal's own labels get other ids)."""

CUSTOM_TYPE_FIRST = 101
"""The fake's USER_DEFINED type ids between a custom object and another object start here."""

Association = tuple[str, str, str, str, str, int]
"""(from type, from id, to type, to id, category, type id)."""


class Associations:
    """Every association of the fake account."""

    def __init__(self) -> None:
        self.pairs: set[Association] = set()

    def of(self, from_type: str, from_id: str, to_type: str | None = None) -> list[str]:
        """Ids of the records ``from_id`` is associated with (of ``to_type``)."""
        return sorted(
            {
                a[3]
                for a in self.pairs
                if a[0] == from_type and a[1] == from_id and to_type in (None, a[2])
            }
        )

    def clear(self) -> None:
        self.pairs.clear()


def answer(
    associations: Associations,
    stores: dict[str, Any],
    source: ObjectType,
    target: ObjectType,
    method: str,
    path: str,
    body: Any,
) -> tuple[int, Any]:
    """(status, body) of HubSpot's answer to one request of the v4 associations API."""
    if (method, path) == ("GET", "labels"):
        return 200, {"results": labels(source, target)}
    if method == "POST" and path in ("batch/associate/default", "batch/create"):
        default = path.endswith("default")
        return write(associations, stores, source, target, body, default=default)
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if method == "POST" and path in ("batch/read", "batch/archive") and isinstance(inputs, list):
        if path == "batch/archive":
            for item in inputs:
                gone = {str(t.get("id")) for t in item.get("to") or [] if isinstance(t, dict)}
                from_id = str((item.get("from") or {}).get("id"))
                associations.pairs = {
                    a
                    for a in associations.pairs
                    if not (a[0] == source.name and a[1] == from_id and a[2] == target.name)
                    or a[3] not in gone
                }
            return 204, None
        started = now_iso()
        results = []
        for item in inputs:
            from_id = str(item.get("id") if isinstance(item, dict) else item)
            to = [
                {
                    "toObjectId": int(to_id),
                    "associationTypes": [
                        {"category": a[4], "typeId": a[5], "label": None}
                        for a in sorted(associations.pairs)
                        if a[:4] == (source.name, from_id, target.name, to_id)
                    ],
                }
                for to_id in associations.of(source.name, from_id, target.name)
            ]
            results.append({"from": {"id": from_id}, "to": to})
        done = {"status": "COMPLETE", "results": results, "startedAt": started}
        return 200, {**done, "completedAt": now_iso()}
    return 404, {"category": "NOT_FOUND", "message": f"No route {method} {path}"}


def labels(source: ObjectType, target: ObjectType) -> list[dict[str, Any]]:
    """The association types from ``source`` to ``target`` (``GET .../labels``)."""
    found = DEFAULT_TYPES.get((source.name, target.name))
    if found is not None:
        return [{"category": "HUBSPOT_DEFINED", "typeId": found, "label": None}]
    if source.custom or target.custom:
        return [{"category": "USER_DEFINED", "typeId": CUSTOM_TYPE_FIRST, "label": None}]
    return []


def types_problem(
    source: ObjectType, target: ObjectType, types: Any, *, default: bool
) -> str | None:
    """Why an input's association types cannot be written (None when they can)."""
    known = {(t["category"], t["typeId"]) for t in labels(source, target)}
    if default:
        if not any(c == "HUBSPOT_DEFINED" for c, _ in known):
            return (
                f"There is no default association type from {source.name} to {target.name}; "
                "create associations with an association type id (batch/create)"
            )
        return None
    if not isinstance(types, list) or not types:
        return "types is required: a list of {associationCategory, associationTypeId}"
    for spec in types:
        pair = (
            (spec.get("associationCategory"), spec.get("associationTypeId"))
            if isinstance(spec, dict)
            else (None, None)
        )
        if pair not in known:
            return (
                f"Invalid association type {pair[0]}/{pair[1]} from {source.name} to {target.name}"
            )
    return None


def write(
    associations: Associations,
    stores: dict[str, Any],
    source: ObjectType,
    target: ObjectType,
    body: Any,
    *,
    default: bool,
) -> tuple[int, dict[str, Any]]:
    """Apply a batch of association inputs; (status, body) of HubSpot's answer."""
    started = now_iso()
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        return 400, {"category": "VALIDATION_ERROR", "message": "inputs must be a list of objects"}
    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for item in inputs:
        from_id = str((item.get("from") or {}).get("id"))
        to_id = str((item.get("to") or {}).get("id"))
        problem = types_problem(source, target, item.get("types"), default=default)
        if problem is not None:
            return 400, {"category": "VALIDATION_ERROR", "message": problem}
        missing = [
            (kind, object_id)
            for kind, object_id in ((source, from_id), (target, to_id))
            if object_id not in stores[kind.name]
        ]
        if missing:
            kind, object_id = missing[0]
            errors.append(
                {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": f"No {kind.singular.lower()} with id {object_id} exists",
                    "context": {"ids": [object_id], "objectType": [kind.name]},
                    "errors": [],
                }
            )
            continue
        specs = (
            [{"category": c["category"], "typeId": c["typeId"]} for c in labels(source, target)]
            if default
            else [
                {"category": t["associationCategory"], "typeId": t["associationTypeId"]}
                for t in item["types"]
            ]
        )
        for spec in specs[:1] if default else specs:
            associations.pairs.add(
                (source.name, from_id, target.name, to_id, spec["category"], spec["typeId"])
            )
            results.append(
                {
                    "from": {"id": from_id},
                    "to": {"id": to_id},
                    "associationSpec": {
                        "associationCategory": spec["category"],
                        "associationTypeId": spec["typeId"],
                    },
                }
            )
    answer: dict[str, Any] = {
        "status": "COMPLETE",
        "results": results,
        "requestedAt": started,
        "startedAt": started,
        "completedAt": now_iso(),
    }
    if errors:
        answer.update(errors=errors, numErrors=len(errors))
        return 207, answer
    return 200, answer
