"""dbt models as Undertow models: ``models: {x: {source: wh, dbt: {project_dir:, model:}}}``.

Resolved while the project loads, before it is validated, so every other part of Undertow
sees an ordinary model:

* its SQL is ``select * from <relation>``, the relation exactly as dbt's adapter writes it
  in compiled SQL (``relation_name`` in the manifest);
* its primary key, unless ``primary_key:`` is written, is the first of: a ``primary_key``
  constraint; the one column with both ``unique`` and ``not_null`` tests; the columns of
  the one ``dbt_utils.unique_combination_of_columns`` test; an incremental model's
  ``unique_key``. Several candidates, or none, is an error asking for ``primary_key:``;
* its columns (for ``validate --offline``) come from ``catalog.json`` when dbt wrote one
  (``dbt docs generate``), else from the manifest when the model's contract is enforced.

Errors name the Undertow file, line and key, and the dbt file they come from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from undertow.config.models import DbtRef
from undertow.dbt.artifacts import Column, DbtModel, Manifest, read_catalog, read_manifest
from undertow.errors import ConfigError

KeyPath = tuple[str | int, ...]
Where = Callable[[KeyPath], tuple[str, int] | None]


@dataclass(frozen=True)
class DbtColumns:
    columns: tuple[Column, ...]
    origin: str
    """Which artifact listed them: ``catalog.json`` or ``manifest.json``."""


@dataclass(frozen=True)
class ResolvedDbtModel:
    """An Undertow model that is a dbt model, with what its artifacts say about it."""

    name: str
    ref: DbtRef
    project_dir: Path
    target: Path
    manifest: Manifest
    node: DbtModel
    key_from: str
    """Where the primary key came from, for ``validate`` and the docs of a sync."""
    sql: str
    """``select * from <relation>``: the model's SQL for every stage of a run."""

    def columns(self) -> DbtColumns | None:
        """The model's columns as dbt knows them, or None when no artifact lists them all."""
        catalog = read_catalog(self.target)
        if catalog is not None and self.node.unique_id in catalog:
            return DbtColumns(catalog[self.node.unique_id], "catalog.json")
        if self.node.contract_enforced and self.node.documented:
            return DbtColumns(self.node.documented, "manifest.json (enforced contract)")
        return None

    def stale(self) -> str | None:
        return self.manifest.stale(self.node, self.project_dir)


def primary_key(node: DbtModel) -> tuple[list[str], str]:
    """The model's key from its constraints and tests, and how it was found; or ConfigError."""
    if node.constraint_key:
        return list(node.constraint_key), "its primary_key constraint"
    usable = [t for t in node.tests if not t.filtered]
    unique = [t.column for t in usable if t.name == "unique" and t.namespace is None and t.column]
    not_null = {t.column for t in usable if t.name == "not_null" and t.column}
    not_null |= node.not_null_columns
    single = [c for c in dict.fromkeys(unique) if c in not_null]
    if len(single) == 1:
        return single, f"the unique and not_null tests on {single[0]}"
    if len(single) > 1:
        raise _ambiguous(node, [[c] for c in single], "columns with unique and not_null tests")
    combos = [
        [str(c) for c in t.kwargs.get("combination_of_columns") or []]
        for t in usable
        if t.name == "unique_combination_of_columns" and t.namespace in ("dbt_utils", None)
    ]
    combos = [c for c in combos if c]
    if len(combos) == 1:
        return combos[0], "its dbt_utils.unique_combination_of_columns test"
    if len(combos) > 1:
        raise _ambiguous(node, combos, "unique_combination_of_columns tests")
    if node.unique_key:
        return list(node.unique_key), "its incremental unique_key"
    unique_only = [c for c in unique if c not in not_null]
    why = (
        f"; {', '.join(unique_only)} has a unique test but no not_null test (a key may not be null)"
        if unique_only
        else ""
    )
    raise ConfigError(
        f"cannot tell the primary key of dbt model {node.label!r}: it has no primary_key "
        "constraint, no column with both unique and not_null tests, no "
        f"dbt_utils.unique_combination_of_columns test and no incremental unique_key{why}",
        hint="write it on the Undertow model, e.g. `primary_key: id`, or add "
        "`data_tests: [unique, not_null]` to the key column in dbt and rerun `dbt parse`",
    )


