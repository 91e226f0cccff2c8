"""Associations between HubSpot records, written after the records (v4 associations API).

A destination declares, per object, which mapped fields name another record::

    associations:
      deals:
        - {to: companies, field: company_domain, id_property: domain}
        - {to: contacts, field: buyer_email, id_property: email, type: 3}

``field`` is a field of the sync's ``mappings`` (so a change of the value is a changed row the
diff finds); it is not sent as a property. Once a batch's records are written, the value is
resolved to the other record's HubSpot id (``POST /crm/v3/objects/{to}/batch/read`` with
``idProperty``; none when ``id_property`` is ``hs_object_id``) and the pair is associated:

    no type -> POST /crm/v4/associations/{from}/{to}/batch/associate/default (unlabeled)
    type    -> POST /crm/v4/associations/{from}/{to}/batch/create  {types: [{category, id}]}

A row whose other record HubSpot does not have is *rejected* ("written, not associated"): it
is not in the snapshot, so the next run writes it again (an idempotent upsert) and retries the
association, e.g. once the companies sync has run. Associations are added; with ``replace``
the record's other associations to ``to`` records are then removed (a v4 ``batch/read`` of
them, then ``batch/archive``), so a deal that moves to another company leaves the old one.

https://developers.hubspot.com/docs/api/crm/associations
https://developers.hubspot.com/docs/api-reference/crm-associations-v4/batch/post-crm-v4-associations-fromObjectType-toObjectType-batch-associate-default
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from undertow.destinations.base import Batch, BatchResult
from undertow.destinations.hubspot_properties import (
    OBJECT_NAME,
    STANDARD_OBJECTS,
    Properties,
    shape_value,
    unknown_type,
)
from undertow.destinations.kit import Item, parse_json
from undertow.errors import FatalDeliveryError
from undertow.redact import trim

if TYPE_CHECKING:
    from undertow.destinations.hubspot import HubSpotDestination

ASSOCIATIONS_DOC = "https://developers.hubspot.com/docs/api/crm/associations"
OK = frozenset({200, 201, 207})


class AssociationRule(BaseModel):
    """One association a record of the object gets: to which object, by which mapped field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    to: str
    """The other object: ``contacts``, ``companies``, ``deals``, a custom object's fully
    qualified name or objectTypeId."""
    field: str = Field(min_length=1)
    """The mapped field holding the other record's ``id_property`` value (not sent as a
    property)."""
    id_property: str = "hs_object_id"
    """A unique-value property of ``to`` (``email``, ``domain``); ``hs_object_id``: the field
    holds HubSpot's record id."""
    type: int | None = Field(default=None, ge=1)
    """An association type id (a label); None: HubSpot's default (unlabeled) association,
    which exists between HubSpot's own objects only."""
    category: Literal["HUBSPOT_DEFINED", "USER_DEFINED", "INTEGRATOR_DEFINED"] = "HUBSPOT_DEFINED"
    """The type id's category (USER_DEFINED for a label made in the account)."""
    replace: bool = False
    """True: once associated, a record keeps no other association to ``to`` records (the
    others are read, then removed); a row whose field is empty is left as it is."""

    @field_validator("to")
    @classmethod
    def _object_name(cls, value: str) -> str:
        if not OBJECT_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a HubSpot object: use contacts, companies, deals, or a "
                "custom object's fully qualified name (p<portal id>_<name>) or objectTypeId"
            )
        return value


def check_rules(rules: Mapping[str, list[AssociationRule]]) -> None:
    """Refuse rules HubSpot cannot carry out (raised as config errors by pydantic)."""
    for source, found in rules.items():
        if not OBJECT_NAME.match(source):
            raise ValueError(f"associations: {source!r} is not a HubSpot object")
        fields = [r.field for r in found]
        for rule in found:
            if fields.count(rule.field) > 1:
                raise ValueError(f"associations.{source}: field {rule.field!r} is used twice")
            custom = source not in STANDARD_OBJECTS or rule.to not in STANDARD_OBJECTS
            if custom and rule.type is None:
                raise ValueError(
                    f"associations.{source}: the association to {rule.to} needs `type:` (an "
                    "association type id): HubSpot's default association exists only between "
                    f"its own objects; list the types with GET /crm/v4/associations/{source}/"
                    f"{rule.to}/labels ({ASSOCIATIONS_DOC})"
                )


def pending(rule: AssociationRule, item: Item) -> str | None:
    """The value of ``item`` naming the other record (None: no association for it)."""
    value = item.record.get(rule.field)
    return None if value in (None, "") else shape_value(value)


