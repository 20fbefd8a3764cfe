"""The light control client reads the daemon's answers, whole or chunked, and turns a socket
that answers garbage, closes mid-answer, or says nothing into the project's errors, each
naming the socket. The peer is a real Unix socket served by a thread of this test."""

from __future__ import annotations

import re
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.adapters.control_client import (
    ControlError,
    DaemonNotAnswering,
    DaemonNotRunning,
    SocketClient,
)


@pytest.fixture
def socket_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sv", dir="/tmp") as folder:
        yield Path(folder) / "supervisord.sock"


def serve_once(path: Path, answer: bytes, *, close: bool = True) -> threading.Event:
    """Accept one connection, read the request's head, send `answer`; close unless told not
    to (then hold the connection until the returned event is set)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    release = threading.Event()

    def run() -> None:
        connection, _ = listener.accept()
        with connection, listener:
            received = b""
            while b"\r\n\r\n" not in received:
                received += connection.recv(4096)
            connection.sendall(answer)
            if not close:
                release.wait(30)

    threading.Thread(target=run, daemon=True).start()
    return release


def test_a_content_length_answer_is_read_without_waiting_for_the_close(
    socket_path: Path,
) -> None:
    body = b'[{"run_id": "r1"}]'
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    release = serve_once(socket_path, head + body, close=False)
    try:
        assert SocketClient(socket_path, timeout_s=10).call("GET", "/v1/runs") == [{"run_id": "r1"}]
    finally:
        release.set()


def test_a_chunked_answer_is_joined(socket_path: Path) -> None:
    answer = (
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n'
    )
    serve_once(socket_path, answer)
    assert SocketClient(socket_path).call("GET", "/v1/status") == {"a": 1}


def test_a_refusal_carries_the_daemons_message_and_kind(socket_path: Path) -> None:
    body = b'{"error": "unknown run r9", "kind": "unknown_run"}'
    head = f"HTTP/1.1 404 Not Found\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    serve_once(socket_path, head + body)
    with pytest.raises(ControlError, match="unknown run r9") as refused:
        SocketClient(socket_path).call("GET", "/v1/runs/r9")
    assert refused.value.kind == "unknown_run"


def test_an_answer_cut_short_says_the_daemon_closed_the_connection(socket_path: Path) -> None:
    serve_once(socket_path, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[1, 2")
    with pytest.raises(ControlError, match=re.escape(f"closed the connection on {socket_path}")):
        SocketClient(socket_path).call("GET", "/v1/runs")


def test_garbage_instead_of_http_says_the_daemon_closed_the_connection(
    socket_path: Path,
) -> None:
    serve_once(socket_path, b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(ControlError, match="not an HTTP answer"):
        SocketClient(socket_path).call("GET", "/v1/runs")


def test_a_silent_daemon_is_reported_as_not_answering(socket_path: Path) -> None:
    release = serve_once(socket_path, b"", close=False)
    try:
        with pytest.raises(DaemonNotAnswering, match=r"did not answer within 0\.2s"):
            SocketClient(socket_path, timeout_s=0.2).call("GET", "/v1/runs")
    finally:
        release.set()


def test_a_socket_nobody_listens_on_is_a_stale_daemon(socket_path: Path) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(socket_path))
    dead.close()  # the file stays, nothing listens: a daemon killed with -9
    pid_path = socket_path.with_name("supervisord.pid")
    pid_path.write_text("4242\n")
    with pytest.raises(DaemonNotRunning, match=r"stale socket .* from pid 4242"):
        SocketClient(socket_path, pid_path=pid_path).call("GET", "/v1/runs")


def test_no_socket_file_is_a_daemon_not_running(socket_path: Path) -> None:
    with pytest.raises(DaemonNotRunning, match="no socket at"):
        SocketClient(socket_path).call("GET", "/v1/runs")
