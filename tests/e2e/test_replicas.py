"""Replicas (issue 14): real `supervisord` processes on one PostgreSQL database and the moto
server, each in its own state directory. One is SIGKILLed: the other claims its runs, every
run completes and each instance is stopped exactly once. One is SIGSTOPped until its leases
moved: resumed, it makes no AWS call and commits nothing.

Every AWS request of the daemons goes through a tap (a forwarding proxy in front of moto)
that keeps what it forwarded and when: the counts of StopInstances per instance, and the calls
a resumed replica made, are read there, not from the daemons' own word."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest

from tests.conftest import Fleet
from tests.e2e.conftest import Cli, assert_chained, cli_for, wait_for

pytestmark = pytest.mark.e2e

TTL_S = 3
"""The replicas' lease TTL: a claim every second, a dead replica's runs taken within ~4 s."""
_HOP_HEADERS = {"connection", "transfer-encoding", "keep-alive", "content-length"}


@dataclass(frozen=True)
class Tapped:
    """One request forwarded to moto: when it arrived (monotonic), the EC2 query action (empty
    for S3 and JSON services) and the instance ids it names."""

    at: float
    action: str
    instances: tuple[str, ...]
    request: str
    """Its method and path."""


@dataclass
class AwsTap:
    """A forwarding HTTP proxy to `upstream` that keeps every request (`Tapped`). While
    `holding`, a request is kept but not forwarded until `release()`: its caller waits."""

    upstream: str
    requests: list[Tapped] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _open: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._open.set()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        tap = self

        class Forward(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                tap.keep(f"{self.command} {self.path}", body)
                tap._open.wait(timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                request = urllib.request.Request(
                    tap.upstream + self.path, data=body or None, headers=headers,
                    method=self.command,
                )  # fmt: skip
                try:
                    with urllib.request.urlopen(request, timeout=30) as reply:
                        status, reply_headers, data = reply.status, reply.headers, reply.read()
                except urllib.error.HTTPError as error:
                    status, reply_headers, data = error.code, error.headers, error.read()
                self.send_response(status)
                for name, value in reply_headers.items():
                    if name.lower() not in _HOP_HEADERS:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()

    def keep(self, request: str, body: bytes) -> None:
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace")) if body else {}
        action = form.get("Action", [""])[0]
        instances = tuple(v[0] for k, v in sorted(form.items()) if k.startswith("InstanceId."))
        with self._lock:
            self.requests.append(Tapped(time.monotonic(), action, instances, request))

    def since(self, at: float) -> list[Tapped]:
        with self._lock:
            return [r for r in self.requests if r.at >= at]

    def stops(self) -> Counter[str]:
        """StopInstances requests per instance."""
        with self._lock:
            return Counter(i for r in self.requests if r.action == "StopInstances"
                           for i in r.instances)  # fmt: skip


@pytest.fixture
def tap(moto_url: str, aws_env: dict[str, str]) -> Iterator[tuple[AwsTap, dict[str, str]]]:
    """The tap in front of moto, and the AWS environment that points the daemons at it."""
    proxy = AwsTap(moto_url)
    with proxy.serving() as url:
        yield proxy, {**aws_env, "AWS_ENDPOINT_URL": url}


@pytest.fixture
def second_tap(moto_url: str, aws_env: dict[str, str]) -> Iterator[tuple[AwsTap, dict[str, str]]]:
    """Another tap: one replica's calls apart from the other's."""
    proxy = AwsTap(moto_url)
    with proxy.serving() as url:
        yield proxy, {**aws_env, "AWS_ENDPOINT_URL": url}


def replica_env(name: str, pg_url: str, **more: str) -> dict[str, str]:
    return {
        "SUPERVISOR_DATABASE_URL": pg_url,
        "SUPERVISOR_REPLICA_ID": name,
        "SUPERVISOR_LEASE_TTL_S": str(TTL_S),
        "SUPERVISOR_ZOMBIE_INTERVAL_S": "3600",  # fleet-wide sweeps are another helper's part
        "SUPERVISOR_IDLE_INTERVAL_S": "3600",
        **more,
    }


def pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql.encode()).fetchall())


def owners(url: str) -> dict[str, str | None]:
    return {str(run_id): owner for run_id, owner in pg_rows(url, "SELECT run_id, owner FROM runs")}


def history(url: str) -> list[tuple[Any, ...]]:
    """Every committed row a monitor writes: the runs without their lease, their transitions,
    their actions."""
    return [
        *pg_rows(url, "SELECT run_id, phase, version, updated_at FROM runs ORDER BY run_id"),
        *pg_rows(url, "SELECT run_id, seq, to_phase FROM transitions ORDER BY run_id, seq"),
        *pg_rows(url, "SELECT run_id, action, outcome FROM actions ORDER BY id"),
    ]


def heartbeat(url: str, replica_id: str) -> float:
    """The replica's last heartbeat, as a POSIX time."""
    [(at,)] = pg_rows(url, f"SELECT heartbeat_at FROM replicas WHERE replica_id = '{replica_id}'")
    return datetime.fromisoformat(at).timestamp()


