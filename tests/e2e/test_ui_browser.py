"""The web UI in real headless Chromium against a real `undertow serve` process.

A demo-like project (customers -> the local fake HubSpot, three of them with an email
HubSpot refuses) is served by ``undertow serve`` started here; the browser logs in with
the API token, watches a run and the debugger live, reads the vendor's message on a run's
rejected rows, retries them, tests a row, pauses and resumes. No page, API answer or
debugger entry may contain a secret: every text the tests saw is searched for both.
"""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from browser_support import chromium, login, write_demo

from undertow.testing.hubspot import DEMO_PROPERTIES, HubSpotFake
from undertow.testing.server import serve_in_thread
from undertow.testing.serving import ServeProcess, wait_for

pytestmark = pytest.mark.timeout(240)

API_TOKEN = "ui-api-token-c0ffee-1234"
HUBSPOT_TOKEN = "pat-ui-test-8b2d4e6f"
SYNC = "customers_to_hubspot"
SEEN: list[str] = []
"""Every page, fragment and API answer the tests read: searched for secrets at the end."""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    fake = HubSpotFake(HUBSPOT_TOKEN, rate_limit_per_10s=1000, properties=DEMO_PROPERTIES)
    with serve_in_thread(fake.app) as hubspot:
        folder = tmp_path_factory.mktemp("ui") / "demo"
        write_demo(folder, hubspot=hubspot.url, customers=300, rate=10, token=HUBSPOT_TOKEN)
        server = ServeProcess(folder, token=API_TOKEN, args=["--interval", "0.2"])
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as context:
        yield context


@pytest.fixture
def page(browser: Any, served: ServeProcess) -> Iterator[Any]:
    page = browser.new_page()
    page.on("response", lambda r: _keep(r))
    try:
        yield page
    finally:
        SEEN.append(page.content())
        page.close()


def _keep(response: Any) -> None:
    kind = response.headers.get("content-type", "")
    if "html" in kind or "json" in kind:
        with contextlib.suppress(Exception):  # a stream cut short by the page moving on
            SEEN.append(response.text())


def api(served: ServeProcess, method: str, path: str, body: Any = None) -> Any:
    status, answer = served.call(method, path, body)
    SEEN.append(str(answer))
    assert status < 400, (path, status, answer)
    return answer


def latest_run(served: ServeProcess) -> dict[str, Any]:
    runs = api(served, "GET", f"/api/syncs/{SYNC}/runs?limit=1")
    return runs[0] if runs else {}


