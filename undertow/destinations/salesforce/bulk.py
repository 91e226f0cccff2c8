"""Bulk API 2.0 ingest jobs: one job per batch, results read back per record.

A job's life, as Salesforce documents it::

    POST  /jobs/ingest                 {"object", "operation", "externalIdFieldName", "contentType": "CSV"}
    PUT   /jobs/ingest/{id}/batches    the CSV (text/csv), at most 100 MB
    PATCH /jobs/ingest/{id}            {"state": "UploadComplete"}   -> Salesforce processes it
    GET   /jobs/ingest/{id}            until state is JobComplete, Failed or Aborted
    GET   /jobs/ingest/{id}/successfulResults | failedResults | unprocessedrecords

The CSV: the header names the fields; an empty cell leaves a field alone and ``#N/A`` clears
it; booleans are ``true``/``false``; multi-select values ``a;b``. Results come back in no
particular order, so each row is matched to its record by a key the upload carried: the
external ID on upsert, ``Id`` on update and delete, and on insert the row's own values
(two identical rows are interchangeable: either result describes both).

Ending a job: ``JobComplete`` gives each record its result; a record in neither result list
stays undelivered (sent again next run). ``Failed`` with an ``InvalidBatch``/``InvalidJob``
message is the data's fault (the records not processed are rejected with it); any other
failure, or ``Aborted``, leaves them undelivered.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from undertow.destinations.base import BatchResult, Operation
from undertow.destinations.kit import Item
from undertow.destinations.salesforce.records import norm
from undertow.errors import RejectedBatchError
from undertow.redact import trim

NULL = "#N/A"
TERMINAL = frozenset({"JobComplete", "Failed", "Aborted"})
JOB_OPERATIONS = {
    Operation.INSERT: "insert",
    Operation.UPDATE: "update",
    Operation.UPSERT: "upsert",
    Operation.DELETE: "delete",
}
DATA_FAULTS = ("InvalidBatch", "InvalidJob")


def cell(value: Any) -> str:
    """One value as a Bulk API 2.0 CSV cell."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


@dataclass
class Upload:
    """A job's CSV and how to find each record's result in the job's answers."""

    data: bytes
    columns: list[str]
    keys: list[tuple[str, ...]]
    """Per item (in ``items`` order), the key its result row will carry."""
    key_columns: list[str]
    """The columns a result row's key is read from (all of them for insert)."""


def build_upload(
    items: Sequence[Item], operation: Operation, key_field: str | None, numeric: bool = False
) -> Upload:
    """The CSV of ``items`` (each ``item.body`` a dict of field values)."""
    columns: list[str] = []
    seen: set[str] = set()
    for item in items:
        for name in item.body:
            if name not in seen:
                seen.add(name)
                columns.append(name)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    rows: list[list[str]] = []
    for item in items:
        row = [cell(item.body[c]) if c in item.body else "" for c in columns]
        rows.append(row)
        writer.writerow(row)
    key_columns = [key_field] if key_field and operation is not Operation.INSERT else columns
    keys = [_row_key(dict(zip(columns, row, strict=True)), key_columns, numeric) for row in rows]
    return Upload(out.getvalue().encode(), columns, keys, key_columns)


def _row_key(row: dict[str, str], columns: list[str], numeric: bool) -> tuple[str, ...]:
    if len(columns) == 1:
        return (norm(row.get(columns[0], ""), numeric),)
    return tuple(row.get(c, "") for c in columns)


Get = Callable[[str], Awaitable[tuple[int, Any, bytes]]]


@dataclass
class JobState:
    state: str
    error: str | None
    processed: int
    failed: int

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


def job_state(body: Any) -> JobState:
    if not isinstance(body, dict) or not isinstance(body.get("state"), str):
        raise ValueError("not a job info object")
    return JobState(
        state=body["state"],
        error=str(body["errorMessage"]) if body.get("errorMessage") else None,
        processed=int(body.get("numberRecordsProcessed") or 0),
        failed=int(body.get("numberRecordsFailed") or 0),
    )


def read_results(
    upload: Upload,
    state: JobState,
    successes: str,
    failures: str,
    numeric: bool = False,
) -> BatchResult:
    """Each item's result from a finished job's result CSVs (see the module docstring)."""
    waiting: dict[tuple[str, ...], list[int]] = {}
    for position, key in enumerate(upload.keys):
        waiting.setdefault(key, []).append(position)
    result = BatchResult()
    answered: set[int] = set()

    def claim(row: dict[str, str]) -> int | None:
        key = _row_key(row, upload.key_columns, numeric)
        positions = waiting.get(key)
        if not positions:
            return None
        position = positions.pop(0)
        answered.add(position)
        return position

    for row in _rows(successes):
        claim(row)
    for row in _rows(failures):
        failed = claim(row)
        if failed is not None:
            result.rejected[failed] = error_of(row.get("sf__Error", ""))
    for position in range(len(upload.keys)):
        if position in answered:
            continue
        if state.state == "Failed" and state.error and state.error.startswith(DATA_FAULTS):
            result.rejected[position] = trim(f"Salesforce Bulk API job failed: {state.error}", 500)
        else:
            why = f"the Bulk API job ended {state.state}"
            if state.error:
                why += f" ({state.error})"
            result.failed[position] = trim(
                f"{why} without a result for this record; it is sent again by the next run", 500
            )
    return result


def _rows(text: str) -> list[dict[str, str]]:
    if not text.strip():
        return []
    return list(csv.DictReader(io.StringIO(text, newline="")))


def error_of(text: str) -> str:
    """``Salesforce CODE: message (fields: ...)`` from ``sf__Error`` (``CODE:message:fields --``)."""
    body = text.strip().removesuffix("--").strip()
    code, _, rest = body.partition(":")
    message, _, fields = rest.rpartition(":") if rest.count(":") else (rest, "", "")
    if not message:
        message, fields = rest, ""
    out = f"Salesforce {code or 'ERROR'}: {message.strip() or 'no message'}"
    if fields.strip():
        out += f" (fields: {fields.strip()})"
    return trim(out, 500)


def refused(body: Any, what: str) -> RejectedBatchError:
    """A job request Salesforce refused (the whole batch's records are rejected)."""
    if isinstance(body, list) and body and isinstance(body[0], dict):
        code = body[0].get("errorCode") or "ERROR"
        message = body[0].get("message") or "no message"
        return RejectedBatchError(trim(f"Salesforce {code}: {message} ({what})", 500))
    return RejectedBatchError(f"Salesforce refused the Bulk API job ({what})")
