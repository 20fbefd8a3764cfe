"""From one SQLite daemon to replicas (issue 14): a real `supervisord` on SQLite watches runs
and is SIGKILLed (its leases stay written to the year 9999, as it never renews them), the
database goes to PostgreSQL with `supervisorctl migrate-db`, and a replica started on it
claims those runs at once and drives them to their end, their fencing epoch going on from the
old one."""

from __future__ import annotations

import sqlite3

import pytest

from tests.conftest import Fleet
from tests.e2e.conftest import Cli, assert_chained, wait_for
from tests.e2e.test_replicas import pg_rows, replica_env, wait_all

pytestmark = pytest.mark.e2e


def sqlite_leases(cli: Cli) -> dict[str, tuple[str | None, int, str | None]]:
    with sqlite3.connect(cli.db_path) as db:
        rows = db.execute("SELECT run_id, owner, epoch, lease_until FROM runs").fetchall()
    return {run_id: (owner, epoch, until) for run_id, owner, epoch, until in rows}


def test_runs_of_a_killed_sqlite_daemon_migrated_are_claimed_and_driven_by_a_replica(
    cli: Cli, fleet: Fleet, pg_url: str
) -> None:
    runs = ["mig-0", "mig-1"]
    instances = fleet.launch(len(runs))
    cli.start_daemon()
    for run, instance in zip(runs, instances, strict=True):
        cli.attach(run, instance, fleet.prefix(run))
    for run in runs:
        cli.wait_db_phase(run, "running")
    cli.kill_daemon()
    before = sqlite_leases(cli)
    assert all(owner and until and until.startswith("9999") for owner, _, until in before.values())

    done = cli.ctl("migrate-db", "--to", pg_url)
    assert done.returncode == 0, done.stderr
    assert set(pg_rows(pg_url, "SELECT owner, lease_until FROM runs")) == {(None, None)}
    assert pg_rows(pg_url, "SELECT count(*) FROM replicas") == [(0,)]
    assert pg_rows(pg_url, "SELECT count(*) FROM duty_leases") == [(0,)]

    cli.start_daemon(**replica_env("replica-a", pg_url))
    wait_for(
        lambda: {o for (o,) in pg_rows(pg_url, "SELECT owner FROM runs")} == {"replica-a"},
        message=lambda: f"the replica to claim the migrated runs{cli.log_tail()}",
    )
    epochs = dict(pg_rows(pg_url, "SELECT run_id, epoch FROM runs"))
    assert all(epochs[run] > before[run][1] for run in runs)  # the fencing token goes on
    for run in runs:
        fleet.put(f"runs/{run}/COMPLETE")
    wait_all(cli, pg_url, "stopped", runs)
    assert all(fleet.state(instance) == "stopped" for instance in instances)
    for run in runs:
        detail = cli.ctl_json("status", run)
        assert_chained(detail["transitions"])
        assert [t["to"] for t in detail["transitions"]].count("stopped") == 1
    assert cli.daemon_status()["role"] == "leader"
    cli.stop_daemon()
