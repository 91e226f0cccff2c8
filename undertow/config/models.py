"""The project as validated models. ``loader.py`` turns YAML files into these.

Connector configs (``sources`` and ``destinations``) are validated by each connector's own
``Config`` model, selected by its ``type``; here they stay as the loaded dicts until then.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from enum import StrEnum
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from undertow.orchestration.config import (
    AlertsConfig,
    Duration,
    Freshness,
    Schedule,
    ServerConfig,
    ThenAction,
    Upstream,
    WebhookSignal,
)
from undertow.workers.config import ExecutorConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Mode(StrEnum):
    """What a sync does with the change set (see ``pipeline/plan.py``)."""

    UPSERT = "upsert"
    INSERT = "insert"
    UPDATE = "update"
    MIRROR = "mirror"
    ADD = "add"
    REMOVE = "remove"


CASTS = ("string", "int", "float", "bool", "decimal", "date", "timestamp", "json")
Cast = Literal["string", "int", "float", "bool", "decimal", "date", "timestamp", "json"]


class FieldSpec(Strict):
    """One mapped field. Exactly one of column / const / template / object / list / json.

    YAML shorthand: ``field: column_name`` is ``{column: column_name}``.
    """

    column: str | None = None
    const: Any = None
    template: str | None = None
    object_: dict[str, FieldSpec] | None = Field(default=None, alias="object")
    list_: list[FieldSpec] | None = Field(default=None, alias="list")
    json_: str | None = Field(default=None, alias="json", description="a JSON text column")
    cast: Cast | None = None
    normalize: str | None = None
    """A PII normaliser (``email``, ``phone``, ...; docs/mapping.md), checked when compiled."""
    hash_: str | None = Field(default=None, alias="hash")
    """``sha256``: hash the (normalised) value, lower-case hex; a 64-hex value is kept."""
    variant: str | None = None
    """Whose normalisation rules: ``facebook`` or ``google`` (default: the destination's)."""
    country: str | None = None
    """``normalize: phone``: the country (ISO alpha-2) of numbers written without a code."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"column": value}
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> FieldSpec:
        chosen = [
            k
            for k in ("column", "template", "object_", "list_", "json_")
            if getattr(self, k) is not None
        ]
        chosen = [c.rstrip("_") for c in chosen]
        if "const" in self.model_fields_set:
            chosen.append("const")
        if len(chosen) != 1:
            raise ValueError(
                "a field takes exactly one of column, const, template, object, list, json "
                f"(got {', '.join(chosen) or 'none'}); e.g. `plan: plan_column` or "
                "`greeting: {template: 'Hi {{ first_name }}'}`"
            )
        return self


class DiffConfig(Strict):
    """Which diff engine a sync uses (see docs/diff-engines.md); per sync or per source."""

    engine: Literal["local", "warehouse"] = "local"
    schema_: str = Field(default="undertow", alias="schema", min_length=1)
    """The warehouse engine's scratch schema: its snapshot and change-set tables live there."""


class DbtRef(Strict):
    """``dbt: {project_dir: ../analytics, model: active_customers}``: a dbt model as the model.

    Its relation, columns and (unless ``primary_key:`` is given) primary key come from the dbt
    project's ``target/manifest.json`` and ``catalog.json`` (see docs/dbt.md).
    """

    project_dir: str = Field(min_length=1)
    """The dbt project folder (holds dbt_project.yml), relative to the Undertow project."""
    model: str = Field(min_length=1)
    """The dbt model's name, as in ``ref('name')``."""
    package: str | None = None
    """The dbt package that defines it, as in ``ref('package', 'name')``."""
    version: int | str | None = None
    """A versioned model's version, as in ``ref('name', v=2)``; default: its latest version."""
    target_path: str = "target"
    """Where dbt writes manifest.json and catalog.json, relative to ``project_dir``."""

    @property
    def label(self) -> str:
        name = f"{self.package}.{self.model}" if self.package else self.model
        return name if self.version is None else f"{name} v{self.version}"


class DebuggerConfig(Strict):
    """The live debugger of a sync (see docs/debugger.md); per sync or for the project.

    ``debugger: {keep: 100, max_age: 7d, payloads: masked}``: keep the newest ``keep``
    requests of the sync and none older than ``max_age``; ``masked`` stores every value of
    a request or response body as ``***`` (the structure and field names stay).
    """

    enabled: bool = True
    keep: int = Field(default=100, ge=1, le=10_000)
    max_age: Duration = Field(default_factory=lambda: timedelta(days=7))
    payloads: Literal["full", "masked"] = "full"


class SyncLogsConfig(Strict):
    """Sync logs written into the source warehouse after each run (docs/sync-logs.md).

    ``sync_logs: {schema: undertow_audit}`` on a sync, a source or the project; the tables
    ``sync_runs`` and ``sync_changelog`` in that schema are shared by all syncs.
    """

    schema_: str = Field(alias="schema", min_length=1, max_length=128)
    changelog: bool = True
    """Write ``sync_changelog`` (one row per record sent or rejected), not only ``sync_runs``."""


class ModelConfig(Strict):
    """A SQL model: rows of a source with a primary key."""

    source: str
    sql: str | None = None
    file: str | None = None
    dbt: DbtRef | None = None
    primary_key: list[str]
    """A dbt model's, when not written, comes from its dbt tests (filled in when loading)."""
    description: str | None = None

    @field_validator("primary_key", mode="before")
    @classmethod
    def _pk_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("primary_key")
    @classmethod
    def _pk_nonempty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("primary_key needs at least one column, e.g. `primary_key: id`")
        twice = sorted({c for c in value if value.count(c) > 1})
        if twice:
            raise ValueError(
                f"primary_key lists {', '.join(map(repr, twice))} more than once; list each "
                f"key column once, e.g. `primary_key: [{', '.join(dict.fromkeys(value))}]`"
            )
        return value

    @model_validator(mode="after")
    def _sql_or_file(self) -> ModelConfig:
        given = [k for k in ("sql", "file", "dbt") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "a model takes exactly one of `sql:` (inline SQL), `file:` (a .sql file path) "
                "or `dbt:` (a dbt model, e.g. `dbt: {project_dir: ../analytics, model: "
                f"active_customers}}`); got {', '.join(given) or 'none'}"
            )
        return self


class SyncConfig(Strict):
    """A sync: a model, a destination, a mode and a mapping."""

    model: str
    destination: str
    object: str | None = None
    mode: Mode = Mode.UPSERT
    match: dict[str, str] = Field(default_factory=dict)
    """Destination identifier field <- model column."""
    mappings: dict[str, FieldSpec] = Field(default_factory=dict)
    nulls: Literal["null", "omit"] = "null"
    """Send NULL values as JSON null (default) or leave the field out."""

    @field_validator("nulls", mode="before")
    @classmethod
    def _yaml_null(cls, value: Any) -> Any:
        return "null" if value is None else value  # `nulls: null` is YAML's null, unquoted

    batch_size: int | None = Field(default=None, gt=0)
    max_deletes: int | None = Field(default=None, ge=0)
    """Most rows one run may delete (mirror) or remove from a list; None: no count limit."""
    max_delete_ratio: float = Field(default=0.5, ge=0, le=1)
    """Most rows one mirror run may delete, as a share of the snapshot (see docs/config.md)."""
    max_rejected_ratio: float = Field(default=0.1, ge=0, le=1)
    """A run whose rejected rows exceed this share of its rows fails; below it, a warning."""
    diff: DiffConfig = Field(default_factory=DiffConfig)
    schedule: Schedule = None
    """`{every: 15m}`, `{cron: ..., timezone: ...}` or `manual` (see docs/orchestration.md)."""
    after: list[Upstream] = Field(default_factory=list)
    """Run when all of these (syncs, dbt models, webhook signals) completed since the last run."""
    freshness: Freshness | None = None
    sla: Duration | None = None
    """The most the destination may lag behind the warehouse before an alert."""
    then: list[ThenAction] = Field(default_factory=list)
    description: str | None = None
    debugger: DebuggerConfig | None = None
    """Overrides the project's ``debugger:`` for this sync."""
    sync_logs: SyncLogsConfig | None = None
    """Overrides the source's and the project's ``sync_logs:`` for this sync."""

    def fingerprint(self) -> int:
        """A stable 63-bit number for what a row's payload depends on.

        Stored with every snapshot row, so that changing the mapping resends the rows it
        changes instead of silently keeping the old payloads.
        """
        shape = {
            "object": self.object,
            "match": self.match,
            "mappings": {
                k: v.model_dump(exclude_defaults=True, by_alias=True)
                for k, v in self.mappings.items()
            },
            "nulls": self.nulls,
        }
        digest = hashlib.sha256(orjson.dumps(shape, option=orjson.OPT_SORT_KEYS)).digest()
        return int.from_bytes(digest[:8], "big") >> 1


class ProjectConfig(Strict):
    """The whole project, merged from ``undertow.yml`` and ``models/`` / ``syncs/`` files."""

    name: str
    state: str = "sqlite:///.undertow/state.db"
    state_dir: str = ".undertow"
    sources: dict[str, dict[str, Any]] = Field(default_factory=dict)
    destinations: dict[str, dict[str, Any]] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    syncs: dict[str, SyncConfig] = Field(default_factory=dict)
    webhooks: dict[str, WebhookSignal] = Field(default_factory=dict)
    """Upstream signals an HTTP call raises (`undertow serve`), named in a sync's `after:`."""
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    debugger: DebuggerConfig = Field(default_factory=DebuggerConfig)
    """The live debugger of every sync that sets none of its own."""
    sync_logs: SyncLogsConfig | None = None
    """Sync logs of every sync whose source and sync set none of their own."""
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    """Where runs happen: in-process (default) or Celery workers (docs/deployment.md)."""
