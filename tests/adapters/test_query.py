"""The read-only query adapter over a real run database file, built by the real `Store`:
filters compiled to SQL, one run in full, comparisons with known values, flat records, and
reading while the daemon's store has the file open."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from supervisor.adapters.database_url import redact
from supervisor.adapters.migrate_db import copy_database
from supervisor.adapters.pg_store import PgStore
from supervisor.adapters.query import (
    _COLUMN_SQL,
    _PG_VERSION_TABLE,
    _SPEC_COLUMNS,
    CRASH_LOG_LINES,
    DatabaseUnavailable,
    RunDatabase,
    RunRow,
)
from supervisor.adapters.schema import SCHEMA_VERSION
from supervisor.adapters.store import Store
from supervisor.core.compare import Group
from supervisor.core.errors import InvalidInput, UnknownRun
from supervisor.core.filters import COLUMNS
from supervisor.core.spec import Direction
from tests.adapters.run_database import HISTORY, NOW, SEEDS, WANDB, method, seed, seed_runs
from tests.pg_server import PostgresServer


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("query") / "supervisor.db"
    asyncio.run(seed(path, SEEDS))
    return path


@pytest.fixture(scope="module")
def pg_seeded(db_path: Path, postgres_server: PostgresServer) -> str:
    """The same runs on PostgreSQL: the seeded file copied as `migrate-db` copies it."""
    url = postgres_server.url(postgres_server.create_database("query"))
    copy_database(db_path, url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, db_path: Path) -> Iterator[RunDatabase]:
    """The seeded run database, read from each backend."""
    where = db_path if request.param == "sqlite" else request.getfixturevalue("pg_seeded")
    with RunDatabase(where) as opened:
        yield opened


def ids(runs: list[RunRow]) -> set[str]:
    return {r.run_id for r in runs}


# -- filters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (["metrics.val_loss<0.3"], {"mgda-2", "pcgrad-2"}),
        (["metrics.val_loss<=0.3"], {"mgda-1", "mgda-2", "pcgrad-2"}),
        (["metrics.acc>=0.88"], {"pcgrad-1", "imtlg-1"}),
        (["metrics.eval/top-1>0.5"], {"mgda-2"}),
        (["config.gradient_method=mgda"], {"mgda-1", "mgda-2", "mgda-3"}),
        # a run without the field never matches, whatever the operator
        (["config.gradient_method!=mgda"], {"pcgrad-1", "pcgrad-2", "imtlg-1", "imtlg-2"}),
        (["config.optimizer.lr=0.0003", "config.gradient_method=imtlg"], {"imtlg-1", "imtlg-2"}),
        (["config.optimizer.lr>1e-3"], set()),
        (["config.amp=true", "metrics.val_loss>0.45"], {"baseline-1"}),
        (["tag.seed=1"], {"mgda-1"}),  # numeric against the text "1"
        (["tag.seed>=2"], {"mgda-3", "pcgrad-2"}),  # 10 >= 2 as numbers, not as text
        (['tag.seed="10"'], {"mgda-3"}),
        (["tag.team=vision"], {"mgda-1"}),
        (["outcome=crashed"], {"mgda-3"}),
        (["phase=running", "step<100"], {"imtlg-2"}),
        (["step>=1000", "total_steps=1000"], {"mgda-1"}),
        (["spot=true", "instance_type=p4d.24xlarge", "name=deco hop bs96 mgda"], {"mgda-1"}),
        (["wandb_run_id=w8x2k", "wandb_project=deco"], {"mgda-1"}),
        (["run_id>=pcgrad"], {"pcgrad-1", "pcgrad-2"}),
        (["config.gradient_method=mgda'; DROP TABLE runs; --"], set()),  # bound, never SQL
    ],
)
def test_where_filters_select_the_matching_runs(
    db: RunDatabase, where: list[str], expected: set[str]
) -> None:
    assert ids(db.runs(*where)) == expected


def test_phase_outcome_and_since_select_too(db: RunDatabase) -> None:
    assert ids(db.runs(phase="crashed")) == {"mgda-3"}
    assert ids(db.runs(outcome=["crashed", "none"])) == {"mgda-3", "imtlg-2"}
    assert ids(db.runs(since="2d", now=NOW)) == ids(db.runs()) - {"pcgrad-1", "imtlg-1"}
    assert ids(db.runs(since=timedelta(days=5), now=NOW)) == ids(db.runs()) - {"imtlg-1"}


def test_runs_come_oldest_first(db: RunDatabase) -> None:
    assert [r.run_id for r in db.runs()][:2] == ["imtlg-1", "pcgrad-1"]


def test_a_bad_filter_is_refused_naming_it(db: RunDatabase) -> None:
    with pytest.raises(InvalidInput) as caught:
        db.runs("metrics.val_loss=<0.3")
    assert "filter 'metrics.val_loss=<0.3'" in str(caught.value)
    with pytest.raises(InvalidInput, match="unknown field 'gradient_method'"):
        db.runs("gradient_method=mgda")


def test_every_column_a_filter_may_name_has_a_place_in_sql_and_on_the_row() -> None:
    assert set(COLUMNS) == {*_COLUMN_SQL, *_SPEC_COLUMNS, "wandb_project"}
    assert set(COLUMNS) <= {field.name for field in dataclasses.fields(RunRow)}


# -- rows ---------------------------------------------------------------------------------


def test_a_run_row_carries_spec_config_objectives_metrics_and_wandb(db: RunDatabase) -> None:
    (run,) = db.runs("run_id=mgda-1")
    assert (run.name, run.instance_type, run.spot) == ("deco hop bs96 mgda", "p4d.24xlarge", True)
    assert (run.phase, run.outcome, run.step, run.total_steps) == ("grace", "completed", 1000, 1000)
    assert run.config == {
        "gradient_method": "mgda",
        "optimizer": {"lr": 3e-4, "betas": [0.9, 0.99]},
        "amp": True,
    }
    assert [(o.name, o.direction, o.final) for o in run.objectives] == [
        ("val_loss", Direction.MIN, 0.30),
        ("acc", Direction.MAX, 0.80),
    ]
    assert (run.wandb_url, run.wandb_run_id, run.wandb_project) == (
        WANDB["url"],
        WANDB["run_id"],
        "deco",
    )
    assert run.get("config.optimizer.lr") == 3e-4
    assert run.get("metrics.missing") is None


def test_records_are_flat_dicts_for_a_dataframe(db: RunDatabase) -> None:
    records = db.records("run_id=mgda-1")
    assert len(records) == 1
    record = records[0]
    assert list(record)[: len(COLUMNS)] == list(COLUMNS)
    assert {k: v for k, v in record.items() if "." in k} == {
        "config.gradient_method": "mgda",
        "config.optimizer.lr": 3e-4,
        "config.optimizer.betas": [0.9, 0.99],
        "config.amp": True,
        "tag.seed": "1",
        "tag.team": "vision",
        "metrics.acc": 0.80,
        "metrics.grad_norm": 2.0,
        "metrics.val_loss": 0.30,
    }
    assert record["created_at"] == NOW - timedelta(hours=1)


def test_one_run_in_full_with_history_transitions_and_the_crash_log_tail(
    db: RunDatabase,
) -> None:
    full = db.run("mgda-1")
    assert full.history == HISTORY
    assert full.status == {"state": "running", "step": 1000}
    assert full.wandb == WANDB
    assert full.spec["s3_prefix"] == "s3://my-runs/runs/mgda-1/"
    assert [(t.from_, t.to) for t in full.transitions] == [
        (None, "pending"),
        ("pending", "running"),
        ("running", "grace"),
    ]
    assert [(i.instance_id, i.source) for i in full.instances] == [(full.instance_id, "attached")]
    assert full.crash_log is None
    dumped = full.json()
    assert dumped["transitions"][0]["from"] is None

    crashed = db.run("mgda-3")
    assert crashed.crash_log is not None
    assert crashed.crash_log.uri == "s3://my-runs/runs/mgda-3/crash/error.log"
    assert crashed.crash_log.lines == tuple(f"trace line {i}" for i in range(11, 31))
    assert len(crashed.crash_log.lines) == CRASH_LOG_LINES
    assert [a.kind for a in crashed.attachments] == ["crash-log"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_one_run_in_full_has_its_notes_on_unreadable_reports_and_its_runtime(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    from supervisor.adapters.store import ReportProblemRecord
    from supervisor.core.reports import FinalMetrics

    path = tmp_path / "supervisor.db"
    asyncio.run(seed(path, [method("noted", "mgda")]))
    note = "history.json is not JSON: ... (the shapes it may take are in the README, ...)"

    async def report() -> None:
        store = await Store.open(path)
        try:
            final = FinalMetrics(metrics={"val_loss": 0.2}, runtime_s=3600.5)
            await store.record_report("noted", "final_metrics.json", final, read_at=NOW, now=NOW)
            problem = ReportProblemRecord("noted", "history.json", "e1", note, NOW)
            await store.record_report_problem(problem)
        finally:
            await store.close()

    asyncio.run(report())
    where: Path | str = path
    if backend == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        copy_database(path, url)
        where = url
    with RunDatabase(where) as db:
        full = db.run("noted")
    assert [(p.key, p.note, p.noted_at) for p in full.report_problems] == [
        ("history.json", note, NOW)
    ]
    assert (full.runtime_s, full.metrics) == (3600.5, {"val_loss": 0.2})


def test_an_unknown_run_is_refused_naming_it(db: RunDatabase) -> None:
    with pytest.raises(UnknownRun, match="no run 'nope' in the run database"):
        db.run("nope")


# -- compare ------------------------------------------------------------------------------


def table(groups: tuple[Group, ...]) -> list[tuple[object, ...]]:
    return [
        (
            g.value,
            g.runs,
            g.completed,
            g.crashed,
            g.measured,
            None if g.mean is None else round(g.mean, 6),
            g.min,
            g.max,
            g.best_run,
        )
        for g in groups
    ]


def test_compare_by_method_gives_the_known_table_lower_loss_best(db: RunDatabase) -> None:
    found = db.compare("config.gradient_method", "val_loss")
    assert (found.direction, found.direction_source) == (Direction.MIN, "objective")
    assert table(found.groups) == [
        ("mgda", 3, 2, 1, 2, 0.275, 0.25, 0.30, "mgda-2"),
        ("pcgrad", 2, 2, 0, 2, 0.3, 0.20, 0.40, "pcgrad-2"),
        ("imtlg", 2, 1, 0, 1, 0.35, 0.35, 0.35, "imtlg-1"),
        (None, 1, 1, 0, 1, 0.5, 0.5, 0.5, "baseline-1"),
    ]


def test_compare_respects_a_max_objective(db: RunDatabase) -> None:
    found = db.compare("config.gradient_method", "metrics.acc")
    assert (found.direction, found.direction_source) == (Direction.MAX, "objective")
    assert table(found.groups) == [
        ("imtlg", 2, 1, 0, 1, 0.88, 0.88, 0.88, "imtlg-1"),
        ("mgda", 3, 2, 1, 2, 0.825, 0.80, 0.85, "mgda-2"),
        ("pcgrad", 2, 2, 0, 2, 0.8, 0.70, 0.90, "pcgrad-1"),
        (None, 1, 1, 0, 0, None, None, None, None),
    ]


def test_compare_without_an_objective_assumes_min_and_says_so(db: RunDatabase) -> None:
    found = db.compare("config.gradient_method", "grad_norm", "config.gradient_method=mgda")
    assert found.direction_source == "default"
    assert "no run declares grad_norm as an objective" in found.direction_note
    assert table(found.groups) == [("mgda", 3, 2, 1, 1, 2.0, 2.0, 2.0, "mgda-1")]
    given = db.compare("config.gradient_method", "val_loss", direction="max")
    assert given.direction_source == "given"
    # The runs without a gradient_method, "(none)", come last though their mean is the best.
    assert [g.best_run for g in given.groups] == [
        "imtlg-1",
        "pcgrad-1",
        "mgda-1",
        "baseline-1",
    ]


def test_compare_groups_by_any_field_and_takes_filters(db: RunDatabase) -> None:
    found = db.compare("outcome", "val_loss", "config.amp=true", since="2d", now=NOW)
    assert [(g.value, g.runs) for g in found.groups] == [
        ("completed", 4),
        ("crashed", 1),
        (None, 1),
    ]


# -- the file -----------------------------------------------------------------------------


def test_it_reads_while_the_daemons_store_has_the_file_open_and_sees_new_commits(
    tmp_path: Path,
) -> None:
    path = tmp_path / "supervisor.db"
    asyncio.run(seed(path, [method("first", "mgda")]))

    async def while_open() -> set[str]:
        store = await Store.open(path)  # the daemon's writer keeps the file open, in WAL mode
        try:
            with RunDatabase(path) as reader:
                before = ids(reader.runs())
                await seed(path, [method("second", "pcgrad")])  # committed meanwhile
                return before | {f"after:{r}" for r in ids(reader.runs())}
        finally:
            await store.close()

    assert asyncio.run(while_open()) == {"first", "after:first", "after:second"}


def test_on_postgresql_it_sees_what_a_replicas_store_commits_meanwhile(
    tmp_path: Path, pg_url: str
) -> None:
    path = tmp_path / "supervisor.db"
    asyncio.run(seed(path, [method("first", "mgda")]))
    copy_database(path, pg_url)

    async def while_open() -> set[str]:
        store = await PgStore.open(pg_url)  # a replica's store, with its pool open
        try:
            with RunDatabase(pg_url) as reader:
                before = ids(reader.runs())
                await seed_runs(store, [method("second", "pcgrad")])  # committed meanwhile
                return before | {f"after:{r}" for r in ids(reader.runs())}
        finally:
            await store.close()

    assert asyncio.run(while_open()) == {"first", "after:first", "after:second"}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_read_that_fails_is_one_line_naming_the_database(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    path = tmp_path / "supervisor.db"
    asyncio.run(seed(path, [method("first", "mgda")]))
    where: Path | str = path
    if backend == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        copy_database(path, url)
        where = url
    with RunDatabase(where) as db:
        # Someone else's hand on the database while it is open: a table is gone.
        if backend == "postgresql":
            with psycopg.connect(str(where), autocommit=True) as server:
                server.execute("DROP TABLE report_problems")
        else:
            with contextlib.closing(sqlite3.connect(path)) as file, file:
                file.execute("DROP TABLE report_problems")
        with pytest.raises(DatabaseUnavailable) as caught:
            db.run("first")
    message = str(caught.value)
    assert message.startswith(f"cannot read the run database {db.where}: ")
    assert "report_problems" in message
    assert "\n" not in message
    if backend == "postgresql":
        assert "***@" in message


def test_it_never_writes(db_path: Path) -> None:
    with RunDatabase(db_path) as db, pytest.raises(sqlite3.OperationalError, match="readonly"):
        db._db.execute("DELETE FROM runs")


def test_it_never_writes_on_postgresql_either(pg_seeded: str) -> None:
    with RunDatabase(pg_seeded) as db:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            db._db.execute("DELETE FROM runs")
        assert len(db.runs()) == len(SEEDS)


def test_a_missing_or_old_database_is_explained(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailable) as caught:
        RunDatabase(tmp_path / "supervisor.db")
    assert str(caught.value).startswith(f"no run database at {tmp_path / 'supervisor.db'} yet")

    old = tmp_path / "old.db"
    with sqlite3.connect(old) as raw:
        raw.execute("PRAGMA user_version = 5")
    raw.close()
    with pytest.raises(
        DatabaseUnavailable, match=f"schema version 5; queries need {SCHEMA_VERSION}"
    ):
        RunDatabase(old)

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(DatabaseUnavailable, match="is not a run database"):
        RunDatabase(junk)


def test_an_empty_unreachable_or_refused_postgresql_database_is_explained_without_its_password(
    pg_url: str, postgres_server: PostgresServer
) -> None:
    with pytest.raises(
        DatabaseUnavailable, match=f"schema version 0; queries need {SCHEMA_VERSION}"
    ) as caught:
        RunDatabase(pg_url)
    assert postgres_server.password not in str(caught.value)
    assert "postgres:***@127.0.0.1" in str(caught.value)

    wrong = postgres_server.url("postgres", password="not-the-password")
    with pytest.raises(DatabaseUnavailable) as refused:
        RunDatabase(wrong)
    assert str(refused.value).startswith(
        f"cannot connect to the run database postgresql://postgres:***@127.0.0.1:"
        f"{postgres_server.port}/postgres: "
    )
    assert "not-the-password" not in str(refused.value)

    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        closed = f"postgresql://someone:secret@127.0.0.1:{unused.getsockname()[1]}/runs"
    with pytest.raises(DatabaseUnavailable) as unreachable:
        RunDatabase(closed)
    assert "secret" not in str(unreachable.value)
    assert "someone:***@127.0.0.1" in str(unreachable.value)


def test_the_public_api_opens_the_daemons_database_from_its_settings(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from supervisor.query import open_database

    monkeypatch.setenv("SUPERVISOR_STATE_DIR", str(db_path.parent))
    with open_database() as db:
        assert db.path == db_path
        assert len(db.runs()) == len(SEEDS)


def test_the_public_api_opens_the_replicas_database_when_the_daemon_has_one(
    db_path: Path, pg_seeded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from supervisor.query import open_database

    monkeypatch.setenv("SUPERVISOR_STATE_DIR", str(db_path.parent))
    monkeypatch.setenv("SUPERVISOR_DATABASE_URL", pg_seeded)
    with open_database() as db:
        assert (db.path, db.url) == (None, redact(pg_seeded))
        assert "***@" in repr(db)
        assert len(db.runs()) == len(SEEDS)


_QUERY_PROBE = """
import json, sys
from supervisor.adapters.query import RunDatabase
from supervisor.cli import queries
with RunDatabase(sys.argv[1]) as db:
    rows = [run.json() for run in db.runs("metrics.val_loss<0.3")]
    detail = db.run("mgda-3").json()
