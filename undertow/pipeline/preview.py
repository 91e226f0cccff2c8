"""The preview behind ``undertow plan``: what ``run`` would do now, computed without sending
or changing anything.

The diff runs in memory against a read-only view of the snapshot (``dry_run`` engines), so
the counts are the ones ``run`` would find. Samples are mapped and shaped by the
destination's own :meth:`~undertow.destinations.base.Destination.preview`, batch after batch
until there are enough (removals come first in a mirror plan, and the first batch alone would
show only the deletes); changed rows show their fields old -> new where the engine keeps old
values.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
import polars as pl

from undertow.destinations import retry
from undertow.destinations.base import Batch, Destination, Operation
from undertow.destinations.retry import RetryPolicy
from undertow.errors import UndertowError
from undertow.pipeline.diff import ChangeStats, DiffEngine
from undertow.pipeline.engines import make_engine
from undertow.pipeline.extract import model_failures, open_model
from undertow.pipeline.map import CompiledMapping
from undertow.pipeline.plan import delete_limit_exceeded
from undertow.results import FieldChange, OldNew, PlanCounts, PlanDocument, Rejection, Sample

if TYPE_CHECKING:
    from undertow.pipeline.run import SyncContext

PREPARE_RETRY = RetryPolicy(max_attempts=2, base_delay=0.2, max_delay=1.0)
PREVIEW_RUN = "preview"
"""The run id a preview's change set lives under (in memory, discarded on close)."""


@dataclass
class PlanPreview:
    """What ``run`` would do now, computed without sending or changing anything."""

    sync: str
    mode: str
    destination: str
    counts: ChangeStats
    operations: dict[str, str]
    samples: list[Sample] = field(default_factory=list)
    changes: list[FieldChange] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    """The first rows ``run`` would reject (up to the plan's limit), and why."""
    map_rejected: int = 0
    """Planned rows the mapping rejects (a failed cast, a NULL identifier, ...)."""
    shape_rejected: int = 0
    """Planned rows the destination's own shaping refuses (HubSpot's nested objects)."""
    warnings: list[str] = field(default_factory=list)
    """What would stop or change ``run``: a delete limit it would refuse, ..."""
    kind: str = "profiles"
    """What a record is (``Capabilities.kind``): ``profiles``, ``membership``, ``events``."""

    def as_dict(self) -> PlanDocument:
        return PlanDocument(
            sync=self.sync,
            mode=self.mode,
            destination=self.destination,
            kind=self.kind,
            counts=PlanCounts(
                extracted=self.counts.extracted,
                added=self.counts.added,
                changed=self.counts.changed,
                removed=self.counts.removed,
                unchanged=self.counts.unchanged,
                rejected=self.counts.invalid + self.map_rejected + self.shape_rejected,
                to_send=self.counts.planned - self.map_rejected - self.shape_rejected,
            ),
            operations=self.operations,
            samples=self.samples,
            changes=self.changes,
            rejected=self.rejected,
            warnings=self.warnings,
        )


def preview(ctx: SyncContext, *, limit: int = 5, full: bool = False) -> PlanPreview:
    """Extract and diff in memory against the snapshot; map samples; send nothing."""
    from undertow.pipeline.run import compile_for

    plan = ctx.plan(full=full)
    batch_size = ctx.batch_size()
    engine = make_engine(ctx, dry_run=True)
    try:
        mapping, spec = compile_for(ctx)
        model = open_model(ctx, engine, spec, native=False)
        with model_failures(ctx):
            stats = engine.build(PREVIEW_RUN, model, spec, plan, batch_size)
        result = PlanPreview(
            sync=ctx.name,
            mode=str(ctx.sync.mode),
            destination=ctx.sync.destination,
            counts=stats,
            operations={k: str(v) for k, v in plan.ops.items()},
            kind=str(ctx.caps.kind),
        )
        result.rejected = [
            Rejection(key=k, reason=r, kind="invalid_key")
            for k, r in engine.invalid_rows(PREVIEW_RUN, limit=limit)
        ]
        if stats.planned:  # nothing planned: chunks() would leave a DuckDB result open
            if ctx.destination.previews_with_metadata:
                warning = _prepare(ctx.destination, ctx.sync.object, mapping.fields)
                if warning is not None:
                    result.warnings.append(warning)
            _samples(ctx, engine, mapping, result, limit)
        refused = delete_limit_exceeded(
            sync=ctx.name,
            plan=plan,
            deletes=stats.deletes,
            removed=stats.removed,
            snapshot=stats.snapshot,
            max_deletes=ctx.sync.max_deletes,
            max_delete_ratio=ctx.sync.max_delete_ratio,
        )
        if refused is not None:
            result.warnings.append(
                f"`undertow run {ctx.name}` will refuse this plan and send nothing: it would "
                f"{refused}; if the deletes are meant, run `undertow run {ctx.name} "
                "--allow-deletes` once, or raise max_deletes / max_delete_ratio"
            )
        result.changes = field_changes(engine, mapping, limit)
        return result
    finally:
        engine.close()


