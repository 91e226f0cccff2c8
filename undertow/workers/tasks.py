"""What a worker process does with one task: claim it in the ledger, run it, record how it
ended, or hand it back.

Exactly one runner per sync holds at three levels: the ledger claim (one worker per task, a
duplicate message is dropped), the sync's lock in the state store (one run per sync, whoever
started it: a laptop's ``undertow run`` too), and the lock's fence (a run whose lock was
taken over writes nothing more).

A task is taken over (claimed again while ``running``) only when its holder is gone: its
process is dead on this host, or its worker stopped sending heartbeats for ``lock_ttl``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from undertow.errors import LockLostError, SyncLockedError, UndertowError
from undertow.pipeline.halt import Halt
from undertow.redact import redact
from undertow.state.cluster import ClusterState, TaskRow, WorkerRow

if TYPE_CHECKING:
    from undertow.project import Project

log = logging.getLogger("undertow.worker")

Publish = Callable[[str], None]

_current_lock = threading.Lock()
_current: Halt | None = None
"""The halt of the run this process is executing (a signal handler sets it)."""


def current_halt() -> Halt | None:
    with _current_lock:
        return _current


def _set_current(halt: Halt | None) -> None:
    global _current
    with _current_lock:
        _current = halt


def holder_id(worker: str) -> str:
    """Who holds a task: the worker's name, this host and this process."""
    return f"{worker}|{socket.gethostname()}|{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_gone(holder: str | None, workers: dict[str, WorkerRow]) -> bool:
    """Whether the process holding a task is gone (see the module docstring)."""
    if not holder:
        return True
    name, _, rest = holder.partition("|")
    host, _, pid = rest.partition("|")
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        return True
    worker = workers.get(name)
    return worker is None or not worker.alive


def error_result(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, UndertowError):
        return {"error": str(exc), "type": type(exc).__name__, "fields": exc.fields()}
    return {"error": redact(f"{type(exc).__name__}: {exc}"), "type": type(exc).__name__}


def run_task(
    project: Project,
    task_id: str,
    *,
    worker: str,
    ttl: timedelta,
    publish: Publish,
) -> dict[str, Any]:
    """Claim and execute ledger task ``task_id``; return what happened (for the log)."""
    cluster = ClusterState(project.store)
    row = cluster.task(task_id)
    if row is None:
        return {"dropped": "no such task in this project's state store"}
    if row.final:
        return {"dropped": f"already {row.state}"}
    takeover = False
    if row.kind == "part":
        return _help(project, cluster, row, holder_id(worker))
    if row.state == "running":
        workers = {w.name: w for w in cluster.workers(ttl=ttl)}
        takeover = holder_gone(row.worker, workers) and row.sync not in project.store.held_locks()
        if not takeover:
            # its holder is alive, or its run's lock has not expired yet: the sweeper
            # publishes it again once it has
            return {"dropped": f"running on {row.worker}, whose run still holds its lock"}
    me = holder_id(worker)
    claimed = cluster.claim(task_id, me, takeover=takeover)
    if claimed is None:
        return {"dropped": "claimed by another worker"}
    if takeover:
        log.warning("task %s: its holder %s is gone; resuming it", task_id, row.worker)
    halt = Halt()
    _set_current(halt)
    try:
        return _run(project, cluster, claimed, me, halt, publish)
    except LockLostError as exc:
        # another worker took the run over: the task is theirs now
        return {"dropped": str(exc)}
    except SyncLockedError as exc:
        cluster.finish(claimed, state="failed", result=error_result(exc))
        return error_result(exc)
    except UndertowError as exc:
        cluster.finish(claimed, state="failed", result=error_result(exc))
        return error_result(exc)
    except Exception as exc:
        log.exception("task %s crashed", task_id)
        cluster.finish(claimed, state="failed", result=error_result(exc))
        return error_result(exc)
    finally:
        _set_current(None)


def _help(project: Project, cluster: ClusterState, row: TaskRow, me: str) -> dict[str, Any]:
    """A helper task of a shared delivery (``pipeline/share.py``): claim parts of its run and
    deliver them. A copy of the message, or a helper started after the run ended, finds
    nothing to claim and ends at once; one whose worker died is not queued again (the run's
    coordinator takes its part over when the lease runs out)."""
    if row.state != "queued" and row.state != "new":
        return {"dropped": f"helper task {row.state}"}
    claimed = cluster.claim(row.id, me, takeover=False)
    if claimed is None or claimed.run_id is None:
        return {"dropped": "claimed by another worker"}
    halt = Halt()
    _set_current(halt)
    try:
        result = project.help_deliver(claimed.sync, claimed.run_id, halt=halt, worker=me)
    except Exception as exc:
        log.exception("helper task %s crashed", row.id)
        cluster.finish(claimed, state="failed", result=error_result(exc))
        return error_result(exc)
    finally:
        _set_current(None)
    cluster.finish(claimed, state="done", result=result)
    return result


def _run(
    project: Project,
    cluster: ClusterState,
    task: TaskRow,
    me: str,
    halt: Halt,
    publish: Publish,
) -> dict[str, Any]:
    records = project.run(
        [task.sync],
        full=task.full,
        trigger=task.trigger,
        chain=False,
        halt=halt,
        worker=me,
    )
    record = records[0] if records else None
    if record is None or (halt.handback and not record.status.final):
        # this worker is shutting down: the task goes back to the queue, the run stays
        # unfinished with its checkpoints, and whoever takes it next resumes it
        if cluster.requeue(task, why=f"handed back by {me}: {halt.reason}", holder=True):
            publish(task.id)
        return {"handed_back": record.id if record else None}
    result = {"run_id": record.id, **record.as_dict()}
    cluster.finish(task, state="done", result=result)
    return {"run_id": record.id, "status": str(record.status)}
