"""The fake org's Bulk API 2.0 ingest jobs: a CSV in, per-record result CSVs out, later.

A job goes ``Open`` (created) -> ``UploadComplete`` (closed by the client) -> ``InProgress``
-> ``JobComplete`` | ``Failed``, or ``Aborted`` by the client; the work happens in the
background ``job_seconds`` after the close, whoever is watching. Each row is applied with
the same DML rules as sObject Collections (:class:`~undertow.testing.salesforce.records.Org`);
a row that fails is listed in ``failedResults`` with ``sf__Error`` =
``STATUS_CODE:message:fields --`` and the row's original columns, a row that succeeds in
``successfulResults`` with ``sf__Id`` and ``sf__Created``. Neither list keeps the upload's
order (Salesforce does not promise it; the fake reverses it so a client cannot lean on it).
A column the object does not have fails the whole job (``InvalidBatch : Field name not
found``). In a CSV, an empty value leaves a field alone and ``#N/A`` clears it.
"""

from __future__ import annotations

import csv
import io
import threading
from dataclasses import dataclass, field
from typing import Any

from undertow.testing.fakes import now_iso
from undertow.testing.salesforce.records import Org, UnknownField
from undertow.testing.salesforce.schema import Counter, ParseError, RecordError, SObject

OPERATIONS = ("insert", "update", "upsert", "delete", "hardDelete")
TERMINAL = ("JobComplete", "Failed", "Aborted")
DELIMITERS = {
    "COMMA": ",",
    "PIPE": "|",
    "SEMICOLON": ";",
    "TAB": "\t",
    "CARET": "^",
    "BACKQUOTE": "`",
}
NULL = "#N/A"


@dataclass
class Job:
    id: str
    sobject: str
    operation: str
    external_id: str | None
    line_ending: str
    delimiter: str
    api_version: str
    state: str = "Open"
    created: str = field(default_factory=now_iso)
    modstamp: str = field(default_factory=now_iso)
    data: bytes | None = None
    header: list[str] = field(default_factory=list)
    successes: list[list[str]] = field(default_factory=list)
    failures: list[list[str]] = field(default_factory=list)
    unprocessed: list[list[str]] = field(default_factory=list)
    error: str | None = None
    processed: int = 0
    failed: int = 0

    def info(self, *, full: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "operation": self.operation,
            "object": self.sobject,
            "createdById": "0055g00000INTEGAAA",
            "createdDate": self.created,
            "systemModstamp": self.modstamp,
            "state": self.state,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(self.api_version),
            "contentUrl": f"services/data/v{self.api_version}/jobs/ingest/{self.id}/batches",
            "lineEnding": self.line_ending,
            "columnDelimiter": next(k for k, v in DELIMITERS.items() if v == self.delimiter),
        }
        if self.external_id:
            body["externalIdFieldName"] = self.external_id
        if full:
            body.update(
                jobType="V2Ingest",
                numberRecordsProcessed=self.processed,
                numberRecordsFailed=self.failed,
                retries=0,
                totalProcessingTime=0,
                apiActiveProcessingTime=0,
                apexProcessingTime=0,
            )
            if self.error:
                body["errorMessage"] = self.error
        return body