def _prepare(destination: Destination, object_: str | None, fields: list[str]) -> str | None:
    """Let the destination read the vendor metadata its preview uses (HubSpot's properties):
    a quick read, two attempts, never a long wait; a failure is a warning, not a failed plan."""

    async def read() -> str | None:
        await destination.open()
        try:
            with retry.delivery(policy=PREPARE_RETRY, stop=None, max_wait=5.0):
                return await destination.prepare_preview(object_, fields)
        finally:
            await destination.close()

    try:
        return asyncio.run(read())
    except UndertowError as exc:
        return (
            f"could not read the destination's metadata, so rows it would refuse for it are "
            f"counted as to send: {exc}"
        )


def _shapes(destination: Destination) -> bool:
    """Whether the destination reshapes records for the wire (and may refuse some there)."""
    return type(destination).preview is not Destination.preview


def _refusal(shaped: object) -> str | None:
    """A record the destination's own shaping refuses previews as ``{"rejected": reason}``
    (HubSpot's nested objects): the reason, else None."""
    if isinstance(shaped, dict) and set(shaped) == {"rejected"}:
        return str(shaped["rejected"])
    return None


def _samples(
    ctx: SyncContext,
    engine: DiffEngine,
    mapping: CompiledMapping,
    result: PlanPreview,
    limit: int,
) -> None:
    """Every planned row through the map stage and the destination's shaping: the first
    ``limit`` payloads as they would be sent and of rejections, and how many rows each
    refuses (``run`` rejects those rows without sending them)."""
    shapes = _shapes(ctx.destination)
    shown_rejected = 0
    for chunk in engine.chunks(PREVIEW_RUN, skip=set()):
        frame = chunk.frame
        mapped = mapping.map(model_part(frame))
        keys = frame.get_column("_ut_key").to_list()
        ops = frame.get_column("_ut_op").to_list()
        result.map_rejected += len(mapped.rejected)
        for pos, reason in mapped.rejected[: max(0, limit - shown_rejected)]:
            result.rejected.append(Rejection(key=keys[pos], reason=reason, kind="mapping"))
            shown_rejected += 1
        wanted = limit - len(result.samples)
        if not shapes and wanted <= 0:
            continue  # the records are the payloads: nothing more to count or show
        # one preview call per operation (the rows of a chunk share few operations)
        by_op: dict[str, list[int]] = {}
        for i, pos in enumerate(mapped.index):
            by_op.setdefault(ops[pos], []).append(i)
        for op, rows in by_op.items():
            rows = rows if shapes else rows[:wanted]
            batch = Batch(
                sync=ctx.name,
                operation=Operation(op),
                number=0,
                idempotency_key=PREVIEW_RUN,
                keys=[keys[mapped.index[i]] for i in rows],
                payloads=[mapped.payloads[i] for i in rows],
                identifiers={f: [v[i] for i in rows] for f, v in mapped.identifiers.items()},
                object=ctx.sync.object,
            )
            for key, shaped in zip(batch.keys, ctx.destination.preview(batch), strict=True):
                refused = _refusal(shaped)
                if refused is not None:
                    result.shape_rejected += 1
                    if shown_rejected < limit:
                        result.rejected.append(
                            Rejection(key=key, reason=refused, kind="destination")
                        )
                        shown_rejected += 1
                elif len(result.samples) < limit:
                    result.samples.append(Sample(operation=op, key=key, payload=shaped))


def field_changes(engine: DiffEngine, mapping: CompiledMapping, limit: int) -> list[FieldChange]:
    """Changed rows, each with its mapped fields old -> new (the fields that differ)."""
    frame = engine.changed_rows(PREVIEW_RUN, limit)
    if frame.is_empty():
        return []
    new = model_part(frame)
    old_cols = {c: c[len("_ut_old_") :] for c in frame.columns if c.startswith("_ut_old_")}
    old = new.with_columns([frame.get_column(src).alias(dst) for src, dst in old_cols.items()])
    new_m, old_m = mapping.map(new), mapping.map(old)
    old_by_pos = {pos: old_m.payloads[i] for i, pos in enumerate(old_m.index)}
    keys = frame.get_column("_ut_key").to_list()
    changes = []
    for i, pos in enumerate(new_m.index):
        after = orjson.loads(new_m.payloads[i])
        before = orjson.loads(old_by_pos[pos]) if pos in old_by_pos else {}
        fields = {
            f: OldNew(old=before.get(f), new=after.get(f))
            for f in sorted(set(after) | set(before))
            if before.get(f) != after.get(f)
        }
        # the warehouse engine keeps a hash of the accepted values, not the values
        changes.append(FieldChange(key=keys[pos], fields=fields, old_known=bool(old_cols)))
    return changes


def model_part(frame: pl.DataFrame) -> pl.DataFrame:
    """The model's columns of a planned frame (the ``_ut_*`` ones left out)."""
    return frame.select([c for c in frame.columns if not c.startswith("_ut_")])
