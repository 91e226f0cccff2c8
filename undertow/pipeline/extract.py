"""extract: run the model's SQL on its source and hand its rows to the diff engine.

Only the columns the sync reads leave the warehouse (:func:`projected_sql`). The rows stream
as Arrow record batches, counted for the progress bar as they pass (:class:`CountingReader`),
so memory stays bounded whatever the model's size. A source DuckDB can read natively (a
DuckDB file, Parquet, CSV) is loaded by the local engine itself (a
:data:`~undertow.sources.base.NativeLoad`, no Arrow round trip); the ``warehouse`` engine
reads the model inside the source, so nothing is extracted at all.

The rows are read while the diff engine loads them: a failure on row three million surfaces
from ``build``, and :func:`model_failures` turns it into a :class:`~undertow.errors.ModelError`
naming the model (and Ctrl-C / SIGTERM caught by DuckDB into ``KeyboardInterrupt``).

:func:`extract_and_diff` is the run's first two stages: the change set is built, the delete
guard checked (a refused run discards it, so the next run diffs again) and the rows with a
NULL or duplicate key stored as errors, before the run turns ``delivering``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import duckdb
import pyarrow as pa

from undertow.errors import ModelError, StateError, UndertowError
from undertow.pipeline.diff import DiffEngine, DiffSpec, q
from undertow.pipeline.halt import halting
from undertow.pipeline.plan import Plan, check_deletes
from undertow.redact import redact
from undertow.sources.base import NativeLoad
from undertow.state.files import disk_cause
from undertow.state.store import RowError, RunRecord, RunStatus

if TYPE_CHECKING:
    from undertow.pipeline.context import SyncContext
    from undertow.pipeline.run import SyncRun


class Progress(Protocol):
    def advance(self, sync: str, amount: int) -> None: ...


def projected_sql(sql: str, columns: list[str], quote: Callable[[str], str] = q) -> str:
    """Only the columns the sync reads leave the warehouse.

    ``quote`` is the source's :meth:`~undertow.sources.base.Source.quote_identifier`
    (MySQL quotes with backticks). The model's SQL sits on lines of its own, so a trailing
    ``-- comment`` in it cannot swallow the closing parenthesis.
    """
    cols = ", ".join(quote(c) for c in columns)
    return f"SELECT {cols} FROM (\n{sql.strip().rstrip(';')}\n) AS _ut_model"


class CountingReader:
    """Wrap a reader to report rows as they stream by (keeps memory bounded)."""

    def __init__(self, reader: pa.RecordBatchReader, progress: Progress, sync: str) -> None:
        self.reader = reader
        self.progress = progress
        self.sync = sync

    def batches(self) -> Iterator[pa.RecordBatch]:
        for batch in self.reader:
            self.progress.advance(self.sync, batch.num_rows)
            yield batch

    def as_reader(self) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(self.reader.schema, self.batches())


def open_model(
    ctx: SyncContext,
    engine: DiffEngine,
    spec: DiffSpec,
    progress: Progress | None = None,
    *,
    native: bool = True,
) -> pa.RecordBatchReader | NativeLoad | None:
    """What ``engine.build`` reads the model from: with ``native``, a native load for the
    local engine when the source offers one; an Arrow stream otherwise (counted into
    ``progress``); None for an engine that reads the model inside the source."""
    if not engine.pulls_model:
        return None
    sql = projected_sql(ctx.sql, spec.columns, ctx.source.quote_identifier)
    if native and engine.name == "local":
        load = ctx.source.load_into_duckdb(sql, model=ctx.model_name)
        if load is not None:
            return load
    reader = ctx.source.extract(sql, model=ctx.model_name)
    if progress is None:
        return reader
    return CountingReader(reader, progress, ctx.name).as_reader()


@contextlib.contextmanager
def model_failures(ctx: SyncContext) -> Iterator[None]:
    """A failure while the model streams, as a ModelError; an interrupt as KeyboardInterrupt."""
    try:
        yield
    except duckdb.InterruptException:
        raise KeyboardInterrupt from None  # DuckDB stopped a query on Ctrl-C / SIGTERM
    except RuntimeError as exc:
        if "interrupted" in str(exc).lower():  # the same, as some DuckDB calls report it
            raise KeyboardInterrupt from None
        raise
    except (pa.ArrowException, duckdb.Error) as exc:
        cause = disk_cause(str(exc))
        if cause is not None or (
            isinstance(exc, duckdb.IOException) and str(ctx.state_dir) in str(exc)
        ):
            # the diff files could not be written: the state folder's disk, not the model
            raise StateError(
                f"sync {ctx.name!r}: cannot write its diff files under {ctx.state_dir}: "
                f"{cause or redact(str(exc)).splitlines()[0]}",
                hint="free some space on that disk (or set `state_dir:` to a folder on "
                "another disk), then run again; nothing was sent and the snapshot is "
                "unchanged",
            ) from exc
        # a failure while streaming the model (e.g. division by zero on row 3 million)
        raise ModelError(
            redact(str(exc)).splitlines()[0],
            model=ctx.model_name,
            source=ctx.model.source,
            hint="fix the model's SQL; nothing was sent and the snapshot is unchanged",
        ) from exc


def extract_and_diff(
    sync_run: SyncRun,
    run: RunRecord,
    engine: DiffEngine,
    spec: DiffSpec,
    plan: Plan,
    batch_size: int,
) -> None:
    """Extract the model into the diff engine and build ``run``'s change set; its counts
    go on ``run``, which ends this ``delivering`` (or raises: nothing was sent)."""
    ctx = sync_run.ctx
    sync_run._update(run, status=RunStatus.EXTRACTING)
    sync_run.reporter.stage(ctx.name, "extract")
    model = open_model(ctx, engine, spec, sync_run.reporter)
    if isinstance(model, pa.RecordBatchReader):
        model = halting(model, sync_run.halt)
    sync_run._update(run, status=RunStatus.DIFFING)
    with model_failures(ctx):
        stats = engine.build(
            run.id,
            model,
            spec,
            plan,
            batch_size,
            only_keys=sync_run.only_keys,
            watch_keys=sync_run.open_keys,
        )
    sync_run.reporter.stage(ctx.name, "diff")
    run.counts.update(stats.as_counts())
    run.counts["rejected"] = stats.invalid
    run.batch_size = batch_size
    run.total_batches = stats.total_batches
    if not sync_run.allow_deletes:
        try:
            check_deletes(
                sync=ctx.name,
                plan=plan,
                deletes=stats.deletes,
                removed=stats.removed,
                snapshot=stats.snapshot,
                max_deletes=ctx.sync.max_deletes,
                max_delete_ratio=ctx.sync.max_delete_ratio,
            )
        except UndertowError:
            engine.discard(run.id)  # the next run diffs again
            raise
    # rows with an open failure and nothing left to send (reverted, or gone)
    sync_run.store.resolve_rows(ctx.name, stats.settled)
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
    sync_run.store.add_row_errors(invalid)
    if sync_run.halt.is_set():
        engine.discard(run.id)
        raise KeyboardInterrupt  # halted at the stage boundary: nothing was sent
    sync_run._update(run, status=RunStatus.DELIVERING)
