"""`supervisorctl migrate-db --to URL`: move this state directory's SQLite run database into an
empty PostgreSQL database, for replicas (README, "Running replicas").

The daemon must be stopped: the copy holds the state directory's lock (the flock on
`supervisord.pid` that supervisord itself takes), so it is refused while a daemon runs, and a
daemon started during the copy is refused in turn. The copy itself is
`supervisor.adapters.migrate_db`'s.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
from collections.abc import Iterator

from supervisor.cli.common import EXIT_OK, DaemonLocation, fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--to",
        required=True,
        metavar="URL",
        help="the empty PostgreSQL database: postgresql://USER@HOST:PORT/DATABASE (the "
        "password from the URL, PGPASSWORD or ~/.pgpass; never printed)",
    )


def migrate_db(args: argparse.Namespace, daemon: DaemonLocation) -> int:
    from supervisor.adapters.migrate_db import MigrationRefused, copy_database
    from supervisor.runtime.log_config import configure_logging

    configure_logging(None, console=True, level="warning")  # the runner's progress: not here
    try:
        with _daemon_stopped(daemon):
            copied = copy_database(daemon.db_path, args.to)
    except MigrationRefused as exc:
        fail(str(exc))
    width = max(len(t.table) for t in copied.tables)
    for table in copied.tables:
        print(f"  {table.table:<{width}}  {table.rows} rows")
    print(
        f"copied {copied.rows} rows in {len(copied.tables)} tables from {copied.source} to "
        f"{copied.target} (schema version {copied.schema_version}); every table's row count "
        "matches"
    )
    print(
        f"not copied: {', '.join(copied.left_behind)} (this daemon's own; the replicas make "
        "theirs); every run goes over unowned, for a replica to claim"
    )
    print(
        f"next: set SUPERVISOR_DATABASE_URL={copied.target} (with its password, or use "
        "PGPASSWORD or ~/.pgpass) for every replica, and start them"
    )
    return EXIT_OK


@contextlib.contextmanager
def _daemon_stopped(daemon: DaemonLocation) -> Iterator[None]:
    """Hold the state directory's lock for as long as the copy takes, or fail saying which
    daemon holds it."""
    if not daemon.state_dir.is_dir():
        yield  # no state directory: no daemon, and no database (the copy says so)
        return
    existed = daemon.pid_path.exists()
    fd = os.open(daemon.pid_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fail(
                f"supervisord is running (pid {_pid(daemon) or 'unknown'}) for state directory "
                f"{daemon.state_dir}: stop it with `supervisord stop` first, then run "
                "migrate-db again"
            )
        try:
            yield
        finally:
            if not existed:  # leave no empty pid file behind for the daemon's readers
                with contextlib.suppress(FileNotFoundError):
                    daemon.pid_path.unlink()
    finally:
        os.close(fd)


def _pid(daemon: DaemonLocation) -> int | None:
    try:
        text = daemon.pid_path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
