"""The effect executor: carries out one effect of a committed decision and returns the event
it led to (None when it leads to none).

One small function per effect type, found by the effect's type (`_CARRY_OUT`). The executor
works only through the ports it is given (cloud, instance shells, clock, store, metrics) and
tells what it did through the monitor's `note`. It commits no transition and decides nothing:
the monitor commits the decision (the intent) before it asks for the effects, and feeds the
returned events back to `step()`.

Not here: `WakeAt` (the monitor's own timer) and running a command in the background (the
monitor's task group); the monitor handles those two itself.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from supervisor.core.checkpoint import (
    CommandResult,
    CommandStatus,
    Manifest,
    StoredObject,
    Verification,
    verify,
)
from supervisor.core.effects import (
    ActOnInstance,
    AttachCrashReport,
    AutoResume,
    Effect,
    IngestReport,
    LaunchInstance,
    ListPrefix,
    ObserveInstance,
    ReadObject,
    RunInstanceCommand,
    VerifyCheckpoint,
)
from supervisor.core.errors import ExternalError, InvalidInput, NotFoundError, TransientError
from supervisor.core.eta import ProgressSample
from supervisor.core.events import (
    Action,
    ActionSucceeded,
    CheckpointChecked,
    CommandFinished,
    EffectFailed,
    Event,
    InstanceLaunched,
    InstanceObserved,
    ObjectRead,
    PrefixListed,
    ReportIngested,
    ResumeRequested,
)
from supervisor.core.leases import Lease
from supervisor.core.records import ActionRecord, AttachmentRecord, ReportProblemRecord
from supervisor.core.reports import (
    MAX_REPORT_BYTES,
    MAX_STATUS_BYTES,
    REPORT_UNREADABLE,
    StatusReport,
    parse_report,
    unreadable_note,
)
from supervisor.core.run import Run
from supervisor.core.spec import RunSpec, Transport
from supervisor.core.values import InstanceState, S3Object
from supervisor.runtime.leases import LeaseBook
from supervisor.runtime.metrics import MetricsSink
from supervisor.runtime.ports import Clock, Cloud, InstanceShell, RunStore
from supervisor.runtime.retry import GaveUp, call_with_retries

MANIFEST_LIMIT = 16 * 1024 * 1024
CRASH_TAIL_BYTES = 64 * 1024  # the end of a crash report, where the traceback is
HEAD_CONCURRENCY = 16

_OPERATION = {
    Action.STOP: "StopInstances",
    Action.TERMINATE: "TerminateInstances",
    Action.START: "StartInstances",
}


class Note(Protocol):
    """How the executor tells what it did: the monitor logs it, keeps it and streams it to
    `tail -f` (`level="debug"`: to live followers only)."""

    def __call__(self, name: str, *, level: str = "info", **fields: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class ExecutorPorts:
    """What carrying out effects needs; shared by every monitor."""

    store: RunStore
    cloud: Cloud
    clock: Clock
    shells: Mapping[Transport, InstanceShell]
    retry_base_s: float
    observe: Callable[[], None]
    """Ask the reconciler for a prompt, batched describe."""
    metrics: MetricsSink = field(default_factory=MetricsSink)
    leases: LeaseBook | None = None
    """The leases of this replica (issue 14): no AWS call for a run without a live one, no
    action on an instance with less than its margin left; writes fenced by them."""


@dataclass(frozen=True, slots=True)
class _Job:
    """One effect being carried out: for which run (as committed), with which ports, and
    where its notes go."""

    run: Run
    ports: ExecutorPorts
    note: Note

    @property
    def spec(self) -> RunSpec:
        return self.run.spec

    @property
    def lease(self) -> Lease | None:
        """The lease this job's writes go under (`LeaseLost` if it is gone)."""
        leases = self.ports.leases
        return leases.fence(self.spec.run_id) if leases is not None else None

    def check_lease(self, *, acting: bool) -> None:
        """Before an AWS call: `LeaseLost` unless the run's lease is live (with the action
        margin left, for an action on an instance)."""
        if self.ports.leases is not None:
            self.ports.leases.check(self.spec.run_id, acting=acting)


