"""The daemon: one TaskGroup holding the control server, the root tasks (the reconciler, the
zombie sweep, the event consumer: restarted when they fail, see `runtime.root_tasks`) and a
guarded monitor task per run; the control API; two-phase shutdown.

Start-up re-adopts every non-terminal run from SQLite with no AWS call per run; runs whose
intent was open are re-driven through one batched describe.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog

from supervisor import __version__
from supervisor.adapters.aws import queue_region
from supervisor.adapters.control import ControlServer, parse_since_days
from supervisor.adapters.metrics_http import Exposition, MetricsServer
from supervisor.adapters.protocol import (
    ActionView,
    AttachFileRequest,
    AttachmentView,
    AttachRequest,
    DaemonStatus,
    InstanceView,
    MonitorEventView,
    ReportProblemView,
    ReportView,
    RunDetail,
    RunView,
    TailItem,
    TrainingLogItem,
    TransitionView,
    ZombieList,
)
from supervisor.adapters.store import AttachmentRecord, RunRecord, Store
from supervisor.core.attachments import (
    AttachmentKind,
    parse_attachment_kind,
    parse_attachment_uri,
)
from supervisor.core.errors import (
    ExternalError,
    InvalidInput,
    InvalidTransition,
    NotFoundError,
    ShuttingDown,
    TransientError,
    UnknownRun,
)
from supervisor.core.events import MonitorFailed, ResumeRequested, UserAction, UserRequested
from supervisor.core.feed import FeedItem, MonitorNote
from supervisor.core.machine import ACCEPTS, Policy, new_run, run_id_taken, step
from supervisor.core.reports import REPORT_UNREADABLE
from supervisor.core.run import TERMINAL_PHASES, Phase, Run
from supervisor.core.spec import RunSpec, Transport
from supervisor.core.values import S3Object, parse_relative_key
from supervisor.core.zombies import RUN_TAG
from supervisor.runtime.events import EventConsumer, Queue
from supervisor.runtime.executor import (
    CRASH_TAIL_BYTES,
    Executor,
    ExecutorPorts,
    read_crash_report,
)
from supervisor.runtime.metrics import Metrics
from supervisor.runtime.monitor import Monitor, MonitorDeps
from supervisor.runtime.ports import Clock, Cloud, InstanceShell, SystemClock
from supervisor.runtime.reconciler import Reconciler
from supervisor.runtime.retry import GaveUp, call_with_retries
from supervisor.runtime.root_tasks import RestartPolicy, RootLoop, RootTasks, Sleep
from supervisor.runtime.settings import Settings
from supervisor.runtime.training_log import LogSource, stream_log
from supervisor.runtime.zombies import ZombieWatch, report_view, zombie_view

log = structlog.get_logger("supervisor.daemon")
CRASH_REPORT_LOOKBACK = timedelta(days=1)
"""How far back a start looks for crashed runs whose crash report was never read."""


class Daemon:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        cloud: Cloud,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        shells: Mapping[Transport, InstanceShell] | None = None,
        queue: Queue | None = None,
        restart_policy: RestartPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """`restart_policy` and `sleep`: how root tasks are restarted (tests pass a sleep that
        returns at once, and a policy of their own)."""
        self.settings = settings
        self.store = store
        self.cloud = cloud
        self.clock = clock or SystemClock()
        self.monitors: dict[str, Monitor] = {}
        self.metrics = Metrics(
            self.clock,
            runs=store.runs_by_phase_and_outcome,
            monitors=lambda: len(self.monitors),
            aws_calls=lambda: cloud.counter.outcomes,
        )
        self.reconciler = Reconciler(
            cloud, lambda: list(self.monitors.values()), interval_s=settings.reconcile_interval_s
        )
        self.shells = dict(shells or {})
        self.executor = Executor(
            ExecutorPorts(
                store=store,
                cloud=cloud,
                clock=self.clock,
                shells=self.shells,
                retry_base_s=settings.retry_base_s,
                observe=self.reconciler.kick,
                metrics=self.metrics,
            )
        )
        self._deps = MonitorDeps(
            store=store,
            clock=self.clock,
            policy=Policy(poll=settings.poll_policy),
            rng=rng or random.Random(),
            executor=self.executor,
            metrics=self.metrics,
        )
        self.policy = self._deps.policy
        self.rng = self._deps.rng
        self.root_tasks = RootTasks(
            self.clock,
            policy=restart_policy,
            rng=self.rng,
            sleep=sleep,
            on_restart=self.metrics.root_task_restarted,
            on_give_up=lambda failed: self.request_shutdown(str(failed)),
        )
        self.zombie_watch = ZombieWatch(
            store,
            cloud,
            self.clock,
            policy=settings.zombie_policy,
            interval_s=settings.zombie_interval_s,
            retry_base_s=settings.retry_base_s,
            metrics=self.metrics,
        )
        self.started_at = self.clock.now()
        self.accepting = False
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._tg: asyncio.TaskGroup | None = None
        self.consumer = self._consumer(queue) if settings.events_queue_url else None
        self.api = ControlApi(self)
        self.server = ControlServer(self.api, settings.socket_path)
        address = settings.metrics_address
        self.metrics_server = MetricsServer(self.metrics, *address) if address is not None else None

    def __repr__(self) -> str:
        return f"<Daemon monitors={len(self.monitors)} accepting={self.accepting}>"

    def _consumer(self, queue: Queue | None) -> EventConsumer:
        url = self.settings.events_queue_url
        assert url is not None
        region = queue_region(url) or self.cloud.default_region
        if queue is None or region is None:
            raise InvalidInput(
                f"SUPERVISOR_EVENTS_QUEUE_URL={url}: no region in the URL and none in the AWS "
                "configuration; set AWS_DEFAULT_REGION"
            )
        return EventConsumer(
            queue, url, region, lambda: list(self.monitors.values()), self.store, self.clock,
            spot_margin_s=self.settings.spot_margin_s, wait_s=self.settings.events_wait_s,
        )  # fmt: skip

    async def serve(self, *, on_ready: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run until `request_shutdown()`; then shut down in two phases and return. Raises
        `RootTaskFailed` after the shutdown if a root task kept failing."""
        if self.metrics_server is not None:  # first: a bad address fails before anything runs
            await self.metrics_server.start()
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            readopted = 0
            async for page in self.store.active_runs():
                for record in page:
                    self.spawn(record.run)
                readopted += len(page)
            self._start(self._attach_missed_crash_reports(), "crash-reports")
            for name, loop in self._root_loops():
                self.metrics.root_task_started(name)
                self._start(self.root_tasks.keep_running(name, loop), name)
            await self.server.start()
            self.accepting = True
            log.info(
                "daemon_started",
                pid=os.getpid(),
                readopted=readopted,
                socket=str(self.settings.socket_path),
            )
            if on_ready is not None:
                await on_ready()
            await self._stop.wait()
            await self._shutdown()
        if self.root_tasks.failed is not None:
            raise self.root_tasks.failed

    def _root_loops(self) -> list[tuple[str, RootLoop]]:
        loops: list[tuple[str, RootLoop]] = [
            ("reconciler", self.reconciler.run_forever),
            ("zombies", self.zombie_watch.run_forever),
        ]
        if self.consumer is not None:
            loops.append(("events", self.consumer.run_forever))
        return loops

    async def _attach_missed_crash_reports(self) -> None:
        """Once at start: a daemon killed between a crash's commit and reading the job's crash
        report lost that read, and an ended run is never looked at again. Read the reports
        of runs that crashed in the last day and have none attached (one GET each)."""
        since = self.clock.now() - CRASH_REPORT_LOOKBACK
        try:
            missed = await self.store.crashed_without_crash_log(since=since)
            for record in missed:
                spec = record.run.spec
                try:
                    attachment = await read_crash_report(
                        self.cloud, spec, spec.crash_report, now=self.clock.now(),
                        retry_base_s=self.settings.retry_base_s,
                    )  # fmt: skip
                except GaveUp as gave_up:
                    log.warning("crash_report_unread", run_id=spec.run_id, code=gave_up.error.code)
                    continue
                if attachment is not None:
                    await self.store.attach(attachment)
                    log.info("crash_report_attached", run_id=spec.run_id, uri=attachment.uri,
                             bytes=attachment.size, late=True)  # fmt: skip
        except Exception:  # a best-effort pass: it must not take the daemon down
            log.exception("crash_report_pass_failed")

    @property
    def closing(self) -> asyncio.Event:
        """Set once shutdown is requested: long-lived streams (a followed log) end on it."""
        return self._stop

    def request_shutdown(self, reason: str) -> None:
        log.info("shutdown_requested", reason=reason)
        self._stop.set()

    async def _shutdown(self) -> None:
        # Phase 1: take no new work; let in-flight transitions finish, up to the deadline.
        self.accepting = False
        for monitor in self.monitors.values():
            monitor.close()
        in_flight = [m.wait_idle() for m in self.monitors.values() if m.busy]
        if in_flight:
            waiters = [asyncio.ensure_future(w) for w in in_flight]
            _, still_busy = await asyncio.wait(waiters, timeout=self.settings.shutdown_timeout_s)
            for waiter in still_busy:
                waiter.cancel()
        busy = [m.run_id for m in self.monitors.values() if m.busy]
        # Phase 2: cancel the rest. Idle monitors lose nothing: their state is in SQLite.
        await self.server.close()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        for task in list(self._tasks):
            task.cancel()
        log.info("daemon_stopped", monitors=len(self.monitors), cancelled_in_flight=busy)

    def _start(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        assert self._tg is not None
        task = self._tg.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def spawn(self, run: Run) -> Monitor:
        monitor = Monitor(run, self._deps)
        self.monitors[run.spec.run_id] = monitor
        self._start(self._guarded(monitor), f"monitor:{run.spec.run_id}")
        return monitor

    async def _guarded(self, monitor: Monitor) -> None:
        """A monitor's crash is contained: its run goes to `failed`, nothing else is touched."""
        try:
            await monitor.run_forever()
            log.info("monitor_finished", run_id=monitor.run_id, phase=monitor.run.phase)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("monitor_crashed", run_id=monitor.run_id)
            await self._fail_run(monitor.run_id, exc)
        finally:
            if self.monitors.get(monitor.run_id) is monitor:
                del self.monitors[monitor.run_id]

    async def _fail_run(self, run_id: str, exc: Exception) -> None:
        try:
            record = await self.store.get_run(run_id)
            if record is None or record.run.phase.is_terminal:
                return
            decision = step(
                record.run,
                MonitorFailed(type(exc).__name__, str(exc)[:1000]),
                now=self.clock.now(),
                policy=self._deps.policy,
                rng=self._deps.rng,
            )
            await self.store.commit(record.run, decision, now=self.clock.now())
            self.metrics.transitioned(record.run, decision)
        except Exception:
            log.exception("run_fail_not_recorded", run_id=run_id)


def run_view(run: Run) -> RunView:
    spec = run.spec
    return RunView(
        run_id=spec.run_id,
        phase=run.phase,
        outcome=run.outcome,
        instance_id=run.instance_id,
        region=spec.region,
        s3_prefix=spec.s3_prefix,
        on_complete=spec.on_complete,
        reason=run.reason,
        version=run.version,
        phase_since=run.phase_since,
        grace_until=run.grace_until,
        next_check_at=run.next_check_at,
        error_code=run.error_code,
        checkpoint=run.checkpoint,
        attempt=run.attempt,
        verified_attempt=run.verified_attempt,
    )


class ControlApi:
    """The daemon's side of the control protocol (a `ControlHandler`)."""

    def __init__(self, daemon: Daemon) -> None:
        self._d = daemon
        self._resume_lock = asyncio.Lock()
        self._attach_lock = asyncio.Lock()

    def _live(self, record: RunRecord) -> Run:
        monitor = self._d.monitors.get(record.run.spec.run_id)
        return monitor.run if monitor is not None else record.run

    async def _record(self, run_id: str) -> RunRecord:
        record = await self._d.store.get_run(run_id)
        if record is None:
            raise UnknownRun(run_id)
        return record

    async def attach(self, request: AttachRequest) -> RunView:
        d = self._d
        if not d.accepting:
            raise ShuttingDown("supervisord is shutting down: attach again once it is back")
        fields = request.model_dump(exclude_none=True)
        verify = not fields.pop("no_verify", False)
        fields.setdefault("grace_s", d.settings.grace_s)
        if "region" not in fields:
            region = d.cloud.default_region
            if region is None:
                raise InvalidInput(
                    "no AWS region for this run: pass --region, or set AWS_DEFAULT_REGION "
                    "(or a region in the AWS profile) where supervisord runs"
                )
            fields["region"] = region
        spec = RunSpec.build(**fields)
        if spec.checkpointing and spec.transport not in d.shells:
            raise InvalidInput(
                f"transport {spec.transport!r} is not available in this daemon: "
                f"use one of {', '.join(sorted(d.shells)) or '(none)'}"
            )
        await self._refuse_conflicts(spec)  # before any AWS call: a refusal costs nothing
        if verify:
            await self._verify(spec)
        # One attach at a time: the checks below, the tag and the insert must not interleave
        # with another attach of the same run id, instance or prefix.
        async with self._attach_lock:
            await self._refuse_conflicts(spec)
            if spec.tag_instance:
                await self._tag_instance(spec)
            decision = new_run(spec, now=d.clock.now())
            await d.store.create_run(decision)
            d.metrics.transitioned(None, decision)
            log.info(
                "run_attached",
                run_id=spec.run_id,
                instance_id=spec.instance_id,
                s3_prefix=spec.s3_prefix,
                on_complete=spec.on_complete,
            )
            d.spawn(decision.run)
        return run_view(decision.run)

    async def _refuse_conflicts(self, spec: RunSpec) -> None:
        """Refuse a run id already taken (also before a tag naming it would make this
        instance look like a zombie of that run), an instance another active run watches,
        and a run prefix equal to, inside or around an active run's: a marker written for
        one would end the other."""
        d = self._d
        existing = await d.store.get_run(spec.run_id)
        if existing is not None:
            raise InvalidInput(run_id_taken(existing.run))
        for monitor in d.monitors.values():
            other = monitor.run
            if other.instance_id == spec.instance_id and other.spec.region == spec.region:
                raise InvalidInput(
                    f"instance {spec.instance_id} is already watched by run "
                    f"{other.spec.run_id!r}: detach that run first"
                )
            if not other.phase.is_terminal and other.spec.prefix.overlaps(spec.prefix):
                how = "is the same as" if other.spec.prefix == spec.prefix else "overlaps"
                raise InvalidInput(
                    f"run prefix {spec.prefix} {how} {other.spec.prefix}, the prefix of "
                    f"active run {other.spec.run_id!r}: a marker of one run would end the "
                    f"other; give run {spec.run_id!r} a prefix of its own, beside the other "
                    "run's rather than inside or around it. Nothing was attached."
                )

    async def _verify(self, spec: RunSpec) -> None:
        """The cheap checks that catch a typo before anything is stored: the instance exists
        in the region (one DescribeInstances), the run prefix's bucket answers (one
        ListObjectsV2, MaxKeys=1). Transient errors are retried as every AWS call is."""
        d = self._d
        instance, region, prefix = spec.instance_id, spec.region, spec.prefix
        skip = "or pass --no-verify (no_verify=True) to attach a run before its instance exists"
        try:
            exists, _ = await call_with_retries(
                lambda: d.cloud.instance_exists(instance, region), base_s=d.settings.retry_base_s
            )
        except GaveUp as gave_up:
            raise InvalidInput(
                _unverified(f"instance {instance} in region {region}", gave_up, skip)
            ) from None
        if not exists:
            raise InvalidInput(
                f"instance {instance} not found in region {region}: check --instance-id and "
                f"--region, {skip}. Nothing was attached."
            )
        try:
            await call_with_retries(
                lambda: d.cloud.probe_prefix(prefix.bucket, prefix.prefix, region),
                base_s=d.settings.retry_base_s,
            )
        except GaveUp as gave_up:
            error = gave_up.error
            if isinstance(error, TransientError):
                raise InvalidInput(_unverified(f"run prefix {prefix}", gave_up, skip)) from None
            raise InvalidInput(
                f"bucket {prefix.bucket} does not exist or is not reachable: {error.code} "
                f"(ListObjectsV2 on {prefix} from region {region}): check the bucket in "
                f"--s3-prefix, the region and supervisord's s3:ListBucket permission, or "
                "pass --no-verify (no_verify=True) to attach without this check. "
                "Nothing was attached."
            ) from None
        log.info("attach_verified", run_id=spec.run_id, instance_id=instance, s3_prefix=str(prefix))

    async def _tag_instance(self, spec: RunSpec) -> None:
        """Tag the instance `supervisor:run-id` before the run exists, so a failure stores
        nothing."""
        d = self._d
        try:
            _, attempts = await call_with_retries(
                lambda: d.cloud.create_tags(spec.instance_id, {RUN_TAG: spec.run_id}, spec.region),
                base_s=d.settings.retry_base_s,
            )
        except GaveUp as gave_up:
            log.warning(
                "instance_tag_failed",
                run_id=spec.run_id,
                instance_id=spec.instance_id,
                code=gave_up.error.code,
                attempts=gave_up.attempts,
            )
            raise InvalidInput(_tag_failure(spec, gave_up.error, gave_up.attempts)) from None
        log.info(
            "instance_tagged",
            run_id=spec.run_id,
            instance_id=spec.instance_id,
            tag=RUN_TAG,
            attempts=attempts,
        )

    async def list_runs(self) -> list[RunView]:
        return [run_view(self._live(record)) for record in await self._d.store.runs()]

    async def run_detail(self, run_id: str) -> RunDetail:
        record = await self._record(run_id)
        transitions = await self._d.store.transitions(run_id)
        actions = await self._d.store.actions(run_id)
        instances = await self._d.store.instances(run_id)
        attachments = await self._d.store.attachments(run_id)
        problems = await self._d.store.report_problems(run_id)
        run = self._live(record)
        return RunDetail(
            **run_view(run).model_dump(),
            spec=run.spec.model_dump(mode="json"),
            transitions=[
                TransitionView.model_validate(
                    {
                        "seq": t.seq,
                        "from": t.transition.from_phase,
                        "to": t.transition.to_phase,
                        "at": t.transition.at,
                        "reason": t.transition.reason,
                        "detail": dict(t.transition.detail),
                    }
                )
                for t in transitions
            ],
            actions=[
                ActionView(
                    action=a.action,
                    instance_id=a.instance_id,
                    at=a.at,
                    attempts=a.attempts,
                    outcome=a.outcome,
                    error_code=a.error_code,
                    message=a.message,
                )
                for a in actions
            ],
            instances=[
                InstanceView(
                    instance_id=i.instance_id,
                    region=i.region,
                    attached_at=i.attached_at,
                    source=i.source,
                )
                for i in instances
            ],
            attachments=[
                AttachmentView(
                    kind=a.kind, uri=a.uri, added_at=a.added_at, size=a.size, excerpt=a.excerpt
                )
                for a in attachments
            ],
            report_problems=[
                ReportProblemView(key=p.key, note=p.note, noted_at=p.noted_at) for p in problems
            ],
        )

    async def request(self, run_id: str, action: str, *, from_scratch: bool = False) -> RunView:
        record = await self._record(run_id)
        if not self._d.accepting:
            raise ShuttingDown("supervisord is shutting down: try again once it is back")
        if action == "resume":
            return await self._resume(record, from_scratch=from_scratch)
        monitor = self._d.monitors.get(run_id)
        if monitor is None:
            raise InvalidTransition(
                f"run {run_id!r} is already {record.run.phase}: nothing to {action}"
            )
        decision = await monitor.request(UserRequested(UserAction(action)))
        return run_view(decision.run)

    async def _resume(self, record: RunRecord, *, from_scratch: bool) -> RunView:
        d = self._d
        async with self._resume_lock:  # two resumes at once: one wins, one gets a clear no
            fresh = await self._record(record.run.spec.run_id)
            run = fresh.run
            current = d.monitors.get(run.spec.run_id)
            if (current is not None and not current.run.phase.is_terminal) or (
                ResumeRequested not in ACCEPTS[run.phase]
            ):
                raise InvalidTransition(
                    f"run {run.spec.run_id!r} is {run.phase}: only a {_RESUMABLE_NAMES} run "
                    "can be resumed"
                )
            if run.spec.transport not in d.shells:
                raise InvalidInput(f"transport {run.spec.transport!r} is not available here")
            decision = step(
                run, ResumeRequested(from_scratch=from_scratch), now=d.clock.now(),
                policy=d.policy, rng=d.rng,
            )  # fmt: skip
            await d.store.commit(run, decision, now=d.clock.now())
            d.metrics.transitioned(run, decision)
            log.info("run_resume_requested", run_id=run.spec.run_id, from_scratch=from_scratch)
            d.spawn(decision.run)
        return run_view(decision.run)

    async def tail(self, run_id: str, *, follow: bool) -> AsyncIterator[TailItem]:
        record = await self._record(run_id)
        monitor = self._d.monitors.get(run_id)
        queue = monitor.subscribe() if monitor is not None and follow else None
        try:
            detail = await self.run_detail(run_id)
            history: list[tuple[datetime, TailItem]] = [
                (t.at, TailItem(kind="transition", transition=t)) for t in detail.transitions
            ]
            if monitor is not None:  # its notes of unreadable reports are stored: replayed below
                history += [
                    (e.at, _tail_item(e)) for e in monitor.recent if e.event != REPORT_UNREADABLE
                ]
            history += [(p.noted_at, p.tail_item(run_id)) for p in detail.report_problems]
            history.sort(key=lambda pair: pair[0])
            last_seq, ended = 0, record.run.phase.is_terminal
            for _, item in history:
                if item.transition is not None:
                    last_seq = item.transition.seq
                    ended = item.transition.to in _TERMINAL_NAMES
                yield item
            # `ended` rests on the history just replayed (read after subscribing), so a final
            # transition committed meanwhile is either replayed here or arrives on the queue.
            if queue is None or ended:
                return
            closing = asyncio.ensure_future(self._d.closing.wait())
            try:
                while True:
                    # A follower must not hold the daemon's shutdown: the stream ends with it.
                    getting = asyncio.ensure_future(queue.get())
                    await asyncio.wait({getting, closing}, return_when=asyncio.FIRST_COMPLETED)
                    if not getting.done():
                        getting.cancel()
                        return
                    item = _tail_item(getting.result())
                    if item.transition is not None:
                        if item.transition.seq <= last_seq:
                            continue
                        last_seq = item.transition.seq
                    yield item
                    if item.transition is not None and item.transition.to in _TERMINAL_NAMES:
                        return
            finally:
                closing.cancel()
        finally:
            if queue is not None and monitor is not None:
                monitor.unsubscribe(queue)

    async def attach_file(self, run_id: str, request: AttachFileRequest) -> AttachmentView:
        """Record a file or link with a run, in any phase. An S3 object must exist: its size
        is recorded, and for a crash log its last lines, when the daemon may read it."""
        d = self._d
        record = await self._record(run_id)
        kind = parse_attachment_kind(request.kind)
        target = parse_attachment_uri(request.uri)
        size: int | None = None
        excerpt: str | None = None
        if target.s3 is not None:
            size, excerpt = await self._inspect(target.s3, kind, record.run.spec.region)
        attached = AttachmentRecord(
            run_id=run_id,
            kind=kind.value,
            uri=target.uri,
            added_at=d.clock.now(),
            size=size,
            excerpt=excerpt,
        )
        await d.store.attach(attached)
        log.info("file_attached", run_id=run_id, kind=kind.value, uri=target.uri, size=size)
        return AttachmentView(
            kind=attached.kind,
            uri=attached.uri,
            added_at=attached.added_at,
            size=size,
            excerpt=excerpt,
        )

    async def _inspect(
        self, target: S3Object, kind: AttachmentKind, region: str
    ) -> tuple[int | None, str | None]:
        """The object's size (and a crash log's last lines); refused when it does not exist.
        Any other failure (no permission outside the runs prefix, AWS down) attaches it
        without them."""
        cloud = self._d.cloud
        try:
            if kind is AttachmentKind.CRASH_LOG:
                text, size = await cloud.read_tail(
                    target.bucket, target.key, region, limit=CRASH_TAIL_BYTES
                )
                return size, text
            stored = await cloud.head_object(target.bucket, target.key, region)
            if stored is not None:
                return stored.size, None
        except NotFoundError:
            pass
        except ExternalError as exc:
            log.warning("attachment_unread", uri=str(target), code=exc.code)
            return None, None
        raise InvalidInput(
            f"there is no object {target}: check the bucket and key (aws s3 ls {target}); "
            "nothing was attached"
        )

    async def training_log(
        self, run_id: str, *, key: str, offset: int | None, last: int, follow: bool
    ) -> AsyncIterator[TrainingLogItem]:
        """The job's log under the run prefix (see `runtime.training_log`); with `follow`,
        until the run has ended and the log stopped growing."""
        d = self._d
        spec = (await self._record(run_id)).run.spec
        relative = parse_relative_key(key, what="training log key")
        location = S3Object(bucket=spec.prefix.bucket, key=spec.prefix.key(relative))
        source = LogSource(d.cloud, location, spec.region, d.settings.retry_base_s)

        async def run_ended() -> str | None:
            monitor = d.monitors.get(run_id)
            run = monitor.run if monitor is not None else (await self._record(run_id)).run
            return str(run.phase) if run.phase.is_terminal else None

        async for item in stream_log(
            source,
            offset=offset,
            last=last,
            follow=follow,
            poll_s=d.settings.training_log_poll_s,
            run_ended=run_ended,
            closing=d.closing,
        ):
            yield item

    async def status(self) -> DaemonStatus:
        d = self._d
        by_phase: Counter[str] = Counter()
        for (phase, _), count in (await d.store.runs_by_phase_and_outcome()).items():
            by_phase[phase] += count
        return DaemonStatus(
            pid=os.getpid(),
            version=__version__,
            started_at=d.started_at,
            state_dir=str(d.settings.state_dir),
            socket=str(d.settings.socket_path),
            runs_by_phase=dict(sorted(by_phase.items())),
            monitors=len(d.monitors),
            aws_calls=d.cloud.counter.snapshot(),
            metrics_url=d.metrics_server.url if d.metrics_server is not None else None,
            root_task_restarts=dict(sorted(d.root_tasks.restarts.items())),
        )

    async def metrics(self, accept: str) -> Exposition:
        return await self._d.metrics.metrics(accept)

    async def zombies(self) -> ZombieList:
        d = self._d
        now, policy = d.clock.now(), d.zombie_watch.policy
        return ZombieList(
            auto_terminate=policy.auto_terminate,
            wait_s=policy.wait_s,
            cooldown_s=policy.cooldown_s,
            zombies=[zombie_view(z, now=now, policy=policy) for z in await d.store.zombies()],
        )

    async def report(self, since_days: float) -> ReportView:
        days = parse_since_days(str(since_days))
        until = self._d.clock.now()
        report = await self._d.store.fleet_report(since=until - timedelta(days=days))
        return report_view(report, until=until)


def _tail_item(item: FeedItem) -> TailItem:
    if isinstance(item, MonitorNote):
        event = MonitorEventView(at=item.at, run_id=item.run_id, event=item.event,
                                 fields=dict(item.fields))  # fmt: skip
        return TailItem(kind="event", event=event)
    t = item.transition
    view = TransitionView.model_validate({"seq": item.seq, "from": t.from_phase,
        "to": t.to_phase, "at": t.at, "reason": t.reason, "detail": dict(t.detail)})  # fmt: skip
    return TailItem(kind="transition", transition=view)


_TERMINAL_NAMES = frozenset(str(phase) for phase in TERMINAL_PHASES)
# Named from the transition table, so the refusal lists exactly the phases a resume leaves.
_RESUMABLE = [str(phase) for phase in Phase if ResumeRequested in ACCEPTS[phase]]
_RESUMABLE_NAMES = f"{', '.join(_RESUMABLE[:-1])} or {_RESUMABLE[-1]}"

TAG_STATEMENT = "TagAttachedInstancesWithTheRunIdOnly"
"""The statement of deploy/iam-policy.json that allows `attach --tag-instance`."""
_DENIED_CODES = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"})


def _unverified(what: str, gave_up: GaveUp, skip: str) -> str:
    """Why attach could not verify `what`, when AWS did not give a plain no."""
    error = gave_up.error
    if isinstance(error, TransientError):
        advice = f"AWS did not answer after {gave_up.attempts} attempts: attach again in a while"
    elif error.code in _DENIED_CODES:
        advice = (
            f"supervisord's AWS identity may not call {error.operation} "
            "(see deploy/iam-policy.json)"
        )
    else:
        advice = "fix what the error names and attach again"
    return (
        f"could not verify {what} ({error.operation}: {error.code}: {error.message[:200]}); "
        f"{advice}, {skip}. Nothing was attached."
    )


def _tag_failure(spec: RunSpec, error: ExternalError, attempts: int) -> str:
    """What went wrong tagging the instance at attach, and what to do about it."""
    where = f"instance {spec.instance_id} in {spec.region}"
    if isinstance(error, NotFoundError):
        advice = f"{where} does not exist: check --instance-id and --region"
    elif error.code in _DENIED_CODES:
        advice = (
            f"supervisord's AWS identity may not tag {where}: allow ec2:CreateTags for the "
            f"{RUN_TAG} key (statement {TAG_STATEMENT} in deploy/iam-policy.json), or attach "
            "without --tag-instance"
        )
    elif isinstance(error, TransientError):
        advice = f"AWS did not answer after {attempts} attempts: attach again in a while"
    else:
        advice = "AWS refused the call: fix what the error names, then attach again"
    return (
        f"could not tag {where} with {RUN_TAG}={spec.run_id} "
        f"(CreateTags: {error.code}: {error.message}); {advice}. Nothing was attached."
    )
