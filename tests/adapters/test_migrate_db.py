"""`migrate-db`'s copy: a run database made by this version through the real store (runs with
transitions, instances, attachments, run data, report problems, actions, audit, zombies and
terminations) copied into an empty PostgreSQL database migrated by the store's own runner:
every table of the record equal row for row, the query path reading the same from both, ids
going on after the copied ones; the daemon's own rows (its heartbeat, its duty lease, its
inbox) left behind and every run unowned with its epoch kept; and each refusal, which leaves
the target as it was."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from supervisor.adapters.migrate_db import LEFT_BEHIND, MigrationRefused, copy_database
from supervisor.adapters.pg_store import PgStore
from supervisor.adapters.query import RunDatabase
from supervisor.adapters.schema import SCHEMA_VERSION, TABLES
from supervisor.adapters.store import ActionRecord, AttachmentRecord, ReportProblemRecord, Store
from supervisor.core.events import Action
from supervisor.core.run import Phase
from supervisor.core.values import InstanceId
from supervisor.core.zombies import (
    AttemptOutcome,
    Cause,
    Termination,
    Zombie,
    ZombieKind,
    ZombieState,
)
from tests.adapters.run_database import NOW, SEEDS, seed
from tests.pg_server import PostgresServer

RECORD = {
    "runs", "transitions", "instances", "actions", "attachments", "run_data",
    "report_problems", "zombies", "terminations", "audit",
}  # fmt: skip
"""The tables the issue names (objectives are in runs.spec_json): `_fill` writes each."""
CARRIED = [t for t in TABLES if t.name not in LEFT_BEHIND]
LEASE = {"owner", "lease_until"}
"""A run's lease columns, cleared by the copy."""
SQLITE_DAEMON = "oldbox-4242"