_E = TypeVar("_E")
_CarryOut = Callable[[Any, _Job], Awaitable[Event | None]]
_CARRY_OUT: dict[type[Any], _CarryOut] = {}


def _carries_out(
    effect_type: type[_E],
) -> Callable[
    [Callable[[_E, _Job], Awaitable[Event | None]]], Callable[[_E, _Job], Awaitable[Event | None]]
]:
    def register(
        function: Callable[[_E, _Job], Awaitable[Event | None]],
    ) -> Callable[[_E, _Job], Awaitable[Event | None]]:
        _CARRY_OUT[effect_type] = function
        return function

    return register


class Executor:
    """Carries out effects through its ports; one for the whole daemon."""

    def __init__(self, ports: ExecutorPorts) -> None:
        self.ports = ports

    def __repr__(self) -> str:
        return f"<Executor effects={sorted(t.__name__ for t in _CARRY_OUT)}>"

    async def execute(self, effect: Effect, run: Run, note: Note) -> Event | None:
        """Carry out `effect` for `run` (its committed state) and return the event it led to.
        AWS errors come back as events (`EffectFailed`, `CheckpointChecked(ok=False)`...);
        anything else raised is a bug, which the monitor's guard records on the run."""
        carry_out = _CARRY_OUT.get(type(effect))
        if carry_out is None:
            raise AssertionError(f"the executor does not carry out {effect!r}")
        job = _Job(run, self.ports, note)
        # Issue 14: a replica whose lease is gone (or, to act on the instance, nearly gone)
        # makes no AWS call at all; `LeaseLost` stops the monitor.
        job.check_lease(acting=isinstance(effect, _ACTIONS))
        return await carry_out(effect, job)


_ACTIONS = (ActOnInstance, LaunchInstance, RunInstanceCommand)
"""Effects that act on an instance: started only with the lease's margin left."""


def failed_event(operation: str, error: ExternalError) -> EffectFailed:
    return EffectFailed(
        operation, error.code, error.message, transient=isinstance(error, TransientError)
    )


@_carries_out(ObserveInstance)
async def _observe(effect: ObserveInstance, job: _Job) -> Event | None:
    """Ask the reconciler's next batched describe, or (an event said the instance changed)
    describe this run's instance now."""
    if not effect.direct:
        job.ports.observe()
        return None
    run = job.run
    try:
        states = await job.ports.cloud.describe_instances([run.instance_id], job.spec.region)
    except ExternalError as exc:
        job.note("describe_failed", level="warning", code=exc.code, message=exc.message)
        job.ports.observe()  # the next sweep looks instead
        return None
    state = states.get(run.instance_id, InstanceState.UNKNOWN)
    return InstanceObserved(state, source="event", instance_id=run.instance_id)


@_carries_out(ListPrefix)
async def _list_prefix(effect: ListPrefix, job: _Job) -> Event:
    spec = job.spec
    try:
        objects = await job.ports.cloud.list_objects(effect.request, spec.region)
    except ExternalError as exc:
        job.note("prefix_check_failed", level="warning", code=exc.code, message=exc.message)
        return failed_event("ListObjectsV2", exc)
    relative = tuple(replace(o, key=spec.prefix.relative(o.key)) for o in objects)
    job.note("prefix_checked", level="debug", objects=len(relative), check=job.run.checks + 1)
    if not effect.request.with_uploads:
        return PrefixListed(relative)
    request = effect.request
    try:
        uploads = await job.ports.cloud.list_uploads(request.bucket, request.prefix, spec.region)
    except ExternalError as exc:
        job.note("uploads_check_failed", level="warning", code=exc.code, message=exc.message)
        return failed_event("ListMultipartUploads", exc)
    return PrefixListed(relative, tuple(spec.prefix.relative(key) for key in uploads))


