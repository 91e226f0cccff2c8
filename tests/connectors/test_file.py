"""The file destination: JSON Lines and CSV appends on the local disk."""

from __future__ import annotations

import asyncio
import csv
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.file import FileConfig, FileDestination
from undertow.errors import FatalDeliveryError

pytestmark = pytest.mark.connectors


def make_batch(
    records: list[dict[str, Any]], operation: Operation = Operation.UPSERT, number: int = 1
) -> Batch:
    return Batch(
        sync="users_to_file",
        operation=operation,
        number=number,
        idempotency_key=f"k{number}",
        keys=[str(r.get("id")) for r in records],
        payloads=[orjson.dumps(r).decode() for r in records],
    )


def make_dest(path: Path, fmt: Any = None) -> FileDestination:
    config = FileConfig(path=str(path), format=fmt) if fmt else FileConfig(path=str(path))
    return FileDestination(config, name="out")


def write(dest: FileDestination, batch: Batch) -> BatchResult:
    return asyncio.run(dest.write_batch(batch))


def test_jsonl_appends_one_line_per_record_with_the_operation(tmp_path: Path) -> None:
    path = tmp_path / "users.jsonl"
    dest = make_dest(path)
    first = write(dest, make_batch([{"id": 1, "tags": ["a"]}, {"id": 2, "meta": {"x": None}}]))
    second = write(dest, make_batch([{"id": 1}, {}], Operation.DELETE, number=2))

    assert first == BatchResult() and second == BatchResult()
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert lines == [
        {"operation": "upsert", "id": 1, "tags": ["a"]},
        {"operation": "upsert", "id": 2, "meta": {"x": None}},
        {"operation": "delete", "id": 1},
        {"operation": "delete"},
    ]
    assert path.read_bytes().endswith(b"\n")


def test_jsonl_rejects_a_field_named_operation(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    dest = make_dest(path)
    result = write(
        dest, make_batch([{"id": 1, "operation": "x"}, {"id": 2, "note": '"operation"'}])
    )
    assert list(result.rejected) == [0]
    assert "rename the field" in result.rejected[0]
    assert [orjson.loads(x) for x in path.read_bytes().splitlines()] == [
        {"operation": "upsert", "id": 2, "note": '"operation"'}
    ]


def test_csv_writes_the_header_once_and_encodes_cells(tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    dest = make_dest(path)  # format inferred from the suffix
    assert dest.config.format == "csv"
    write(dest, make_batch([{"id": 1, "name": "Ada, Countess", "tags": ["a", "b"], "vip": True}]))
    write(dest, make_batch([{"id": 2, "name": None}], Operation.UPDATE, number=2))

    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        ["_operation", "id", "name", "tags", "vip"],
        ["upsert", "1", "Ada, Countess", '["a","b"]', "true"],
        ["update", "2", "", "", ""],
    ]


def test_csv_rejects_records_with_new_fields_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    write(make_dest(path), make_batch([{"id": 1, "email": "a@example.com"}]))

    # a new destination instance reads the header back from the file
    dest = make_dest(path)
    result = write(dest, make_batch([{"id": 2, "email": "b@x.io"}, {"id": 3, "phone": "555"}]))

    assert list(result.rejected) == [1]
    assert "'phone'" in result.rejected[1]
    assert "jsonl" in result.rejected[1] and "new file" in result.rejected[1]
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        ["_operation", "id", "email"],
        ["upsert", "1", "a@example.com"],
        ["upsert", "2", "b@x.io"],
    ]


def test_csv_refuses_to_append_to_a_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "theirs.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(FatalDeliveryError, match="not written by Undertow"):
        write(make_dest(path), make_batch([{"a": 3}]))
    assert path.read_text() == "a,b\n1,2\n"


def test_relative_paths_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    dest = make_dest(Path("out.jsonl"))
    write(dest, make_batch([{"id": 1}]))
    assert (tmp_path / "out.jsonl").read_bytes() == b'{"operation":"upsert","id":1}\n'


def test_each_batch_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    dest = make_dest(tmp_path / "a.jsonl")
    write(dest, make_batch([{"id": 1}]))
    write(dest, make_batch([{"id": 2}], number=2))
    # file twice (one per batch) + the folder once when the file was created
    assert len(synced) == 3


def test_check_passes_on_a_writable_folder(tmp_path: Path) -> None:
    asyncio.run(make_dest(tmp_path / "x.jsonl").check())
    assert list(tmp_path.iterdir()) == []  # the probe file is gone


def test_check_fails_on_a_missing_folder(tmp_path: Path) -> None:
    dest = make_dest(tmp_path / "nope" / "x.jsonl")
    with pytest.raises(FatalDeliveryError, match="does not exist") as info:
        asyncio.run(dest.check())
    assert "mkdir -p" in str(info.value)
    with pytest.raises(FatalDeliveryError, match="does not exist"):
        write(dest, make_batch([{"id": 1}]))