async def associate(
    dest: HubSpotDestination,
    batch: Batch,
    items: list[Item],
    ids: Mapping[int, str],
    result: BatchResult,
) -> None:
    """Associate the written records of a batch with the records their fields name."""
    source = str(batch.object)
    for rule in dest.config.associations.get(source, []):
        wanted: dict[int, tuple[str, str]] = {}
        for item in items:
            value = pending(rule, item)
            if value is None or item.index in result.rejected or item.index in result.failed:
                continue
            if item.index not in ids:
                result.failed[item.index] = (
                    f"written, but HubSpot's answer gave no id to associate it to {rule.to} "
                    "with (sent again by the next run)"
                )
                continue
            wanted[item.index] = (ids[item.index], value)
        if not wanted:
            continue
        targets = await _resolve(dest, batch.sync, rule, {v for _, v in wanted.values()}, result)
        if targets is None:  # not confirmed: the rows are sent again by the next run
            for index in wanted:
                result.failed[index] = (
                    f"written, but the {rule.to} records could not be looked up (sent again by "
                    "the next run)"
                )
            continue
        inputs: list[dict[str, Any]] = []
        owners: list[int] = []
        for index, (from_id, value) in wanted.items():
            to_id = targets.get(value.casefold())
            if to_id is None:
                result.rejected[index] = (
                    f"written, but not associated: HubSpot has no {rule.to} record whose "
                    f"{rule.id_property} is the row's {rule.field} (the next run tries again; "
                    f"sync the {rule.to} first, e.g. with `after:`)"
                )
                continue
            body: dict[str, Any] = {"from": {"id": from_id}, "to": {"id": to_id}}
            if rule.type is not None:
                body["types"] = [
                    {"associationCategory": rule.category, "associationTypeId": rule.type}
                ]
            inputs.append(body)
            owners.append(index)
        if inputs:
            await _create(dest, batch.sync, source, rule, inputs, owners, result)
        if inputs and rule.replace:
            kept = [
                (index, body_in)
                for index, body_in in zip(owners, inputs, strict=True)
                if index not in result.rejected and index not in result.failed
            ]
            await _drop_stale(dest, source, rule, kept, result)


async def _resolve(
    dest: HubSpotDestination,
    sync: str,
    rule: AssociationRule,
    values: set[str],
    result: BatchResult,
) -> dict[str, str] | None:
    """value (casefolded) -> HubSpot id of the ``to`` records; None when not confirmed."""
    if rule.id_property == "hs_object_id":
        return {v.casefold(): v for v in values}
    read = {
        "idProperty": rule.id_property,
        "properties": [rule.id_property],
        "inputs": [{"id": v} for v in sorted(values)],
    }
    response = await dest.send(
        "POST", f"/crm/v3/objects/{rule.to}/batch/read", json=read, expect=OK
    )
    body = parse_json(response)
    if unknown_type(response, body):
        raise _no_such_object(sync, rule.to, body)
    if response.status not in OK or not isinstance(body, dict):
        return None
    found: dict[str, str] = {}
    for record in body.get("results") or []:
        if isinstance(record, dict) and record.get("id") is not None:
            value = (record.get("properties") or {}).get(rule.id_property)
            if value is not None:
                found[str(value).casefold()] = str(record["id"])
    return found


async def _create(
    dest: HubSpotDestination,
    sync: str,
    source: str,
    rule: AssociationRule,
    inputs: list[dict[str, Any]],
    owners: list[int],
    result: BatchResult,
) -> None:
    kind = "batch/create" if rule.type is not None else "batch/associate/default"
    response = await dest.send(
        "POST",
        f"/crm/v4/associations/{source}/{rule.to}/{kind}",
        json={"inputs": inputs},
        expect=OK,
    )
    body = parse_json(response)
    if unknown_type(response, body):
        raise _no_such_object(sync, f"{source} or {rule.to}", body)
    if 400 <= response.status < 500:
        reason = _reason(body, f"HubSpot refused the associations: {response.describe()}")
        for index in owners:
            result.rejected[index] = f"written, but not associated: {reason}"
        return
    if response.status not in OK or not isinstance(body, dict):
        for index in owners:
            result.failed[index] = (
                f"written, but the association to {rule.to} is not confirmed (sent again by "
                f"the next run): {response.describe()}"
            )
        return
    by_id: dict[str, list[int]] = {}
    for index, body_in in zip(owners, inputs, strict=True):
        for side in ("from", "to"):
            by_id.setdefault(str(body_in[side]["id"]), []).append(index)
    done = {
        (str(r.get("from", {}).get("id")), str(r.get("to", {}).get("id")))
        for r in body.get("results") or []
        if isinstance(r, dict)
    }
    unnamed: list[str] = []
    for error in body.get("errors") or []:
        if not isinstance(error, dict):
            continue
        context = error.get("context") if isinstance(error.get("context"), dict) else {}
        named = {i for v in (context or {}).get("ids") or [] for i in by_id.get(str(v), [])}
        reason = f"written, but not associated: {_reason(error, 'HubSpot refused it')}"
        for index in named:
            result.rejected[index] = reason
        if not named:
            unnamed.append(reason)
    if unnamed:
        for index, body_in in zip(owners, inputs, strict=True):
            pair = (str(body_in["from"]["id"]), str(body_in["to"]["id"]))
            if index not in result.rejected and pair not in done:
                result.failed[index] = "; ".join(unnamed) + " (sent again by the next run)"


