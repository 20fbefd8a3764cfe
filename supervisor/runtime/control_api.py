"""The daemon's control API: attach (validation, conflict checks, the optional tag), stop,
terminate, detach and resume (one resume at a time), `tail` (history, then the monitor's live
feed), attachments, the training log, status, zombies and the fleet report.

It answers in domain values (runs, store records, feed items); the control adapter
(`supervisor.adapters.control_views`) builds the protocol's views from them, so nothing here
knows the wire format.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog

from supervisor import __version__
from supervisor.adapters.control import parse_since_days
from supervisor.adapters.control_views import (
    AttachOrder,
    DaemonState,
    FleetReportUntil,
    RunDetails,
    ZombieListing,
)
from supervisor.adapters.metrics_http import Exposition
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
from supervisor.core.events import ResumeRequested, UserAction, UserRequested
from supervisor.core.feed import FeedItem, FeedTransition, LogPiece, MonitorNote
from supervisor.core.inbox import TRANSITION_CHANNEL, Command
from supervisor.core.machine import ACCEPTS, new_run, run_id_taken, step
from supervisor.core.outbox import TargetResult
from supervisor.core.records import AttachmentRecord, RunRecord
from supervisor.core.reports import REPORT_UNREADABLE
from supervisor.core.run import Phase, Run
from supervisor.core.spec import RunSpec
from supervisor.core.values import S3Object, parse_relative_key
from supervisor.core.zombies import RUN_TAG
from supervisor.runtime.executor import CRASH_TAIL_BYTES
from supervisor.runtime.inbox import ask
from supervisor.runtime.retry import GaveUp, call_with_retries
from supervisor.runtime.training_log import LogSource, stream_log

if TYPE_CHECKING:
    from supervisor.runtime.daemon import Daemon

log = structlog.get_logger("supervisor.daemon")


class ControlApi:
    """The daemon's control API (a `ControlPort`): answers in domain values; the control
    adapter (`adapters.control_views`) builds the views."""

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

    async def attach(self, order: AttachOrder) -> Run:
        d = self._d
        if not d.accepting:
            raise ShuttingDown("supervisord is shutting down: attach again once it is back")
        fields = dict(order.fields)
        verify = order.verify
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
            # Owned by this replica from its first row (issue 14), in its book before the
            # insert: the lease keeper never sees it held and unarmed.
            lease = d.lease_book.new_lease()
            d.lease_book.put(spec.run_id, lease)
            try:
                await d.store.create_run(decision, lease=lease)
            except BaseException:
                d.lease_book.drop(spec.run_id)
                raise
            d.metrics.transitioned(None, decision)
            log.info(
                "run_attached",
                run_id=spec.run_id,
                instance_id=spec.instance_id,
                s3_prefix=spec.s3_prefix,
                on_complete=spec.on_complete,
            )
            d.spawn(decision.run, lease)
        return decision.run

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

    async def list_runs(self) -> list[Run]:
        return [self._live(record) for record in await self._d.store.runs()]

    async def run_detail(self, run_id: str) -> RunDetails:
        record = await self._record(run_id)
        store = self._d.store
        return RunDetails(
            run=self._live(record),
            transitions=tuple(await store.transitions(run_id)),
            actions=tuple(await store.actions(run_id)),
            instances=tuple(await store.instances(run_id)),
            attachments=tuple(await store.attachments(run_id)),
            report_problems=tuple(await store.report_problems(run_id)),
        )

    async def request(self, run_id: str, action: str, *, from_scratch: bool = False) -> Run:
        record = await self._record(run_id)
        if not self._d.accepting:
            raise ShuttingDown("supervisord is shutting down: try again once it is back")
        if self._owned_elsewhere(record):
            return await self._forward(run_id, Command(action, from_scratch))
        if action == "resume":
            return await self._resume(record, from_scratch=from_scratch)
        monitor = self._d.monitors.get(run_id)
        if monitor is None:
            raise InvalidTransition(
                f"run {run_id!r} is already {record.run.phase}: nothing to {action}"
            )
        decision = await monitor.request(UserRequested(UserAction(action)))
        return decision.run

    async def _resume(self, record: RunRecord, *, from_scratch: bool) -> Run:
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
            # Watched here if this replica can claim it now; else by the replica that claims it.
            lease = await d.lease_keeper.adopt(run.spec.run_id)
            if lease is not None:
                d.spawn(decision.run, lease)
        return decision.run

    async def tail(self, run_id: str, *, follow: bool) -> AsyncIterator[FeedItem]:
        record = await self._record(run_id)
        monitor = self._d.monitors.get(run_id)
        queue = monitor.subscribe() if monitor is not None and follow else None
        remote = follow and self._owned_elsewhere(record)
        try:
            detail = await self.run_detail(run_id)
            history: list[FeedItem] = [
                FeedTransition(t.seq, t.transition) for t in detail.transitions
            ]
            if monitor is not None:  # its notes of unreadable reports are stored: replayed below
                history += [e for e in monitor.recent if e.event != REPORT_UNREADABLE]
            history += [
                MonitorNote(p.noted_at, run_id, REPORT_UNREADABLE, {"key": p.key, "error": p.note})
                for p in detail.report_problems
            ]
            history.sort(key=lambda item: item.at)
            last_seq, ended = 0, record.run.phase.is_terminal
            for item in history:
                if isinstance(item, FeedTransition):
                    last_seq = item.seq
                    ended = item.transition.to_phase.is_terminal
                yield item
            # `ended` rests on the history just replayed (read after subscribing), so a final
            # transition committed meanwhile is either replayed here or arrives on the queue.
            if remote and not ended:
                async for transition in self._follow_stored(run_id, last_seq):
                    yield transition
                return
            if queue is None or ended:
                return
            closing = asyncio.ensure_future(self._d.closing.wait())
            getting: asyncio.Future[FeedItem] | None = None
            try:
                while True:
                    # A follower must not hold the daemon's shutdown: the stream ends with it.
                    getting = getting or asyncio.ensure_future(queue.get())
                    # A commit elsewhere (or the poll) also wakes it: the run may have moved.
                    nudged = asyncio.ensure_future(
                        self._d.notices.wait(TRANSITION_CHANNEL, self._d.settings.inbox_poll_s)
                    )
                    either: set[asyncio.Future[Any]] = {getting, closing, nudged}
                    try:
                        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        nudged.cancel()
                    if closing.done() and not getting.done():
                        getting.cancel()
                        return
                    if not getting.done():
                        if self._d.monitors.get(run_id) is monitor:
                            continue
                        # The monitor went (its lease moved to another replica, or it
                        # crashed and the run was failed): follow what the store gets.
                        getting.cancel()
                        async for stored in self._follow_stored(run_id, last_seq):
                            yield stored
                        return
                    item, getting = getting.result(), None
                    if isinstance(item, FeedTransition):
                        if item.seq <= last_seq:
                            continue
                        last_seq = item.seq
                    yield item
                    if isinstance(item, FeedTransition) and item.transition.to_phase.is_terminal:
                        return
            finally:
                closing.cancel()
                if getting is not None:
                    getting.cancel()
        finally:
            if queue is not None and monitor is not None:
                monitor.unsubscribe(queue)

    async def attach_file(self, run_id: str, kind_name: str, uri: str) -> AttachmentRecord:
        """Record a file or link with a run, in any phase. An S3 object must exist: its size
        is recorded, and for a crash log its last lines, when the daemon may read it."""
        d = self._d
        record = await self._record(run_id)
        kind = parse_attachment_kind(kind_name)
        target = parse_attachment_uri(uri)
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
        return attached

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
    ) -> AsyncIterator[LogPiece]:
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

    async def status(self) -> DaemonState:
        d = self._d
        by_phase: Counter[str] = Counter()
        for (phase, _), count in (await d.store.runs_by_phase_and_outcome()).items():
            by_phase[phase] += count
        return DaemonState(
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
            replica_id=d.lease_book.owner,
            role=_role(d),
            runs_owned=len(d.lease_book),
            replicas=tuple(await d.store.replicas()),
            now=d.clock.now(),
            notifications=await d.notifier.status() if d.notifier is not None else None,
            http_url=d.http_server.url if d.http_server is not None else None,
            database=d.settings.database_shown,
        )

    async def metrics(self, accept: str) -> Exposition:
        return await self._d.metrics.metrics(accept)

    async def zombies(self) -> ZombieListing:
        d = self._d
        zombies = tuple(await d.store.zombies())
        return ZombieListing(zombies, d.zombie_watch.policy, d.clock.now())

    async def report(self, since_days: float) -> FleetReportUntil:
        days = parse_since_days(str(since_days))
        until = self._d.clock.now()
        report = await self._d.store.fleet_report(since=until - timedelta(days=days))
        return FleetReportUntil(report, until)

    # -- replicas: runs another replica watches (issue 14) --------------------------------------

    def _owned_elsewhere(self, record: RunRecord) -> bool:
        """An active run this daemon has no monitor for: another replica watches it. (With
        SQLite's one daemon every active run is watched here.)"""
        run_id = record.run.spec.run_id
        return not record.run.phase.is_terminal and run_id not in self._d.monitors

    async def _forward(self, run_id: str, command: Command) -> Run:
        """Hand the command to the replica that watches the run; its answer is ours."""
        d = self._d
        return await ask(
            d.store, d.notices, d.clock, replica_id=d.replica_id, run_id=run_id,
            command=command, timeout_s=d.settings.command_timeout_s,
            poll_s=d.settings.inbox_poll_s,
        )  # fmt: skip

    async def carry_out(self, run_id: str, command: Command) -> Run:
        """A command another replica handed over (`runtime.inbox`): the local path of
        `request`, never forwarded again (a run that moved meanwhile is refused as ended
        here, and its writer hears so)."""
        record = await self._record(run_id)
        if not self._d.accepting:
            raise ShuttingDown("supervisord is shutting down: try again once it is back")
        if command.action == "resume":
            return await self._resume(record, from_scratch=command.from_scratch)
        monitor = self._d.monitors.get(run_id)
        if monitor is None:
            raise InvalidTransition(
                f"run {run_id!r} is no longer watched by this replica: try again"
            )
        decision = await monitor.request(UserRequested(UserAction(command.action)))
        return decision.run

    async def _follow_stored(self, run_id: str, after_seq: int) -> AsyncIterator[FeedItem]:
        """Follow the transitions another replica commits, from the store after `after_seq`,
        until the run ends or the daemon closes (woken by the store's notices, else polled)."""
        d = self._d
        while not d.closing.is_set():
            for record in await d.store.transitions(run_id, after_seq=after_seq):
                after_seq = record.seq
                yield FeedTransition(record.seq, record.transition)
                if record.transition.to_phase.is_terminal:
                    return
            waiting = asyncio.ensure_future(
                d.notices.wait(TRANSITION_CHANNEL, d.settings.inbox_poll_s)
            )
            closing = asyncio.ensure_future(d.closing.wait())
            try:
                await asyncio.wait({waiting, closing}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
                closing.cancel()

    # -- notifications (issue 15) -------------------------------------------------------------

    async def notify_test(self) -> list[TargetResult]:
        """A test message to every notification URL, through this daemon's settings."""
        notifier = self._d.notifier
        if notifier is None:
            raise InvalidInput(
                "no notification URLs: set SUPERVISOR_NOTIFY_URLS (or notify_urls in the "
                "settings file) and restart supervisord"
            )
        return await notifier.test_all()


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


def _role(d: Daemon) -> str:
    """`sole` (SQLite: one daemon, every lease and duty its own); with replicas `leader` for
    the one holding the fleet-wide duties (the zombie sweep), else `replica`."""
    if d.lease_book.exclusive:
        return "sole"
    return "leader" if d.leader.holds() else "replica"
