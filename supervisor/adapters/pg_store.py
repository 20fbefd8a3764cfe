"""The run database on PostgreSQL (psycopg 3, async, with its connection pool): the store
port's adapter for teams and replicas (`SUPERVISOR_DATABASE_URL`).

Only what is PostgreSQL's is here: the pool, the transaction, the migrations' bookkeeping
(the `schema_migrations` table, under an advisory lock) and the errors its driver raises. The
port's methods, their statements and row decoders are `SqlStore`'s, shared with SQLite.

Statements are built with `?` placeholders and rendered with `schema.POSTGRESQL` as `$1, $2`:
they run on psycopg's raw cursors, which pass PostgreSQL's own placeholders through (so a `%`
in a statement needs no escaping). Values keep the columns' codecs (TEXT, BIGINT, DOUBLE
PRECISION): a timestamp is ISO 8601 text here too.

A transaction is PostgreSQL's default READ COMMITTED: a version-checked UPDATE that meets a
row another transaction changed waits for it, then sees the new version and changes nothing,
which `_write` turns into `StaleVersion`, as on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Self

import psycopg
import psycopg.errors
import structlog
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from supervisor.adapters import statements as sql
from supervisor.adapters.database_url import redact, redact_text
from supervisor.adapters.migration_dialects import postgresql_migrations
from supervisor.adapters.schema import POSTGRESQL, SCHEMA_VERSION, Row
from supervisor.adapters.schema import timestamp as _iso
from supervisor.adapters.sql_store import SqlStore
from supervisor.core.errors import InvalidInput, StaleVersion

log = structlog.get_logger("supervisor.store")

DATABASE_URL_SETTING = "SUPERVISOR_DATABASE_URL"
CONNECT_TIMEOUT_S = 10
"""libpq's connect timeout: a closed port answers at once, a silent host within this."""
POOL_MIN = 2
POOL_MAX = 10
"""Connections per store: a restart's paged read holds one while monitors commit on others."""
MIGRATION_LOCK = 0x5355_5045_5256_4953  # "SUPERVIS": one advisory lock key for the migrations
SCHEMA_MIGRATIONS = "schema_migrations"
"""The migrations applied (SQLite keeps the number in `PRAGMA user_version`)."""

RETRY_DELAYS_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0)
"""Waits before running a read, or a write that did not reach its COMMIT, again after the
connection was lost (OperationalError), while `RETRY_WINDOW_S` lasts."""
RETRY_WINDOW_S = 45.0
"""How long a read or a write keeps trying, from its first attempt (waits for a pooled
connection included): a managed database's failover. Longer, the error is the caller's (a
monitor fails its run)."""

Connection = psycopg.AsyncConnection[TupleRow]


class DatabaseUnavailable(InvalidInput):
    """`SUPERVISOR_DATABASE_URL` names a database that cannot be used (the message is one
    line, with any password redacted)."""


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailable:
    """The error for a database at `url` that failed with `exc`: one line, no password."""
    reason = redact_text(_one_line(str(exc)) or type(exc).__name__, url)
    return DatabaseUnavailable(
        f"{DATABASE_URL_SETTING} ({redact(url)}) does not connect: {reason}: check the URL, "
        "the password (in the URL, PGPASSWORD or ~/.pgpass) and that the server is up"
    )


async def connect(url: str) -> Connection:
    """One connection in autocommit mode, with raw (`$1`) placeholders; raises
    `DatabaseUnavailable` with libpq's reason."""
    try:
        return await psycopg.AsyncConnection.connect(
            url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            cursor_factory=psycopg.AsyncRawCursor,
        )
    except (psycopg.Error, ValueError) as exc:  # ValueError: psycopg refused the URL's form
        raise unavailable(url, exc) from None


async def check_connects(url: str) -> None:
    """Raise `DatabaseUnavailable` unless a connection to `url` can be made."""
    conn = await connect(url)
    await conn.close()


