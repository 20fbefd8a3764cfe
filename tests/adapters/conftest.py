"""The `store` fixture: every behaviour test of the store port runs on both backends, a real
SQLite file and a real PostgreSQL database (tests/pg_server.py), through the same methods."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from supervisor.adapters.sql_store import SqlStore
from supervisor.adapters.store import Store
from tests.adapters.backends import BACKENDS, open_store


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    """A fresh, migrated store: `sqlite` (a file in tmp_path) or `postgresql` (a fresh
    database on the test server)."""
    location = (
        str(tmp_path / "s.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    )
    opened = await open_store(location)
    yield opened
    await opened.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    """For what only the SQLite adapter does (its file, its pragmas)."""
    opened = await Store.open(tmp_path / "s.db")
    yield opened
    await opened.close()