print(json.dumps(sorted(sys.modules)))
"""
_NOT_FOR_QUERIES = (
    "pydantic",
    "pydantic_core",
    "aiohttp",
    "aiosqlite",
    "structlog",
    "boto3",
    "supervisor.adapters.store",
    "supervisor.adapters.statements",
    "supervisor.core.machine",
    "supervisor.core.spec",
)


def test_the_query_path_loads_sqlite3_and_none_of_pydantic_aiohttp_aiosqlite_or_the_daemon(
    db_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _QUERY_PROBE, str(db_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    modules = set(json.loads(done.stdout))
    assert "sqlite3" in modules
    assert "psycopg" not in modules  # the driver only for a URL
    loaded = sorted(
        m for m in modules if any(m == bad or m.startswith(f"{bad}.") for bad in _NOT_FOR_QUERIES)
    )
    assert loaded == []
    # Of the daemon's package only the standard-library module naming its files is loaded.
    daemon = {m for m in modules if m.startswith("supervisor.runtime.")}
    assert daemon <= {"supervisor.runtime.config_file"}


def test_on_postgresql_it_loads_psycopg_and_not_the_stores_pool_or_logging(pg_seeded: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _QUERY_PROBE, pg_seeded],
        capture_output=True,
        text=True,
        check=True,
    )
    modules = set(json.loads(done.stdout))
    assert "psycopg" in modules
    not_here = (*_NOT_FOR_QUERIES, "psycopg_pool", "supervisor.adapters.pg_store")
    loaded = sorted(
        m for m in modules if any(m == bad or m.startswith(f"{bad}.") for bad in not_here)
    )
    assert loaded == []


def test_it_reads_the_version_where_the_postgresql_store_records_it() -> None:
    from supervisor.adapters.pg_store import SCHEMA_MIGRATIONS

    assert _PG_VERSION_TABLE == SCHEMA_MIGRATIONS
