"""sObject Collections, single-record sObject REST and SOQL routes of the fake org.

sObject Collections (``/composite/sobjects``) take at most 200 records and answer 200 with
one result per record in the order sent; a body Salesforce cannot read (an unknown field, a
value of the wrong JSON shape) is a 400 for the whole request and nothing is written.
``allOrNone=true`` rolls every record back when one fails.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.salesforce.base import PREFIX, SalesforceBase
from undertow.testing.salesforce.records import ParseError, RecordError, UnknownField, failure
from undertow.testing.salesforce.schema import SObject

MAX_RECORDS = 200
ROLLED_BACK = {
    "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "message": "Record rolled back because not all records were valid and the request was "
    "using AllOrNone header",
    "fields": [],
}
TOO_MANY = "record limit reached. cannot submit more than 200 records into this call"
_SOQL = re.compile(
    r"^\s*SELECT\s+(?P<fields>[\w\s,]+?)\s+FROM\s+(?P<object>\w+)"
    r"(?:\s+WHERE\s+(?P<where>\w+)\s+(?:IN\s*\((?P<values>.*)\)|=\s*(?P<one>'(?:[^'\\]|\\.)*')))?"
    r"\s*$",
    re.IGNORECASE | re.DOTALL,
)
_LITERAL = re.compile(r"'((?:[^'\\]|\\.)*)'")


class RestRoutes(SalesforceBase):
    def rest_routes(self) -> list[BaseRoute]:
        p = PREFIX
        return [
            Route(f"{p}/composite/sobjects", self._collection, methods=["POST", "PATCH", "DELETE"]),
            Route(
                f"{p}/composite/sobjects/{{object}}",
                self._collection_of,
                methods=["GET", "PATCH", "DELETE"],
            ),
            Route(f"{p}/composite/sobjects/{{object}}/{{field}}", self._upsert, methods=["PATCH"]),
            Route(f"{p}/sobjects/{{object}}", self._single_create, methods=["POST"]),
            Route(f"{p}/sobjects/{{object}}/{{id}}", self._single, methods=["PATCH", "DELETE"]),
            Route(
                f"{p}/sobjects/{{object}}/{{field}}/{{value}}",
                self._by_external,
                methods=["GET", "PATCH"],
            ),
            Route(f"{p}/query", self._query, methods=["GET"]),
            Route(f"{p}/query/{{cursor}}", self._query_more, methods=["GET"]),
        ]

    # -- sObject Collections -----------------------------------------------------------------

    async def _collection(self, request: Request) -> Response:
        return await self._collection_call(request, None)

    async def _collection_of(self, request: Request) -> Response:
        return await self._collection_call(request, request.path_params["object"])

    async def _collection_call(self, request: Request, named: str | None) -> Response:
        captured, _, early = await self.enter(request, 42)
        if early is not None:
            return early
        if request.method == "GET" and named is not None:
            return self._retrieve(request, named)
        if request.method == "DELETE":
            return self._delete_many(request, named)
        operation = "create" if request.method == "POST" else "update"
        return await self._write(captured.body, captured.raw, operation, named, None)

    async def _upsert(self, request: Request) -> Response:
        captured, _, early = await self.enter(request, 46)
        if early is not None:
            return early
        sobject = self.org.sobject(request.path_params["object"])
        if sobject is None:
            return self.not_found()
        key = sobject.field(request.path_params["field"])
        if key is None:
            return self.error(
                404,
                "NOT_FOUND",
                "Provided external ID field does not exist or is not accessible: "
                + request.path_params["field"],
            )
        if not (key.external_id or key.id_lookup):
            return self.error(
                400,
                "INVALID_FIELD",
                f"Field name provided, {key.name} is not an External ID or indexed field for "
                f"{sobject.name}",
            )
        return await self._write(captured.body, captured.raw, "upsert", sobject.name, key.name)

    async def _write(
        self, body: Any, raw: bytes, operation: str, named: str | None, key_name: str | None
    ) -> Response:
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            return self.error(
                400, "JSON_PARSER_ERROR", "The request body must be an object with `records`"
            )
        records: list[Any] = body["records"]
        if len(records) > MAX_RECORDS:
            return self.error(400, "EXCEEDED_ID_LIMIT", TOO_MANY)
        all_or_none = body.get("allOrNone") is True
        self.note_batch(len(records))
        prepared: list[tuple[SObject, dict[str, Any]] | RecordError] = []
        for record in records:
            if not isinstance(record, dict):
                return self.error(400, "JSON_PARSER_ERROR", "each record must be a JSON object")
            kind = (record.get("attributes") or {}).get("type")
            sobject = self.org.sobject(str(kind or named or ""))
            if sobject is None or (
                named is not None and sobject.name.casefold() != named.casefold()
            ):
                prepared.append(RecordError("INVALID_TYPE", "Must send a concrete entity type."))
                continue
            try:
                prepared.append((sobject, self.org.parse(sobject, record)))
            except UnknownField as exc:
                return self.error(400, "INVALID_FIELD", str(exc))
            except ParseError as exc:
                return self.error(400, "JSON_PARSER_ERROR", str(exc))
        fate = self.decide(raw, len(records))
        if not fate.applies:
            return fate.refusal(None, self.headers())
        await fate.before()
        with self.org.lock:
            saved = self.org.save() if all_or_none else None
            results = [
                self._one(item, operation, key_name)
                if position not in fate.rejected
                else failure(RecordError("UNKNOWN_EXCEPTION", "injected per-record failure"))
                for position, item in enumerate(prepared)
            ]
            if saved is not None and any(not r["success"] for r in results):
                self.org.restore(saved)
                results = [
                    r if not r["success"] else {"success": False, "errors": [ROLLED_BACK]}
                    for r in results
                ]
        return await fate.answer(self.respond(200, results))

    def _one(
        self,
        item: tuple[SObject, dict[str, Any]] | RecordError,
        operation: str,
        key_name: str | None,
    ) -> dict[str, Any]:
        if isinstance(item, RecordError):
            return failure(item)
        sobject, fields = item
        try:
            if operation == "create":
                if "Id" in fields:
                    raise RecordError(
                        "INVALID_FIELD", "cannot specify Id in an insert call", ["Id"]
                    )
                result = self.org.create(sobject, fields)
                result.pop("created", None)
                return result
            if operation == "update":
                object_id = fields.get("Id")
                if not object_id:
                    raise RecordError("MISSING_ARGUMENT", "Id not specified in an update call", [])
                result = self.org.update(sobject, str(object_id), fields)
                result.pop("created", None)
                return result
            key = sobject.field(str(key_name))
            assert key is not None
            return self.org.upsert(sobject, key, fields)
        except RecordError as exc:
            return failure(exc)

    def _delete_many(self, request: Request, named: str | None) -> Response:
        ids = [i for i in request.query_params.get("ids", "").split(",") if i]
        if not ids:
            return self.error(400, "MISSING_ARGUMENT", "ids parameter is required")
        if len(ids) > MAX_RECORDS:
            return self.error(400, "EXCEEDED_ID_LIMIT", TOO_MANY)
        sobject = self.org.sobject(named) if named else None
        self.note_batch(len(ids))
        results: list[dict[str, Any]] = []
        with self.org.lock:
            for object_id in ids:
                try:
                    results.append(self.org.delete(sobject, object_id))
                except RecordError as exc:
                    results.append({"id": object_id, **failure(exc)})
        return self.respond(200, results)

    def _retrieve(self, request: Request, named: str) -> Response:
        sobject = self.org.sobject(named)
        if sobject is None:
            return self.not_found()
        ids = [i for i in request.query_params.get("ids", "").split(",") if i]
        fields = [f for f in request.query_params.get("fields", "Id").split(",") if f]
        store = self.org.store(sobject.name)
        out: list[Any] = []
        try:
            for object_id in ids:
                found = (
                    self.org.select(sobject, fields, "Id", [object_id])
                    if object_id in store
                    else []
                )
                out.append(found[0] if found else None)
        except UnknownField as exc:
            return self.error(400, "INVALID_FIELD", str(exc))
        return self.respond(200, out)

    # -- single-record sObject REST ----------------------------------------------------------

    async def _single_create(self, request: Request) -> Response:
        captured, _, early = await self.enter(request)
        if early is not None:
            return early
        sobject = self.org.sobject(request.path_params["object"])
        if sobject is None:
            return self.not_found()
        return self._single_write(sobject, captured.body, "create", None, None)

    async def _single(self, request: Request) -> Response:
        captured, _, early = await self.enter(request)
        if early is not None:
            return early
        sobject = self.org.sobject(request.path_params["object"])
        if sobject is None:
            return self.not_found()
        object_id = request.path_params["id"]
        if request.method == "DELETE":
            with self.org.lock:
                try:
                    self.org.delete(sobject, object_id)
                except RecordError as exc:
                    return self.error(404, exc.code, exc.message, exc.fields)
            return self.respond(204)
        return self._single_write(sobject, captured.body, "update", object_id, None)

    async def _by_external(self, request: Request) -> Response:
        captured, _, early = await self.enter(request)
        if early is not None:
            return early
        sobject = self.org.sobject(request.path_params["object"])
        key = sobject.field(request.path_params["field"]) if sobject else None
        if sobject is None or key is None:
            return self.not_found()
        value = request.path_params["value"]
        with self.org.lock:
            found = self.org.matching(sobject, key, value)
        if len(found) > 1:
            urls = [f"/services/data/v62.0/sobjects/{sobject.name}/{i}" for i in found]
            return self.respond(300, urls)
        if request.method == "GET":
            if not found:
                return self.not_found()
            fields = [f.name for f in sobject.fields]
            return self.respond(200, self.org.select(sobject, fields, "Id", found)[0])
        body = dict(captured.body) if isinstance(captured.body, dict) else {}
        body[key.name] = value
        return self._single_write(sobject, body, "upsert", None, key.name)

    def _single_write(
        self,
        sobject: SObject,
        body: Any,
        operation: str,
        object_id: str | None,
        key_name: str | None,
    ) -> Response:
        if not isinstance(body, dict):
            return self.error(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        try:
            fields = self.org.parse(sobject, body)
        except UnknownField as exc:
            return self.error(400, "INVALID_FIELD", str(exc))
        except ParseError as exc:
            return self.error(400, "JSON_PARSER_ERROR", str(exc))
        with self.org.lock:
            try:
                if operation == "create":
                    result = self.org.create(sobject, fields)
                    result.pop("created", None)
                    return self.respond(201, result)
                if operation == "update":
                    self.org.update(sobject, str(object_id), fields)
                    return self.respond(204)
                key = sobject.field(str(key_name))
                assert key is not None
                result = self.org.upsert(sobject, key, fields)
                return self.respond(201 if result["created"] else 200, result)
            except RecordError as exc:
                return self.error(400, exc.code, exc.message, exc.fields)

    # -- SOQL (the one shape the connector sends: SELECT ... FROM ... WHERE f IN (...)) --------

    async def _query(self, request: Request) -> Response:
        _, version, early = await self.enter(request)
        if early is not None:
            return early
        soql = request.query_params.get("q", "")
        match = _SOQL.match(soql)
        if match is None:
            return self.error(400, "MALFORMED_QUERY", f"unexpected token in: {soql[:80]}")
        sobject = self.org.sobject(match["object"])
        if sobject is None:
            return self.error(
                400,
                "INVALID_TYPE",
                f"sObject type '{match['object']}' is not supported.",
            )
        fields = [f.strip() for f in match["fields"].split(",") if f.strip()]
        literal = match["values"] if match["values"] is not None else match["one"]
        values = [
            v.replace("\\'", "'").replace("\\\\", "\\") for v in _LITERAL.findall(literal or "")
        ]
        try:
            with self.org.lock:
                rows = self.org.select(sobject, fields, match["where"], values)
        except UnknownField as exc:
            return self.error(400, "INVALID_FIELD", str(exc))
        return self.respond(200, self._page(rows, 0, version))

    def _page(self, rows: list[dict[str, Any]], start: int, version: str) -> dict[str, Any]:
        page = rows[start : start + self.query_page]
        body: dict[str, Any] = {
            "totalSize": len(rows),
            "done": start + len(page) >= len(rows),
            "records": page,
        }
        if not body["done"]:
            cursor = f"01g5g{len(self.cursors):010d}"
            self.cursors[cursor] = rows
            body["nextRecordsUrl"] = f"/services/data/v{version}/query/{cursor}-{start + len(page)}"
        return body

    cursors: dict[str, list[dict[str, Any]]]

    async def _query_more(self, request: Request) -> Response:
        _, version, early = await self.enter(request)
        if early is not None:
            return early
        cursor, _, offset = request.path_params["cursor"].partition("-")
        rows = self.cursors.get(cursor)
        if rows is None or not offset.isdigit():
            return self.error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self.respond(200, self._page(rows, int(offset), version))
