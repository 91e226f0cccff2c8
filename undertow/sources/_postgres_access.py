"""PostgreSQL read-write sessions for the warehouse diff engine, and the least-privilege
check of ``undertow validate`` (which GRANT statements a role lacks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from undertow.sources._postgres_types import psycopg_module
from undertow.sources.base import (
    AccessProblem,
)


class PostgresSession:
    dialect = "postgres"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str) -> None:
        self.conn.execute(sql)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(sql).fetchall())

    def insert_arrow(self, table: str, columns: str, data: Any) -> None:
        """Bulk insert (``sources.base.insert_arrow``): one ``COPY ... FROM STDIN`` of CSV."""
        import io

        import pyarrow.csv as pacsv

        buffer = io.BytesIO()
        pacsv.write_csv(data, buffer, pacsv.WriteOptions(include_header=False))
        with (
            self.conn.cursor() as cur,
            cur.copy(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)") as copy,
        ):
            copy.write(buffer.getvalue())

    def close(self) -> None:
        self.conn.close()


def access_problems(
    conn: Any,
    source: str,
    relations: Sequence[str],
    scratch_schema: str | None,
    search_path: list[str] | None,
) -> list[AccessProblem]:
    ident = psycopg_module().sql.Identifier
    role, database, path = conn.execute(
        "SELECT current_user, current_database(), current_setting('search_path')"
    ).fetchone()
    who = ident(role).as_string(conn)
    schemas = search_path or [
        role if p.strip() == '"$user"' else p.strip().strip('"') for p in path.split(",")
    ]
    problems: list[AccessProblem] = []
    for relation in relations:
        parts = relation.split(".")
        name, schema = parts[-1], (parts[-2] if len(parts) > 1 else None)
        found = conn.execute(
            """SELECT n.nspname, has_schema_privilege(n.oid, 'USAGE'),
                      has_table_privilege(c.oid, 'SELECT')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relname = %s AND n.nspname = ANY(%s)
               ORDER BY array_position(%s, n.nspname::text) LIMIT 1""",
            [name, [schema] if schema else schemas, [schema] if schema else schemas],
        ).fetchone()
        if found is None:
            continue  # not a table here (a CTE, a function): the model check reports the rest
        nsp, usage, select = found
        qualified = f"{ident(nsp).as_string(conn)}.{ident(name).as_string(conn)}"
        grants = []
        if not usage:
            grants.append(f"GRANT USAGE ON SCHEMA {ident(nsp).as_string(conn)} TO {who};")
        if not select:
            grants.append(f"GRANT SELECT ON {qualified} TO {who};")
        if grants:
            missing = " and ".join(
                g for g, ok in (("USAGE on schema " + nsp, usage), ("SELECT", select)) if not ok
            )
            problems.append(
                AccessProblem(
                    f"source {source!r}: user {role!r} cannot read {nsp}.{name} "
                    f"(missing {missing})",
                    tuple(grants),
                )
            )
    if scratch_schema is not None:
        row = conn.execute(
            """SELECT has_schema_privilege(n.oid, 'USAGE'), has_schema_privilege(n.oid, 'CREATE')
               FROM pg_namespace n WHERE n.nspname = %s""",
            [scratch_schema],
        ).fetchone()
        target = ident(scratch_schema).as_string(conn)
        why = f"source {source!r}: the warehouse diff engine keeps its tables in schema"
        if row is None:
            if not conn.execute(
                "SELECT has_database_privilege(current_database(), 'CREATE')"
            ).fetchone()[0]:
                problems.append(
                    AccessProblem(
                        f"{why} {scratch_schema!r}, which does not exist, and user {role!r} "
                        f"may not create schemas in database {database!r}",
                        (f"CREATE SCHEMA {target} AUTHORIZATION {who};",),
                    )
                )
        elif not (row[0] and row[1]):
            problems.append(
                AccessProblem(
                    f"{why} {scratch_schema!r}, where user {role!r} lacks "
                    + " and ".join(
                        p for p, ok in zip(("USAGE", "CREATE"), row, strict=True) if not ok
                    ),
                    (f"GRANT USAGE, CREATE ON SCHEMA {target} TO {who};",),
                )
            )
    return problems
