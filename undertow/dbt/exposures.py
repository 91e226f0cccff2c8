"""``undertow dbt exposures``: the project's syncs as a dbt exposures file.

One exposure per sync that reads a model of the dbt project: type ``application``, the
destination in its description, ``url`` at the sync's page of the web UI
(``<server.url>/syncs/<sync>``) when ``server.url`` is set, and ``depends_on`` the dbt models
it reads, so ``dbt docs`` shows which tools each model feeds. A sync reads a dbt model when
its model is one (``dbt:``), when it waits for dbt models (``after: [{dbt: {models: ...}}]``),
or when its SQL names a model's relation (``schema.alias``).

The file is generated: regenerate it rather than editing it (its first line says so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import yaml

from undertow.dbt.artifacts import DbtModel, Manifest, read_manifest
from undertow.errors import ConfigError, UndertowError
from undertow.orchestration.signals import DbtProject, resolve_watch

if TYPE_CHECKING:
    from undertow.config.loader import LoadedProject
    from undertow.config.models import SyncConfig


@dataclass
class Exposures:
    """An exposures file for one dbt project."""

    dbt_project: Path
    exposures: list[dict[str, Any]]
    text: str
    skipped: list[str]
    """Syncs left out: they read no model of this dbt project."""


def dbt_projects(loaded: LoadedProject) -> dict[Path, Path]:
    """Every dbt project the Undertow project reads or waits for: folder -> target folder."""
    found: dict[Path, Path] = {}
    for resolved in loaded.dbt_models.values():
        found.setdefault(resolved.project_dir, resolved.target)
    for sync in loaded.config.syncs.values():
        for item in sync.after:
            if item.dbt is None:
                continue
            try:
                watch = resolve_watch(item.dbt, loaded.config.models[sync.model])
            except UndertowError:
                continue  # loading already refused it
            assert watch.project_dir is not None
            folder = (loaded.root / watch.project_dir).resolve()
            found.setdefault(folder, folder / watch.target_path)
    return found


def build_exposures(
    loaded: LoadedProject,
    *,
    dbt_project: str | None = None,
    owner: str = "Undertow",
    email: str | None = None,
) -> Exposures:
    projects = dbt_projects(loaded)
    folder = _choose(loaded, projects, dbt_project)
    manifest = read_manifest(projects[folder])
    out: list[dict[str, Any]] = []
    skipped: list[str] = []
    taken: set[str] = set()
    for name, sync in loaded.config.syncs.items():
        models = _read_models(loaded, folder, manifest, name, sync)
        if not models:
            skipped.append(name)
            continue
        exposure_name = _unique(re.sub(r"[^\w-]", "_", name), taken)
        destination = loaded.config.destinations.get(sync.destination) or {}
        kind = str(destination.get("type") or "?")
        target = f" object `{sync.object}` of" if sync.object else ""
        text = (
            f"Undertow sync `{name}` ({sync.mode}) sends the rows of model `{sync.model}` to"
            f"{target} destination `{sync.destination}` ({kind})."
        )
        if sync.description:
            text += f"\n\n{sync.description}"
        entry: dict[str, Any] = {
            "name": exposure_name,
            "label": f"{name} → {sync.destination}",
            "type": "application",
            "description": text,
        }
        if loaded.config.server.url:
            entry["url"] = f"{loaded.config.server.url.rstrip('/')}/syncs/{quote(name, safe='')}"
        entry["owner"] = {"name": owner, **({"email": email} if email else {})}
        entry["depends_on"] = [m.ref(manifest.project_name) for m in models]
        entry["tags"] = ["undertow"]
        entry["meta"] = {
            "undertow": {
                "project": loaded.config.name,
                "sync": name,
                "destination": sync.destination,
                "destination_type": kind,
                "mode": str(sync.mode),
                **({"object": sync.object} if sync.object else {}),
            }
        }
        out.append(entry)
    if not out:
        raise ConfigError(
            f"no sync of project {loaded.config.name!r} reads a model of the dbt project {folder}",
            hint="point a model at a dbt model: `dbt: {project_dir: ..., model: ...}`",
        )
    head = (
        f"# Written by `undertow dbt exposures` from the Undertow project "
        f"{loaded.config.name!r}: do not edit, regenerate it.\n"
    )
    body = yaml.safe_dump(
        {"version": 2, "exposures": out}, sort_keys=False, allow_unicode=True, width=100
    )
    return Exposures(folder, out, head + body, skipped)


def _choose(loaded: LoadedProject, projects: dict[Path, Path], wanted: str | None) -> Path:
    if not projects:
        raise ConfigError(
            f"project {loaded.config.name!r} reads no dbt model and waits for no dbt project",
            hint="point a model at a dbt model: `models: {x: {source: ..., dbt: "
            "{project_dir: ../analytics, model: x}}}` (see docs/dbt.md)",
        )
    if wanted is not None:
        for candidate in (Path(wanted).resolve(), (loaded.root / wanted).resolve()):
            if candidate in projects:
                return candidate
        raise ConfigError(
            f"the project reads no dbt project at {wanted!r}",
            hint="the dbt projects it reads: " + ", ".join(str(p) for p in sorted(projects)),
        )
    if len(projects) > 1:
        raise ConfigError(
            "the project reads several dbt projects: "
            + ", ".join(str(p) for p in sorted(projects)),
            hint="pick one with `--dbt-project DIR` (an exposures file belongs to one project)",
        )
    return next(iter(projects))


def _read_models(
    loaded: LoadedProject, folder: Path, manifest: Manifest, name: str, sync: SyncConfig
) -> list[DbtModel]:
    """The dbt models of the project in ``folder`` that sync ``name`` reads or waits for."""
    found: dict[str, DbtModel] = {}
    resolved = loaded.dbt_models.get(sync.model)
    sql = loaded.model_sql[sync.model]
    if resolved is not None and resolved.project_dir == folder:
        found[resolved.node.unique_id] = resolved.node
    elif resolved is None:
        for node in manifest.read_by(sql):
            found.setdefault(node.unique_id, node)
    for item in sync.after:
        if item.dbt is None or not item.dbt.models:
            continue
        watch = resolve_watch(item.dbt, loaded.config.models[sync.model])
        project = DbtProject(loaded.root, watch)
        if project.dir == folder:
            for node in project.watched(name, sql):
                found.setdefault(node.unique_id, node)
    return list(found.values())


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    taken.add(candidate)
    return candidate