async def _fill(path: Path) -> None:
    """What a daemon leaves besides the runs: actions, audit, zombies and their terminations,
    a note on an unreadable report. Floats with every digit, to see them kept."""
    store = await Store.open(path)
    try:
        await store.record_action(
            ActionRecord("mgda-1", "i-00000000000000000", "stop", NOW, 2, "accepted", None, None)
        )
        await store.record_action(
            ActionRecord("mgda-3", "i-00000000000000002", "terminate", NOW, 3, "failed", "E", "m")
        )
        for n in range(3):
            await store.record_audit(
                at=NOW + timedelta(seconds=n),
                source="sqs",
                kind="unowned",
                subject=f"i-{n:017x}",
                detail={"n": n, "text": "ünïcode ✓"},
            )
        ended = Cause(ZombieKind.RUN_ENDED, "mgda-3", Phase.CRASHED, NOW - timedelta(hours=1))
        confirmed = Zombie(
            InstanceId("i-0aaaaaaaaaaaaaaaa"),
            "us-east-1",
            ended,
            marked_at=NOW,
            state=ZombieState.CONFIRMED,
            action=Action.TERMINATE,
            attempts=1,
            last_attempt_at=NOW,
            resolved_at=NOW,
            note="terminated",
        )
        termination = Termination(
            NOW, confirmed.instance_id, "us-east-1", "mgda-3", Action.TERMINATE,
            AttemptOutcome.CONFIRMED, 1, 0.1 + 0.2,
        )  # fmt: skip
        await store.save_zombie(confirmed, termination)
        unowned = Zombie(
            InstanceId("i-0bbbbbbbbbbbbbbbb"),
            "eu-west-1",
            Cause(ZombieKind.UNOWNED, "gone-run", keep_data=True),
            marked_at=NOW,
        )
        await store.save_zombie(unowned)
        await store.record_report_problem(
            ReportProblemRecord("mgda-2", "history.json", "e1", "history.json is not JSON", NOW)
        )
    finally:
        await store.close()


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run database made by this version through the real store."""
    path = tmp_path_factory.mktemp("migrate") / "supervisor.db"
    asyncio.run(seed(path, SEEDS))
    asyncio.run(_fill(path))
    # Two instances a resume launched, at one time: the instance history's order decides.
    later = (NOW + timedelta(hours=1)).isoformat()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for instance in ("i-0ffffffffffffffff", "i-0cccccccccccccccc"):
            db.execute(
                "INSERT INTO instances (run_id, instance_id, region, attached_at, source) "
                "VALUES ('mgda-3', ?, 'us-east-1', ?, 'launched')",
                (instance, later),
            )
        # What a SQLite daemon killed while it ran leaves: every run leased to it until the
        # year 9999 (it never renews), its heartbeat, its leader duty, a command in its inbox.
        db.execute(
            "UPDATE runs SET owner = ?, epoch = 3, lease_until = '9999-01-01T00:00:00+00:00'",
            (SQLITE_DAEMON,),
        )
        db.execute(
            "INSERT INTO replicas VALUES (?, 'oldbox', 4242, ?, ?, 'running', 30.0)",
            (SQLITE_DAEMON, NOW.isoformat(), NOW.isoformat()),
        )
        db.execute(
            "INSERT INTO duty_leases VALUES ('leader', ?, 1, '9999-01-01T00:00:00+00:00')",
            (SQLITE_DAEMON,),
        )
        db.execute(
            "INSERT INTO inbox (id, run_id, kind, body_json, created_at, created_by, state) "
            "VALUES ('c0ffee', 'imtlg-2', 'command', '{}', ?, ?, 'pending')",
            (NOW.isoformat(), SQLITE_DAEMON),
        )
    return path


@pytest.fixture(scope="module")
def migrated(made: Path, postgres_server: PostgresServer) -> str:
    url = postgres_server.url(postgres_server.create_database("migrated"))
    copied = copy_database(made, url)
    assert copied.schema_version == SCHEMA_VERSION
    return url


def sqlite_rows(path: Path, table: str, names: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        rows = db.execute(f"SELECT {names} FROM {table}").fetchall()
    return sorted(rows, key=repr)


def postgres_rows(url: str, table: str, names: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as db:
        rows = db.execute(f"SELECT {names} FROM {table}").fetchall()
    return sorted(rows, key=repr)


def postgres_count(url: str, table: str) -> int:
    with psycopg.connect(url) as db:
        row = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


# -- the copy -----------------------------------------------------------------------------


def test_every_table_of_the_record_is_copied_row_for_row_with_its_ids(
    made: Path, migrated: str
) -> None:
    for table in CARRIED:
        names = ", ".join(c.name for c in table.columns if c.name not in LEASE)
        assert postgres_rows(migrated, table.name, names) == sqlite_rows(made, table.name, names)
    # Every table of the daemon's record had rows to copy: none passed by being empty.
    empty = {t.name for t in TABLES if not sqlite_rows(made, t.name, "1")}
    assert empty.isdisjoint(RECORD), empty


def test_every_run_goes_over_unowned_with_its_epoch_and_the_daemons_own_rows_stay(
    made: Path, migrated: str
) -> None:
    """A killed SQLite daemon's leases run to the year 9999: copied, nobody would claim."""
    assert set(sqlite_rows(made, "runs", "owner, epoch")) == {(SQLITE_DAEMON, 3)}
    assert set(postgres_rows(migrated, "runs", "owner, epoch, lease_until")) == {(None, 3, None)}
    assert set(LEFT_BEHIND) == {"replicas", "duty_leases", "inbox"}
    for table in LEFT_BEHIND:
        assert sqlite_rows(made, table, "1") != []
        assert postgres_count(migrated, table) == 0


def test_a_replica_on_the_copy_claims_its_active_runs_at_once(made: Path, pg_url: str) -> None:
    copy_database(made, pg_url)
    phases = sqlite_rows(made, "runs", "run_id, phase")
    active = {run_id for run_id, phase in phases if not Phase(phase).is_terminal}
    assert active and len(active) < len(phases)

    async def claim() -> list[tuple[str, int]]:
        store = await PgStore.open(pg_url)
        try:
            later = NOW + timedelta(days=1)
            claimed = await store.claim_runs("replica-a", limit=100, now=NOW, until=later)
            return [(c.record.run.spec.run_id, c.lease.epoch) for c in claimed]
        finally:
            await store.close()

    assert sorted(asyncio.run(claim())) == sorted((run_id, 4) for run_id in active)


