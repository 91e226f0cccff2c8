"""Pipedrive fields: a mapped record as a Pipedrive v2 body, custom fields by name or code.

A :class:`FieldBook` holds one object's fields as Pipedrive lists them
(``GET /api/v2/personFields``: ``field_code``, ``field_name``, ``field_type``,
``is_custom_field``, ``options``). :func:`shape_record` turns a mapped record into the body
of ``POST``/``PATCH /api/v2/{persons|organizations}``:

* ``email`` / ``phone`` (text or a list of text) become ``emails`` / ``phones``
  (``[{"value", "primary", "label"}]``, the first one primary);
* the v2 body's own keys (``name``, ``owner_id``, ``org_id``, ``visible_to``...) as they are;
* any other field is a custom field, named by its code (40 hex characters) or its name
  (caseless), sent under ``custom_fields``; an option field (``enum``, ``set``) takes option
  labels or ids and sends ids. A field or option Pipedrive does not have rejects the record
  before anything is sent, with a did-you-mean.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from undertow.destinations.kit import Reject
from undertow.errors import did_you_mean

BODY_KEYS = {
    "persons": frozenset(
        {
            "name",
            "owner_id",
            "org_id",
            "emails",
            "phones",
            "visible_to",
            "label_ids",
            "marketing_status",
            "add_time",
            "update_time",
        }
    ),
    "organizations": frozenset(
        {"name", "owner_id", "address", "visible_to", "label_ids", "add_time", "update_time"}
    ),
}
"""The v2 create/update body's own keys (Pipedrive API v2 AddPersonRequest and
AddOrganizationRequest)."""
CONTACTS = {"persons": {"email": "emails", "phone": "phones"}, "organizations": {}}
SEARCHABLE = {
    "persons": {"email": "email", "phone": "phone", "name": "name"},
    "organizations": {"name": "name", "address": "address"},
}
"""Match field -> the search endpoint's ``fields`` value."""
SEARCHABLE_CUSTOM_TYPES = frozenset({"varchar", "varchar_auto", "text", "double", "int", "phone"})


class FieldBook:
    """One object's fields in a Pipedrive company."""

    def __init__(self, object_: str, rows: Iterable[dict[str, Any]]) -> None:
        self.object = object_
        self.rows = [r for r in rows if r.get("field_code")]
        self.by_code = {str(r["field_code"]): r for r in self.rows}
        self.by_name: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows:
            if row.get("is_custom_field"):
                self.by_name.setdefault(str(row.get("field_name", "")).casefold(), []).append(row)

    @property
    def singular(self) -> str:
        return self.object[:-1]

    def custom(self, field: str) -> dict[str, Any] | Reject:
        """The custom field a mapped name means (its code or its name), or why none."""
        row = self.by_code.get(field)
        if row is not None and row.get("is_custom_field"):
            return row
        named = self.by_name.get(field.casefold(), [])
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            codes = ", ".join(str(r["field_code"]) for r in named)
            return Reject(
                f"{len(named)} Pipedrive {self.singular} fields are named {field!r}; map the "
                f"one you mean by its field code ({codes})"
            )
        known = [*BODY_KEYS[self.object], *CONTACTS[self.object]]
        known += [str(r.get("field_name")) for r in self.rows if r.get("is_custom_field")]
        hint = did_you_mean(field, known)
        return Reject(
            f"Pipedrive has no {self.singular} field {field!r}"
            + (f"; {hint}" if hint else "")
            + " (create it in Pipedrive, or fix the mapping)"
        )

    def check_field(self, field: str) -> str | None:
        """Why a mapped field cannot be written (None when it can)."""
        if field in BODY_KEYS[self.object] or field in CONTACTS[self.object]:
            return None
        found = self.custom(field)
        return found.reason if isinstance(found, Reject) else None

    def search_field(self, field: str) -> str | Reject:
        """The search endpoint's ``fields`` value for a match field, or why it cannot match."""
        own = SEARCHABLE[self.object].get(field)
        if own is not None:
            return own
        found = self.custom(field)
        if isinstance(found, Reject):
            return found
        if found.get("field_type") not in SEARCHABLE_CUSTOM_TYPES:
            return Reject(
                f"cannot match {self.object} on {field!r}: Pipedrive searches custom fields of "
                f"type text, number or phone, not {found.get('field_type')}"
            )
        return "custom_fields"

    def option_value(self, row: dict[str, Any], value: Any) -> Any:
        """An option field's value as option ids (labels caseless), or a Reject."""
        options = [o for o in row.get("options") or [] if isinstance(o, dict)]
        by_label = {str(o.get("label", "")).casefold(): o.get("id") for o in options}
        ids = {o.get("id") for o in options}

        def one(item: Any) -> Any:
            if isinstance(item, int) and not isinstance(item, bool) and item in ids:
                return item
            found = by_label.get(str(item).casefold())
            if found is None:
                labels = ", ".join(str(o.get("label")) for o in options)
                return Reject(
                    f"Pipedrive field {row.get('field_name')!r} has no option {item!r} "
                    f"(its options: {labels})"
                )
            return found

        if row.get("field_type") == "set":
            chosen = [one(v) for v in (value if isinstance(value, list) else [value])]
            bad = next((c for c in chosen if isinstance(c, Reject)), None)
            return bad if bad is not None else chosen
        return one(value)


def _contacts(value: Any) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    out: list[dict[str, Any]] = []
    for item in items:
        if item is None or item == "":
            continue
        if isinstance(item, dict):
            out.append(item)
        else:
            out.append({"value": str(item), "primary": not out, "label": "work"})
    return out


def shape_record(
    book: FieldBook, record: dict[str, Any], match_field: str | None, key: Any
) -> dict[str, Any] | Reject:
    """A mapped record as the v2 body (see the module docstring), or why it cannot be sent."""
    body: dict[str, Any] = {}
    custom: dict[str, Any] = {}
    contacts = CONTACTS[book.object]
    for field, value in record.items():
        if field in contacts:
            body[contacts[field]] = _contacts(value)
        elif field in BODY_KEYS[book.object]:
            body[field] = value
        else:
            row = book.custom(field)
            if isinstance(row, Reject):
                return row
            if value is not None and row.get("field_type") in ("enum", "set"):
                value = book.option_value(row, value)
                if isinstance(value, Reject):
                    return value
            custom[str(row["field_code"])] = value
    if match_field is not None and key is not None:
        if match_field in contacts:
            listed = body.setdefault(contacts[match_field], [])
            if not any(str(c.get("value", "")).casefold() == str(key).casefold() for c in listed):
                listed.insert(0, {"value": str(key), "primary": not listed, "label": "work"})
        elif match_field in BODY_KEYS[book.object]:
            body.setdefault(match_field, key)
        else:
            row = book.custom(match_field)
            if not isinstance(row, Reject):
                custom.setdefault(str(row["field_code"]), key)
    if custom:
        body["custom_fields"] = custom
    return body
