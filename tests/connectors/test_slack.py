"""Slack against its local fake (undertow/testing/slack.py): the shared template suite for the
Web API, then what is Slack's own (a notification sink: no idempotency, webhooks)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
import pytest

from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.slack import SlackDestination
from undertow.errors import ConfigError, UndertowError
from undertow.testing.slack import SlackFake
from undertow.testing.template import DestinationTests

pytestmark = pytest.mark.connectors

CHANNEL = "C0123456789"
BLOCK = {"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}


def posted(fake: SlackFake) -> list[dict[str, Any]]:
    """The records carried by the posted messages, in order (the default text ends in JSON)."""
    return [orjson.loads(m["text"].split(": ", 1)[1]) for m in fake.messages[CHANNEL]]


class TestSlackWebApi(DestinationTests):
    destination = SlackDestination
    fake = SlackFake
    token = "xoxb-template-secret-0000-aaaa"
    secret_field = "token"
    match = None
    config: ClassVar[dict[str, Any]] = {
        "channel": CHANNEL,
        "blocks": "{{ record.blocks | tojson }}",
        "text": "{{ operation }} {{ key }}: {{ record | tojson }}",
        "messages_per_second": 100,
    }
    fake_options: ClassVar[dict[str, Any]] = {"window_seconds": 0.0001}
    invalid = ({"email": "too-many@x.com", "blocks": [BLOCK] * 51}, "Slack invalid_blocks")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"email": f"u{n}@example.com", "plan": f"v{version}", "blocks": [BLOCK]}

    def stored(self, fake: SlackFake, record: dict[str, Any]) -> dict[str, Any] | None:
        found = [r for r in posted(fake) if r["email"] == record["email"]]
        return found[-1] if found else None

    def count(self, fake: SlackFake) -> int:
        return len({r["email"] for r in posted(fake)})

    def test_upsert_then_update_is_idempotent(self, served: SlackFake) -> None:
        """Slack has no idempotency (NOTES.md): each delivery posts one message per row, in
        order, and the last message of a row holds its last values."""
        first = [self.record(n) for n in range(3)]
        assert self.run_ok(served, first) == BatchResult()
        assert self.run_ok(served, [self.record(n, 1) for n in range(3)]) == BatchResult()
        assert [r["plan"] for r in posted(served)] == ["v0"] * 3 + ["v1"] * 3
        assert [r["email"] for r in posted(served)][:3] == [f"u{n}@example.com" for n in range(3)]

    def test_deletes_remove_records_and_an_unknown_one_is_accepted(self, served: SlackFake) -> None:
        """A removed row is a message too (operation delete), nothing is removed from Slack."""
        assert self.run_ok(served, [self.record(1)], Operation.DELETE) == BatchResult()
        assert served.messages[CHANNEL][-1]["text"].startswith("delete row-0: ")


def make(fake: SlackFake, **config: Any) -> SlackDestination:
    values = {"type": "slack", "base_url": fake.url, **config}
    return SlackDestination(SlackDestination.Config.model_validate(values), name="alerts")


def batch(records: list[dict[str, Any]], op: Operation = Operation.UPSERT) -> Batch:
    return Batch(
        sync="bounces",
        operation=op,
        number=0,
        idempotency_key="r-0",
        keys=[str(i) for i in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
    )


def write(dest: SlackDestination, records: list[dict[str, Any]]) -> BatchResult:
    async def main() -> BatchResult:
        try:
            return await dest.write_batch(batch(records))
        finally:
            await dest.close()

    return asyncio.run(main())


def test_a_sandboxed_template_per_row_and_a_row_it_cannot_render() -> None:
    fake = SlackFake("xoxb-1", window_seconds=0.01)
    with fake.serve():
        dest = make(
            fake,
            token="xoxb-1",
            channel=CHANNEL,
            text="Email to {{ record.email }} bounced: {{ record.reason }}",
        )
        result = write(dest, [{"email": "a@x.com", "reason": "mailbox full"}, {"email": "b@x.com"}])
        assert list(result.rejected) == [1] and "reason" in result.rejected[1]
        assert [m["text"] for m in fake.messages[CHANNEL]] == [
            "Email to a@x.com bounced: mailbox full"
        ]
        evil = make(fake, token="xoxb-1", channel=CHANNEL, text="{{ record.__class__.__mro__ }}")
        refused = write(evil, [{"email": "a@x.com"}])
        assert "sandbox" in refused.rejected[0] or "template failed" in refused.rejected[0]
    with pytest.raises(ConfigError, match="syntax error"):
        make(fake, token="x", channel=CHANNEL, text="{{ record.email ")


def test_channel_the_bot_is_not_in_stops_the_run_with_the_fix() -> None:
    fake = SlackFake("xoxb-1", not_member=("C0NOTMEMBER",), window_seconds=0.01)
    with fake.serve(), pytest.raises(UndertowError, match="not_in_channel") as caught:
        write(make(fake, token="xoxb-1", channel="C0NOTMEMBER"), [{"a": 1}])
    assert "/invite" in (caught.value.hint or "")


def test_incoming_webhook_posts_text_and_a_bad_payload_is_rejected() -> None:
    fake = SlackFake(window_seconds=0.01)
    with fake.serve() as url:
        hook = f"{url}{fake.hook_path}"
        dest = make(fake, webhook_url=hook, text="{{ record.msg }}")
        result = write(dest, [{"msg": "hello"}, {"msg": " "}])
        assert list(result.rejected) == [1] and "empty" in result.rejected[1]
        assert fake.hook_messages == [{"text": "hello"}]
        gone = make(fake, webhook_url=f"{url}/services/T0/B0/revoked", text="{{ record.msg }}")
        with pytest.raises(UndertowError, match="no_service") as caught:
            write(gone, [{"msg": "x"}])
        assert "revoked" not in str(caught.value), "the webhook URL is the credential"


def test_webhook_rate_limit_is_honoured() -> None:
    fake = SlackFake(window_seconds=0.2)
    with fake.serve() as url:
        dest = make(fake, webhook_url=f"{url}{fake.hook_path}", text="{{ record.n }}")
        from undertow.destinations import retry
        from undertow.destinations.retry import RetryPolicy

        async def main() -> BatchResult:
            with retry.delivery(
                policy=RetryPolicy(max_attempts=8, base_delay=0.01, max_delay=0.3),
                stop=asyncio.Event(),
                max_wait=5,
            ):
                try:
                    return await dest.write_batch(batch([{"n": i} for i in range(3)]))
                finally:
                    await dest.close()

        assert asyncio.run(main()) == BatchResult()
        assert [m["text"] for m in fake.hook_messages] == ["0", "1", "2"]


def test_config_needs_one_way_to_post() -> None:
    with pytest.raises(ValueError, match="channel"):
        SlackDestination.Config.model_validate({"type": "slack", "token": "xoxb-1"})
    with pytest.raises(ValueError, match="not both"):
        SlackDestination.Config.model_validate({"type": "slack"})


def test_digest_posts_one_message_per_run_with_its_counts_and_first_rows(
    tmp_path: Any,
) -> None:
    """Through a project (the run-end hook): one message per run that sent rows, none for a
    quiet run; the rows' own template gives the digest's lines."""
    from project_support import run_one, users_project, warehouse

    fake = SlackFake("xoxb-digest-0000", window_seconds=0.01)
    with fake.serve() as url:
        block = (
            f'{{type: slack, base_url: "{url}", token: xoxb-digest-0000, channel: {CHANNEL}, '
            'digest: true, digest_rows: 3, text: "{{ record.email }}"}'
        )
        project = users_project(
            tmp_path,
            [(i, f"u{i}@x.com") for i in range(5)],
            destinations=f"ops: {block}",
            syncs="  users_ops: {model: users, destination: ops, mode: upsert, "
            "mappings: {email: email}}\n",
        )
        assert run_one(project, "users_ops").status == "succeeded"
        warehouse(tmp_path, "update users set email = 'new@x.com' where id = 2")
        assert run_one(project, "users_ops").status == "succeeded"
        assert run_one(project, "users_ops").status == "succeeded"  # nothing changed
        texts = [m["text"] for m in fake.messages[CHANNEL]]
    assert texts == [
        "*users_ops*: 5 added, 0 changed, 0 removed (succeeded)\n"
        "• u0@x.com\n• u1@x.com\n• u2@x.com\n…and 2 more",
        "*users_ops*: 0 added, 1 changed, 0 removed (succeeded)\n• new@x.com\n",
    ]
