"""Least-privilege checks by asking the warehouse: what ``undertow validate`` runs for the
sources whose privileges a catalog query cannot reproduce (Snowflake, ClickHouse, BigQuery,
Databricks: roles, inherited and wildcard grants, IAM policies), and for SQLite.

The check runs as the source's own user and lets the warehouse answer:

* **read access**: each relation a model reads is described, ``SELECT * FROM <relation>``
  through the source's own :meth:`~undertow.sources.base.Source.describe` (compiled, no row
  read). A refusal names the relation, the server's message and the GRANT statements.
* **the warehouse diff engine's scratch schema**: through the engine's own read-write
  :meth:`~undertow.sources.base.Source.session`, the schema is looked up and, if missing,
  created (the statement the engine's first run sends); then a probe table
  ``ut_probe_<hex>`` is created (``CREATE TABLE ... AS SELECT 1 AS x``), written (INSERT),
  deleted from, renamed and dropped, as the engine does with its tables. The first step
  refused is reported with the grants covering everything the engine does in that schema,
  and nothing outside it. The probe table is dropped whatever happens; a probe table the
  user cannot drop is named in the problem.

Each warehouse supplies a :class:`WarehouseAccess`: who the grants go to (a
:class:`Principal`), how it spells names, how it words a refusal, and its GRANT statements.
"""

from __future__ import annotations

import contextlib
import functools
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import sqlglot

from undertow.errors import ModelError, SourceError, UndertowError
from undertow.redact import trim
from undertow.sources.base import AccessProblem, Source, SqlSession
from undertow.sources.scratch_sql import TEMPLATE, ident, lit, rename_table_sql, transpile

PROBE_PREFIX = "ut_probe_"
PROBE_MODEL = "(access check)"
"""The model name the read probes are described under (never shown: the prefix is cut)."""
PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Principal:
    """Who the source's queries run as, and where its unqualified names resolve."""

    grantee: str
    """As a GRANT names it after ``TO``: ``ROLE READER``, ``default``, ``\\`a@b.com\\```."""
    who: str
    """As a message names it: ``role READER``, ``user 'default'``."""
    namespace: tuple[str, ...] = ()
    """The containers of an unqualified name, outermost first: ``(database, schema)``."""
    note: str | None = None
    """Appended to each message: what a placeholder (``<role>``) stands for."""


def placeholder(text: str) -> bool:
    """Whether ``text`` is a placeholder such as ``<role>`` (printed as is, never quoted)."""
    return text.startswith("<") and text.endswith(">")


