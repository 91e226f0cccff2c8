"""The state store's connection: the engine (SQLite with WAL, or PostgreSQL), transactions
that turn a lost database into a :class:`~undertow.errors.StateError`, and the numbered
migrations applied on open.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from undertow.errors import StateError
from undertow.redact import redact_url
from undertow.state import migrations
from undertow.state.records import normalise_url, utc_now
from undertow.state.schema import schema_version


class StoreConnection:
    """The engine and its transactions; the runs, rows and locks parts build on it."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self.display_url = redact_url(url)
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"future": True}
        if self.is_sqlite:
            database = parsed.database
            if database and database != ":memory:":
                # the state folder holds row keys and reasons: private to its user
                folder = Path(database).parent
                if not folder.exists():
                    folder.mkdir(parents=True, mode=0o700)
                Path(database).touch(mode=0o600, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["connect_args"] = {"connect_timeout": 10}
        try:
            self.engine = sa.create_engine(self.url, **kwargs)
        except ModuleNotFoundError as exc:
            raise StateError(
                f"the driver for state store {self.display_url} is not installed ({exc.name})",
                hint='pip install "undertow[postgres]"',
            ) from exc
        if self.is_sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.migrate()

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.OperationalError as exc:
            raise StateError(
                f"the state store {self.display_url} failed: {exc.orig}",
                hint="check that the state database is running and reachable; "
                "nothing was marked delivered by the failed write",
            ) from exc

    def close(self) -> None:
        self.engine.dispose()

    def migrate(self) -> int:
        """Apply pending numbered migrations; return the schema version.

        Two processes opening a new store at once may race: the loser's transaction fails
        (on the version's primary key, or on a table the winner created), and it tries again
        until it reads the version the winner wrote. The winner may still be inside its
        transaction when the loser retries, so the loser waits a little longer each time.
        """
        attempts = 8
        for attempt in range(attempts):
            try:
                return self._migrate()
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError, StateError):
                if attempt == attempts - 1:
                    raise
                time.sleep(0.02 * 2**attempt)
        raise AssertionError("unreachable")

    def _migrate(self) -> int:
        with self._tx() as conn:
            schema_version.create(conn, checkfirst=True)
            current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
            current = int(current or 0)
            for number, upgrade in migrations.available():
                if number > current:
                    upgrade(conn)
                    conn.execute(
                        schema_version.insert().values(version=number, applied_at=utc_now())
                    )
                    current = number
        return current


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
