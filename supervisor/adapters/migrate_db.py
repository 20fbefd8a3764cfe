"""`supervisorctl migrate-db`: copy the SQLite run database into an empty PostgreSQL one.

Every table the schema declares (`supervisor.adapters.schema.TABLES`), every column of its
declaration, ids kept: the rows go over as they are stored (the same text, numbers and JSON
text in both backends), in the SQLite file's order, with COPY, in one PostgreSQL
transaction that also moves each identity sequence past the copied ids and counts each
table's rows against the source's before it commits. Either everything is there, or
nothing is.

What belongs to the daemon that wrote the file rather than to the record is not carried
(`LEFT_BEHIND`): its replica row, its duty lease and its inbox. And each run goes over
unowned (owner and lease_until cleared, its epoch kept): a SQLite daemon writes its leases
to the year 9999 and never renews them (it is alone behind its lock), and a daemon killed
rather than stopped leaves them so; copied as they are, no replica would ever claim those
runs.

Synchronous (sqlite3 and a sync psycopg connection): it is a one-off command, and the
daemon is stopped while it runs (the CLI holds the state directory's lock).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.adapters.database_url import is_postgresql, redact, redact_text
from supervisor.adapters.schema import (
    DUTY_LEASES,
    INBOX,
    REPLICAS,
    RUNS,
    SCHEMA_VERSION,
    TABLES,
    Table,
)
from supervisor.core.errors import SupervisorError

if TYPE_CHECKING:
    import psycopg

_PAGE = 5000
"""Rows read from SQLite at a time: the copy's memory stays bounded by this."""
CONNECT_TIMEOUT_S = 10
LEFT_BEHIND = (REPLICAS.name, DUTY_LEASES.name, INBOX.name)
"""Tables not copied: the old daemon's heartbeat row (it never ran on the target), its hold
on the leader duty (the replicas take it afresh), and its inbox (a pending command there was
answered `no_answer` to whoever sent it, and must not be carried out long after)."""
_UNOWNED = {"owner": None, "lease_until": None}
"""A copied run's lease columns: unowned, claimable at once (its epoch is kept, so a fencing
token never goes back)."""


class MigrationRefused(SupervisorError):
    """The copy was not made (and nothing was written): the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class TableCopied:
    table: str
    rows: int
    """Rows copied, equal in the source and the target."""


@dataclass(frozen=True, slots=True)
class DatabaseCopied:
    source: Path
    target: str
    """The target's URL, its password hidden."""
    schema_version: int
    tables: tuple[TableCopied, ...]
    left_behind: tuple[str, ...] = LEFT_BEHIND
    """The tables not copied (see `LEFT_BEHIND`)."""

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)


MigrateTarget = Callable[[str], object]
"""Brings the (empty) PostgreSQL database at the URL to the schema version."""


