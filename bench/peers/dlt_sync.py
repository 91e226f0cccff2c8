"""dlt on the side-by-side job, in its own virtualenv (``make bench-peers``):
``.venv-bench-dlt/bin/python bench/peers/dlt_sync.py FOLDER URL``.

A dlt pipeline (state in ``FOLDER/.dlt``) whose resource reads the ``customers`` table of
``FOLDER/warehouse.duckdb`` in batches of 100,000 rows (as dicts) and whose custom destination
(``@dlt.destination``, 1,000 items per call) POSTs each call's items as one JSON body. With
no incremental cursor, dlt resends every row on every run and never sends a delete.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import dlt
import duckdb


def main(argv: list[str]) -> int:
    folder, url = Path(argv[1]).resolve(), argv[2]

    @dlt.destination(batch_size=1000, name="sink")
    def sink(items, table) -> None:  # type: ignore[no-untyped-def]
        body = json.dumps({"records": items}, default=str).encode()
        request = urllib.request.Request(
            url, data=body, headers={"content-type": "application/json"}, method="POST"
        )
        urllib.request.urlopen(request).read()

    @dlt.resource(name="customers", write_disposition="append")
    def customers():  # type: ignore[no-untyped-def]
        con = duckdb.connect(str(folder / "warehouse.duckdb"), read_only=True)
        try:
            for batch in con.sql("select * from customers").to_arrow_reader(100_000):
                yield batch.to_pylist()  # rows as dicts: dlt's normalizer types them
        finally:
            con.close()

    pipeline = dlt.pipeline(
        pipeline_name="bench", destination=sink, pipelines_dir=str(folder / ".dlt")
    )
    pipeline.run(customers())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
