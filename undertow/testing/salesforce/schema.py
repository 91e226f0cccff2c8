"""The fake org's metadata: sObjects, their fields, and how Salesforce checks a value.

Each sObject is a :class:`SObject` with :class:`Field` entries carrying the properties the
describe call documents (``type``, ``length``, ``nillable``, ``createable``, ``updateable``,
``defaultedOnCreate``, ``externalId``, ``idLookup``, ``unique``, ``custom``). A field is
*required on create* when it is createable, not nillable and not defaulted on create (the
rule ``validate`` applies to Salesforce's own describe).

:func:`coerce` reads one value as Salesforce does: a JSON value of the wrong shape for the
field's type cannot be deserialised, which fails the whole request (``JSON_PARSER_ERROR``,
raised as :class:`ParseError`); a well-formed value that breaks a field rule is a
per-record error (:class:`RecordError`: ``STRING_TOO_LONG``, ``INVALID_EMAIL_ADDRESS``...).
Record ids are 18-character case-safe ids with the object's key prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

TEXT_TYPES = frozenset(
    {"string", "textarea", "email", "phone", "url", "picklist", "multipicklist", "id", "reference"}
)
NUMBER_TYPES = frozenset({"double", "currency", "percent"})
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


class ParseError(Exception):
    """A value that cannot be deserialised: Salesforce refuses the whole request (400)."""


class RecordError(Exception):
    """A per-record error: ``statusCode``, ``message``, ``fields``."""

    def __init__(self, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields or []

    def as_json(self) -> dict[str, Any]:
        return {"statusCode": self.code, "message": self.message, "fields": self.fields}


@dataclass(frozen=True)
class Field:
    name: str
    type: str = "string"
    label: str = ""
    length: int = 255
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    defaulted_on_create: bool = False
    external_id: bool = False
    id_lookup: bool = False
    unique: bool = False
    custom: bool = False

    @property
    def required(self) -> bool:
        return self.createable and not self.nillable and not self.defaulted_on_create

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label or self.name.removesuffix("__c").replace("_", " "),
            "type": self.type,
            "length": self.length if self.type in TEXT_TYPES else 0,
            "nillable": self.nillable,
            "createable": self.createable,
            "updateable": self.updateable,
            "defaultedOnCreate": self.defaulted_on_create,
            "externalId": self.external_id,
            "idLookup": self.id_lookup,
            "unique": self.unique,
            "custom": self.custom,
            "calculated": False,
            "picklistValues": [],
        }


SYSTEM = (
    Field(
        "Id",
        "id",
        "Record ID",
        18,
        nillable=False,
        createable=False,
        updateable=False,
        defaulted_on_create=True,
        id_lookup=True,
    ),
    Field(
        "CreatedDate",
        "datetime",
        "Created Date",
        nillable=False,
        createable=False,
        updateable=False,
        defaulted_on_create=True,
    ),
    Field(
        "LastModifiedDate",
        "datetime",
        "Last Modified Date",
        nillable=False,
        createable=False,
        updateable=False,
        defaulted_on_create=True,
    ),
)


@dataclass(frozen=True)
class SObject:
    name: str
    key_prefix: str
    fields: tuple[Field, ...]
    custom: bool = False
    label: str = ""

    def field(self, name: str) -> Field | None:
        """The field named ``name`` (API names are case-insensitive)."""
        folded = name.casefold()
        return next((f for f in self.fields if f.name.casefold() == folded), None)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label or self.name.removesuffix("__c").replace("_", " "),
            "custom": self.custom,
            "keyPrefix": self.key_prefix,
            "createable": True,
            "updateable": True,
            "deletable": True,
            "queryable": True,
            "fields": [f.describe() for f in self.fields],
        }

    def with_fields(self, *extra: Field) -> SObject:
        return replace(self, fields=self.fields + extra)


def _sobject(name: str, prefix: str, *fields: Field, custom: bool = False) -> SObject:
    return SObject(name, prefix, SYSTEM + fields, custom=custom)


def default_objects() -> dict[str, SObject]:
    """Contact, Account, Lead and a custom object, with the fields the demo and tests use."""
    ext = {"external_id": True, "unique": True, "custom": True, "length": 64}
    objects = [
        _sobject(
            "Contact",
            "003",
            Field("LastName", label="Last Name", length=80, nillable=False),
            Field("FirstName", label="First Name", length=40),
            Field("Email", "email", length=80),
            Field("Phone", "phone", length=40),
            Field("Title", length=128),
            Field("MailingCountry", label="Mailing Country", length=80),
            Field("Description", "textarea", length=32000),
            Field("AccountId", "reference", "Account ID", 18),
            Field("Customer_Id__c", label="Customer Id", **ext),  # type: ignore[arg-type]
            Field("Plan__c", "picklist", length=40, custom=True),
            Field("Seats__c", "double", custom=True),
            Field("MRR__c", "currency", label="MRR", custom=True),
            Field("Signup_Date__c", "date", label="Signup Date", custom=True),
            Field("Greeting__c", length=255, custom=True),
            Field("Recently_Viewed__c", "multipicklist", length=4099, custom=True),
            Field("Active__c", "boolean", nillable=False, defaulted_on_create=True, custom=True),
        ),
        _sobject(
            "Account",
            "001",
            Field("Name", label="Account Name", length=255, nillable=False),
            Field("Website", "url", length=255),
            Field("Industry", "picklist", length=255),
            Field("NumberOfEmployees", "int", label="Employees"),
            Field("Account_Number__c", label="Account Number", **ext),  # type: ignore[arg-type]
        ),
        _sobject(
            "Lead",
            "00Q",
            Field("LastName", label="Last Name", length=80, nillable=False),
            Field("Company", length=255, nillable=False),
            Field("Email", "email", length=80),
            Field("Legacy_Key__c", label="Legacy Key", length=64, custom=True),
        ),
        _sobject(
            "Subscription__c",
            "a0B",
            Field("Name", label="Subscription Name", length=80),
            Field("Subscription_Key__c", label="Subscription Key", **ext),  # type: ignore[arg-type]
            Field("Plan__c", "picklist", length=40, custom=True),
            Field("MRR__c", "currency", label="MRR", custom=True),
            custom=True,
        ),
    ]
    return {o.name: o for o in objects}


def record_id(prefix: str, number: int) -> str:
    """An 18-character case-safe Salesforce id (key prefix, a fake pod, a counter)."""
    base = f"{prefix}5g000{number:07d}"[:15]
    suffix = ""
    for start in (0, 5, 10):
        bits = sum(1 << i for i, c in enumerate(base[start : start + 5]) if c.isupper())
        suffix += _SUFFIX[bits]
    return base + suffix


def coerce(sobject: SObject, spec: Field, value: Any) -> Any:
    """The stored value of ``value`` for ``spec`` (raises ParseError or RecordError)."""
    if value is None:
        return None
    kind = spec.type
    if kind in TEXT_TYPES:
        if isinstance(value, dict | list):
            raise ParseError(_parse(value, "java.lang.String"))
        text = _text(value)
        if len(text) > spec.length:
            raise RecordError(
                "STRING_TOO_LONG",
                f"{spec.describe()['label']}: data value too large: {text[:40]} "
                f"(max length={spec.length})",
                [spec.name],
            )
        if kind == "email" and text and not _EMAIL.match(text):
            raise RecordError(
                "INVALID_EMAIL_ADDRESS",
                f"{spec.describe()['label']}: invalid email address: {text}",
                [spec.name],
            )
        return text
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ParseError(_parse(value, "boolean"))
    if kind == "int":
        if isinstance(value, bool | dict | list):
            raise ParseError(_parse(value, "int"))
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ParseError(_parse(value, "int")) from None
        if not number.is_integer():
            raise ParseError(_parse(value, "int"))
        return int(number)
    if kind in NUMBER_TYPES:
        if isinstance(value, bool | dict | list):
            raise ParseError(_parse(value, "double"))
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ParseError(_parse(value, "double")) from None
    if kind == "date":
        try:
            return date.fromisoformat(str(value)).isoformat()
        except ValueError:
            raise ParseError(_parse(value, "java.util.Date")) from None
    if kind == "datetime":
        try:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).isoformat()
        except ValueError:
            raise ParseError(_parse(value, "java.util.Calendar")) from None
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _parse(value: Any, java_type: str) -> str:
    token = "VALUE_STRING" if isinstance(value, str) else "VALUE_NUMBER_INT"
    if isinstance(value, bool):
        token = "VALUE_TRUE" if value else "VALUE_FALSE"
    elif isinstance(value, float):
        token = "VALUE_NUMBER_FLOAT"
    elif isinstance(value, dict):
        token = "START_OBJECT"
    elif isinstance(value, list):
        token = "START_ARRAY"
    shown = str(value)[:40]
    return (
        f"Cannot deserialize instance of {java_type} from {token} value {shown} or request "
        "may be missing a required field"
    )


@dataclass
class Counter:
    """Issues record ids per key prefix."""

    next: dict[str, int] = field(default_factory=dict)

    def issue(self, prefix: str) -> str:
        number = self.next.get(prefix, 1)
        self.next[prefix] = number + 1
        return record_id(prefix, number)
