"""Upstream signals: a dbt project's run results, and authenticated webhook calls.

Both become *events* in the state store (``undertow_signals``): a name, a status, the time
the upstream finished. A sync's ``after:`` is satisfied by events newer than its last run.

dbt overwrites ``target/run_results.json`` on every invocation (``dbt run -s other`` does
not mention our models), so every poll records what the current file says and keeps it:
a model rebuilt at 05:10 stays "rebuilt at 05:10" after a later run that skipped it.
Which dbt models a sync waits for comes from ``manifest.json``: those ``models:`` names, or
the sync's own dbt model (``models: {x: {dbt: ...}}``), or each model whose relation
(``schema.alias``) the sync's SQL reads.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from undertow.dbt.artifacts import DbtModel, parse_time, read_manifest
from undertow.errors import ConfigError
from undertow.orchestration.config import DbtWatch
from undertow.state.orchestration import OrchestrationState

if TYPE_CHECKING:
    from undertow.config.models import DbtRef, ModelConfig


def webhook_signal(name: str) -> str:
    return f"webhook:{name}"


def sync_signal(name: str) -> str:
    return f"sync:{name}"


def resolve_watch(watch: DbtWatch, model: ModelConfig) -> DbtWatch:
    """``after: [dbt]`` without ``project_dir:`` watches the project of the sync's dbt model."""
    if watch.project_dir is not None:
        return watch
    if model.dbt is None:
        raise ConfigError(
            "`after: [dbt]` without `project_dir:` needs the sync's model to be a dbt model",
            hint="name the dbt project: `after: [{dbt: {project_dir: ../analytics}}]`",
        )
    return DbtWatch(
        project_dir=model.dbt.project_dir, target_path=model.dbt.target_path, models=watch.models
    )


class DbtProject:
    """One dbt project folder: its manifest (which models exist) and its run results."""

    def __init__(self, root: Path, watch: DbtWatch) -> None:
        assert watch.project_dir is not None, "resolve_watch() first"
        self.root = root
        self.dir = (root / watch.project_dir).resolve()
        self.target = self.dir / watch.target_path
        self.watch = watch

    @property
    def key(self) -> str:
        return f"dbt:{self.dir}"

    def signal_name(self, unique_id: str) -> str:
        return f"{self.key}#{unique_id}"

    def _read(self, name: str) -> dict[str, Any] | None:
        path = self.target / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # dbt is writing it right now: read it at the next poll
        return data if isinstance(data, dict) else None

    def watched(self, sync: str, sql: str, model: DbtRef | None = None) -> list[DbtModel]:
        """The dbt models sync ``sync`` waits for: named in ``models:``, else its dbt model
        (``model``, when it is of this project), else the models its SQL reads."""
        manifest = read_manifest(self.target)
        if self.watch.models:
            out = []
            for name in self.watch.models:
                try:
                    out.append(manifest.find(name))
                except ConfigError as exc:
                    raise ConfigError(
                        f"sync {sync!r}: {exc.raw_message}",
                        hint="`after: [{dbt: {models: [...]}}]` takes dbt model names",
                    ) from None
            return out
        if model is not None and (self.root / model.project_dir).resolve() == self.dir:
            return [manifest.find(model.model, package=model.package, version=model.version)]
        found = manifest.read_by(sql)
        if not found:
            raise ConfigError(
                f"sync {sync!r}: its SQL reads none of the models of the dbt project {self.dir}",
                hint="name them: `after: [{dbt: {project_dir: ..., models: [model_name]}}]`",
            )
        return found

    def poll(self, state: OrchestrationState, now: datetime) -> int:
        """Record the model results of the current run_results.json; return how many are new."""
        results = self._read("run_results.json")
        if results is None:
            return 0
        generated = parse_time((results.get("metadata") or {}).get("generated_at")) or now
        invocation = (results.get("metadata") or {}).get("invocation_id")
        new = 0
        for result in results.get("results") or []:
            if not isinstance(result, dict):
                continue
            uid = str(result.get("unique_id") or "")
            if not uid.startswith("model."):
                continue
            status = "success" if result.get("status") == "success" else "error"
            finished = None
            for timing in result.get("timing") or []:
                if isinstance(timing, dict) and timing.get("name") == "execute":
                    finished = parse_time(timing.get("completed_at"))
            detail = {
                "invocation_id": invocation,
                "dbt_status": result.get("status"),
                "message": result.get("message"),
            }
            if state.record_signal(
                self.signal_name(uid),
                status=status,
                at=finished or generated,
                detail=detail,
                now=now,
            ):
                new += 1
        return new
