"""The store on both backends (a real SQLite file, a real PostgreSQL database: the `store`
fixture of tests/adapters/conftest.py): one transaction per transition, an append-only log,
migrations, and commits that survive the process being killed; and what only SQLite's
adapter does (its durability settings, upgrades of files from earlier releases)."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
from datetime import UTC, timedelta, timezone
from pathlib import Path

import pytest

from supervisor.adapters.schema import (
    AUDIT,
    INSTANCES,
    MIGRATIONS,
    POSTGRESQL,
    REPORT_PROBLEMS,
    RUNS,
    SQLITE,
    TABLES,
    TRANSITIONS,
)
from supervisor.adapters.sql_store import SqlStore
from supervisor.adapters.store import SCHEMA_VERSION, ActionRecord, Store, migrate
from supervisor.core.errors import InvalidInput, StaleVersion
from supervisor.core.events import (
    Action,
    ActionSucceeded,
    Event,
    InstanceObserved,
    Tick,
    UserAction,
    UserRequested,
)
from supervisor.core.machine import Decision, Transition, new_run, step
from supervisor.core.run import Outcome, Phase, Run
from supervisor.core.values import InstanceId, InstanceState
from supervisor.runtime.ports import RunStore
from tests.adapters.backends import (
    integrity_error,
    location,
    migrated_tables,
    open_store,
    raw_count,
    raw_execute,
    schema_version,
)
from tests.core.builders import NOW, POLICY, listed, make_spec, seeded

REPO = Path(__file__).resolve().parents[2]


def move(run: Run, to: Phase, minutes: int, reason: str = "moved by test") -> Decision:
    """A hand-built decision: the next version of `run` in phase `to`, with its transition."""
    at = NOW + timedelta(minutes=minutes)
    moved = run.evolve(phase=to, version=run.version + 1, phase_since=at, reason=reason)
    return Decision(run=moved, transition=Transition(run.phase, to, at, reason, {"n": minutes}))


def file_count(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as db:
        row = db.execute(sql).fetchone()
    return int(row[0])


async def attach(store: SqlStore, run_id: str = "run-42") -> Run:
    decision = new_run(make_spec(run_id=run_id), now=NOW)
    await store.create_run(decision)
    return decision.run


# -- create_run -------------------------------------------------------------------------------


async def test_create_run_round_trips_the_run_and_its_attach_transition(store: SqlStore) -> None:
    created = await attach(store)

    record = await store.get_run("run-42")
    assert record is not None
    assert record.run == created
    assert record.run.spec == make_spec()
    assert (record.run.phase, record.run.version) == (Phase.PENDING, 1)
    assert record.created_at == NOW == record.updated_at
    [first] = await store.transitions("run-42")
    assert first.seq == 1
    assert first.transition == Transition(None, Phase.PENDING, NOW, "attached", {})


async def test_a_second_create_run_of_the_same_id_is_refused_and_changes_nothing(
    store: SqlStore,
) -> None:
    created = await attach(store)

    again = new_run(make_spec(instance_id="i-0fedcba9876543210"), now=NOW + timedelta(hours=1))
    with pytest.raises(
        InvalidInput, match=r"run id 'run-42' is taken: that run is still active \(pending\)"
    ):
        await store.create_run(again)

    record = await store.get_run("run-42")
    assert record is not None and record.run == created
    assert record.run.spec.instance_id == make_spec().instance_id
    assert [t.seq for t in await store.transitions("run-42")] == [1]
    assert raw_count(store, "SELECT count(*) FROM instances") == 1


async def test_get_run_of_an_unknown_id_is_none(store: SqlStore) -> None:
    assert await store.get_run("nobody") is None
    assert await store.transitions("nobody") == []


# -- commit -----------------------------------------------------------------------------------


async def test_commit_appends_the_transition_at_the_new_version_and_updates_the_row(
    store: SqlStore,
) -> None:
    run = await attach(store)
    decision = move(run, Phase.RUNNING, 5, "instance running")

    await store.commit(run, decision, now=NOW + timedelta(minutes=5))

    record = await store.get_run("run-42")
    assert record is not None
    assert record.run == decision.run
    assert record.updated_at == NOW + timedelta(minutes=5)
    records = await store.transitions("run-42")
    assert [r.seq for r in records] == [1, 2]
    assert records[-1].transition == decision.transition
    assert await store.transitions("run-42", after_seq=1) == records[1:]


async def test_commit_from_a_stale_version_raises_and_changes_nothing(store: SqlStore) -> None:
    run = await attach(store)
    current = move(run, Phase.RUNNING, 5)
    await store.commit(run, current, now=NOW)

    with pytest.raises(StaleVersion, match="no longer at version 1"):
        await store.commit(run, move(run, Phase.CRASHED, 6), now=NOW)

    record = await store.get_run("run-42")
    assert record is not None and record.run == current.run
    assert len(await store.transitions("run-42")) == 2


async def test_two_commits_racing_from_one_version_let_exactly_one_win(store: SqlStore) -> None:
    run = await attach(store)

    results = await asyncio.gather(
        store.commit(run, move(run, Phase.RUNNING, 1), now=NOW),
        store.commit(run, move(run, Phase.CRASHED, 1), now=NOW),
        return_exceptions=True,
    )

    assert sum(isinstance(r, StaleVersion) for r in results) == 1
    assert sum(r is None for r in results) == 1
    assert [t.seq for t in await store.transitions("run-42")] == [1, 2]


async def test_a_persist_only_decision_updates_the_row_without_a_transition(
    store: SqlStore,
) -> None:
    run = await attach(store)
    stopping = move(run, Phase.STOPPING, 1)
    await store.commit(run, stopping, now=NOW)
    acked = Decision(run=stopping.run.evolve(action_acked_at=NOW), persist=True)

    await store.commit(stopping.run, acked, now=NOW)

    record = await store.get_run("run-42")
    assert record is not None and record.run.action_acked_at == NOW
    assert record.run.version == 2
    assert len(await store.transitions("run-42")) == 2


async def test_a_decision_with_nothing_to_persist_writes_nothing(store: SqlStore) -> None:
    run = await attach(store)

    await store.commit(run, Decision(run=run.evolve(attempt=5)), now=NOW + timedelta(days=1))

    record = await store.get_run("run-42")
    assert record is not None and record.updated_at == NOW


async def test_a_run_driven_through_step_to_stopped_is_stored_at_every_step(
    store: SqlStore,
) -> None:
    run = await attach(store)
    timeline: list[tuple[int, Event]] = [
        (1, InstanceObserved(InstanceState.RUNNING)),
        (2, listed("COMPLETE")),  # grace of 600 s, until minute 12
        (13, Tick()),
        (14, ActionSucceeded(Action.STOP, InstanceState.STOPPING)),
        (15, InstanceObserved(InstanceState.STOPPED)),
    ]
    for minutes, event in timeline:
        now = NOW + timedelta(minutes=minutes)
        decision = step(run, event, now=now, policy=POLICY, rng=seeded())
        await store.commit(run, decision, now=now)
        run = decision.run

    record = await store.get_run("run-42")
    assert record is not None and record.run == run
    assert (run.phase, run.outcome) == (Phase.STOPPED, Outcome.COMPLETED)
    phases = [
        (r.transition.from_phase, r.transition.to_phase) for r in await store.transitions("run-42")
    ]
    assert phases == [
        (None, Phase.PENDING),
        (Phase.PENDING, Phase.RUNNING),
        (Phase.RUNNING, Phase.GRACE),
        (Phase.GRACE, Phase.STOPPING),
        (Phase.STOPPING, Phase.STOPPED),
    ]


async def test_concurrent_runs_leave_every_row_equal_to_its_last_gapless_transition(
    store: SqlStore,
) -> None:
    cycle = [Phase.RUNNING, Phase.GRACE, Phase.STOPPING, Phase.PENDING]

    async def drive(index: int) -> None:
        run = await attach(store, f"run-{index:02d}")
        for n in range(9):
            decision = move(run, cycle[(n + index) % len(cycle)], n, f"move {n}")
            await store.commit(run, decision, now=NOW)
            run = decision.run
            await asyncio.sleep(0)

    await asyncio.gather(*(drive(i) for i in range(20)))

    records = await store.runs()
    assert len(records) == 20
    for record in records:
        transitions = await store.transitions(record.run.spec.run_id)
        assert [t.seq for t in transitions] == list(range(1, 11))
        assert record.run.phase == transitions[-1].transition.to_phase
        assert record.run.version == transitions[-1].seq == 10
    assert raw_count(store, "SELECT count(*) FROM transitions") == 200


async def test_active_only_leaves_out_runs_in_terminal_phases(store: SqlStore) -> None:
    live = await attach(store, "live")
    gone = await attach(store, "gone")
    detach = step(gone, UserRequested(UserAction.DETACH), now=NOW, policy=POLICY, rng=seeded())
    await store.commit(gone, detach, now=NOW)

    assert [r.run.spec.run_id for r in await store.runs(active_only=True)] == [live.spec.run_id]
    assert len(await store.runs()) == 2


async def test_active_runs_come_in_pages_in_attach_order_without_the_ended_ones(
    store: SqlStore,
) -> None:
    """What a restart re-adopts: the same runs as `runs(active_only=True)`, a page at a time."""
    runs = [await attach(store, f"r{i}") for i in range(7)]
    detach = step(runs[3], UserRequested(UserAction.DETACH), now=NOW, policy=POLICY, rng=seeded())
    await store.commit(runs[3], detach, now=NOW)

    pages = [[r.run.spec.run_id for r in page] async for page in store.active_runs(page=2)]
    assert pages == [["r0", "r1"], ["r2", "r4"], ["r5", "r6"]]
    assert [r.run for r in await store.runs(active_only=True)] == [
        r.run async for page in store.active_runs(page=4) for r in page
    ]


# -- the log is append-only -------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE transitions SET to_phase = 'done' WHERE seq = 1",
        "DELETE FROM transitions WHERE seq = 1",
    ],
)
async def test_a_raw_update_or_delete_of_transitions_is_refused(store: SqlStore, sql: str) -> None:
    await attach(store)

    with pytest.raises(integrity_error(store), match="append-only"):
        raw_execute(store, sql)

    [first] = await store.transitions("run-42")
    assert first.transition.to_phase is Phase.PENDING


# -- durability settings and migrations -------------------------------------------------------


async def test_the_file_is_in_wal_mode_and_the_writer_syncs_fully(sqlite_store: Store) -> None:
    with sqlite3.connect(sqlite_store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    async with sqlite_store._writer.execute("PRAGMA synchronous") as cursor:
        row = await cursor.fetchone()
    assert row is not None and row[0] == 2  # FULL


async def test_a_fresh_file_is_migrated_to_the_latest_schema_version(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "nested" / "s.db")
    await store.close()

    assert file_count(tmp_path / "nested" / "s.db", "PRAGMA user_version") == SCHEMA_VERSION
    assert SCHEMA_VERSION >= 1


async def test_reopening_an_existing_database_keeps_every_row(store: SqlStore) -> None:
    run = await attach(store)
    await store.commit(run, move(run, Phase.RUNNING, 1), now=NOW)
    await store.close()

    reopened = await open_store(location(store))
    try:
        if isinstance(reopened, Store):
            assert await migrate(reopened._writer) == SCHEMA_VERSION
        record = await reopened.get_run("run-42")
        assert record is not None and record.run.phase is Phase.RUNNING
        assert [t.seq for t in await reopened.transitions("run-42")] == [1, 2]
    finally:
        await reopened.close()
    assert schema_version(store) == SCHEMA_VERSION


async def test_a_committed_transition_survives_the_process_being_killed(
    store: SqlStore,
) -> None:
    await store.close()  # the killed process opens it itself
    script = textwrap.dedent(
        """
        import asyncio, os, signal, sys
        from datetime import UTC, datetime
        from tests.adapters.backends import open_store
        from supervisor.core.events import InstanceObserved
        from supervisor.core.machine import Policy, new_run, step
        from supervisor.core.spec import RunSpec
        from supervisor.core.values import InstanceState
        import random

        async def main() -> None:
            now = datetime(2026, 11, 22, 12, tzinfo=UTC)
            spec = RunSpec.build(run_id="killed", instance_id="i-0123456789abcdef0",
                                 region="us-east-1", s3_prefix="s3://my-runs/x/", grace_s=0)
            store = await open_store(sys.argv[1])
            first = new_run(spec, now=now)
            await store.create_run(first)
            event = InstanceObserved(InstanceState.RUNNING)
            decision = step(first.run, event, now=now, policy=Policy(), rng=random.Random(1))
            await store.commit(first.run, decision, now=now)
            print("committed", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        location(store),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == -9, stderr.decode()
    assert stdout.decode().strip().splitlines()[-1] == "committed"

    reopened = await open_store(location(store))
    try:
        record = await reopened.get_run("killed")
        assert record is not None and record.run.phase is Phase.RUNNING
        transitions = await reopened.transitions("killed")
        assert [(t.seq, t.transition.to_phase) for t in transitions] == [
            (1, Phase.PENDING),
            (2, Phase.RUNNING),
        ]
    finally:
        await reopened.close()


# -- actions ----------------------------------------------------------------------------------


async def test_record_action_and_actions_round_trip_in_order(store: SqlStore) -> None:
    await attach(store)
    first = ActionRecord(
        run_id="run-42",
        instance_id="i-0123456789abcdef0",
        action="stop",
        at=NOW,
        attempts=3,
        outcome="gave-up",
        error_code="RequestLimitExceeded",
        message="throttled",
    )
    second = ActionRecord("run-42", "i-0123456789abcdef0", "stop", NOW, 1, "accepted")

    await store.record_action(first)
    await store.record_action(second)

    assert await store.actions("run-42") == [first, second]
    assert await store.actions("other") == []


async def test_the_store_repr_names_its_file(sqlite_store: Store, tmp_path: Path) -> None:
    assert repr(sqlite_store) == f"<Store {tmp_path / 's.db'}>"


async def test_a_write_cancelled_while_beginning_its_transaction_leaves_the_store_writable(
    store: SqlStore,
) -> None:
    task = asyncio.create_task(store.create_run(new_run(make_spec(run_id="cancelled"), now=NOW)))
    # The task now waits for BEGIN IMMEDIATE on aiosqlite's thread (on PostgreSQL: for its
    # pooled connection or its BEGIN).
    await asyncio.sleep(0)
    assert task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await attach(store, "after")

    record = await store.get_run("after")
    assert record is not None and record.run.version == 1


# -- migration 0004 and attachments -----------------------------------------------------------

_V3_RUNS = (
    # run_id, phase, outcome, checkpoint, attempt
    ("verified", "stopped", "completed", "verified", 2),
    ("unverified", "stopped", "completed", "unverified", 1),
    ("plain", "running", None, None, 1),
)
_OLD_RUN_COLUMNS = (
    "run_id, spec_json, phase, outcome, instance_id, region, reason, version, phase_since, "
    "grace_until, action_acked_at, error_code, created_at, updated_at, pending_action, "
    "checkpoint, attempt, started_at"
)


def _database_at_version_3(path: Path) -> None:
    """The file as the release before migration 0004 left it, with a row in every table."""
    db = sqlite3.connect(path)
    try:
        for sql_file in sorted((REPO / "supervisor" / "adapters" / "migrations").glob("*.sql")):
            if int(sql_file.name.split("_", 1)[0]) <= 3:
                db.executescript(sql_file.read_text(encoding="utf-8"))
        at = NOW.isoformat()
        for run_id, phase, outcome, checkpoint, attempt in _V3_RUNS:
            spec = make_spec(run_id=run_id).model_dump_json()
            db.execute(
                f"INSERT INTO runs ({_OLD_RUN_COLUMNS}) VALUES "
                "(?, ?, ?, ?, 'i-0123456789abcdef0', 'us-east-1', 'moved by test', 2, ?, NULL, "
                "NULL, NULL, ?, ?, NULL, ?, ?, ?)",
                (run_id, spec, phase, outcome, at, at, at, checkpoint, attempt, at),
            )
            for seq, (before, after) in enumerate(((None, "pending"), ("pending", phase)), 1):
                db.execute(
                    "INSERT INTO transitions (run_id, seq, from_phase, to_phase, at, reason) "
                    "VALUES (?, ?, ?, ?, ?, 'moved by test')",
                    (run_id, seq, before, after, at),
                )
            db.execute(
                "INSERT INTO instances (run_id, instance_id, region, attached_at) "
                "VALUES (?, 'i-0123456789abcdef0', 'us-east-1', ?)",
                (run_id, at),
            )
        db.execute(
            "INSERT INTO actions (run_id, instance_id, action, at, attempts, outcome) "
            "VALUES ('verified', 'i-0123456789abcdef0', 'stop', ?, 1, 'accepted')",
            (at,),
        )
        db.execute(
            "INSERT INTO audit (at, source, kind, subject) VALUES (?, 'sqs', 'unowned', 'i-0')",
            (at,),
        )
        db.execute("PRAGMA user_version = 3")
        db.commit()
    finally:
        db.close()


def _rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    db = sqlite3.connect(path)
    try:
        return {
            "runs": db.execute(f"SELECT {_OLD_RUN_COLUMNS} FROM runs ORDER BY run_id").fetchall(),
            **{
                table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                for table in ("transitions", "instances", "actions", "audit")
            },
        }
    finally:
        db.close()


async def test_migration_4_keeps_every_row_and_makes_a_verified_checkpoint_the_resumable_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v3.db"
    _database_at_version_3(path)
    before = _rows(path)

    store = await Store.open(path)
    try:
        records = {run_id: await store.get_run(run_id) for run_id, *_ in _V3_RUNS}
        attachments = await store.attachments("verified")
    finally:
        await store.close()

    assert file_count(path, "PRAGMA user_version") == SCHEMA_VERSION
    assert _rows(path) == before
    restored = {
        run_id: (r.run.verified_attempt, r.run.process_exited, r.run.interrupt_deadline)
        for run_id, r in records.items()
        if r is not None
    }
    assert restored == {
        "verified": (2, False, None),
        "unverified": (None, False, None),
        "plain": (None, False, None),
    }
    verified = records["verified"]
    assert verified is not None
    assert (verified.run.checkpoint, verified.run.attempt) == ("verified", 2)
    assert attachments == []


async def test_attachments_round_trip_in_order_and_attaching_again_refreshes_the_row(
    store: SqlStore,
) -> None:
    from supervisor.adapters.store import AttachmentRecord

    await attach(store)
    crash_log = AttachmentRecord(
        run_id="run-42",
        kind="crash-log",
        uri="s3://my-runs/exp1/run42/crash/error.log",
        added_at=NOW,
        size=70_000,
        excerpt="Traceback (most recent call last):\nValueError: nan loss\n",
    )
    notes = AttachmentRecord("run-42", "analysis", "https://example.com/run-42", NOW)

    await store.attach(crash_log)
    await store.attach(notes)
    assert await store.attachments("run-42") == [crash_log, notes]

    refreshed = AttachmentRecord(
        run_id="run-42",
        kind="crash-log",
        uri=crash_log.uri,
        added_at=NOW + timedelta(minutes=5),
        size=80_000,
        excerpt="RuntimeError: CUDA error\n",
    )
    await store.attach(refreshed)

    assert await store.attachments("run-42") == [refreshed, notes]
    assert raw_count(store, "SELECT COUNT(*) FROM attachments") == 2
    assert await store.attachments("other") == []


async def test_migration_6_keeps_every_row_and_starts_with_no_reports_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v5.db"
    _database_at_version_3(path)
    db = sqlite3.connect(path)
    try:  # the release before the run database: migrations 4 and 5 applied as they were
        for sql_file in sorted((REPO / "supervisor" / "adapters" / "migrations").glob("*.sql")):
            if int(sql_file.name.split("_", 1)[0]) in (4, 5):
                db.executescript(sql_file.read_text(encoding="utf-8"))
        db.execute("PRAGMA user_version = 5")
        db.commit()
    finally:
        db.close()
    before = _rows(path)

    store = await Store.open(path)
    try:
        records = [await store.get_run(run_id) for run_id, *_ in _V3_RUNS]
        data = [await store.run_data(run_id) for run_id, *_ in _V3_RUNS]
    finally:
        await store.close()

    assert file_count(path, "PRAGMA user_version") == SCHEMA_VERSION
    assert _rows(path) == before
    assert [r.run.report_etags for r in records if r is not None] == [()] * len(_V3_RUNS)
    # migration 8 (max_duration): no attempt has run time counted before it
    assert [r.run.running_s_before for r in records if r is not None] == [0.0] * len(_V3_RUNS)
    # migration 9 (job_ended_at): no run's end was recorded before it: no idle figure
    assert [r.run.job_ended_at for r in records if r is not None] == [None] * len(_V3_RUNS)
    assert data == [None] * len(_V3_RUNS)


async def test_a_note_on_an_unreadable_report_is_kept_per_file_until_a_version_reads(
    store: SqlStore,
) -> None:
    from supervisor.adapters.store import ReportProblemRecord
    from supervisor.core.reports import FinalMetrics, History

    await attach(store)
    await attach(store, "other")
    first = ReportProblemRecord("run-42", "history.json", "e1", "history.json is not JSON", NOW)
    later = ReportProblemRecord(
        "run-42", "history.json", "e2", "history.json: columns", NOW + timedelta(minutes=1)
    )
    final = ReportProblemRecord(
        "run-42", "final_metrics.json", "e1", "final_metrics.json has no metrics", NOW
    )
    for problem in (first, later, final):
        await store.record_report_problem(problem)
    assert await store.report_problems("run-42") == [final, later]  # the newest per file
    assert await store.report_problems("other") == []

    # A version of a file that reads ends its note; the other file's note stays.
    await store.record_report(
        "run-42", "final_metrics.json", FinalMetrics(runtime_s=12.5), read_at=NOW, now=NOW
    )
    assert await store.report_problems("run-42") == [later]
    await store.record_report("run-42", "history.json", History(), read_at=NOW, now=NOW)
    assert await store.report_problems("run-42") == []
    assert raw_count(store, "SELECT COUNT(*) FROM report_problems") == 0


# -- the declaration is the schema ---------------------------------------------------------------


async def test_each_declared_table_has_the_migrated_tables_columns_types_and_nullability(
    store: SqlStore,
) -> None:
    """On PostgreSQL as read from information_schema.columns: a declared INTEGER is a BIGINT
    there, a REAL a DOUBLE PRECISION (the migrations' translation)."""
    migrated = migrated_tables(store)
    assert sorted(migrated) == sorted(table.name for table in TABLES)
    for table in TABLES:
        declared = [(c.name, c.codec.sql_type, c.nullable) for c in table.columns]
        assert declared == migrated[table.name], table.name


def test_the_schema_version_is_the_newest_migrations_number() -> None:
    newest = max(path.name for path in MIGRATIONS.glob("*.sql"))
    assert int(newest.split("_", 1)[0]) == SCHEMA_VERSION


def test_statements_are_built_from_the_declaration_with_one_placeholder_per_value() -> None:
    assert INSTANCES.insert(on_conflict="ignore") == (
        "INSERT INTO instances (run_id, instance_id, region, attached_at, source) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
    )
    assert REPORT_PROBLEMS.insert(on_conflict="update").endswith(
        "ON CONFLICT (run_id, key) DO UPDATE SET etag = excluded.etag, note = excluded.note, "
        "noted_at = excluded.noted_at"
    )
    assert RUNS.update(("phase", "version"), where=("run_id", "version")) == (
        "UPDATE runs SET phase = ?, version = ? WHERE run_id = ? AND version = ?"
    )
    assert TRANSITIONS.project(alias="t").sql.startswith("t.run_id, t.seq, t.from_phase")


def test_a_numbered_dialect_renders_the_placeholders_in_order() -> None:
    text = RUNS.update(("phase", "version"), where=("run_id", "version"))
    assert SQLITE.render(text) == text
    assert POSTGRESQL.render(text) == (
        "UPDATE runs SET phase = $1, version = $2 WHERE run_id = $3 AND version = $4"
    )


def test_values_encode_and_decode_through_their_columns_codecs() -> None:
    at = NOW.astimezone(timezone(timedelta(hours=2)))
    values = {"at": at, "detail_json": {"n": 1}, "source": "sqs", "kind": "x", "subject": None}
    encoded = AUDIT.encode(values, AUDIT.stored)
    assert encoded == (NOW.astimezone(UTC).isoformat(), "sqs", "x", None, '{"n": 1}')
    assert AUDIT.project().decode(encoded) == values | {"at": NOW}


async def test_each_store_is_the_runtimes_store_port(store: SqlStore) -> None:
    port: RunStore = store  # mypy holds the adapters (SqlStore's methods) to the port's
    assert await port.get_run("nothing here") is None


# -- issue 13: crashed runs stopped by on_crash, and max_duration's running time ---------------


async def test_earlier_attempts_running_time_is_kept_with_the_run(store: SqlStore) -> None:
    run = await attach(store)
    decision = move(run, Phase.RUNNING, 5)
    decision = Decision(run=decision.run.evolve(running_s_before=5400.5),
                        transition=decision.transition)  # fmt: skip
    await store.commit(run, decision, now=NOW + timedelta(minutes=5))
    record = await store.get_run("run-42")
    assert record is not None and record.run.running_s_before == 5400.5


async def test_a_run_stopped_by_on_crash_is_one_whose_crash_report_a_restart_reads(
    store: SqlStore,
) -> None:
    stopped = await attach(store, "stopped-after-crash")
    moved = move(stopped, Phase.STOPPED, 5)
    crashed = Decision(run=moved.run.evolve(outcome=Outcome.CRASHED), transition=moved.transition)
    await store.commit(stopped, crashed, now=NOW + timedelta(minutes=5))
    completed = await attach(store, "stopped-after-completion")
    moved = move(completed, Phase.STOPPED, 5)
    done = Decision(run=moved.run.evolve(outcome=Outcome.COMPLETED), transition=moved.transition)
    await store.commit(completed, done, now=NOW + timedelta(minutes=5))

    missed = await store.crashed_without_crash_log(since=NOW)
    assert [r.run.spec.run_id for r in missed] == ["stopped-after-crash"]


# -- issue 14: the rest of the port, on both backends ---------------------------------------------


async def test_audit_entries_come_back_newest_first_up_to_the_limit(store: SqlStore) -> None:
    for minute in range(3):
        await store.record_audit(
            at=NOW + timedelta(minutes=minute),
            source="sqs",
            kind="unowned",
            subject=f"i-{minute}",
            detail={"minute": minute, "nested": {"ok": True}},
        )

    entries = await store.audit(limit=2)

    assert [e["subject"] for e in entries] == ["i-2", "i-1"]
    assert entries[0] == {
        "at": (NOW + timedelta(minutes=2)).isoformat(),
        "source": "sqs",
        "kind": "unowned",
        "subject": "i-2",
        "detail": {"minute": 2, "nested": {"ok": True}},
    }


async def test_instances_are_the_attached_one_then_each_launched_one_in_order(
    store: SqlStore,
) -> None:
    run = await attach(store)
    for minutes, instance in ((30, "i-0000000000000000b"), (60, "i-0000000000000000a")):
        moved = move(run, Phase.PENDING, minutes, "resumed")
        resumed = Decision(
            run=moved.run.evolve(instance_id=InstanceId(instance)), transition=moved.transition
        )
        await store.commit(run, resumed, now=NOW + timedelta(minutes=minutes))
        run = resumed.run

    history = [(i.instance_id, i.source) for i in await store.instances("run-42")]

    assert history == [
        (make_spec().instance_id, "attached"),
        ("i-0000000000000000b", "launched"),
        ("i-0000000000000000a", "launched"),
    ]


async def test_runs_are_counted_by_phase_and_outcome_and_their_regions_listed(
    store: SqlStore,
) -> None:
    await attach(store, "a")
    await attach(store, "b")
    c = await attach(store, "c")
    moved = move(c, Phase.STOPPED, 5)
    completed = Decision(
        run=moved.run.evolve(outcome=Outcome.COMPLETED), transition=moved.transition
    )
    await store.commit(c, completed, now=NOW)

    assert await store.runs_by_phase_and_outcome() == {
        ("pending", None): 2,
        ("stopped", "completed"): 1,
    }
    assert await store.run_regions() == {make_spec().region}


async def test_what_the_job_reported_is_kept_per_file_and_read_back(store: SqlStore) -> None:
    from supervisor.core.reports import FinalMetrics, History, StatusReport

    await attach(store)
    status = StatusReport(step=120, metrics={"loss": 0.5}, wandb_run_id="w1", wandb_url="u")
    await store.record_report("run-42", "status.json", status, read_at=NOW, now=NOW)
    await store.record_report(
        "run-42", "final_metrics.json", FinalMetrics(metrics={"loss": 0.4}), read_at=NOW, now=NOW
    )
    history = History(records=[{"step": 100, "loss": 0.6}, {"step": 150, "loss": 0.4}])
    await store.record_report("run-42", "history.json", history, read_at=NOW, now=NOW)

    data = await store.run_data("run-42")

    assert data is not None
    assert (data.step, data.wandb_run_id, data.wandb_url) == (120, "w1", "u")
    assert data.status is not None and data.status["metrics"] == {"loss": 0.5}
    assert data.status_at == NOW
    assert data.history == history.records
    assert data.total_steps == 150  # the history's last step: the final metrics gave none
    assert data.final_metrics == {"loss": 0.4}
    assert await store.run_data("other") is None
