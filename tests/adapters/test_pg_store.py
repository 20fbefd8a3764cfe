"""The PostgreSQL store on a real server: the one migration history translated for it, run
once under an advisory lock however many open at the same time, and what only PostgreSQL's
adapter does (its pool, its errors, its redacted URL). The store port's behaviour on both
backends is tests/adapters/test_store.py's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from supervisor.adapters.database_url import redact
from supervisor.adapters.migration_dialects import (
    POSTGRESQL_VARIANTS,
    has_sqlite_only_block,
    postgresql_migrations,
    postgresql_text,
    translate,
)
from supervisor.adapters.pg_store import (
    SCHEMA_MIGRATIONS,
    DatabaseUnavailable,
    PgStore,
)
from supervisor.adapters.schema import MIGRATIONS, SCHEMA_VERSION, migration_files
from supervisor.core.machine import new_run
from tests.core.builders import NOW, make_spec
from tests.pg_server import PostgresServer


def _applied(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT version FROM {SCHEMA_MIGRATIONS} ORDER BY version")
        return [int(version) for (version,) in rows]


async def test_open_migrates_a_fresh_database_and_a_created_run_reads_back(pg_url: str) -> None:
    store = await PgStore.open(pg_url)
    try:
        decision = new_run(make_spec(run_id="run-42"), now=NOW)
        await store.create_run(decision)
        record = await store.get_run("run-42")
    finally:
        await store.close()

    assert record is not None and record.run == decision.run
    assert _applied(pg_url) == [number for number, _ in migration_files()]
    assert _applied(pg_url)[-1] == SCHEMA_VERSION


async def test_reopening_applies_nothing_and_keeps_every_row(pg_url: str) -> None:
    store = await PgStore.open(pg_url)
    await store.create_run(new_run(make_spec(run_id="kept"), now=NOW))
    await store.close()

    reopened = await PgStore.open(pg_url)
    try:
        assert await reopened.get_run("kept") is not None
    finally:
        await reopened.close()
    assert _applied(pg_url) == [number for number, _ in migration_files()]


async def test_replicas_opening_together_migrate_once(pg_url: str) -> None:
    """Eight openers at once: one applies each migration, the others wait on the advisory
    lock and find the schema current (a second CREATE TABLE would fail them)."""
    stores = await asyncio.gather(*(PgStore.open(pg_url) for _ in range(8)))
    try:
        await stores[3].create_run(new_run(make_spec(run_id="after"), now=NOW))
        assert all([await s.get_run("after") is not None for s in stores])
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    assert _applied(pg_url) == [number for number, _ in migration_files()]


async def test_a_migration_that_fails_is_rolled_back_alone(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each migration is its own transaction: a failing one leaves the earlier ones applied
    and nothing of itself, and the next open resumes from there."""
    from supervisor.adapters import pg_store

    real = postgresql_migrations()
    broken = [*real[:2], (3, "CREATE TABLE half_done (x TEXT); SELECT no_such_function();")]
    monkeypatch.setattr(pg_store, "postgresql_migrations", lambda: broken)
    with pytest.raises(DatabaseUnavailable) as raised:
        await PgStore.open(pg_url)
    assert str(raised.value).startswith(
        f"SUPERVISOR_DATABASE_URL ({redact(pg_url)}): migration 3 failed (function "
        "no_such_function() does not exist"
    )
    assert "the database stays at schema version 2" in str(raised.value)
    assert _applied(pg_url) == [1, 2]
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)

    monkeypatch.setattr(pg_store, "postgresql_migrations", lambda: real)
    store = await PgStore.open(pg_url)
    await store.close()
    assert _applied(pg_url)[-1] == SCHEMA_VERSION


async def test_a_database_a_newer_version_migrated_opens_with_a_warning(pg_url: str) -> None:
    """Replicas upgraded one at a time: an older one still opens the database (migrations
    only add), says so, and applies nothing."""
    from structlog.testing import capture_logs

    store = await PgStore.open(pg_url)
    await store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {SCHEMA_MIGRATIONS} VALUES ({SCHEMA_VERSION + 1}, '2030-01-01')".encode()
        )

    with capture_logs() as logs:
        store = await PgStore.open(pg_url)
        await store.close()

    newer = [e for e in logs if e["event"] == "schema_newer_than_code"]
    assert newer == [
        {
            "event": "schema_newer_than_code",
            "log_level": "warning",
            "database": SCHEMA_VERSION + 1,
            "code": SCHEMA_VERSION,
        }
    ]
    assert not [e for e in logs if e["event"] == "migration_applied"]


# -- the one history, translated ---------------------------------------------------------------