async def migrate(conn: Connection) -> int:
    """Apply every numbered migration above the database's version, each in its own
    transaction, all under one advisory lock (replicas starting together migrate once: the
    others wait, then find nothing to do); return the new version."""
    await conn.execute("SELECT pg_advisory_lock($1)", (MIGRATION_LOCK,))
    try:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA_MIGRATIONS} "
            "(version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        cursor = await conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {SCHEMA_MIGRATIONS}")
        row = await cursor.fetchone()
        current = int(row[0]) if row else 0
        for number, text in postgresql_migrations():
            if number <= current:
                continue
            try:
                async with conn.transaction():
                    # No parameters: the file's statements go as one script (simple protocol).
                    await conn.execute(text)
                    await conn.execute(
                        f"INSERT INTO {SCHEMA_MIGRATIONS} (version, applied_at) VALUES ($1, $2)",
                        (number, _iso(datetime.now(UTC))),
                    )
            except psycopg.Error as exc:
                raise MigrationFailed(number, current, exc) from exc
            log.info("migration_applied", version=number)
            current = number
        if current > SCHEMA_VERSION:  # a newer replica migrated it: additive, so carry on
            log.warning("schema_newer_than_code", database=current, code=SCHEMA_VERSION)
        return current
    finally:
        # A lost connection has released its session's lock already.
        with contextlib.suppress(psycopg.OperationalError):
            await conn.execute("SELECT pg_advisory_unlock($1)", (MIGRATION_LOCK,))


class MigrationFailed(Exception):
    """Migration `number` failed and was rolled back: the database stays at `version`."""

    def __init__(self, number: int, version: int, error: psycopg.Error) -> None:
        super().__init__(f"migration {number} failed ({_one_line(str(error))})")
        self.number = number
        self.version = version


