"""The real daemon's `/metrics`: over TCP on 127.0.0.1 (an ephemeral port, found through
`supervisord status`) and over the control socket, parsed with prometheus-client's parser,
its counters moving as a run completes and is stopped. And the ways a bad address is refused."""

from __future__ import annotations

import http.client
import socket
import urllib.request
from collections.abc import Mapping

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Fleet
from tests.e2e.conftest import Cli, wait_for

pytestmark = pytest.mark.e2e

Samples = Mapping[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class UnixConnection(http.client.HTTPConnection):
    """HTTP over the daemon's Unix socket, as `curl --unix-socket` would talk to it."""

    def __init__(self, path: str) -> None:
        super().__init__("supervisord")
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


def over_socket(cli: Cli) -> tuple[str, Samples]:
    connection = UnixConnection(str(cli.socket_path))
    try:
        connection.request("GET", "/metrics")
        reply = connection.getresponse()
        assert reply.status == 200, reply.read()
        return reply.headers["Content-Type"], parse(reply.read().decode())
    finally:
        connection.close()


def over_tcp(url: str) -> tuple[str, Samples]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.headers["Content-Type"], parse(reply.read().decode())


def test_metrics_are_served_over_tcp_and_the_socket_and_move_with_a_run(
    cli: Cli, fleet: Fleet
) -> None:
    (instance,) = fleet.launch()
    cli.start_daemon(SUPERVISOR_METRICS_ADDR="127.0.0.1:0")
    url = cli.daemon_status()["metrics_url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics"), url
    assert int(url.removesuffix("/metrics").rpartition(":")[2]) > 0

    content_type, before = over_tcp(url)
    assert content_type.startswith("text/plain; version=")
    assert value(before, "supervisor_monitors") == 0
    assert value(before, "supervisor_aws_calls_total", service="ec2",
                 operation="StopInstances", outcome="ok") == 0  # fmt: skip

    cli.attach("m1", instance, fleet.prefix("m1"))
    cli.wait_db_phase("m1", "running")
    fleet.put("runs/m1/COMPLETE")
    cli.wait_db_phase("m1", "stopped")

    def settled() -> bool:  # the monitor has finished once it is not counted
        return value(over_tcp(url)[1], "supervisor_monitors") == 0

    wait_for(settled, message="the finished run's monitor to go")
    content_type, after = over_socket(cli)
    _, after_tcp = over_tcp(url)

    assert content_type.startswith("text/plain; version=")
    for samples in (after, after_tcp):
        for edge in ("none:pending", "pending:running", "running:grace", "grace:stopping",
                     "stopping:stopped"):  # fmt: skip
            source, target = edge.split(":")
            assert value(samples, "supervisor_transitions_total",
                         **{"from": source, "to": target}) == 1, edge  # fmt: skip
        assert value(samples, "supervisor_aws_calls_total", service="ec2",
                     operation="StopInstances", outcome="ok") == 1  # fmt: skip
        assert value(samples, "supervisor_terminations_total", source="run", action="stop",
                     outcome="accepted") == 1  # fmt: skip
        assert value(samples, "supervisor_completion_to_stop_seconds_count") == 1
        assert value(samples, "supervisor_idle_instance_seconds_total") > 0
        assert value(samples, "supervisor_runs", phase="stopped", outcome="completed") == 1


def test_a_bad_metrics_address_stops_the_start_with_what_to_do(cli: Cli) -> None:
    refused = cli.supervisord("start", SUPERVISOR_METRICS_ADDR="everywhere")
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        "supervisord: bad setting SUPERVISOR_METRICS_ADDR: expected HOST:PORT, :PORT or PORT"
    ), refused.stderr

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        in_use = cli.supervisord("start", SUPERVISOR_METRICS_ADDR=f":{port}")

    assert in_use.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port} (SUPERVISOR_METRICS_ADDR)" in in_use.stderr
    assert "give a free port on an address of this machine, or unset it" in in_use.stderr
    assert not cli.socket_path.exists()