def wait_all(cli: Cli, url: str, phase: str, runs: list[str]) -> None:
    def reached() -> bool:
        phases = dict(pg_rows(url, "SELECT run_id, phase FROM runs"))
        return all(phases.get(run) == phase for run in runs)

    wait_for(reached, message=lambda: f"every run {phase}: {owners(url)}{cli.log_tail()}")


def log_events(cli: Cli, event: str) -> int:
    return sum(f'"event": "{event}"' in line for line in cli.log_path.read_text().splitlines())


def test_two_replicas_one_sigkilled_every_run_completes_and_each_instance_stops_once(
    fleet: Fleet, pg_url: str, tap: tuple[AwsTap, dict[str, str]]
) -> None:
    proxy, aws = tap
    runs = [f"fo-{n}" for n in range(6)]
    instances = fleet.launch(len(runs))
    with cli_for(aws) as a, cli_for(aws) as b:
        a.start_daemon(**replica_env("replica-a", pg_url))
        for run, instance in zip(runs, instances, strict=True):
            a.attach(run, instance, fleet.prefix(run))
        b.start_daemon(**replica_env("replica-b", pg_url))
        wait_all(a, pg_url, "running", runs)
        # A hands back what is above its fair share; B claims it.
        wait_for(
            lambda: Counter(owners(pg_url).values()) == {"replica-a": 3, "replica-b": 3},
            message=lambda: f"the runs to spread over both replicas: {owners(pg_url)}",
        )

        for run in runs:  # every job ends; A dies in the middle of handling it
            fleet.put(f"runs/{run}/COMPLETE")
        a.kill_daemon()
        killed_at = time.monotonic()
        wait_all(b, pg_url, "stopped", runs)

        assert set(owners(pg_url).values()) <= {"replica-b", None}
        assert time.monotonic() - killed_at < 60  # within the TTL and a claim, and the stops
        assert proxy.stops() == Counter({instance: 1 for instance in instances})
        assert all(fleet.state(instance) == "stopped" for instance in instances)
        for run in runs:
            detail = b.ctl_json("status", run)
            assert_chained(detail["transitions"])
            assert detail["outcome"] == "completed"
            assert [t["to"] for t in detail["transitions"]].count("stopped") == 1
        # The survivor holds the fleet-wide duties (the zombie sweep) once the dead one's
        # duty lease ran out: its role says so.
        wait_for(
            lambda: b.daemon_status()["role"] == "leader",
            message=lambda: f"replica-b to take the leader duty: {b.daemon_status()['role']}",
        )
        status = b.daemon_status()
        listed = {r["replica_id"]: r for r in status["replicas"]}
        assert listed["replica-a"]["alive"] is False
        assert listed["replica-b"]["alive"] is True
        b.stop_daemon()