def raw(served: ServeProcess, method: str, path: str, **headers: str) -> tuple[int, str, str]:
    """(status, Location, body) of a request made without following redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    data = b"csrf=x" if method == "POST" else None
    request = urllib.request.Request(served.url + path, data=data, method=method, headers=headers)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.headers.get("location", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("location", ""), exc.read().decode()


def test_a_wrong_or_missing_token_never_reaches_a_page_or_an_action(
    served: ServeProcess, page: Any
) -> None:
    for path in ("/", f"/syncs/{SYNC}", f"/syncs/{SYNC}/debugger", "/runs/x", "/docs"):
        status, location, body = raw(served, "GET", path)
        assert status == 303 and location.startswith("/login?next="), (path, status)
        assert SYNC not in body
    for action in ("run", "full", "pause", "resume", "retry", "test"):
        status, _, body = raw(served, "POST", f"/syncs/{SYNC}/{action}")
        assert status == 403 and "CSRF" in body, action
    # a forged session cookie is no session
    status, _, _ = raw(served, "GET", "/", Cookie="undertow_session=v1.1.abc.def")
    assert status == 303
    page.goto(served.url + "/")
    assert "/login" in page.url
    page.fill("input[name=token]", "not-the-token")
    page.click("button[type=submit]")
    page.wait_for_selector("p.notice.bad")
    assert "wrong API token" in page.content() and "/login" in page.url
    assert latest_run(served) == {}  # nothing ran


def test_log_in_and_see_the_demo_syncs(served: ServeProcess, page: Any) -> None:
    login(page, served.url, API_TOKEN)
    page.goto(served.url + "/")
    rows = page.locator("table.syncs tbody tr")
    assert rows.count() == 2
    assert page.locator(f"tr[data-sync={SYNC}]").inner_text().startswith(SYNC)
    assert (
        "after sync customers_to_hubspot"
        in page.locator("tr[data-sync=enterprise_to_hubspot]").inner_text()
    )
    cookie = next(c for c in page.context.cookies() if c["name"] == "undertow_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"


def test_the_debugger_shows_requests_arriving_while_a_run_is_in_progress(
    served: ServeProcess, page: Any
) -> None:
    login(page, served.url, API_TOKEN)
    page.goto(served.url + f"/syncs/{SYNC}/debugger")
    assert page.locator("details.exchange").count() == 0
    page.wait_for_timeout(300)  # the live stream connects
    page.click("button[data-action=run]")
    page.wait_for_selector("details.exchange", timeout=30_000)
    assert latest_run(served).get("finished_at") is None  # arrived live, mid-run
    # a locator, not wait_for_function: the page's CSP (script-src 'self') refuses the
    # string evaluation that wait_for_function needs
    page.locator("details.exchange").nth(2).wait_for(state="attached")
    entry = page.locator("details.exchange").first.get_attribute("data-entry")
    first = page.locator(f"details.exchange[data-entry='{entry}']")  # new ones arrive on top
    first.locator("summary").click()
    text = first.inner_text()
    assert "/crm/v3/objects/contacts/batch/upsert" in text and "authorization: ***" in text
    wait_for(lambda: latest_run(served).get("finished_at") is not None, "the run to end", 90)


def test_a_run_with_rejected_rows_shows_the_vendors_message_and_retries_them(
    served: ServeProcess, page: Any
) -> None:
    wait_for(lambda: latest_run(served).get("finished_at") is not None, "a finished run", 120)
    run = latest_run(served)
    assert run["status"] == "succeeded" and run["rejected"] == 3, run
    login(page, served.url, API_TOKEN)
    page.goto(served.url + f"/syncs/{SYNC}")
    page.click(f"a[href='/runs/{run['run_id']}']")
    page.wait_for_selector("table.errors")
    errors = page.locator("table.errors tbody tr")
    assert errors.count() == 3
    assert "Email address not-an-email-3 is invalid" in page.locator("table.errors").inner_text()
    # the data is fixed upstream, then "Retry these rows"
    with duckdb.connect(str(served.folder / "warehouse.duckdb")) as con:
        con.execute(
            "UPDATE customers SET email = 'fixed' || customer_id || '@example.com' "
            "WHERE customer_id IN (3, 7, 11)"
        )
    page.click("button[data-action=retry]")
    page.wait_for_selector("p.notice[role=status]")
    assert "queued a retry" in page.content()
    wait_for(lambda: latest_run(served).get("trigger") == "retry", "the retry run", 60)
    wait_for(lambda: latest_run(served).get("finished_at") is not None, "the retry to end", 60)
    retried = latest_run(served)
    assert (retried["status"], retried["sent"], retried["succeeded"]) == ("succeeded", 3, 3)
    assert api(served, "GET", f"/api/runs/{run['run_id']}/errors")[0]["resolved_at"] is not None


def test_a_run_page_updates_live_until_the_run_ends(served: ServeProcess, page: Any) -> None:
    login(page, served.url, API_TOKEN)
    api(served, "POST", f"/api/syncs/{SYNC}/trigger", {"full": True})
    wait_for(lambda: latest_run(served).get("trigger") == "api", "the full run to start", 30)
    run = latest_run(served)
    page.goto(served.url + f"/runs/{run['run_id']}")
    if run.get("finished_at") is None:
        assert page.locator("#run-live[sse-connect]").count() == 1
    page.wait_for_selector("#run-status.succeeded", timeout=90_000)
    assert page.locator("td[data-count=sent]").inner_text() == f"{latest_run(served)['sent']:,}"
    assert "delivering" in page.locator("div.timeline").inner_html()


def test_test_a_row_from_the_ui(served: ServeProcess, page: Any) -> None:
    login(page, served.url, API_TOKEN)
    page.goto(served.url + f"/syncs/{SYNC}/test")
    page.fill("input[name='key.customer_id']", "5")
    page.click("button[data-action=test]")
    page.wait_for_selector("#test-outcome")
    assert page.locator("#test-outcome").inner_text() == "accepted"
    result = page.locator("#test-result").inner_text()
    assert "POST" in result and "→ 200" in result and "customer5@example.com" in result
    page.fill("input[name='key.customer_id']", "999999")
    page.click("button[data-action=test]")
    page.wait_for_selector("p.notice.bad")
    assert "no row of model 'active_customers' has key customer_id=999999" in page.content()


def test_pause_and_resume_a_sync(served: ServeProcess, page: Any) -> None:
    login(page, served.url, API_TOKEN)
    page.goto(served.url + f"/syncs/{SYNC}")
    page.click("button[data-action=pause]")
    page.wait_for_selector("button[data-action=resume]")
    assert api(served, "GET", f"/api/syncs/{SYNC}")["paused"] is True
    assert "paused" in page.locator("h1").inner_text()
    page.click("button[data-action=resume]")
    page.wait_for_selector("button[data-action=pause]")
    assert api(served, "GET", f"/api/syncs/{SYNC}")["paused"] is False


def test_model_plan_and_docs_pages_render(served: ServeProcess, page: Any) -> None:
    login(page, served.url, API_TOKEN)
    page.goto(served.url + f"/syncs/{SYNC}/model")
    assert page.locator("table.preview tbody tr").count() == 20
    assert page.locator("th.mapped").count() >= 5
    page.goto(served.url + f"/syncs/{SYNC}/plan")
    assert "to send" in page.locator("main").inner_text()
    page.goto(served.url + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)  # rendered offline


def test_no_page_answer_or_debugger_entry_holds_a_secret(served: ServeProcess) -> None:
    entries = api(served, "GET", f"/api/syncs/{SYNC}/debugger?limit=1000")
    for entry in entries[:20]:
        api(served, "GET", f"/api/debugger/{entry['id']}")
    assert len(SEEN) > 20
    for text in SEEN:
        assert API_TOKEN not in text
        assert HUBSPOT_TOKEN not in text
    log = served.output()
    assert API_TOKEN not in log and HUBSPOT_TOKEN not in log
    state = (Path(served.folder) / ".undertow" / "state.db").read_bytes()
    assert HUBSPOT_TOKEN.encode() not in state and API_TOKEN.encode() not in state
