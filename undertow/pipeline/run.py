"""The run: the only module that knows the order of the six stages.

    extract -> diff -> plan -> map -> deliver -> record

A run is a state machine persisted in the state store::

    pending -> extracting -> diffing -> delivering -> succeeded | failed | cancelled

A run that dies (kill -9, power loss) is resumed by the next run of its sync: if it had
reached ``delivering``, its change set is still in the diff file and the batches without a
checkpoint are sent (those in flight at the crash may be sent twice, with the same
idempotency key); if not, it starts again from extract under the same run id.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import duckdb
import pyarrow as pa

from undertow.config.models import ModelConfig, SyncConfig
from undertow.destinations.base import Batch, Capabilities, Destination
from undertow.errors import ModelError, PlanError, UndertowError
from undertow.pipeline.deliver import DeliveryReport, Outcome, RetryPolicy, deliver
from undertow.pipeline.diff import DiffEngine, DiffSpec, LocalDiffEngine, q
from undertow.pipeline.map import CompiledMapping, compile_mapping
from undertow.pipeline.plan import Plan, make_plan
from undertow.pipeline.record import Recorder, Work
from undertow.redact import redact
from undertow.sources.base import Source
from undertow.state.store import RowError, RunRecord, RunStatus, StateStore

HEARTBEAT_SECONDS = 15.0


class Reporter(Protocol):
    """Where a run reports its progress (a progress bar on a terminal, nothing in --json)."""

    def stage(self, sync: str, stage: str, total: int | None = None) -> None: ...
    def advance(self, sync: str, amount: int) -> None: ...
    def note(self, sync: str, text: str) -> None: ...


class NullReporter:
    def stage(self, sync: str, stage: str, total: int | None = None) -> None:
        pass

    def advance(self, sync: str, amount: int) -> None:
        pass

    def note(self, sync: str, text: str) -> None:
        pass


@dataclass
class SyncContext:
    """Everything one sync's run needs, resolved by the Project facade."""

    name: str
    sync: SyncConfig
    model_name: str
    model: ModelConfig
    sql: str
    source: Source
    destination: Destination
    destination_name: str
    state_dir: Path
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def caps(self) -> Capabilities:
        return self.destination.capabilities_for(self.sync.object)

    def batch_size(self) -> int:
        limit = self.caps.max_batch_size
        wanted = self.sync.batch_size or limit
        if wanted > limit:
            raise PlanError(
                f"sync {self.name!r}: batch_size {wanted} exceeds destination "
                f"{self.destination_name!r}'s limit of {limit} records per request",
                hint=f"set `batch_size: {limit}` or less, or remove it to use the limit",
            )
        return wanted

    def plan(self, *, full: bool) -> Plan:
        return make_plan(
            sync=self.name,
            mode=self.sync.mode,
            destination=self.destination_name,
            caps=self.caps,
            full=full,
        )


def projected_sql(sql: str, columns: list[str]) -> str:
    """Only the columns the sync reads leave the warehouse."""
    cols = ", ".join(q(c) for c in columns)
    return f"SELECT {cols} FROM ({sql.strip().rstrip(';')}) AS _ut_model"


def compile_for(ctx: SyncContext) -> tuple[CompiledMapping, DiffSpec]:
    schema = ctx.source.describe(ctx.sql, model=ctx.model_name)
    caps = ctx.caps
    if caps.requires_match and not ctx.sync.match:
        raise PlanError(
            f"sync {ctx.name!r}: destination {ctx.destination_name!r} needs `match:` to know "
            "which record a row updates",
            hint="add e.g. `match: {email: email}` (destination field: model column)",
        )
    mapping = compile_mapping(ctx.name, ctx.sync, schema, max_payload_bytes=caps.max_payload_bytes)
    keys = list(ctx.model.primary_key)
    missing = [k for k in keys if k not in schema.names]
    if missing:
        from undertow.errors import PrimaryKeyError, did_you_mean

        hints = [h for h in (did_you_mean(k, schema.names) for k in missing) if h]
        raise PrimaryKeyError(
            f"model {ctx.model_name!r}: primary key column(s) "
            f"{', '.join(map(repr, missing))} not among its columns "
            f"({', '.join(schema.names)})",
            hint=hints[0] if hints else "fix `primary_key:` or add the column to the SQL",
        )
    columns = keys + [c for c in mapping.columns if c not in keys]
    spec = DiffSpec(sync=ctx.name, keys=keys, columns=columns, fingerprint=ctx.sync.fingerprint())
    return mapping, spec


class _CountingReader:
    """Wrap a reader to report rows as they stream by (keeps memory bounded)."""

    def __init__(self, reader: pa.RecordBatchReader, reporter: Reporter, sync: str) -> None:
        self.reader = reader
        self.reporter = reporter
        self.sync = sync

    def batches(self) -> Iterator[pa.RecordBatch]:
        for batch in self.reader:
            self.reporter.advance(self.sync, batch.num_rows)
            yield batch

    def as_reader(self) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(self.reader.schema, self.batches())


