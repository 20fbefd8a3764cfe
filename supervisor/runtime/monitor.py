"""One monitor per run: feeds events to `step()`, commits, then carries out the effects.

A monitor handles one event at a time, so an effect's result is applied before any other
event of the run is looked at: a stop call in flight cannot be duplicated by an observation
that arrives meanwhile. Order within one event: the decision is committed (intent), and only
then are its effects carried out.

One exception: an instance command marked `background` (a rebalance's early checkpoint, which
may upload for many minutes) runs as a task in the monitor's TaskGroup and sends its result
back as an event, so a spot warning meanwhile is handled at once. Leaving running/stalled
cancels it.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import structlog
from pydantic import ValidationError

from supervisor.adapters.protocol import MonitorEventView, TailItem, TransitionView
from supervisor.adapters.store import ActionRecord, AttachmentRecord, ReportProblemRecord, Store
from supervisor.core.checkpoint import (
    CommandResult,
    CommandStatus,
    InstanceCommand,
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
    WakeAt,
)
from supervisor.core.errors import (
    ExternalError,
    InvalidInput,
    InvalidTransition,
    NotFoundError,
    TransientError,
)
from supervisor.core.events import (
    Action,
    ActionSucceeded,
    Armed,
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
    Tick,
)
from supervisor.core.machine import Decision, Policy, step
from supervisor.core.reports import (
    MAX_REPORT_BYTES,
    MAX_STATUS_BYTES,
    REPORT_UNREADABLE,
    parse_report,
    unreadable_note,
)
from supervisor.core.run import Phase, Run
from supervisor.core.spec import RunSpec, Transport
from supervisor.core.values import InstanceState, S3Object
from supervisor.runtime.metrics import MetricsSink
from supervisor.runtime.ports import Clock, Cloud, InstanceShell
from supervisor.runtime.retry import GaveUp, call_with_retries

log = structlog.get_logger("supervisor.monitor")

_OPERATION = {
    Action.STOP: "StopInstances",
    Action.TERMINATE: "TerminateInstances",
    Action.START: "StartInstances",
}
MANIFEST_LIMIT = 16 * 1024 * 1024
CRASH_TAIL_BYTES = 64 * 1024  # the end of a crash report, where the traceback is
HEAD_CONCURRENCY = 16
RECENT_EVENTS = 50
_BACKGROUND_PHASES = frozenset({Phase.RUNNING, Phase.STALLED})
"""Phases in which a background command (an early checkpoint) may go on."""


@dataclass(frozen=True, slots=True)
class MonitorDeps:
    """What every monitor shares: one store, one cloud adapter, one clock, the policies."""

    store: Store
    cloud: Cloud
    clock: Clock
    policy: Policy
    rng: random.Random
    retry_base_s: float
    observe: Callable[[], None]
    """Ask the reconciler for a prompt, batched describe."""
    shells: Mapping[Transport, InstanceShell]
    metrics: MetricsSink = field(default_factory=MetricsSink)


def transition_view(seq: int, decision: Decision) -> TransitionView:
    t = decision.transition
    assert t is not None
    return TransitionView.model_validate(
        {
            "seq": seq,
            "from": t.from_phase,
            "to": t.to_phase,
            "at": t.at,
            "reason": t.reason,
            "detail": dict(t.detail),
        }
    )


class Monitor:
    """One run's event loop. Ten thousand of these live in one process, so what each holds is
    kept small: no per-monitor asyncio.Event (a future exists only while someone waits), and
    the logger, the recent-event ring and the subscriber set are made on first use."""

    def __init__(self, run: Run, deps: MonitorDeps) -> None:
        self.run = run
        self._deps = deps
        self._items: list[tuple[Event, asyncio.Future[Decision] | None]] = []
        """Queued inputs, oldest first (a list: it is nearly always empty, and an empty deque
        costs ten times the memory)."""
        self._waiter: asyncio.Future[None] | None = None
        """Set while the loop waits for an input; resolved by `_wake`."""
        self._wake_at: datetime | None = None
        self.busy = False
        """Handling an event (a decision, its commit and its effects)."""
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._settle: dict[int, bool] = {}
        self._finished = False
        self._closing = False
        self._recent: deque[MonitorEventView] | None = None
        self._subscribers: set[asyncio.Queue[TailItem]] | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._background: list[asyncio.Task[None]] = []

    @property
    def run_id(self) -> str:
        return self.run.spec.run_id

    @functools.cached_property
    def _log(self) -> Any:
        return log.bind(run_id=self.run_id)

    @property
    def recent(self) -> tuple[MonitorEventView, ...]:
        """The last monitor events (at most `RECENT_EVENTS`), oldest first."""
        return tuple(self._recent or ())

    async def wait_idle(self) -> None:
        """Return once the event in hand (if any) is handled."""
        if self.busy:
            waiter = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
            await waiter

    def close(self) -> None:
        """Take no further events; the one in hand (if any) is finished."""
        self._closing = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __repr__(self) -> str:
        state = "busy" if self.busy else "idle"
        return f"<Monitor {self.run!r} {state} queued={len(self._items)} wake={self._wake_at}>"

    # -- inputs -------------------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        """Queue an observed fact (from the reconciler or the event consumer).

        Observations are level-triggered: a newer instance state replaces one still queued,
        so a monitor busy with a long command does not pile up one per sweep."""
        if isinstance(event, InstanceObserved) and self._items:
            last, reply = self._items[-1]
            if reply is None and isinstance(last, InstanceObserved):
                self._items[-1] = (event, None)
                return
        self._items.append((event, None))
        self._wake()

    async def request(self, event: Event, *, settle: bool = False) -> Decision:
        """Queue a request; return once its decision is committed, or raise
        `InvalidTransition` if the run's phase does not allow it.

        With `settle`, return only after everything the event led to (effects and the
        decisions they caused) is committed: the queue consumer deletes a message then."""
        if self._finished:
            raise InvalidTransition(f"run {self.run_id} is {self.run.phase}: not watched now")
        reply: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._items.append((event, reply))
        self._settle[id(reply)] = settle
        self._wake()
        return await reply

    def subscribe(self) -> asyncio.Queue[TailItem]:
        queue: asyncio.Queue[TailItem] = asyncio.Queue(maxsize=1000)
        if self._subscribers is None:
            self._subscribers = set()
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[TailItem]) -> None:
        if self._subscribers is not None:
            self._subscribers.discard(queue)

    # -- the loop -----------------------------------------------------------------------------

    async def run_forever(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                await self._handle(Armed(), None)
                while not self.run.phase.is_terminal:
                    event, reply = await self._next()
                    await self._handle(event, reply)
                self._cancel_background()
        except BaseExceptionGroup as group:
            # The loop's own error (or a background task's), not the group wrapping it: the
            # daemon records its type and message on the run.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            self._tasks = None
            self._finished = True
            for _, reply in self._items:
                if reply is not None and not reply.done():
                    reply.set_exception(InvalidTransition(f"run {self.run_id} is {self.run.phase}"))

    async def _next(self) -> tuple[Event, asyncio.Future[Decision] | None]:
        while True:
            if self._closing:
                await asyncio.Event().wait()  # until cancelled by the daemon's shutdown
            if self._wake_at is not None:
                remaining = (self._wake_at - self._deps.clock.now()).total_seconds()
                if remaining <= 0:
                    self._wake_at = None
                    return Tick(), None
            if self._items:
                return self._items.pop(0)
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            timer = None
            if self._wake_at is not None:
                timer = asyncio.get_running_loop().call_later(remaining, self._wake)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()

    async def _handle(self, event: Event, reply: asyncio.Future[Decision] | None) -> None:
        self.busy = True
        settle = self._settle.pop(id(reply), False) if reply is not None else False
        last: Decision | None = None
        try:
            pending: deque[Event] = deque([event])
            while pending:
                current = pending.popleft()
                try:
                    decision = step(
                        self.run,
                        current,
                        now=self._deps.clock.now(),
                        policy=self._deps.policy,
                        rng=self._deps.rng,
                    )
                except InvalidTransition as exc:
                    if reply is not None and current is event:
                        reply.set_exception(exc)
                        return
                    self._log.info("event_ignored", kind=type(current).__name__, why=str(exc))
                    continue
                await self._commit(decision)
                last = decision
                if reply is not None and current is event and not settle:
                    reply.set_result(decision)
                for effect in decision.effects:
                    follow = await self._execute(effect)
                    if follow is not None:
                        pending.append(follow)
            if reply is not None and not reply.done() and last is not None:
                reply.set_result(last)
        except BaseException as exc:
            if reply is not None and not reply.done():
                reply.set_exception(exc)
            raise
        finally:
            self.busy = False
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _commit(self, decision: Decision) -> None:
        before = self.run
        await self._deps.store.commit(before, decision, now=self._deps.clock.now())
        self.run = decision.run
        self._deps.metrics.transitioned(before, decision)
        t = decision.transition
        if t is not None and t.to_phase not in _BACKGROUND_PHASES:
            self._cancel_background()
        if t is not None:
            self._log.info(
                "run_transitioned",
                from_phase=t.from_phase,
                to_phase=t.to_phase,
                reason=t.reason,
                outcome=decision.run.outcome,
            )
            self._publish(
                TailItem(
                    kind="transition", transition=transition_view(decision.run.version, decision)
                )
            )

    def _note(self, name: str, *, level: str = "info", **fields: Any) -> None:
        """A monitor event: logged, kept in the recent ring, streamed to `tail -f`.

        A debug event (a routine prefix check) goes to live `tail -f` followers only: kept in
        the ring it would push out what matters, and ten thousand rings of routine checks
        would cost hundreds of megabytes."""
        getattr(self._log, level)(name, **fields)
        routine = level == "debug"
        if routine and not self._subscribers:
            return
        view = MonitorEventView(
            at=self._deps.clock.now(), run_id=self.run_id, event=name, fields=fields
        )
        if not routine:
            if self._recent is None:
                self._recent = deque(maxlen=RECENT_EVENTS)
            self._recent.append(view)
        self._publish(TailItem(kind="event", event=view))

    def _publish(self, item: TailItem) -> None:
        for queue in self._subscribers or ():
            if not queue.full():
                queue.put_nowait(item)

    # -- effects ------------------------------------------------------------------------------

    async def _execute(self, effect: Effect) -> Event | None:
        spec = self.run.spec
        match effect:
            case WakeAt(at=at):
                self._wake_at = at
                return None
            case ObserveInstance(direct=False):
                self._deps.observe()
                return None
            case ObserveInstance(direct=True):
                return await self._describe()
            case AttachCrashReport(key=key):
                await self._attach_crash_report(key)
                return None
            case IngestReport(key=key, etag=etag, size=size):
                return await self._ingest(key, etag, size)
            case ListPrefix(request=request):
                try:
                    objects = await self._deps.cloud.list_objects(request, spec.region)
                except ExternalError as exc:
                    self._note(
                        "prefix_check_failed", level="warning", code=exc.code, message=exc.message
                    )
                    return _failed("ListObjectsV2", exc)
                prefix = spec.prefix
                relative = tuple(replace(o, key=prefix.relative(o.key)) for o in objects)
                self._note(
                    "prefix_checked",
                    level="debug",
                    objects=len(relative),
                    check=self.run.checks + 1,
                )
                return PrefixListed(relative)
            case ReadObject(key=key):
                prefix = spec.prefix
                try:
                    body = await self._deps.cloud.read_object(
                        prefix.bucket, prefix.key(key), spec.region
                    )
                except NotFoundError:
                    body = ""
                except ExternalError as exc:
                    body = f"(could not read {key}: {exc.code})"
                return ObjectRead(key, body)
            case ActOnInstance(action=action):
                return await self._act(action)
            case RunInstanceCommand(command=command, timeout_s=timeout_s, background=True):
                self._start_background(command, timeout_s)
                return None
            case RunInstanceCommand(command=command, timeout_s=timeout_s):
                return await self._run_command(command, timeout_s)
            case VerifyCheckpoint(bucket=bucket, manifest_key=key, early=early):
                return await self._verify_checkpoint(bucket, key, early=early)
            case LaunchInstance():
                return await self._launch()
            case AutoResume(from_scratch=from_scratch):
                self._note("resume_by_policy", from_scratch=from_scratch)
                return ResumeRequested(from_scratch=from_scratch)
        raise AssertionError(f"unknown effect {effect!r}")

    def _start_background(self, command: InstanceCommand, timeout_s: float) -> None:
        assert self._tasks is not None
        task = self._tasks.create_task(self._in_background(command, timeout_s))
        self._background.append(task)
        task.add_done_callback(self._background.remove)

    async def _in_background(self, command: InstanceCommand, timeout_s: float) -> None:
        early = command.option("mode") == "early"
        try:
            finished = await self._run_command(command, timeout_s)
        except asyncio.CancelledError:
            self._note("command_cancelled", kind=str(command.kind), early=early)
            raise
        except Exception as exc:  # it must not take the monitor down with it
            self._log.exception("background_command_failed")
            result = CommandResult(CommandStatus.FAILED, None, result={"ok": False,
                                   "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
            finished = CommandFinished(command.kind, result)
        self.deliver(replace(finished, early=early))

    def _cancel_background(self) -> None:
        for task in list(self._background):
            task.cancel()

    async def _describe(self) -> Event | None:
        """Describe this run's instance now (an event said it changed)."""
        run = self.run
        try:
            states = await self._deps.cloud.describe_instances([run.instance_id], run.spec.region)
        except ExternalError as exc:
            self._note("describe_failed", level="warning", code=exc.code, message=exc.message)
            self._deps.observe()  # the next sweep looks instead
            return None
        state = states.get(run.instance_id, InstanceState.UNKNOWN)
        return InstanceObserved(state, source="event", instance_id=run.instance_id)

    async def _ingest(self, key: str, etag: str, size: int) -> Event | None:
        """Read one report file the job changed, and store what it says."""
        spec = self.run.spec
        prefix = spec.prefix
        limit = MAX_STATUS_BYTES if key == spec.heartbeat_file else MAX_REPORT_BYTES
        if size > limit:
            why = f"{key} is {size} bytes; reports over {limit} bytes are not read"
            return await self._report_problem(key, etag, why)
        try:
            text = await self._deps.cloud.read_object(
                prefix.bucket, prefix.key(key), spec.region, limit=limit
            )
            report = parse_report(key, text, heartbeat_file=spec.heartbeat_file)
        except NotFoundError:
            return ReportIngested(key, etag, error="deleted before it was read")
        except TransientError as exc:  # read it at the next check
            self._note("report_unread", level="warning", key=key, code=exc.code)
            return None
        except (ExternalError, InvalidInput) as exc:
            return await self._report_problem(key, etag, str(exc)[:300])
        now = self._deps.clock.now()
        await self._deps.store.record_report(spec.run_id, key, report, read_at=now, now=now)
        self._note("report_ingested", key=key, etag=etag, bytes=size)
        return ReportIngested(key, etag)

    async def _report_problem(self, key: str, etag: str, problem: str) -> ReportIngested:
        """Store a note that this version of a report file could not be read: it outlives
        the monitor (`show` and `tail` print it after the run ended)."""
        note = unreadable_note(problem)
        await self._deps.store.record_report_problem(
            ReportProblemRecord(
                run_id=self.run_id, key=key, etag=etag, note=note, noted_at=self._deps.clock.now()
            )
        )
        self._note(REPORT_UNREADABLE, level="warning", key=key, error=note)
        return ReportIngested(key, etag, error=problem)

    async def _attach_crash_report(self, key: str) -> None:
        """Attach the job's crash report, with its last lines, if the job left one."""
        spec = self.run.spec
        uri = str(S3Object(spec.prefix.bucket, spec.prefix.key(key)))
        deps = self._deps
        try:
            record = await read_crash_report(
                deps.cloud, spec, key, now=deps.clock.now(), retry_base_s=deps.retry_base_s
            )
        except GaveUp as gave_up:  # the run has ended: only a restart looks again
            self._note("crash_report_unread", level="warning", uri=uri, code=gave_up.error.code)
            return
        if record is None:
            self._note("crash_report_absent", level="debug", uri=uri)
            return
        await deps.store.attach(record)
        self._note("crash_report_attached", uri=uri, bytes=record.size)

    async def _run_command(self, command: InstanceCommand, timeout_s: float) -> CommandFinished:
        run, spec = self.run, self.run.spec
        shell = self._deps.shells[spec.transport]
        # The unique part first: SSM keeps 100 characters and run ids may be long.
        comment = f"supervisor {uuid.uuid4().hex[:12]} {command.kind} {spec.run_id}"
        self._note(
            "command_sent",
            kind=str(command.kind),
            transport=str(spec.transport),
            instance_id=run.instance_id,
        )
        started = time.monotonic()
        try:
            result = await shell.run(
                run.instance_id, spec.region, command, timeout_s=timeout_s, comment=comment
            )
        except ExternalError as exc:
            result = CommandResult(
                CommandStatus.UNDELIVERED,
                None,
                stderr=str(exc),
                result={"ok": False, "error": str(exc)},
            )
        self._note(
            "command_finished",
            kind=str(command.kind),
            status=str(result.status),
            ok=result.ok,
            seconds=round(time.monotonic() - started, 3),
            **({} if result.ok else {"error": result.error()[:300]}),
        )
        return CommandFinished(command.kind, result)

    async def _verify_checkpoint(self, bucket: str, key: str, *, early: bool) -> Event:
        spec = self.run.spec
        started = time.monotonic()
        location = spec.early_checkpoint_location if early else spec.checkpoint_location

        def failed(problem: str) -> CheckpointChecked:
            verification = Verification(False, 0, 0, (problem,))
            return CheckpointChecked(verification, None, time.monotonic() - started)

        # Reads are retried like actions: a throttled HEAD is not a missing file, and a
        # verification that fails for nothing reruns the whole checkpoint step.
        base_s = self._deps.retry_base_s
        try:
            text, _ = await call_with_retries(
                lambda: self._deps.cloud.read_object(
                    bucket, key, spec.region, limit=MANIFEST_LIMIT
                ),
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
                        lambda: self._deps.cloud.head_object(
                            manifest.bucket, file_key, spec.region
                        ),
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
        self._deps.metrics.checkpoint_checked(verification, early=early)
        self._note(
            "checkpoint_checked",
            ok=verification.ok,
            files=verification.files,
            bytes=verification.bytes,
            problems=list(verification.problems[:3]),
        )
        return CheckpointChecked(verification, manifest, time.monotonic() - started)

    async def _launch(self) -> Event:
        run, spec = self.run, self.run.spec
        assert spec.launch_template is not None
        token = f"supervisor-{spec.run_id}-{run.attempt + 1}"[:64]
        try:
            instance_id = await self._deps.cloud.launch_from_template(
                spec.launch_template, {"supervisor:run-id": spec.run_id}, spec.region, token=token
            )
        except ExternalError as exc:
            self._note("launch_failed", level="warning", code=exc.code, message=exc.message)
            return _failed("RunInstances", exc)
        self._note("instance_launched", instance_id=instance_id)
        return InstanceLaunched(instance_id)

    async def _act(self, action: Action) -> Event:
        run, spec = self.run, self.run.spec
        operation = _OPERATION[action]
        cloud = self._deps.cloud
        call = {
            Action.STOP: cloud.stop_instance,
            Action.TERMINATE: cloud.terminate_instance,
            Action.START: cloud.start_instance,
        }[action]

        def on_retry(error: ExternalError, attempt: int, wait_s: float) -> None:
            self._note(
                "action_retrying",
                level="warning",
                operation=operation,
                attempt=attempt,
                code=error.code,
                wait_s=round(wait_s, 3),
            )

        self._note("action_requested", operation=operation, instance_id=run.instance_id)
        try:
            state, attempts = await call_with_retries(
                lambda: call(run.instance_id, spec.region),
                base_s=self._deps.retry_base_s,
                on_retry=on_retry,
            )
        except GaveUp as gave_up:
            error = gave_up.error
            gone = isinstance(error, NotFoundError)
            outcome = (
                "gone" if gone else "gave-up" if isinstance(error, TransientError) else ("failed")
            )
            await self._record(action, gave_up.attempts, outcome, error)
            self._deps.metrics.instance_acted("run", action, outcome, run_id=spec.run_id)
            self._note(
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
            return _failed(operation, error)
        await self._record(action, attempts, "accepted", None)
        self._deps.metrics.instance_acted("run", action, "accepted", run_id=spec.run_id)
        self._note("action_accepted", operation=operation, attempts=attempts, state=str(state))
        return ActionSucceeded(action, state)

    async def _record(
        self, action: Action, attempts: int, outcome: str, error: ExternalError | None
    ) -> None:
        spec = self.run.spec
        await self._deps.store.record_action(
            ActionRecord(
                run_id=spec.run_id,
                instance_id=self.run.instance_id,
                action=str(action),
                at=self._deps.clock.now(),
                attempts=attempts,
                outcome=outcome,
                error_code=error.code if error else None,
                message=error.message if error else None,
            )
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


def _failed(operation: str, error: ExternalError) -> EffectFailed:
    return EffectFailed(
        operation, error.code, error.message, transient=isinstance(error, TransientError)
    )
