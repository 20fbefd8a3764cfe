"""Running the instance-side program (`supervisor.instance`) on an instance: over SSM Run
Command on EC2 (`SsmShell`), or as a subprocess on this machine (`LocalShell`).

Both pass `InstanceCommand.argv()` as an argument vector that no shell ever parses: locally
it is exec'd as is; over SSM it travels as one JSON parameter that the project's document
(`deploy/ssm-document.json`) hands to the program in an environment variable. A command that
ran and failed comes back as a `CommandResult` with its status; only a command that could not
be delivered raises (`PermanentError`, or `TransientError` when trying again may help).
Deciding what a result means is the runtime's business, not this module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog

from supervisor.adapters.aws import Aws, translate
from supervisor.core.checkpoint import CommandResult, CommandStatus, InstanceCommand
from supervisor.core.errors import ExternalError, PermanentError, TransientError

log = structlog.get_logger("supervisor.shell")

T = TypeVar("T")

DEFAULT_PROGRAM: tuple[str, ...] = (sys.executable, "-m", "supervisor.instance")
DEFAULT_DOCUMENT = "SupervisorInstanceCommand"
OUTPUT_LIMIT = 64 * 1024
"""Bytes of stdout and of stderr a `LocalShell` keeps (the tail: the result is the last line)."""
COMMENT_LIMIT = 100  # SendCommand rejects longer comments

_KILL_GRACE_S = 5.0  # after SIGKILL, how long to wait for the pipes to close
_SEND_ATTEMPTS = 2
_LOOKUP_ATTEMPTS = 3
_LOOKUP_SKEW = timedelta(minutes=5)  # our clock may run ahead of SSM's
_INVOCATION_GRACE_S = 30.0  # GetCommandInvocation may not know a new command for a while
_REPORT_GRACE_S = 30.0  # beyond SSM's own timeouts, before we stop waiting for its verdict

_RUNNING = frozenset({"Pending", "InProgress", "Delayed"})
_TIMED_OUT = frozenset({"TimedOut", "DeliveryTimedOut", "ExecutionTimedOut"})
_CANCELLED = frozenset({"Cancelled", "Cancelling"})


def parse_result(stdout: str) -> dict[str, object]:
    """The JSON object printed on the last non-empty line of `stdout`, else an empty dict."""
    for line in reversed(stdout.splitlines()):
        if line.strip():
            try:
                value = json.loads(line)
            except ValueError:
                return {}
            return value if isinstance(value, dict) else {}
    return {}


# -- local ------------------------------------------------------------------------------------


class _Tail:
    """The last `limit` bytes read from a stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(65536):
            self.data += chunk
            excess = len(self.data) - self.limit
            if excess > 0:
                del self.data[:excess]
                self.dropped += excess

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        return f"[{self.dropped} earlier bytes dropped]\n{text}" if self.dropped else text


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class LocalShell:
    """The "instance" is this machine: runs `program + command.argv()` as a subprocess in a
    session of its own, so a timeout (or cancellation) kills it and everything it started
    in its process group."""

    def __init__(
        self, program: Sequence[str] = DEFAULT_PROGRAM, env: Mapping[str, str] | None = None
    ) -> None:
        if not program:
            raise ValueError("LocalShell needs a program to run, e.g. [python, -m, module]")
        self._program = tuple(program)
        self._env = dict(env or {})

    def __repr__(self) -> str:
        return f"<LocalShell program={list(self._program)} env={sorted(self._env)}>"

    async def run(
        self,
        instance_id: str,
        region: str,
        command: InstanceCommand,
        *,
        timeout_s: float,
        comment: str,
    ) -> CommandResult:
        argv = [*self._program, *command.argv()]
        fields = {"instance_id": instance_id, "kind": str(command.kind), "comment": comment}
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, **self._env},
                start_new_session=True,
            )
        except OSError as exc:
            raise PermanentError(
                type(exc).__name__,
                f"cannot start {self._program[0]!r}: {exc}; check the local shell's program "
                "(it must be an executable, e.g. python3 -m supervisor.instance)",
                operation="LocalShell",
            ) from exc
        log.info("command_started", pid=process.pid, transport="local", **fields)
        stdout, stderr = _Tail(OUTPUT_LIMIT), _Tail(OUTPUT_LIMIT)
        readers = [
            asyncio.create_task(stdout.drain(process.stdout)),
            asyncio.create_task(stderr.drain(process.stderr)),
        ]
        timed_out = False
        try:
            try:
                async with asyncio.timeout(timeout_s):
                    await process.wait()  # returns once the process exited and its pipes closed
            except TimeoutError:
                timed_out = True
                _kill_group(process.pid)
                # A child that left the group may still hold the pipes open: do not wait forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_KILL_GRACE_S):
                        await process.wait()
            await asyncio.wait(readers, timeout=_KILL_GRACE_S)
        except asyncio.CancelledError:
            _kill_group(process.pid)  # nobody will wait for it any more
            raise
        finally:
            for reader in readers:
                reader.cancel()
        out = stdout.text()
        if timed_out:
            status = CommandStatus.TIMED_OUT
        elif process.returncode == 0:
            status = CommandStatus.SUCCESS
        else:
            status = CommandStatus.FAILED
        log.info(
            "command_finished",
            status=str(status),
            exit_code=process.returncode,
            seconds=round(time.monotonic() - started, 3),
            **fields,
        )
        return CommandResult(status, process.returncode, out, stderr.text(), parse_result(out))


