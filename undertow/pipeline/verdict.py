"""How a delivered run ends when nothing stopped it: succeeded, succeeded with a warning,
or failed at the ``max_rejected_ratio`` guard.

The guard's share is of the rows the run dealt with: the model's rows plus the rows that
left it (``extracted + removed``). Rows the mapping or the destination rejected count
toward it, and so do rows with a NULL or duplicate primary key (``invalid``), which never
reach the destination: the message then says to fix the model, not to retry.
"""

from __future__ import annotations

from undertow.pipeline.plan import percent
from undertow.state.store import RunRecord, RunStatus

__all__ = ["judge_rejections", "next_step"]


def judge_rejections(run: RunRecord, limit: float) -> tuple[RunStatus, str | None, str | None]:
    """``(status, error, warning)``: failed when the rejected share exceeds ``limit``."""
    rejected = run.counts.get("rejected", 0)
    if not rejected:
        return RunStatus.SUCCEEDED, None, None
    rows = run.counts.get("extracted", 0) + run.counts.get("removed", 0)
    share = rejected / rows if rows else 1.0
    what = f"{rejected:,} of {rows:,} row(s) rejected ({percent(share)})"
    where = f"see them with `undertow errors {run.id}`"
    if share > limit:
        return (
            RunStatus.FAILED,
            f"{what}, more than max_rejected_ratio {limit:g} ({percent(limit)}); the "
            f"accepted rows are recorded and the rejected ones are sent again by the next "
            f"run; {where}, {next_step(run)}",
            None,
        )
    return RunStatus.SUCCEEDED, None, f"{what}, within max_rejected_ratio {limit:g}; {where}"


def next_step(run: RunRecord) -> str:
    """What fixes a run's rejections: rows with a NULL or duplicate primary key never
    reach the destination (``undertow retry`` skips them again), so the model is fixed."""
    invalid = run.counts.get("invalid", 0)
    retry = f"fix them, then `undertow retry {run.sync}`"
    if not invalid:
        return retry
    keys = (
        f"fix the model's primary key ({invalid:,} row(s) have a NULL or duplicate key), "
        f"then `undertow run {run.sync}`"
    )
    if invalid >= run.counts.get("rejected", 0):
        return keys
    return f"{keys}; for the other rows, {retry}"
