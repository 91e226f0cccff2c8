"""Screenshots of every page of the web UI at 1280x800, for docs/ui.md (`make screenshots`).

Serves a demo-like project (``browser_support.write_demo``) with a real ``undertow serve``,
runs it twice (the second run after the warehouse changed, so the plan preview has
something to show), and photographs each page in headless Chromium::

    .venv/bin/python tests/e2e/ui_screenshots.py docs/ui
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from browser_support import chromium, login, write_demo

from undertow.samples import change_customers
from undertow.testing.hubspot import DEMO_PROPERTIES, HubSpotFake
from undertow.testing.server import serve_in_thread
from undertow.testing.serving import ServeProcess, wait_for

TOKEN = "screenshots-token-0123456789"
HUBSPOT = "pat-screenshots-fake"
SYNC = "customers_to_hubspot"


def finished(server: ServeProcess, count: int) -> bool:
    runs = server.call("GET", f"/api/syncs/{SYNC}/runs")[1]
    return len(runs) >= count and runs[0]["finished_at"] is not None


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fake = HubSpotFake(HUBSPOT, rate_limit_per_10s=1000, properties=DEMO_PROPERTIES)
    with serve_in_thread(fake.app) as hubspot, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "demo"
        write_demo(folder, hubspot=hubspot.url, customers=3000, rate=40, token=HUBSPOT)
        server = ServeProcess(folder, token=TOKEN, args=["--interval", "0.3"])
        server.start()
        try:
            server.call("POST", f"/api/syncs/{SYNC}/trigger")
            wait_for(lambda: finished(server, 1), "the first run", 180, server)
            change_customers(folder / "warehouse.duckdb")
            with chromium() as browser:
                page = browser.new_page()
                page.goto(server.url + "/login")
                shoot(page, out / "login.png")
                login(page, server.url, TOKEN)
                page.goto(server.url + f"/syncs/{SYNC}/plan")
                shoot(page, out / "plan.png")
                page.goto(server.url + f"/syncs/{SYNC}/debugger")
                page.wait_for_timeout(400)
                page.click("button[data-action=run]")
                page.wait_for_selector("details.exchange")
                runs = server.call("GET", f"/api/syncs/{SYNC}/runs?limit=1")[1]
                page.goto(server.url + f"/runs/{runs[0]['run_id']}")
                page.wait_for_timeout(1200)
                shoot(page, out / "run-live.png")
                wait_for(lambda: finished(server, 2), "the second run", 180, server)
                time.sleep(1.5)  # `after:` runs the second sync
                page.goto(server.url + "/")
                shoot(page, out / "overview.png")
                page.goto(server.url + f"/syncs/{SYNC}")
                shoot(page, out / "sync.png")
                first = server.call("GET", f"/api/syncs/{SYNC}/runs")[1][-1]
                page.goto(server.url + f"/runs/{first['run_id']}")
                page.locator("table.errors").scroll_into_view_if_needed()
                shoot(page, out / "run.png")
                # a row HubSpot refuses (a 207 with its error), tested, then found by its key
                tested = server.call(
                    "POST", f"/api/syncs/{SYNC}/test", {"key": {"customer_id": "7"}}
                )
                print("test of row 7:", tested[0], str(tested[1])[:300])
                page.goto(server.url + f"/syncs/{SYNC}/debugger?key=7")
                page.locator("details.exchange summary").first.click()
                shoot(page, out / "debugger.png")
                page.goto(server.url + f"/syncs/{SYNC}/model")
                shoot(page, out / "model.png")
                page.goto(server.url + f"/syncs/{SYNC}/test")
                page.fill("input[name='key.customer_id']", "12")
                page.click("button[data-action=test]")
                page.wait_for_selector("#test-outcome")
                shoot(page, out / "test.png")
                page.goto(server.url + "/docs")
                page.wait_for_selector(".swagger-ui .opblock")
                shoot(page, out / "docs.png")
        finally:
            server.stop()
    print(f"wrote {len(list(out.glob('*.png')))} screenshots to {out}")


def shoot(page: Any, path: Path) -> None:
    page.wait_for_timeout(250)
    page.screenshot(path=str(path))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/ui"))
