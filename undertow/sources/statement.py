"""A model is exactly one query: the check every source runs before sending a model's SQL.

The warehouse is read-only to Undertow. A model such as ``select 1 as id; commit; delete
from t`` would end a read-only transaction and run a write, so every source refuses SQL
that is more than one statement, or one statement that is not a query, before anything
reaches the warehouse. :class:`~undertow.sources.base.Source` applies
:func:`check_one_query` to ``describe``, ``extract`` and ``load_into_duckdb`` of every
source class, built in or third-party, so no connector can forget it.

The SQL is split with sqlglot's tokenizer for the source's dialect, which knows its
strings, quoted identifiers, dollar quoting and comments: a ``;`` inside ``'a;b'`` or a
comment is not a statement break. Trailing semicolons are allowed.

sqlglot costs a tenth of a second to import and tokenize, in every run, so SQL that is
plainly one query skips it: no ``;`` anywhere (then no quoting can hide a statement break)
and a first word that starts a query (``select``, ``with``, ...) followed by a space or the
end. That is the tokenizer's verdict too, except for an unclosed quote or comment, which the
tokenizer refuses and the fast path leaves to the warehouse's own parser: refused there
before anything runs, with the warehouse's message. A query that passed is not checked
again in the same process.

This is the first of two locks. The second is the session: PostgreSQL and MySQL read in a
READ ONLY transaction, DuckDB and SQLite files open read-only, ClickHouse queries run with
``readonly``; for the others the role granted to Undertow is the lock (see
``docs/sources/README.md``, least privilege).
"""

from __future__ import annotations

import re

from undertow.errors import ModelError

QUERY_STARTS = {"SELECT", "WITH", "VALUES", "FROM", "TABLE", "L_PAREN", "PIVOT", "UNPIVOT"}
"""Token types a query may start with (``FROM t`` and ``PIVOT`` are DuckDB queries)."""

_DIALECTS = {
    "postgres", "mysql", "duckdb", "sqlite", "snowflake", "bigquery", "clickhouse",
    "databricks", "redshift", "trino", "tsql", "oracle",
}  # fmt: skip


def tokenizer_dialect(sql_dialect: str | None, connector: str) -> str:
    """The sqlglot dialect to split a source's SQL with (its own, else a close one)."""
    for candidate in (sql_dialect, connector):
        if candidate in _DIALECTS:
            return str(candidate)
    return "postgres"


_FIRST_WORD = re.compile(r"[ \t\n\r]*(?:([A-Za-z]+)(?:[ \t\n\r]|\Z)|\()")
"""Leading blanks, then a word followed by a blank or the end, or a ``(`` (``L_PAREN``)."""

_PLAIN_STARTS = {"select", "with", "values", "from", "table", "pivot", "unpivot"}
"""The words of :data:`QUERY_STARTS`, as the tokenizer reads them in every dialect."""

_PASSED: set[tuple[str, str]] = set()
"""(sql, dialect) pairs this process found to be one query."""


def plainly_one_query(sql: str) -> bool:
    """True when ``sql`` has no ``;`` and starts with a query's first word or ``(``."""
    if ";" in sql:
        return False
    found = _FIRST_WORD.match(sql)
    if found is None:
        return False
    word = found.group(1)
    return word is None or word.lower() in _PLAIN_STARTS


def check_one_query(sql: str, *, dialect: str, model: str, source: str) -> None:
    """Raise :class:`ModelError` unless ``sql`` is exactly one query (nothing is sent)."""
    if (sql, dialect) in _PASSED or plainly_one_query(sql):
        return
    _check_tokens(sql, dialect=dialect, model=model, source=source)
    _PASSED.add((sql, dialect))


def _check_tokens(sql: str, *, dialect: str, model: str, source: str) -> None:
    import sqlglot  # a required dependency, imported on first use (it is slow to import)
    from sqlglot import TokenType
    from sqlglot.errors import TokenError

    hint = "a model is one SELECT (or WITH ... SELECT); remove the other statements"
    try:
        tokens = sqlglot.tokenize(sql, read=dialect)
    except TokenError as exc:
        raise ModelError(
            f"its SQL cannot be split into statements ({str(exc).splitlines()[0][:120]}); "
            "nothing was sent",
            model=model,
            source=source,
            hint="look for an unclosed quote or comment",
        ) from None
    while tokens and tokens[-1].token_type == TokenType.SEMICOLON:
        tokens.pop()
    while tokens and tokens[0].token_type == TokenType.SEMICOLON:
        tokens.pop(0)
    if not tokens:
        raise ModelError("its SQL is empty", model=model, source=source, hint=hint)
    breaks = [t for t in tokens if t.token_type == TokenType.SEMICOLON]
    if breaks:
        after = tokens[tokens.index(breaks[0]) + 1 :]
        following = next((t for t in after if t.token_type != TokenType.SEMICOLON), None)
        shown = f" (the next one starts with {following.text.upper()!r})" if following else ""
        raise ModelError(
            f"a model must be exactly one SELECT statement, and its SQL is "
            f"{len(breaks) + 1} statements{shown}; Undertow only reads from the warehouse, "
            "so nothing was sent",
            model=model,
            source=source,
            hint=hint,
        )
    first = tokens[0]
    if first.token_type.name not in QUERY_STARTS:
        raise ModelError(
            f"a model must be exactly one SELECT statement, and its SQL starts with "
            f"{first.text.upper()!r}; Undertow only reads from the warehouse, so nothing was "
            "sent",
            model=model,
            source=source,
            hint=hint,
        )
