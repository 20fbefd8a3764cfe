"""`supervisorctl migrate-db --to URL` as a person runs it: the real command in a process of its
own, on a state directory with a database made by this version; its per-table lines and
summary, the query verbs reading the result through SUPERVISOR_DATABASE_URL, and its refusals
(a running daemon holding the state directory's lock, no database, a bad URL), each one line
on stderr with the password hidden."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import pytest

from supervisor.adapters.migrate_db import LEFT_BEHIND
from supervisor.adapters.schema import TABLES
from supervisor.runtime.service import state_lock
from supervisor.runtime.settings import Settings
from tests.adapters.run_database import SEEDS, seed
from tests.e2e.conftest import SUPERVISORCTL
from tests.pg_server import PostgresServer


def ctl(state_dir: Path, *argv: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SUPERVISOR_")}
    env["SUPERVISOR_STATE_DIR"] = str(state_dir)
    env.update({f"SUPERVISOR_{name.upper()}": value for name, value in settings.items()})
    return subprocess.run(
        [SUPERVISORCTL, *argv], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    asyncio.run(seed(state / "supervisor.db", SEEDS))
    return state


def test_it_copies_prints_each_table_and_the_queries_then_read_postgresql(
    state_dir: Path, pg_url: str, postgres_server: PostgresServer
) -> None:
    done = ctl(state_dir, "migrate-db", "--to", pg_url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    tables = [line.split()[0] for line in lines if line.startswith("  ")]
    carried = [t.name for t in TABLES if t.name not in LEFT_BEHIND]
    assert tables == carried
    width = max(len(t.name) for t in TABLES)
    assert f"  {'runs':<{width}}  {len(SEEDS)} rows" in lines
    summary = next(line for line in lines if line.startswith("copied "))
    shown = pg_url.replace(postgres_server.password, "***")
    assert f"in {len(carried)} tables from {state_dir / 'supervisor.db'} to {shown}" in summary
    assert "every table's row count matches" in summary
    assert "not copied: replicas, duty_leases, inbox" in done.stdout
    assert postgres_server.password not in done.stdout + done.stderr
    assert not (state_dir / "supervisord.pid").exists()  # the lock's file is not left behind

    on_sqlite = ctl(state_dir, "runs", "--json")
    on_postgres = ctl(state_dir, "runs", "--json", database_url=pg_url)
    assert on_postgres.returncode == 0, on_postgres.stderr
    assert on_postgres.stdout == on_sqlite.stdout
    shown_sqlite = ctl(state_dir, "show", "mgda-3")
    assert ctl(state_dir, "show", "mgda-3", database_url=pg_url).stdout == shown_sqlite.stdout


def test_it_is_refused_while_the_daemon_runs(state_dir: Path, pg_url: str) -> None:
    with state_lock(Settings.load(state_dir=state_dir)):  # the daemon's own lock, held
        done = ctl(state_dir, "migrate-db", "--to", pg_url)
    assert done.returncode == 1
    assert done.stderr == (
        f"supervisorctl: supervisord is running (pid {os.getpid()}) for state directory "
        f"{state_dir}: stop it with `supervisord stop` first, then run migrate-db again\n"
    )
    assert ctl(state_dir, "runs", database_url=pg_url).returncode == 1  # nothing was migrated


def test_a_state_directory_without_a_database_is_refused(tmp_path: Path, pg_url: str) -> None:
    done = ctl(tmp_path / "nothing-here", "migrate-db", "--to", pg_url)
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"supervisorctl: no run database at {tmp_path / 'nothing-here' / 'supervisor.db'}: "
        "nothing to migrate"
    )


def test_a_bad_url_is_refused_in_one_line_without_its_password(state_dir: Path) -> None:
    done = ctl(state_dir, "migrate-db", "--to", "postgresql://u:hunter2@127.0.0.1:1/db")
    assert done.returncode == 1
    assert done.stderr.startswith("supervisorctl: cannot connect to postgresql://u:***@127.0.0.1:1")
    assert "hunter2" not in done.stderr
    assert done.stderr.count("\n") == 1
    missing = ctl(state_dir, "migrate-db")
    assert missing.returncode == 2
    assert "the following arguments are required: --to" in missing.stderr


def test_the_readmes_migrate_db_command_works_as_written(
    state_dir: Path, pg_url: str, postgres_server: PostgresServer
) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Running replicas", 1)[1].split("\n## ", 1)[0]
    (command,) = re.findall(r"^supervisorctl migrate-db --to (\S+)$", section, re.MULTILINE)
    assert section.index("\nsupervisord stop") < section.index("\nsupervisorctl migrate-db --to")
    # The documented URL names no password (it comes from PGPASSWORD or ~/.pgpass): the
    # test's database stands in for it, its password given the same way.
    assert "@" in command and ":" not in command.split("://", 1)[1].split("@", 1)[0]
    passwordless = postgres_server.url(pg_url.rsplit("/", 1)[1], password=None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PGPASSWORD", postgres_server.password)
        done = ctl(state_dir, "migrate-db", "--to", passwordless)
    assert done.returncode == 0, done.stderr
    assert f"to {passwordless} (schema version" in done.stdout
