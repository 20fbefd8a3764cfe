"""A replica cut off from PostgreSQL for longer than its lease TTL (issue 14): the real
`supervisord` reaches the database through a TCP gate that the test closes (every
connection dropped, each new one closed at once, as a stopped server's port). The replica
makes no action meanwhile, logs `database_lost` once no renewal has succeeded for a TTL, and
exits with status 1 and one line saying why, without waiting for anything it can no longer
write. Started again once the gate opens (as systemd's Restart=on-failure does), it claims
its runs again and drives them to the end: each instance stopped once."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from supervisor.adapters.database_url import redact
from tests.conftest import Fleet
from tests.e2e.conftest import SUPERVISORD, Cli, cli_for, wait_for
from tests.e2e.test_replicas import TTL_S, AwsTap, owners, replica_env, tap, wait_all

pytestmark = pytest.mark.e2e
__all__ = ["tap"]  # the fixture, used here


class TcpGate:
    """A TCP forwarder to `upstream_port` on 127.0.0.1 that can be closed: `close()` drops
    every connection and closes each new one at once; `open()` forwards again."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._live |= {client, server}
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 0.5)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except OSError:
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._live -= {a, b}

    def close(self) -> None:
        self._open.clear()
        with self._lock:
            live, self._live = self._live, set()
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def open(self) -> None:
        self._open.set()

    def stop(self) -> None:
        self._stopping.set()
        self.close()
        self._listener.close()


@pytest.fixture
def gate(pg_url: str) -> Iterator[tuple[TcpGate, str]]:
    """The gate in front of the test server, and `pg_url` through it."""
    port = int(pg_url.rsplit(":", 1)[1].split("/", 1)[0])
    made = TcpGate(port)
    try:
        yield made, pg_url.replace(f":{port}/", f":{made.port}/")
    finally:
        made.stop()


def log_events(cli: Cli, event: str) -> list[dict[str, object]]:
    found = []
    for line in cli.log_path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == event:
                found.append(entry)
    return found


def test_a_replica_cut_off_from_the_database_for_a_ttl_exits_and_comes_back_when_restarted(
    fleet: Fleet, pg_url: str, gate: tuple[TcpGate, str], tap: tuple[AwsTap, dict[str, str]]
) -> None:
    (tcp, gated_url), (proxy, aws) = gate, tap
    runs = [f"cut-{n}" for n in range(2)]
    instances = fleet.launch(len(runs))
    with cli_for(aws) as a:
        env = {**a.env, **replica_env("replica-a", gated_url)}
        foreground = subprocess.Popen(
            [SUPERVISORD, "start", "--foreground"], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_for(lambda: a.socket_path.exists() and a.ctl("status").returncode == 0,
                     message=lambda: f"the replica to answer{a.log_tail()}")  # fmt: skip
            for run, instance in zip(runs, instances, strict=True):
                a.attach(run, instance, fleet.prefix(run))
            wait_all(a, pg_url, "running", runs)

            tcp.close()
            cut_at = time.monotonic()
            for run in runs:  # the jobs end while the replica cannot commit
                fleet.put(f"runs/{run}/COMPLETE")
            returncode = foreground.wait(timeout=120)
            took = time.monotonic() - cut_at
            stderr = foreground.stderr.read() if foreground.stderr else ""
        finally:
            if foreground.poll() is None:
                foreground.kill()
                foreground.wait()

        assert returncode == 1, stderr
        last = stderr.splitlines()[-1]  # after the console's log lines
        assert last.startswith("supervisord: replica replica-a could not renew its leases for")
        assert "service manager starts it again once the database answers" in last
        (lost,) = log_events(a, "database_lost")
        assert lost["monitors_dropped"] == len(runs)
        assert float(str(lost["silent_s"])) >= TTL_S
        assert took < 60  # a TTL after the last renewal, not the store's retries on each call
        assert proxy.stops() == Counter()  # nothing was acted on while cut off
        assert redact(gated_url) in a.log_path.read_text()
        assert log_events(a, "leases_handed_back") == []  # it could not write them

        tcp.open()  # the database answers again: systemd's restart
        a.start_daemon(**replica_env("replica-a", gated_url))
        wait_all(a, pg_url, "stopped", runs)
        assert set(owners(pg_url).values()) <= {None, "replica-a"}
        assert proxy.stops() == Counter({instance: 1 for instance in instances})
        a.stop_daemon()
