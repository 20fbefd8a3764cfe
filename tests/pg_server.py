"""A throwaway PostgreSQL server for the tests, from the Debian binaries on this machine.

`PostgresServer.start()` runs `initdb` in a temporary directory and `pg_ctl start` on
127.0.0.1 and a free port (as the `postgres` user via `runuser` when we are root: postgres
refuses to run as root). Password authentication over TCP (scram-sha-256) is on, so tests see
real credentials: `server.url("db")` carries the superuser's password, `server.url("db",
password=None)` does not. `create_database()` gives each test a fresh, empty database.

Run it alone to try it: `python -m tests.pg_server` starts one, prints its URL and waits.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

SUPERUSER = "postgres"


def postgres_bin() -> Path:
    """The newest `/usr/lib/postgresql/N/bin` with `initdb` in it."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not found:
        raise RuntimeError(
            "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin: `make test` installs "
            "the Debian package `postgresql` (apt-get install -y postgresql)"
        )
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """One running server: `start()`, `url(db)`, `create_database()`, `stop()`."""

    root: Path
    port: int
    password: str
    _counter: int = field(default=0)

    @classmethod
    def start(cls, *, durable: bool = False) -> PostgresServer:
        """`durable`: fsync and synchronous commits on, as in production (the benchmark's
        figures); off by default, the tests do not crash the server."""
        bindir = postgres_bin()
        root = Path(tempfile.mkdtemp(prefix="supervisor-pg-"))
        as_root = os.geteuid() == 0
        if as_root:
            shutil.chown(root, user=SUPERUSER)
        root.chmod(0o700)
        password = secrets.token_hex(12)
        pwfile = root / "pw"
        pwfile.write_text(password + "\n")
        if as_root:
            shutil.chown(pwfile, user=SUPERUSER)

        def run(*argv: str) -> None:
            cmd = ["runuser", "-u", SUPERUSER, "--", *argv] if as_root else list(argv)
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)

        data = root / "data"
        run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "--pwfile",
            str(pwfile),
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()
        port = _free_port()
        # Tuned for throwaway test databases: no fsync (the tests do not crash the server).
        options = (
            f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB"
        )
        if durable:
            options = f"-h 127.0.0.1 -p {port} -k {root} -c max_connections=300"
        run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        server = cls(root=root, port=port, password=password)
        server._wait_ready()
        return server

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=5):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def url(self, dbname: str, *, password: str | None = "") -> str:
        """A libpq URL for `dbname`; with the superuser's password unless `password=None`,
        or another password if one is given."""
        secret = self.password if password == "" else password
        auth = f"{SUPERUSER}:{secret}" if secret is not None else SUPERUSER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; its name."""
        self._counter += 1
        name = f"{prefix}_{os.getpid()}_{self._counter}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return name

    def stop(self) -> None:
        bindir = postgres_bin()
        cmd = [str(bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop"]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
        with contextlib.suppress(subprocess.SubprocessError):
            subprocess.run(cmd, capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running(*, durable: bool = False) -> Iterator[PostgresServer]:
    server = PostgresServer.start(durable=durable)
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    with running() as server:
        print(server.url("postgres"), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