def _ambiguous(node: DbtModel, candidates: list[list[str]], what: str) -> ConfigError:
    shown = "; ".join(", ".join(c) for c in candidates)
    return ConfigError(
        f"dbt model {node.label!r} has several possible primary keys ({what}: {shown})",
        hint=f"say which on the Undertow model, e.g. `primary_key: {candidates[0][0]}`",
    )


def resolve_dbt_models(
    data: dict[str, Any], root: Path, where: Where, errors: list[ConfigError]
) -> dict[str, ResolvedDbtModel]:
    """Resolve every model with a ``dbt:`` key; fill in its ``primary_key`` when not written.

    Runs on the merged project data before validation. A malformed ``dbt:`` is left to the
    project's validation to report; every other problem is appended to ``errors``.
    """
    out: dict[str, ResolvedDbtModel] = {}
    models = data.get("models")
    if not isinstance(models, dict):
        return out
    for name, entry in models.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("dbt"), dict):
            continue
        try:
            ref = DbtRef.model_validate(entry["dbt"])
        except ValidationError:
            continue
        source = (data.get("sources") or {}).get(entry.get("source"))
        try:
            out[name] = _resolve(name, ref, entry, source, root)
        except _Failed as failed:
            # the load fails: a stand-in key keeps validation from adding "missing primary_key"
            entry.setdefault("primary_key", ["?"])
            file, line = where(failed.path) or (None, None)
            key = ".".join(map(str, failed.path))
            error = failed.error
            errors.append(
                ConfigError(error.raw_message, file=file, line=line, key=key, hint=error.hint)
            )
    return out


class _Failed(Exception):
    def __init__(self, error: ConfigError, *path: str | int) -> None:
        self.error = error
        self.path: KeyPath = path


def _resolve(
    name: str, ref: DbtRef, entry: dict[str, Any], source: Any, root: Path
) -> ResolvedDbtModel:
    project_dir = (root / Path(ref.project_dir).expanduser()).resolve()
    target = project_dir / ref.target_path
    at = ("models", name, "dbt")
    try:
        manifest = read_manifest(target)
    except ConfigError as exc:
        raise _Failed(exc, *at, "project_dir") from None
    try:
        node = manifest.find(ref.model, package=ref.package, version=ref.version)
    except ConfigError as exc:
        raise _Failed(exc, *at, "model") from None
    if node.relation_name is None:
        error = ConfigError(
            f"dbt model {node.label!r} is {node.materialized}: it has no table or view to read",
            hint="materialize it as a table, view or incremental model in dbt",
        )
        raise _Failed(error, *at, "model")
    key: list[str] | None = None
    key_from = "primary_key:"
    if entry.get("primary_key") is None:
        try:
            key, key_from = primary_key(node)
        except ConfigError as exc:
            raise _Failed(exc, "models", name, "primary_key") from None
    sql = relation_sql(node, source)
    resolved = ResolvedDbtModel(name, ref, project_dir, target, manifest, node, key_from, sql)
    if key is not None:
        entry["primary_key"] = _spelled(key, resolved.columns())
    return resolved


def relation_sql(node: DbtModel, source: Any) -> str:
    """``select * from`` the model's relation as dbt's adapter quotes it (``relation_name``).

    One exception: a DuckDB source reads its file under an alias of its own inside the diff
    engine (``_ut_source``), so a relation in the file's own catalog (dbt-duckdb names it
    after the file: ``warehouse.duckdb`` -> ``"warehouse"``) is written ``"schema"."alias"``.
    """
    assert node.relation_name is not None
    relation = node.relation_name
    if isinstance(source, dict) and source.get("type") == "duckdb" and node.database:
        path = str(source.get("path") or ":memory:")
        catalog = "memory" if path == ":memory:" else Path(path).stem
        if ":" not in path.replace(":memory:", "") and node.database.lower() == catalog.lower():
            relation = ".".join('"' + p.replace('"', '""') + '"' for p in (node.schema, node.alias))
    return f"select * from {relation}"


def _spelled(key: list[str], known: DbtColumns | None) -> list[str]:
    """Key columns as the warehouse spells them (tests may be written in another case)."""
    if known is None:
        return key
    by_lower = {c.name.lower(): c.name for c in known.columns}
    return [by_lower.get(k.lower(), k) for k in key]