def test_the_portable_subset_is_translated_word_for_word() -> None:
    sqlite = (
        "CREATE TABLE leases (\n"
        "    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- an INTEGER id\n"
        "    owner TEXT NOT NULL DEFAULT 'REAL INTEGER',\n"
        "    epoch INTEGER NOT NULL DEFAULT 0,\n"
        "    share REAL\n"
        ");\n"
        "ALTER TABLE runs ADD COLUMN lease_until text;\n"
        "ALTER TABLE runs ADD COLUMN epoch integer NOT NULL DEFAULT 0;\n"
        "CREATE INDEX leases_owner ON leases (owner);\n"
    )
    assert translate(sqlite) == (
        "CREATE TABLE leases (\n"
        "    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,  \n"
        "    owner TEXT COLLATE \"C\" NOT NULL DEFAULT 'REAL INTEGER',\n"
        "    epoch BIGINT NOT NULL DEFAULT 0,\n"
        "    share DOUBLE PRECISION\n"
        ");\n"
        'ALTER TABLE runs ADD COLUMN lease_until TEXT COLLATE "C";\n'
        "ALTER TABLE runs ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;\n"
        "CREATE INDEX leases_owner ON leases (owner);\n"
    )


async def test_the_portable_subset_runs_on_postgresql(pg_url: str) -> None:
    """What later migrations may use (ALTER TABLE ADD COLUMN, CREATE TABLE with TEXT,
    INTEGER, REAL and an autoincrement id, CREATE [UNIQUE] INDEX, a plain UPDATE) runs,
    translated, on a migrated database, and an id is filled in. (Its names are probes, so
    that no real migration ever takes one.)"""
    store = await PgStore.open(pg_url)
    await store.close()
    sqlite = (
        "ALTER TABLE runs ADD COLUMN probe_owner TEXT;\n"
        "ALTER TABLE runs ADD COLUMN probe_epoch INTEGER NOT NULL DEFAULT 0;\n"
        "CREATE TABLE probe_replicas (\n"
        "    id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
        "    replica_id TEXT NOT NULL UNIQUE,\n"
        "    runs_owned INTEGER NOT NULL DEFAULT 0,\n"
        "    load REAL NOT NULL DEFAULT 0.5\n"
        ");\n"
        "CREATE INDEX probe_owner_index ON runs (probe_owner);\n"
        "CREATE UNIQUE INDEX probe_replicas_load ON probe_replicas (replica_id, load);\n"
        "CREATE TABLE probe_inbox (seq INTEGER PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs "
        "(run_id), body TEXT NOT NULL DEFAULT '{}');\n"
        "UPDATE runs SET probe_epoch = 1 WHERE probe_owner IS NULL;\n"
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(translate(sqlite).encode())
        conn.execute("INSERT INTO probe_replicas (replica_id, runs_owned) VALUES ('a', 9999999999)")
        row = conn.execute("SELECT id, runs_owned, load FROM probe_replicas").fetchone()
        [inbox_id] = conn.execute(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'probe_inbox' AND column_name = 'seq' AND is_identity = 'YES'"
        ).fetchall()
    assert row == (1, 9_999_999_999, 0.5)
    assert inbox_id == ("bigint",)  # filled when left out, as SQLite's INTEGER PRIMARY KEY is


def test_every_sqlite_only_block_has_its_postgresql_variant_and_no_variant_is_stray() -> None:
    fenced = {path.name for _, path in migration_files() if has_sqlite_only_block(path.read_text())}
    variants = {path.name for path in POSTGRESQL_VARIANTS.glob("*.sql")}
    assert fenced == variants == {"0001_initial.sql", "0005_zombies.sql"}
    for name in fenced:
        text = postgresql_text(MIGRATIONS / name)
        assert "RAISE(ABORT" not in text and "EXECUTE FUNCTION" in text


async def test_text_sorts_byte_by_byte_as_on_sqlite_in_a_database_of_another_locale(
    postgres_server: PostgresServer,
) -> None:
    """In an ICU en-US database "a" sorts before "B"; the run database's text columns sort
    as SQLite's do ("B" first), so both backends list runs in one order."""
    name = f"icu_{postgres_server.create_database()}"
    with psycopg.connect(postgres_server.url("postgres"), autocommit=True) as conn:
        conn.execute(
            f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu '
            "ICU_LOCALE 'en-US' LOCALE 'C'".encode()
        )
        [locale_order] = conn.execute(
            "SELECT array_agg(x ORDER BY x COLLATE \"en-US-x-icu\") FROM (VALUES ('a'), ('B')) v(x)"
        ).fetchall()
    assert locale_order == (["a", "B"],)
    store = await PgStore.open(postgres_server.url(name))
    try:
        for run_id in ("a", "B"):
            await store.create_run(new_run(make_spec(run_id=run_id), now=NOW))
        assert [r.run.spec.run_id for r in await store.runs()] == ["B", "a"]
    finally:
        await store.close()


async def test_every_text_column_of_the_schema_compares_byte_by_byte(pg_url: str) -> None:
    store = await PgStore.open(pg_url)
    await store.close()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, collation_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND data_type = 'text' "
            f"AND table_name <> '{SCHEMA_MIGRATIONS}'"
        ).fetchall()
    assert len(rows) > 50
    assert [row for row in rows if row[2] != "C"] == []


