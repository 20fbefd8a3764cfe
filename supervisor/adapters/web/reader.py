"""The run database as the HTTP listener reads it: the read-only query path
(`supervisor.adapters.query.RunDatabase`, SQLite or PostgreSQL), one short-lived connection
per request in a worker thread, so a slow query never holds up the daemon's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from supervisor.adapters.query import RunDatabase

T = TypeVar("T")


class RunReader:
    """Opens the run database at `database` (a SQLite file or a PostgreSQL URL) for each read:
    a connection is never shared between threads, and each read sees what is committed."""

    def __init__(self, database: Path | str) -> None:
        self._database = database

    def __repr__(self) -> str:
        return "<RunReader>"  # the URL may hold a password: never shown

    async def read(self, query: Callable[[RunDatabase], T]) -> T:
        """`query(db)` on a fresh read-only connection, in a worker thread."""
        return await asyncio.to_thread(self._read, query)

    def _read(self, query: Callable[[RunDatabase], T]) -> T:
        with RunDatabase(self._database) as db:
            return query(db)