class WarehouseAccess(ABC):
    """One warehouse's part of the shared check (see the module docstring)."""

    warehouse: ClassVar[str]
    """Its name in messages: ``Snowflake``."""

    def __init__(self, source: Source, principal: Principal | None = None) -> None:
        self.source = source
        self._principal = principal

    # -- who ------------------------------------------------------------------------------

    @property
    def principal(self) -> Principal:
        """Found on first use only (it may cost a query), when a problem needs naming."""
        if self._principal is None:
            self._principal = self.find_principal()
        return self._principal

    @abstractmethod
    def find_principal(self) -> Principal:
        """The principal from the config, or asked of the warehouse; placeholders (and a
        ``note`` saying what they stand for) for what neither says. Never raises."""

    # -- names ----------------------------------------------------------------------------

    def spellings(self, parts: Sequence[str]) -> list[tuple[str, ...]]:
        """The names to probe for a relation written ``parts`` (the first is reported)."""
        return [tuple(parts)]

    def qualify(self, parts: Sequence[str]) -> tuple[str, ...]:
        """``parts`` with the namespace's leading containers it leaves out."""
        namespace = self.principal.namespace
        missing = max(0, len(namespace) + 1 - len(parts))
        return (*namespace[:missing], *parts)

    def scratch_parts(self, schema: str) -> tuple[str, ...]:
        """Where the engine's unqualified scratch schema lives: ``(database, schema)``."""
        return (*self.principal.namespace[:-1], schema)

    def name(self, part: str) -> str:
        """A name as a GRANT prints it: bare when that means the same, quoted otherwise."""
        if placeholder(part) or (
            PLAIN.fullmatch(part) and part.upper() not in _keywords(self.source.sql_dialect)
        ):
            return part
        return self.source.quote_identifier(part)

    def dotted(self, parts: Sequence[str]) -> str:
        return ".".join(self.name(p) for p in parts)

    # -- wording --------------------------------------------------------------------------

    def reason(self, said: str) -> str:
        """What the warehouse's refusal ``said`` means, honestly worded."""
        return f"{self.warehouse} refused the query"

    def scratch_refusal(self, said: str) -> str:
        """What follows the server's message when the scratch probe is refused: a cause the
        grants do not cover, or nothing."""
        return ""

    def refusal(self, shown: str, said: str) -> str:
        """The message for relation ``shown`` refused with ``said`` (after ``source 'x': ``)."""
        return f"{self.principal.who} cannot read {shown} ({self.reason(said)}): {said}"

    # -- grants ---------------------------------------------------------------------------

    @abstractmethod
    def read_grants(self, qualified: tuple[str, ...]) -> tuple[str, ...]:
        """The statements that let the principal read ``qualified``."""

    @abstractmethod
    def scratch_grants(self, schema: str) -> tuple[str, ...]:
        """The statements that give the principal what the engine does in ``schema``."""

    def create_schema_grants(self, schema: str) -> tuple[str, ...]:
        """What an administrator runs first when the principal cannot create ``schema``."""
        return (f"CREATE SCHEMA IF NOT EXISTS {self.dotted(self.scratch_parts(schema))};",)

    # -- the probe's SQL (the engine's statements) ------------------------------------------

    def schema_exists_sql(self, schema: str) -> str:
        """A query whose first value is non-zero when ``schema`` exists (the engine's)."""
        return "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = " + lit(schema)

    def rename_sql(self, schema: str, old: str, new: str) -> str:
        """Rename a table within ``schema``, as the engine writes it in this dialect."""
        return rename_table_sql(self.dialect, schema, old, new)

    def sql(self, template: str) -> str:
        """``template`` (PostgreSQL, every identifier quoted) in the source's dialect."""
        return transpile(template, self.dialect)

    @property
    def dialect(self) -> str:
        return self.source.sql_dialect or TEMPLATE


def check_access(
    access: WarehouseAccess, relations: Sequence[str], scratch_schema: str | None
) -> list[AccessProblem]:
    """The problems of :meth:`Source.check_access`, found by probing (module docstring).

    A failure to connect is raised (a ``SourceError``), not reported as a problem.
    """
    problems: list[AccessProblem] = []
    seen: set[tuple[str, ...]] = set()
    for relation in relations:
        found = _read_problem(access, relation)
        if found is not None and found[0] not in seen:  # `t` and `db.t`: one problem
            seen.add(found[0])
            problems.append(found[1])
    if scratch_schema is not None:
        problem = scratch_problem(access, scratch_schema)
        if problem is not None:
            problems.append(problem)
    return problems


def _read_problem(
    access: WarehouseAccess, relation: str
) -> tuple[tuple[str, ...], AccessProblem] | None:
    """Why the principal cannot read ``relation`` (``[a.][b.]name``), with the relation as
    qualified in the problem; None if it can."""
    source = access.source
    first: tuple[tuple[str, ...], str] | None = None
    for spelling in access.spellings(relation.split(".")):
        sql = "SELECT * FROM " + ".".join(source.quote_identifier(p) for p in spelling)
        try:
            source.describe(sql, model=PROBE_MODEL)
        except ModelError as exc:
            first = first or (spelling, server_message(exc))
            continue
        except UndertowError:
            raise
        except Exception as exc:  # a driver error the source does not wrap: not a refusal
            raise SourceError(
                f"source {source.instance_name!r} cannot check read access to {relation}: "
                f"{trim(str(exc))}"
            ) from None
        return None
    assert first is not None
    spelling, said = first
    qualified = access.qualify(spelling)
    return qualified, AccessProblem(
        f"source {source.instance_name!r}: {access.refusal(access.dotted(qualified), said)}"
        + _note(access.principal),
        access.read_grants(qualified),
    )


def scratch_problem(access: WarehouseAccess, schema: str) -> AccessProblem | None:
    """What the engine could not do in ``schema``, probed with its own session."""
    source = access.source
    if source.sql_dialect is None:
        return AccessProblem(
            f"source {source.instance_name!r} (type {source.name}) cannot run the warehouse "
            f"diff engine, which a sync of it uses (scratch schema {schema!r}): use "
            "`diff: {engine: local}` for the syncs of this source"
        )
    session = source.session()
    try:
        return _probe(access, session, schema)
    finally:
        with contextlib.suppress(Exception):
            session.close()


