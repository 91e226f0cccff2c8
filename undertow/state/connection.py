"""The state store's connection: the engine (SQLite with WAL, or PostgreSQL), transactions
that turn a lost database into a :class:`~undertow.errors.StateError`, the numbered
migrations and the version guard.

On open, the store's schema version is read and compared with the newest migration this
code knows (:data:`SCHEMA_VERSION`):

* newer: refused, for reading and writing alike (a worker on older code must not write to a
  store whose meaning moved on; upgrade Undertow on that machine);
* older: a SQLite store (one user, one machine) and an empty store of any kind are migrated
  on open; an existing PostgreSQL store is migrated only by ``undertow migrate``, run once
  by whoever deploys the new version, so that no worker moves a shared store under the
  others' feet;
* equal: opened.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from undertow.errors import NewerStoreError, StateError
from undertow.redact import redact_url
from undertow.state import migrations
from undertow.state.files import prepare_sqlite_file
from undertow.state.records import normalise_url, utc_now
from undertow.state.schema import schema_version

SCHEMA_VERSION = max(number for number, _ in migrations.available())
"""The newest schema version this code knows."""


class StoreConnection:
    """The engine and its transactions; the runs, rows and locks parts build on it."""

    def __init__(self, url: str, *, migrate: bool | None = None) -> None:
        """``migrate``: True applies pending migrations, False never does (then an older
        store is refused), None (default) migrates SQLite and empty stores only."""
        self.url = normalise_url(url)
        self.display_url = redact_url(url)
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"future": True}
        if self.is_sqlite:
            database = parsed.database
            if database and database != ":memory:":
                prepare_sqlite_file(Path(database))
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
        try:
            self.version = self._open(migrate)
        except BaseException:
            self.engine.dispose()  # a refused store keeps no connection open
            raise

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

    def schema_version(self) -> int:
        """The store's schema version now (0 for an empty store)."""
        with self._tx() as conn:
            if not sa.inspect(conn).has_table(schema_version.name):
                return 0
            current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
        return int(current or 0)

    def _open(self, migrate: bool | None) -> int:
        current = self.schema_version()
        self.opened_at_version = current
        """The schema version the store had when this process opened it."""
        if current > SCHEMA_VERSION:
            raise NewerStoreError(
                f"the state store {self.display_url} is at schema version {current}, newer "
                f"than this Undertow knows (up to {SCHEMA_VERSION}): it was migrated by a "
                "newer version; this process refuses to read or write it",
                hint="upgrade Undertow on this machine to the version that migrated the store "
                '(pip install -U "undertow[...]"), then start it again',
            )
        if current == SCHEMA_VERSION:
            return current
        if migrate is None:
            migrate = self.is_sqlite or current == 0
        if not migrate:
            raise StateError(
                f"the state store {self.display_url} is at schema version {current}; this "
                f"Undertow needs version {SCHEMA_VERSION}",
                hint="run `undertow migrate` once (with the new version), then start the "
                "workers and `undertow serve` again",
            )
        return self.migrate()

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
            except NewerStoreError:
                raise
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError, StateError):
                if attempt == attempts - 1:
                    raise
                time.sleep(0.02 * 2**attempt)
        raise AssertionError("unreachable")

    def _migrate(self) -> int:
        with self._tx() as conn:
            schema_version.create(conn, checkfirst=True)
            if self.engine.dialect.name == "postgresql":
                # one migrator at a time: the others wait here, then find nothing to do
                conn.execute(sa.text("LOCK TABLE undertow_schema_version IN EXCLUSIVE MODE"))
            current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
            current = int(current or 0)
            if current > SCHEMA_VERSION:
                raise NewerStoreError(
                    f"the state store {self.display_url} was migrated to schema version "
                    f"{current} by a newer Undertow (this one knows up to {SCHEMA_VERSION})",
                    hint="upgrade Undertow on this machine",
                )
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
