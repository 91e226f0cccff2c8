"""What a sync is made of, as plain data for the API and the web UI (no secret in it).

The model's SQL and key, the mapping (each destination field and where its value comes
from), the schedule, ``after:`` parents, freshness, SLA and ``then:`` actions. ``then``
webhooks show their URL without query string or credentials; their headers are left out.
"""

from __future__ import annotations

from typing import Any

from undertow.config.loader import LoadedProject
from undertow.config.models import FieldSpec, SyncConfig
from undertow.orchestration.config import format_duration
from undertow.orchestration.schedule import describe
from undertow.redact import redact, redact_url


def field_source(spec: FieldSpec) -> str:
    """Where a mapped field's value comes from, in one line: ``column plan``, ``template …``."""
    if spec.column is not None:
        text = f"column {spec.column}"
    elif spec.template is not None:
        text = f"template {spec.template}"
    elif spec.json_ is not None:
        text = f"json column {spec.json_}"
    elif spec.object_ is not None:
        text = "object {" + ", ".join(spec.object_) + "}"
    elif spec.list_ is not None:
        text = f"list of {len(spec.list_)}"
    else:
        text = f"constant {spec.const!r}"
    return text + (f" as {spec.cast}" if spec.cast else "")


def mapped_columns(sync: SyncConfig) -> list[str]:
    """Model columns a sync reads straight (``column:`` fields and ``match:``)."""
    found: list[str] = []

    def walk(spec: FieldSpec) -> None:
        for name in (spec.column, spec.json_):
            if name is not None and name not in found:
                found.append(name)
        for child in (spec.object_ or {}).values():
            walk(child)
        for child in spec.list_ or []:
            walk(child)

    for column in sync.match.values():
        if column not in found:
            found.append(column)
    for spec in sync.mappings.values():
        walk(spec)
    return found


def describe_sync(loaded: LoadedProject, name: str, sync: SyncConfig) -> dict[str, Any]:
    model = loaded.config.models[sync.model]
    return {
        "sync": name,
        "description": sync.description,
        "model": sync.model,
        "source": model.source,
        "primary_key": list(model.primary_key),
        "sql": redact(loaded.model_sql[sync.model]),
        "destination": sync.destination,
        "object": sync.object,
        "mode": str(sync.mode),
        "match": dict(sync.match),
        "mappings": {f: field_source(spec) for f, spec in sync.mappings.items()},
        "mapped_columns": mapped_columns(sync),
        "schedule": describe(sync.schedule),
        "after": [item.label for item in sync.after],
        "freshness": (
            {
                "column": sync.freshness.column,
                "max_age": format_duration(sync.freshness.max_age),
                "on_stale": sync.freshness.on_stale,
            }
            if sync.freshness
            else None
        ),
        "sla": format_duration(sync.sla) if sync.sla else None,
        "then": [_then_label(t.sync, t.webhook.url if t.webhook else None) for t in sync.then],
        "diff_engine": sync.diff.engine,
        "batch_size": sync.batch_size,
    }


def _then_label(sync: str | None, url: str | None) -> str:
    return f"sync {sync}" if sync else f"webhook {redact_url(url or '')}"