# -- SSM --------------------------------------------------------------------------------------


async def _call(operation: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except ExternalError:
        raise
    except Exception as exc:
        raise translate(exc, operation) from exc


def delivery_timeout_s(timeout_s: float) -> int:
    """SendCommand's TimeoutSeconds: how long SSM may take to deliver the command (30..600)."""
    return min(max(30, math.ceil(timeout_s)), 600)


def shorten_comment(comment: str) -> str:
    """`comment`, cut to what SendCommand accepts. The middle goes: callers put the part
    that makes a comment unique at the end, and the lookup after a failed send needs it."""
    if len(comment) <= COMMENT_LIMIT:
        return comment
    tail = 24
    return comment[: COMMENT_LIMIT - tail - 3] + "..." + comment[-tail:]


def invocation_result(reply: Mapping[str, Any]) -> CommandResult | None:
    """Pure. The result of a GetCommandInvocation reply, or None while the command runs."""
    status = str(reply.get("Status", ""))
    if status in _RUNNING:
        return None
    # StatusDetails is documented with spaces ("Delivery Timed Out") and returned without.
    details = str(reply.get("StatusDetails", "")).replace(" ", "")
    if status in _TIMED_OUT or details in _TIMED_OUT:
        outcome = CommandStatus.TIMED_OUT
    elif details == "Undeliverable":
        outcome = CommandStatus.UNDELIVERED
    elif status == "Success":
        outcome = CommandStatus.SUCCESS
    elif status in _CANCELLED:
        outcome = CommandStatus.CANCELLED
    else:  # Failed, and its variants in StatusDetails (Terminated, InvalidPlatform, ...)
        outcome = CommandStatus.FAILED
    code = reply.get("ResponseCode")
    exit_code = code if isinstance(code, int) and code >= 0 else None  # -1: no exit code
    stdout = str(reply.get("StandardOutputContent") or "")
    stderr = str(reply.get("StandardErrorContent") or "")
    return CommandResult(outcome, exit_code, stdout, stderr, parse_result(stdout))


def _not_delivered(exc: PermanentError, instance_id: str, region: str, document: str) -> str:
    if exc.code == "InvalidInstanceId":
        return (
            f"instance {instance_id} in {region} cannot receive SSM commands ({exc.message}): "
            "it must be running the SSM agent, with an instance profile that allows "
            "ssm:UpdateInstanceInformation (e.g. the AmazonSSMManagedInstanceCore policy); "
            "`aws ssm describe-instance-information` lists the instances SSM can reach"
        )
    if exc.code in ("InvalidDocument", "InvalidDocumentVersion"):
        return (
            f"SSM document {document!r} is not available in {region} ({exc.message}): create it "
            f"with `aws ssm create-document --name {document} --document-type Command "
            "--document-format JSON --content file://deploy/ssm-document.json`"
        )
    return f"could not send the command to {instance_id}: {exc.message}"


class SsmShell:
    """Runs the instance-side program on an EC2 instance through SSM Run Command and the
    project's SSM document, then polls GetCommandInvocation for its outcome.

    SendCommand takes no idempotency token, so a send that failed in a way that may have
    reached SSM (throttling, a dropped connection) is looked up by its unique comment before
    it is sent again, at most twice in all. If SSM gives no verdict in time, the command is
    cancelled (best effort) and the result is `TimedOut`.
    """

    def __init__(
        self,
        aws: Aws,
        document_name: str = DEFAULT_DOCUMENT,
        poll_s: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._aws = aws
        self._document = document_name
        self._poll_s = poll_s
        self._clock = clock
        self._sleep = sleep
        self._now = now

    def __repr__(self) -> str:
        return f"<SsmShell document={self._document!r} poll_s={self._poll_s}>"

    async def run(
        self,
        instance_id: str,
        region: str,
        command: InstanceCommand,
        *,
        timeout_s: float,
        comment: str,
    ) -> CommandResult:
        if not comment.strip():
            raise ValueError("SsmShell.run needs a unique comment: it is how a command is found")
        comment = shorten_comment(comment)
        ssm = await self._aws.client("ssm", region)
        fields = {
            "instance_id": instance_id,
            "region": region,
            "kind": str(command.kind),
            "comment": comment,
        }
        command_id = await self._send(ssm, instance_id, region, command, timeout_s, comment)
        fields["command_id"] = command_id
        started = self._clock()
        result = await self._wait(ssm, instance_id, command_id, timeout_s, fields)
        log.info(
            "command_finished",
            status=str(result.status),
            exit_code=result.exit_code,
            seconds=round(self._clock() - started, 3),
            **fields,
        )
        return result

    async def _send(
        self,
        ssm: Any,
        instance_id: str,
        region: str,
        command: InstanceCommand,
        timeout_s: float,
        comment: str,
    ) -> str:
        request: dict[str, Any] = {
            "InstanceIds": [instance_id],
            "DocumentName": self._document,
            "Comment": comment,
            "TimeoutSeconds": delivery_timeout_s(timeout_s),
            "Parameters": {
                # ensure_ascii keeps the value printable ASCII, as the document's pattern asks.
                "Args": [json.dumps(command.argv(), ensure_ascii=True)],
                "ExecutionTimeout": [str(max(1, math.ceil(timeout_s)))],
            },
        }
        invoked_after = self._now() - _LOOKUP_SKEW
        failure: TransientError | None = None
        for attempt in range(1, _SEND_ATTEMPTS + 1):
            try:
                reply = await _call("SendCommand", ssm.send_command(**request))
            except TransientError as exc:
                log.warning("send_failed", attempt=attempt, code=exc.code, instance_id=instance_id)
                failure = exc
                found = await self._lookup(ssm, instance_id, comment, invoked_after)
                if found is not None:
                    return found
                continue
            except PermanentError as exc:
                message = _not_delivered(exc, instance_id, region, self._document)
                raise PermanentError(exc.code, message, operation="SendCommand") from exc
            command_id = str(reply["Command"]["CommandId"])
            log.info(
                "command_sent",
                command_id=command_id,
                attempt=attempt,
                instance_id=instance_id,
                comment=comment,
            )
            return command_id
        assert failure is not None
        raise TransientError(
            failure.code,
            f"SendCommand to {instance_id} failed {_SEND_ATTEMPTS} times ({failure.message}) "
            f"and SSM lists no command with comment {comment!r}: the command was not sent",
            operation="SendCommand",
        )

    async def _lookup(
        self, ssm: Any, instance_id: str, comment: str, invoked_after: datetime
    ) -> str | None:
        """The id of the command with this comment that SSM holds for the instance, if any.
        Raises if SSM cannot say, since sending again could run the command twice."""
        failure: TransientError | None = None
        for attempt in range(1, _LOOKUP_ATTEMPTS + 1):
            await self._sleep(self._poll_s)
            try:
                found = await self._find(ssm, instance_id, comment, invoked_after)
            except TransientError as exc:
                failure = exc
                continue
            log.info(
                "command_lookup",
                found=found is not None,
                command_id=found,
                attempt=attempt,
                instance_id=instance_id,
                comment=comment,
            )
            return found
        assert failure is not None
        raise TransientError(
            failure.code,
            f"SendCommand to {instance_id} failed and ListCommands could not tell whether it "
            f"reached SSM ({failure.message}); not sending it again. Look for comment "
            f"{comment!r} in `aws ssm list-commands --instance-id {instance_id}`",
            operation="ListCommands",
        )

    async def _find(
        self, ssm: Any, instance_id: str, comment: str, invoked_after: datetime
    ) -> str | None:
        since = invoked_after.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        request: dict[str, Any] = {
            "InstanceId": instance_id,
            "Filters": [{"key": "InvokedAfter", "value": since}],
            "MaxResults": 50,
        }
        while True:
            page = await _call("ListCommands", ssm.list_commands(**request))
            for listed in page.get("Commands", ()):
                if listed.get("Comment") == comment:
                    return str(listed["CommandId"])
            token = page.get("NextToken")
            if not token:
                return None
            request["NextToken"] = token

    async def _wait(
        self,
        ssm: Any,
        instance_id: str,
        command_id: str,
        timeout_s: float,
        fields: Mapping[str, object],
    ) -> CommandResult:
        started = self._clock()
        # SSM may take the delivery timeout to deliver it, then timeout_s to run it.
        deadline = started + delivery_timeout_s(timeout_s) + timeout_s + _REPORT_GRACE_S
        while True:
            try:
                await self._sleep(self._poll_s)
            except asyncio.CancelledError:
                # The supervisor stopped waiting (an early checkpoint overtaken by the final
                # one): the command must not go on uploading on the instance.
                await asyncio.shield(self._cancel(ssm, instance_id, command_id, fields))
                raise
            try:
                reply = await _call(
                    "GetCommandInvocation",
                    ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id),
                )
            except TransientError as exc:
                log.warning("poll_failed", code=exc.code, **fields)
            except PermanentError as exc:
                if exc.code != "InvocationDoesNotExist":
                    raise PermanentError(
                        exc.code,
                        f"command {command_id} was sent to {instance_id} but its outcome "
                        f"cannot be read: {exc.message}",
                        operation="GetCommandInvocation",
                    ) from exc
                if self._clock() - started > _INVOCATION_GRACE_S:
                    await self._cancel(ssm, instance_id, command_id, fields)
                    return CommandResult(
                        CommandStatus.UNDELIVERED,
                        None,
                        stderr=f"SSM accepted command {command_id} but never reported an "
                        f"invocation on {instance_id}",
                    )
            else:
                result = invocation_result(reply)
                if result is not None:
                    return result
            if self._clock() >= deadline:
                await self._cancel(ssm, instance_id, command_id, fields)
                return CommandResult(
                    CommandStatus.TIMED_OUT,
                    None,
                    stderr=f"no verdict from SSM on command {command_id} after "
                    f"{self._clock() - started:.0f} s",
                )

    async def _cancel(
        self, ssm: Any, instance_id: str, command_id: str, fields: Mapping[str, object]
    ) -> None:
        """Best effort: a command we stopped waiting for must not start late."""
        try:
            await _call(
                "CancelCommand", ssm.cancel_command(CommandId=command_id, InstanceIds=[instance_id])
            )
        except ExternalError as exc:
            log.warning("cancel_failed", code=exc.code, message=exc.message, **fields)
        else:
            log.info("command_cancelled", **fields)