class _Heartbeat:
    def __init__(self, beat: Callable[[], None]) -> None:
        self._beat = beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="undertow-heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):
                self._beat()

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


class SyncRun:
    """Runs one sync once: resumes an unfinished run or starts a new one."""

    def __init__(
        self,
        ctx: SyncContext,
        store: StateStore,
        reporter: Reporter | None = None,
        *,
        trigger: str = "manual",
    ) -> None:
        self.ctx = ctx
        self.store = store
        self.reporter: Reporter = reporter or NullReporter()
        self.trigger = trigger
        self.stop = asyncio.Event()

    def execute(self, *, full: bool = False) -> RunRecord:
        ctx = self.ctx
        plan = ctx.plan(full=full)  # fails before anything is sent or locked
        batch_size = ctx.batch_size()
        lock = self.store.acquire_lock(ctx.name)
        try:
            with _Heartbeat(lock.heartbeat):
                return self._execute_locked(plan, batch_size, full)
        finally:
            lock.release()

    def _execute_locked(self, plan: Plan, batch_size: int, full: bool) -> RunRecord:
        ctx = self.ctx
        run = self.store.unfinished_run(ctx.name)
        resumed = run is not None
        if run is None:
            run = self.store.create_run(ctx.name, full=full, trigger=self.trigger)
        else:
            self.reporter.note(ctx.name, f"resuming run {run.id} (was {run.status})")
            plan = ctx.plan(full=run.full_resync)
            full = run.full_resync
        engine = LocalDiffEngine(ctx.state_dir, ctx.name)
        try:
            engine.discard_all_plans(keep=run.id)
            mapping, spec = compile_for(ctx)
            if resumed and run.status == RunStatus.DELIVERING and not engine.has_plan(run.id):
                # its checkpoints refer to a change set that is gone (the diff file was
                # deleted): close it and start afresh; the snapshot still holds only
                # accepted rows, so nothing is lost
                self.store.update_run(
                    run,
                    status=RunStatus.FAILED,
                    error="its change set was lost (diff file removed); superseded by a new run",
                )
                run = self.store.create_run(ctx.name, full=full, trigger=self.trigger)
                resumed = False
            if resumed and run.status == RunStatus.DELIVERING:
                self.store.update_run(run, bump_attempt=True)
                batch_size = run.batch_size or batch_size
            else:
                if resumed:
                    self.store.update_run(run, bump_attempt=True)
                self._extract_and_diff(run, engine, spec, plan, batch_size)
            return self._deliver_and_record(run, engine, mapping, spec, batch_size)
        except UndertowError as exc:
            self.store.update_run(run, status=RunStatus.FAILED, error=str(exc))
            return run
        except Exception as exc:  # a bug or a driver error: keep the run honest
            self.store.update_run(
                run, status=RunStatus.FAILED, error=redact(f"{type(exc).__name__}: {exc}")
            )
            raise
        finally:
            engine.close()

    # -- extract + diff + plan --------------------------------------------------------------

    def _extract_and_diff(
        self, run: RunRecord, engine: DiffEngine, spec: DiffSpec, plan: Plan, batch_size: int
    ) -> None:
        ctx = self.ctx
        self.store.update_run(run, status=RunStatus.EXTRACTING)
        self.reporter.stage(ctx.name, "extract")
        reader = ctx.source.extract(projected_sql(ctx.sql, spec.columns), model=ctx.model_name)
        counting = _CountingReader(reader, self.reporter, ctx.name).as_reader()
        self.store.update_run(run, status=RunStatus.DIFFING)
        try:
            stats = engine.build(run.id, counting, spec, plan, batch_size)
        except (pa.ArrowException, duckdb.Error) as exc:
            # a failure while streaming the model (e.g. division by zero on row 3 million)
            raise ModelError(
                redact(str(exc)).splitlines()[0],
                model=ctx.model_name,
                source=ctx.model.source,
                hint="fix the model's SQL; nothing was sent and the snapshot is unchanged",
            ) from exc
        self.reporter.stage(ctx.name, "diff")
        run.counts.update(stats.as_counts())
        run.counts["rejected"] = stats.invalid
        run.batch_size = batch_size
        run.total_batches = stats.total_batches
        invalid = [
            RowError(
                run_id=run.id,
                sync=ctx.name,
                row_key=key,
                kind="invalid_key",
                reason=reason,
                created_at=run.created_at,
            )
            for key, reason in engine.invalid_rows(run.id)
        ]
        self.store.add_row_errors(invalid)
        self.store.update_run(run, status=RunStatus.DELIVERING)

    # -- map + deliver + record -------------------------------------------------------------

    def _works(
        self, run: RunRecord, engine: DiffEngine, mapping: CompiledMapping, skip: set[int]
    ) -> Iterator[tuple[Work, Batch | None]]:
        ctx = self.ctx
        for chunk in engine.chunks(run.id, skip=skip):
            frame = chunk.frame
            mapped = mapping.map(
                frame.drop(["_ut_seq", "_ut_batch", "_ut_key", "_ut_op", "_ut_kind"])
            )
            seqs = frame.get_column("_ut_seq").to_list()
            batch_nos = frame.get_column("_ut_batch").to_list()
            keys = frame.get_column("_ut_key").to_list()
            per: dict[int, Work] = {}
            payloads: dict[int, list[str]] = {}
            idents: dict[int, dict[str, list[object]]] = {}
            for number, op in chunk.batches:
                per[number] = Work(number=number, operation=op, size=0, seqs=[], keys=[])
                payloads[number] = []
                idents[number] = {f: [] for f in mapped.identifiers}
            for b in batch_nos:
                per[b].size += 1
            for pos, reason in mapped.rejected:
                per[batch_nos[pos]].map_rejected.append((seqs[pos], keys[pos], reason))
            for i, pos in enumerate(mapped.index):
                b = batch_nos[pos]
                work = per[b]
                work.seqs.append(seqs[pos])
                work.keys.append(keys[pos])
                payloads[b].append(mapped.payloads[i])
                for f, values in mapped.identifiers.items():
                    idents[b][f].append(values[i])
            for number, op in chunk.batches:
                work = per[number]
                batch = None
                if work.seqs:
                    batch = Batch(
                        sync=ctx.name,
                        operation=op,
                        number=number,
                        idempotency_key=f"{run.id}-{number}",
                        keys=work.keys,
                        payloads=payloads[number],
                        identifiers=idents[number],
                        object=ctx.sync.object,
                    )
                yield work, batch

    def _deliver_and_record(
        self,
        run: RunRecord,
        engine: DiffEngine,
        mapping: CompiledMapping,
        spec: DiffSpec,
        batch_size: int,
    ) -> RunRecord:
        ctx = self.ctx
        done = self.store.done_batches(run.id)
        recorder = Recorder(self.store, run)
        remaining = run.counts.get("planned", 0)
        self.reporter.stage(ctx.name, "deliver", total=remaining)
        error: UndertowError | None = None
        cancelled = False
        try:
            report = asyncio.run(self._deliver(run, engine, mapping, done, recorder))
            error = report.stopped
            cancelled = report.cancelled
        finally:
            self.reporter.stage(ctx.name, "record")
            done = self.store.done_batches(run.id)
            engine.fold(run.id, spec, done, self.store.not_accepted_seqs(run.id))
        complete = len(done) >= (run.total_batches or 0)
        if error is not None:
            status = RunStatus.FAILED
            message: str | None = str(error)
        elif cancelled or not complete:
            status = RunStatus.CANCELLED
            message = "cancelled: batches sent so far are recorded; the next run sends the rest"
        elif run.counts.get("failed", 0):
            status = RunStatus.FAILED
            message = (
                f"{run.counts['failed']} row(s) could not be delivered (transient failures); "
                "the next run retries them"
            )
        else:
            status = RunStatus.SUCCEEDED
            message = None
        self.store.update_run(run, status=status, error=message)
        engine.discard(run.id)
        return run

    async def _deliver(
        self,
        run: RunRecord,
        engine: DiffEngine,
        mapping: CompiledMapping,
        done: set[int],
        recorder: Recorder,
    ) -> DeliveryReport:
        ctx = self.ctx
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.stop.set)
        works: dict[int, Work] = {}
        source = self._works(run, engine, mapping, done)

        def pull() -> tuple[Work, Batch | None] | None:
            return next(source, None)

        async def batches() -> AsyncIterator[Batch]:
            while not self.stop.is_set():
                item = await asyncio.to_thread(pull)
                if item is None:
                    return
                work, batch = item
                if batch is None:
                    recorder.checkpoint(work, None, 0)
                    self.reporter.advance(ctx.name, work.size)
                    continue
                works[work.number] = work
                yield batch

        def on_outcome(outcome: Outcome) -> None:
            work = works.pop(outcome.batch.number)
            recorder.checkpoint(work, outcome.result, outcome.attempts)
            self.reporter.advance(ctx.name, work.size)

        await ctx.destination.open()
        try:
            return await deliver(
                ctx.destination,
                batches(),
                concurrency=ctx.caps.max_concurrency,
                rate_limit=ctx.caps.rate_limit,
                on_outcome=on_outcome,
                stop=self.stop,
                policy=ctx.retry,
            )
        finally:
            await ctx.destination.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)
