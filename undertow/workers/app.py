"""The Celery app of a project: one task, ``undertow.task(task_id, project)``.

A message carries only the ledger id (and the project's name, so that a worker of another
project refuses it); everything the task does is in its ledger row (``undertow_tasks``), so
a message published twice cannot ask for two different things.

Settings, and why:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged when its
  task returns. A worker process killed mid-run makes its parent give the message back; a
  whole worker killed leaves it unacknowledged, and RabbitMQ redelivers it at once. Either
  way the next worker finds the task ``running`` with a dead holder in the ledger and takes
  it over. (Redis redelivers only after the visibility timeout; the sweeper publishes the
  task again long before, see :mod:`undertow.workers.sweeper`.)
* ``visibility_timeout`` (Redis): 12 h by default, longer than any run, so Redis never
  hands a live run's message to a second worker. RabbitMQ's own ``consumer_timeout``
  (30 min by default) must be raised the same way in rabbitmq.conf (docs/deployment.md);
  were either exceeded, the second worker would find the task running with a live holder
  and drop its copy: a run is never executed twice, whatever the broker does.
* ``worker_prefetch_multiplier=1``: a worker holds no more messages than it has free
  processes, so queued runs go to whichever worker frees up first.
* JSON only, no result backend: results are in the ledger, in the state store.
* no remote control, mingle, gossip or events: workers of different deployments on one
  broker never talk to each other; health is in the state store (``undertow status``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from undertow.errors import UndertowError
from undertow.workers.config import ExecutorConfig, scheme

if TYPE_CHECKING:
    from celery import Celery

TASK = "undertow.task"


def _celery() -> Any:
    try:
        import celery
    except ModuleNotFoundError as exc:  # pragma: no cover - celery is a dependency
        raise UndertowError(
            f"the Celery executor needs Celery ({exc.name} is not installed)",
            hint='pip install "undertow[cluster]"',
        ) from exc
    return celery


def make_app(project_name: str, executor: ExecutorConfig) -> Celery:
    """The Celery app that publishes to and consumes from ``executor``'s broker."""
    celery = _celery()
    assert executor.broker is not None
    app = celery.Celery(f"undertow-{project_name}", broker=executor.broker, set_as_current=False)
    transport: dict[str, Any] = {}
    if scheme(executor.broker) in ("redis", "rediss"):
        transport = {
            "visibility_timeout": int(executor.visibility_timeout.total_seconds()),
            "global_keyprefix": f"{executor.prefix}:",
        }
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=executor.queue,
        task_create_missing_queues=True,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=10,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def publish(app: Celery, project_name: str, queue: str, task_id: str) -> None:
    """Send the message of ledger task ``task_id`` (its row exists already)."""
    try:
        app.send_task(TASK, args=[task_id, project_name], queue=queue, task_id=f"{task_id}")
    except Exception as exc:
        from undertow.redact import redact

        raise UndertowError(
            redact(f"could not queue task {task_id} on the broker: {type(exc).__name__}: {exc}"),
            hint="check that the broker in `executor.broker` is running and reachable; the "
            "task stays in the state store and a worker's sweeper publishes it again",
        ) from exc
