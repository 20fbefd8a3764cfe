"""A Python client of supervisord for launch scripts: register a run in the same code that
calls RunInstances.

    from supervisor.client import Supervisor

    supervisor = Supervisor()  # the daemon of SUPERVISOR_STATE_DIR, or of the default one
    run = supervisor.attach(
        "exp1-lr3e-4", instance_id, "s3://my-runs/exp1/lr3e-4/",
        on_complete="terminate", grace_s=120, checkpoint_dir="/data/ckpt",
    )
    supervisor.status("exp1-lr3e-4").phase

`AsyncSupervisor` is the same API for code that runs in an event loop. Both talk to the daemon
over its control socket, exactly as `supervisorctl` does, so the daemon validates and stores
everything; nothing here touches AWS or the database. Refusals come back as the project's
errors: `InvalidInput` (with the daemon's message naming the value), `UnknownRun`,
`InvalidTransition`, `ShuttingDown`, and `SupervisorNotRunning` when no daemon answers.

It sits at the top of the layers, beside `supervisor.cli`: it uses the control adapter and the
settings (to find the socket), and nothing below may import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar, overload

from pydantic import ValidationError

from supervisor.adapters.control import ControlClient, ControlError, DaemonNotRunning
from supervisor.adapters.protocol import AttachmentView, AttachRequest, RunDetail, RunView
from supervisor.core.errors import (
    InvalidInput,
    InvalidTransition,
    ShuttingDown,
    SupervisorError,
    UnknownRun,
)
from supervisor.core.spec import describe_validation_error
from supervisor.core.spec_fields import FIELDS
from supervisor.runtime.settings import Settings

__all__ = [
    "AsyncSupervisor",
    "AttachmentView",
    "InvalidInput",
    "InvalidTransition",
    "RunDetail",
    "RunView",
    "ShuttingDown",
    "Supervisor",
    "SupervisorError",
    "SupervisorNotRunning",
    "UnknownRun",
]

T = TypeVar("T")
PathLike = str | os.PathLike[str]
SPEC_FIELDS = frozenset(field.name for field in FIELDS if not field.required)
"""The keyword arguments `attach` takes: the run-spec fields (`core.spec_fields`) other than
its positional arguments, as `supervisorctl attach --spec` takes them."""


class SupervisorNotRunning(DaemonNotRunning):
    """No supervisord answers on the socket; the message names it and how to start one."""


def socket_path_for(socket_path: PathLike | None, state_dir: PathLike | None) -> Path:
    """The control socket: given, or in the state directory given, or in the one the
    settings name (SUPERVISOR_STATE_DIR, else the default), as `supervisorctl` finds it."""
    if socket_path is not None and state_dir is not None:
        raise InvalidInput(
            f"give socket_path ({socket_path}) or state_dir ({state_dir}), not both: the "
            "socket is STATE_DIR/supervisord.sock"
        )
    if socket_path is not None:
        return Path(socket_path)
    if state_dir is not None:
        return Settings.load(None, state_dir=Path(state_dir)).socket_path
    return Settings.load().socket_path


def attach_request(
    run_id: str, instance_id: str, s3_prefix: str, spec_fields: dict[str, Any]
) -> AttachRequest:
    """The request `attach` sends; an unknown or mistyped field is refused here, by name."""
    unknown = sorted(set(spec_fields) - SPEC_FIELDS)
    if unknown:
        raise InvalidInput(
            f"attach() got unknown spec field(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(SPEC_FIELDS))}"
        )
    fields = {"run_id": run_id, "instance_id": instance_id, "s3_prefix": s3_prefix}
    try:
        return AttachRequest.model_validate({**fields, **spec_fields})
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(exc)) from None


def _typed(error: ControlError, run_id: str | None) -> SupervisorError:
    """The daemon's refusal as the error type it was raised as in the daemon."""
    if error.kind == "unknown_run" and run_id is not None:
        return UnknownRun(run_id)
    if error.kind == "invalid_input":
        return InvalidInput(str(error))
    if error.kind == "conflict":
        return InvalidTransition(str(error))
    if error.kind == "shutting_down":
        return ShuttingDown(str(error))
    return error  # "internal": the daemon's own failure, with its message


