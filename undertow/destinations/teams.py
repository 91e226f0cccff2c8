"""Microsoft Teams destination: a message per row to a channel's incoming webhook (Workflows).

    destinations:
      ops_channel: {type: teams, webhook_url: "${TEAMS_WORKFLOW_URL}",
                    text: "**{{ record.name }}** moved to {{ record.plan }}"}

Teams' incoming webhooks are now Power Automate *Workflows* ("Post to a channel when a
webhook request is received"): the workflow's HTTP trigger URL, whose ``sig`` query
parameter is the credential, takes a message with an Adaptive Card attachment
(https://learn.microsoft.com/en-us/microsoftteams/platform/webhooks-and-connectors/how-to/
add-incoming-webhook). Each row's text comes from a sandboxed template
(``undertow/destinations/_chat.py``) and is sent as one card::

    {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
      "content": {"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", ...}]}}]}

A row counts as delivered on 202 Accepted (Workflows) or 200 (the older Office 365
connectors); 400 rejects the row with the answer; 401/403/404 stop the run (the workflow
was turned off or deleted); 429 (``Retry-After``) and 5xx are retried. Neither kind of
webhook deduplicates: a kill -9 may post the messages of the batch in flight again.

Limits (connectors; Microsoft states no separate numbers for Workflows' trigger beyond
Power Automate's own request limits): 4 requests per second, 60 per 30 s, 100 per minute,
1,800 per hour per webhook (https://learn.microsoft.com/en-us/microsoftteams/platform/
webhooks-and-connectors/how-to/connectors-using#rate-limiting-for-connectors); a card of at
most 28 KB (same page).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlsplit

import orjson
from pydantic import Field, SecretStr

from undertow.destinations._chat import MessageTemplate
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    DestinationConfig,
    Operation,
    RateLimit,
)
from undertow.destinations.kit import HttpConfig, HttpDestination, Reject
from undertow.errors import ConfigError, FatalDeliveryError
from undertow.redact import register_secret, trim

WEBHOOK_DOC = "https://learn.microsoft.com/en-us/microsoftteams/platform/webhooks-and-connectors/how-to/add-incoming-webhook"
LIMITS_DOC = "https://learn.microsoft.com/en-us/microsoftteams/platform/webhooks-and-connectors/how-to/connectors-using#rate-limiting-for-connectors"
MAX_CARD_BYTES = 28 * 1024
DEFAULT_TEXT = "**{{ operation }}** {{ key }}: {{ record | tojson }}"


class TeamsConfig(HttpConfig):
    type: Literal["teams"] = "teams"
    base_url: str = ""
    webhook_url: SecretStr
    """The workflow's HTTP trigger URL (or an Office 365 connector's webhook URL)."""
    text: str = DEFAULT_TEXT
    """The card's text (Adaptive Card markdown), a template."""
    title: str | None = None
    """An optional bold first line, a template."""
    batch_size: int = Field(default=100, ge=1, le=1000)


class TeamsDestination(HttpDestination[TeamsConfig]):
    """Post one Adaptive Card per row to a Teams channel's webhook."""

    name: ClassVar[str] = "teams"
    vendor: ClassVar[str] = "Microsoft Teams"
    fake: ClassVar[str | None] = "undertow.testing.teams:TeamsFake"
    docs_url: ClassVar[str | None] = WEBHOOK_DOC
    auth_hint: ClassVar[str] = (
        "the workflow was turned off, deleted or its URL changed: copy the trigger URL again"
    )
    capabilities: ClassVar[Capabilities] = Capabilities(
        operations=frozenset(
            {Operation.UPSERT, Operation.INSERT, Operation.UPDATE, Operation.DELETE}
        ),
        max_batch_size=100,
        max_concurrency=1,
        rate_limit=RateLimit(4, 1.0, LIMITS_DOC),
        rate_limits=(
            RateLimit(60, 30.0, LIMITS_DOC),
            RateLimit(100, 60.0, LIMITS_DOC),
            RateLimit(1800, 3600.0, LIMITS_DOC),
        ),
        per_record_results=True,
        max_request_bytes=MAX_CARD_BYTES,
        cite={"rate_limit": LIMITS_DOC, "rate_limits": LIMITS_DOC, "max_request_bytes": LIMITS_DOC},
    )

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        cfg = (
            config
            if isinstance(config, TeamsConfig)
            else TeamsConfig.model_validate(config.model_dump())
        )
        url = cfg.webhook_url.get_secret_value()
        parts = urlsplit(url)
        register_secret(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"destination {name!r}: `webhook_url` is not an https:// URL",
                key=f"destinations.{name}.webhook_url",
                hint="copy the workflow's HTTP trigger URL (Workflows > the flow > the trigger)",
            )
        for key, value in parse_qsl(parts.query):
            if key.lower() in ("sig", "signature", "code"):
                register_secret(value)
        self._path = parts.path or "/"
        self._query = dict(parse_qsl(parts.query))
        cfg = cfg.model_copy(update={"base_url": f"{parts.scheme}://{parts.netloc}"})
        super().__init__(cfg, name=name)
        key = f"destinations.{name}"
        self.text = MessageTemplate(self.config.text, key=f"{key}.text")
        self.title = (
            MessageTemplate(self.config.title, key=f"{key}.title") if self.config.title else None
        )

    def capabilities_for(self, object: str | None) -> Capabilities:
        return replace(self.capabilities, max_batch_size=self.config.batch_size)

    def where(self) -> str:
        return f"teams destination {self.instance_name!r}"

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        try:
            body: list[dict[str, Any]] = []
            if self.title is not None:
                body.append(
                    {
                        "type": "TextBlock",
                        "text": self.title.render(batch, index, record),
                        "weight": "Bolder",
                        "size": "Medium",
                        "wrap": True,
                    }
                )
            body.append(
                {"type": "TextBlock", "text": self.text.render(batch, index, record), "wrap": True}
            )
        except ValueError as exc:
            return Reject(str(exc))
        card = {
            "type": "message",
            "attachments": [
                {
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": None,
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": body,
                    },
                }
            ],
        }
        size = len(orjson.dumps(card))
        if size > MAX_CARD_BYTES:
            return Reject(
                f"the card is {size:,} bytes, over Teams' limit of {MAX_CARD_BYTES:,} (28 KB)"
            )
        return card

    async def check(self) -> None:
        return None  # a webhook only posts: validate sends nothing to the channel

    async def write_batch(self, batch: Batch) -> BatchResult:
        result = BatchResult()
        for item in self.items(batch, None, result):
            response = await self.send(
                "POST",
                self._path,
                json=item.body,
                params=self._query,
                expect=frozenset({200, 202, 400, 413}),
            )
            if response.status in (200, 202):
                continue
            if response.status in (400, 413):
                result.rejected[item.index] = (
                    f"Teams refused the card ({response.status}): "
                    f"{trim(response.body.decode('utf-8', 'replace'))}"
                )
                continue
            raise FatalDeliveryError(
                f"{self.where()}: the webhook answered {response.describe()}",
                hint=self.auth_hint,
            )
        return result
