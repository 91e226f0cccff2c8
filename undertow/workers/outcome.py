"""A finished task as the caller of ``undertow run --queue`` sees it: the run it made, or
the error that ended it (rebuilt by type from the ledger, with its fields)."""

from __future__ import annotations

from undertow import errors
from undertow.errors import UndertowError
from undertow.state.cluster import TaskRow
from undertow.state.store import RunRecord, StateStore


def outcome_of(store: StateStore, task: TaskRow) -> RunRecord | UndertowError:
    result = task.result or {}
    run_id = result.get("run_id") or task.run_id
    if task.state == "done" and run_id:
        run = store.get_run(str(run_id))
        if run is not None:
            return run
    message = str(result.get("error") or f"task {task.id} ended {task.state} without a run")
    cls = getattr(errors, str(result.get("type", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, UndertowError)):
        cls = UndertowError
    # rebuilt like an unpickled error: the message as it was, the fields as attributes
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update({"raw_message": message, "hint": None, **(result.get("fields") or {})})
    return error
