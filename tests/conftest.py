"""Shared fixtures. Service fixtures use the real servers on this machine and fail with the
command that starts the server when it is down; they never skip."""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest_plugins = ["project_support", "broker_support"]  # the `script` fixture and the project
# builder; the message brokers of this machine (tests/broker_support.py)

PG_HOST = os.environ.get("UNDERTOW_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("UNDERTOW_TEST_PG_PORT", "5432"))
PG_ADMIN_DB = os.environ.get("UNDERTOW_TEST_PG_DB", "test")
PG_USER = os.environ.get("UNDERTOW_TEST_PG_USER", "postgres")
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def _pg_admin_conninfo() -> str:
    return f"host={PG_HOST} port={PG_PORT} dbname={PG_ADMIN_DB} user={PG_USER}"


def pg_url_for(dbname: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{dbname}"


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database with a unique name; yields its URL, drops it after."""
    import psycopg

    name = f"ut_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(_pg_admin_conninfo(), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} ({exc}).\n"
            f"Start it with: {PG_START}",
            pytrace=False,
        )
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_url_for(name)
    finally:
        with psycopg.connect(_pg_admin_conninfo(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


MARIADB_HOST = os.environ.get("UNDERTOW_TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("UNDERTOW_TEST_MARIADB_PORT", "3306"))
MARIADB_USER = os.environ.get("UNDERTOW_TEST_MARIADB_USER", "root")
MARIADB_START = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"


def mariadb_url_for(dbname: str) -> str:
    return f"mysql://{MARIADB_USER}@{MARIADB_HOST}:{MARIADB_PORT}/{dbname}"


@pytest.fixture
def mariadb_database() -> Iterator[str]:
    """A fresh MariaDB database with a unique name; yields its URL, drops it after."""
    import pymysql

    name = f"ut_{uuid.uuid4().hex[:12]}"

    def admin() -> pymysql.connections.Connection:  # type: ignore[type-arg]
        return pymysql.connect(
            host=MARIADB_HOST, port=MARIADB_PORT, user=MARIADB_USER, connect_timeout=5
        )

    try:
        conn = admin()
    except pymysql.err.OperationalError as exc:
        pytest.fail(
            f"MariaDB is not reachable at {MARIADB_HOST}:{MARIADB_PORT} ({exc}).\n"
            f"Start it with: {MARIADB_START}",
            pytrace=False,
        )
    with conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield mariadb_url_for(name)
    finally:
        with admin() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture(scope="session")
def fakesnow_server() -> Iterator[dict[str, Any]]:
    """One fakesnow server per test process (``fakesnow.server`` can start only once: its
    submodule of the same name replaces the function once imported)."""
    try:
        fakesnow = importlib.import_module("fakesnow")
    except ImportError:
        pytest.fail(
            'fakesnow is not installed: run `make test-warehouses`, or `pip install -e ".[dev,'
            'snowflake,warehouse-emulators]"` in this virtualenv',
            pytrace=False,
        )
    with fakesnow.server() as kwargs:
        yield kwargs


@pytest.fixture(autouse=True)
def _fresh_rate_budgets() -> Iterator[None]:
    """Each test starts with no shared rate budget (budgets are per process otherwise)."""
    from undertow.destinations.rate import forget_budgets

    forget_budgets()
    yield
    forget_budgets()


@pytest.fixture(autouse=True)
def _secrets_registered_here_stay_here() -> Iterator[None]:
    """The secrets a test registers (every destination and source registers its
    credentials with :mod:`undertow.redact`, which keeps them for the process) are
    forgotten after it: else a later test in the same xdist worker sees its words masked
    (a docs test that sets every ``${VAR}`` to ``secret`` turned Stripe's hint "check the
    secret key" into "check the *** key" in a test that ran after it)."""
    from undertow import redact

    with redact._lock:
        saved = set(redact._secrets)
    yield
    with redact._lock:
        if redact._secrets != saved:
            redact._secrets.clear()
            redact._secrets.update(saved)
            redact._compiled = None