def _probe(access: WarehouseAccess, session: SqlSession, schema: str) -> AccessProblem | None:
    def where() -> str:
        return (
            f"source {access.source.instance_name!r}: the warehouse diff engine keeps its "
            f"tables in schema {access.dotted(access.scratch_parts(schema))}"
        )

    found, lookup = _schema_exists(access, session, schema)
    if not found:
        try:
            session.execute(access.sql(f"CREATE SCHEMA IF NOT EXISTS {ident(schema)}"))
        except Exception as exc:
            who = access.principal.who
            state = (
                f"which could not be looked up ({lookup})"
                if lookup
                else f"which does not exist (or is not visible to {who})"
            )
            said = _said(exc)
            return AccessProblem(
                f"{where()}, {state}, and {who} cannot create it: {said}"
                + access.scratch_refusal(said)
                + _note(access.principal),
                access.create_schema_grants(schema) + access.scratch_grants(schema),
            )
    table = PROBE_PREFIX + uuid.uuid4().hex[:16]
    renamed = table + "_r"
    target, moved = f"{ident(schema)}.{ident(table)}", f"{ident(schema)}.{ident(renamed)}"
    steps = [
        ("create a table", access.sql(f"CREATE TABLE {target} AS SELECT 1 AS x"), table),
        ("insert into a table", access.sql(f"INSERT INTO {target} (x) VALUES (2)"), table),
        ("delete from a table", access.sql(f"DELETE FROM {target} WHERE x = 2"), table),
        ("rename a table", access.rename_sql(schema, table, renamed), renamed),
        ("drop a table", access.sql(f"DROP TABLE {moved}"), None),
    ]
    failed: tuple[str, BaseException] | None = None
    live: str | None = None
    left: str | None = None
    completed = False
    try:
        for what, sql, after in steps:
            try:
                session.execute(sql)
            except Exception as exc:
                failed = (what, exc)
                break
            live = after
        completed = failed is None
    finally:
        if not completed:  # refused or interrupted: drop whatever may exist
            for name in (table, renamed):
                drop = access.sql(f"DROP TABLE IF EXISTS {ident(schema)}.{ident(name)}")
                try:
                    session.execute(drop)
                except Exception:
                    if name == live:
                        left = name
    if failed is None:
        return None
    what, error = failed
    said = _said(error)
    message = f"{where()}, where {access.principal.who} cannot {what}: {said}"
    message += access.scratch_refusal(said)
    if left is not None:
        shown = access.dotted((*access.scratch_parts(schema), left))
        message += (
            f"; the probe table {shown} is left behind: drop it as an administrator "
            f"(DROP TABLE {shown};)"
        )
    return AccessProblem(message + _note(access.principal), access.scratch_grants(schema))


def _schema_exists(
    access: WarehouseAccess, session: SqlSession, schema: str
) -> tuple[bool, str | None]:
    """Whether the schema exists; when the lookup fails, False and the server's message."""
    try:
        rows = session.rows(access.schema_exists_sql(schema))
    except Exception as exc:
        return False, _said(exc)
    return bool(rows and rows[0] and rows[0][0]), None


def server_message(exc: ModelError) -> str:
    """The warehouse's own message in a probe's ModelError (redacted, one line)."""
    text = exc.raw_message
    prefix = f"model {exc.model!r} on source {exc.source!r} failed"
    if text.startswith(prefix):
        text = re.sub(r"^ at character \d+", "", text[len(prefix) :]).removeprefix(": ")
    return trim(text, 400)


def _said(exc: BaseException) -> str:
    """A driver's exception as one redacted line of at most 400 characters."""
    return trim(str(exc).strip() or type(exc).__name__, 400)


def _note(principal: Principal) -> str:
    return f" ({principal.note})" if principal.note else ""


@functools.cache
def _keywords(dialect: str | None) -> frozenset[str]:
    """Words a bare name must not be (quoted when a name is one, which is always safe)."""
    tokenizer = sqlglot.Dialect.get_or_raise(dialect).tokenizer_class
    return frozenset(w for k in tokenizer.KEYWORDS for w in k.split() if PLAIN.fullmatch(w))
