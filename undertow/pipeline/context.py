"""What one sync's run is given: its resolved :class:`SyncContext` (built by the
:class:`~undertow.project.Project` facade), where it reports progress (:class:`Reporter`),
and :func:`compile_for`, the sync's mapping and diff spec checked against the model's columns.

Shared by the run (:mod:`undertow.pipeline.run`), the dry run (:mod:`undertow.pipeline.preview`),
test-a-row and ``validate``; nothing here sends or stores anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import polars as pl
import pyarrow as pa

from undertow.config.models import ModelConfig, SyncConfig
from undertow.destinations.base import Capabilities, Destination, Operation
from undertow.errors import PlanError
from undertow.pipeline.deliver import RetryPolicy
from undertow.pipeline.diff import DiffSpec
from undertow.pipeline.map import CompiledMapping, compile_mapping
from undertow.pipeline.plan import Plan, make_plan
from undertow.sources.base import Source

__all__ = ["NullReporter", "Reporter", "SyncContext", "compile_for"]


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


def compile_for(
    ctx: SyncContext, schema: pa.Schema | Mapping[str, pl.DataType] | None = None
) -> tuple[CompiledMapping, DiffSpec]:
    """The sync's mapping and diff spec, against ``schema`` or the model's described on its
    source (``validate --offline`` passes a dbt model's columns from dbt's artifacts)."""
    if schema is None:
        schema = ctx.source.describe(ctx.sql, model=ctx.model_name)
    names = list(schema.names if isinstance(schema, pa.Schema) else schema)
    caps = ctx.caps
    if caps.requires_match and not ctx.sync.match:
        raise PlanError(
            f"sync {ctx.name!r}: destination {ctx.destination_name!r} needs `match:` to know "
            "which record a row updates",
            hint="add e.g. `match: {email: email}` (destination field: model column)",
        )
    if str(ctx.sync.mode) != "insert" or caps.uses_match(Operation.INSERT):
        # the destination's match rule, as data (events name their person: insert uses it)
        caps.check_sync(
            sync=ctx.name,
            destination=ctx.destination_name,
            match=ctx.sync.match,
            object=ctx.sync.object,
        )
    mapping = compile_mapping(
        ctx.name,
        ctx.sync,
        schema,
        max_payload_bytes=caps.max_payload_bytes,
        pii_variant=ctx.destination.pii_variant,
    )
    keys = list(ctx.model.primary_key)
    missing = [k for k in keys if k not in names]
    if missing:
        from undertow.errors import PrimaryKeyError, did_you_mean

        hints = [h for h in (did_you_mean(k, names) for k in missing) if h]
        raise PrimaryKeyError(
            f"model {ctx.model_name!r}: primary key column(s) "
            f"{', '.join(map(repr, missing))} not among its columns "
            f"({', '.join(names)})",
            hint=hints[0] if hints else "fix `primary_key:` or add the column to the SQL",
        )
    columns = keys + [c for c in mapping.columns if c not in keys]
    spec = DiffSpec(sync=ctx.name, keys=keys, columns=columns, fingerprint=ctx.sync.fingerprint())
    return mapping, spec
