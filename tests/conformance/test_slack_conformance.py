"""Slack's requests and the fake's answers checked against ../shared/specs/slack: the
OpenAPI file for chat.postMessage (the kit's Contract, undertow/testing/conformance.py),
NOTES.md for the rest.

Two things the spec says that NOTES.md overrides, handled here in the open:

* the spec declares a required ``token`` *header* (Slack's legacy form); NOTES.md says the
  token goes as ``Authorization: Bearer xoxb-...``, which is what the destination sends, so
  each captured request is checked with a stand-in ``token`` header;
* openapi-core warns "Unsupported scheme type" on the spec's ``slackAuth`` scheme; that one
  warning is ignored (it is about the spec, not about the request).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from undertow.destinations.base import Batch, Operation
from undertow.destinations.slack import SlackDestination
from undertow.errors import UndertowError
from undertow.testing.conformance import Contract
from undertow.testing.slack import SlackFake

pytestmark = [
    pytest.mark.conformance,
    pytest.mark.filterwarnings("ignore:Unsupported scheme type:UserWarning"),
]

SPECS = Path(__file__).resolve().parents[2] / ".." / "shared" / "specs" / "slack"
SPEC = SPECS / "slack-web-chat.postMessage.openapi.json"
NOTES = (SPECS / "NOTES.md").read_text()
POST = "/api/chat.postMessage"


def post(fake: SlackFake, records: list[dict[str, Any]], **config: Any) -> None:
    values = {
        "type": "slack",
        "base_url": fake.url,
        "token": "xoxb-c",
        "channel": "C0123456789",
        **config,
    }
    dest = SlackDestination(SlackDestination.Config.model_validate(values), name="alerts")
    keys = [str(i) for i in range(len(records))]
    b = Batch("s", Operation.UPSERT, 0, "r-0", keys, [orjson.dumps(r).decode() for r in records])

    async def main() -> None:
        try:
            await dest.write_batch(b)
        finally:
            await dest.close()

    asyncio.run(main())


def check(
    contract: Contract, request: Any, status: int | None = None, answer: bytes | None = None
) -> list[str]:
    headers = {**request.headers, "token": "stand-in"}  # NOTES: Authorization: Bearer
    found = contract.check(
        "POST",
        POST,
        headers=headers,
        body=request.raw,
        status=status,
        response_headers={"content-type": "application/json"} if answer else None,
        response_body=answer,
    )
    return [str(v) for v in found]


def test_every_request_the_destination_sends_conforms_to_the_spec() -> None:
    contract = Contract.load(SPEC)
    fake = SlackFake("xoxb-c", window_seconds=0.0001)
    with fake.serve():
        blocks = '[{"type": "section", "text": {"type": "mrkdwn", "text": "{{ record.a }}"}}]'
        post(fake, [{"a": 1}, {"a": 2}], blocks=blocks)
        with pytest.raises(UndertowError, match="channel_not_found"):
            post(fake, [{"a": 3}], channel="C0UNKNOWN00")
    posts = [r for r in fake.requests if r.path == POST]
    assert len(posts) == 3
    for request in posts:
        assert check(contract, request) == []
        assert request.credentials, "Authorization: Bearer is sent (NOTES.md)"
        assert isinstance(request.body.get("blocks", ""), str), "blocks go as a JSON string (form)"


def test_the_fakes_answers_match_the_response_schemas() -> None:
    contract = Contract.load(SPEC)
    fake = SlackFake("xoxb-c", window_seconds=0.0001)
    with fake.serve():
        ok = _post(fake.url, {"channel": "C0123456789", "text": "hi"})
        bad = _post(fake.url, {"channel": "C0NOPE00000", "text": "hi"})
    request = next(r for r in fake.requests if r.path == POST)
    assert check(contract, request, 200, ok) == []
    assert orjson.loads(bad) == {"ok": False, "error": "channel_not_found"}
    assert check(contract, request, 200, bad) != [], "an error answer is not the success schema"


def test_the_contract_finds_what_breaks_the_spec() -> None:
    contract = Contract.load(SPEC)
    found = contract.check(
        "POST",
        POST,
        headers={"content-type": "application/x-www-form-urlencoded", "token": "x"},
        body=b"text=no+channel",
    )
    assert found and "channel" in str(found[0])


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


def _post(url: str, form: dict[str, str]) -> bytes:
    import urllib.request

    request = urllib.request.Request(
        f"{url}{POST}", data=urlencode(form).encode(), headers={"Authorization": "Bearer xoxb-c"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return bytes(answer.read())