def test_the_copy_reports_each_tables_rows_and_hides_the_password(
    made: Path, pg_url: str, postgres_server: PostgresServer
) -> None:
    copied = copy_database(made, pg_url)
    assert [t.table for t in copied.tables] == [t.name for t in CARRIED]
    assert copied.left_behind == LEFT_BEHIND
    for table in copied.tables:
        assert table.rows == len(sqlite_rows(made, table.table, "1"))
        assert table.rows > 0 or table.table not in RECORD
    assert copied.rows == sum(t.rows for t in copied.tables)
    assert copied.target == pg_url.replace(postgres_server.password, "***")
    assert postgres_server.password not in repr(copied)


def test_the_query_path_reads_the_same_from_both(made: Path, migrated: str) -> None:
    with RunDatabase(made) as on_sqlite, RunDatabase(migrated) as on_postgres:
        for db in (on_sqlite, on_postgres):
            assert len(db.runs()) == len(SEEDS)
        assert [r.json() for r in on_postgres.runs()] == [r.json() for r in on_sqlite.runs()]
        for run in on_sqlite.runs():
            assert on_postgres.run(run.run_id).json() == on_sqlite.run(run.run_id).json()
        assert on_postgres.run("mgda-2").report_problems == on_sqlite.run("mgda-2").report_problems
        assert [i.instance_id for i in on_postgres.run("mgda-3").instances] == [
            "i-00000000000000002",
            "i-0cccccccccccccccc",
            "i-0ffffffffffffffff",
        ]
        by_method = ("config.gradient_method", "val_loss")
        assert on_postgres.compare(*by_method) == on_sqlite.compare(*by_method)
        filters = ("metrics.val_loss<0.35", "config.amp=true", "tag.seed>=2")
        for where in filters:
            assert [r.run_id for r in on_postgres.runs(where)] == [
                r.run_id for r in on_sqlite.runs(where)
            ]


def test_new_rows_on_postgresql_take_ids_after_the_copied_ones(made: Path, pg_url: str) -> None:
    copy_database(made, pg_url)
    highest = {
        table: max(row[0] for row in postgres_rows(pg_url, table, "id"))
        for table in ("attachments", "actions", "audit")
    }

    async def write() -> None:
        store = await PgStore.open(pg_url)
        try:
            await store.attach(
                AttachmentRecord("mgda-1", "analysis", "https://example.com/a", NOW, None, None)
            )
            await store.record_action(
                ActionRecord("mgda-1", "i-00000000000000000", "stop", NOW, 1, "accepted")
            )
            await store.record_audit(at=NOW, source="sqs", kind="test", subject=None, detail={})
        finally:
            await store.close()

    asyncio.run(write())
    for table, before in highest.items():
        assert max(row[0] for row in postgres_rows(pg_url, table, "id")) == before + 1


# -- refusals ------------------------------------------------------------------------------


def test_a_target_with_run_data_is_refused_and_left_as_it_was(made: Path, migrated: str) -> None:
    before = {t.name: postgres_count(migrated, t.name) for t in TABLES}
    with pytest.raises(MigrationRefused) as refused:
        copy_database(made, migrated)
    assert "is not empty (rows in runs, transitions," in str(refused.value)
    assert "copies into an empty database only" in str(refused.value)
    assert {t.name: postgres_count(migrated, t.name) for t in TABLES} == before


