"""The control channel's light client: HTTP + JSON over the daemon's Unix socket with the
standard library only (`http.client` on an `AF_UNIX` socket), for `supervisorctl` and
`supervisord status`, which must answer within a few times a bare interpreter's start.

It speaks the protocol `supervisor.adapters.control` serves (and its aiohttp `ControlClient`
speaks, for the streaming routes) and returns the daemon's JSON as it came: the caller decides
what to build from it. The errors a user sees when the daemon is down, stuck or refuses live
here, so both clients raise the same ones with the same words.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from supervisor.core.errors import SupervisorError
from supervisor.core.values import parse_run_id

if TYPE_CHECKING:
    import http.client

CONNECT_TIMEOUT_S = 5.0
ERROR_KINDS = frozenset({"invalid_input", "unknown_run", "conflict", "shutting_down", "internal"})
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


def _unix_connection(socket_path: Path, timeout_s: float | None) -> http.client.HTTPConnection:
    """`http.client` over the daemon's Unix socket (the host name is only the Host header).
    Imported here, not at module level: `supervisorctl --help` and the query verbs do not
    pay for it (it loads `email` and `ssl`)."""
    import http.client

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(CONNECT_TIMEOUT_S)
                sock.connect(str(socket_path))
                sock.settimeout(self.timeout)
            except BaseException:
                sock.close()
                raise
            self.sock = sock

    return UnixConnection("supervisord", timeout=timeout_s)


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
        data = json.dumps(body, allow_nan=False).encode() if body is not None else None
        connection = _unix_connection(self.socket_path, self._timeout_s)
        import http.client

        try:
            try:
                connection.connect()
            except TimeoutError as exc:
                raise DaemonNotAnswering(
                    self.socket_path, CONNECT_TIMEOUT_S, read_daemon_pid(self._pid_path)
                ) from exc
            except OSError as exc:
                stale = isinstance(exc, ConnectionRefusedError) and self.socket_path.exists()
                pid = read_daemon_pid(self._pid_path)
                raise DaemonNotRunning(self.socket_path, stale=stale, pid=pid) from exc
            try:
                connection.request(
                    method, target, body=data, headers={"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                raw = response.read()
            except TimeoutError as exc:
                waited = self._timeout_s if self._timeout_s is not None else CONNECT_TIMEOUT_S
                raise DaemonNotAnswering(
                    self.socket_path, waited, read_daemon_pid(self._pid_path)
                ) from exc
            except (http.client.HTTPException, OSError) as exc:
                raise closed_early(self.socket_path, str(exc) or type(exc).__name__) from exc
        finally:
            connection.close()
        if response.status >= 400:
            raise refusal(response.status, raw)
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
