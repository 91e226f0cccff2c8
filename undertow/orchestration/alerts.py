"""Alerts: one message per change of state, to Slack, a signed webhook or e-mail.

A rule (``alerts: {rules: [{when: run_failed, channels: [team]}]}``) watches one condition
per sync. Its state (``ok`` or ``firing``) lives in the state store; a message goes out only
when the state changes: the first failed run alerts, the next nine failures do not, the
first success after them says "resolved". A restart never sends an alert twice.

Every message says what happened, to which sync, since when, and how to see the details
(an ``undertow`` command, and a link when ``server.url`` is set).

Channels:

- ``slack``: a Slack incoming webhook; the body is ``{"text": ...}``.
- ``webhook``: ``POST`` of a JSON document; with ``secret``, signed like Stripe/GitHub:
  ``X-Undertow-Timestamp: <unix seconds>`` and ``X-Undertow-Signature: sha256=<hex>`` where
  the hex is HMAC-SHA256(secret, ``<timestamp>.<body>``).
- ``email``: SMTP (STARTTLS by default, or implicit TLS with ``ssl: true``).

A channel that fails is logged (redacted) and does not fail the run.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

import orjson

from undertow.orchestration.config import (
    AlertRule,
    AlertsConfig,
    EmailChannel,
    SlackChannel,
    WebhookChannel,
)
from undertow.redact import redact
from undertow.state.orchestration import OrchestrationState

log = logging.getLogger("undertow.alerts")

TITLES = {
    "run_failed": ("run failed", "runs succeed again"),
    "rejected_ratio": ("too many rejected rows", "rejected rows back under the threshold"),
    "slow_run": ("run slower than expected", "runs back to normal duration"),
    "row_count": ("row count far from its recent average", "row count back to normal"),
    "freshness": ("data is stale: nothing was sent", "data is fresh again"),
    "sla": ("SLA breached", "SLA recovered"),
}


@dataclass
class Alert:
    """One message: a rule's condition on a sync started (firing) or ended (resolved)."""

    project: str
    sync: str
    when: str
    firing: bool
    since: datetime
    detail: str
    command: str
    link: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        start, end = TITLES[self.when]
        return f"{'🔴' if self.firing else '✅'} {self.sync}: {start if self.firing else end}"

    def text(self) -> str:
        state = "since" if self.firing else "resolved at"
        lines = [
            f"{self.title} (project {self.project})",
            self.detail,
            f"{state} {self.since.isoformat(timespec='seconds')}",
            f"details: `{self.command}`",
        ]
        if self.link:
            lines.append(self.link)
        return redact("\n".join(lines))

    def as_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "sync": self.sync,
            "alert": self.when,
            "state": "firing" if self.firing else "resolved",
            "title": redact(self.title),
            "detail": redact(self.detail),
            "since": self.since.isoformat(),
            "command": self.command,
            "link": self.link,
            **{k: v for k, v in self.extra.items() if k not in ("detail", "title")},
        }


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib follows 301/302/303 by default, turning the POST into a GET that keeps the
    request's headers (a token, the signature) and goes to whatever host the answer names,
    and then counts the redirect target's 200 as delivered. A redirect is an error here."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx


_OPENER = urllib.request.build_opener(_NoRedirect)