class AsyncSupervisor:
    """supervisord's control API with `await`. Each call is one request on a new connection,
    so an instance holds no resources and can live as long as the launcher."""

    def __init__(
        self,
        socket_path: PathLike | None = None,
        *,
        state_dir: PathLike | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.socket_path = socket_path_for(socket_path, state_dir)
        self._timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"<AsyncSupervisor socket={self.socket_path}>"

    @contextlib.asynccontextmanager
    async def _client(self, run_id: str | None = None) -> AsyncIterator[ControlClient]:
        try:
            async with ControlClient(self.socket_path, timeout_s=self._timeout_s) as client:
                yield client
        except DaemonNotRunning:
            raise SupervisorNotRunning(self.socket_path) from None
        except ControlError as exc:
            raise _typed(exc, run_id) from None

    async def attach(
        self, run_id: str, instance_id: str, s3_prefix: str, **spec_fields: Any
    ) -> RunView:
        """Start watching a run. `spec_fields` are the keys of `supervisorctl attach --spec`
        (`on_complete="terminate"`, `grace_s=120`, `checkpoint_dir=...`; see SPEC_FIELDS).
        `no_verify=True` skips the daemon's checks that the instance exists and the bucket
        answers, for a run registered before its instance exists."""
        request = attach_request(run_id, instance_id, s3_prefix, spec_fields)
        async with self._client(run_id) as client:
            return await client.attach(request)

    @overload
    async def status(self, run_id: None = None) -> list[RunView]: ...
    @overload
    async def status(self, run_id: str) -> RunDetail: ...
    async def status(self, run_id: str | None = None) -> list[RunView] | RunDetail:
        """Every run, or one run with its transitions, actions, instances and attachments."""
        async with self._client(run_id) as client:
            return await client.run(run_id) if run_id is not None else await client.runs()

    async def detach(self, run_id: str) -> RunView:
        """Stop watching the run; its instance is left as it is."""
        return await self._request(run_id, "detach")

    async def stop(self, run_id: str) -> RunView:
        """Stop the run's instance now, through the same safe path as a completion."""
        return await self._request(run_id, "stop")

    async def terminate(self, run_id: str) -> RunView:
        """Terminate the run's instance now (a stop without a verified checkpoint, if the run
        has `checkpoint_dir`)."""
        return await self._request(run_id, "terminate")

    async def resume(self, run_id: str, *, from_scratch: bool = False) -> RunView:
        """Resume a stopped, terminated, crashed or interrupted run (see `supervisorctl resume`)."""
        async with self._client(run_id) as client:
            return await client.request(run_id, "resume", from_scratch=from_scratch)

    async def attach_file(self, run_id: str, uri: str, *, kind: str) -> AttachmentView:
        """Record a file or link with the run: `uri` is s3://BUCKET/KEY (it must exist) or an
        http(s) link; `kind` is crash-log, analysis, conversation or other."""
        async with self._client(run_id) as client:
            return await client.attach_file(run_id, kind, uri)

    async def _request(self, run_id: str, action: str) -> RunView:
        async with self._client(run_id) as client:
            return await client.request(run_id, action)


class Supervisor:
    """supervisord's control API for code without an event loop: each call runs one request
    in `asyncio.run`. Inside a running event loop it refuses (it would block the loop); use
    `AsyncSupervisor` there."""

    def __init__(
        self,
        socket_path: PathLike | None = None,
        *,
        state_dir: PathLike | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self._async = AsyncSupervisor(socket_path, state_dir=state_dir, timeout_s=timeout_s)

    @property
    def socket_path(self) -> Path:
        return self._async.socket_path

    def __repr__(self) -> str:
        return f"<Supervisor socket={self.socket_path}>"

    def attach(self, run_id: str, instance_id: str, s3_prefix: str, **spec_fields: Any) -> RunView:
        """See `AsyncSupervisor.attach`."""
        return _blocking(
            "attach", lambda: self._async.attach(run_id, instance_id, s3_prefix, **spec_fields)
        )

    @overload
    def status(self, run_id: None = None) -> list[RunView]: ...
    @overload
    def status(self, run_id: str) -> RunDetail: ...
    def status(self, run_id: str | None = None) -> list[RunView] | RunDetail:
        """Every run, or one run in detail."""
        if run_id is None:
            return _blocking("status", lambda: self._async.status())
        return _blocking("status", lambda: self._async.status(run_id))

    def detach(self, run_id: str) -> RunView:
        return _blocking("detach", lambda: self._async.detach(run_id))

    def stop(self, run_id: str) -> RunView:
        return _blocking("stop", lambda: self._async.stop(run_id))

    def terminate(self, run_id: str) -> RunView:
        return _blocking("terminate", lambda: self._async.terminate(run_id))

    def resume(self, run_id: str, *, from_scratch: bool = False) -> RunView:
        return _blocking("resume", lambda: self._async.resume(run_id, from_scratch=from_scratch))

    def attach_file(self, run_id: str, uri: str, *, kind: str) -> AttachmentView:
        return _blocking("attach_file", lambda: self._async.attach_file(run_id, uri, kind=kind))


def _blocking(name: str, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one call to completion, refusing inside a running loop (before the coroutine
    exists, so nothing is left unawaited)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(call())
    raise RuntimeError(
        f"Supervisor.{name}() was called inside a running event loop, which it would block: "
        f"use `await AsyncSupervisor(...).{name}(...)` there"
    )
