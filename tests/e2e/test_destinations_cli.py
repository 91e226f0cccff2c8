"""`undertow destinations`, `undertow fake TYPE`, `undertow demo --destination TYPE` and
`undertow init DIR --destination TYPE`, as a user runs them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from undertow.console import TerminalConsole
from undertow.demo_kit import run_destination_demo
from undertow.testing.server import free_port

pytestmark = pytest.mark.e2e

UNDERTOW = str(Path(sys.executable).with_name("undertow"))


def undertow(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [UNDERTOW, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def test_destinations_lists_every_type_with_its_limits() -> None:
    done = undertow("destinations", "--json")
    assert done.returncode == 0, done.stderr
    entries = {e["type"]: e for e in json.loads(done.stdout)}
    assert {"hubspot", "webhook", "file", "postgres", "memory"} <= set(entries)
    hubspot = entries["hubspot"]
    assert hubspot["batch_size"] == 100
    assert hubspot["rate_limits"][0]["requests"] == 190
    assert hubspot["rate_limits"][0]["doc"].startswith("https://developers.hubspot.com/")
    assert hubspot["objects"] == ["contacts", "companies", "deals"]
    assert hubspot["identifiers"] == {"required": True, "fields": None, "min": 1, "max": 1}
    assert hubspot["fake"] and hubspot["demo"]
    table = undertow("destinations")
    assert table.returncode == 0 and "hubspot" in table.stdout and "190/10s" in table.stdout


def test_fake_serves_a_destination_in_the_foreground_until_ctrl_c() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [UNDERTOW, "fake", "hubspot", "--port", str(port), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        announced = json.loads(proc.stdout.readline())
        assert announced["url"] == f"http://127.0.0.1:{port}"
        request = urllib.request.Request(
            f"{announced['url']}/crm/v3/objects/contacts?limit=1",
            headers={"Authorization": f"Bearer {announced['credential']}"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert json.loads(answer.read()) == {"results": []}
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_fake_options_declare_the_account_a_project_needs() -> None:
    """A project mapping its own HubSpot properties validates against `undertow fake`."""
    port = free_port()
    proc = subprocess.Popen(
        [UNDERTOW, "fake", "hubspot", "--port", str(port), "--json",
         "-o", 'properties={"contacts": ["plan", "seats"]}', "-o", "rate_limit_per_10s=50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        announced = json.loads(proc.stdout.readline())
        request = urllib.request.Request(
            f"{announced['url']}/crm/v3/properties/contacts",
            headers={"Authorization": f"Bearer {announced['credential']}"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            names = {p["name"] for p in json.loads(answer.read())["results"]}
        assert {"plan", "seats", "email"} <= names
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)

    typo = undertow("fake", "hubspot", "-o", "propertys={}")
    assert typo.returncode == 1 and "has no such option" in typo.stderr, typo.stderr
    assert "did you mean 'properties'" in typo.stderr and "Traceback" not in typo.stderr
    shape = undertow("fake", "hubspot", "-o", "properties")
    assert shape.returncode == 1 and "expected NAME=VALUE" in shape.stderr, shape.stderr
    wrong = undertow("fake", "hubspot", "-o", 'properties={"gadgets": ["x"]}')
    assert wrong.returncode == 1 and "refused --option properties" in wrong.stderr, wrong.stderr
    assert "gadgets" in wrong.stderr and "Traceback" not in wrong.stderr


def test_fake_of_a_type_without_one_says_which_have_one() -> None:
    done = undertow("fake", "memory")
    assert done.returncode == 1
    assert "has no local fake" in done.stderr and "hubspot" in done.stderr


def test_demo_of_a_type_without_a_profile_names_those_with_one(tmp_path: Path) -> None:
    done = undertow("demo", "--destination", "memory", "--dir", str(tmp_path / "d"))
    assert done.returncode == 1
    assert "has no demo" in done.stderr and "hubspot" in done.stderr


def test_the_generic_demo_runs_twice_and_sends_only_the_changes(tmp_path: Path) -> None:
    console = TerminalConsole(json_mode=True)
    started = time.monotonic()
    ok = run_destination_demo(
        tmp_path / "demo", type_name="hubspot", customers=500, console=console
    )
    assert ok and time.monotonic() - started < 120
    assert (tmp_path / "demo" / "undertow.yml").read_text().count("type: hubspot") == 1


@pytest.mark.parametrize("type_name", ["mailchimp", "marketo", "sendgrid"])
def test_the_demo_of_an_email_tool_succeeds_on_5000_customers_then_sends_only_the_changes(
    type_name: str, tmp_path: Path
) -> None:
    """Issue 11's acceptance, as a user types it."""
    args = ("--destination", type_name, "--customers", "5000", "--json")
    done = undertow("demo", *args, "--dir", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = json.loads(done.stdout)["runs"]
    assert first["status"] == "succeeded" and first["rejected"] == 0, first
    assert first["sent"] == first["extracted"] > 4000
    assert second["status"] == "succeeded" and second["rejected"] == 0, second
    assert second["unchanged"] > 4000 and 0 < second["sent"] == second["planned"] < 200, second


def test_init_with_a_destination_writes_a_project_that_validates(tmp_path: Path) -> None:
    folder = tmp_path / "acme"
    done = undertow("init", str(folder), "--destination", "hubspot")
    assert done.returncode == 0, done.stderr
    text = (folder / "undertow.yml").read_text()
    assert "${HUBSPOT_TOKEN}" in text and "${HUBSPOT_BASE_URL:-https://api.hubapi.com}" in text
    assert "local fake" not in text  # the fake's raised limit is not a starter default
    (folder / ".env").write_text("HUBSPOT_TOKEN=pat-not-checked-offline\n")
    checked = undertow("validate", "--project", str(folder), "--offline")
    assert checked.returncode == 0, checked.stdout + checked.stderr


ANALYTICS = ("mixpanel", "amplitude", "segment", "posthog")
"""Issue 17's product analytics destinations: each one's demo, as its acceptance states it."""


@pytest.mark.parametrize("type_name", ANALYTICS)
def test_the_demo_of_each_analytics_destination_sends_only_the_changes_the_second_time(
    tmp_path: Path, type_name: str
) -> None:
    done = undertow(
        "demo", "--destination", type_name, "--customers", "5000", "--json",
        "--dir", str(tmp_path / "d"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    first, second = json.loads(done.stdout)["runs"]
    assert first["status"] == "succeeded" and first["rejected"] == 0, first
    assert first["sent"] == first["extracted"] > 4000
    assert second["status"] == "succeeded", second
    assert 0 < second["sent"] == second["added"] + second["changed"] < first["sent"] // 10
