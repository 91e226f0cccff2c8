"""State store: runs, checkpoints, row errors, locks; migrations."""

from undertow.state.store import Lock, RowError, RunRecord, RunStatus, StateStore

__all__ = ["Lock", "RowError", "RunRecord", "RunStatus", "StateStore"]
