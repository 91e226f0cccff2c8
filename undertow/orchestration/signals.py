"""Upstream signals: a dbt project's run results, and authenticated webhook calls.

Both become *events* in the state store (``undertow_signals``): a name, a status, the time
the upstream finished. A sync's ``after:`` is satisfied by events newer than its last run.

dbt overwrites ``target/run_results.json`` on every invocation (``dbt run -s other`` does
not mention our models), so every poll records what the current file says and keeps it:
a model rebuilt at 05:10 stays "rebuilt at 05:10" after a later run that skipped it.
Which dbt models a sync reads comes from ``manifest.json``: each model's relation
(``schema.alias``) is looked for in the sync's SQL, or ``models:`` names them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from undertow.errors import ConfigError, unknown_name
from undertow.orchestration.config import DbtWatch
from undertow.state.orchestration import OrchestrationState


def webhook_signal(name: str) -> str:
    return f"webhook:{name}"


def sync_signal(name: str) -> str:
    return f"sync:{name}"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class DbtModel:
    unique_id: str
    name: str
    relation: str
    """``schema.alias`` in lower case, without quotes."""
    alias: str


class DbtProject:
    """One dbt project folder: its manifest (which models exist) and its run results."""

    def __init__(self, root: Path, watch: DbtWatch) -> None:
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

    def models(self) -> list[DbtModel]:
        manifest = self._read("manifest.json")
        if manifest is None:
            raise ConfigError(
                f"no dbt manifest at {self.target / 'manifest.json'}",
                hint=f"run `dbt parse` (or any dbt command) in {self.dir}, or fix `project_dir:`",
            )
        found = []
        for uid, node in (manifest.get("nodes") or {}).items():
            if not isinstance(node, dict) or node.get("resource_type") != "model":
                continue
            alias = str(node.get("alias") or node.get("name") or "").lower()
            schema = str(node.get("schema") or "").lower()
            found.append(
                DbtModel(
                    unique_id=uid,
                    name=str(node.get("name")),
                    relation=f"{schema}.{alias}" if schema else alias,
                    alias=alias,
                )
            )
        return found

    def watched(self, sync: str, sql: str) -> list[DbtModel]:
        """The dbt models sync ``sync`` waits for: named in ``models:``, or read by its SQL."""
        models = self.models()
        if self.watch.models:
            by_name = {m.name: m for m in models}
            out = []
            for name in self.watch.models:
                if name not in by_name:
                    raise ConfigError(
                        f"sync {sync!r}: "
                        + unknown_name("dbt model", name, by_name)
                        + f" in {self.dir}",
                        hint="`after: [{dbt: {models: [...]}}]` takes dbt model names",
                    )
                out.append(by_name[name])
            return out
        text = re.sub(r"[\"`\[\]]", "", sql.lower())
        qualified = [m for m in models if re.search(rf"\b{re.escape(m.relation)}\b", text)]
        if qualified:
            return qualified
        bare = [
            m
            for m in models
            if re.search(rf"(?:from|join)\s+(?:[\w]+\.)*{re.escape(m.alias)}\b", text)
        ]
        if not bare:
            raise ConfigError(
                f"sync {sync!r}: its SQL reads none of the models of the dbt project {self.dir}",
                hint="name them: `after: [{dbt: {project_dir: ..., models: [model_name]}}]`",
            )
        return bare

    def poll(self, state: OrchestrationState, now: datetime) -> int:
        """Record the model results of the current run_results.json; return how many are new."""
        results = self._read("run_results.json")
        if results is None:
            return 0
        generated = _parse_time((results.get("metadata") or {}).get("generated_at")) or now
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
                    finished = _parse_time(timing.get("completed_at"))
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
