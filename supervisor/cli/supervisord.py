"""`supervisord`: start, stop and inspect the supervisor daemon."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor import __version__
from supervisor.adapters.control_client import SocketClient
from supervisor.cli.common import (
    EXIT_OK,
    STATE_DIR_ENV,
    DaemonLocation,
    ago,
    fail,
    load_settings,
    locate_daemon,
    printable,
    user_errors,
)
from supervisor.core.errors import InvalidInput, SupervisorError
from supervisor.runtime.config_file import find_config_file

if TYPE_CHECKING:
    from supervisor.cli.views import DaemonStatus
    from supervisor.runtime.settings import Settings

# `status` answers within a few times a bare interpreter's start: the daemon's own modules
# (the runtime, aiohttp, aioboto3, pydantic) are imported by `start` and `stop` only.

START_TIMEOUT_S = 30.0
LOCK_PID_WAIT_S = 5.0

DESCRIPTION = """\
The training-run supervisor daemon. It watches every attached run (supervisorctl attach),
stops or terminates each instance safely once its run completes, and records every
transition in SQLite under the state directory.

Not Supervisor the process manager: same command names, different program.
"""

EPILOG = """\
settings: SUPERVISOR_* environment variables, over a TOML file (see
config/supervisord.example.toml), over defaults. The file is --config FILE, else
$SUPERVISOR_CONFIG, else $XDG_CONFIG_HOME/supervisor/supervisord.toml (default
~/.config/supervisor/supervisord.toml) if it exists; supervisorctl reads the same one, so it
finds the daemon's state directory. Relative paths: --config and SUPERVISOR_STATE_DIR from the
current directory, state_dir in the file from the file's directory. AWS credentials, region
and endpoint come from the standard AWS chain (AWS_PROFILE, AWS_DEFAULT_REGION,
AWS_ENDPOINT_URL).

metrics: Prometheus text at GET /metrics on the control socket; set
SUPERVISOR_METRICS_ADDR=127.0.0.1:9464 to serve it over TCP as well (loopback unless you
give another host: the listener has no authentication).

