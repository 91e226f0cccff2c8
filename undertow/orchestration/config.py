"""The orchestration keys of a project, as pydantic models.

Per sync: ``schedule``, ``after``, ``freshness``, ``sla`` and ``then``; per project:
``webhooks`` (authenticated upstream signals), ``alerts`` (channels and rules) and
``server`` (the API token and the public URL used in alert links). Durations are written
``30s``, ``15m``, ``2h``, ``1d`` or ``1h30m``.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator

from undertow.headers import Headers, HeaderSecret

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(?:\d+\s*[smhdw]\s*)+$")
_PART = re.compile(r"(\d+)\s*([smhdw])")


def parse_duration(value: Any) -> timedelta:
    """``15m`` -> 15 minutes; a bare number is seconds. Raise ValueError saying the format."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 15m, 2h or 1d, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.match(value.lower()):
        seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(value.lower()))
    else:
        raise ValueError(f"expected a duration such as 30s, 15m, 2h, 1d or 1h30m, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"a duration must be above zero, got {value!r}")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta | float | None) -> str:
    """A short human duration: ``1h 05m``, ``3m 20s``, ``12s``."""
    if value is None:
        return "-"
    seconds = int(value.total_seconds() if isinstance(value, timedelta) else value)
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours:02d}h"
    if hours:
        return f"{sign}{hours}h {minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m {secs:02d}s"
    return f"{sign}{secs}s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# -- schedule --------------------------------------------------------------------------------


class ScheduleSpec(_Strict):
    """``{every: 15m}`` (a fixed interval from the previous start) or
    ``{cron: "0 6 * * 1-5", timezone: Europe/Paris}`` (cron, in that time zone)."""

    every: Duration | None = None
    cron: str | None = None
    timezone: str | None = None

    @model_validator(mode="after")
    def _valid(self) -> ScheduleSpec:
        if (self.every is None) == (self.cron is None):
            raise ValueError(
                "a schedule takes exactly one of `every:` or `cron:`, e.g. `{every: 15m}` or "
                "`{cron: '0 6 * * 1-5', timezone: Europe/Paris}` (or write `manual`)"
            )
        if self.every is not None and self.timezone is not None:
            raise ValueError("`timezone:` goes with `cron:`, not with `every:`")
        if self.cron is not None:
            from croniter import croniter

            if not croniter.is_valid(self.cron):
                raise ValueError(
                    f"{self.cron!r} is not a cron expression; write five fields "
                    "(minute hour day-of-month month day-of-week), e.g. '0 6 * * 1-5'"
                )
        try:
            zoneinfo.ZoneInfo(self.zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown timezone {self.timezone!r}; use an IANA name such as "
                "Europe/Paris, America/New_York or UTC"
            ) from None
        return self

    @property
    def zone(self) -> str:
        return self.timezone or "UTC"


def every(interval: str | timedelta) -> ScheduleSpec:
    return ScheduleSpec(every=parse_duration(interval))


def cron(expression: str, timezone: str = "UTC") -> ScheduleSpec:
    return ScheduleSpec(cron=expression, timezone=timezone)


def _schedule(value: Any) -> Any:
    if value == "manual":
        return None
    if isinstance(value, str):
        raise ValueError(
            f"schedule {value!r} is not understood; write `manual`, `{{every: 15m}}` or "
            "`{cron: '0 6 * * 1-5', timezone: Europe/Paris}`"
        )
    return value


# -- after: upstream syncs and signals -------------------------------------------------------


class DbtWatch(_Strict):
    """A dbt project whose ``target/run_results.json`` tells when its models were rebuilt."""

    project_dir: str | None = None
    """The dbt project folder, relative to the Undertow project folder; default: the project
    of the sync's model when it is a dbt model (``models: {x: {dbt: ...}}``)."""
    target_path: str = "target"
    """Where dbt writes run_results.json and manifest.json, relative to ``project_dir``."""
    models: list[str] = Field(default_factory=list)
    """dbt model names to wait for; empty: the sync's dbt model, or the models its SQL reads."""


