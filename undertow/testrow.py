"""Test a row: one row of a sync's model, mapped and sent for real, with nothing recorded.

``undertow test SYNC --key id=42`` (and the UI's "Test a row"):

1. extract the row whose primary key is the given value(s), with a ``WHERE`` on the key
   columns' text (``CAST(col AS TEXT) = '42'``, transpiled to the source's dialect), so
   only that row leaves the warehouse;
2. map it with the sync's mapping (a row the mapping refuses is reported, not sent);
3. send it through the sync's destination as a one-record batch of the operation the
   plan gives a new or changed row (``upsert`` for an upsert sync), inside the capture
   hook, so the HTTP requests and answers are shown and kept by the live debugger
   (with no run id);
4. record nothing else: no run, no checkpoint, no snapshot row, no row history. The next
   run treats the row exactly as it would have anyway (a test of a changed row does not
   stop the next run from sending it).

``dry_run`` sends nothing. It shows the record as the destination would put it on the wire
(:meth:`Destination.preview`) and, for a destination that speaks HTTP through the shared
client (``Destination.sends_http``), the first request it would make, as the live debugger
would show it (method, URL without its query string, headers with credentials masked, the
body redacted and trimmed): the connector builds the request as in a real send and the
client stops it before it leaves (``_http.dry_run``). An OAuth login is skipped, and its
token shown as a placeholder. A connector that reads before it writes (Google Sheets reads
the tab, a lookup by email searches first) shows that read: it is the first request. Other
destinations (databases, queues, files) are never opened in a dry run.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
import sqlglot

from undertow.destinations import capture
from undertow.destinations._http import DryRunStop, dry_run
from undertow.destinations.base import Batch, BatchResult
from undertow.errors import (
    ConfigError,
    DeliveryError,
    FatalDeliveryError,
    RejectedBatchError,
    RetryableError,
    UndertowError,
    did_you_mean,
)
from undertow.pipeline.record import settle_not_found
from undertow.pipeline.run import compile_for, projected_sql
from undertow.sources.scratch_sql import ident, lit

if TYPE_CHECKING:
    from undertow.pipeline.run import SyncContext

PREVIEW_ROWS = 20


@dataclass
class TestResult:
    """What ``test_row`` did with the row, for the CLI, the API and the UI."""

    sync: str
    key: str
    operation: str
    sent: bool
    outcome: str
    """``accepted``, ``rejected``, ``failed`` (transient), ``skipped`` (an update of a record
    the destination lacks), ``not mapped``, or ``dry run``."""
    message: str | None = None
    row: dict[str, Any] = field(default_factory=dict)
    """The model row's mapped columns (values as JSON would show them)."""
    payload: Any = None
    """The record as the destination puts it on the wire."""
    exchanges: list[dict[str, Any]] = field(default_factory=list)
    """Every HTTP request sent and its answer (redacted, trimmed, as the debugger keeps)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "key": self.key,
            "operation": self.operation,
            "sent": self.sent,
            "outcome": self.outcome,
            "message": self.message,
            "row": self.row,
            "payload": self.payload,
            "exchanges": self.exchanges,
        }


def exchange_dict(exchange: capture.Exchange) -> dict[str, Any]:
    return {
        "method": exchange.method,
        "url": exchange.url,
        "status": exchange.status,
        "duration_ms": round(exchange.duration * 1000, 1),
        "request_id": exchange.request_id,
        "error": exchange.error,
        "request_headers": exchange.request_headers,
        "request_body": exchange.request_body,
        "response_headers": exchange.response_headers,
        "response_body": exchange.response_body,
    }


def _dialect(ctx: SyncContext) -> str:
    return ctx.source.sql_dialect or ctx.source.name


def _key_filter(ctx: SyncContext, key: dict[str, str]) -> str:
    """``WHERE`` condition on the key columns' text, in the source's dialect."""
    pk = list(ctx.model.primary_key)
    unknown = [k for k in key if k not in pk]
    missing = [k for k in pk if k not in key]
    if unknown or missing:
        what = (
            f"{unknown[0]!r} is not a primary key column"
            if unknown
            else f"the value of key column {missing[0]!r} is missing"
        )
        hint = did_you_mean(unknown[0], pk) if unknown else None
        raise ConfigError(
            f"sync {ctx.name!r}: {what} (model {ctx.model_name!r} is keyed by {', '.join(pk)})",
            hint=hint or "give every key column: " + " ".join(f"--key {k}=VALUE" for k in pk),
        )
    template = " AND ".join(f"CAST({ident(k)} AS TEXT) = {lit(key[k])}" for k in pk)
    out: str = sqlglot.transpile(template, read="postgres", write=_dialect(ctx))[0]
    return out


def key_text(keys: list[str], row: dict[str, Any]) -> str:
    """The row key as the diff engines write it (``42``, or ``a=1, b=x``)."""
    if len(keys) == 1:
        return "NULL" if row[keys[0]] is None else str(row[keys[0]])
    return ", ".join(f"{k}={'NULL' if row[k] is None else row[k]}" for k in keys)


def test_row(ctx: SyncContext, key: dict[str, str], *, dry_run: bool) -> TestResult:
    mapping, spec = compile_for(ctx)
    plan = ctx.plan(full=False)
    operation = plan.ops.get("added") or next(iter(plan.ops.values()))
    quote = ctx.source.quote_identifier
    sql = projected_sql(ctx.sql, spec.columns, quote) + "\nWHERE " + _key_filter(ctx, key)
    reader = ctx.source.extract(sql, model=ctx.model_name)
    table = pa.Table.from_batches(list(reader), schema=reader.schema)
    shown = ", ".join(f"{k}={v}" for k, v in key.items())
    if table.num_rows == 0:
        raise UndertowError(
            f"sync {ctx.name!r}: no row of model {ctx.model_name!r} has key {shown}",
            hint=f"`undertow plan {ctx.name}` or the UI's model preview shows rows and keys",
        )
    if table.num_rows > 1:
        raise UndertowError(
            f"sync {ctx.name!r}: {table.num_rows} rows of model {ctx.model_name!r} have key "
            f"{shown}; a primary key must be unique",
            hint="fix the model so each key appears once (runs reject such rows too)",
        )
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    row = {k: _jsonable(v) for k, v in frame.row(0, named=True).items()}
    text = key_text(list(ctx.model.primary_key), frame.row(0, named=True))
    result = TestResult(sync=ctx.name, key=text, operation=str(operation), sent=False, outcome="")
    result.row = row
    mapped = mapping.map(frame)
    if mapped.rejected:
        result.outcome, result.message = "not mapped", mapped.rejected[0][1]
        return result
    batch = Batch(
        sync=ctx.name,
        operation=operation,
        number=0,
        idempotency_key=f"test-{uuid.uuid4().hex[:12]}",
        keys=[text],
        payloads=mapped.payloads,
        identifiers=mapped.identifiers,
        object=ctx.sync.object,
    )
    result.payload = ctx.destination.preview(batch)[0]
    if dry_run:
        result.outcome = "dry run"
        result.message = "nothing was sent"
        if ctx.destination.sends_http:
            answer, result.exchanges = _captured(ctx, batch, dry=True)
            if answer is not None and answer[0] != "accepted":
                # the connector's own shaping refused it: there was nothing to send
                result.outcome, result.message = "rejected", answer[1] or answer[0]
        return result
    answer, result.exchanges = _captured(ctx, batch, dry=False)
    assert answer is not None
    result.sent = True
    result.outcome, result.message = answer
    return result


def _captured(
    ctx: SyncContext, batch: Batch, *, dry: bool
) -> tuple[tuple[str, str | None] | None, list[dict[str, Any]]]:
    """Send ``batch`` (in a dry run: up to its first request, stopped before it leaves)
    and the sync's exchanges; the outcome and message, None when a dry run stopped."""
    seen: list[capture.Exchange] = []
    answer: tuple[str, str | None] | None = None
    with capture.listening(seen.append), dry_run() if dry else contextlib.nullcontext():
        try:
            answer = asyncio.run(_send(ctx, batch))
        except* DryRunStop:  # alone, or from inside a task group of concurrent requests
            pass
    return answer, [exchange_dict(e) for e in seen if e.context.sync == ctx.name]


