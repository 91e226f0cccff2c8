"""The file destinations (``s3`` on moto's S3 server, ``sftp`` on asyncssh's SFTP server, both
started here on 127.0.0.1): whole runs through a project, one file per run and operation,
the manifest last, multipart on S3, the publish repeated after a crash, clear errors."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from project_support import run_one, users_project, warehouse

from undertow.destinations._files import FilesDestination
from undertow.destinations.base import Batch, Operation, RunEnd
from undertow.destinations.s3 import S3Destination
from undertow.destinations.sftp import SftpDestination
from undertow.errors import FatalDeliveryError
from undertow.testing.file_servers import S3Server, SftpServer, serve_s3, serve_sftp

BUCKET = "undertow-files-test"


@dataclass
class Place:
    block: str
    """The destination's YAML flow mapping, without format keys."""
    read: Any
    """key -> bytes"""
    keys: Any
    """prefix -> sorted keys"""
    config: dict[str, Any]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with serve_s3() as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture(scope="module")
def sftp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    with serve_sftp(tmp_path_factory.mktemp("sftp-root")) as server:
        yield server


def s3_config(server: S3Server, prefix: str) -> dict[str, Any]:
    return {
        "type": "s3",
        "bucket": BUCKET,
        "endpoint_url": server.url,
        "region": server.region,
        "access_key_id": server.access_key_id,
        "secret_access_key": server.secret_access_key,
        "prefix": prefix,
    }


def sftp_config(server: SftpServer, prefix: str) -> dict[str, Any]:
    return {
        "type": "sftp",
        "host": server.host,
        "port": server.port,
        "username": server.username,
        "password": server.password,
        "host_key": server.host_key,
        "prefix": prefix,
    }


@pytest.fixture
def place(request: pytest.FixtureRequest) -> Place:
    prefix = f"out/{request.node.name.replace('[', '-').rstrip(']')}"
    if request.param == "s3":
        server: S3Server = request.getfixturevalue("s3")
        client = server.client()

        def read(key: str) -> bytes:
            return bytes(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())

        def keys(under: str) -> list[str]:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=under)
            return sorted(o["Key"] for p in pages for o in p.get("Contents", []))

        config = s3_config(server, prefix)
    else:
        box: SftpServer = request.getfixturevalue("sftp")

        def read(key: str) -> bytes:
            return (box.root / key).read_bytes()

        def keys(under: str) -> list[str]:
            return sorted(
                str(p.relative_to(box.root)) for p in (box.root / under).rglob("*") if p.is_file()
            )

        config = sftp_config(box, prefix)
    block = "{" + ", ".join(f"{k}: {orjson.dumps(v).decode()}" for k, v in config.items()) + "}"
    return Place(block, read, keys, config)


def manifests(place: Place) -> list[dict[str, Any]]:
    found = [k for k in place.keys(place.config["prefix"]) if k.endswith("/_manifest.json")]
    return [orjson.loads(place.read(k)) for k in found]