@pytest.mark.parametrize("table", ["transitions", "terminations"])
async def test_the_append_only_logs_refuse_updates_and_deletes(pg_url: str, table: str) -> None:
    store = await PgStore.open(pg_url)
    await store.create_run(new_run(make_spec(), now=NOW))  # its first transition
    await store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO terminations (at, instance_id, region, action, outcome, calls, "
            "seconds_since_marked) VALUES ('t', 'i-1', 'us-east-1', 'stop', 'accepted', 1, 0)"
        )
        for statement in (f"UPDATE {table} SET at = 'x'", f"DELETE FROM {table}"):
            with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="append-only"):
                conn.execute(statement)
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)


# -- connecting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["PGPASSWORD", "a pgpass file"])
async def test_the_password_may_come_from_libpqs_own_places(
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    source: str,
) -> None:
    database = postgres_server.create_database()
    url = postgres_server.url(database, password=None)
    if source == "PGPASSWORD":
        monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    else:
        pgpass = tmp_path / "pgpass"
        pgpass.write_text(
            f"127.0.0.1:{postgres_server.port}:*:postgres:{postgres_server.password}\n"
        )
        pgpass.chmod(0o600)
        monkeypatch.setenv("PGPASSFILE", str(pgpass))  # ~/.pgpass, without touching $HOME

    store = await PgStore.open(url)
    await store.close()
    assert redact(url) == url  # nothing to hide: the URL has no password


async def test_a_wrong_password_fails_in_one_line_naming_the_setting_without_the_password(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.url("postgres", password="not-the-password-xyz")
    with pytest.raises(DatabaseUnavailable) as raised:
        await PgStore.open(url)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"SUPERVISOR_DATABASE_URL ({redact(url)}) does not connect: ")
    assert "password authentication failed" in message
    assert "not-the-password-xyz" not in message


async def test_a_closed_port_fails_in_one_line(postgres_server: PostgresServer) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://postgres:secret-pw@127.0.0.1:{port}/postgres"
    with pytest.raises(DatabaseUnavailable, match="Connection refused") as raised:
        await PgStore.open(url)
    assert "\n" not in str(raised.value) and "secret-pw" not in str(raised.value)


async def test_connections_the_server_dropped_are_replaced_before_they_are_used(
    pg_url: str,
) -> None:
    """After the server ends every pooled connection (as a restart or a failover does), the
    next writes and reads work: the pool checks a connection before handing it out."""
    store = await PgStore.open(pg_url)
    try:
        await store.create_run(new_run(make_spec(run_id="before"), now=NOW))
        with psycopg.connect(pg_url, autocommit=True) as conn:
            ended = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert ended is not None and ended[0] >= 1

        await store.create_run(new_run(make_spec(run_id="after"), now=NOW))
        assert [r.run.spec.run_id for r in await store.runs()] == ["after", "before"]
    finally:
        await store.close()


async def _terminate_first(url: str, query: str) -> int:
    """Wait until a backend runs `query`, end it (as a server restart would); its pid."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            cursor = await conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE query = %s AND state = 'active'", (query,)
            )
            if row := await cursor.fetchone():
                await conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                return int(row[0])
            await asyncio.sleep(0.01)


async def test_a_write_whose_connection_is_lost_before_its_commit_is_run_again_once(
    pg_url: str,
) -> None:
    """The connection ends mid-transaction (after the INSERT, during the next statement):
    nothing of it was committed, the store runs it again on another connection, and the row
    is there exactly once."""
    store = await PgStore.open(pg_url)
    hold = "SELECT pg_sleep(0.5)"  # keeps the transaction open until the backend is ended
    try:
        write = asyncio.create_task(
            store._write(
                [
                    (
                        "INSERT INTO audit (at, source, kind, detail_json) VALUES (?, ?, ?, ?)",
                        (NOW.isoformat(), "test", "once", "{}"),
                    ),
                    (hold, ()),
                ]
            )
        )
        ended = await _terminate_first(pg_url, hold)
        await asyncio.wait_for(write, timeout=60)
        assert ended > 0
        assert [e["kind"] for e in await store.audit()] == ["once"]
    finally:
        await store.close()


async def test_a_read_whose_connection_is_lost_is_run_again(pg_url: str) -> None:
    store = await PgStore.open(pg_url)
    query = "SELECT 42, pg_sleep(0.5)"
    try:
        read = asyncio.create_task(store._read(query))
        await _terminate_first(pg_url, query)
        rows = await asyncio.wait_for(read, timeout=60)
        assert [row[0] for row in rows] == [42]
    finally:
        await store.close()


async def test_the_store_repr_shows_the_url_without_its_password(pg_url: str) -> None:
    store = await PgStore.open(pg_url)
    try:
        assert repr(store) == f"<PgStore {redact(pg_url)}>"
        assert ":***@" in repr(store)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p%40ss@db.example:5432/runs", "postgresql://u:***@db.example:5432/runs"),
        ("postgresql://u@h/runs?password=s3&sslmode=require",
         "postgresql://u@h/runs?password=***&sslmode=require"),
        ("postgres://h1:1,h2:2/runs", "postgres://h1:1,h2:2/runs"),
        ("host=h user=u password=s3 dbname=runs", "host=h user=u password=*** dbname=runs"),
    ],
)  # fmt: skip
def test_a_database_url_is_shown_with_its_password_redacted(url: str, shown: str) -> None:
    assert redact(url) == shown