@_carries_out(ReadObject)
async def _read_object(effect: ReadObject, job: _Job) -> Event:
    spec, key = job.spec, effect.key
    try:
        body = await job.ports.cloud.read_object(
            spec.prefix.bucket, spec.prefix.key(key), spec.region
        )
    except NotFoundError:
        body = ""
    except ExternalError as exc:
        body = f"(could not read {key}: {exc.code})"
    return ObjectRead(key, body)


@_carries_out(IngestReport)
async def _ingest(effect: IngestReport, job: _Job) -> Event | None:
    """Read one report file the job changed, and store what it says."""
    spec, ports = job.spec, job.ports
    key, etag, size = effect.key, effect.etag, effect.size
    limit = MAX_STATUS_BYTES if key == spec.heartbeat_file else MAX_REPORT_BYTES
    if size > limit:
        why = f"{key} is {size} bytes; reports over {limit} bytes are not read"
        return await _report_problem(job, key, etag, why)
    try:
        text = await ports.cloud.read_object(
            spec.prefix.bucket, spec.prefix.key(key), spec.region, limit=limit
        )
        report = parse_report(key, text, heartbeat_file=spec.heartbeat_file)
    except NotFoundError:
        return ReportIngested(key, etag, error="deleted before it was read")
    except TransientError as exc:  # read it at the next check
        job.note("report_unread", level="warning", key=key, code=exc.code)
        return None
    except (ExternalError, InvalidInput) as exc:
        return await _report_problem(job, key, etag, str(exc)[:300])
    now = ports.clock.now()
    await ports.store.record_report(spec.run_id, key, report, read_at=now, now=now, lease=job.lease)
    job.note("report_ingested", key=key, etag=etag, bytes=size)
    progress = None
    if isinstance(report, StatusReport) and report.step is not None:
        # The job's own time spaces the steps best; a time without a zone cannot be compared.
        written = report.time if report.time is not None and report.time.tzinfo else now
        progress = ProgressSample(report.step, report.total_steps, written)
    return ReportIngested(key, etag, progress=progress)


async def _report_problem(job: _Job, key: str, etag: str, problem: str) -> ReportIngested:
    """RunStore a note that this version of a report file could not be read: it outlives the
    monitor (`show` and `tail` print it after the run ended)."""
    note = unreadable_note(problem)
    await job.ports.store.record_report_problem(
        ReportProblemRecord(
            run_id=job.spec.run_id, key=key, etag=etag, note=note, noted_at=job.ports.clock.now()
        ),
        lease=job.lease,
    )
    job.note(REPORT_UNREADABLE, level="warning", key=key, error=note)
    return ReportIngested(key, etag, error=problem)


@_carries_out(AttachCrashReport)
async def _attach_crash_report(effect: AttachCrashReport, job: _Job) -> None:
    """Attach the job's crash report, with its last lines, if the job left one."""
    spec, ports = job.spec, job.ports
    uri = str(S3Object(spec.prefix.bucket, spec.prefix.key(effect.key)))
    try:
        record = await read_crash_report(
            ports.cloud, spec, effect.key, now=ports.clock.now(), retry_base_s=ports.retry_base_s
        )
    except GaveUp as gave_up:  # the run has ended: only a restart looks again
        job.note("crash_report_unread", level="warning", uri=uri, code=gave_up.error.code)
        return
    if record is None:
        job.note("crash_report_absent", level="debug", uri=uri)
        return
    await ports.store.attach(record, lease=job.lease)
    job.note("crash_report_attached", uri=uri, bytes=record.size)
    return