def open_no_redirect(request: urllib.request.Request, timeout: float) -> bytes:
    """Send ``request``; any answer but a 2xx (a 3xx included) raises ``HTTPError``."""
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        exc.close()  # its answer is not read: release the connection
        raise


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float = 10.0) -> None:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("User-Agent", "undertow-alerts")
    for key, value in headers.items():
        request.add_header(key, value)
    open_no_redirect(request, timeout)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def send(channel: SlackChannel | WebhookChannel | EmailChannel, alert: Alert) -> None:
    """Deliver one alert on one channel; raise on failure."""
    if isinstance(channel, SlackChannel):
        body = orjson.dumps({"text": alert.text()})
        _post(channel.url.get_secret_value(), body, {})
    elif isinstance(channel, WebhookChannel):
        body = orjson.dumps(alert.as_dict())
        headers = dict(channel.headers)
        if channel.secret is not None:
            stamp = str(int(time.time()))
            headers["X-Undertow-Timestamp"] = stamp
            headers["X-Undertow-Signature"] = sign(channel.secret.get_secret_value(), stamp, body)
        _post(channel.url, body, headers)
    else:
        message = EmailMessage()
        message["Subject"] = f"[undertow] {alert.title}"
        message["From"] = channel.from_
        message["To"] = ", ".join(channel.to)
        message.set_content(alert.text())
        smtp_cls = smtplib.SMTP_SSL if channel.ssl else smtplib.SMTP
        with smtp_cls(channel.host, channel.port, timeout=channel.timeout) as smtp:
            if channel.starttls and not channel.ssl:
                smtp.ehlo()
                if smtp.has_extn("starttls"):
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                elif channel.password is not None:
                    raise smtplib.SMTPException(
                        "the server does not offer STARTTLS: refusing to send the password "
                        "in clear (set `starttls: false` only for a local relay)"
                    )
            if channel.username and channel.password is not None:
                smtp.login(channel.username, channel.password.get_secret_value())
            smtp.send_message(message)


class AlertManager:
    """Evaluates rules against run outcomes and SLA states; sends on changes of state."""

    def __init__(
        self,
        config: AlertsConfig,
        state: OrchestrationState,
        *,
        project: str,
        link_base: str | None,
    ) -> None:
        self.config = config
        self.state = state
        self.project = project
        self.link_base = link_base.rstrip("/") if link_base else None
        self.sent: list[Alert] = []
        """Every alert handed to the channels by this process (for tests and the API)."""

    def rules_for(self, sync: str, when: str) -> list[tuple[int, AlertRule]]:
        return [
            (i, r)
            for i, r in enumerate(self.config.rules)
            if r.when == when and (r.syncs is None or sync in r.syncs)
        ]

    def link(self, sync: str, run_id: str | None = None) -> str | None:
        if self.link_base is None:
            return None
        # the web UI's pages: a person follows an alert's link
        if run_id:
            return f"{self.link_base}/runs/{run_id}"
        return f"{self.link_base}/syncs/{quote(sync)}"

    def update(
        self,
        rule_index: int,
        rule: AlertRule,
        sync: str,
        *,
        firing: bool,
        now: datetime,
        detail: str,
        command: str,
        run_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Alert | None:
        """Set the rule's state for ``sync``; send and return an alert when it changed."""
        key = f"{rule_index}:{rule.when}:{sync}"
        previous = self.state.alert_state(key)
        was_firing = previous is not None and previous.state == "firing"
        if was_firing == firing:
            return None
        self.state.set_alert_state(
            key, sync=sync, state="firing" if firing else "ok", since=now, detail=redact(detail)
        )
        if previous is None and not firing:
            return None  # first evaluation, all is well: nothing to say
        if not firing and previous is not None:
            detail = f"{detail} (was failing since {previous.since.isoformat(timespec='seconds')})"
        alert = Alert(
            project=self.project,
            sync=sync,
            when=rule.when,
            firing=firing,
            since=now,
            detail=detail,
            command=command,
            link=self.link(sync, run_id),
            extra={"run_id": run_id, **(extra or {})},
        )
        self.dispatch(rule, alert)
        return alert

    def dispatch(self, rule: AlertRule, alert: Alert) -> None:
        self.sent.append(alert)
        for name in rule.channels:
            channel = self.config.channels.get(name)
            if channel is None:
                continue
            fields = {"sync": alert.sync, "channel": name, "rule": rule.when}
            try:
                send(channel, alert)
            except Exception as exc:  # a broken channel must not break the run
                log.warning(
                    "alert channel %s failed: %s",
                    name,
                    redact(f"{exc}"),
                    extra={"event": "alert.failed", **fields, "error": redact(f"{exc}")},
                )
                continue
            log.info(
                "alert sent: %s %s on %s via %s",
                rule.when,
                "firing" if alert.firing else "resolved",
                alert.sync,
                name,
                extra={"event": "alert.sent", **fields, "firing": alert.firing},
            )
