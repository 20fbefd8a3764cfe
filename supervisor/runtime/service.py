"""`supervisord start --foreground`: the process around the daemon.

Holds the state directory's lock (an flock on `supervisord.pid`, so a killed daemon never
leaves a stale lock), sets up logging, opens the store and the AWS adapter, installs the
SIGTERM/SIGINT handlers, and runs the daemon until it is asked to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import structlog

from supervisor.adapters.aws import Aws
from supervisor.adapters.faults import FaultPlan
from supervisor.adapters.shell import LocalShell, SsmShell
from supervisor.adapters.store import Store
from supervisor.core.errors import SupervisorError
from supervisor.core.inbox import NOTICE_CHANNELS
from supervisor.core.spec import Transport
from supervisor.runtime.daemon import Daemon
from supervisor.runtime.log_config import configure_logging
from supervisor.runtime.ports import InstanceShell, Notices, NotificationSender, RunStore
from supervisor.runtime.settings import Settings

log = structlog.get_logger("supervisor.service")


class AlreadyRunning(SupervisorError):
    pass


def prepare_state_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def read_pid(pid_path: Path) -> int | None:
    try:
        text = pid_path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie awaiting its reaper."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def lock_is_held(pid_path: Path) -> bool:
    """True when a live daemon holds the state directory's lock."""
    try:
        fd = os.open(pid_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def state_lock(settings: Settings) -> Iterator[None]:
    """Hold the one-daemon-per-state-directory lock, with our pid in the file."""
    fd = os.open(settings.pid_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = read_pid(settings.pid_path)
            raise AlreadyRunning(
                f"supervisord is already running (pid {pid if pid else 'unknown'}) for state "
                f"directory {settings.state_dir}: stop it with `supervisord stop`, or use "
                "another SUPERVISOR_STATE_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                settings.pid_path.unlink()
    finally:
        os.close(fd)


async def serve(
    settings: Settings, *, on_ready: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Run the daemon until SIGTERM or SIGINT; return after a clean shutdown."""
    faults = FaultPlan.parse(settings.faults) if settings.faults else None
    if faults:
        log.warning("fault_injection_enabled", plan=settings.faults)
    store = await open_store(settings)
    try:
        async with Aws(faults=faults) as aws, open_notices(settings) as notices:
            shells: dict[Transport, InstanceShell] = {
                Transport.LOCAL: LocalShell(),
                Transport.SSM: SsmShell(aws),
            }
            # sole_replica: on SQLite the state directory's lock proves no other daemon uses
            # the file, so duty leases are taken over at start.
            daemon = Daemon(
                settings, store, aws, shells=shells, queue=aws, notices=notices,
                sole_replica=not settings.database_url,
                notification_sender=notification_sender(settings, faults),
            )  # fmt: skip
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(
                    signum, daemon.request_shutdown, signal.Signals(signum).name
                )
            try:
                await daemon.serve(on_ready=on_ready)
            finally:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(signum)
    finally:
        await store.close()


def run_foreground(settings: Settings, *, console: bool) -> None:
    """The whole life of a daemon process. Raises `AlreadyRunning` if another holds the lock."""
    os.umask(0o077)
    prepare_state_dir(settings.state_dir)
    with state_lock(settings):
        configure_logging(settings.log_path, console=console, level=settings.log_level)
        log.info(
            "daemon_starting",
            state_dir=str(settings.state_dir),
            pid=os.getpid(),
            database=settings.database_shown,
        )
        asyncio.run(serve(settings))


# -- issue 14: the database backend -------------------------------------------------------------


async def open_store(settings: Settings) -> RunStore:
    """The run database the settings choose: PostgreSQL at `SUPERVISOR_DATABASE_URL`, or the
    SQLite file in the state directory. Raises `InvalidInput` (one line, naming the setting,
    password redacted) for a database that does not connect."""
    if settings.database_url:
        from supervisor.adapters.pg_store import PgStore  # psycopg only when it is used

        return await PgStore.open(settings.database_url)
    return await Store.open(settings.db_path)


@contextlib.asynccontextmanager
async def open_notices(settings: Settings) -> AsyncIterator[Notices | None]:
    """PostgreSQL's LISTEN for the replicas' wake-ups (None on SQLite: the daemon polls)."""
    if not settings.database_url:
        yield None
        return
    from supervisor.adapters.pg_notices import PgNotices

    async with PgNotices(settings.database_url, NOTICE_CHANNELS) as notices:
        yield notices


def check_database(settings: Settings) -> None:
    """Before a daemon starts (in the foreground, or detached, where its own error would go
    to its log): raise `InvalidInput` (one line) if `SUPERVISOR_DATABASE_URL` does not
    connect, so `supervisord start` says why itself."""
    if settings.database_url:
        from supervisor.adapters.pg_store import check_connects

        asyncio.run(check_connects(settings.database_url))


# -- issue 15: notifications ----------------------------------------------------------------------


def notification_sender(settings: Settings, faults: FaultPlan | None) -> NotificationSender | None:
    """The Apprise sender of `SUPERVISOR_NOTIFY_URLS` (None without URLs). Raises
    `InvalidInput` (one line, no URL in it) for a URL Apprise cannot use."""
    if not settings.notify_url_list:
        return None
    from supervisor.adapters.notify import AppriseSender

    return AppriseSender(
        settings.notify_url_list, timeout_s=settings.notify_timeout_s, faults=faults
    )


def check_notify_urls(settings: Settings) -> None:
    """Before a daemon starts: `InvalidInput` for a notification URL Apprise cannot use."""
    notification_sender(settings, None)
