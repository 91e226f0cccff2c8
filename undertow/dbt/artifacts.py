"""dbt's artifacts, read without dbt: ``target/manifest.json`` and ``target/catalog.json``.

Undertow never imports or runs dbt. It reads the JSON that every dbt command writes
(``dbt parse`` is enough for the manifest; ``dbt docs generate`` writes the catalog) and
keeps only what it uses: each model's relation, file checksum, documented columns,
constraints and ``unique_key``, and the generic tests attached to it. The fields read are
the same in manifest schemas v10 to v12 (dbt 1.6 to 1.10).

A manifest is read once per process and file version (path, size and modification time),
so a scheduler polling every few seconds does not parse a 100 MB manifest each time.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from undertow.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class Column:
    name: str
    type: str | None
    """The warehouse type (catalog.json) or the documented ``data_type`` (manifest.json)."""


@dataclass(frozen=True)
class DataTest:
    """A generic dbt test attached to a model (``unique``, ``not_null``, ...)."""

    name: str
    namespace: str | None
    column: str | None
    kwargs: dict[str, Any]
    filtered: bool
    """The test has a ``where:`` config: it proves nothing about the whole model."""


@dataclass(frozen=True)
class DbtModel:
    """One model node of a manifest."""

    unique_id: str
    name: str
    package: str
    version: str | None
    latest_version: str | None
    database: str
    schema: str
    alias: str
    relation_name: str | None
    """The relation as dbt's adapter quotes it in compiled SQL; None for ephemeral models."""
    materialized: str
    original_file_path: str
    checksum: str | None
    """sha256 of the model file's stripped text, as dbt records it."""
    documented: tuple[Column, ...]
    contract_enforced: bool
    constraint_key: tuple[str, ...]
    """Columns of a ``primary_key`` constraint (model or column level)."""
    not_null_columns: frozenset[str]
    unique_key: tuple[str, ...]
    """``config.unique_key`` of an incremental model."""
    tests: tuple[DataTest, ...] = ()

    @property
    def relation(self) -> str:
        """``schema.alias`` in lower case, without quotes (to find it in a model's SQL)."""
        alias = self.alias.lower()
        return f"{self.schema.lower()}.{alias}" if self.schema else alias

    def ref(self, root_package: str) -> str:
        """How a dbt file in the root project refers to it: ``ref('pkg', 'name', v=2)``."""
        args = [self.name] if self.package == root_package else [self.package, self.name]
        text = ", ".join(repr(a) for a in args)
        if self.version is not None:
            text += f", v={self.version}" if self.version.isdigit() else f", v={self.version!r}"
        return f"ref({text})"

    @property
    def label(self) -> str:
        return self.name if self.version is None else f"{self.name} v{self.version}"


