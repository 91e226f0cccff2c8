"""What the file destinations share (S3 and compatible object stores, SFTP): a run's rows as
files, published only when the run ends, so a reader never sees a partial run.

Names under the destination's ``prefix``::

    <prefix>/<sync>/<run id>/<operation>.<ext>[.gz]      one file per run and operation
    <prefix>/<sync>/<run id>/_manifest.json               written last: the run's files
    <prefix>/_undertow/staging/<sync>/<run id>/<operation>/<batch>.jsonl   while the run lasts

Run ids start with the run's start time (``20261203T081500-1a2b3c4d``), so the runs of a
sync list in order.

**A batch** is written as one staged object named by its run and batch number, atomically
(S3 ``PutObject``; SFTP a temporary name renamed over the final one). Its records count as
accepted once it is stored. A batch sent again (a resumed run after a kill -9) rewrites the
same name: never two copies, never half a batch.

**When the run ends** (:meth:`~undertow.destinations.base.Destination.finish_run`), every
staged run of the sync that has no manifest yet (this one, and any that a crash or a failure
left behind) is published: per operation, the staged batches in batch order become one
file in the chosen format (JSON Lines, CSV or Parquet; gzip for the text formats, Parquet's
own codec for Parquet), uploaded in parts (S3 multipart: the object appears only at
``CompleteMultipartUpload``; SFTP: a temporary name renamed at the end); then the manifest;
then the staging is deleted. A kill -9 at any point is finished by the next run, which
writes the same names again, so a reader that waits for ``_manifest.json`` sees every file of
the run whole, once. A run's file is assembled in memory (about the size of its rows).
"""

from __future__ import annotations

import csv
import gzip
import io
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field, field_validator

from undertow.destinations import capture
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    ConfigT,
    Destination,
    DestinationConfig,
    Operation,
    RunEnd,
)

OPERATIONS = frozenset({Operation.UPSERT, Operation.INSERT, Operation.UPDATE, Operation.DELETE})
KEY_COLUMN = "_key"
MANIFEST = "_manifest.json"
STAGING = "_undertow/staging"
EXTENSIONS = {"jsonl": "jsonl", "csv": "csv", "parquet": "parquet"}


class FilesConfig(DestinationConfig):
    """Keys every file destination takes."""

    prefix: str = ""
    """The folder (or key prefix) the files go under; no leading or trailing slash needed."""
    format: Literal["jsonl", "csv", "parquet"] = "jsonl"
    compression: Literal["none", "gzip"] = "none"
    """gzip wraps JSON Lines and CSV files (``.gz``); for Parquet it is the column codec."""
    batch_size: int = Field(default=10_000, ge=1, le=100_000)
    """Records per staged batch: the unit that is stored, checkpointed and at most rewritten."""
    part_size_mb: int = Field(default=16, ge=5, le=5000)
    """Size of each uploaded part of a run's file (S3 allows 5 MiB to 5 GiB per part)."""

    @field_validator("prefix")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip("/")