class PgStore(SqlStore):
    """The run database in PostgreSQL. Use `await PgStore.open(url)`; close with
    `await store.close()`."""

    _key_taken = (psycopg.errors.UniqueViolation,)

    def __init__(self, url: str, pool: AsyncConnectionPool[Connection]) -> None:
        self.url = url
        self._pool = pool

    @classmethod
    async def open(cls, url: str) -> Self:
        """Connect, migrate, and open the pool. Raises `DatabaseUnavailable` (one line,
        naming `SUPERVISOR_DATABASE_URL`, password redacted) when the database cannot be
        reached or refuses us."""
        first = await connect(url)
        try:
            version = await migrate(first)
        except MigrationFailed as exc:
            raise DatabaseUnavailable(
                f"{DATABASE_URL_SETTING} ({redact(url)}): {redact_text(str(exc), url)}; the "
                f"database stays at schema version {exc.version}: fix the cause (the role may "
                "lack CREATE on the schema) and start again"
            ) from None
        except psycopg.Error as exc:
            raise unavailable(url, exc) from None
        finally:
            await first.close()
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            min_size=POOL_MIN,
            max_size=POOL_MAX,
            kwargs={
                "autocommit": True,
                "connect_timeout": CONNECT_TIMEOUT_S,
                "cursor_factory": psycopg.AsyncRawCursor,
            },
            open=False,
            name="supervisor-store",
            # A pooled connection the server dropped (a restart, a failover, an idle timeout)
            # is found out and replaced when it is taken, not by the write that gets it.
            check=AsyncConnectionPool.check_connection,
        )
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 3)
        except psycopg.Error as exc:  # PoolTimeout: the first connection worked, these did not
            await pool.close()
            raise unavailable(url, exc) from None
        log.info("store_opened", database=redact(url), schema_version=version)
        return cls(url, pool)

    async def close(self) -> None:
        await self._pool.close()

    def __repr__(self) -> str:
        return f"<PgStore {redact(self.url)}>"

    # -- the primitives ---------------------------------------------------------------------

    async def _write(
        self, statements: Iterable[sql.Statement], *, stale_if_unchanged: str = ""
    ) -> None:
        """Run statements in one transaction.

        With `stale_if_unchanged`, the first statement must change a row (a version-checked
        UPDATE); otherwise everything is rolled back and `StaleVersion` raised with that text.

        A lost connection before the COMMIT was sent (the server restarted, a failover) rolled
        the transaction back: it is run again on another connection (`RETRY_DELAYS_S`). A
        connection lost during the COMMIT leaves its outcome unknown: that error is raised.
        """
        statements = list(statements)
        for delay in _retry_delays():
            committing = False
            try:
                async with self._pool.connection() as conn, conn.transaction():
                    for index, (text, params) in enumerate(statements):
                        cursor = await conn.execute(POSTGRESQL.render(text), params)
                        if index == 0 and stale_if_unchanged and cursor.rowcount == 0:
                            raise StaleVersion(stale_if_unchanged)
                    committing = True  # leaving the block sends COMMIT
                return
            except psycopg.OperationalError as exc:
                if committing or delay is None:
                    raise
                await _wait_to_retry("write", exc, delay)

    async def _read(self, text: str, params: Iterable[Any] = ()) -> list[Row]:
        """The rows of one query; run again on another connection after a lost one."""
        rendered, values = POSTGRESQL.render(text), tuple(params)
        for delay in _retry_delays():
            try:
                async with self._pool.connection() as conn:
                    cursor = await conn.execute(rendered, values)
                    return list(await cursor.fetchall())
            except psycopg.OperationalError as exc:
                if delay is None:
                    raise
                await _wait_to_retry("read", exc, delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _pages(self, text: str, params: Iterable[Any], page: int) -> AsyncIterator[list[Row]]:
        """A server-side cursor in a transaction: the rows come `page` at a time and never all
        at once. Not run again after a lost connection (pages were handed out already)."""
        async with (
            self._pool.connection() as conn,
            conn.transaction(),
            psycopg.AsyncRawServerCursor(conn, "supervisor_pages") as cursor,
        ):
            await cursor.execute(POSTGRESQL.render(text), tuple(params))
            while rows := await cursor.fetchmany(page):
                yield list(rows)

    # -- replicas: notices (issue 14, routing) ----------------------------------------------------

    _notices = True
    """Inbox rows, their answers and transitions NOTIFY in their transaction
    (`supervisor.adapters.pg_notices` listens)."""

    # -- leases (issue 14: the statements are `SqlStore`'s, section "leases") ------------------

    _skip_locked = " FOR UPDATE SKIP LOCKED"

    async def _write_returning(self, statement: sql.Statement) -> list[Row]:
        """Run one statement (an UPDATE ... RETURNING) in its own transaction; its rows. Run
        again after a connection lost before the COMMIT, as `_write` is."""
        text, params = statement
        rendered = POSTGRESQL.render(text)
        for delay in (*RETRY_DELAYS_S, None):
            committing = False
            try:
                async with self._pool.connection() as conn, conn.transaction():
                    cursor = await conn.execute(rendered, params)
                    rows: list[Row] = list(await cursor.fetchall())
                    committing = True  # leaving the block sends COMMIT
                return rows
            except psycopg.OperationalError as exc:
                if committing or delay is None:
                    raise
                await _wait_to_retry("write", exc, delay)
        raise AssertionError("unreachable: the last attempt returns or raises")


def _retry_delays() -> Iterator[float | None]:
    """The waits before each next attempt, then None (the last attempt) once the next wait
    would end beyond `RETRY_WINDOW_S` from now."""
    deadline = time.monotonic() + RETRY_WINDOW_S
    for delay in RETRY_DELAYS_S:
        if time.monotonic() + delay > deadline:
            break
        yield delay
    yield None


async def _wait_to_retry(what: str, exc: psycopg.OperationalError, delay: float) -> None:
    log.warning("database_retried", operation=what, error=_one_line(str(exc)), delay_s=delay)
    await asyncio.sleep(delay)
