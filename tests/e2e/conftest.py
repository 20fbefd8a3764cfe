"""End-to-end fixtures: the real `supervisord` process and the real `supervisorctl`, run as
subprocesses against the session's moto server, with timings scaled down by settings.

`cli` gives a test its own short state directory under /tmp (Unix socket paths are limited to
107 bytes) and always stops, or kills, every daemon it started. `shared` is one daemon for the
whole session, for tests whose runs are independent of each other: a daemon start costs ~3 s of
CPU on this 2-core machine, and so does every few `supervisorctl` calls, so waits poll the
database read-only and the CLI is called for what is asserted.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from supervisor.runtime.settings import Settings
from tests.conftest import Fleet

BIN_DIR = Path(sys.executable).parent
SUPERVISORD = str(BIN_DIR / "supervisord")
SUPERVISORCTL = str(BIN_DIR / "supervisorctl")

# Compressed timings: every wait in these tests is a fraction of a second.
TIMINGS = {
    "SUPERVISOR_POLL_INITIAL_S": "0.2",
    "SUPERVISOR_POLL_MAX_S": "0.5",
    "SUPERVISOR_GRACE_S": "0.3",
    "SUPERVISOR_RECONCILE_INTERVAL_S": "0.3",
    "SUPERVISOR_RETRY_BASE_S": "0.05",
    "SUPERVISOR_SHUTDOWN_TIMEOUT_S": "2",
    "SUPERVISOR_TRAINING_LOG_POLL_S": "0.1",
}
COMMAND_TIMEOUT_S = 60.0
WAIT_TIMEOUT_S = 60.0
POLL_S = 0.05
TABLES = ("runs", "transitions", "actions", "instances")
TERMINAL = frozenset({"stopped", "terminated", "done", "crashed", "failed", "detached"})
_PR_SET_CHILD_SUBREAPER = 36


def pid_alive(pid: int) -> bool:
    """True while `pid` is a live process (a zombie counts as gone; ours are reaped here)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the command name, which is in parentheses.
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def wait_for(
    predicate: Callable[[], bool],
    timeout: float = WAIT_TIMEOUT_S,
    message: str | Callable[[], str] = "condition",
) -> None:
    """Poll `predicate` every 50 ms; fail with `message` if it is not true within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            pytest.fail(f"timed out after {timeout:.1f}s waiting for {text}")
        time.sleep(POLL_S)


@dataclass
class Cli:
    """Drive one state directory's daemon and CLI as a user would, from a shell."""

    state_dir: Path
    env: dict[str, str]
    started: list[int] = field(default_factory=list)

    # -- paths --------------------------------------------------------------------------------

    # The daemon's own Settings name its files, so the tests can never disagree with it.
    @property
    def settings(self) -> Settings:
        return Settings.load(None, state_dir=self.state_dir)

    @property
    def db_path(self) -> Path:
        return self.settings.db_path

    @property
    def socket_path(self) -> Path:
        return self.settings.socket_path

    @property
    def pid_path(self) -> Path:
        return self.settings.pid_path

    @property
    def log_path(self) -> Path:
        return self.settings.log_path

    # -- commands -----------------------------------------------------------------------------

    def _run(
        self, program: str, args: tuple[str, ...], extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [program, *args],
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run(SUPERVISORCTL, args)

    def ctl_all(self, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
        """Several independent `supervisorctl` commands at once (each is CPU-bound start-up)."""
        with ThreadPoolExecutor(max_workers=2) as pool:
            return list(pool.map(lambda args: self.ctl(*args), commands))

    def ctl_json(self, *args: str) -> Any:
        """`supervisorctl ARGS --json`, which must succeed; its output parsed."""
        argv = args if "--json" in args else (*args, "--json")
        done = self.ctl(*argv)
        assert done.returncode == 0, (
            f"supervisorctl {' '.join(argv)} exited {done.returncode}: {done.stderr}"
            f"{self.log_tail()}"
        )
        return json.loads(done.stdout)

    def supervisord(self, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return self._run(SUPERVISORD, args, extra_env)

    def daemon_status(self) -> Any:
        """`supervisord status --json`, which must succeed; its output parsed."""
        done = self.supervisord("status", "--json")
        assert done.returncode == 0, (
            f"supervisord status --json exited {done.returncode}: {done.stderr}"
        )
        return json.loads(done.stdout)

    # -- the daemon's life --------------------------------------------------------------------

    def start_daemon(self, **extra_env: str) -> int:
        """`supervisord start` (detaches, returns once the socket answers); the daemon's pid."""
        done = self.supervisord("start", **extra_env)
        assert done.returncode == 0, (
            f"supervisord start exited {done.returncode}: {done.stderr}{self.log_tail()}"
        )
        pid = self.daemon_pid()
        assert pid is not None, f"no pid in {self.pid_path} after start"
        self.started.append(pid)
        return pid

    def stop_daemon(self) -> None:
        """`supervisord stop`, which must succeed and leave no process behind."""
        pid = self.daemon_pid()
        done = self.supervisord("stop")
        assert done.returncode == 0, f"supervisord stop exited {done.returncode}: {done.stderr}"
        if pid is not None:
            self.wait_gone(pid)

    def kill_daemon(self) -> int:
        """SIGKILL the daemon, wait until its process is gone; its pid."""
        pid = self.daemon_pid()
        assert pid is not None, f"no pid in {self.pid_path}"
        os.kill(pid, signal.SIGKILL)
        self.wait_gone(pid)
        return pid

    def daemon_pid(self) -> int | None:
        try:
            text = self.pid_path.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def wait_gone(self, pid: int, timeout: float = WAIT_TIMEOUT_S) -> None:
        wait_for(lambda: not pid_alive(pid), timeout, f"process {pid} to exit")

    def cleanup(self) -> None:
        """Stop every daemon this helper started: SIGTERM, then SIGKILL if it lingers."""
        for pid in self.started:
            if not pid_alive(pid):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(POLL_S)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(POLL_S)

    # -- runs ---------------------------------------------------------------------------------

    def attach(self, run_id: str, instance_id: str, prefix: str, *args: str) -> Any:
        return self.ctl_json(
            "attach", run_id, "--instance-id", instance_id, "--s3-prefix", prefix, *args
        )

    def run(self, run_id: str) -> Any:
        """`supervisorctl status RUN_ID --json`."""
        return self.ctl_json("status", run_id)

    def phase(self, run_id: str) -> str:
        return str(self.run(run_id)["phase"])

    def wait_db_phase(
        self, run_id: str, phase: str, timeout: float = WAIT_TIMEOUT_S
    ) -> dict[str, Any]:
        """Wait until the run's row says `phase`, failing early if it ends in another phase;
        the row. Polls the database read-only: a CLI call costs ~0.7 s of CPU on this machine,
        and the daemon commits a transition before it acts on it or reports it."""
        seen: dict[str, Any] = {}

        def reached() -> bool:
            seen["row"] = row = self.db_run(run_id)
            if row is None:
                return False
            if row["phase"] != phase and row["phase"] in TERMINAL:
                pytest.fail(
                    f"run {run_id} ended {row['phase']} ({row['reason']}) while waiting "
                    f"for {phase}{self.log_tail()}"
                )
            return bool(row["phase"] == phase)

        wait_for(
            reached,
            timeout,
            lambda: f"run {run_id} to reach {phase}; last seen {seen.get('row')}{self.log_tail()}",
        )
        return dict(seen["row"])

    def wait_phase(self, run_id: str, phase: str, timeout: float = WAIT_TIMEOUT_S) -> Any:
        """`wait_db_phase`, then `supervisorctl status RUN_ID --json`, which must agree."""
        self.wait_db_phase(run_id, phase, timeout)
        detail = self.run(run_id)
        assert detail["phase"] == phase, f"the database says {phase}, supervisorctl: {detail}"
        return detail

    # -- evidence -----------------------------------------------------------------------------

    def db_dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the run tables, read through a read-only connection."""
        uri = f"file:{self.db_path}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
            return {
                table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                for table in TABLES
            }

    def db_run(self, run_id: str) -> dict[str, Any] | None:
        """The run's row, read through a read-only connection (None before it exists)."""
        if not self.db_path.exists():
            return None
        uri = f"file:{self.db_path}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return dict(row) if row is not None else None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n--- supervisord.log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])


def assert_chained(transitions: list[dict[str, Any]]) -> None:
    """seq 1..N without a gap; the first from nothing, each next `from` the previous `to`."""
    seqs = [t["seq"] for t in transitions]
    assert seqs == list(range(1, len(transitions) + 1)), f"seq has a gap: {seqs}"
    previous: str | None = None
    for t in transitions:
        assert t["from"] == previous, f"transition {t} does not follow {previous}"
        previous = t["to"]


@pytest.fixture(scope="session", autouse=True)
def _reap_orphans() -> None:
    """Become the subreaper of the daemons `supervisord start` detaches, so `pid_alive` can
    reap them (this machine's init does not)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def daemon_env(aws: dict[str, str], state_dir: Path) -> dict[str, str]:
    """This process's environment without its SUPERVISOR_* settings, plus AWS pointed at moto,
    the compressed timings and the state directory. XDG_CONFIG_HOME names a directory that
    does not exist, so no settings file of the machine's user is read."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
    base.pop("AWS_PROFILE", None)
    no_config = str(state_dir / "no-config")
    return {
        **base,
        **aws,
        **TIMINGS,
        "SUPERVISOR_STATE_DIR": str(state_dir),
        "XDG_CONFIG_HOME": no_config,
    }


@contextlib.contextmanager
def cli_for(aws: dict[str, str]) -> Iterator[Cli]:
    state_dir = Path(tempfile.mkdtemp(prefix="sv", dir="/tmp"))
    helper = Cli(state_dir, daemon_env(aws, state_dir))
    try:
        yield helper
    finally:
        helper.cleanup()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def cli(aws_env: dict[str, str]) -> Iterator[Cli]:
    """A fresh state directory, no daemon yet; every daemon started through it is stopped."""
    with cli_for(aws_env) as helper:
        yield helper


@pytest.fixture(scope="session")
def _shared_daemon(moto_url: str) -> Iterator[Cli]:
    # The same AWS chain as `aws_env`; the tests using it reset moto through `fleet`, which
    # is harmless to a daemon whose earlier runs have all ended.
    aws = {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    with cli_for(aws) as helper:
        helper.start_daemon()
        yield helper


@pytest.fixture
def shared(_shared_daemon: Cli, fleet: Fleet) -> Cli:
    """One daemon without faults, shared by the tests whose runs are independent (unique run
    ids, each run driven to an end): starting a daemon costs ~3 s of CPU here."""
    pid = _shared_daemon.daemon_pid()
    assert pid is not None and pid_alive(pid), (
        f"the shared daemon is gone{_shared_daemon.log_tail()}"
    )
    return _shared_daemon
