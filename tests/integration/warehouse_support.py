"""Helpers shared by the tests that run against the warehouse emulators (fakesnow, chDB)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from undertow.sources.snowflake import SnowflakeConfig, SnowflakeSource


def fakesnow_source(server: dict[str, Any], schema: str, **config: object) -> SnowflakeSource:
    """A Snowflake source on the fakesnow ``server``, database ANALYTICS, schema ``schema``
    (created here, with the database)."""
    values: dict[str, object] = {
        "type": "snowflake",
        "account": server["account"],
        "host": server["host"],
        "port": server["port"],
        "protocol": "http",
        "user": "UNDERTOW",
        "password": "sf-password-000",
        "database": "ANALYTICS",
        "schema": schema,
    }
    values.update(config)
    source = SnowflakeSource(SnowflakeConfig.model_validate(values), name="sf")
    session = source.session()
    try:
        session.execute("CREATE DATABASE IF NOT EXISTS ANALYTICS")
        session.execute(f"CREATE SCHEMA IF NOT EXISTS ANALYTICS.{schema}")
    finally:
        session.close()
    return source


def sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def insert_rows(session: Any, table_name: str, table: pa.Table) -> None:
    """INSERT ``table``'s rows as literal VALUES (the emulators' sessions take SQL only)."""
    rows = table.to_pylist()
    if rows:
        values = ", ".join(
            "(" + ", ".join(sql_literal(v) for v in row.values()) + ")" for row in rows
        )
        session.execute(f"INSERT INTO {table_name} VALUES {values}")