def rows_of(data: bytes, fmt: str, compression: str) -> list[dict[str, Any]]:
    if fmt == "parquet":
        return pq.read_table(io.BytesIO(data)).to_pylist()
    text = (gzip.decompress(data) if compression == "gzip" else data).decode()
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    return [orjson.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize(
    ("place", "fmt", "compression"),
    [("s3", "jsonl", "gzip"), ("s3", "parquet", "gzip"), ("sftp", "csv", "none")],
    indirect=["place"],
)
def test_each_run_publishes_a_file_per_operation_then_its_manifest(
    place: Place, fmt: str, compression: str, tmp_path: Path
) -> None:
    block = place.block[:-1] + f", format: {fmt}, compression: {compression}, batch_size: 7}}"
    project = users_project(
        tmp_path,
        [(i, f"u{i}@x.com") for i in range(30)],
        destinations=f"lake: {block}",
        syncs="  users_out: {model: users, destination: lake, mode: mirror, "
        "match: {id: id}, mappings: {email: email}}\n",
    )
    first = run_one(project, "users_out")
    assert first.status == "succeeded", first.error
    warehouse(tmp_path, "update users set email = 'new' || id where id < 5")
    warehouse(tmp_path, "delete from users where id >= 27")
    second = run_one(project, "users_out")
    assert second.status == "succeeded", second.error

    got = {m["run_id"]: m for m in manifests(place)}
    assert set(got) == {first.id, second.id}  # ids of runs in the same second sort randomly
    assert [f["operation"] for f in got[first.id]["files"]] == ["upsert"]
    assert got[first.id]["rows"] == 30 and got[first.id]["files"][0]["batches"] == 5
    assert got[second.id]["counts"]["succeeded"] == 8
    files = {f["operation"]: f for f in got[second.id]["files"]}
    assert sorted(files) == ["delete", "upsert"]
    ext = {"jsonl": "jsonl.gz", "csv": "csv", "parquet": "parquet"}[fmt]
    assert files["upsert"]["key"].endswith(f"/{second.id}/upsert.{ext}")
    upserts = rows_of(place.read(files["upsert"]["key"]), fmt, compression)
    assert sorted(str(r["email"]) for r in upserts) == [f"new{i}" for i in range(5)]
    deletes = rows_of(place.read(files["delete"]["key"]), fmt, compression)
    assert sorted(str(r["_key"]) for r in deletes) == ["27", "28", "29"]
    prefix = place.config["prefix"]
    assert not [k for k in place.keys(prefix) if "/_undertow/" in f"/{k}"], "staging left"


def batch(number: int, rows: range, run_id: str, pad: int = 0) -> Batch:
    return Batch(
        sync="big",
        operation=Operation.UPSERT,
        number=number,
        idempotency_key=f"{run_id}-{number}",
        keys=[str(i) for i in rows],
        payloads=[orjson.dumps({"n": i, "pad": "x" * pad}).decode() for i in rows],
        identifiers={"id": list(rows)},
        run_id=run_id,
    )


def make(config: dict[str, Any]) -> FilesDestination[Any]:
    kind = S3Destination if config["type"] == "s3" else SftpDestination
    return kind(kind.Config.model_validate(config), name="lake")


def test_a_large_run_goes_up_in_multipart_parts_on_s3(s3: S3Server) -> None:
    """About 12 MiB of JSON Lines with 5 MiB parts: three parts, one object, whole."""
    dest = make({**s3_config(s3, "multipart"), "part_size_mb": 5})
    run_id = "20261203T090000-00000001"

    async def main() -> None:
        await dest.open()
        try:
            for n in range(4):
                await dest.write_batch(batch(n, range(n * 2500, (n + 1) * 2500), run_id, 1200))
            await dest.finish_run(RunEnd("big", run_id, "succeeded", {}))
        finally:
            await dest.close()

    asyncio.run(main())
    client = s3.client()
    key = f"multipart/big/{run_id}/upsert.jsonl"
    [manifest] = [
        orjson.loads(
            client.get_object(Bucket=BUCKET, Key=f"multipart/big/{run_id}/_manifest.json")[
                "Body"
            ].read()
        )
    ]
    size = manifest["files"][0]["bytes"]
    assert size > 10 * 1024 * 1024 and manifest["rows"] == 10_000
    assert manifest["files"][0]["parts"] == 3
    head = client.head_object(Bucket=BUCKET, Key=key)
    assert head["ETag"].strip('"').endswith("-3"), "not a multipart object"
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert [orjson.loads(line)["id"] for line in body.splitlines()] == list(range(10_000))
    assert not client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


@pytest.mark.parametrize("kind", ["s3", "sftp"])
def test_a_crash_while_publishing_is_finished_by_the_next_run_with_no_duplicate(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Killed after the run's file went up but before its manifest; a batch resent after
    the crash rewrites its staged object. The next publish leaves one whole file."""
    server = request.getfixturevalue(kind)
    config = (s3_config if kind == "s3" else sftp_config)(server, f"crash-{kind}")
    run_id = "20261203T091500-00000002"

    class Killed(BaseException):
        pass

    async def first() -> None:
        dest = make(config)
        await dest.open()
        await dest.write_batch(batch(0, range(0, 5), run_id))
        await dest.write_batch(batch(1, range(5, 10), run_id))
        await dest.write_batch(batch(1, range(5, 10), run_id))  # resent after a resume
        put = dest.store.put

        async def dies_on_manifest(key: str, data: bytes) -> None:
            if key.endswith("_manifest.json"):
                raise Killed
            await put(key, data)

        dest.store.put = dies_on_manifest  # type: ignore[method-assign]
        with pytest.raises(Killed):
            await dest.finish_run(RunEnd("big", run_id, "succeeded", {}))
        await dest.close()

    async def again() -> list[str]:
        dest = make(config)
        await dest.open()
        try:
            await dest.finish_run(RunEnd("big", run_id, "succeeded", {}))
            await dest.finish_run(RunEnd("big", run_id, "succeeded", {}))  # idempotent
            return await dest.store.list(f"crash-{kind}/")
        finally:
            await dest.close()

    asyncio.run(first())
    keys = asyncio.run(again())
    assert sorted(keys) == [
        f"crash-{kind}/big/{run_id}/_manifest.json",
        f"crash-{kind}/big/{run_id}/upsert.jsonl",
    ]

    async def read() -> bytes:
        dest = make(config)
        try:
            return await dest.store.get(f"crash-{kind}/big/{run_id}/upsert.jsonl")
        finally:
            await dest.close()

    ids = [orjson.loads(line)["id"] for line in asyncio.run(read()).splitlines()]
    assert ids == list(range(10))


def test_bad_credentials_and_places_are_fatal_and_never_show_the_secret(
    s3: S3Server, sftp: SftpServer
) -> None:
    """(moto's server checks no signature unless IAM auth is set up, so a wrong S3 secret is
    not among these cases; S3 answers it with 403 SignatureDoesNotMatch, fatal here.)"""
    cases = [
        (
            {**s3_config(s3, "x"), "bucket": "no-such-bucket-here"},
            "NoSuchBucket",
            s3.secret_access_key,
        ),
        (
            {**sftp_config(sftp, "x"), "password": "wrong-pw-4242"},
            "refused the login",
            "wrong-pw-4242",
        ),
        (
            {
                **sftp_config(sftp, "x"),
                "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            },
            "host key",
            sftp.password,
        ),
    ]
    for config, words, secret in cases:
        dest = make(config)

        async def check(d: FilesDestination[Any] = dest) -> None:
            try:
                await d.check()
            finally:
                await d.close()

        with pytest.raises(FatalDeliveryError) as caught:
            asyncio.run(check())
        text = str(caught.value)
        assert words in text and secret not in text, text
