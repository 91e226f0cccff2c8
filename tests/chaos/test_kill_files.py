"""kill -9 of `undertow run` into S3 (moto's S3 server on 127.0.0.1) mid-delivery, then a
run: the resumed run publishes one file per operation holding every row exactly once (a
batch sent again rewrites its staged object), then its manifest; nothing staged and no
incomplete multipart upload is left. The SFTP destination shares the code path
(``undertow/destinations/_files.py``); its publish-after-a-crash test is in
``tests/connectors/test_files.py``."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from harness import SYNC, Model, StateFile, converge, kill_during, summary, write_project

from undertow.testing.file_servers import S3Server, serve_s3

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

ROWS = 20_000
BATCH = 500
BUCKET = "undertow-chaos-files"


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with serve_s3() as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


def test_kill_9_mid_run_then_a_run_publishes_every_row_once(s3: S3Server, tmp_path: Path) -> None:
    rng = random.Random("files-s3")
    model = Model(tmp_path, ROWS, rng)
    state = StateFile(tmp_path)
    block = (
        f'{{type: s3, bucket: {BUCKET}, endpoint_url: "{s3.url}", region: {s3.region}, '
        f"access_key_id: {s3.access_key_id}, secret_access_key: {s3.secret_access_key}, "
        f"prefix: lake, batch_size: {BATCH}}}"
    )
    write_project(tmp_path, block)
    client = s3.client()

    def keys(prefix: str) -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for p in pages for o in p.get("Contents", [])]

    polled = [0.0, 0]

    def staged() -> int:
        """Batches staged so far (asked of the server at most every 50 ms)."""
        if time.monotonic() - polled[0] > 0.05:
            polled[:] = [time.monotonic(), len(keys("lake/_undertow/staging/"))]
        return int(polled[1])

    landed, at = kill_during(tmp_path, "mid-batch", rng, seen=staged, state=state)
    assert landed == "delivery", f"the kill landed at {landed} ({at:.2f}s)"
    before = len(keys("lake/_undertow/staging/"))
    assert 0 < before < ROWS // BATCH, f"{before} batches staged before the kill at {at:.2f}s"
    assert not [k for k in keys("lake/") if k.endswith("_manifest.json")], "published early"

    results, _ = converge(tmp_path, staged)
    resumed = results[0].json
    assert resumed["status"] == "succeeded" and resumed["attempt"] == 2, results[0].err[-2000:]
    run_id = resumed["run_id"]
    published = sorted(k for k in keys("lake/") if "/_undertow/" not in k)
    assert published == [
        f"lake/{SYNC}/{run_id}/_manifest.json",
        f"lake/{SYNC}/{run_id}/upsert.jsonl",
    ]
    body = client.get_object(Bucket=BUCKET, Key=f"lake/{SYNC}/{run_id}/upsert.jsonl")["Body"]
    ids = Counter(orjson.loads(line)["id"] for line in body.read().splitlines())
    assert set(ids) == set(model.rows) and max(ids.values()) == 1, "a row missing or twice"
    manifest = orjson.loads(
        client.get_object(Bucket=BUCKET, Key=f"lake/{SYNC}/{run_id}/_manifest.json")["Body"].read()
    )
    assert manifest["rows"] == ROWS and manifest["files"][0]["batches"] == ROWS // BATCH
    assert not keys("lake/_undertow/"), "staged batches left behind"
    assert not client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    summary("kill-resume[s3]", {"kill_at_s": round(at, 2), "staged_before_kill": before})