def migrate_target(url: str) -> int:
    """The PostgreSQL store's own migration runner (the one history both backends share,
    under its advisory lock) on the database at `url`; its new version, or
    `MigrationRefused`."""
    import asyncio

    import psycopg

    from supervisor.adapters.pg_store import DatabaseUnavailable, MigrationFailed, connect, migrate

    shown = redact(url)

    async def run() -> int:
        conn = await connect(url)
        try:
            return await migrate(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(run())
    except MigrationFailed as exc:
        raise MigrationRefused(
            f"cannot migrate {shown}: {redact_text(str(exc), url)}; it stays at schema version "
            f"{exc.version} and nothing was copied: fix the cause (the role may lack CREATE on "
            "the schema) and run migrate-db again"
        ) from None
    except psycopg.Error as exc:
        raise MigrationRefused(
            f"cannot migrate {shown}: {_first_line(exc, url)}; nothing was copied (the role "
            "may lack CREATE on the schema: give migrate-db the owner's URL)"
        ) from None
    except DatabaseUnavailable as exc:
        raise MigrationRefused(f"cannot migrate {shown}: {exc}") from None


def copy_database(
    source: Path, target_url: str, *, migrate: MigrateTarget = migrate_target
) -> DatabaseCopied:
    """Copy the SQLite database `source` into the empty PostgreSQL database at `target_url`
    (migrated first by `migrate`), or raise `MigrationRefused` having written no row."""
    shown = redact(target_url)
    if not is_postgresql(target_url):
        raise MigrationRefused(
            f"--to {shown} is not a PostgreSQL URL: give postgresql://USER@HOST:PORT/DATABASE "
            "(the password from the URL, PGPASSWORD or ~/.pgpass)"
        )
    with _open_source(source) as reader:
        with _connect(target_url) as target:
            _refuse_non_empty(target, target_url)
        try:
            migrate(target_url)
        except MigrationRefused:
            raise
        except SupervisorError as exc:
            raise MigrationRefused(f"cannot migrate {shown}: {exc}") from None
        with _connect(target_url) as target:
            tables = _copy(reader, target, target_url)
    return DatabaseCopied(source, shown, SCHEMA_VERSION, tables)


# -- the source -------------------------------------------------------------------------------


class _Source:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def count(self, table: Table) -> int:
        found = self.db.execute(f"SELECT count(*) FROM {table.name}")  # noqa: S608
        return int(found.fetchone()[0])

    def rows(self, table: Table) -> Iterator[list[tuple[Any, ...]]]:
        """The table's rows, declared columns in order; a run's lease columns cleared."""
        names = ", ".join(
            "NULL" if table is RUNS and c.name in _UNOWNED else c.name for c in table.columns
        )
        select = f"SELECT {names} FROM {table.name} ORDER BY rowid"  # noqa: S608
        cursor = self.db.execute(select)
        while page := cursor.fetchmany(_PAGE):
            yield page


@contextlib.contextmanager
def _open_source(path: Path) -> Iterator[_Source]:
    """The SQLite file, read-only, at the schema version, read in one snapshot."""
    if not path.is_file():
        raise MigrationRefused(
            f"no run database at {path}: nothing to migrate (its state directory is "
            "SUPERVISOR_STATE_DIR, or state_dir in --config)"
        )
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    db.isolation_level = None
    try:
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            db.execute("BEGIN")  # one snapshot of every table, from the first read on
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise MigrationRefused(f"{path} is not a run database: {exc}") from None
        if version != SCHEMA_VERSION:
            advice = (
                "use the supervisor version that wrote it"
                if version > SCHEMA_VERSION
                else "start supervisord (this version) once to migrate it, stop it, and run "
                "migrate-db again"
            )
            raise MigrationRefused(
                f"the run database {path} is at schema version {version}; this version of "
                f"migrate-db copies version {SCHEMA_VERSION}: {advice}"
            )
        yield _Source(db)
    finally:
        db.close()


# -- the target -------------------------------------------------------------------------------


def _connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    shown = redact(url)
    try:
        given = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise MigrationRefused(
            f"--to {shown} is not a libpq URL: give postgresql://USER@HOST:PORT/DATABASE"
        ) from None
    extra: dict[str, Any] = {"application_name": "supervisorctl migrate-db"}
    if "connect_timeout" not in given:
        extra["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        return psycopg.connect(url, **extra)
    except psycopg.Error as exc:
        raise MigrationRefused(f"cannot connect to {shown}: {_first_line(exc, url)}") from None


def _first_line(exc: BaseException, url: str) -> str:
    """The driver's message, one line, with `url`'s password (should it appear) hidden."""
    text = str(exc).strip()
    return redact_text(text.splitlines()[0] if text else type(exc).__name__, url)


def _refuse_non_empty(target: psycopg.Connection[tuple[Any, ...]], url: str) -> None:
    """Refused unless every table of the target's schema is empty, the declared ones (also
    those not copied: a replica that has run there left its heartbeat and duty rows) and any
    other, but for the migrations' own bookkeeping (a database a replica has migrated but not
    used yet is empty too)."""
    import psycopg
    from psycopg import sql

    from supervisor.adapters.pg_store import SCHEMA_MIGRATIONS

    try:
        with target.transaction():
            holding = []
            present = target.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                "AND tablename <> %s",
                [SCHEMA_MIGRATIONS],
            ).fetchall()
            declared = [t.name for t in TABLES]
            others = sorted(str(name) for (name,) in present if name not in declared)
            for name in [*declared, *others]:
                if (name,) not in present:
                    continue
                any_row = sql.SQL("SELECT 1 FROM {} LIMIT 1").format(sql.Identifier(name))
                row = target.execute(any_row).fetchone()
                if row is not None:
                    holding.append(name)
    except psycopg.Error as exc:
        raise MigrationRefused(f"cannot read {redact(url)}: {_first_line(exc, url)}") from None
    if holding:
        raise MigrationRefused(
            f"the database {redact(url)} is not empty (rows in {', '.join(holding)}): migrate-db "
            "copies into an empty database only; create one (createdb) and give its URL"
        )


_CARRIED = tuple(t for t in TABLES if t.name not in LEFT_BEHIND)


def _copy(
    source: _Source, target: psycopg.Connection[tuple[Any, ...]], url: str
) -> tuple[TableCopied, ...]:
    import psycopg

    shown = redact(url)
    copied = []
    try:
        with target.transaction():
            _refuse_non_empty(target, url)  # again, inside the copy's transaction
            for table in _CARRIED:
                names = ", ".join(c.name for c in table.columns)
                statement = f"COPY {table.name} ({names}) FROM STDIN"
                with target.cursor() as cursor, cursor.copy(statement) as copy:
                    for page in source.rows(table):
                        for row in page:
                            copy.write_row(row)
                for column in table.columns:
                    if not column.generated:
                        continue
                    sequence = target.execute(
                        "SELECT pg_get_serial_sequence(%s, %s)", [table.name, column.name]
                    ).fetchone()
                    if sequence is None or sequence[0] is None:
                        continue  # written by the store alone (a run's lease), not an identity
                    next_id = f"COALESCE(max({column.name}), 0) + 1"  # after the copied ids
                    reset = f"SELECT setval(%s, {next_id}, false) FROM {table.name}"  # noqa: S608
                    target.execute(reset, [sequence[0]])
                expected = source.count(table)
                count = f"SELECT count(*) FROM {table.name}"  # noqa: S608
                found = target.execute(count).fetchone()
                got = int(found[0]) if found else -1
                if got != expected:
                    raise MigrationRefused(
                        f"{table.name}: {got} rows in {shown} after the copy, {expected} in "
                        "the source: nothing was committed"
                    )
                copied.append(TableCopied(table.name, expected))
    except psycopg.Error as exc:
        raise MigrationRefused(
            f"the copy into {shown} failed and was rolled back: {_first_line(exc, url)}"
        ) from None
    return tuple(copied)
