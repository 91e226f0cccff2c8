"""The SQL of the ``warehouse`` diff engine's scratch schema, shared by the engine
(:mod:`undertow.pipeline.diff.warehouse`) and the access probe (:mod:`undertow.sources._access`),
so that ``validate`` tries exactly the statements a run will send.

Statements are written once in PostgreSQL syntax (:data:`TEMPLATE`), every identifier quoted
by sqlglot, and transpiled to the source's dialect; the few that sqlglot cannot transpile are
written per dialect here.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

TEMPLATE = "postgres"
"""The dialect the templates are written in."""


def ident(name: str) -> str:
    """An identifier quoted by sqlglot (template dialect); never pasted unquoted."""
    return exp.to_identifier(name, quoted=True).sql(TEMPLATE)


def lit(value: str) -> str:
    """A string literal (template dialect)."""
    return exp.Literal.string(value).sql(TEMPLATE)


def transpile(template: str, dialect: str) -> str:
    """``template`` written in :data:`TEMPLATE`, in ``dialect``."""
    out: str = sqlglot.transpile(template, read=TEMPLATE, write=dialect)[0]
    return out


def rename_table_sql(dialect: str, schema: str, old: str, new: str) -> str:
    """Rename table ``old`` of ``schema`` to ``new`` in the same schema, in ``dialect``.

    Written per dialect: MySQL's ``ALTER TABLE ... RENAME`` moves an unqualified new name to
    the connection's default database, ClickHouse has only ``RENAME TABLE``, and PostgreSQL,
    DuckDB and BigQuery refuse a qualified new name."""

    def q(name: str) -> str:
        return exp.to_identifier(name, quoted=True).sql(dialect)

    if dialect in ("mysql", "clickhouse"):
        return f"RENAME TABLE {q(schema)}.{q(old)} TO {q(schema)}.{q(new)}"
    if dialect in ("snowflake", "databricks"):
        return f"ALTER TABLE {q(schema)}.{q(old)} RENAME TO {q(schema)}.{q(new)}"
    return f"ALTER TABLE {q(schema)}.{q(old)} RENAME TO {q(new)}"
