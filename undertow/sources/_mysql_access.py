"""The least-privilege check of ``undertow validate`` for MySQL/MariaDB: SELECT per table,
and what SHOW GRANTS gives on the scratch database (roles included), as GRANT statements.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from undertow.sources._mysql_types import error_code, error_text, pymysql_module, quote_ident
from undertow.sources.base import (
    AccessProblem,
)

_SCRATCH_PRIVILEGES = ("CREATE", "DROP", "SELECT", "INSERT", "DELETE", "ALTER")
"""What the warehouse diff engine does in its scratch database: CREATE DATABASE IF NOT
EXISTS, CREATE TABLE (AS SELECT), INSERT, DELETE, ALTER TABLE ... RENAME, DROP TABLE."""
_GRANT_LINE = re.compile(
    r"^(GRANT|REVOKE) (.+?) ON (\*|`(?:[^`]|``)*`)\.(\*|`(?:[^`]|``)*`) (?:TO|FROM) ", re.S
)
_TABLE_DENIED, _NO_SUCH_TABLE, _NO_DATABASE_SELECTED, _NO_SUCH_DATABASE = 1142, 1146, 1046, 1049
_CONNECTION_GONE = {1053, 1317, 1927, 4031}


def access_problems(
    cur: Any,
    source: str,
    relations: Sequence[str],
    scratch_schema: str | None,
    database: str | None,
) -> list[AccessProblem]:
    """The privileges the session's user lacks (see :meth:`MySQLSource.check_access`).

    Relations are probed rather than looked up: ``information_schema`` shows a user only its
    own grants, not those of its roles. The probe cannot tell a table the user may not read
    from one that does not exist (the server answers "SELECT command denied" for both), so
    only a user with some privilege there hears "does not exist". The scratch database's
    privileges come from ``SHOW GRANTS``: the user's global and database-level grants, and
    those of its active roles (MariaDB lists them; MySQL 8 with ``USING`` its active roles).
    """
    cur.execute("SELECT CURRENT_USER(), VERSION(), @@lower_case_table_names")
    current, version, lower_case = cur.fetchone()
    user, _, host = str(current).rpartition("@")
    who = f"{_string(user)}@{_string(host)}"
    problems: list[AccessProblem] = []
    for relation in relations:
        problem = _read_problem(cur, source, relation, database, who)
        if problem is not None and problem not in problems:
            problems.append(problem)
    if scratch_schema is None:
        return problems
    grants = _show_grants(cur, mariadb="mariadb" in str(version).lower())
    have = _database_privileges(grants, scratch_schema, ignore_case=bool(int(lower_case)))
    missing = [p for p in _SCRATCH_PRIVILEGES if p not in have]
    if missing:
        cur.execute(
            "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (scratch_schema,)
        )
        where = f"database {scratch_schema!r}"
        if not cur.fetchall():
            where += " (not there yet, the engine creates it, or not visible to this user)"
        pattern = quote_ident(re.sub(r"([\\_%])", r"\\\1", scratch_schema))
        problems.append(
            AccessProblem(
                f"source {source!r}: the warehouse diff engine keeps its tables in {where}, "
                f"where user {who} lacks {_and(missing)}",
                (f"GRANT {', '.join(_SCRATCH_PRIVILEGES)} ON {pattern}.* TO {who};",),
            )
        )
    return problems


def _read_problem(
    cur: Any, source: str, relation: str, database: str | None, who: str
) -> AccessProblem | None:
    """Why the user cannot read ``relation`` (``[db.]name``), or None if it can."""
    pymysql = pymysql_module()
    parts = relation.split(".")
    name, schema = parts[-1], (parts[-2] if len(parts) > 1 else database)
    target = f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)
    shown = f"{schema}.{name}" if schema else name
    try:
        cur.execute(f"SELECT 1 FROM {target} LIMIT 0")
        cur.fetchall()
    except pymysql.MySQLError as exc:
        code = error_code(exc)
        if code is None or not 1000 <= code < 2000 or code in _CONNECTION_GONE:
            raise
        if code == _TABLE_DENIED:
            return AccessProblem(
                f"source {source!r}: user {who} cannot read {shown} (missing SELECT, or no such "
                "table: the server does not tell a user without privileges on it)",
                (f"GRANT SELECT ON {target} TO {who};",),
            )
        if code in (_NO_SUCH_TABLE, _NO_SUCH_DATABASE):
            return AccessProblem(f"source {source!r}: table or view {shown} does not exist")
        if code == _NO_DATABASE_SELECTED:
            return AccessProblem(
                f"source {source!r}: {name} names no database and the source config sets none "
                f"(qualify it as <database>.{name} or set `database`)"
            )
        return AccessProblem(
            f"source {source!r}: user {who} cannot read {shown}: {error_text(exc)}"
        )
    return None


def _show_grants(cur: Any, *, mariadb: bool) -> list[str]:
    """The GRANT statements of the current user and of its active roles.

    MariaDB's ``SHOW GRANTS`` includes those of the enabled roles; MySQL 8's lists the roles
    only, and expands them with ``USING`` (MySQL 5.7, without roles, has no CURRENT_ROLE()).
    """
    pymysql = pymysql_module()
    if not mariadb:
        try:
            cur.execute("SELECT CURRENT_ROLE()")
            (roles,) = cur.fetchone()
            if roles and roles != "NONE":
                cur.execute(f"SHOW GRANTS FOR CURRENT_USER() USING {roles}")
                return [str(row[0]) for row in cur.fetchall()]
        except pymysql.MySQLError as exc:
            code = error_code(exc)
            if code is None or not 1000 <= code < 2000 or code in _CONNECTION_GONE:
                raise
    cur.execute("SHOW GRANTS")
    return [str(row[0]) for row in cur.fetchall()]


def _database_privileges(grants: list[str], database: str, *, ignore_case: bool) -> set[str]:
    """The privileges ``grants`` give on every table of ``database``: global ones and those
    on database patterns it matches (``_`` and ``%`` are wildcards, ``\\`` escapes), less
    MySQL's partial revokes. A union: where several patterns match, the server uses only the
    most specific, so this may see more than the server grants."""
    have: set[str] = set()
    revoked: set[str] = set()
    for line in grants:
        found = _GRANT_LINE.match(line)
        if found is None or found.group(4) != "*":
            continue  # roles, proxies, routines, single tables
        verb, privileges, on = found.group(1), found.group(2), found.group(3)
        if on != "*" and not _like(on[1:-1].replace("``", "`"), database, ignore_case):
            continue
        names = {p.strip().upper() for p in privileges.split(",")}
        if any(n.startswith("ALL") for n in names):
            names = set(_SCRATCH_PRIVILEGES)
        (have if verb == "GRANT" else revoked).update(names)
    return have - revoked


def _like(pattern: str, name: str, ignore_case: bool) -> bool:
    """Whether database ``name`` matches the database pattern of a grant."""
    regex = []
    escaped = False
    for char in pattern:
        if escaped:
            regex.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            regex.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
    flags = re.S | (re.I if ignore_case else 0)
    return re.fullmatch("".join(regex), name, flags) is not None


def _string(value: str) -> str:
    """``value`` as a string literal (the user and host of a GRANT)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
