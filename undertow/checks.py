"""Least-privilege checks for ``undertow validate``: what each source's user may do.

Per source: read access to every relation its models read (found by parsing the models'
SQL with sqlglot), and, when a sync of the source uses the ``warehouse`` diff engine,
create/write access to that engine's scratch schema only. Each missing privilege comes
back as an :class:`~undertow.sources.base.AccessProblem` carrying the statements to run.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from undertow.config.loader import LoadedProject
from undertow.pipeline.engines import diff_config
from undertow.sources.base import AccessProblem, Source


def model_relations(sql: str, dialect: str | None) -> list[str]:
    """The tables and views ``sql`` reads, as ``[catalog.][schema.]name``; CTEs left out.

    SQL that sqlglot cannot parse gives no relations (the model check reports real errors).
    """
    try:
        tree = sqlglot.parse_one(sql, read=dialect)
    except sqlglot.errors.SqlglotError:
        return []
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    found: set[str] = set()
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier) or not table.name:
            continue  # a table function, a file path: no grant to give
        if not table.db and table.name in ctes:
            continue
        found.add(".".join(p for p in (table.catalog, table.db, table.name) if p))
    return sorted(found)


def source_access(loaded: LoadedProject, name: str, source: Source) -> list[AccessProblem]:
    """The privileges the user of source ``name`` lacks for this project."""
    config = loaded.config
    relations: set[str] = set()
    for model_name, model in config.models.items():
        if model.source == name:
            relations.update(model_relations(loaded.model_sql[model_name], source.sql_dialect))
    source_diff = getattr(source.config, "diff", None)
    schemas = sorted(
        {
            diff.schema_
            for sync in config.syncs.values()
            if config.models[sync.model].source == name
            for diff in [diff_config(sync, source_diff)]
            if diff.engine == "warehouse"
        }
    )
    problems = source.check_access(sorted(relations), scratch_schema=None)
    for schema in schemas:
        problems += [p for p in source.check_access([], scratch_schema=schema) if p not in problems]
    for schema in sync_log_schemas(loaded, name, source):
        # the sync logs need what the engine's scratch schema needs (create a table, insert,
        # delete), so the same probe answers, worded for the logs
        for problem in source.check_access([], scratch_schema=schema):
            relabelled = AccessProblem(_for_logs(problem.message), problem.grants)
            if relabelled not in problems:
                problems.append(relabelled)
    return problems


def sync_log_schemas(loaded: LoadedProject, name: str, source: Source) -> list[str]:
    """The ``sync_logs`` schemas the syncs of source ``name`` write to."""
    from undertow.config.models import SyncLogsConfig

    config = loaded.config
    own = getattr(source.config, "sync_logs", None)
    fallback = SyncLogsConfig.model_validate(own) if own else config.sync_logs
    found = set()
    for sync in config.syncs.values():
        if config.models[sync.model].source != name:
            continue
        settings = sync.sync_logs or fallback
        if settings is not None:
            found.add(settings.schema_)
    return sorted(found)


_ENGINE_WORDS = (
    "the warehouse diff engine keeps its tables in",
    "the warehouse diff engine keeps its tables",
    "the warehouse diff engine writes its tables",
)


def _for_logs(message: str) -> str:
    for words in _ENGINE_WORDS:
        if words in message:
            return message.replace(words, "the sync logs (`sync_logs:`) are written to", 1)
    return f"sync logs (`sync_logs:`): {message}"
