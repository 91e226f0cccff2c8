"""The one-query check's fast path (no sqlglot) agrees with the tokenizer it skips."""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import pytest

from undertow.errors import ModelError
from undertow.sources.statement import _check_tokens, check_one_query, plainly_one_query

ACCEPTED_WITHOUT_TOKENS = [
    "select * from customers",
    "  \n SELECT id FROM t",
    "with a as (select 1 as id) select * from a",
    "values (1), (2)",
    "from customers",
    "table customers",
    "(select 1) union all (select 2)",
    "pivot t on k using sum(v)",
]

NOT_PLAIN = [
    "select 1; delete from t",  # a statement break
    "select 'a;b' as x",  # a ';' in a string: the tokenizer decides (accepts)
    "select 1;",  # a trailing ';': the tokenizer decides (accepts)
    "-- comment\nselect 1",  # a comment first
    "delete from t",
    "selectà from t",  # an identifier, not SELECT
    "select@x from t",  # one token in some dialects
    "select*from t",  # the word must end in a blank
    "\u017felect 1",  # long s: no Unicode case folding to "s"
    "\u00a0select 1",  # a blank the tokenizer may not skip
    "",
]


@pytest.mark.parametrize("sql", ACCEPTED_WITHOUT_TOKENS)
def test_plain_queries_are_what_the_tokenizer_accepts(sql: str) -> None:
    assert plainly_one_query(sql)
    for dialect in ("duckdb", "postgres", "mysql", "snowflake", "tsql"):
        _check_tokens(sql, dialect=dialect, model="m", source="s")  # accepted there too


@pytest.mark.parametrize("sql", NOT_PLAIN)
def test_anything_else_goes_to_the_tokenizer(sql: str) -> None:
    assert not plainly_one_query(sql)


@pytest.mark.parametrize(
    ("sql", "words"),
    [
        ("select 1; delete from t", "2 statements"),
        ("delete from t", "starts with 'DELETE'"),
        ("selectà from t", "exactly one SELECT"),
        ("", "empty"),
    ],
)
def test_the_tokenizer_still_refuses(sql: str, words: str) -> None:
    with pytest.raises(ModelError, match=words):
        check_one_query(sql, dialect="duckdb", model="m", source="s")


def test_an_unclosed_quote_is_refused_by_the_warehouse(tmp_path: Path) -> None:
    """The fast path leaves an unclosed quote to the warehouse's parser: still a ModelError,
    and nothing ran (the table the statement would read is never touched)."""
    from undertow.sources.duckdb import DuckDBSource

    path = tmp_path / "w.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("create table t as select 1 as id")
    src = DuckDBSource(DuckDBSource.Config(type="duckdb", path=str(path)), name="w")
    for call in (src.describe, src.extract):
        with pytest.raises(ModelError):
            call("select 'abc from t", model="m")


def test_a_plain_query_does_not_import_sqlglot() -> None:
    import subprocess

    code = (
        "import sys\n"
        "from undertow.sources.statement import check_one_query\n"
        "check_one_query('select * from t', dialect='duckdb', model='m', source='s')\n"
        "print('sqlglot' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