def test_a_sigstopped_replica_resumed_after_its_leases_moved_makes_no_call_and_no_commit(
    fleet: Fleet,
    pg_url: str,
    tap: tuple[AwsTap, dict[str, str]],
    second_tap: tuple[AwsTap, dict[str, str]],
) -> None:
    """A is frozen while every task of it that calls AWS waits for an answer (held at its
    tap), so no call of it is half-made at the freeze: a request reaching its tap after the
    freeze is a call it started after waking. The answers it gets on waking say that every
    job is complete: it would commit and stop, if the fence let it."""
    (a_tap, a_aws), (b_tap, b_aws) = tap, second_tap
    runs = [f"fz-{n}" for n in range(4)]
    instances = fleet.launch(len(runs))
    with cli_for(a_aws) as a, cli_for(b_aws) as b:
        a_pid = a.start_daemon(**replica_env("replica-a", pg_url))
        for run, instance in zip(runs, instances, strict=True):
            a.attach(run, instance, fleet.prefix(run))
        wait_all(a, pg_url, "running", runs)

        a_tap.hold()
        held_at = time.monotonic()

        def all_waiting() -> bool:
            held = [r.request for r in a_tap.since(held_at)]
            listing = {run for run in runs if any(f"prefix=runs%2F{run}%2F" in r for r in held)}
            described = any(r.action == "DescribeInstanceStatus" for r in a_tap.since(held_at))
            return listing == set(runs) and described

        wait_for(all_waiting, message=lambda: f"A's monitors and sweep to wait on their calls"
                 f": {a_tap.since(held_at)}")  # fmt: skip
        os.kill(a_pid, signal.SIGSTOP)
        try:
            frozen_requests = len(a_tap.requests)
            b.start_daemon(**replica_env("replica-b", pg_url))
            wait_for(
                lambda: set(owners(pg_url).values()) == {"replica-b"},
                message=lambda: f"B to claim every run: {owners(pg_url)}{b.log_tail()}",
            )
            for run in runs:  # the jobs end: B stops the instances
                fleet.put(f"runs/{run}/COMPLETE")
            wait_all(b, pg_url, "stopped", runs)
            before = history(pg_url)
            assert len(a_tap.requests) == frozen_requests  # frozen: A sent nothing
        finally:
            a_tap.release()  # A's answers (every job complete) wait in its sockets
            os.kill(a_pid, signal.SIGCONT)

        # A wakes, finds every lease gone (its renewal, a refused commit, or its own clock:
        # each logs lease_lost), and drops its monitors; then it goes on with its rounds.
        wait_for(
            lambda: log_events(a, "lease_lost") >= len(runs),
            message=lambda: f"A to drop its monitors{a.log_tail()}",
        )
        status = a.daemon_status()
        assert status["runs_owned"] == 0 and status["monitors"] == 0
        woke = heartbeat(pg_url, "replica-a")
        wait_for(
            lambda: heartbeat(pg_url, "replica-a") >= woke + 2 * TTL_S / 3,
            message=lambda: f"two more lease rounds of A{a.log_tail()}",
        )

        assert len(a_tap.requests) == frozen_requests  # no call made after waking
        assert history(pg_url) == before  # no commit
        assert b_tap.stops() == Counter({instance: 1 for instance in instances})
        assert a_tap.stops() == Counter()
        assert log_events(a, "action_requested") == 0


def test_a_replica_stopped_cleanly_hands_its_runs_over_before_its_leases_would_expire(
    fleet: Fleet, pg_url: str, tap: tuple[AwsTap, dict[str, str]]
) -> None:
    proxy, aws = tap
    runs = [f"hb-{n}" for n in range(3)]
    instances = fleet.launch(len(runs))
    with cli_for(aws) as a, cli_for(aws) as b:
        slow = {"SUPERVISOR_LEASE_TTL_S": "30"}  # the default: a lease outlives the test's wait
        a.start_daemon(**replica_env("replica-a", pg_url, **slow))
        for run, instance in zip(runs, instances, strict=True):
            a.attach(run, instance, fleet.prefix(run))
        b.start_daemon(**replica_env("replica-b", pg_url, **slow))
        wait_all(a, pg_url, "running", runs)
        assert set(owners(pg_url).values()) == {"replica-a"}  # within its fair share + slack

        [(earliest,)] = pg_rows(pg_url, "SELECT MIN(lease_until) FROM runs")
        a.stop_daemon()
        wait_for(
            lambda: set(owners(pg_url).values()) == {"replica-b"},
            message=lambda: f"B to claim the runs handed back: {owners(pg_url)}{b.log_tail()}",
        )
        # Claimed before any of A's leases would have expired: A handed them back.
        assert datetime.now(UTC) < datetime.fromisoformat(earliest)
        for run in runs:
            fleet.put(f"runs/{run}/COMPLETE")
        wait_all(b, pg_url, "stopped", runs)

        assert proxy.stops() == Counter({instance: 1 for instance in instances})
        [(state,)] = pg_rows(pg_url, "SELECT state FROM replicas WHERE replica_id = 'replica-a'")
        assert state == "stopped"
        b.stop_daemon()
