"""The `serve` trigger as docs/server.md shows it: `curl -d '{"full": false}'` sends the JSON
with curl's default form content type, and the API must take it (it answered 422)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from project_support import users_project

from undertow.server.app import create_app
from undertow.testing.server import serve_in_thread

pytestmark = [pytest.mark.orchestration, pytest.mark.usefixtures("script")]

TOKEN = "trigger-token-9f2c"


def post(url: str, body: bytes, content_type: str | None) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", None, "application/json", "text/plain"]
)
def test_a_json_body_is_taken_whatever_its_content_type(
    tmp_path: Path, content_type: str | None
) -> None:
    project = users_project(
        tmp_path / "p",
        [(1, "a@x.com")],
        syncs="  users_sync: {model: users, destination: dest, mode: upsert}\n",
    )
    try:
        with serve_in_thread(create_app(project, token=TOKEN)) as server:
            url = f"{server.url}/api/syncs/users_sync/trigger"
            status, body = post(url, b'{"full": true}', content_type)
            assert status == 202, body
            assert body["full"] is True and body["queued"] is True
            assert post(url, b"", content_type)[1]["full"] is False  # no body: not full
            status, body = post(url, b"{oops", content_type)
            assert status == 422 and "JSON" in json.dumps(body)
            status, body = post(url, b'{"ful": true}', content_type)
            assert status == 422 and "ful" in json.dumps(body)
    finally:
        project.close()
