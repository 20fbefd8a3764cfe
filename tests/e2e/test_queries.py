"""The real `supervisorctl runs`, `show`, `compare` and `export` against a run database file,
with no daemon running: they read the file read-only and work while supervisord is down; and
the same against the replicas' PostgreSQL database (SUPERVISOR_DATABASE_URL)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from supervisor.adapters.database_url import redact
from supervisor.adapters.migrate_db import copy_database
from supervisor.cli.common import DATABASE_URL_ENV
from tests.adapters.run_database import SEEDS, WANDB, Seed, method, seed
from tests.e2e.conftest import Cli, cli_for
from tests.pg_server import PostgresServer

pytestmark = pytest.mark.e2e

METRICS = {f"m_{i:03d}": i / 1000 for i in range(300)}
REPORTED = method(
    "deco-300",
    "imtlg",
    metrics={**METRICS, "val_loss": 0.31, "acc": 0.5},
    step=4000,
    total_steps=4000,
    history=[{"step": s, "val_loss": 1 / s} for s in range(100, 4001, 100)],
    wandb=WANDB,
    age=timedelta(days=400),  # outside --since 7d
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def offline(request: pytest.FixtureRequest) -> Iterator[Cli]:
    """A state directory with a run database and no daemon (nor any AWS) behind it: the
    SQLite file, or (with SUPERVISOR_DATABASE_URL) the same runs copied into PostgreSQL by
    migrate-db's copy, the file then moved away so that every answer comes from there."""
    with cli_for({}) as helper:
        runs: list[Seed] = [*SEEDS, REPORTED]
        asyncio.run(seed(helper.db_path, runs, now=datetime.now(UTC)))
        assert helper.daemon_pid() is None and not helper.socket_path.exists()
        if request.param == "postgresql":
            server: PostgresServer = request.getfixturevalue("postgres_server")
            url = server.url(server.create_database("queries"))
            copy_database(helper.db_path, url)
            helper.db_path.rename(helper.db_path.with_suffix(".copied"))
            helper.env[DATABASE_URL_ENV] = url
        yield helper


def database_named(helper: Cli) -> str:
    """The run database as the CLI's messages name it."""
    url = helper.env.get(DATABASE_URL_ENV)
    return redact(url) if url else str(helper.db_path)


