"""File destination: append each batch to a JSON Lines or CSV file, fsynced per batch.

``path`` is used as given: an absolute path, or a path relative to the current directory.
The project loader resolves paths written relative to the project folder before it builds
the destination, so in ``undertow.yml`` a relative path means "relative to the project".

JSON Lines: one object per record, the operation first::

    {"operation":"upsert","id":1,"email":"a@example.com"}

CSV: a header written once when the file is created (``_operation`` then the fields of the
first batch), then one row per record. Nested values (objects, lists) are JSON in their cell,
booleans are ``true``/``false``, null is an empty cell. A CSV file keeps its first header: a
record with a field the header lacks is rejected (never silently cut); use ``jsonl`` or a
new file for a changing shape.
"""

from __future__ import annotations

import asyncio
import csv
import errno
import io
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
from pydantic import model_validator

from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    Destination,
    DestinationConfig,
    Operation,
)
from undertow.errors import FatalDeliveryError
from undertow.state.files import open_private_append

OPERATION_COLUMN = "_operation"


class FileConfig(DestinationConfig):
    type: Literal["file"] = "file"
    path: str
    format: Literal["jsonl", "csv"] | None = None
    """``jsonl`` or ``csv``; when left out, ``.csv`` files are CSV and the rest JSON Lines."""

    @model_validator(mode="after")
    def _infer_format(self) -> FileConfig:
        if self.format is None:
            self.format = "csv" if self.path.lower().endswith(".csv") else "jsonl"
        return self


class FileDestination(Destination[FileConfig]):
    """Append records to a local file (JSON Lines or CSV)."""

    name: ClassVar[str] = "file"
    capabilities: ClassVar[Capabilities] = Capabilities(
        operations=frozenset(Operation),
        max_batch_size=10_000,
        max_concurrency=1,  # one writer appends; batches never interleave
        shared_delivery=False,  # a file on one machine
        per_record_results=True,
    )

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        super().__init__(config, name=name)
        config = self.config
        self.path = Path(config.path)
        self._lock = asyncio.Lock()
        self._header: list[str] | None = None

    def _where(self) -> str:
        return f"file destination {self.instance_name!r} ({self.path})"

    async def check(self) -> None:
        """The folder exists and is writable (a temporary file is created and removed)."""
        await asyncio.to_thread(self._check)

    def _check(self) -> None:
        folder = self.path.parent
        if not folder.is_dir():
            raise FatalDeliveryError(
                f"{self._where()}: folder {str(folder)!r} does not exist",
                hint=f"create it (mkdir -p {folder}) or fix `path`",
            )
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".undertow-check-"):
                pass
        except OSError as exc:
            raise FatalDeliveryError(
                f"{self._where()}: cannot write in folder {str(folder)!r} ({exc.strerror})",
                hint="give this user write permission on the folder, or choose another `path`",
            ) from exc
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise FatalDeliveryError(
                f"{self._where()}: the file exists but is not writable",
                hint="fix its permissions or choose another `path`",
            )
        if self.config.format == "csv":
            self._read_header()

    async def write_batch(self, batch: Batch) -> BatchResult:
        async with self._lock:
            return await asyncio.to_thread(self._write, batch)

    def _write(self, batch: Batch) -> BatchResult:
        if self.config.format == "csv":
            data, result, header = self._csv_lines(batch)
        else:
            data, result = _jsonl_lines(batch)
            header = None
        created = not self.path.exists()
        start = 0 if created else self.path.stat().st_size
        try:
            with open_private_append(self.path) as handle:  # full payloads: 0600
                try:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                except OSError:
                    # a full disk mid-write leaves a torn line: cut the file back to the
                    # last whole batch, so the rerun appends the batch once, cleanly
                    os.ftruncate(handle.fileno(), start)
                    raise
        except FileNotFoundError as exc:
            raise FatalDeliveryError(
                f"{self._where()}: folder {str(self.path.parent)!r} does not exist",
                hint=f"create it (mkdir -p {self.path.parent}) or fix `path`",
            ) from exc
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            raise FatalDeliveryError(
                f"{self._where()}: cannot append"
                + (": the disk is full" if full else f" ({exc.strerror})")
                + "; the file was cut back to its last whole batch, nothing of this batch "
                "was kept, and the next run sends it again",
                hint="free some space on that disk, then run again"
                if full
                else "check the disk space and the file's permissions",
            ) from exc
        if created:
            _fsync_dir(self.path.parent)
        if header is not None:
            self._header = header
        return result

    def _read_header(self) -> list[str] | None:
        """The header of an existing, non-empty CSV file (None for a new or empty file)."""
        if self._header is not None:
            return self._header
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        with open(self.path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
        if not header or header[0] != OPERATION_COLUMN:
            raise FatalDeliveryError(
                f"{self._where()}: the CSV file exists but its header does not start with "
                f"{OPERATION_COLUMN!r}, so it was not written by Undertow",
                hint="choose a new `path`; Undertow never rewrites a file it did not create",
            )
        self._header = header
        return header

    def _csv_lines(self, batch: Batch) -> tuple[bytes, BatchResult, list[str]]:
        records = batch.records()
        header = self._read_header()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if header is None:
            fields: dict[str, None] = {}
            for record in records:
                fields.update(dict.fromkeys(record))
            header = [OPERATION_COLUMN, *fields]
            writer.writerow(header)
        known = set(header)
        columns = header[1:]
        operation = batch.operation.value
        rejected: dict[int, str] = {}
        for index, record in enumerate(records):
            extra = [name for name in record if name not in known]
            if extra:
                rejected[index] = (
                    f"field(s) {', '.join(repr(n) for n in extra)} are not in the header of "
                    f"CSV file {self.path}, which keeps the columns it was created with; use "
                    "format: jsonl, or point `path` at a new file"
                )
                continue
            writer.writerow([operation, *(_cell(record.get(name)) for name in columns)])
        return out.getvalue().encode(), BatchResult(rejected=rejected), header


def _jsonl_lines(batch: Batch) -> tuple[bytes, BatchResult]:
    """``{"operation": ..., **record}`` per line, by splicing the JSON texts (no re-encoding)."""
    prefix = '{"operation":"' + batch.operation.value + '"'
    lines: list[str] = []
    rejected: dict[int, str] = {}
    for index, payload in enumerate(batch.payloads):
        if '"operation"' in payload and "operation" in orjson.loads(payload):
            rejected[index] = (
                "the record has a field named 'operation', which JSON Lines output uses for "
                "the operation; rename the field in the sync's mappings"
            )
            continue
        rest = payload.strip()[1:].lstrip()
        lines.append(prefix + ("" if rest.startswith("}") else ",") + rest)
    text = "\n".join(lines) + "\n" if lines else ""
    return text.encode(), BatchResult(rejected=rejected)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def _fsync_dir(folder: Path) -> None:
    """Make a new file's directory entry durable too."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