async def _send(ctx: SyncContext, batch: Batch) -> tuple[str, str | None]:
    destination = ctx.destination
    await destination.open()
    try:
        with capture.context(
            sync=ctx.name,
            destination=ctx.destination_name,
            batch=None,
            operation=str(batch.operation),
            keys=tuple(batch.keys),
            attempt=1,
            run_id=None,
        ):
            try:
                result: BatchResult = await destination.write_batch(batch)
            except RejectedBatchError as exc:
                return "rejected", str(exc)
            except (RetryableError, FatalDeliveryError, DeliveryError) as exc:
                return "failed", str(exc)
    finally:
        await destination.close()
    result = settle_not_found(result, batch.operation)
    if result.not_found:  # an update of a record the destination lacks: skipped
        return "skipped", next(iter(result.not_found.values()))
    if result.rejected:
        return "rejected", result.rejected.get(0) or next(iter(result.rejected.values()))
    if result.failed:
        return "failed", result.failed.get(0) or next(iter(result.failed.values()))
    return "accepted", None


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def preview_model(ctx: SyncContext, limit: int = PREVIEW_ROWS) -> dict[str, Any]:
    """The first ``limit`` rows of the sync's model (every column), for the UI and API."""
    from undertow.describe import mapped_columns

    limit = max(1, min(int(limit), 500))
    sql = f"SELECT * FROM (\n{ctx.sql.strip().rstrip(';')}\n) AS _ut_model LIMIT {limit}"
    reader = ctx.source.extract(sql, model=ctx.model_name)
    table = pa.Table.from_batches(list(reader), schema=reader.schema)
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return {
        "sync": ctx.name,
        "model": ctx.model_name,
        "columns": [{"name": f.name, "type": str(f.type)} for f in table.schema],
        "primary_key": list(ctx.model.primary_key),
        "mapped": mapped_columns(ctx.sync),
        "rows": [[_jsonable(v) for v in r] for r in frame.rows()],
        "limit": limit,
    }
