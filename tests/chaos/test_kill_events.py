"""kill -9 of a real ``undertow run`` of an events sync while an event batch is in flight (the
vendor applied it, its answer not yet sent), then a run: no event is duplicated in the fake.

Braze keeps every copy, so the resumed run must not send a batch that may have arrived: every
batch in flight at the kill is in doubt, named in the run's warning, and not sent again (the
held one had arrived; another one in flight may not have, and only those can be missing).
Klaviyo drops repeats by ``unique_id`` and Mixpanel by ``$insert_id``, so the resumed run sends
them again and none is lost (the fake counts the repeats it dropped)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from engagement_support import EVENT_VENDORS, build_warehouse
from harness import StateFile, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

UNDERTOW = str(Path(sys.executable).with_name("undertow"))
HELD_REQUEST = 5


def undertow(folder: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [UNDERTOW, "run", "events", "--project", str(folder), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("vendor_name", sorted(EVENT_VENDORS))
def test_kill_9_with_an_event_batch_in_flight_then_a_run_creates_no_duplicate(
    tmp_path: Path, vendor_name: str
) -> None:
    vendor = EVENT_VENDORS[vendor_name]()
    fake = vendor.fake()
    held = threading.Event()
    seen = Counter[str]()

    held_ids: list[Any] = []

    def hold(path: str, body: Any) -> float:
        seen[path] += 1
        if seen[path] == HELD_REQUEST and not held.is_set():
            held_ids.extend(vendor.request_ids(body))
            held.set()  # applied: the answer waits until the client is dead
            return 20.0
        return 0.0

    fake.hold = hold
    build_warehouse(tmp_path, views=400)
    state = StateFile(tmp_path)
    with fake.serve() as url:
        vendor.project(tmp_path, url)
        proc = undertow(tmp_path)
        assert wait_for(held.is_set, proc, 90), proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        [(status,)] = state.query("select status from undertow_runs")
        assert status == "delivering"
        fake.hold = None

        second = undertow(tmp_path)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, (out + err).decode()[-3000:]
    [record] = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert record["status"] == "succeeded", record
    ids = Counter(vendor.event_ids(fake))
    assert max(ids.values()) == 1, {k: c for k, c in ids.items() if c > 1}
    lost = set(range(1, 401)) - set(ids)
    assert held_ids and not lost & set(held_ids), "the held batch had arrived"
    if vendor_name == "braze":
        warning = record.get("warning") or ""
        in_doubt = re.findall(r"batch (\d+) \(", warning)
        assert in_doubt and "not sent again" in warning, record
        assert len(lost) <= 25 * (len(in_doubt) - 1), (lost, warning)
    else:
        assert not lost, lost
        if vendor.dropped is not None:  # the held batch went again and the vendor dropped it
            assert vendor.dropped(fake) >= len(held_ids), vendor.dropped(fake)
