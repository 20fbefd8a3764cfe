"""The control channel: HTTP + JSON over a Unix socket (aiohttp), server and client (the
client for the streaming routes; `control_client` has the light one and the errors).

The socket is created 0600 inside a 0700 directory: only its owner can talk to the daemon.
The server knows nothing of runs; it calls a `ControlHandler` (`control_views.ControlViews`,
which builds the views from the runtime's domain answers) and maps the project's errors to
HTTP statuses, which the client maps back.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import aiohttp
import structlog
from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from supervisor.adapters.control_client import MAX_BYTE_DIGITS as MAX_BYTE_DIGITS
from supervisor.adapters.control_client import ControlError as ControlError
from supervisor.adapters.control_client import DaemonNotAnswering as DaemonNotAnswering
from supervisor.adapters.control_client import DaemonNotRunning as DaemonNotRunning
from supervisor.adapters.control_client import closed_early, read_daemon_pid, refusal
from supervisor.adapters.control_client import parse_since_days as parse_since_days
from supervisor.adapters.control_client import run_path as run_path
from supervisor.adapters.control_client import since_query as since_query
from supervisor.adapters.metrics_http import Exposition, metrics_handler
from supervisor.adapters.protocol import (
    DEFAULT_TRAINING_LOG,
    DEFAULT_TRAINING_LOG_BYTES,
    AttachFileRequest,
    AttachmentView,
    AttachRequest,
    DaemonStatus,
    ErrorKind,
    ErrorReply,
    NotifyTestReply,
    ReportView,
    RunDetail,
    RunView,
    TailItem,
    TrainingLogItem,
    ZombieList,
)
from supervisor.core.errors import (
    InvalidInput,
    InvalidTransition,
    NoAnswer,
    ShuttingDown,
    StaleVersion,
    SupervisorError,
    UnknownRun,
)
from supervisor.core.spec import describe_validation_error
from supervisor.core.values import parse_run_id

log = structlog.get_logger("supervisor.control")

ACTIONS = ("stop", "terminate", "detach", "resume")
_M = TypeVar("_M", bound=BaseModel)


class ControlHandler(Protocol):
    async def attach(self, request: AttachRequest) -> RunView: ...
    async def list_runs(self) -> list[RunView]: ...
    async def run_detail(self, run_id: str) -> RunDetail: ...
    async def request(self, run_id: str, action: str, *, from_scratch: bool = False) -> RunView: ...
    def tail(self, run_id: str, *, follow: bool) -> AsyncIterator[TailItem]: ...
    async def attach_file(self, run_id: str, request: AttachFileRequest) -> AttachmentView: ...
    def training_log(
        self, run_id: str, *, key: str, offset: int | None, last: int, follow: bool
    ) -> AsyncIterator[TrainingLogItem]: ...
    async def status(self) -> DaemonStatus: ...
    async def zombies(self) -> ZombieList: ...
    async def report(self, since_days: float) -> ReportView: ...
    async def metrics(self, accept: str) -> Exposition: ...
    async def notify_test(self) -> NotifyTestReply: ...


_ERROR_STATUS: list[tuple[type[Exception], int, ErrorKind]] = [
    (UnknownRun, 404, "unknown_run"),
    (InvalidInput, 400, "invalid_input"),
    (InvalidTransition, 409, "conflict"),
    (StaleVersion, 409, "conflict"),
    (ShuttingDown, 503, "shutting_down"),
    (NoAnswer, 504, "no_answer"),
]


def _json(model: BaseModel | list[RunView], status: int = 200) -> web.Response:
    if isinstance(model, list):
        body = TypeAdapter(list[RunView]).dump_json(model, by_alias=True)
    else:
        body = model.model_dump_json(by_alias=True).encode()
    return web.Response(body=body, status=status, content_type="application/json")


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except ValidationError as exc:
        reply = ErrorReply(error=describe_validation_error(exc), kind="invalid_input")
        return _json(reply, 400)
    except SupervisorError as exc:
        for error_type, status, kind in _ERROR_STATUS:
            if isinstance(exc, error_type):
                return _json(ErrorReply(error=str(exc), kind=kind), status)
        raise
    except Exception as exc:
        log.exception("control_request_failed", path=request.path)
        return _json(ErrorReply(error=f"internal error: {exc}", kind="internal"), 500)


class ControlServer:
    def __init__(self, handler: ControlHandler, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._handler = handler
        app = web.Application(middlewares=[_errors])
        app.add_routes(
            [
                web.get("/v1/status", self._status),
                web.get("/v1/runs", self._list),
                web.post("/v1/runs", self._attach),
                web.get("/v1/runs/{run_id}", self._detail),
                # Before `{action}`, which would take "attachments" for an action.
                web.post("/v1/runs/{run_id}/attachments", self._attach_file),
                web.post("/v1/runs/{run_id}/{action}", self._act),
                web.get("/v1/runs/{run_id}/tail", self._tail),
                web.get("/v1/runs/{run_id}/training-log", self._training_log),
                web.get("/v1/zombies", self._zombies),
                web.get("/v1/report", self._report),
                web.get("/metrics", metrics_handler(handler)),
                web.post("/v1/notify-test", self._notify_test),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self) -> None:
        directory = self.socket_path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # stale socket of a killed daemon; we hold the lock
        await self._runner.setup()
        site = web.UnixSite(self._runner, str(self.socket_path))
        old_umask = os.umask(0o177)
        try:
            await site.start()
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)

    async def close(self) -> None:
        await self._runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def _status(self, _: web.Request) -> web.Response:
        return _json(await self._handler.status())

    async def _notify_test(self, _: web.Request) -> web.Response:
        return _json(await self._handler.notify_test())

    async def _list(self, _: web.Request) -> web.Response:
        return _json(await self._handler.list_runs())

    async def _attach(self, request: web.Request) -> web.Response:
        body = AttachRequest.model_validate_json(await request.read())
        return _json(await self._handler.attach(body), 201)

    async def _detail(self, request: web.Request) -> web.Response:
        return _json(await self._handler.run_detail(_run_id(request)))

    async def _act(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in ACTIONS:
            raise web.HTTPNotFound()
        from_scratch = request.query.get("from_scratch") == "1"
        run_id = _run_id(request)
        return _json(await self._handler.request(run_id, action, from_scratch=from_scratch))

    async def _zombies(self, _: web.Request) -> web.Response:
        return _json(await self._handler.zombies())

    async def _report(self, request: web.Request) -> web.Response:
        return _json(await self._handler.report(parse_since_days(request.query.get("since", "7"))))

    async def _tail(self, request: web.Request) -> web.StreamResponse:
        follow = request.query.get("follow") == "1"
        items = self._handler.tail(_run_id(request), follow=follow)
        return await _stream(request, items)

    async def _attach_file(self, request: web.Request) -> web.Response:
        body = AttachFileRequest.model_validate_json(await request.read())
        return _json(await self._handler.attach_file(_run_id(request), body), 201)

    async def _training_log(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        offset = _byte_count(query, "offset")
        last = _byte_count(query, "last")
        if offset is not None and last is not None:
            raise InvalidInput("give offset= or last=, not both")
        items = self._handler.training_log(
            _run_id(request),
            key=query.get("key", DEFAULT_TRAINING_LOG),
            offset=offset,
            last=DEFAULT_TRAINING_LOG_BYTES if last is None else last,
            follow=query.get("follow") == "1",
        )
        return await _stream(request, items)


async def _stream(request: web.Request, items: AsyncIterator[BaseModel]) -> web.StreamResponse:
    """Send `items` as NDJSON, one object a line. The first item is read before the reply
    starts, so an error (unknown run, bad key) is answered with its status. A client that
    goes away mid-stream (Ctrl-C on `tail -f`) is ordinary: a debug line, not an error, and
    the items are closed at once (a follower stops listening to its run)."""
    try:
        first = await anext(items, None)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            if first is not None:
                await response.write(first.model_dump_json(by_alias=True).encode() + b"\n")
                async for item in items:
                    await response.write(item.model_dump_json(by_alias=True).encode() + b"\n")
            await response.write_eof()
        except ConnectionResetError:  # aiohttp's ClientConnectionResetError among them
            log.debug("stream_client_gone", path=request.path)
        return response
    finally:
        close = getattr(items, "aclose", None)  # an async generator's: run its `finally`
        if close is not None:
            await close()


def _byte_count(query: Mapping[str, str], name: str) -> int | None:
    """A query parameter that counts bytes: absent, or an integer from 0."""
    text = query.get(name)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_BYTE_DIGITS:
        raise InvalidInput(f"{name}={text!r} is not valid: give a number of bytes from 0")
    return int(text)


class ControlClient:
    """`async with ControlClient(path) as client:` then call the daemon's endpoints."""

    def __init__(
        self, socket_path: Path, *, timeout_s: float | None = 60.0, pid_path: Path | None = None
    ) -> None:
        """`timeout_s`: the longest wait for the daemon's next bytes; None for a followed
        stream, which may be quiet for long (a log that stops growing for a while).
        `pid_path`: the daemon's pid file, read only to name the pid in an error."""
        self.socket_path = socket_path
        self._pid_path = pid_path
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        connector = aiohttp.UnixConnector(path=str(self.socket_path))
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    @contextlib.asynccontextmanager
    async def _call(
        self, method: str, path: str, body: BaseModel | None = None, **params: str
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        assert self._session is not None, "use `async with ControlClient(...)`"
        if not self.socket_path.exists():
            raise DaemonNotRunning(self.socket_path)
        data = body.model_dump_json().encode() if body is not None else None
        try:
            async with self._session.request(
                method,
                f"http://supervisord{path}",
                data=data,
                params=params,
                headers={"Content-Type": "application/json"},
            ) as response:
                if response.status >= 400:
                    raise refusal(response.status, await response.read())
                yield response
        except aiohttp.ClientConnectorError as exc:
            stale = isinstance(exc.os_error, ConnectionRefusedError) and self.socket_path.exists()
            raise DaemonNotRunning(self.socket_path, stale=stale, pid=self._pid()) from exc
        except TimeoutError as exc:  # aiohttp's read and connect timeouts are TimeoutErrors
            waited = self._timeout.sock_read
            if isinstance(exc, aiohttp.ConnectionTimeoutError) or waited is None:
                waited = self._timeout.sock_connect
            raise DaemonNotAnswering(self.socket_path, waited or 0.0, self._pid()) from exc
        except aiohttp.ClientError as exc:  # the daemon closed the connection mid-answer
            raise closed_early(self.socket_path, str(exc) or type(exc).__name__) from exc

    def _pid(self) -> int | None:
        return read_daemon_pid(self._pid_path)

    async def _get(
        self, model: type[_M], method: str, path: str, body: BaseModel | None = None
    ) -> _M:
        async with self._call(method, path, body) as response:
            return model.model_validate_json(await response.read())

    async def status(self) -> DaemonStatus:
        return await self._get(DaemonStatus, "GET", "/v1/status")

    async def runs(self) -> list[RunView]:
        async with self._call("GET", "/v1/runs") as response:
            return TypeAdapter(list[RunView]).validate_json(await response.read())

    async def attach(self, request: AttachRequest) -> RunView:
        return await self._get(RunView, "POST", "/v1/runs", request)

    async def run(self, run_id: str) -> RunDetail:
        return await self._get(RunDetail, "GET", run_path(run_id))

    async def request(self, run_id: str, action: str, *, from_scratch: bool = False) -> RunView:
        params = {"from_scratch": "1"} if from_scratch else {}
        async with self._call("POST", run_path(run_id, action), None, **params) as response:
            return RunView.model_validate_json(await response.read())

    async def zombies(self) -> ZombieList:
        return await self._get(ZombieList, "GET", "/v1/zombies")

    async def report(self, since_days: float) -> ReportView:
        async with self._call("GET", "/v1/report", None, since=since_query(since_days)) as response:
            return ReportView.model_validate_json(await response.read())

    async def metrics(self) -> str:
        """The Prometheus text of `GET /metrics`."""
        async with self._call("GET", "/metrics") as response:
            return await response.text()

    async def tail(self, run_id: str, *, follow: bool) -> AsyncIterator[TailItem]:
        async with self._call(
            "GET", run_path(run_id, "tail"), follow="1" if follow else "0"
        ) as response:
            async for line in response.content:
                if line.strip():
                    yield TailItem.model_validate(json.loads(line))

    async def attach_file(self, run_id: str, kind: str, uri: str) -> AttachmentView:
        return await self._get(
            AttachmentView,
            "POST",
            run_path(run_id, "attachments"),
            AttachFileRequest(kind=kind, uri=uri),
        )

    async def training_log(
        self,
        run_id: str,
        *,
        key: str = DEFAULT_TRAINING_LOG,
        follow: bool = False,
        offset: int | None = None,
        last: int | None = None,
    ) -> AsyncIterator[TrainingLogItem]:
        """The run's training log: from byte `offset`, or from its last `last` bytes (the
        daemon's default when both are None); with `follow`, until the run has ended."""
        params = {"key": key, "follow": "1" if follow else "0"}
        if offset is not None:
            params["offset"] = str(offset)
        if last is not None:
            params["last"] = str(last)
        path = run_path(run_id, "training-log")
        async with self._call("GET", path, None, **params) as response:
            async for line in response.content:
                if line.strip():
                    yield TrainingLogItem.model_validate_json(line)


def _run_id(request: web.Request) -> str:
    """The route's run id, checked as attach checks it before any handler sees it."""
    return parse_run_id(request.match_info["run_id"])


def jsonable(model: BaseModel | list[Any]) -> Any:
    """A model (or list of models) as plain JSON data, with the protocol's field aliases."""
    if isinstance(model, list):
        return [jsonable(m) for m in model]
    return model.model_dump(mode="json", by_alias=True)