@_carries_out(RunInstanceCommand)
async def _run_command(effect: RunInstanceCommand, job: _Job) -> CommandFinished:
    """Run the instance program (in the foreground here: the monitor decides whether this
    runs in its own task)."""
    run, spec, command = job.run, job.spec, effect.command
    shell = job.ports.shells[spec.transport]
    # The unique part first: SSM keeps 100 characters and run ids may be long.
    comment = f"supervisor {uuid.uuid4().hex[:12]} {command.kind} {spec.run_id}"
    job.note(
        "command_sent",
        kind=str(command.kind),
        transport=str(spec.transport),
        instance_id=run.instance_id,
    )
    started = time.monotonic()
    try:
        result = await shell.run(
            run.instance_id, spec.region, command, timeout_s=effect.timeout_s, comment=comment
        )
    except ExternalError as exc:
        result = CommandResult(
            CommandStatus.UNDELIVERED,
            None,
            stderr=str(exc),
            result={"ok": False, "error": str(exc)},
        )
    job.note(
        "command_finished",
        kind=str(command.kind),
        status=str(result.status),
        ok=result.ok,
        seconds=round(time.monotonic() - started, 3),
        **({} if result.ok else {"error": result.error()[:300]}),
    )
    return CommandFinished(command.kind, result)


@_carries_out(VerifyCheckpoint)
async def _verify_checkpoint(effect: VerifyCheckpoint, job: _Job) -> CheckpointChecked:
    """Read the checkpoint's manifest and check every file it names in S3 (size, SHA-256)."""
    spec, ports, bucket, key = job.spec, job.ports, effect.bucket, effect.manifest_key
    started = time.monotonic()
    location = spec.early_checkpoint_location if effect.early else spec.checkpoint_location

    def failed(problem: str) -> CheckpointChecked:
        verification = Verification(False, 0, 0, (problem,))
        return CheckpointChecked(verification, None, time.monotonic() - started)

    # Reads are retried like actions: a throttled HEAD is not a missing file, and a
    # verification that fails for nothing reruns the whole checkpoint step.
    base_s = ports.retry_base_s
    try:
        text, _ = await call_with_retries(
            lambda: ports.cloud.read_object(bucket, key, spec.region, limit=MANIFEST_LIMIT),
            base_s=base_s,
        )
        manifest = Manifest.model_validate_json(text)
    except GaveUp as gave_up:
        error = gave_up.error
        if isinstance(error, NotFoundError):
            return failed(f"no manifest at s3://{bucket}/{key}")
        return failed(f"could not read the manifest: {error.code}: {error.message}")
    except ValidationError as exc:
        return failed(f"the manifest is not valid: {exc.error_count()} problem(s)")
    limit = asyncio.Semaphore(HEAD_CONCURRENCY)
    unchecked: dict[str, str] = {}

    async def head(file_key: str) -> tuple[str, StoredObject | None]:
        async with limit:
            try:
                found, _ = await call_with_retries(
                    lambda: ports.cloud.head_object(manifest.bucket, file_key, spec.region),
                    base_s=base_s,
                )
            except GaveUp as gave_up:
                unchecked[file_key] = gave_up.error.code
                return file_key, None
            return file_key, found

    stored = dict(await asyncio.gather(*(head(f.key) for f in manifest.files)))
    if unchecked:
        codes = ", ".join(sorted(set(unchecked.values())))
        return failed(f"could not check {len(unchecked)} file(s) in S3 ({codes})")
    verification = verify(
        manifest, stored, bucket=location.bucket, prefix=location.prefix, run_id=spec.run_id
    )
    ports.metrics.checkpoint_checked(verification, early=effect.early)
    job.note(
        "checkpoint_checked",
        ok=verification.ok,
        files=verification.files,
        bytes=verification.bytes,
        problems=list(verification.problems[:3]),
    )
    return CheckpointChecked(verification, manifest, time.monotonic() - started)


@_carries_out(LaunchInstance)
async def _launch(effect: LaunchInstance, job: _Job) -> Event:
    """Launch the run's next instance from its launch template (idempotent per attempt)."""
    run, spec = job.run, job.spec
    assert spec.launch_template is not None
    token = f"supervisor-{spec.run_id}-{run.attempt + 1}"[:64]
    try:
        instance_id = await job.ports.cloud.launch_from_template(
            spec.launch_template, {"supervisor:run-id": spec.run_id}, spec.region, token=token
        )
    except ExternalError as exc:
        job.note("launch_failed", level="warning", code=exc.code, message=exc.message)
        return failed_event("RunInstances", exc)
    job.note("instance_launched", instance_id=instance_id)
    return InstanceLaunched(instance_id)


