"""The control channel's light client: HTTP + JSON over the daemon's Unix socket with the
standard library only, for `supervisorctl` and `supervisord status`, which must answer within
a few times a bare interpreter's start (about 0.15 s).

One request per connection (`Connection: close`), read to the end: the daemon's aiohttp
server answers these routes with a Content-Length body. Not `http.client`: its imports
(`email`, `ssl`) alone take ~35 ms, a third of the budget, for what is one request line, a
few headers and a status code here.

It speaks the protocol `supervisor.adapters.control` serves (and its aiohttp `ControlClient`
speaks, for the streaming routes) and returns the daemon's JSON as it came: the caller decides
what to build from it. The errors a user sees when the daemon is down, stuck or refuses live
here, so both clients raise the same ones with the same words.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from supervisor.core.errors import SupervisorError
from supervisor.core.values import parse_run_id

CONNECT_TIMEOUT_S = 5.0
ERROR_KINDS = frozenset(
    {"invalid_input", "unknown_run", "conflict", "shutting_down", "internal", "no_answer"}
)
"""`ErrorReply.kind` (supervisor.adapters.protocol.ErrorKind)."""

MAX_BYTE_DIGITS = 18
"""The longest byte count the training-log route takes (below 2**63)."""


class DaemonNotRunning(SupervisorError):
    def __init__(self, socket_path: Path, *, stale: bool = False, pid: int | None = None) -> None:
        """`stale`: the socket file is there but nothing listens (a daemon killed with -9);
        `pid`: the dead daemon's, from its pid file."""
        if stale:
            owner = f" from pid {pid}" if pid is not None else ""
            what = f"stale socket {socket_path}{owner}: the daemon did not exit cleanly"
        else:
            what = f"no socket at {socket_path}"
        super().__init__(f"supervisord is not running ({what}): start it with `supervisord start`")


class DaemonNotAnswering(SupervisorError):
    """The socket accepts connections but the daemon sent nothing for `timeout_s` (stopped
    with SIGSTOP, or stuck)."""

    def __init__(self, socket_path: Path, timeout_s: float, pid: int | None) -> None:
        owner = f"supervisord (pid {pid})" if pid is not None else "supervisord"
        check = f"`ps -o stat= -p {pid}` (T: stopped, resume it with `kill -CONT {pid}`)"
        super().__init__(
            f"{owner} did not answer within {timeout_s:g}s on socket {socket_path}: it may be "
            f"stopped or stuck; check {check if pid is not None else 'its process'}"
        )


class ControlError(SupervisorError):
    """The daemon refused a request; `kind` is ErrorReply.kind."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def closed_early(socket_path: Path, why: str) -> ControlError:
    """The daemon closed the connection mid-answer."""
    return ControlError(
        f"supervisord closed the connection on {socket_path} ({why}): it may "
        "have exited; check `supervisord status`",
        "internal",
    )


def refusal(status: int, raw: bytes) -> ControlError:
    """An error answer (status >= 400) as the daemon's `ErrorReply`, or as what it was."""
    try:
        reply = json.loads(raw)
    except ValueError:
        reply = None
    if (
        isinstance(reply, dict)
        and isinstance(reply.get("error"), str)
        and reply.get("kind") in ERROR_KINDS
    ):
        return ControlError(reply["error"], reply["kind"])
    return ControlError(f"supervisord answered {status}: {raw[:200]!r}", "internal")


def read_daemon_pid(pid_path: Path | None) -> int | None:
    """The daemon's pid from its pid file, only to name it in an error."""
    if pid_path is None:
        return None
    try:
        text = pid_path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


class _Garbled(Exception):
    """The bytes that came back are not an HTTP answer."""


def _exchange(sock: socket.socket, request: bytes) -> tuple[int, bytes]:
    """Send one request; the answer's status and body, read until its Content-Length is in
    (or, without one, until the daemon closes, as `Connection: close` asks it to)."""
    sock.sendall(request)
    received = b""
    length: int | None = None
    while True:
        chunk = sock.recv(65536)
        received += chunk
        head, separator, body = received.partition(b"\r\n\r\n")
        if separator and length is None:
            status, headers = _head(head)
            if headers.get("transfer-encoding", "").lower() != "chunked":
                declared = headers.get("content-length", "")
                length = int(declared) if declared.isdigit() else None
        if length is not None and len(body) >= length:
            return status, body[:length]
        if not chunk:
            break
    if not separator:
        raise _Garbled("no complete HTTP answer")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return status, _unchunked(body)
    if length is not None:
        raise _Garbled(f"{len(body)} of {length} bytes")
    return status, body