examples:
  supervisord start                  start in the background, return once it answers
  supervisord start --foreground     run in this terminal (systemd uses this)
  supervisord status                 pid, uptime, database, runs by phase, AWS calls
  supervisord stop                   finish in-flight transitions, then exit
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supervisord",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    start = commands.add_parser("start", help="start the daemon")
    start.add_argument(
        "--foreground",
        action="store_true",
        help="run in this process with console logs (for systemd and debugging)",
    )
    # Set by `supervisord start` for the process it detaches: logs go to the file only.
    start.add_argument("--detached-child", action="store_true", help=argparse.SUPPRESS)
    stop = commands.add_parser("stop", help="stop the daemon (SIGTERM, then wait)")
    status = commands.add_parser("status", help="is it running, and what is it doing")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    for sub in (start, stop, status):
        sub.add_argument(
            "--config",
            type=Path,
            metavar="FILE",
            help="TOML settings file (default: $SUPERVISOR_CONFIG, else "
            "~/.config/supervisor/supervisord.toml if it exists; SUPERVISOR_* environment "
            "variables take precedence over its keys)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = find_config_file(args.config)
    if args.command == "status":
        daemon = locate_daemon(config)
        with user_errors():
            return _status(daemon, as_json=args.json)
    settings = load_settings(config)
    with user_errors():
        if args.command == "start":
            return _start(
                settings, config, foreground=args.foreground, console=not args.detached_child
            )
        return _stop(settings)


def _start(settings: Settings, config: Path | None, *, foreground: bool, console: bool) -> int:
    from supervisor.runtime.root_tasks import RootTaskFailed
    from supervisor.runtime.service import (
        AlreadyRunning,
        check_database,
        check_notify_urls,
        lock_is_held,
        prepare_state_dir,
        run_foreground,
    )

    check_database(settings)  # a URL that does not connect: one line, before anything else
    check_notify_urls(settings)  # issue 15: a URL Apprise cannot use: one line, likewise
    settings.check_http()  # issue 15: beyond loopback only with SUPERVISOR_HTTP_TOKEN
    if foreground:
        try:
            run_foreground(settings, console=console)
        except (AlreadyRunning, InvalidInput, RootTaskFailed) as exc:
            fail(str(exc))
        return EXIT_OK
    prepare_state_dir(settings.state_dir)
    if lock_is_held(settings.pid_path):
        fail(_already_running(settings, _lock_holder(settings)))
    command = [
        sys.executable,
        "-m",
        "supervisor.cli.supervisord",
        "start",
        "--foreground",
        "--detached-child",
    ]
    # Both absolute (load_settings, find_config_file): the child runs from `/`.
    if config is not None:
        command += ["--config", str(config)]
    env = {**os.environ, STATE_DIR_ENV: str(settings.state_dir)}
    log_fd = os.open(settings.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(log_fd, "ab") as log_file:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            env=env,
            cwd="/",
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if child.poll() is not None:
            # Another `supervisord start` may have taken the lock between our check and our
            # child's: then that daemon is the one running, and ours had nothing to do.
            if lock_is_held(settings.pid_path):
                fail(_already_running(settings, _lock_holder(settings)))
            fail(
                f"supervisord exited with status {child.returncode} before it answered; "
                f"last lines of {settings.log_path}:\n{_tail(settings.log_path)}"
            )
        # Only our own child's answer counts: a daemon started at the same time by another
        # `supervisord start` answers on the same socket.
        if _answering_pid(settings) == child.pid:
            print(f"supervisord started (pid {child.pid}); socket {settings.socket_path}")
            return EXIT_OK
        time.sleep(0.05)
    _end(child)
    fail(f"supervisord did not answer within {START_TIMEOUT_S:.0f}s; see {settings.log_path}")


def _already_running(settings: Settings, pid: int | None) -> str:
    holder = f"pid {pid}" if pid is not None else "pid unknown"
    return (
        f"supervisord is already running ({holder}) for state directory {settings.state_dir}: "
        f"it holds the lock on {settings.pid_path.name}; stop it with `supervisord stop` first"
    )


def _lock_holder(settings: Settings) -> int | None:
    """The pid in the lock file; the holder writes it just after taking the lock, so wait a
    little for it rather than report no pid."""
    from supervisor.runtime.service import lock_is_held, read_pid

    deadline = time.monotonic() + LOCK_PID_WAIT_S
    while (pid := read_pid(settings.pid_path)) is None and time.monotonic() < deadline:
        if not lock_is_held(settings.pid_path):
            return None
        time.sleep(0.05)
    return pid


def _answering_pid(settings: Settings) -> int | None:
    """The pid of the daemon answering on the socket, or None while none answers."""

    try:
        status = SocketClient(settings.socket_path, timeout_s=2).call("GET", "/v1/status")
    except (SupervisorError, OSError):
        return None
    pid = status.get("pid") if isinstance(status, dict) else None
    return pid if isinstance(pid, int) else None


def _end(child: subprocess.Popen[bytes]) -> None:
    """Stop a child that never answered, so no daemon is left behind that nobody knows of."""
    child.terminate()
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(settings: Settings) -> int:
    from supervisor.runtime.service import lock_is_held, process_alive, read_pid

    pid = read_pid(settings.pid_path)
    if pid is None or not lock_is_held(settings.pid_path):
        fail(f"supervisord is not running (no live pid in {settings.pid_path})")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.shutdown_timeout_s + 15
    while time.monotonic() < deadline:
        if not process_alive(pid):
            print(f"supervisord stopped (pid {pid})")
            return EXIT_OK
        time.sleep(0.05)
    fail(
        f"supervisord (pid {pid}) did not exit in time; it may still be finishing a "
        "transition: check supervisord.log"
    )


def _status(daemon: DaemonLocation, *, as_json: bool) -> int:
    client = SocketClient(
        daemon.socket_path, timeout_s=daemon.client_timeout_s, pid_path=daemon.pid_path
    )
    answer = client.call("GET", "/v1/status")
    if as_json:  # as the daemon's model writes itself: UTF-8, not \u escapes
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        return EXIT_OK
    from supervisor.cli.views import DaemonStatus

    status = DaemonStatus.from_json(answer)
    phases = ", ".join(f"{n} {phase}" for phase, n in status.runs_by_phase.items()) or "none"
    calls = ", ".join(f"{op} {n}" for op, n in status.aws_calls.items()) or "none"
    print(f"supervisord {status.version} running, pid {status.pid}, up {ago(status.started_at)}")
    print(f"state directory: {status.state_dir}")
    if status.database:  # a daemon of before issue 14 does not say
        print(f"database: {status.database}")
    print(f"monitors: {status.monitors}; runs: {phases}")
    print(f"AWS calls since start: {calls}")
    restarts = ", ".join(f"{task} {n}" for task, n in status.root_task_restarts.items())
    print(f"root task restarts: {restarts or 'none'}")
    if status.metrics_url:
        print(f"metrics: {status.metrics_url}")
    if status.http_url:
        print(f"dashboard: {status.http_url}")
    _print_replicas(status)
    _print_notifications(status)
    return EXIT_OK


def _print_replicas(status: DaemonStatus) -> None:
    """Issue 14: this daemon's role among the replicas on its database, and each replica."""
    if not status.replica_id:
        return
    if status.role == "sole":
        print(f"replica: {status.replica_id}, sole daemon on its database (holds every run)")
    else:
        print(f"replica: {status.replica_id}, one of several: owns {status.runs_owned} run(s)")
    live = [r for r in status.replicas if r.state != "stopped"]
    if status.role == "sole" or not live:
        return
    print("replicas:")
    for r in live:
        seen = "alive" if r.alive else "silent"
        print(
            f"  {r.replica_id:<30} {r.host:<20} {r.state:<8} {seen:<6} "
            f"heartbeat {ago(r.heartbeat_at)}, {r.runs_owned} run(s)"
        )


def _print_notifications(status: DaemonStatus) -> None:
    """Issue 15: the outbox's rows by state, and each notification URL (redacted)."""
    from datetime import datetime

    shown = status.notifications
    if shown is None:
        print("notifications: off (no SUPERVISOR_NOTIFY_URLS)")
        return
    print(
        f"notifications: {shown['pending']} pending, {shown['sent']} sent, {shown['failed']} failed"
    )
    for target in shown["targets"]:
        if target["last_ok"] is None:
            last = "nothing sent yet"
        elif target["last_ok"]:
            last = f"last sent {ago(datetime.fromisoformat(target['last_at']))}"
        else:
            when = ago(datetime.fromisoformat(target["last_at"]))
            last = f"last FAILED {when}: {target['last_error']}"
        print(
            f"  {printable(target['target'])}: {target['pending']} pending, "
            f"{target['failed_rows']} failed; since start {target['sent']} sent, "
            f"{target['failed']} failed; {printable(last)}"
        )


if __name__ == "__main__":
    sys.exit(main())
