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
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import duckdb
import pyarrow as pa

from undertow.errors import ModelError, StateError
from undertow.pipeline.diff import DiffEngine, DiffSpec, q
from undertow.redact import redact
from undertow.sources.base import NativeLoad
from undertow.state.files import disk_cause

if TYPE_CHECKING:
    from undertow.pipeline.run import SyncContext


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