class Store(ABC):
    """The few operations a file destination needs from where the files go."""

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def check(self) -> None:
        """Prove the credentials and the place work (raise with a hint)."""

    @abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically (a reader sees the old or the new, whole)."""

    @abstractmethod
    async def put_large(self, key: str, data: bytes, part_size: int) -> int:
        """Store a run's file in parts, visible only when complete; return the parts used."""

    @abstractmethod
    async def get(self, key: str) -> bytes: ...

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    async def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (a folder: ends with ``/``), any depth."""

    @abstractmethod
    async def delete(self, keys: Sequence[str]) -> None: ...

    @abstractmethod
    def address(self) -> str:
        """Where the files go, for messages and the debugger (no credential)."""


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def staged_line(key: str, payload: str, identifiers: dict[str, Any]) -> bytes:
    """One record as a staged line: its row key, its match values, then its mapped fields."""
    head = {KEY_COLUMN: key, **identifiers}
    text = orjson.dumps(head)
    if payload in ("{}", ""):
        return text
    return text[:-1] + b"," + payload[1:].encode()


def render(
    lines: list[bytes], fmt: str, compression: str
) -> tuple[bytes, int]:  # (file bytes, rows)
    """The staged lines of one run and operation as one file in the format."""
    if fmt == "jsonl":
        data = b"\n".join(lines) + (b"\n" if lines else b"")
        return (gzip.compress(data, mtime=0) if compression == "gzip" else data), len(lines)
    rows = [orjson.loads(line) for line in lines]
    fields: dict[str, None] = {}
    for row in rows:
        fields.update(dict.fromkeys(row))
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(list(fields))
        for row in rows:
            writer.writerow([_cell(row.get(f)) for f in fields])
        data = out.getvalue().encode()
        return (gzip.compress(data, mtime=0) if compression == "gzip" else data), len(rows)
    import pyarrow.parquet as pq

    from undertow.destinations._table import arrow_of

    table = arrow_of(list(fields), [{f: r.get(f) for f in fields} for r in rows])
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="gzip" if compression == "gzip" else "snappy")
    return sink.getvalue(), len(rows)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


class FilesDestination(Destination[ConfigT]):
    """Stage each batch, publish each run's files and manifest when it ends."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        operations=OPERATIONS,
        max_batch_size=10_000,  # the default `batch_size`
        max_concurrency=4,  # staged batches are independent objects
    )
    finishes_runs: bool = True

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        super().__init__(config, name=name)
        self.store = self.make_store()

    @property
    def files_config(self) -> FilesConfig:
        assert isinstance(self.config, FilesConfig)
        return self.config

    @abstractmethod
    def make_store(self) -> Store: ...

    def where(self) -> str:
        return f"{self.name} destination {self.instance_name!r} ({self.store.address()})"

    def capabilities_for(self, object: str | None) -> Capabilities:
        return replace(self.capabilities, max_batch_size=self.files_config.batch_size)

    def extension(self) -> str:
        cfg = self.files_config
        ext = EXTENSIONS[cfg.format]
        return f"{ext}.gz" if cfg.compression == "gzip" and cfg.format != "parquet" else ext

    def run_folder(self, sync: str, run_id: str) -> str:
        return _join(self.files_config.prefix, sync, run_id)

    def staging(self, sync: str, run_id: str | None = None) -> str:
        return _join(self.files_config.prefix, STAGING, sync, run_id or "") + "/"

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        await self.store.close()

    async def check(self) -> None:
        await self.store.open()
        await self.store.check()

    async def write_batch(self, batch: Batch) -> BatchResult:
        run_id = batch.run_id or batch.idempotency_key.rsplit("-", 1)[0]
        fields = list(batch.identifiers)
        lines = [
            staged_line(key, payload, {f: batch.identifiers[f][i] for f in fields})
            for i, (key, payload) in enumerate(zip(batch.keys, batch.payloads, strict=True))
        ]
        key = _join(self.staging(batch.sync, run_id), batch.operation.value, f"{batch.number:06d}")
        data = b"\n".join(lines) + b"\n"
        started = time.time()
        await self.store.put(key + ".jsonl", data)
        self._capture("PUT", key + ".jsonl", len(lines), len(data), started)
        return BatchResult()

    async def finish_run(self, run: RunEnd) -> None:
        keys = await self.store.list(self.staging(run.sync))
        runs = sorted({k[len(self.staging(run.sync)) :].split("/", 1)[0] for k in keys})
        for run_id in runs:
            status = run.status if run_id == run.run_id else None
            counts = dict(run.counts) if run_id == run.run_id else None
            await self._publish(run.sync, run_id, status, counts)

    async def _publish(
        self, sync: str, run_id: str, status: str | None, counts: dict[str, int] | None
    ) -> None:
        cfg = self.files_config
        folder = self.run_folder(sync, run_id)
        staged = sorted(await self.store.list(self.staging(sync, run_id)))
        manifest_key = _join(folder, MANIFEST)
        if await self.store.exists(manifest_key):  # published before a crash: only clean up
            await self.store.delete(staged)
            return
        by_operation: dict[str, list[str]] = {}
        for key in staged:
            operation = key[len(self.staging(sync, run_id)) :].split("/", 1)[0]
            by_operation.setdefault(operation, []).append(key)
        files = []
        for operation, keys in by_operation.items():
            lines: list[bytes] = []
            for key in keys:
                lines.extend(line for line in (await self.store.get(key)).split(b"\n") if line)
            data, rows = render(lines, cfg.format, cfg.compression)
            target = _join(folder, f"{operation}.{self.extension()}")
            started = time.time()
            parts = await self.store.put_large(target, data, cfg.part_size_mb * 1024 * 1024)
            self._capture("UPLOAD", target, rows, len(data), started)
            files.append(
                {
                    "key": target,
                    "operation": operation,
                    "format": cfg.format,
                    "compression": cfg.compression,
                    "rows": rows,
                    "bytes": len(data),
                    "parts": parts,
                    "batches": len(keys),
                }
            )
        manifest: dict[str, Any] = {"sync": sync, "run_id": run_id, "files": files}
        manifest["rows"] = sum(int(f["rows"]) for f in files)  # type: ignore[call-overload]
        if status is not None:
            manifest["status"] = status
            manifest["counts"] = counts
        else:
            manifest["status"] = "published by a later run (this run ended without publishing)"
        await self.store.put(manifest_key, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        await self.store.delete(staged)

    def _capture(self, verb: str, key: str, rows: int, size: int, started: float) -> None:
        if not capture.active():
            return
        capture.emit(
            method=verb,
            url=f"{self.store.address().rstrip('/')}/{key}",
            started_at=started,
            request_headers={"records": str(rows), "bytes": str(size)},
            status=200,
        )
