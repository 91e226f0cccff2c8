"""The fake org's records and the DML rules both sObject Collections and Bulk API 2.0 apply.

:class:`Org` holds one :class:`~undertow.testing.fakes.RecordStore` per sObject and applies
``create``, ``update``, ``upsert`` (on an external ID field) and ``delete`` one record at a
time, returning Salesforce's per-record result (``{"id", "success", "errors", "created"}``)
or raising :class:`~undertow.testing.salesforce.schema.RecordError`.

Whole-request problems are found first by :meth:`Org.parse` (an unknown field or a value
that cannot be deserialised), as Salesforce reads the whole body before writing anything.
External ID values match case-insensitively (Salesforce's default for external IDs that
are not marked case-sensitive).
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Iterable
from typing import Any

from undertow.testing.fakes import RecordStore, now_iso
from undertow.testing.faults import Ledger
from undertow.testing.salesforce.schema import (
    Counter,
    Field,
    ParseError,
    RecordError,
    SObject,
    coerce,
)

_ID = re.compile(r"^[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?$")
READ_ONLY = "Please check the security settings of this field and verify that it is read/write"


class UnknownField(Exception):
    """A field the sObject does not have: Salesforce refuses the whole request."""

    def __init__(self, sobject: str, name: str) -> None:
        super().__init__(f"No such column '{name}' on sobject of type {sobject}")


class Org:
    """Every sObject's records, and the DML rules (see the module docstring)."""

    def __init__(self, objects: dict[str, SObject], ledger: Ledger | None = None) -> None:
        self.objects = dict(objects)
        self.ledger = ledger
        self.lock = threading.RLock()
        self.stores: dict[str, RecordStore] = {}
        self.deleted: set[str] = set()
        self.ids = Counter()
        for name in self.objects:
            self._store(name)

    def _store(self, name: str) -> RecordStore:
        if name not in self.stores:
            caseless = [f.name for f in self.objects[name].fields if f.external_id]
            self.stores[name] = RecordStore(caseless=caseless)
        return self.stores[name]

    def add_object(self, sobject: SObject) -> None:
        with self.lock:
            self.objects[sobject.name] = sobject
            self._store(sobject.name)

    def sobject(self, name: str) -> SObject | None:
        folded = name.casefold()
        return next((o for o in self.objects.values() if o.name.casefold() == folded), None)

    def store(self, name: str) -> RecordStore:
        """The records of ``name`` (Salesforce id -> field values)."""
        sobject = self.sobject(name)
        if sobject is None:
            raise KeyError(name)
        return self._store(sobject.name)

    def reset(self) -> None:
        with self.lock:
            self.stores.clear()
            self.deleted.clear()
            self.ids = Counter()
            for name in self.objects:
                self._store(name)

    def save(self) -> Any:
        """A copy of every record (allOrNone rolls back to it)."""
        return copy.deepcopy((self.stores, self.deleted, self.ids))

    def restore(self, saved: Any) -> None:
        self.stores, self.deleted, self.ids = saved

    # -- reading a request -------------------------------------------------------------------

    def parse(self, sobject: SObject, record: dict[str, Any]) -> dict[str, Any]:
        """``record``'s fields by API name, coerced (raises UnknownField or ParseError)."""
        out: dict[str, Any] = {}
        for key, value in record.items():
            if key == "attributes":
                continue
            spec = sobject.field(key)
            if spec is None:
                raise UnknownField(sobject.name, key)
            try:
                out[spec.name] = coerce(sobject, spec, value)
            except RecordError as exc:
                out[spec.name] = exc  # a per-record error, raised when the record is applied
        return out

    # -- DML, one record at a time (callers hold the lock) -----------------------------------

    def create(self, sobject: SObject, fields: dict[str, Any]) -> dict[str, Any]:
        self._check(sobject, fields, creating=True)
        store = self._store(sobject.name)
        self._unique(sobject, store, fields, None)
        object_id = self.ids.issue(sobject.key_prefix)
        stored = self._defaults(sobject, fields)
        store.create(stored, object_id=object_id)
        self._stamp(store, object_id)
        self._apply("create", sobject, store[object_id])
        return {"id": object_id, "success": True, "errors": [], "created": True}

    def update(self, sobject: SObject, object_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        store = self._store(sobject.name)
        fields = {k: v for k, v in fields.items() if k != "Id"}
        if object_id not in store:
            raise self._missing(object_id, "update")
        self._check(sobject, fields, creating=False)
        self._unique(sobject, store, fields, object_id)
        store.modify(object_id, fields)
        self._stamp(store, object_id)
        self._apply("update", sobject, store[object_id])
        return {"id": object_id, "success": True, "errors": [], "created": False}

    def upsert(self, sobject: SObject, key: Field, fields: dict[str, Any]) -> dict[str, Any]:
        value = fields.get(key.name)
        if isinstance(value, RecordError):
            raise value
        if value in (None, ""):
            raise RecordError(
                "MISSING_ARGUMENT", f"{key.name} not specified", [key.name]
            )  # the external id value is required in every record
        found = self.matching(sobject, key, value)
        if len(found) > 1:
            raise RecordError(
                "DUPLICATE_EXTERNAL_ID",
                f"{key.name}: more than one record found for external id field: {found}",
                [key.name],
            )
        if not found:
            return self.create(sobject, fields)
        return self.update(sobject, found[0], fields)

    def delete(self, sobject: SObject | None, object_id: str) -> dict[str, Any]:
        if not _ID.match(object_id):
            raise RecordError("MALFORMED_ID", f"malformed id {object_id}", [])
        for name, store in self.stores.items():
            if object_id in store and (sobject is None or sobject.name == name):
                store.archive(object_id)
                self.deleted.add(object_id)
                self._apply("delete", self.objects[name], store.archived[object_id])
                return {"id": object_id, "success": True, "errors": []}
        raise self._missing(object_id, "delete")

    def matching(self, sobject: SObject, key: Field, value: Any) -> list[str]:
        """Ids of the records whose ``key`` holds ``value`` (caseless for external IDs)."""
        store = self._store(sobject.name)
        if key.name == "Id":
            return [str(value)] if str(value) in store else []
        if key.unique:
            found = store.find(key.name, value)
            return [found] if found else []
        wanted = str(value).casefold()
        return [i for i, rec in store.items() if str(rec.get(key.name, "")).casefold() == wanted]

    def select(
        self, sobject: SObject, fields: list[str], where: str | None, values: Iterable[str]
    ) -> list[dict[str, Any]]:
        """Records of ``sobject`` whose ``where`` field holds one of ``values``."""
        store = self._store(sobject.name)
        key = sobject.field(where) if where else None
        if where is not None and key is None:
            raise UnknownField(sobject.name, where)
        ids: list[str] = []
        if key is None:
            ids = list(store)
        else:
            for value in dict.fromkeys(values):
                ids.extend(i for i in self.matching(sobject, key, value) if i not in ids)
        out = []
        for object_id in ids:
            record = store[object_id]
            row: dict[str, Any] = {
                "attributes": {
                    "type": sobject.name,
                    "url": f"/services/data/v62.0/sobjects/{sobject.name}/{object_id}",
                }
            }
            for name in fields:
                spec = sobject.field(name)
                if spec is None:
                    raise UnknownField(sobject.name, name)
                row[spec.name] = object_id if spec.name == "Id" else record.get(spec.name)
            out.append(row)
        return out

    # -- rules -------------------------------------------------------------------------------

    def _check(self, sobject: SObject, fields: dict[str, Any], *, creating: bool) -> None:
        for value in fields.values():
            if isinstance(value, RecordError):
                raise value
        locked = [
            name
            for name in fields
            if (spec := sobject.field(name)) is not None
            and not (spec.createable if creating else spec.updateable)
        ]
        if locked:
            what = "create" if creating else "update"
            raise RecordError(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to {what} fields: {', '.join(locked)}. {READ_ONLY} for your "
                "profile or permission set.",
                locked,
            )
        if creating:
            missing = [
                f.name for f in sobject.fields if f.required and fields.get(f.name) in (None, "")
            ]
            if missing:
                raise RecordError(
                    "REQUIRED_FIELD_MISSING",
                    f"Required fields are missing: [{', '.join(missing)}]",
                    missing,
                )
        else:
            cleared = [
                name
                for name, value in fields.items()
                if value in (None, "")
                and (spec := sobject.field(name)) is not None
                and spec.required
            ]
            if cleared:
                raise RecordError(
                    "REQUIRED_FIELD_MISSING",
                    f"Required fields are missing: [{', '.join(cleared)}]",
                    cleared,
                )

    def _unique(
        self, sobject: SObject, store: RecordStore, fields: dict[str, Any], own: str | None
    ) -> None:
        for spec in sobject.fields:
            if not spec.unique or fields.get(spec.name) in (None, ""):
                continue
            other = store.find(spec.name, fields[spec.name])
            if other is not None and other != own:
                raise RecordError(
                    "DUPLICATE_VALUE",
                    f"duplicate value found: {spec.name} duplicates value on record with id: "
                    f"{other}",
                    [spec.name],
                )

    @staticmethod
    def _defaults(sobject: SObject, fields: dict[str, Any]) -> dict[str, Any]:
        stored = dict(fields)
        for spec in sobject.fields:
            if spec.type == "boolean" and spec.name not in stored:
                stored[spec.name] = False
        return stored

    @staticmethod
    def _stamp(store: RecordStore, object_id: str) -> None:
        record = store[object_id]
        record.setdefault("CreatedDate", store.created_at[object_id])
        record["LastModifiedDate"] = now_iso()

    def _missing(self, object_id: str, what: str) -> RecordError:
        if object_id in self.deleted:
            return RecordError("ENTITY_IS_DELETED", "entity is deleted", [])
        if not _ID.match(object_id):
            return RecordError("MALFORMED_ID", f"malformed id {object_id}", [])
        return RecordError(
            "INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id ({what})", []
        )

    def _apply(self, operation: str, sobject: SObject, record: dict[str, Any]) -> None:
        if self.ledger is not None:
            self.ledger.apply(operation, {"sobject": sobject.name, **record})


def failure(error: RecordError) -> dict[str, Any]:
    """A failed per-record result in sObject Collections' shape."""
    return {"success": False, "errors": [error.as_json()]}


__all__ = ["Org", "ParseError", "RecordError", "UnknownField", "failure"]
