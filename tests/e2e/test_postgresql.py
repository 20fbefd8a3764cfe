"""The real daemon on PostgreSQL (`SUPERVISOR_DATABASE_URL` on the test server): runs are
attached, driven and re-adopted from the database, the state directory holds no SQLite file,
and a URL that does not connect fails `supervisord start` in one line that names the setting
and never shows the password."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from supervisor.adapters.database_url import redact
from supervisor.adapters.pg_store import SCHEMA_MIGRATIONS
from supervisor.adapters.schema import migration_files
from tests.conftest import Fleet
from tests.e2e.conftest import Cli, assert_chained, cli_for, wait_for
from tests.e2e.test_cli_start import assert_one_line_refusal, daemons_of
from tests.pg_server import PostgresServer

pytestmark = pytest.mark.e2e


def pg_run(url: str, run_id: str) -> dict[str, Any] | None:
    """The run's row, read with psql's driver alone."""
    with psycopg.connect(url) as conn:
        cursor = conn.execute("SELECT * FROM runs WHERE run_id = %s", (run_id,))
        row = cursor.fetchone()
        names = [c.name for c in cursor.description or ()]
    return dict(zip(names, row, strict=True)) if row is not None else None


def wait_pg_phase(cli: Cli, url: str, run_id: str, phase: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen["row"] = row = pg_run(url, run_id)
        return row is not None and row["phase"] == phase

    wait_for(reached, message=lambda: f"{run_id} to be {phase}: {seen}{cli.log_tail()}")
    return dict(seen["row"])


def test_a_daemon_on_postgresql_attaches_stores_and_readopts_a_run(
    cli: Cli, fleet: Fleet, pg_url: str, postgres_server: PostgresServer
) -> None:
    (instance,) = fleet.launch()
    cli.start_daemon(SUPERVISOR_DATABASE_URL=pg_url)
    attached = cli.ctl_json(
        "attach", "pg-1", "--instance-id", instance, "--s3-prefix", fleet.prefix("pg-1")
    )
    assert attached["phase"] == "pending"
    wait_pg_phase(cli, pg_url, "pg-1", "running")

    cli.stop_daemon()  # a restart re-adopts the run from PostgreSQL
    cli.start_daemon(SUPERVISOR_DATABASE_URL=pg_url)
    fleet.put("runs/pg-1/COMPLETE")
    row = wait_pg_phase(cli, pg_url, "pg-1", "stopped")

    assert row["outcome"] == "completed"
    assert fleet.state(instance) == "stopped"
    run = cli.ctl_json("status", "pg-1")
    assert [t["to"] for t in run["transitions"]] == [
        "pending", "running", "grace", "stopping", "stopped"
    ]  # fmt: skip
    assert_chained(run["transitions"])
    assert [(a["action"], a["outcome"]) for a in run["actions"]] == [("stop", "accepted")]
    assert not cli.db_path.exists()  # no SQLite file beside the PostgreSQL database
    shown = cli.supervisord("status")  # the database, its password hidden
    assert shown.returncode == 0, shown.stderr
    assert f"\ndatabase: {redact(pg_url)}\n" in shown.stdout
    assert cli.daemon_status()["database"] == redact(pg_url)
    assert postgres_server.password not in shown.stdout + cli.supervisord("status", "--json").stdout
    log = cli.log_path.read_text()
    assert redact(pg_url) in log
    assert postgres_server.password not in log


def test_daemons_starting_together_on_a_fresh_database_migrate_it_once(
    cli: Cli, aws_env: dict[str, str], pg_url: str
) -> None:
    """Three daemons (each with its own state directory) started at once on an empty
    database: all start, and each migration is applied by one of them, once."""
    with cli_for(aws_env) as second, cli_for(aws_env) as third:
        daemons = (cli, second, third)
        with ThreadPoolExecutor(max_workers=3) as pool:
            done = list(pool.map(lambda d: d.supervisord("start", SUPERVISOR_DATABASE_URL=pg_url),
                                 daemons))  # fmt: skip
        for daemon, result in zip(daemons, done, strict=True):
            assert result.returncode == 0, f"{result.stderr}{daemon.log_tail()}"
            pid = daemon.daemon_pid()
            assert pid is not None
            daemon.started.append(pid)
        applied_by = [
            line
            for daemon in daemons
            for line in daemon.log_path.read_text().splitlines()
            if '"migration_applied"' in line
        ]
        for daemon in daemons:
            daemon.stop_daemon()

    with psycopg.connect(pg_url) as conn:
        versions = [v for (v,) in conn.execute(f"SELECT version FROM {SCHEMA_MIGRATIONS}")]
    assert sorted(versions) == [number for number, _ in migration_files()]
    assert len(applied_by) == len(versions)  # one daemon applied each, no other tried


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("fault", ["wrong password", "closed port"])
@pytest.mark.parametrize("foreground", [False, True], ids=["detached", "foreground"])
def test_a_database_that_does_not_connect_fails_the_start_in_one_line_without_the_password(
    cli: Cli, postgres_server: PostgresServer, fault: str, foreground: bool
) -> None:
    secret = "pw-that-must-not-show-7f3a"
    if fault == "wrong password":
        url = postgres_server.url("postgres", password=secret)
        reason = "password authentication failed"
    else:
        url = f"postgresql://postgres:{secret}@127.0.0.1:{_closed_port()}/postgres"
        reason = "Connection refused"

    args = ("start", "--foreground") if foreground else ("start",)
    done = cli.supervisord(*args, SUPERVISOR_DATABASE_URL=url)

    assert_one_line_refusal(done, "SUPERVISOR_DATABASE_URL", redact(url), reason)
    assert secret not in done.stderr
    log = cli.log_path.read_text() if cli.log_path.exists() else ""
    assert secret not in log
    assert daemons_of(cli.state_dir) == []
    assert not cli.socket_path.exists()
