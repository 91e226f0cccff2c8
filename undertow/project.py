"""The one facade: the CLI, the web app, the scheduler and workers call ``Project`` only.

project = Project.load("path/to/project")
project.validate()                  # every problem, with file, line, key and a fix
project.plan("users_to_crm")        # a dry run: counts and payloads, nothing sent
project.run(["users_to_crm"])       # run syncs, resuming any that died
project.status(); project.runs("users_to_crm"); project.errors(run_id)
project.retry("users_to_crm")       # send again only the rows rejected last time
project.rejected_rows("users_to_crm")   # rows waiting, with first/last failure, attempts
project.reset("users_to_crm")       # forget the snapshot: next run is a first run

Validation is in :mod:`undertow.validation`, workers and the queue in
:mod:`undertow.distribution`, the UI's inspecting calls in :mod:`undertow.inspection`;
``Project`` inherits all three, so callers still use one object.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from undertow.config.loader import LoadedProject, load_project
from undertow.config.models import SyncConfig, SyncLogsConfig
from undertow.destinations.base import Destination
from undertow.distribution import Distribution
from undertow.errors import ConfigError, UndertowError, unknown_name
from undertow.inspection import Inspection
from undertow.pipeline.engines import make_engine
from undertow.pipeline.halt import Halt
from undertow.pipeline.preview import PlanPreview, preview
from undertow.pipeline.run import Reporter, SyncContext, SyncRun
from undertow.registry import destination_class, source_class
from undertow.results import SyncStatus
from undertow.sources.base import Source
from undertow.state.interfaces import StateReader, StateWriter
from undertow.state.store import RowError, RowStatus, RunRecord, StateStore
from undertow.validation import Problem, Validation

__all__ = ["Problem", "Project"]

if TYPE_CHECKING:
    from undertow.dbt.exposures import Exposures
    from undertow.debugger import DebugRecorder
    from undertow.orchestration.service import Due, Orchestration
    from undertow.workers.executor import QueueExecutor


class Project(Validation, Distribution, Inspection):
    """The project: its config, state store and every operation on its syncs (see the
    module docstring); the validating, distributing and inspecting halves are inherited."""

    def __init__(self, loaded: LoadedProject) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.root = loaded.root
        self._store: StateStore | None = None
        self._orchestration: Orchestration | None = None
        self._recorder: DebugRecorder | None = None
        self._executor: QueueExecutor | None = None

    @classmethod
    def load(cls, path: str = ".", *, require_secrets: bool = True) -> Project:
        """Load a project; ``require_secrets=False`` for commands that only read history."""
        return cls(load_project(path, require_secrets=require_secrets))

    def _deferred(self, section: str, name: str) -> None:
        error = self.loaded.deferred.get((section, name))
        if error is not None:
            raise error

    # -- lookups ----------------------------------------------------------------------------

    @property
    def store(self) -> StateStore:
        if self._store is None:
            self._store = StateStore(self.loaded.state_url)
        return self._store

    def migrate(self) -> tuple[int, int]:
        """Apply the state store's pending migrations (``undertow migrate``); return the
        versions before and after."""
        if self._store is not None:
            self._store.close()
        self._store = StateStore(self.loaded.state_url, migrate=True)
        return self._store.opened_at_version, self._store.version

    @property
    def orchestration(self) -> Orchestration:
        """Schedules, dependencies, freshness, SLAs and alerts (``undertow/orchestration``)."""
        if self._orchestration is None:
            from undertow.orchestration.service import Orchestration

            self._orchestration = Orchestration(
                config=self.config,
                root=self.root,
                store=self.store,
                model_sql=self.loaded.model_sql,
            )
        return self._orchestration

    @property
    def debugger(self) -> DebugRecorder:
        """Stores what each sync's destination was sent and answered (``undertow debug``)."""
        if self._recorder is None:
            from undertow.debugger import DebugRecorder
            from undertow.state.debug_log import DebugLog

            self._recorder = DebugRecorder(self.config, DebugLog(self.store))
        return self._recorder

    def close(self) -> None:
        if self._recorder is not None:
            self._recorder.flush()
            self._recorder = None
        self._orchestration = None
        self._executor = None
        if self._store is not None:
            self._store.close()
            self._store = None

    @property
    def sync_names(self) -> list[str]:
        return list(self.config.syncs)

    def sync(self, name: str) -> SyncConfig:
        try:
            return self.config.syncs[name]
        except KeyError:
            raise ConfigError(
                unknown_name("sync", name, self.config.syncs),
                hint="`undertow status` lists the project's syncs",
            ) from None

    def source(self, name: str) -> Source:
        self._deferred("sources", name)
        cfg = self.loaded.sources[name]
        return source_class(cfg.type)(cfg, name=name, base_dir=str(self.root))

    def destination(self, name: str) -> Destination:
        self._deferred("destinations", name)
        cfg = self.loaded.destinations[name]
        path = getattr(cfg, "path", None)
        if isinstance(path, str) and "://" not in path:
            # a file path in a project file is relative to the project, not to the shell's cwd
            resolved = (self.root / Path(path).expanduser()).resolve()
            cfg = cfg.model_copy(update={"path": str(resolved)})
        destination = destination_class(cfg.type)(cfg, name=name)
        destination.base_dir = str(self.root)  # `local://inbox.jsonl` is the project's file
        return destination

    def context(self, name: str) -> SyncContext:
        sync = self.sync(name)
        model = self.config.models[sync.model]
        return SyncContext(
            name=name,
            sync=sync,
            model_name=sync.model,
            model=model,
            sql=self.loaded.model_sql[sync.model],
            source=self.source(model.source),
            destination=self.destination(sync.destination),
            destination_name=sync.destination,
            state_dir=self.loaded.state_dir,
        )

    def dbt_exposures(
        self, *, dbt_project: str | None = None, owner: str = "Undertow", email: str | None = None
    ) -> Exposures:
        """The syncs as a dbt exposures file (``undertow dbt exposures``, docs/dbt.md)."""
        from undertow.dbt.exposures import build_exposures

        return build_exposures(self.loaded, dbt_project=dbt_project, owner=owner, email=email)

    # -- plan -------------------------------------------------------------------------------

    def plan(self, name: str, *, limit: int = 5, full: bool = False) -> PlanPreview:
        """A dry run: extract and diff in memory against the snapshot; send nothing."""
        ctx = self.context(name)
        try:
            if ctx.destination.objects is not None or ctx.destination.any_object:
                self._check_object(ctx)
            return preview(ctx, limit=limit, full=full)
        finally:
            ctx.source.close()

    # -- run --------------------------------------------------------------------------------

    def run(
        self,
        names: list[str],
        *,
        full: bool = False,
        reporter: Reporter | None = None,
        trigger: str = "manual",
        allow_deletes: bool = False,
        chain: bool = True,
        halt: Halt | None = None,
        worker: str | None = None,
    ) -> list[RunRecord]:
        """Run syncs; ``allow_deletes`` lifts max_deletes / max_delete_ratio for these runs.

        A sync with ``freshness:`` is checked first (a stale model sends nothing). After a
        successful run its ``then:`` syncs run too (``chain``) or are queued for the
        scheduler; ``halt`` (set from another thread) stops runs after the batches in flight.
        """
        for name in names:
            self.sync(name)  # unknown names fail before anything runs
        self.share_budgets()
        records = []
        queue = list(names)
        for name in queue:  # grows with `then:` syncs when chaining
            if halt is not None and halt.is_set():
                break  # stopped between two syncs: the rest do not start
            ctx = self.context(name)
            try:
                stale = self.orchestration.before_run(ctx, trigger=trigger)
                sync_run = SyncRun(
                    ctx, self.store, reporter, trigger=trigger, allow_deletes=allow_deletes
                )
                if halt is not None:
                    sync_run.halt = halt
                self._cluster_settings(sync_run, worker)
                logs = self._sync_logs(ctx, sync_run)
                try:
                    with self.debugger.recording():
                        records.append(stale or sync_run.execute(full=full))
                    if logs is not None:
                        self._write_sync_logs(ctx, logs, records[-1], sync_run)
                finally:
                    if sync_run.changelog_live is not None:
                        sync_run.changelog_live.abandon()  # a no-op once written
            finally:
                ctx.source.close()
            for downstream in self.orchestration.after_run(records[-1]):
                if not chain:
                    self.orchestration.enqueue(downstream, full=False, reason=f"then:{name}")
                elif downstream not in queue[queue.index(name) + 1 :]:
                    queue.append(downstream)
        return records

    @property
    def reader(self) -> StateReader:
        """The state store for the read paths (status, runs, errors, the API and the UI):
        typed as a :class:`~undertow.state.interfaces.StateReader`, so they cannot write."""
        store: StateReader = self.store  # mypy checks that the store is a reader
        return store

    @property
    def writer(self) -> StateWriter:
        """The state store for runs, ``reset`` and the scheduler (reads and writes)."""
        store: StateWriter = self.store
        return store

    def retry(
        self, name: str, *, reporter: Reporter | None = None, allow_deletes: bool = False
    ) -> RunRecord | None:
        """Send again, now, only the rows whose latest outcome was rejected or failed.

        A run with ``trigger="retry"`` whose plan holds only those keys (with their current
        values from the model); rows whose values are already accepted, or that left the
        model, are marked resolved without sending. None when no row is waiting.
        """
        self.sync(name)
        keys = self.store.open_row_keys(name)
        if not keys:
            return None
        self.share_budgets()
        ctx = self.context(name)
        try:
            sync_run = SyncRun(
                ctx,
                self.store,
                reporter,
                trigger="retry",
                allow_deletes=allow_deletes,
                only_keys=keys,
            )
            logs = self._sync_logs(ctx, sync_run)
            try:
                with self.debugger.recording():
                    record = sync_run.execute()
                if logs is not None:
                    self._write_sync_logs(ctx, logs, record, sync_run)
            finally:
                if sync_run.changelog_live is not None:
                    sync_run.changelog_live.abandon()  # a no-op once written
            return record
        finally:
            ctx.source.close()

    def _sync_logs(self, ctx: SyncContext, sync_run: SyncRun) -> SyncLogsConfig | None:
        if (
            ctx.sync.sync_logs is None
            and getattr(ctx.source.config, "sync_logs", None) is None
            and self.config.sync_logs is None
        ):
            return None  # the common case: nothing to import, nothing to spool
        from undertow.sync_logs import LiveChangelog, SyncLogWriter, settings_for, spool_dir

        settings = settings_for(ctx, self.config.sync_logs)
        if settings is not None and settings.changelog:
            sync_run.changelog_dir = spool_dir(ctx.state_dir, ctx.name)
            sync_run.changelog_live = LiveChangelog(SyncLogWriter(ctx, settings, self.store))
        return settings

    def _write_sync_logs(
        self, ctx: SyncContext, logs: SyncLogsConfig, record: RunRecord, sync_run: SyncRun
    ) -> None:
        """Write the run into the warehouse's sync logs; a failure is a warning on the run."""
        from undertow.sync_logs import after_run

        warning = after_run(ctx, logs, self.store, record, sync_run.changelog_live)
        if warning is not None:
            joined = f"{record.warning}; {warning}" if record.warning else warning
            self.store.update_run(record, warning=joined)

    @property
    def executor(self) -> QueueExecutor:
        """The queue runs go to (``executor: {type: celery}``); raises without one."""
        if self._executor is None:
            from undertow.workers.executor import QueueExecutor

            self._executor = QueueExecutor(self)
        return self._executor

    # -- history ----------------------------------------------------------------------------

    def status(self) -> list[SyncStatus]:
        last = self.reader.last_runs()
        locks = self.reader.held_locks()
        rows: list[SyncStatus] = []
        for name, sync in self.config.syncs.items():
            run = last.get(name)
            rows.append(
                SyncStatus(
                    sync=name,
                    model=sync.model,
                    destination=sync.destination,
                    mode=str(sync.mode),
                    running=name in locks,
                    last_run=run.as_dict() if run else None,
                    **self.orchestration.overview(name),
                )
            )
        return rows

    def runs(self, name: str, *, limit: int = 20) -> list[RunRecord]:
        self.sync(name)
        return self.reader.list_runs(name, limit=limit)

    def get_run(self, run_id: str) -> RunRecord:
        run = self.reader.get_run(run_id)
        if run is None:
            matches = self.reader.find_runs(run_id)
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise UndertowError(
                    f"run id prefix {run_id!r} matches more than one run: "
                    + ", ".join(m.id for m in matches),
                    hint="give more characters of the run id",
                )
            raise UndertowError(
                f"no run {run_id!r} in the state store {self.reader.display_url}",
                hint="`undertow runs SYNC` lists run ids",
            )
        return run

    def errors(self, run_id: str, *, limit: int | None = None) -> list[RowError]:
        run = self.get_run(run_id)
        return self.reader.row_errors(run.id, limit=limit)

    def rejected_rows(self, name: str, *, limit: int | None = None) -> list[RowStatus]:
        """The sync's rows whose latest outcome was rejected or failed, with their history."""
        self.sync(name)
        return self.reader.row_statuses(name, limit=limit)

    def reset(self, name: str) -> int:
        """Forget what the destination accepted; the next run of ``name`` is a first run."""
        self.sync(name)
        lock = self.store.acquire_lock(name)
        try:
            ctx = self.context(name)
            try:
                engine = make_engine(ctx)
                try:
                    rows = engine.snapshot_rows()
                    engine.reset()
                finally:
                    engine.close()
            finally:
                ctx.source.close()
            unfinished = self.store.unfinished_run(name)
            if unfinished is not None:
                from undertow.state.store import RunStatus

                self.store.update_run(
                    unfinished, status=RunStatus.CANCELLED, error="cancelled by reset"
                )
            return rows
        finally:
            lock.release()

    # -- orchestration: what the scheduler and `undertow serve` call -----------------------

    def due(self, running: set[str]) -> list[Due]:
        """Syncs to start now: queued triggers, unfinished runs, schedule ticks, ``after:``."""
        return self.orchestration.due(running)

    def launched(self, due: Due) -> None:
        self.orchestration.launched(due)

    def poll_signals(self) -> int:
        """Read the watched dbt projects' run results; return how many events are new."""
        return self.orchestration.poll_signals()

    def check_slas(self) -> None:
        self.orchestration.check_slas()

    def trigger(self, name: str, *, full: bool = False, reason: str = "api") -> int:
        """Queue a run of ``name`` for the scheduler (durable: survives a restart)."""
        self.sync(name)
        return self.orchestration.enqueue(name, full=full, reason=reason)

    def pause(self, name: str) -> None:
        """Stop scheduling ``name`` (an explicit trigger still runs it)."""
        self.sync(name)
        self.orchestration.set_paused(name, True)

    def resume(self, name: str) -> None:
        self.sync(name)
        self.orchestration.set_paused(name, False)

    def signal(self, name: str, detail: dict[str, Any] | None = None) -> str:
        """Record that webhook signal ``name`` fired (an upstream finished loading)."""
        if name not in self.config.webhooks:
            raise ConfigError(
                unknown_name("webhook", name, self.config.webhooks),
                hint="declare it under `webhooks:` in undertow.yml",
            )
        return self.orchestration.record_webhook(name, detail or {}).isoformat()

    def signal_token(self, name: str) -> str | None:
        """The token webhook ``name`` requires (its own, else the server's), if any."""
        hook = self.config.webhooks.get(name)
        if hook is not None and hook.token is not None:
            return hook.token.get_secret_value()
        return self.api_token

    @property
    def api_token(self) -> str | None:
        token = self.config.server.token
        return token.get_secret_value() if token is not None else None

    def sync_status(self, name: str) -> SyncStatus:
        """One row of :meth:`status`."""
        self.sync(name)
        return next(row for row in self.status() if row["sync"] == name)