@_carries_out(AutoResume)
async def _auto_resume(effect: AutoResume, job: _Job) -> Event:
    job.note("resume_by_policy", from_scratch=effect.from_scratch)
    return ResumeRequested(from_scratch=effect.from_scratch)


@_carries_out(ActOnInstance)
async def _act(effect: ActOnInstance, job: _Job) -> Event:
    """Stop, terminate or start the run's instance, retried; each try recorded."""
    run, spec, ports, action = job.run, job.spec, job.ports, effect.action
    operation = _OPERATION[action]
    cloud = ports.cloud
    call = {
        Action.STOP: cloud.stop_instance,
        Action.TERMINATE: cloud.terminate_instance,
        Action.START: cloud.start_instance,
    }[action]

    def on_retry(error: ExternalError, attempt: int, wait_s: float) -> None:
        job.note(
            "action_retrying",
            level="warning",
            operation=operation,
            attempt=attempt,
            code=error.code,
            wait_s=round(wait_s, 3),
        )

    async def attempt() -> InstanceState:
        job.check_lease(acting=True)  # each retry too: the lease may run out meanwhile
        return await call(run.instance_id, spec.region)

    job.note("action_requested", operation=operation, instance_id=run.instance_id)
    try:
        state, attempts = await call_with_retries(
            attempt,
            base_s=ports.retry_base_s,
            on_retry=on_retry,
        )
    except GaveUp as gave_up:
        error = gave_up.error
        gone = isinstance(error, NotFoundError)
        outcome = "gone" if gone else "gave-up" if isinstance(error, TransientError) else "failed"
        await _record_action(job, action, gave_up.attempts, outcome, error)
        ports.metrics.instance_acted("run", action, outcome, run_id=spec.run_id)
        job.note(
            "action_" + outcome.replace("-", "_"),
            level="warning",
            operation=operation,
            attempts=gave_up.attempts,
            code=error.code,
            message=error.message,
        )
        if gone:
            return InstanceObserved(
                InstanceState.UNKNOWN,
                source=f"{operation}: {error.code}",
                instance_id=run.instance_id,
            )
        return failed_event(operation, error)
    await _record_action(job, action, attempts, "accepted", None)
    ports.metrics.instance_acted("run", action, "accepted", run_id=spec.run_id)
    job.note("action_accepted", operation=operation, attempts=attempts, state=str(state))
    return ActionSucceeded(action, state)


async def _record_action(
    job: _Job, action: Action, attempts: int, outcome: str, error: ExternalError | None
) -> None:
    await job.ports.store.record_action(
        ActionRecord(
            run_id=job.spec.run_id,
            instance_id=job.run.instance_id,
            action=str(action),
            at=job.ports.clock.now(),
            attempts=attempts,
            outcome=outcome,
            error_code=error.code if error else None,
            message=error.message if error else None,
        ),
        lease=job.lease,
    )


async def read_crash_report(
    cloud: Cloud, spec: RunSpec, key: str, *, now: datetime, retry_base_s: float
) -> AttachmentRecord | None:
    """The job's crash report under the run prefix as a `crash-log` attachment (its last
    64 KiB, from a whole line), or None if the job left none. Reads are retried; raises
    `GaveUp` if S3 would not say."""
    prefix = spec.prefix
    try:
        (text, size), _ = await call_with_retries(
            lambda: cloud.read_tail(
                prefix.bucket, prefix.key(key), spec.region, limit=CRASH_TAIL_BYTES
            ),
            base_s=retry_base_s,
        )
    except GaveUp as gave_up:
        if isinstance(gave_up.error, NotFoundError):
            return None
        raise
    return AttachmentRecord(
        run_id=spec.run_id,
        kind="crash-log",
        uri=str(S3Object(prefix.bucket, prefix.key(key))),
        added_at=now,
        size=size,
        excerpt=text,
    )
