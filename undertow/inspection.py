"""The inspecting half of the :class:`~undertow.project.Project` facade: look and try.

What the web UI, the API and ``undertow debug`` / ``undertow test`` show about a sync without
running it: its config, the live debugger's requests, a preview of its model, and
test-a-row. :class:`Project` inherits these, so callers still use one facade object; the
implementations live in their own modules (:mod:`undertow.describe`,
:mod:`undertow.state.debug_log`, :mod:`undertow.testrow`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from undertow.errors import UndertowError

if TYPE_CHECKING:
    from undertow.config.loader import LoadedProject
    from undertow.config.models import SyncConfig
    from undertow.debugger import DebugRecorder
    from undertow.pipeline.run import SyncContext
    from undertow.state.debug_log import DebugEntry
    from undertow.state.store import StateStore
    from undertow.testrow import TestResult


class Inspection:
    """Mixed into :class:`~undertow.project.Project` (which provides the attributes below)."""

    if TYPE_CHECKING:
        loaded: LoadedProject

        @property
        def store(self) -> StateStore: ...

        @property
        def debugger(self) -> DebugRecorder: ...

        def sync(self, name: str) -> SyncConfig: ...

        def context(self, name: str) -> SyncContext: ...

    def sync_config(self, name: str) -> dict[str, Any]:
        """What the sync is made of: model SQL, mapping, schedule, parents (no secret)."""
        from undertow.describe import describe_sync

        return describe_sync(self.loaded, name, self.sync(name))

    def debug_entries(
        self,
        name: str,
        *,
        status: str | None = None,
        key: str | None = None,
        run_id: str | None = None,
        after_id: int | None = None,
        limit: int = 100,
        bodies: bool = False,
    ) -> list[DebugEntry]:
        """The live debugger of ``name``: its destination's requests and answers, newest
        first (oldest first after ``after_id``), by status (``429``, ``4xx``, ``error``) or
        record key."""
        from undertow.state.debug_log import DebugLog

        self.sync(name)
        try:
            return DebugLog(self.store).entries(
                name,
                status=status,
                key=key,
                run_id=run_id,
                after_id=after_id,
                limit=limit,
                bodies=bodies,
            )
        except ValueError as exc:
            raise UndertowError(str(exc), hint="e.g. `--status 4xx` or `--status 429`") from None

    def debug_entry(self, entry_id: int) -> DebugEntry:
        """One request of the debugger, with its headers and bodies."""
        from undertow.state.debug_log import DebugLog

        found = DebugLog(self.store).entry(entry_id)
        if found is None:
            raise UndertowError(
                f"no debugger entry {entry_id} (entries are kept for the newest requests only)",
                hint="`undertow debug SYNC` lists the entries kept",
            )
        return found

    def test_row(self, name: str, key: dict[str, str], *, dry_run: bool = False) -> TestResult:
        """Extract the row of ``name`` with primary key ``key`` ({column: value}), map it
        and send it for real (``dry_run``: show it only); record nothing but the
        debugger's entries. See :mod:`undertow.testrow`."""
        from undertow.testrow import test_row

        self.sync(name)
        ctx = self.context(name)
        try:
            with self.debugger.recording():
                return test_row(ctx, key, dry_run=dry_run)
        finally:
            ctx.source.close()

    def preview_model(self, name: str, *, limit: int = 20) -> dict[str, Any]:
        """The first rows of the sync's model, with the columns the sync maps named."""
        from undertow.testrow import preview_model

        ctx = self.context(name)
        try:
            return preview_model(ctx, limit)
        finally:
            ctx.source.close()
