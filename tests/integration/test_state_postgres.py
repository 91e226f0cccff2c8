"""The state store's tests (tests/unit/test_state_store.py) against real PostgreSQL.

The test bodies are shared: importing them here collects them again in this module, where
the ``state_url`` fixture below gives them a fresh PostgreSQL database instead of SQLite.
"""

from __future__ import annotations

import pytest
from unit.test_state_store import *  # noqa: F403 - the shared test bodies

pytestmark = pytest.mark.integration


@pytest.fixture
def state_url(pg_database: str) -> str:
    assert pg_database.startswith("postgresql://")
    return pg_database