def test_queries_answer_from_the_file_while_the_daemon_is_down(offline: Cli) -> None:
    found, table, crashed, full, compared, acc, exported, lines = offline.ctl_all(
        ("runs", "--where", "metrics.m_250>0.2495", "--where", "metrics.m_250<0.2505", "--json"),
        ("runs", "--where", "config.gradient_method=mgda", "--where", "metrics.val_loss<0.3"),
        ("show", "mgda-3"),
        ("show", "deco-300", "--json"),
        ("compare", "--by", "config.gradient_method", "--metric", "val_loss", "--since", "7d"),
        ("compare", "--by", "config.gradient_method", "--metric", "acc", "--json"),
        ("export", "--format", "csv", "--where", "config.gradient_method=pcgrad"),
        ("export", "--where", "tag.seed>=1"),
    )
    for done in (found, table, crashed, full, compared, acc, exported, lines):
        assert done.returncode == 0, done
        assert done.stderr == "", done

    assert [r["run_id"] for r in json.loads(found.stdout)] == ["deco-300"]

    assert table.stdout.splitlines()[1].split()[:3] == ["mgda-2", "grace", "completed"]
    assert "metrics.val_loss" in table.stdout.splitlines()[0]
    assert table.stdout.splitlines()[-1] == "1 run(s)"

    sections = [line for line in crashed.stdout.splitlines() if not line.startswith(" ")]
    assert sections[1:] == [
        "spec",
        "config",
        "objectives",
        "final metrics",
        "W&B",
        "attachments",
        "instances",
        "transitions",
        "crash log (s3://my-runs/runs/mgda-3/crash/error.log, last 20 lines)",
    ]
    assert crashed.stdout.splitlines()[-20:] == [f"  | trace line {i}" for i in range(11, 31)]

    detail = json.loads(full.stdout)
    assert detail["metrics"] == {**METRICS, "val_loss": 0.31, "acc": 0.5}
    assert len(detail["history"]) == 40
    assert detail["wandb_url"] == WANDB["url"]
    assert [o["final"] for o in detail["objectives"]] == [0.31, 0.5]
    assert [t["to"] for t in detail["transitions"]] == ["pending", "running", "grace"]
    assert detail["job_ended_at"] is not None  # the marker was seen...
    assert detail["idle_after_end_s"] is None  # ...but no stop yet: no figure, not zero

    assert compared.stdout.splitlines() == [
        "val_loss by config.gradient_method: lower val_loss is better "
        "(the runs' objective val_loss:min)",
        "config.gradient_method  RUNS  COMPLETED  CRASHED  WITH val_loss  MEAN   MIN   MAX  "
        "BEST RUN",
        "mgda                    3     2          1        2              0.275  0.25  0.3  "
        "mgda-2 (0.25)",
        "pcgrad                  2     2          0        2              0.3    0.2   0.4  "
        "pcgrad-2 (0.2)",
        "imtlg                   1     0          0        0              -      -     -    -",
        "(none)                  1     1          0        1              0.5    0.5   0.5  "
        "baseline-1 (0.5)",
    ]

    by_acc = json.loads(acc.stdout)
    assert (by_acc["direction"], by_acc["direction_source"]) == ("max", "objective")
    assert [g["best_run"] for g in by_acc["groups"]] == ["mgda-2", "pcgrad-1", "imtlg-1", None]

    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [(r["run_id"], r["metrics.val_loss"], r["config.optimizer.lr"]) for r in rows] == [
        ("pcgrad-1", "0.4", "0.0003"),
        ("pcgrad-2", "0.2", "0.0003"),
    ]
    assert rows[0]["config.optimizer.betas"] == "[0.9, 0.99]"
    assert rows[0]["config.amp"] == "true"
    assert rows[0]["tag.seed"] == "" and rows[1]["tag.seed"] == "2"

    exported_runs = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [(r["run_id"], r["tags"]["seed"]) for r in exported_runs] == [
        ("mgda-1", "1"),
        ("mgda-3", "10"),
        ("pcgrad-2", "2"),
    ]
    assert exported_runs[0]["config"]["optimizer"] == {"lr": 3e-4, "betas": [0.9, 0.99]}


def test_bad_queries_are_refused_with_one_clear_line(offline: Cli) -> None:
    operator, unknown = offline.ctl_all(
        ("runs", "--where", "metrics.val_loss=<0.3"),
        ("show", "no-such-run"),
    )
    assert operator.returncode == 2, operator
    assert operator.stdout == "", operator
    assert operator.stderr.splitlines()[-1] == (
        "supervisorctl runs: error: argument --where: filter 'metrics.val_loss=<0.3': the "
        "value '<0.3' starts with an operator character; the operators are = != < <= > >= "
        "(quote the value to compare it as text)"
    )
    assert unknown.returncode == 1, unknown
    assert unknown.stderr.strip() == (
        f"supervisorctl: no run 'no-such-run' in the run database {database_named(offline)}: "
        "`supervisorctl runs` lists the runs"
    )


def test_without_a_database_it_says_where_it_looked(cli_without_db: Cli) -> None:
    done = cli_without_db.ctl("runs")
    assert done.returncode == 1, done
    assert done.stderr.startswith(
        f"supervisorctl: no run database at {cli_without_db.db_path} yet: supervisord creates it"
    )
    assert done.stderr.count("\n") == 1


@pytest.fixture
def cli_without_db() -> Iterator[Cli]:
    with cli_for({}) as helper:
        yield helper
