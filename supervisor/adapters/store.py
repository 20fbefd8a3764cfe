"""The run database on SQLite (aiosqlite): the store port's embedded adapter.

Durability rules: WAL, `synchronous=FULL`, one writer connection behind a lock
with explicit `BEGIN IMMEDIATE`, readers on their own connection. A transition is one
transaction that appends the transition row and updates the run row under a version check.

Only what is SQLite's is here: the connections, the transaction, the migrations'
bookkeeping (`user_version`) and the error it raises for a taken key. The port's methods, with
their statements and row decoders, are `supervisor.adapters.sql_store.SqlStore`'s, built from
the declarations of `supervisor.adapters.schema`, which a PostgreSQL adapter shares. The
record types live in `supervisor.core.records` and are re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Self, cast

import aiosqlite

from supervisor.adapters import statements as sql
from supervisor.adapters.schema import SCHEMA_VERSION as SCHEMA_VERSION
from supervisor.adapters.schema import Row, migration_files
from supervisor.adapters.sql_store import SqlStore
from supervisor.core.errors import StaleVersion
from supervisor.core.records import ActionRecord as ActionRecord
from supervisor.core.records import AttachmentRecord as AttachmentRecord
from supervisor.core.records import FleetReport as FleetReport
from supervisor.core.records import InstanceRecord as InstanceRecord
from supervisor.core.records import ReportProblemRecord as ReportProblemRecord
from supervisor.core.records import RunDataRecord as RunDataRecord
from supervisor.core.records import RunRecord as RunRecord
from supervisor.core.records import TerminationDay as TerminationDay
from supervisor.core.records import TransitionRecord as TransitionRecord


def _migrations() -> list[tuple[int, str]]:
    return [(number, path.read_text(encoding="utf-8")) for number, path in migration_files()]


async def _connect(path: Path, *, readonly: bool = False) -> aiosqlite.Connection:
    if readonly:
        db = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    else:
        db = await aiosqlite.connect(path, isolation_level=None)
    await db.execute("PRAGMA busy_timeout = 10000")
    await db.execute("PRAGMA foreign_keys = ON")
    if not readonly:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
    return db


async def migrate(db: aiosqlite.Connection) -> int:
    """Apply every numbered migration above the file's `user_version`; return the new version."""
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    current = int(row[0]) if row else 0
    for number, text in _migrations():
        if number > current:
            await db.executescript(
                f"BEGIN IMMEDIATE;\n{text}\nPRAGMA user_version = {number};\nCOMMIT;"
            )
            current = number
    return current


class Store(SqlStore):
    """The run database in one SQLite file. Use `await Store.open(path)`; close with
    `await store.close()`."""

    _key_taken = (sqlite3.IntegrityError,)
    single_writer = True  # the state-directory lock: one daemon per file

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Self:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path)
        try:
            await migrate(writer)
            reader = await _connect(path)
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, reader)

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    def __repr__(self) -> str:
        return f"<Store {self.path}>"

    # -- writes ---------------------------------------------------------------------------

    async def _write(
        self, statements: Iterable[sql.Statement], *, stale_if_unchanged: str = ""
    ) -> None:
        """Run statements in one BEGIN IMMEDIATE transaction.

        With `stale_if_unchanged`, the first statement must change a row (a version-checked
        UPDATE); otherwise everything is rolled back and `StaleVersion` raised with that text.
        """
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                for index, (text, params) in enumerate(statements):
                    cursor = await self._writer.execute(text, params)
                    if index == 0 and stale_if_unchanged and cursor.rowcount == 0:
                        raise StaleVersion(stale_if_unchanged)
            except BaseException:
                # Also after a cancellation while BEGIN was queued: it still runs on the
                # connection's thread, and this ROLLBACK, queued behind it, closes it.
                with contextlib.suppress(sqlite3.OperationalError):
                    await self._writer.execute("ROLLBACK")
                raise
            await self._writer.execute("COMMIT")

    async def _read(self, text: str, params: Iterable[Any] = ()) -> list[Row]:
        async with self._reader.execute(text, tuple(params)) as cur:
            return cast("list[Row]", await cur.fetchall())  # tuples: no row factory

    async def _pages(self, text: str, params: Iterable[Any], page: int) -> AsyncIterator[list[Row]]:
        async with self._reader.execute(text, tuple(params)) as cur:
            while rows := await cur.fetchmany(page):
                yield cast("list[Row]", rows)

    # -- leases (issue 14) ----------------------------------------------------------------

    async def _write_returning(self, statement: sql.Statement) -> list[Row]:
        """Run one statement (an UPDATE ... RETURNING) in its own BEGIN IMMEDIATE
        transaction; its rows."""
        text, params = statement
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                rows = await self._writer.execute_fetchall(text, params)
            except BaseException:
                with contextlib.suppress(sqlite3.OperationalError):
                    await self._writer.execute("ROLLBACK")
                raise
            await self._writer.execute("COMMIT")
        return cast("list[Row]", list(rows))
