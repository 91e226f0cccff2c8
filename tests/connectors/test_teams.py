"""Microsoft Teams (Workflows webhook) against its local fake (undertow/testing/teams.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from undertow.destinations import capture, retry
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.retry import RetryPolicy
from undertow.destinations.teams import TeamsDestination
from undertow.errors import UndertowError
from undertow.testing.teams import TeamsFake

pytestmark = pytest.mark.connectors


def write(dest: TeamsDestination, records: list[dict[str, Any]]) -> BatchResult:
    b = Batch(
        "s",
        Operation.UPSERT,
        0,
        "r-0",
        [str(i) for i in range(len(records))],
        [orjson.dumps(r).decode() for r in records],
    )

    async def main() -> BatchResult:
        with retry.delivery(
            policy=RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.2),
            stop=asyncio.Event(),
            max_wait=5,
        ):
            try:
                return await dest.write_batch(b)
            finally:
                await dest.close()

    return asyncio.run(main())


def make(url: str, **config: Any) -> TeamsDestination:
    return TeamsDestination(
        TeamsDestination.Config.model_validate({"type": "teams", "webhook_url": url, **config}),
        name="ops_channel",
    )


def test_a_card_per_row_from_the_template_and_slow_down_honoured() -> None:
    fake = TeamsFake("sig-secret-123", window_seconds=0.05)
    with fake.serve():
        fake.throttle_next(1)
        dest = make(
            fake.webhook_url(), title="{{ record.name }}", text="moved to **{{ record.plan }}**"
        )
        assert write(dest, [{"name": f"n{i}", "plan": "pro"} for i in range(6)]) == BatchResult()
    assert [c["body"][0]["text"] for c in fake.cards] == [f"n{i}" for i in range(6)]
    assert fake.cards[0]["body"][1] == {
        "type": "TextBlock",
        "text": "moved to **pro**",
        "wrap": True,
    }
    assert fake.slow_downs >= 1


def test_a_card_over_28_kb_is_rejected_unsent_and_a_wrong_sig_is_fatal_and_hidden() -> None:
    fake = TeamsFake("sig-secret-123")
    seen: list[capture.Exchange] = []
    with fake.serve(), capture.listening(seen.append):
        result = write(
            make(fake.webhook_url(), text="{{ record.t }}"), [{"t": "x" * 30_000}, {"t": "ok"}]
        )
        assert list(result.rejected) == [0] and "28 KB" in result.rejected[0]
        wrong = fake.webhook_url().replace("sig-secret-123", "sig-wrong-456")
        with pytest.raises(UndertowError) as caught:
            write(make(wrong), [{"a": 1}])
    assert "ops_channel" in str(caught.value) and caught.value.hint
    for text in [str(caught.value)] + [
        e.url + repr(e.request_headers) + (e.response_body or "") for e in seen
    ]:
        assert "sig-wrong-456" not in text and "sig-secret-123" not in text
    assert len(fake.cards) == 1