def _head(head: bytes) -> tuple[int, dict[str, str]]:
    """The status and the headers (names in lower case) of an answer's head."""
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
        raise _Garbled(f"not an HTTP answer: {lines[0][:80]!r}")
    if not status_line[1].isdigit():
        raise _Garbled(f"status {status_line[1]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line[1]), headers


def _unchunked(data: bytes) -> bytes:
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            raise _Garbled("a bad chunk size") from None
        if size == 0:
            return body
        body, data = body + data[:size], data[size + 2 :]


class SocketClient:
    """One request per call, each on a new connection, as the aiohttp client does:
    `SocketClient(path).call("GET", "/v1/runs")` returns the answer's JSON."""

    def __init__(
        self, socket_path: Path, *, timeout_s: float | None = 60.0, pid_path: Path | None = None
    ) -> None:
        """`timeout_s`: the longest wait for the daemon's next bytes. `pid_path`: the
        daemon's pid file, read only to name the pid in an error."""
        self.socket_path = socket_path
        self._timeout_s = timeout_s
        self._pid_path = pid_path

    def __repr__(self) -> str:
        return f"<SocketClient socket={self.socket_path}>"

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, **params: str
    ) -> Any:
        """The JSON the daemon answered, or the project's error for what went wrong."""
        if not self.socket_path.exists():
            raise DaemonNotRunning(self.socket_path)
        target = f"{path}?{urlencode(params)}" if params else path
        data = json.dumps(body, allow_nan=False).encode() if body is not None else b""
        request = (
            f"{method} {target} HTTP/1.1\r\nHost: supervisord\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii") + data
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.settimeout(CONNECT_TIMEOUT_S)
                sock.connect(str(self.socket_path))
            except TimeoutError as exc:
                raise DaemonNotAnswering(
                    self.socket_path, CONNECT_TIMEOUT_S, read_daemon_pid(self._pid_path)
                ) from exc
            except OSError as exc:
                stale = isinstance(exc, ConnectionRefusedError) and self.socket_path.exists()
                pid = read_daemon_pid(self._pid_path)
                raise DaemonNotRunning(self.socket_path, stale=stale, pid=pid) from exc
            try:
                sock.settimeout(self._timeout_s)
                status, raw = _exchange(sock, request)
            except TimeoutError as exc:
                waited = self._timeout_s if self._timeout_s is not None else CONNECT_TIMEOUT_S
                raise DaemonNotAnswering(
                    self.socket_path, waited, read_daemon_pid(self._pid_path)
                ) from exc
            except (_Garbled, OSError) as exc:
                raise closed_early(self.socket_path, str(exc) or type(exc).__name__) from exc
        finally:
            sock.close()
        if status >= 400:
            raise refusal(status, raw)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise closed_early(self.socket_path, f"an answer that is not JSON: {exc}") from exc


def parse_since_days(text: str) -> float:
    """`report --since` as a number of days: any form `runs --since` takes (7d, 12h, or a bare
    number of days), through the same parser."""
    from supervisor.core.filters import parse_since

    return parse_since(text).total_seconds() / 86400


def since_query(days: float) -> str:
    """Days as the report's `since=`: fixed-point, which every `parse_since` form reads
    (`repr` would write 1e-05)."""
    return f"{days:.9f}".rstrip("0").rstrip(".")


def run_path(run_id: str, *rest: str) -> str:
    """`/v1/runs/RUN_ID[/...]` for a valid run id, quoted, so no id (`x/../RUN`, `RUN?x=1`,
    `RUN#f`) can reach another run or another route: an invalid one is refused first."""
    quoted = quote(parse_run_id(run_id), safe="")
    return "/".join(("/v1/runs", quoted, *rest))