class Upstream(_Strict):
    """One item of ``after:``: a sync, a dbt project or a webhook signal."""

    sync: str | None = None
    dbt: DbtWatch | None = None
    webhook: str | None = None
    on: Literal["success", "completion"] = "success"
    """``success``: only a successful upstream run counts; ``completion``: any finished one."""
    within: Duration | None = None
    """Only an upstream completion at most this old counts."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if value == "dbt":
            return {"dbt": {}}  # the sync's dbt model; a sync named dbt is `{sync: dbt}`
        return {"sync": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _exactly_one(self) -> Upstream:
        chosen = [k for k in ("sync", "dbt", "webhook") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "an `after:` item takes exactly one of sync, dbt, webhook "
                f"(got {', '.join(chosen) or 'none'}); e.g. `after: [load_accounts]`, "
                "`after: [dbt]` (a dbt model's rebuild), `after: [{dbt: {project_dir: "
                "../analytics}}]` or `after: [{webhook: loaded}]`"
            )
        return self

    @property
    def label(self) -> str:
        if self.sync is not None:
            return f"sync {self.sync}"
        if self.webhook is not None:
            return f"webhook {self.webhook}"
        assert self.dbt is not None
        return f"dbt {self.dbt.project_dir or '(the sync model)'}"


# -- freshness, then -------------------------------------------------------------------------


class Freshness(_Strict):
    """``freshness: {column: updated_at, max_age: 2h}`` or ``{sql: ..., max_age: 2h}``."""

    column: str | None = None
    """A timestamp column of the model: its newest value is how fresh the data is."""
    sql: str | None = None
    """A query on the model's source returning one timestamp (e.g. the loader's last load)."""
    max_age: Duration
    on_stale: Literal["skip", "fail"] = "skip"

    @model_validator(mode="after")
    def _one(self) -> Freshness:
        if (self.column is None) == (self.sql is None):
            raise ValueError(
                "freshness takes exactly one of `column:` (a timestamp column of the model) "
                "or `sql:` (a query returning one timestamp), with `max_age:`"
            )
        return self


class ThenWebhook(_Strict):
    url: str
    method: Literal["POST", "PUT", "GET"] = "POST"
    headers: Headers = Field(default_factory=dict)


class ThenAction(_Strict):
    """One item of ``then:``: a downstream sync to trigger, or a webhook to call."""

    sync: str | None = None
    webhook: ThenWebhook | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"sync": value}
        if isinstance(value, dict) and isinstance(value.get("webhook"), str):
            return {**value, "webhook": {"url": value["webhook"]}}
        return value

    @model_validator(mode="after")
    def _one(self) -> ThenAction:
        if (self.sync is None) == (self.webhook is None):
            raise ValueError(
                "a `then:` item takes exactly one of sync or webhook, e.g. "
                "`then: [send_emails]` or `then: [{webhook: https://...}]`"
            )
        return self


# -- project level ---------------------------------------------------------------------------


class WebhookSignal(_Strict):
    """``webhooks: {users_loaded: {token: "${LOADER_TOKEN}"}}``: an upstream says "loaded"."""

    token: HeaderSecret | None = None
    """Bearer token the caller must send; without one, the server's API token is required."""
    description: str | None = None


class SlackChannel(_Strict):
    type: Literal["slack"]
    url: SecretStr
    """The Slack incoming-webhook URL (it is a secret: keep it in ${ENV})."""


class WebhookChannel(_Strict):
    type: Literal["webhook"]
    url: str
    secret: SecretStr | None = None
    """Signs each body: ``X-Undertow-Signature: sha256=HMAC(secret, timestamp + "." + body)``."""
    headers: Headers = Field(default_factory=dict)


class EmailChannel(_Strict):
    type: Literal["email"]
    host: str
    port: int = 587
    from_: str = Field(alias="from")
    to: list[str]
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = True
    ssl: bool = False
    timeout: float = 20.0

    @model_validator(mode="before")
    @classmethod
    def _to_list(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("to"), str):
            return {**value, "to": [value["to"]]}
        return value


Channel = Annotated[SlackChannel | WebhookChannel | EmailChannel, Field(discriminator="type")]

Trigger = Literal["run_failed", "rejected_ratio", "slow_run", "row_count", "freshness", "sla"]


class AlertRule(_Strict):
    """``{when: run_failed, channels: [team]}``; one alert per change of state."""

    when: Trigger
    channels: list[str]
    syncs: list[str] | None = None
    """The syncs this rule watches (default: all)."""
    threshold: float | None = Field(default=None, gt=0)
    """rejected_ratio: share of the run's rows (default 0.05); row_count: relative deviation
    from the recent average of extracted rows (default 0.5)."""
    slower_than: Duration | None = None
    """slow_run: a run that takes longer than this."""
    window: int = Field(default=10, ge=2)
    """row_count: how many previous successful runs make the average."""

    @model_validator(mode="after")
    def _params(self) -> AlertRule:
        if self.when == "slow_run" and self.slower_than is None:
            raise ValueError("a `slow_run` rule needs `slower_than:`, e.g. `slower_than: 30m`")
        if not self.channels:
            raise ValueError("an alert rule needs at least one channel in `channels:`")
        return self

    @property
    def limit(self) -> float:
        if self.threshold is not None:
            return self.threshold
        return 0.05 if self.when == "rejected_ratio" else 0.5


class AlertsConfig(_Strict):
    channels: dict[str, Channel] = Field(default_factory=dict)
    rules: list[AlertRule] = Field(default_factory=list)


class ServerConfig(_Strict):
    """``server: {token: "${UNDERTOW_API_TOKEN}", url: https://undertow.internal}``."""

    token: SecretStr | None = None
    url: str | None = None
    """The public base URL of `undertow serve`, for links in alerts."""
    workers: int = Field(default=2, ge=1)
    """Syncs run at the same time by `undertow serve`."""
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Request bodies larger than this are refused with 413 (a trigger or signal is tiny)."""


Schedule = Annotated[ScheduleSpec | None, BeforeValidator(_schedule)]
