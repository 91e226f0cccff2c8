"""Choosing a sync's diff engine: the one place that constructs one.

``diff: {engine: local|warehouse, schema: undertow}`` is read from the sync, else from its
model's source, else the default (``local``). Switching a sync between engines (or the
warehouse engine between scratch schemas) makes its next run a first run: the snapshot of
the engine it leaves is dropped, so switching back later cannot diff against a stale one,
and the run's note says so. The engine a sync last used is kept next to the local
engine's files, ``<state>/syncs/<sync>.engine``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from undertow.config.models import DiffConfig, SyncConfig
from undertow.errors import UndertowError
from undertow.pipeline.diff import DiffEngine, LocalDiffEngine
from undertow.state.files import sync_file, write_private

if TYPE_CHECKING:
    from undertow.pipeline.run import SyncContext
    from undertow.sources.base import Source


def diff_config(sync: SyncConfig, source_diff: dict[str, Any] | None) -> DiffConfig:
    """The sync's own ``diff:`` if it sets one, else its source's, else the default."""
    if "diff" in sync.model_fields_set:
        return sync.diff
    if source_diff is not None:
        return DiffConfig.model_validate(source_diff)
    return DiffConfig()


def _label(config: DiffConfig) -> str:
    return "local" if config.engine == "local" else f"warehouse:{config.schema_}"


def _marker(state_dir: Path, sync: str) -> Path:
    return sync_file(Path(state_dir) / "syncs", sync, ".engine")


def _construct(
    label: str, state_dir: Path, sync: str, source: Source, ctx: SyncContext, dry_run: bool
) -> DiffEngine:
    if label == "local":
        return LocalDiffEngine(state_dir, sync, dry_run=dry_run)
    from undertow.pipeline.diff.warehouse import WarehouseDiffEngine  # sqlglot: on demand

    return WarehouseDiffEngine(
        source,
        sync,
        sql=ctx.sql,
        model=ctx.model_name,
        schema=label.split(":", 1)[1],
        match_columns=list(ctx.sync.match.values()),
        dry_run=dry_run,
    )


def make_engine(
    ctx: SyncContext, *, dry_run: bool = False, note: Callable[[str], None] | None = None
) -> DiffEngine:
    """The sync's diff engine. On a real run, detect an engine switch: drop the snapshots
    of both engines (the next run is a first run) and say so through ``note``."""
    config = diff_config(ctx.sync, getattr(ctx.source.config, "diff", None))
    label = _label(config)
    state_dir = Path(ctx.state_dir)
    engine = _construct(label, state_dir, ctx.name, ctx.source, ctx, dry_run)
    if dry_run:
        return engine
    marker = _marker(state_dir, ctx.name)
    previous = marker.read_text().strip() if marker.exists() else None
    if previous is None and label != "local":
        local = _marker(state_dir, ctx.name).with_suffix(".duckdb")  # LocalDiffEngine.path
        previous = "local" if local.exists() else None
    if previous is not None and previous != label:
        try:
            old = _construct(previous, state_dir, ctx.name, ctx.source, ctx, False)
            try:
                old.reset()
            finally:
                old.close()
            dropped = "its snapshot there was dropped"
        except UndertowError as exc:
            dropped = f"its snapshot there could not be dropped ({exc})"
        engine.reset()
        if note is not None:
            note(
                f"diff engine changed from {previous} to {label}: this run is a first run "
                f"(every row is planned again); {dropped}"
            )
    write_private(marker, label + "\n")  # 0600 even where an older version left 0644
    return engine
