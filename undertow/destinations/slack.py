"""Slack destination: a message per row to a channel (``chat.postMessage``) or an incoming webhook.

    destinations:
      alerts: {type: slack, token: "${SLACK_BOT_TOKEN}", channel: C0123456789,
               text: "Reminder email to {{ record.email }} bounced ({{ record.reason }})"}
      hook:   {type: slack, webhook_url: "${SLACK_WEBHOOK_URL}"}

Each changed row (added, changed or removed, per the sync's mode) becomes one message from a
sandboxed template (``undertow/destinations/_chat.py``: ``record``, ``key``, ``operation``,
``sync``); ``blocks`` is an optional template that renders a JSON array of Block Kit blocks.
A row is accepted only when Slack answered ``{"ok": true}`` (Web API) or ``ok`` (webhook).

``digest: true`` posts **one message per run** instead, when the run ends
(``Destination.finish_run``), from ``digest_text``: the run's counts and the first
``digest_rows`` rows' messages (``text`` per row). Rows are accepted as they are rendered;
the digest is posted once their run's batches are all recorded, and a digest Slack refuses
fails the run (its rows stay recorded: the digest is a notification, not a copy). After a
kill -9 the resumed run's digest has the whole run's counts but lists only the rows rendered
after the resume.

Web API (``../shared/specs/slack``: the OpenAPI file and NOTES.md): ``POST
/api/chat.postMessage`` with ``Authorization: Bearer xoxb-...``, form-encoded as the spec
describes (``blocks`` as a JSON string). Errors come as HTTP 200 ``{"ok": false, "error"}``:
``invalid_auth``, ``not_authed``, ``account_inactive``, ``token_revoked``,
``channel_not_found``, ``not_in_channel``, ``is_archived`` stop the run (every row would
fail the same way); others (``msg_too_long``, ``invalid_blocks``, ``no_text``) reject the
row with Slack's code. Slack does not deduplicate: a kill -9 may post the messages of the
batch in flight again.

Limits: about one message per second per channel, bursts allowed, plus a workspace-wide cap
(https://api.slack.com/methods/chat.postMessage#rate_limiting); 429 with ``Retry-After``
pauses every sync on the same token. Incoming webhooks: one message per second per webhook
(https://api.slack.com/apis/rate-limits#incoming-webhooks); the URL is the credential.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode, urlsplit

import orjson
from pydantic import Field, SecretStr, model_validator

from undertow.destinations._chat import MessageTemplate
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    DestinationConfig,
    Operation,
    RateLimit,
    RunEnd,
)
from undertow.destinations.kit import Auth, BearerAuth, HttpConfig, HttpDestination, Reject
from undertow.errors import ConfigError, FatalDeliveryError
from undertow.redact import register_secret, trim

POST_DOC = "https://api.slack.com/methods/chat.postMessage"
RATE_DOC = "https://api.slack.com/methods/chat.postMessage#rate_limiting"
HOOK_DOC = "https://api.slack.com/messaging/webhooks"
HOOK_RATE_DOC = "https://api.slack.com/apis/rate-limits#incoming-webhooks"
FATAL = {
    "invalid_auth": "the token is not valid",
    "not_authed": "no token was sent",
    "account_inactive": "the token's user or bot was deactivated",
    "token_revoked": "the token was revoked",
    "token_expired": "the token expired",
    "missing_scope": "the token lacks the chat:write scope",
    "channel_not_found": "the channel does not exist or the bot cannot see it",
    "not_in_channel": "the bot is not a member of the channel",
    "is_archived": "the channel is archived",
}
HOOK_FATAL = {
    403: "action_prohibited",
    404: "no_service / channel_not_found",
    410: "channel_is_archived",
}
DEFAULT_TEXT = "{{ operation }} {{ key }}: {{ record | tojson }}"
DEFAULT_DIGEST = (
    "*{{ sync }}*: {{ counts.added }} added, {{ counts.changed }} changed, "
    "{{ counts.removed }} removed{% if counts.rejected %}, {{ counts.rejected }} rejected"
    "{% endif %} ({{ status }})\n{% for line in lines %}• {{ line }}\n{% endfor %}"
    "{% if more %}…and {{ more }} more{% endif %}"
)
TEXT_LIMIT = 40_000
"""Slack truncates ``text`` beyond 40,000 characters (../shared/specs/slack/NOTES.md;
https://api.slack.com/methods/chat.postMessage#truncating): a digest is cut before it."""
COUNTS = ("planned", "added", "changed", "removed", "succeeded", "rejected", "failed")


class SlackConfig(HttpConfig):
    type: Literal["slack"] = "slack"
    base_url: str = "https://slack.com"
    token: SecretStr | None = None
    """A bot token (``xoxb-``) with ``chat:write``; or give ``webhook_url``."""
    channel: str | None = None
    """The channel id (``C0123456789``) for the Web API."""
    webhook_url: SecretStr | None = None
    """An incoming webhook (``https://hooks.slack.com/services/...``): the URL is the secret."""
    text: str = DEFAULT_TEXT
    """The message's template (also the notification fallback when ``blocks`` is set)."""
    blocks: str | None = None
    """A template rendering a JSON array of Block Kit blocks (50 at most)."""
    unfurl_links: bool = False
    messages_per_second: float = Field(default=1.0, gt=0, le=100)
    """Pace per token (Slack: about one per second per channel; raise it only for a
    workspace whose limits you know)."""
    batch_size: int = Field(default=100, ge=1, le=1000)
    digest: bool = False
    """One message per run (``digest_text``) instead of one per row."""
    digest_text: str = DEFAULT_DIGEST
    digest_rows: int = Field(default=20, ge=0, le=200)
    """How many rows' messages a digest lists (the rest are counted in ``more``)."""
    digest_empty: bool = False
    """Post a digest for a run that sent no row, too."""

    @model_validator(mode="after")
    def _one_way(self) -> SlackConfig:
        if (self.token is None) == (self.webhook_url is None):
            raise ValueError("give `token` and `channel` (Web API) or `webhook_url`, not both")
        if self.token is not None and not self.channel:
            raise ValueError(
                "`channel` is required with `token` (the channel id, e.g. C0123456789)"
            )
        return self


class SlackDestination(HttpDestination[SlackConfig]):
    """Post one Slack message per row, to a channel or an incoming webhook."""

    name: ClassVar[str] = "slack"
    vendor: ClassVar[str] = "Slack"
    fake: ClassVar[str | None] = "undertow.testing.slack:SlackFake"
    docs_url: ClassVar[str | None] = POST_DOC
    check_path: ClassVar[str | None] = None
    auth_hint: ClassVar[str] = "check the bot token (xoxb-) and its chat:write scope"
    capabilities: ClassVar[Capabilities] = Capabilities(
        operations=frozenset(
            {Operation.UPSERT, Operation.INSERT, Operation.UPDATE, Operation.DELETE}
        ),
        max_batch_size=100,
        max_concurrency=1,  # messages of one channel keep the rows' order
        rate_limit=RateLimit(1, 1.0, RATE_DOC),
        per_record_results=True,
        cite={"rate_limit": RATE_DOC},
    )

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        self._hook_path: str | None = None
        cfg = (
            config
            if isinstance(config, SlackConfig)
            else SlackConfig.model_validate(config.model_dump())
        )
        if cfg.webhook_url is not None:
            url = cfg.webhook_url.get_secret_value()
            parts = urlsplit(url)
            register_secret(url)
            if parts.scheme not in ("http", "https") or not parts.path.strip("/"):
                raise ConfigError(
                    f"destination {name!r}: `webhook_url` is not an https:// URL",
                    key=f"destinations.{name}.webhook_url",
                    hint="paste the https://hooks.slack.com/services/... URL of the webhook",
                )
            register_secret(parts.path)
            self._hook_path = parts.path
            cfg = cfg.model_copy(update={"base_url": f"{parts.scheme}://{parts.netloc}"})
        super().__init__(cfg, name=name)
        key = f"destinations.{name}"
        self.text = MessageTemplate(self.config.text, key=f"{key}.text")
        self.block_template = (
            MessageTemplate(self.config.blocks, key=f"{key}.blocks") if self.config.blocks else None
        )
        self.digest_template = (
            MessageTemplate(self.config.digest_text, key=f"{key}.digest_text")
            if self.config.digest
            else None
        )
        self.finishes_runs = self.config.digest
        self._lines: dict[str, list[str]] = {}
        """Per run: the first ``digest_rows`` rows' messages (digest mode)."""

    def make_auth(self) -> Auth:
        if self.config.token is not None:
            return BearerAuth(self.config.token.get_secret_value())
        return Auth()

    def capabilities_for(self, object: str | None) -> Capabilities:
        rate = self.config.messages_per_second
        doc = RATE_DOC if self._hook_path is None else HOOK_RATE_DOC
        limit = RateLimit(round(rate), 1.0, doc) if rate >= 1 else RateLimit(1, 1 / rate, doc)
        return replace(
            self.capabilities,
            max_batch_size=self.config.batch_size if not self.config.digest else 1000,
            rate_limit=limit,
            cite={"rate_limit": doc},
        )

    def where(self) -> str:
        target = f"channel {self.config.channel}" if self._hook_path is None else "incoming webhook"
        return f"slack destination {self.instance_name!r} ({target})"

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        try:
            text = self.text.render(batch, index, record)
            blocks: Any = None
            if self.block_template is not None:
                rendered = self.block_template.render(batch, index, record)
                try:
                    blocks = orjson.loads(rendered)
                except orjson.JSONDecodeError as exc:
                    return Reject(
                        f"`blocks` did not render a JSON array ({exc}): {trim(rendered, 120)}"
                    )
                if not isinstance(blocks, list):
                    return Reject("`blocks` must render a JSON array of blocks")
        except ValueError as exc:
            return Reject(str(exc))
        if not text.strip() and not blocks:
            return Reject("the message is empty (the template rendered nothing)")
        message: dict[str, Any] = {"text": text}
        if blocks is not None:
            message["blocks"] = blocks
        return message

    def preview(self, batch: Batch) -> list[Any]:
        return [
            self.shape(r, batch=batch, key=None, index=i) for i, r in enumerate(batch.records())
        ]

    async def check(self) -> None:
        if self._hook_path is not None:
            return  # posting is the only thing a webhook does; validate sends nothing
        response = await self.send(
            "POST", "/api/auth.test", body=b"", content_type=None, expect=frozenset({200})
        )
        self._web_answer(response, None)

    def _web_answer(self, response: Any, index: int | None) -> str | None:
        """None when Slack said ok; the rejection reason otherwise (fatal errors raise)."""
        try:
            body = response.json()
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or response.status != 200:
            raise FatalDeliveryError(
                f"{self.where()}: Slack's answer is not the documented JSON: {response.describe()}"
            )
        if body.get("ok") is True:
            return None
        error = str(body.get("error", "unknown_error"))
        if error in FATAL:
            raise FatalDeliveryError(
                f"{self.where()}: Slack {error}: {FATAL[error]}",
                hint="invite the bot to the channel (/invite @bot) and check the channel id"
                if "channel" in error
                else self.auth_hint,
            )
        return f"Slack {error}" + (f" (warning: {body['warning']})" if body.get("warning") else "")

    async def write_batch(self, batch: Batch) -> BatchResult:
        result = BatchResult()
        if self.config.digest:
            lines = self._lines.setdefault(batch.run_id or batch.sync, [])
            for item in self.items(batch, None, result):
                if len(lines) < self.config.digest_rows:
                    lines.append(item.body["text"])
            return result  # nothing is posted until the run ends
        for item in self.items(batch, None, result):
            reason = await self._post(item.body)
            if reason is not None:
                result.rejected[item.index] = reason
        return result

    async def finish_run(self, run: RunEnd) -> None:
        """Post the run's digest (digest mode): its counts and its first rows."""
        assert self.digest_template is not None
        lines = self._lines.pop(run.run_id, [])
        counts = {name: 0 for name in COUNTS} | dict(run.counts)
        if not counts["succeeded"] and not lines and not self.config.digest_empty:
            return
        try:
            text = self.digest_template.render_with(
                sync=run.sync,
                run_id=run.run_id,
                status=run.status,
                counts=counts,
                lines=lines,
                more=max(0, counts["succeeded"] - len(lines)),
            )
        except ValueError as exc:
            raise FatalDeliveryError(
                f"{self.where()}: the digest of run {run.run_id} could not be built: {exc}",
                hint="fix `digest_text` (variables: sync, run_id, status, counts, lines, more)",
            ) from None
        if len(text) > TEXT_LIMIT:
            text = text[: TEXT_LIMIT - 1] + "…"
        reason = await self._post({"text": text})
        if reason is not None:
            raise FatalDeliveryError(
                f"{self.where()}: the digest of run {run.run_id} was refused: {reason}",
                hint="the run's rows are recorded; fix `digest_text` for the next run",
            )

    async def _post(self, message: dict[str, Any]) -> str | None:
        """Post one message; None when Slack took it, else the reason (fatal errors raise)."""
        if self._hook_path is not None:
            response = await self.send(
                "POST", self._hook_path, json=message, expect=frozenset({200, 400})
            )
            text = response.body.decode("utf-8", "replace").strip()
            if response.status == 200 and text == "ok":
                return None
            if response.status == 400:
                return f"Slack webhook refused the message: {trim(text)}"
            name = HOOK_FATAL.get(response.status)
            raise FatalDeliveryError(
                f"{self.where()}: Slack refused the webhook"
                + (f" ({name})" if name else "")
                + f": {response.describe()}",
                hint="the webhook was removed or its channel archived: create a new one",
            )
        form = {
            "channel": str(self.config.channel),
            "text": message["text"],
            "unfurl_links": "true" if self.config.unfurl_links else "false",
        }
        if "blocks" in message:
            form["blocks"] = orjson.dumps(message["blocks"]).decode()
        response = await self.send(
            "POST",
            "/api/chat.postMessage",
            body=urlencode(form).encode(),
            content_type="application/x-www-form-urlencoded",
            expect=frozenset({200}),
        )
        return self._web_answer(response, None)

    def auth_error(self, response: Any) -> FatalDeliveryError:
        if self._hook_path is not None:
            return FatalDeliveryError(
                f"{self.where()}: Slack refused the webhook: {response.describe()}",
                hint="the webhook was removed or its channel archived: create a new one",
            )
        return super().auth_error(response)
