"""The real `supervisord` and `supervisorctl` at their edges: which settings file and state
directory they find from any working directory, two starts at once, a daemon that does not
answer or was killed, a reader that closes the output, and bad files: each one line, never a
traceback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import Fleet
from tests.e2e.conftest import (
    COMMAND_TIMEOUT_S,
    SUPERVISORCTL,
    SUPERVISORD,
    Cli,
    pid_alive,
)

pytestmark = pytest.mark.e2e


def run(
    program: str, *args: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [program, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def assert_one_line_refusal(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 1 or 2, nothing on stdout, one line on stderr naming each needle, no traceback."""
    assert done.returncode in (1, 2), done
    assert done.stdout == "", done
    assert "Traceback" not in done.stderr, done
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr)


def daemons_of(state_dir: Path) -> list[int]:
    """Live detached daemons (`--detached-child`) whose state directory is `state_dir`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--detached-child" in cmdline and (
            f"SUPERVISOR_STATE_DIR={state_dir}".encode() in environ
        ):
            found.append(int(proc.name))
    return [pid for pid in found if pid_alive(pid)]


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short directory under /tmp (socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="svw", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def daemon_in(cli: Cli, state_dir: Path) -> Iterator[Cli]:
    """A `Cli` for a daemon that a test starts in `state_dir`; stopped, or killed, after."""
    other = Cli(state_dir, {**cli.env, "SUPERVISOR_STATE_DIR": str(state_dir)})
    try:
        yield other
    finally:
        pid = other.daemon_pid()
        if pid is not None:
            other.started.append(pid)
        other.cleanup()


def test_relative_config_and_state_dir_are_resolved_from_the_working_directory(
    cli: Cli, workdir: Path
) -> None:
    env = {k: v for k, v in cli.env.items() if k != "SUPERVISOR_STATE_DIR"}
    (workdir / "conf").mkdir()
    (workdir / "conf" / "sv.toml").write_text('state_dir = "state"\n')
    (workdir / "elsewhere").mkdir()

    with daemon_in(cli, workdir / "conf" / "state") as from_config:
        started = run(SUPERVISORD, "start", "--config", "conf/sv.toml", env=env, cwd=workdir)
        assert started.returncode == 0, f"{started}{from_config.log_tail()}"
        status = run(
            SUPERVISORD,
            "status",
            "--json",
            "--config",
            "../conf/sv.toml",
            env=env,
            cwd=workdir / "elsewhere",
        )
        assert status.returncode == 0, status
        assert json.loads(status.stdout)["state_dir"] == str(workdir / "conf" / "state")
        from_config.stop_daemon()

    env_rel = {**env, "SUPERVISOR_STATE_DIR": "rel-state"}
    with daemon_in(cli, workdir / "rel-state") as from_env:
        started = run(SUPERVISORD, "start", env=env_rel, cwd=workdir)
        assert started.returncode == 0, f"{started}{from_env.log_tail()}"
        pid = from_env.daemon_pid()
        assert pid is not None and f"(pid {pid})" in started.stdout, started
        assert from_env.socket_path.is_socket()
        listed = run(SUPERVISORCTL, "status", env=env_rel, cwd=workdir)
        assert listed.returncode == 0, listed
        assert daemons_of(workdir / "rel-state") == [pid]
        from_env.stop_daemon()
        assert daemons_of(workdir / "rel-state") == []


def test_supervisorctl_finds_the_state_dir_of_the_config_file_supervisord_read(
    cli: Cli, workdir: Path
) -> None:
    """The default file ($XDG_CONFIG_HOME/supervisor/supervisord.toml) is read by both
    commands; SUPERVISOR_CONFIG wins over it, and --config over both."""
    default = workdir / "xdg" / "supervisor" / "supervisord.toml"
    default.parent.mkdir(parents=True)
    default.write_text(f'state_dir = "{workdir / "state"}"\n')
    other = workdir / "other.toml"
    other.write_text(f'state_dir = "{workdir / "other-state"}"\n')
    env = {k: v for k, v in cli.env.items() if k != "SUPERVISOR_STATE_DIR"}
    env["XDG_CONFIG_HOME"] = str(workdir / "xdg")

    with daemon_in(cli, workdir / "state") as daemon:
        started = run(SUPERVISORD, "start", env=env, cwd=Path("/"))
        assert started.returncode == 0, f"{started}{daemon.log_tail()}"

        found = run(SUPERVISORCTL, "status", env=env, cwd=workdir)
        assert found.returncode == 0, found
        assert "no runs attached" in found.stdout

        with_env = {**env, "SUPERVISOR_CONFIG": str(other)}
        elsewhere = run(SUPERVISORCTL, "status", env=with_env, cwd=workdir)
        assert_one_line_refusal(elsewhere, str(workdir / "other-state" / "supervisord.sock"))
        flag = run(SUPERVISORCTL, "--config", str(default), "status", env=with_env, cwd=workdir)
        assert flag.returncode == 0, flag
        missing = {**env, "SUPERVISOR_CONFIG": "missing.toml"}
        named = run(SUPERVISORCTL, "status", env=missing, cwd=workdir)
        assert_one_line_refusal(named, "SUPERVISOR_CONFIG", str(workdir / "missing.toml"))

        daemon.stop_daemon()


def test_two_starts_at_once_one_daemon_and_the_other_names_the_lock_holder(cli: Cli) -> None:
    starts = [
        subprocess.Popen(
            [SUPERVISORD, "start"],
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        results = [(p.wait(COMMAND_TIMEOUT_S), *p.communicate()) for p in starts]
    finally:
        for process in starts:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    pid = cli.daemon_pid()
    if pid is not None:
        cli.started.append(pid)

    assert sorted(code for code, _, _ in results) == [0, 1], results
    (_, won, _), (_, _, lost) = sorted(results, key=lambda r: r[0])
    assert pid is not None and f"supervisord started (pid {pid})" in won, results
    assert f"already running (pid {pid})" in lost, results
    assert "Traceback" not in lost
    assert daemons_of(cli.state_dir) == [pid]

    cli.stop_daemon()
    assert daemons_of(cli.state_dir) == []


def test_a_stopped_daemon_times_out_and_a_killed_one_leaves_a_stale_socket(
    cli: Cli, fleet: Fleet
) -> None:
    pid = cli.start_daemon()
    (instance,) = fleet.launch(1)
    cli.attach("followed", instance, fleet.prefix("followed"))
    quick = {"SUPERVISOR_CLIENT_TIMEOUT_S": "1"}

    os.kill(pid, signal.SIGSTOP)
    try:
        ctl = cli._run(SUPERVISORCTL, ("status",), quick)
        daemon = cli._run(SUPERVISORD, ("status",), quick)
    finally:
        os.kill(pid, signal.SIGCONT)
    for done in (ctl, daemon):
        assert_one_line_refusal(done, f"pid {pid}", str(cli.socket_path), "did not answer")
    assert cli.ctl("status").returncode == 0

    follow = subprocess.Popen(
        [SUPERVISORCTL, "tail", "-f", "followed"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follow.stdout is not None
        assert "attached" in follow.stdout.readline()  # connected and streaming
        cli.kill_daemon()
        _, cut = follow.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            follow.kill()
    assert follow.returncode == 1, cut
    assert "Traceback" not in cut and len(cut.strip().splitlines()) == 1, cut
    assert "closed the connection" in cut

    assert cli.socket_path.exists()
    stale = cli.ctl("status")
    assert_one_line_refusal(stale, f"stale socket {cli.socket_path} from pid {pid}")
    assert "supervisord start" in stale.stderr


def test_a_reader_that_closes_the_pipe_gets_one_line_not_a_traceback(shared: Cli) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -1` that has already exited
    try:
        done = subprocess.run(
            [SUPERVISORCTL, "status"],
            env=shared.env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    finally:
        os.close(write_end)

    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("supervisorctl: "), done
    assert "broken pipe" in done.stderr


def test_bad_spec_files_and_a_state_dir_that_is_a_file_give_one_line(
    cli: Cli, workdir: Path
) -> None:
    needed = 'run_id = "r1"\ninstance_id = "i-0123456789abcdef0"\ns3_prefix = "s3://b/r1/"\n'
    words = workdir / "words.toml"
    words.write_text(needed + 'grace_s = "three"\n')
    marker = workdir / "marker.toml"
    marker.write_text(needed + 'markers = "COMPLETE"\n')

    assert_one_line_refusal(cli.ctl("attach", "--spec", str(words)), "grace_s", "three")
    assert_one_line_refusal(cli.ctl("attach", "--spec", str(marker)), "markers", "COMPLETE")
    assert_one_line_refusal(cli.ctl("attach", "--spec", str(workdir)), str(workdir))

    a_file = workdir / "not-a-dir"
    a_file.write_text("")
    as_file = {"SUPERVISOR_STATE_DIR": str(a_file)}
    commands = (
        (SUPERVISORCTL, ("status",)),
        (SUPERVISORCTL, ("runs",)),
        (SUPERVISORD, ("start",)),
        (SUPERVISORD, ("start", "--foreground")),
        (SUPERVISORD, ("status",)),
    )
    with ThreadPoolExecutor(max_workers=2) as pool:  # each is CPU-bound start-up
        results = list(pool.map(lambda c: cli._run(c[0], c[1], as_file), commands))
    for done in results:
        assert_one_line_refusal(done, str(a_file), "not a directory")
