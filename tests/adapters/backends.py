"""Both store backends for the tests: open one by its location (a file path or a PostgreSQL
URL), and look at its database from outside the adapter, with the driver alone (counts, raw
statements, the migrated schema), as a person with `sqlite3` or `psql` would."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg

from supervisor.adapters.database_url import is_postgresql
from supervisor.adapters.pg_store import SCHEMA_MIGRATIONS, PgStore
from supervisor.adapters.sql_store import SqlStore
from supervisor.adapters.store import Store

BACKENDS = ("sqlite", "postgresql")

_PG_TYPES = {"text": "TEXT", "bigint": "INTEGER", "double precision": "REAL"}
"""What each declared type (`schema.Codec.sql_type`) becomes on PostgreSQL's side."""


async def open_store(location: str) -> SqlStore:
    if is_postgresql(location):
        return await PgStore.open(location)
    return await Store.open(Path(location))


def location(store: SqlStore) -> str:
    """Where the store's database is: what `open_store` opens again."""
    if isinstance(store, PgStore):
        return store.url
    assert isinstance(store, Store)
    return str(store.path)


def raw_rows(store: SqlStore, sql: str) -> list[tuple[Any, ...]]:
    """The rows of `sql` (no parameters), read on a connection of its own."""
    if isinstance(store, PgStore):
        with psycopg.connect(store.url) as conn:
            return list(conn.execute(sql.encode()).fetchall())
    assert isinstance(store, Store)
    with sqlite3.connect(store.path) as db:
        return list(db.execute(sql).fetchall())


def raw_count(store: SqlStore, sql: str) -> int:
    [(count,)] = raw_rows(store, sql)
    return int(count)


def raw_execute(store: SqlStore, sql: str) -> None:
    """Run one statement and commit it, on a connection of its own (the driver's error
    raised as it is)."""
    if isinstance(store, PgStore):
        with psycopg.connect(store.url, autocommit=True) as conn:
            conn.execute(sql.encode())
        return
    assert isinstance(store, Store)
    with sqlite3.connect(store.path) as db:
        db.execute(sql)


def integrity_error(store: SqlStore) -> type[Exception]:
    """What the backend's driver raises for a statement a constraint or trigger refuses."""
    if isinstance(store, PgStore):
        return psycopg.errors.IntegrityConstraintViolation
    return sqlite3.IntegrityError


def schema_version(store: SqlStore) -> int:
    """The newest migration the database has applied, as its backend records it."""
    if isinstance(store, PgStore):
        return raw_count(store, f"SELECT MAX(version) FROM {SCHEMA_MIGRATIONS}")
    return raw_count(store, "PRAGMA user_version")


def migrated_tables(store: SqlStore) -> dict[str, list[tuple[str, str, bool]]]:
    """Each table the migrations made (not their own bookkeeping): its columns in order, as
    (name, declared type, nullable)."""
    tables: dict[str, list[tuple[str, str, bool]]] = {}
    if isinstance(store, PgStore):
        rows = raw_rows(
            store,
            "SELECT c.table_name, c.column_name, c.data_type, c.is_nullable "
            "FROM information_schema.columns c JOIN information_schema.tables t "
            "ON t.table_schema = c.table_schema AND t.table_name = c.table_name "
            "WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' "
            f"AND c.table_name <> '{SCHEMA_MIGRATIONS}' "
            "ORDER BY c.table_name, c.ordinal_position",
        )
        for table, name, data_type, nullable in rows:
            sql_type = _PG_TYPES.get(data_type, data_type)
            tables.setdefault(table, []).append((name, sql_type, nullable == "YES"))
        return tables
    names = raw_rows(
        store, "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    )
    for (table,) in names:
        # PRAGMA table_info: (cid, name, type, notnull, default, pk); a primary key column is
        # never NULL, whatever SQLite's notnull says of it.
        tables[table] = [
            (name, sql_type, not (notnull or pk))
            for _, name, sql_type, notnull, _, pk in raw_rows(store, f"PRAGMA table_info({table})")
        ]
    return tables
