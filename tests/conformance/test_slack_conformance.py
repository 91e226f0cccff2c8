"""Slack's requests and the fake's answers checked against ../shared/specs/slack: the
OpenAPI file for chat.postMessage (undertow/testing/openapi.py), NOTES.md for the rest."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from undertow.destinations.base import Batch, Operation
from undertow.destinations.slack import SlackDestination
from undertow.errors import UndertowError
from undertow.testing.openapi import OpenAPI
from undertow.testing.slack import SlackFake

pytestmark = pytest.mark.conformance

SPECS = Path(__file__).resolve().parents[2] / ".." / "shared" / "specs" / "slack"
SPEC = OpenAPI.load(SPECS / "slack-web-chat.postMessage.openapi.json")
NOTES = (SPECS / "NOTES.md").read_text()


def post(fake: SlackFake, records: list[dict[str, Any]], **config: Any) -> None:
    values = {
        "type": "slack",
        "base_url": fake.url,
        "token": "xoxb-c",
        "channel": "C0123456789",
        **config,
    }
    dest = SlackDestination(SlackDestination.Config.model_validate(values), name="alerts")
    b = Batch(
        "s",
        Operation.UPSERT,
        0,
        "r-0",
        [str(i) for i in range(len(records))],
        [orjson.dumps(r).decode() for r in records],
    )

    async def main() -> None:
        try:
            await dest.write_batch(b)
        finally:
            await dest.close()

    asyncio.run(main())


def test_every_request_conforms_to_the_spec_and_every_answer_too() -> None:
    fake = SlackFake("xoxb-c", window_seconds=0.01)
    with fake.serve():
        post(
            fake,
            [{"a": 1}, {"a": 2}],
            blocks='[{"type": "section", "text": {"type": "mrkdwn", "text": "{{ record.a }}"}}]',
        )
        with pytest.raises(UndertowError, match="channel_not_found"):
            post(fake, [{"a": 3}], channel="C0UNKNOWN00")  # an error answer
    posts = [r for r in fake.requests if r.path == "/api/chat.postMessage"]
    assert len(posts) == 3
    for request in posts:
        problems = SPEC.check_request(
            "POST", "/chat.postMessage", request.headers["content-type"], request.body
        )
        assert problems == [], problems
        assert request.credentials, "Authorization: Bearer is sent (NOTES.md)"
        assert isinstance(request.body.get("blocks", ""), str), "blocks go as a JSON string (form)"


def test_the_fakes_answers_match_the_response_schemas() -> None:
    fake = SlackFake("xoxb-c", window_seconds=0.01)
    with fake.serve():
        ok = _post(fake.url, {"channel": "C0123456789", "text": "hi"})
        bad = _post(fake.url, {"channel": "C0NOPE00000", "text": "hi"})
    assert SPEC.check_response("POST", "/chat.postMessage", 200, ok) == []
    assert SPEC.check_response("POST", "/chat.postMessage", 0, bad) == []  # the default schema


def _post(url: str, form: dict[str, str]) -> Any:
    import urllib.parse
    import urllib.request

    request = urllib.request.Request(
        f"{url}/api/chat.postMessage",
        data=urllib.parse.urlencode(form).encode(),
        headers={"Authorization": "Bearer xoxb-c"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return orjson.loads(answer.read())


def test_the_notes_still_say_what_the_destination_relies_on() -> None:
    for fact in (
        "Authorization: Bearer",
        "HTTP 429",
        "Retry-After",
        '{"ok":false,"error":',
        "50 blocks is rejected (`invalid_blocks`)",
        "plain text `ok`",
        "1 message per second per webhook",
        "Idempotency: none",
    ):
        assert fact in NOTES, fact


def test_the_checker_finds_what_breaks_the_spec() -> None:
    assert SPEC.check_request(
        "POST", "/chat.postMessage", "application/x-www-form-urlencoded", {"text": "no channel"}
    ) == ["body: required 'channel' is missing"]
    assert SPEC.check_request(
        "POST",
        "/chat.postMessage",
        "application/x-www-form-urlencoded",
        {"channel": "C1", "mrkdwn": "maybe"},
    )
    assert SPEC.check_response(
        "POST", "/chat.postMessage", 200, {"ok": True, "channel": "C1", "ts": "1", "message": {}}
    )