@dataclass
class Manifest:
    path: Path
    project_name: str
    generated_at: datetime | None
    dbt_version: str
    models: dict[str, DbtModel]
    disabled: set[str] = field(default_factory=set)
    """Names of models that are in the project but disabled (``enabled: false``)."""

    @property
    def packages(self) -> list[str]:
        return sorted({m.package for m in self.models.values()})

    def find(
        self, model: str, *, package: str | None = None, version: int | str | None = None
    ) -> DbtModel:
        """The model ``ref()`` would pick, or a ConfigError with the closest names."""
        if package is not None and package not in self.packages:
            hint = did_you_mean(package, self.packages)
            raise ConfigError(
                f"the dbt project has no package {package!r}"
                + (f"; {hint}" if hint else "")
                + f" (packages: {', '.join(self.packages)})",
                hint="`package:` is the dbt package that defines the model, as in "
                "`ref('package', 'model')`",
            )
        pool = [m for m in self.models.values() if package is None or m.package == package]
        found = [m for m in pool if m.name == model]
        if not found:
            where = f"package {package!r} of " if package else ""
            if model in self.disabled:
                raise ConfigError(
                    f"dbt model {model!r} is disabled in {where}the dbt project ({self.path})",
                    hint="enable it in dbt (`enabled: true`) or pick another model",
                )
            names = sorted({m.name for m in pool})
            hint = did_you_mean(model, names)
            raise ConfigError(
                f"unknown dbt model {model!r}" + (f"; {hint}" if hint else "") + f" in {where}"
                f"{self.path} ({len(names)} models)",
                hint="`model:` is the dbt model's name, as in `ref('name')`; if you just added "
                "it, run `dbt parse` so the manifest knows it",
            )
        if version is not None:
            chosen = [m for m in found if m.version == str(version)]
            if not chosen:
                versions = ", ".join(sorted(str(m.version) for m in found if m.version))
                raise ConfigError(
                    f"dbt model {model!r} has no version {version!r} (versions: "
                    f"{versions or 'none: it is not versioned'})",
                    hint="fix `version:` or leave it out for the latest version",
                )
            found = chosen
        elif len({m.version for m in found}) > 1:
            found = [m for m in found if m.version == m.latest_version] or found
        if len(found) > 1:
            root = [m for m in found if m.package == self.project_name]
            if len(root) == 1:
                return root[0]  # ref('name') prefers the root project, like dbt
            packages = ", ".join(sorted(m.package for m in found))
            raise ConfigError(
                f"dbt model {model!r} is defined in several packages ({packages})",
                hint="say which with `package:`, e.g. "
                f"`dbt: {{..., package: {found[0].package}, model: {model}}}`",
            )
        return found[0]

    def read_by(self, sql: str) -> list[DbtModel]:
        """The models a SQL text reads, found by their relation (``schema.alias``) in it."""
        text = re.sub(r"[\"`\[\]]", "", sql.lower())
        models = list(self.models.values())
        qualified = [m for m in models if re.search(rf"\b{re.escape(m.relation)}\b", text)]
        if qualified:
            return qualified
        return [
            m
            for m in models
            if re.search(rf"(?:from|join)\s+(?:[\w]+\.)*{re.escape(m.alias.lower())}\b", text)
        ]

    def file_of(self, model: DbtModel, project_dir: Path) -> Path | None:
        """The model's .sql file in the dbt project (None for an uninstalled package's)."""
        if model.package == self.project_name:
            return project_dir / model.original_file_path
        installed = project_dir / "dbt_packages" / model.package / model.original_file_path
        return installed if installed.exists() else None

    def stale(self, model: DbtModel, project_dir: Path) -> str | None:
        """Why the manifest no longer describes the model's file, or None when it does.

        dbt records the sha256 of each model file's stripped text; a different one means
        the file changed after dbt last parsed the project. (Modification times alone would
        call every manifest stale after a ``git checkout``.)
        """
        file = self.file_of(model, project_dir)
        if file is None:
            return None
        when = f" (at {self.generated_at:%Y-%m-%d %H:%M:%S} UTC)" if self.generated_at else ""
        if not file.exists():
            return f"{file} is gone since dbt wrote {self.path}{when}"
        try:
            text = file.read_bytes().decode("utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        if model.checksum is not None:
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            changed = digest != model.checksum
        else:
            changed = self.generated_at is not None and (
                datetime.fromtimestamp(file.stat().st_mtime, UTC) > self.generated_at
            )
        if not changed:
            return None
        return f"{file} changed after dbt wrote {self.path}{when}"


def read_manifest(target: Path) -> Manifest:
    """``target/manifest.json``, cached per file version; ConfigError when missing or broken."""
    path = target / "manifest.json"
    try:
        stat = path.stat()
    except OSError:
        project = target.parent
        if not project.is_dir():
            raise ConfigError(
                f"the dbt project folder {str(project)!r} does not exist",
                hint="`project_dir:` is the folder that holds dbt_project.yml, relative to "
                "the Undertow project",
            ) from None
        no_project = "" if (project / "dbt_project.yml").exists() else " (nor dbt_project.yml)"
        raise ConfigError(
            f"no dbt manifest at {path}{no_project}",
            hint=f"run `dbt parse` (or any dbt command) in {project}: Undertow reads dbt's "
            "manifest and never runs dbt; or fix `project_dir:` / `target_path:`",
        ) from None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _lock:
        cached = _manifests.get(key[0])
        if cached is not None and cached[0] == key:
            return cached[1]
    manifest = _parse_manifest(path, _read_json(path))
    with _lock:
        _manifests[key[0]] = (key, manifest)
    return manifest


def read_catalog(target: Path) -> dict[str, tuple[Column, ...]] | None:
    """Each node's columns from ``target/catalog.json`` in table order; None when absent."""
    path = target / "catalog.json"
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _lock:
        cached = _catalogs.get(key[0])
        if cached is not None and cached[0] == key:
            return cached[1]
    data = _read_json(path)
    out: dict[str, tuple[Column, ...]] = {}
    for uid, node in (data.get("nodes") or {}).items():
        columns = node.get("columns") if isinstance(node, dict) else None
        if not isinstance(columns, dict):
            continue
        ordered = sorted(
            (c for c in columns.values() if isinstance(c, dict)),
            key=lambda c: int(c["index"]) if isinstance(c.get("index"), int) else 0,
        )
        out[uid] = tuple(Column(str(c.get("name")), _text(c.get("type"))) for c in ordered)
    with _lock:
        _catalogs[key[0]] = (key, out)
    return out


_lock = threading.Lock()
_manifests: dict[str, tuple[tuple[str, int, int], Manifest]] = {}
_catalogs: dict[str, tuple[tuple[str, int, int], dict[str, tuple[Column, ...]]]] = {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(
            f"the dbt artifact {path} cannot be read ({exc})",
            hint="dbt may be writing it right now: try again; otherwise rerun `dbt parse`",
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("metadata", {}), dict):
        raise ConfigError(f"{path} is not a dbt artifact (no `metadata`)", hint="rerun `dbt parse`")
    return data


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _version(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def parse_time(value: Any) -> datetime | None:
    """A timestamp of a dbt artifact (``2026-11-21T14:14:10.36Z``) as an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _identifier(value: Any) -> str | None:
    """A test's ``column_name`` when it is a plain (possibly quoted) column, else None."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in '"`':
        text = text[1:-1]
    return text if re.fullmatch(r"\w+", text) else None


def _parse_manifest(path: Path, data: dict[str, Any]) -> Manifest:
    metadata = data.get("metadata") or {}
    nodes = data.get("nodes")
    if not isinstance(nodes, dict):
        raise ConfigError(f"{path} has no `nodes`: not a dbt manifest", hint="rerun `dbt parse`")
    tests: dict[str, list[DataTest]] = {}
    models: dict[str, DbtModel] = {}
    for uid, node in nodes.items():
        if not isinstance(node, dict):
            continue
        kind = node.get("resource_type")
        if kind == "test" and isinstance(node.get("test_metadata"), dict):
            attached = node.get("attached_node") or next(
                iter((node.get("depends_on") or {}).get("nodes") or []), None
            )
            meta = node["test_metadata"]
            config = node.get("config") or {}
            if isinstance(attached, str):
                tests.setdefault(attached, []).append(
                    DataTest(
                        name=str(meta.get("name")),
                        namespace=_text(meta.get("namespace")),
                        column=_identifier(node.get("column_name")),
                        kwargs=meta.get("kwargs") or {},
                        filtered=bool(config.get("where")),
                    )
                )
        elif kind == "model":
            models[uid] = _model(uid, node)
    for uid, found in tests.items():
        if uid in models:
            models[uid] = replace(models[uid], tests=tuple(found))
    disabled = {
        str(node.get("name"))
        for entries in (data.get("disabled") or {}).values()
        for node in (entries if isinstance(entries, list) else [])
        if isinstance(node, dict) and node.get("resource_type") == "model"
    }
    return Manifest(
        path=path,
        project_name=str(metadata.get("project_name") or ""),
        generated_at=parse_time(metadata.get("generated_at")),
        dbt_version=str(metadata.get("dbt_version") or "?"),
        models=models,
        disabled=disabled,
    )


def _model(uid: str, node: dict[str, Any]) -> DbtModel:
    config = node.get("config") or {}
    columns = node.get("columns") or {}
    documented = []
    key: list[str] = []
    not_null: set[str] = set()
    for name, column in columns.items():
        if not isinstance(column, dict):
            continue
        documented.append(Column(str(column.get("name") or name), _text(column.get("data_type"))))
        for constraint in column.get("constraints") or []:
            kind = constraint.get("type") if isinstance(constraint, dict) else None
            if kind == "primary_key":
                key.append(str(column.get("name") or name))
            elif kind == "not_null":
                not_null.add(str(column.get("name") or name))
    for constraint in node.get("constraints") or []:
        if isinstance(constraint, dict) and constraint.get("type") == "primary_key":
            key = [str(c) for c in constraint.get("columns") or []] or key
    unique_key = config.get("unique_key")
    if isinstance(unique_key, str):
        unique_key = [unique_key]
    incremental = config.get("materialized") == "incremental"
    contract = config.get("contract") or node.get("contract") or {}
    checksum = node.get("checksum") or {}
    return DbtModel(
        unique_id=uid,
        name=str(node.get("name")),
        package=str(node.get("package_name") or ""),
        version=_version(node.get("version")),
        latest_version=_version(node.get("latest_version")),
        database=str(node.get("database") or ""),
        schema=str(node.get("schema") or ""),
        alias=str(node.get("alias") or node.get("name") or ""),
        relation_name=_text(node.get("relation_name")),
        materialized=str(config.get("materialized") or "?"),
        original_file_path=str(node.get("original_file_path") or ""),
        checksum=_text(checksum.get("checksum")) if checksum.get("name") == "sha256" else None,
        documented=tuple(documented),
        contract_enforced=bool(isinstance(contract, dict) and contract.get("enforced")),
        constraint_key=tuple(key),
        not_null_columns=frozenset(not_null),
        unique_key=tuple(str(k) for k in unique_key or []) if incremental else (),
    )