class JobError(Exception):
    """A refused job request: status and Salesforce's ``[{"errorCode", "message"}]``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> list[dict[str, str]]:
        return [{"errorCode": self.code, "message": self.message}]


class Jobs:
    """Every ingest job of the fake org."""

    def __init__(self, org: Org, *, max_upload_bytes: int = 100 * 1024 * 1024) -> None:
        self.org = org
        self.max_upload_bytes = max_upload_bytes
        self.jobs: dict[str, Job] = {}
        self.ids = Counter()
        self.lock = threading.RLock()

    def create(self, body: Any, api_version: str) -> Job:
        if not isinstance(body, dict):
            raise JobError(400, "JSON_PARSER_ERROR", "the body must be a JSON object")
        operation = body.get("operation")
        if operation not in OPERATIONS:
            raise JobError(400, "INVALIDJOB", f"InvalidJob : Invalid operation: {operation}")
        sobject = self.org.sobject(str(body.get("object", "")))
        if sobject is None:
            raise JobError(400, "INVALIDJOB", f"InvalidJob : Invalid object: {body.get('object')}")
        external = body.get("externalIdFieldName")
        if operation == "upsert":
            spec = sobject.field(str(external or ""))
            if spec is None or not (spec.external_id or spec.id_lookup):
                raise JobError(
                    400,
                    "INVALIDJOB",
                    f"InvalidJob : Field name provided, {external} is not an External ID or "
                    f"indexed field for {sobject.name}",
                )
            external = spec.name
        if body.get("contentType", "CSV") != "CSV":
            raise JobError(400, "INVALIDJOB", "InvalidJob : contentType must be CSV")
        delimiter = DELIMITERS.get(str(body.get("columnDelimiter", "COMMA")))
        ending = str(body.get("lineEnding", "LF"))
        if delimiter is None or ending not in ("LF", "CRLF"):
            raise JobError(400, "INVALIDJOB", "InvalidJob : unsupported columnDelimiter/lineEnding")
        with self.lock:
            job = Job(
                id=self.ids.issue("750"),
                sobject=sobject.name,
                operation=str(operation),
                external_id=external if operation == "upsert" else None,
                line_ending=ending,
                delimiter=delimiter,
                api_version=api_version,
            )
            self.jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobError(404, "NOT_FOUND", "The requested resource does not exist")
        return job

    def upload(self, job_id: str, data: bytes) -> int:
        """Keep a job's CSV; the number of records in it."""
        with self.lock:
            job = self.get(job_id)
            if job.state != "Open":
                raise JobError(409, "INVALIDJOBSTATE", f"Job {job_id} is not in the Open state")
            if job.data is not None:
                raise JobError(400, "INVALIDJOBSTATE", "Job data can be uploaded only once per job")
            if len(data) > self.max_upload_bytes:
                raise JobError(
                    400,
                    "INVALIDBATCH",
                    f"InvalidBatch : upload exceeds {self.max_upload_bytes} bytes",
                )
            job.data = data
            text = data.decode("utf-8-sig", "replace")
            rows = csv.reader(io.StringIO(text, newline=""), delimiter=job.delimiter)
            return max(0, sum(1 for row in rows if row) - 1)

    def close(self, job_id: str, state: Any) -> Job:
        with self.lock:
            job = self.get(job_id)
            if state == "Aborted":
                if job.state in TERMINAL:
                    raise JobError(409, "INVALIDJOBSTATE", f"Job {job_id} is already {job.state}")
                job.state = "Aborted"
            elif state == "UploadComplete":
                if job.state != "Open":
                    raise JobError(409, "INVALIDJOBSTATE", f"Job {job_id} is not Open")
                if job.data is None:
                    raise JobError(400, "INVALIDJOBSTATE", "Job has no data uploaded")
                job.state = "UploadComplete"
            else:
                raise JobError(400, "INVALIDJOBSTATE", f"cannot set state to {state}")
            job.modstamp = now_iso()
            return job

    def start(self, job_id: str) -> None:
        with self.lock:
            job = self.get(job_id)
            if job.state == "UploadComplete":
                job.state = "InProgress"

    def process(self, job_id: str) -> None:
        """Apply the job's rows (the org's background work)."""
        with self.lock, self.org.lock:
            job = self.get(job_id)
            if job.state not in ("UploadComplete", "InProgress") or job.data is None:
                return
            sobject = self.org.sobject(job.sobject)
            assert sobject is not None
            text = job.data.decode("utf-8-sig")
            rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=job.delimiter))
            if not rows:
                job.state, job.error = "Failed", "InvalidBatch : empty CSV"
                return
            job.header, body = rows[0], [r for r in rows[1:] if r]
            problem = self._header_problem(sobject, job)
            if problem:
                job.state, job.error = "Failed", problem
                job.unprocessed = body
                return
            for row in reversed(body):
                self._row(sobject, job, row)
            job.state = "JobComplete"
            job.modstamp = now_iso()

    def _header_problem(self, sobject: SObject, job: Job) -> str | None:
        for name in job.header:
            if sobject.field(name) is None:
                return f"InvalidBatch : Field name not found : {name}"
        if job.operation in ("update", "delete", "hardDelete") and "Id" not in job.header:
            return "InvalidBatch : Field name not found : Id"
        if job.operation == "upsert" and job.external_id not in job.header:
            return f"InvalidBatch : Field name not found : {job.external_id}"
        return None

    def _row(self, sobject: SObject, job: Job, row: list[str]) -> None:
        job.processed += 1
        values: dict[str, Any] = {}
        for name, text in zip(job.header, row, strict=False):
            if text == "":
                continue  # an empty value leaves the field as it is
            values[name] = None if text == NULL else text
        try:
            fields = self._coerce(sobject, values)
            if job.operation == "insert":
                result = self.org.create(sobject, fields)
            elif job.operation == "update":
                result = self.org.update(sobject, str(values.get("Id", "")), fields)
            elif job.operation == "upsert":
                key = sobject.field(str(job.external_id))
                assert key is not None
                result = self.org.upsert(sobject, key, fields)
            else:
                result = self.org.delete(sobject, str(values.get("Id", "")))
        except RecordError as exc:
            job.failed += 1
            fields_ = ":".join(exc.fields)
            job.failures.append(
                [values.get("Id") or "", f"{exc.code}:{exc.message}:{fields_} --", *row]
            )
            return
        created = "true" if result.get("created") else "false"
        job.successes.append([str(result["id"]), created, *row])

    def _coerce(self, sobject: SObject, values: dict[str, Any]) -> dict[str, Any]:
        try:
            parsed = self.org.parse(sobject, values)
        except UnknownField as exc:  # checked with the header already
            raise RecordError("INVALID_FIELD", str(exc), []) from None
        except ParseError:
            raise self._type_error(sobject, values) from None
        return parsed

    def _type_error(self, sobject: SObject, values: dict[str, Any]) -> RecordError:
        for name, value in values.items():
            spec = sobject.field(name)
            if spec is None:
                continue
            try:
                self.org.parse(sobject, {name: value})
            except ParseError:
                label = spec.describe()["label"]
                return RecordError(
                    "INVALID_TYPE_ON_FIELD_IN_RECORD",
                    f"{label}: value not of required type: {value}",
                    [spec.name],
                )
        return RecordError("INVALID_TYPE_ON_FIELD_IN_RECORD", "value not of required type", [])

    def results(self, job_id: str, which: str) -> str:
        """``successfulResults``, ``failedResults`` or ``unprocessedrecords`` as CSV text."""
        with self.lock:
            job = self.get(job_id)
            if which == "unprocessedrecords":
                header, rows = job.header, job.unprocessed
                if job.state == "Aborted" and job.data is not None and not job.processed:
                    text = job.data.decode("utf-8-sig")
                    parsed = list(
                        csv.reader(io.StringIO(text, newline=""), delimiter=job.delimiter)
                    )
                    header, rows = (parsed[0], parsed[1:]) if parsed else ([], [])
            elif job.state not in TERMINAL:
                raise JobError(
                    400, "INVALIDJOBSTATE", f"Job {job_id} is not finished ({job.state})"
                )
            elif which == "successfulResults":
                header, rows = ["sf__Id", "sf__Created", *job.header], job.successes
            else:
                header, rows = ["sf__Id", "sf__Error", *job.header], job.failures
            out = io.StringIO()
            writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
            if header:
                writer.writerow(header)
            writer.writerows(rows)
            return out.getvalue()

    def delete(self, job_id: str) -> None:
        with self.lock:
            job = self.get(job_id)
            if job.state not in TERMINAL:
                raise JobError(400, "INVALIDJOBSTATE", f"Job {job_id} is not finished")
            del self.jobs[job_id]