async def _drop_stale(
    dest: HubSpotDestination,
    source: str,
    rule: AssociationRule,
    kept: list[tuple[int, dict[str, Any]]],
    result: BatchResult,
) -> None:
    """Remove each record's associations to ``to`` records other than the one it keeps."""
    if not kept:
        return
    path = f"/crm/v4/associations/{source}/{rule.to}"
    wanted = {str(b["from"]["id"]): str(b["to"]["id"]) for _, b in kept}
    read = {"inputs": [{"id": from_id} for from_id in wanted]}
    response = await dest.send("POST", f"{path}/batch/read", json=read, expect=OK)
    body = parse_json(response)
    stale: dict[str, list[str]] = {}
    if response.status in OK and isinstance(body, dict):
        for found in body.get("results") or []:
            from_id = str((found.get("from") or {}).get("id")) if isinstance(found, dict) else ""
            for to in found.get("to") or [] if from_id in wanted else []:
                to_id = str(to.get("toObjectId")) if isinstance(to, dict) else ""
                if to_id and to_id != wanted[from_id]:
                    stale.setdefault(from_id, []).append(to_id)
        if not stale:
            return
        archive = {
            "inputs": [
                {"from": {"id": f}, "to": [{"id": t} for t in ids]} for f, ids in stale.items()
            ]
        }
        response = await dest.send(
            "POST", f"{path}/batch/archive", json=archive, expect=frozenset({200, 204})
        )
        if 200 <= response.status < 300:
            return
    for index, body_in in kept:
        if not stale or str(body_in["from"]["id"]) in stale:
            result.failed[index] = (
                f"written and associated, but its other associations to {rule.to} were not "
                f"removed (the next run tries again): {response.describe()}"
            )


def problems(
    sync: str, source: str, rule: AssociationRule, target: Properties | None, labels: Any
) -> list[str]:
    """What ``validate`` finds wrong with one association rule of a sync."""
    where = f"sync {sync!r}: association of {source} to {rule.to} (field {rule.field!r})"
    if target is None:
        return [f"{where}: HubSpot has no object type {rule.to!r}"]
    out: list[str] = []
    if rule.id_property != "hs_object_id":
        missing = target.unknown(rule.id_property)
        if missing is not None:
            out.append(f"{where}: id_property: {missing}")
        elif not target.unique(rule.id_property):
            out.append(
                f"{where}: id_property {rule.id_property!r} does not have unique values, so "
                f"HubSpot cannot find the {rule.to} record by it"
            )
    if rule.type is not None and labels is not None:
        known = [
            (t.get("category"), t.get("typeId"))
            for t in (labels.get("results") or [] if isinstance(labels, dict) else [])
            if isinstance(t, dict)
        ]
        if (rule.category, rule.type) not in known:
            listed = ", ".join(f"{c} {i}" for c, i in known) or "none"
            out.append(
                f"{where}: HubSpot has no association type {rule.category} {rule.type} from "
                f"{source} to {rule.to} (it has: {listed})"
            )
    return out


def _reason(body: Any, fallback: str) -> str:
    if isinstance(body, dict) and body.get("message"):
        category = body.get("category") or "ERROR"
        return trim(f"HubSpot {category}: {body['message']}", 500)
    return fallback


def _no_such_object(sync: str, name: str, body: Any) -> FatalDeliveryError:
    from undertow.destinations.hubspot import no_such_object

    return no_such_object(sync, name, _reason(body, "Unable to infer object type"))