def test_a_target_with_rows_in_any_table_is_refused(made: Path, pg_url: str) -> None:
    """Rows a replica leaves (its heartbeat), and rows of a table the schema does not
    declare: the database is in use, whatever it holds."""
    with psycopg.connect(pg_url) as db:
        db.execute("CREATE TABLE notes (body text)")
        db.execute("INSERT INTO notes VALUES ('somebody else''s')")
    with pytest.raises(MigrationRefused, match=r"is not empty \(rows in notes\)"):
        copy_database(made, pg_url)

    async def open_and_close() -> None:
        store = await PgStore.open(pg_url)
        await store.close()

    asyncio.run(open_and_close())
    with psycopg.connect(pg_url) as db:
        db.execute("DELETE FROM notes")
        db.execute(
            "INSERT INTO replicas VALUES ('replica-a', 'h', 1, '2026-01-01T00:00:00+00:00', "
            "'2026-01-01T00:00:00+00:00', 'stopped', 30.0)"
        )
    with pytest.raises(MigrationRefused, match=r"is not empty \(rows in replicas\)"):
        copy_database(made, pg_url)
    assert postgres_count(pg_url, "runs") == 0


def test_a_database_migrated_but_unused_is_empty_enough(made: Path, pg_url: str) -> None:
    async def open_and_close() -> None:  # what a replica started on it first leaves
        store = await PgStore.open(pg_url)
        await store.close()

    asyncio.run(open_and_close())
    assert copy_database(made, pg_url).rows > 0


def test_a_failed_copy_commits_nothing(made: Path, tmp_path: Path, pg_url: str) -> None:
    broken = tmp_path / "supervisor.db"
    broken.write_bytes(made.read_bytes())
    with sqlite3.connect(broken) as db:  # text PostgreSQL cannot hold, in the last table
        db.execute("UPDATE report_problems SET note = ?", ("nul \x00 here",))
    with pytest.raises(MigrationRefused, match="failed and was rolled back"):
        copy_database(broken, pg_url)
    assert [postgres_count(pg_url, t.name) for t in TABLES] == [0] * len(TABLES)
    assert copy_database(made, pg_url).rows > 0  # and the empty target takes the next try


def test_a_missing_old_or_foreign_source_is_refused(tmp_path: Path, pg_url: str) -> None:
    with pytest.raises(MigrationRefused, match=r"no run database at .*: nothing to migrate"):
        copy_database(tmp_path / "supervisor.db", pg_url)
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as raw:
        raw.execute("PRAGMA user_version = 5")
    with pytest.raises(MigrationRefused, match=r"schema version 5; .* start supervisord"):
        copy_database(old, pg_url)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite" * 100)
    with pytest.raises(MigrationRefused, match="is not a run database"):
        copy_database(junk, pg_url)
    assert postgres_count(pg_url, "pg_tables WHERE schemaname = 'public'") == 0


def test_a_bad_or_refused_url_is_one_line_without_the_password(
    made: Path, postgres_server: PostgresServer
) -> None:
    with pytest.raises(MigrationRefused, match=r"--to mysql://u:\*\*\*@h/db is not a PostgreSQL"):
        copy_database(made, "mysql://u:hunter2@h/db")
    wrong = postgres_server.url("postgres", password="hunter2")
    with pytest.raises(MigrationRefused) as refused:
        copy_database(made, wrong)
    message = str(refused.value)
    assert message.startswith("cannot connect to postgresql://postgres:***@127.0.0.1:")
    assert "hunter2" not in message
    assert "\n" not in message


def test_a_role_that_cannot_create_the_schema_is_refused_and_nothing_is_made(
    made: Path, pg_url: str, postgres_server: PostgresServer
) -> None:
    database = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as owner:
        owner.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'reader') "
            "THEN CREATE ROLE reader LOGIN PASSWORD 'reader-secret'; END IF; END $$"
        )
        owner.execute(f'GRANT CONNECT ON DATABASE "{database}" TO reader')
        owner.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    reader = f"postgresql://reader:reader-secret@127.0.0.1:{postgres_server.port}/{database}"
    with pytest.raises(MigrationRefused) as refused:
        copy_database(made, reader)
    message = str(refused.value)
    assert message.startswith("cannot migrate postgresql://reader:***@127.0.0.1:")
    assert "permission denied for schema public" in message
    assert "nothing was copied" in message
    assert "reader-secret" not in message and "\n" not in message
    assert postgres_count(pg_url, "pg_tables WHERE schemaname = 'public'") == 0
