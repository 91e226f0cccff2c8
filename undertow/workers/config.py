"""``executor:`` in undertow.yml: where runs happen.

    executor:
      type: celery                      # default: local (runs in the calling process)
      broker: redis://redis:6379/0      # or amqp://user:pass@rabbitmq:5672/vhost
      rate_budget: redis://redis:6379/1 # default: the broker when it is Redis
      queue: undertow
      heartbeat: 5s                     # how often a run refreshes its lock
      lock_ttl: 20s                     # silent this long: another worker takes the run over
      delivery_workers: 1               # workers that may share one run's delivery

Without ``executor:`` (or with ``type: local``) everything runs in-process, as it always
did; ``rate_budget`` alone makes in-process runs share their budgets through Redis too.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from undertow.orchestration.config import Duration

BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp")


def scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


class ExecutorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["local", "celery"] = "local"
    broker: str | None = None
    """The Celery broker: ``redis://`` or ``amqp://`` (RabbitMQ)."""
    rate_budget: str | None = None
    """Redis for the shared rate budgets; default: the broker when it is Redis."""
    queue: str = Field(default="undertow", min_length=1, max_length=200)
    prefix: str = Field(default="undertow", min_length=1, max_length=100)
    """Prefix of every Redis key (broker and budgets): one prefix per deployment."""
    heartbeat: Duration = timedelta(seconds=5)
    lock_ttl: Duration = timedelta(seconds=20)
    sweep_every: Duration = timedelta(seconds=5)
    """How often each worker looks for tasks whose worker died."""
    visibility_timeout: Duration = timedelta(hours=12)
    """Redis only: how long a message a worker received stays invisible to the others.
    Longer than the longest run, so a live run is never delivered twice; a dead worker's
    runs are picked up by the sweeper long before."""
    delivery_workers: int = Field(default=1, ge=1, le=64)
    """Up to this many workers deliver one run's batches together (when the destination's
    limits allow more than one worker can send)."""

    @model_validator(mode="after")
    def _check(self) -> ExecutorConfig:
        if self.type == "celery":
            if not self.broker:
                raise ValueError(
                    "`executor: {type: celery}` needs `broker:`, e.g. "
                    "`broker: redis://localhost:6379/0` or `amqp://localhost:5672//`"
                )
            if scheme(self.broker) not in BROKER_SCHEMES:
                raise ValueError(
                    f"`executor.broker` must be a redis:// or amqp:// URL, got a "
                    f"{scheme(self.broker) or 'schemeless'} one"
                )
        if self.rate_budget is not None and scheme(self.rate_budget) not in ("redis", "rediss"):
            raise ValueError("`executor.rate_budget` must be a redis:// URL")
        if self.heartbeat * 2 > self.lock_ttl:
            raise ValueError(
                "`executor.lock_ttl` must be at least twice `executor.heartbeat` (one missed "
                "heartbeat must not hand a live run to another worker)"
            )
        return self

    @property
    def budget_url(self) -> str | None:
        """Where the shared rate budgets live (None: in-process budgets)."""
        if self.rate_budget:
            return self.rate_budget
        if self.type == "celery" and self.broker and scheme(self.broker) in ("redis", "rediss"):
            return self.broker
        return None

    @property
    def queued(self) -> bool:
        return self.type == "celery"
