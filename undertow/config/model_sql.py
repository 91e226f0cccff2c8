"""Each model's SQL: written inline (``sql:``), read from a file (``file:``), or reading the
relation of a dbt model (``dbt:``, resolved by ``undertow/dbt/models.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from undertow.config._yaml import dotted
from undertow.dbt.models import ResolvedDbtModel
from undertow.errors import ConfigError

KeyPath = tuple[str | int, ...]


def read_model_sql(
    data: dict[str, Any],
    root: Path,
    where: Callable[[KeyPath], tuple[str, int] | None],
    errors: list[ConfigError],
    dbt_models: dict[str, ResolvedDbtModel],
) -> dict[str, str]:
    out: dict[str, str] = {}
    models = data.get("models")
    if not isinstance(models, dict):
        return out
    for name, entry in models.items():
        if not isinstance(entry, dict):
            continue
        sql, file = entry.get("sql"), entry.get("file")
        if name in dbt_models:
            out[name] = dbt_models[name].sql
        elif isinstance(sql, str) and file is None:
            out[name] = sql
        elif isinstance(file, str) and sql is None:
            target = Path(file).expanduser()
            target = target if target.is_absolute() else (root / target).resolve()
            try:
                out[name] = target.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                path = ("models", name, "file")
                at, line = where(path) or (None, None)
                why = "does not exist" if not target.exists() else f"cannot be read ({exc})"
                errors.append(
                    ConfigError(
                        f"the SQL file {str(target)!r} of model {name!r} {why}",
                        file=at,
                        line=line,
                        key=dotted(path),
                        hint="`file:` is relative to the project folder, "
                        "e.g. `file: models/active_users.sql`",
                    )
                )
    return out
