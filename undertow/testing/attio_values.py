"""Attio attribute types for the fake (undertow.testing.attio): definitions and values.

Each attribute type takes a value the way Attio documents its write formats (a bare value
or the object form: ``"a@x.io"`` or ``{"email_address": "a@x.io"}``) and is stored in the
form Attio reads back (with ``active_from``, ``attribute_type``...). A value that does not
fit its type is a 400 ``validation_type`` naming the attribute.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from undertow.testing.fakes import now_iso

WORKSPACE_ID = "14beef7a-99f7-4534-a87e-70b564330a4c"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Attribute:
    slug: str
    type: str
    title: str = ""
    unique: bool = False
    multiselect: bool = False
    writable: bool = True
    system: bool = False
    options: tuple[str, ...] = ()

    def public(self, object_id: str) -> dict[str, Any]:
        return {
            "id": {
                "workspace_id": WORKSPACE_ID,
                "object_id": object_id,
                "attribute_id": str(uuid.uuid5(uuid.NAMESPACE_URL, object_id + self.slug)),
            },
            "title": self.title or self.slug.replace("_", " ").title(),
            "description": None,
            "api_slug": self.slug,
            "type": self.type,
            "is_system_attribute": self.system,
            "is_writable": self.writable,
            "is_required": False,
            "is_unique": self.unique,
            "is_multiselect": self.multiselect,
            "is_default_value_enabled": False,
            "is_archived": False,
            "default_value": None,
            "relationship": None,
            "created_at": "2022-11-21T13:22:49.061000000Z",
            "config": {"currency": {"default_currency_code": None, "display_type": None}},
        }


SYSTEM = (
    Attribute("record_id", "text", "Record ID", unique=True, writable=False, system=True),
    Attribute("created_at", "timestamp", writable=False, system=True),
)
"""What every object has, custom ones included."""

STANDARD: dict[str, tuple[Attribute, ...]] = {
    "people": (
        Attribute("name", "personal-name", "Name", system=True),
        Attribute("email_addresses", "email-address", unique=True, multiselect=True, system=True),
        Attribute("job_title", "text", system=True),
        Attribute("description", "text", system=True),
    ),
    "companies": (
        Attribute("name", "text", system=True),
        Attribute("domains", "domain", unique=True, multiselect=True, system=True),
        Attribute("description", "text", system=True),
    ),
}
DEMO_ATTRIBUTES: dict[str, tuple[Attribute, ...]] = {
    "people": (
        Attribute("plan", "select", options=("free", "starter", "pro", "enterprise")),
        Attribute("seats", "number"),
        Attribute("mrr", "number"),
        Attribute("country", "text"),
        Attribute("signup_date", "date"),
        Attribute("external_id", "text", unique=True),
    ),
    "companies": (Attribute("arr", "number"),),
}


class Refused(Exception):
    """A request Attio refuses: its status, code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def primary(attribute: Attribute, value: dict[str, Any]) -> Any:
    """A stored value's plain form (what a filter compares, what ``flat`` shows)."""
    kind = attribute.type
    if kind == "email-address":
        return value["email_address"]
    if kind == "domain":
        return value["domain"]
    if kind == "personal-name":
        return value["full_name"]
    if kind == "select":
        return value["option"]["title"]
    return value["value"]


def parse_values(attributes: dict[str, Attribute], body: Any) -> dict[str, list[dict[str, Any]]]:
    """The body's values, parsed per attribute type (a problem refuses the request)."""
    data = body.get("data") if isinstance(body, dict) else None
    raw = data.get("values") if isinstance(data, dict) else None
    if not isinstance(raw, dict):
        raise Refused(
            400, "validation_type", 'Body payload validation error: "data.values" is required.'
        )
    parsed: dict[str, list[dict[str, Any]]] = {}
    for slug, given in raw.items():
        attribute = attributes.get(slug)
        if attribute is None:
            raise Refused(400, "value_not_found", f'Cannot find attribute with slug/ID "{slug}".')
        if not attribute.writable:
            raise Refused(400, "immutable_value", f'Attribute "{slug}" cannot be written to.')
        items = given if isinstance(given, list) else [given]
        if len(items) > 1 and not attribute.multiselect:
            raise Refused(
                400, "validation_type", f'Attribute with slug "{slug}" accepts only one value.'
            )
        parsed[slug] = [parse_value(attribute, item) for item in items if item is not None]
    return parsed


def parse_value(attribute: Attribute, given: Any) -> dict[str, Any]:
    kind, slug = attribute.type, attribute.slug
    stamp = {
        "active_from": now_iso(),
        "active_until": None,
        "attribute_type": kind,
        "created_by_actor": {"type": "api-token", "id": "undertow-fake"},
    }

    def bad(why: str) -> Refused:
        return Refused(
            400,
            "validation_type",
            f'Invalid value was passed to attribute with slug "{slug}": {why}.',
        )

    if kind == "email-address":
        text = given.get("email_address") if isinstance(given, dict) else given
        if not isinstance(text, str) or not _EMAIL.match(text):
            raise Refused(
                400,
                "validation_type",
                f'"{text}" is not a valid email address for attribute with slug "{slug}".',
            )
        local, _, domain = text.partition("@")
        return {
            **stamp,
            "original_email_address": text,
            "email_address": text.lower(),
            "email_domain": domain.lower(),
            "email_root_domain": domain.lower(),
            "email_local_specifier": local.lower(),
        }
    if kind == "domain":
        text = given.get("domain") if isinstance(given, dict) else given
        if not isinstance(text, str) or "." not in text or " " in text:
            raise bad("expected a domain such as acme.com")
        return {**stamp, "domain": text.lower(), "root_domain": text.lower()}
    if kind == "personal-name":
        if isinstance(given, str):
            given = {"full_name": given}
        if not isinstance(given, dict) or not any(
            given.get(k) for k in ("first_name", "last_name", "full_name")
        ):
            raise bad("expected an object with first_name, last_name and full_name")
        first, last = str(given.get("first_name") or ""), str(given.get("last_name") or "")
        full = str(given.get("full_name") or f"{first} {last}".strip())
        return {**stamp, "first_name": first, "last_name": last, "full_name": full}
    if kind == "select":
        title = given.get("option") if isinstance(given, dict) else given
        if title not in attribute.options:
            raise Refused(
                400,
                "value_not_found",
                f'Cannot find select option with title "{title}" for attribute "{slug}".',
            )
        return {
            **stamp,
            "option": {
                "id": {"option_id": str(uuid.uuid5(uuid.NAMESPACE_URL, slug + str(title)))},
                "title": title,
                "is_archived": False,
            },
        }
    value = given.get("value") if isinstance(given, dict) else given
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise bad("expected a number")
    if kind == "checkbox" and not isinstance(value, bool):
        raise bad("expected true or false")
    if kind in ("text", "date", "timestamp") and not isinstance(value, str):
        raise bad("expected text")
    if kind in ("date", "timestamp") and not _DATE.match(str(value)):
        raise bad("expected an ISO 8601 date")
    if kind == "date":
        value = str(value)[:10]
    return {**stamp, "value": value}


def norm(attribute: Attribute, value: Any) -> str:
    text = str(value)
    return text.casefold() if attribute.type in ("email-address", "domain") else text
