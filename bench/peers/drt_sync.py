"""drt-core on the side-by-side job, in its own virtualenv (``make bench-peers``):
``.venv-bench-drt/bin/python bench/peers/drt_sync.py FOLDER URL``.

Writes a drt project in FOLDER (``drt_project.yml``, ``syncs/customers.yml``: the
``customers`` table of ``FOLDER/warehouse.duckdb``, dates, timestamps and decimals cast to
text or double because drt's ``tojson`` cannot write them, to the ``rest_api`` destination, 1,000
records per request with ``body_mode: batch``, sync ``mode: full``) and its profile under
FOLDER's own ``HOME`` (drt reads ``~/.drt/profiles.yml``; the shared machine's home is left
alone), then runs ``drt run`` there. drt keeps no record of what was sent: every run resends
every row.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# drt's tojson cannot write dates, timestamps or decimals: the model casts them to text
MODEL = (
    "SELECT id, email, full_name, plan, seats, CAST(mrr AS DOUBLE) AS mrr, country, "
    "CAST(signup_date AS VARCHAR) AS signup_date, CAST(last_seen_at AS VARCHAR) AS "
    "last_seen_at, tags, is_active FROM customers"
)
SYNC = """name: customers
model: "{model}"
destination:
  type: rest_api
  url: "{url}"
  method: POST
  headers:
    Content-Type: "application/json"
  body_mode: batch
  batch_template: '{{"records": {{{{ rows | tojson }}}}}}'
sync:
  mode: full
  batch_size: 1000
  on_error: skip
"""


def main(argv: list[str]) -> int:
    folder, url = Path(argv[1]).resolve(), argv[2]
    home = folder / ".home"
    (home / ".drt").mkdir(parents=True, exist_ok=True)
    (home / ".drt" / "profiles.yml").write_text(
        f"default:\n  type: duckdb\n  database: {folder / 'warehouse.duckdb'}\n"
    )
    (folder / "drt_project.yml").write_text("name: bench\nprofile: default\n")
    (folder / "syncs").mkdir(exist_ok=True)
    (folder / "syncs" / "customers.yml").write_text(SYNC.format(url=url, model=MODEL))
    drt = Path(sys.executable).with_name("drt")
    env = {**os.environ, "HOME": str(home), "DRT_TELEMETRY": "0", "DO_NOT_TRACK": "1"}
    return subprocess.call([str(drt), "run"], cwd=folder, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
