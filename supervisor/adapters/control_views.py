"""The control API's edge: what the daemon answers (domain values: runs, transitions, store
records, zombies) and the mapping of those answers to the protocol's views.

`ControlPort` is what the runtime's control API offers, in domain values; `ControlViews`
wraps it as the `ControlHandler` that `ControlServer` serves, building each view here. The
runtime therefore never sees a wire model. The answer types that hold store records live
here (not in core) until the records move to the pure core.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from supervisor.adapters.metrics_http import Exposition
from supervisor.adapters.protocol import (
    ActionView,
    AttachFileRequest,
    AttachmentView,
    AttachRequest,
    DaemonStatus,
    IdleDayView,
    InstanceView,
    MonitorEventView,
    NotificationsView,
    NotifyTargetView,
    NotifyTestReply,
    ReplicaView,
    ReportDayView,
    ReportProblemView,
    ReportView,
    RunDetail,
    RunView,
    TailItem,
    TrainingLogItem,
    TransitionView,
    ZombieList,
    ZombieView,
)
from supervisor.adapters.store import (
    ActionRecord,
    AttachmentRecord,
    FleetReport,
    InstanceRecord,
    ReportProblemRecord,
    TransitionRecord,
)
from supervisor.core.events import Action
from supervisor.core.feed import FeedItem, FeedTransition, LogPiece, MonitorNote
from supervisor.core.leases import ReplicaStatus
from supervisor.core.machine import max_duration_deadline
from supervisor.core.outbox import NotifierStatus, TargetFigures, TargetResult
from supervisor.core.run import Phase, Run
from supervisor.core.zombies import Act, Leave, Wait, Zombie, ZombiePolicy, decide, span

# -- what the runtime answers -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttachOrder:
    """An attach as asked: the run-spec fields given (the daemon fills in its defaults and
    validates them into a RunSpec), and whether to check the instance and prefix first."""

    fields: Mapping[str, Any]
    verify: bool = True


@dataclass(frozen=True, slots=True)
class RunDetails:
    """One run (as its monitor holds it, if watched) with everything stored about it."""

    run: Run
    transitions: tuple[TransitionRecord, ...]
    actions: tuple[ActionRecord, ...]
    instances: tuple[InstanceRecord, ...]
    attachments: tuple[AttachmentRecord, ...]
    report_problems: tuple[ReportProblemRecord, ...]


@dataclass(frozen=True, slots=True)
class DaemonState:
    """`supervisord status`: this daemon, its runs and its AWS calls."""

    pid: int
    version: str
    started_at: datetime
    state_dir: str
    socket: str
    runs_by_phase: Mapping[str, int]
    monitors: int
    aws_calls: Mapping[str, int]
    metrics_url: str | None
    root_task_restarts: Mapping[str, int]
    replica_id: str = ""
    role: str = ""
    runs_owned: int = 0
    replicas: tuple[ReplicaStatus, ...] = ()
    now: datetime | None = None
    """When the replicas' liveness is judged (the daemon's clock)."""
    notifications: NotifierStatus | None = None
    """Issue 15: the notification sender's figures, if it runs."""
    http_url: str | None = None
    """Issue 15: the dashboard's listener (SUPERVISOR_HTTP_ADDR) as bound, if there is one."""
    database: str = ""
    """The run database: its URL with the password redacted, or the SQLite file's path."""


@dataclass(frozen=True, slots=True)
class ZombieListing:
    """The open zombies, with the policy and the time their plans are told against."""

    zombies: tuple[Zombie, ...]
    policy: ZombiePolicy
    now: datetime

    @property
    def auto_terminate(self) -> bool:
        return self.policy.auto_terminate


@dataclass(frozen=True, slots=True)
class FleetReportUntil:
    """The fleet report over a window that ends now (`until`)."""

    report: FleetReport
    until: datetime


class ControlPort(Protocol):
    """The runtime's control API (`supervisor.runtime.control_api.ControlApi`)."""

    async def attach(self, order: AttachOrder) -> Run: ...
    async def list_runs(self) -> list[Run]: ...
    async def run_detail(self, run_id: str) -> RunDetails: ...
    async def request(self, run_id: str, action: str, *, from_scratch: bool = False) -> Run: ...
    def tail(self, run_id: str, *, follow: bool) -> AsyncIterator[FeedItem]: ...
    async def attach_file(self, run_id: str, kind: str, uri: str) -> AttachmentRecord: ...
    def training_log(
        self, run_id: str, *, key: str, offset: int | None, last: int, follow: bool
    ) -> AsyncIterator[LogPiece]: ...
    async def status(self) -> DaemonState: ...
    async def zombies(self) -> ZombieListing: ...
    async def report(self, since_days: float) -> FleetReportUntil: ...
    async def metrics(self, accept: str) -> Exposition: ...
    async def notify_test(self) -> list[TargetResult]: ...


# -- the views ----------------------------------------------------------------------------------


def attach_order(request: AttachRequest) -> AttachOrder:
    """The attach request's fields as given (None means "the default": left out)."""
    fields = request.model_dump(exclude_none=True)
    verify = not fields.pop("no_verify", False)
    return AttachOrder(fields, verify)


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
        estimated_end=_estimated_end(run),
        utilisation=run.utilisation.describe() if run.utilisation is not None else None,
    )


def _estimated_end(run: Run) -> datetime | None:
    """The estimate means something only while the job trains (running or stalled)."""
    if run.phase not in (Phase.RUNNING, Phase.STALLED):
        return None
    return run.this_attempt.estimated_end


def transition_view(entry: FeedTransition | TransitionRecord) -> TransitionView:
    t = entry.transition
    return TransitionView.model_validate(
        {
            "seq": entry.seq,
            "from": t.from_phase,
            "to": t.to_phase,
            "at": t.at,
            "reason": t.reason,
            "detail": dict(t.detail),
        }
    )


def attachment_view(a: AttachmentRecord) -> AttachmentView:
    return AttachmentView(
        kind=a.kind, uri=a.uri, added_at=a.added_at, size=a.size, excerpt=a.excerpt
    )


def run_detail_view(detail: RunDetails) -> RunDetail:
    run = detail.run
    return RunDetail(
        **run_view(run).model_dump(),
        spec=run.spec.model_dump(mode="json"),
        transitions=[transition_view(t) for t in detail.transitions],
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
            for a in detail.actions
        ],
        instances=[
            InstanceView(
                instance_id=i.instance_id,
                region=i.region,
                attached_at=i.attached_at,
                source=i.source,
            )
            for i in detail.instances
        ],
        attachments=[attachment_view(a) for a in detail.attachments],
        report_problems=[
            ReportProblemView(key=p.key, note=p.note, noted_at=p.noted_at)
            for p in detail.report_problems
        ],
        max_duration_at=(
            max_duration_deadline(run) if run.phase in (Phase.RUNNING, Phase.STALLED) else None
        ),
    )


def tail_item(item: FeedItem) -> TailItem:
    if isinstance(item, MonitorNote):
        event = MonitorEventView(
            at=item.at, run_id=item.run_id, event=item.event, fields=dict(item.fields)
        )
        return TailItem(kind="event", event=event)
    return TailItem(kind="transition", transition=transition_view(item))


def training_log_item(piece: LogPiece) -> TrainingLogItem:
    return TrainingLogItem(kind=piece.kind, text=piece.text, offset=piece.offset)


def status_view(state: DaemonState) -> DaemonStatus:
    return DaemonStatus(
        pid=state.pid,
        version=state.version,
        started_at=state.started_at,
        state_dir=state.state_dir,
        socket=state.socket,
        runs_by_phase=dict(state.runs_by_phase),
        monitors=state.monitors,
        aws_calls=dict(state.aws_calls),
        metrics_url=state.metrics_url,
        root_task_restarts=dict(state.root_task_restarts),
        replica_id=state.replica_id,
        role=state.role,
        runs_owned=state.runs_owned,
        replicas=[
            ReplicaView(
                replica_id=s.replica.replica_id,
                host=s.replica.host,
                pid=s.replica.pid,
                state=s.replica.state.value,
                started_at=s.replica.started_at,
                heartbeat_at=s.replica.heartbeat_at,
                alive=state.now is not None and s.replica.alive(state.now),
                runs_owned=s.runs_owned,
            )
            for s in state.replicas
        ],
        notifications=notifications_view(state.notifications),
        http_url=state.http_url,
        database=state.database,
    )


def zombie_view(zombie: Zombie, *, now: datetime, policy: ZombiePolicy) -> ZombieView:
    next_action: Action | None
    next_at: datetime | None
    match decide(zombie, now=now, policy=policy):
        case Act(action=action, why=why):
            next_action, next_at, text = action, None, f"{action} at the next sweep ({why})"
        case Wait(action=action, until=until, why=why):
            next_action, next_at = action, until
            text = f"{action} in {span((until - now).total_seconds())} ({why})"
        case Leave(why=why):
            next_action, next_at, text = None, None, why
    return ZombieView(
        instance_id=zombie.instance_id,
        region=zombie.region,
        run_id=zombie.run_id,
        kind=zombie.cause.kind,
        reason=zombie.reason(now),
        state=zombie.state,
        marked_at=zombie.marked_at,
        age_s=round(zombie.age_s(now), 3),
        attempts=zombie.attempts,
        action=zombie.action,
        last_attempt_at=zombie.last_attempt_at,
        last_error=zombie.last_error,
        next_action=next_action,
        next_at=next_at,
        plan=text,
    )


def zombie_list_view(listing: ZombieListing) -> ZombieList:
    policy = listing.policy
    return ZombieList(
        auto_terminate=policy.auto_terminate,
        wait_s=policy.wait_s,
        cooldown_s=policy.cooldown_s,
        zombies=[zombie_view(z, now=listing.now, policy=policy) for z in listing.zombies],
    )


def report_view(answer: FleetReportUntil) -> ReportView:
    report = answer.report
    return ReportView(
        since=report.since,
        until=answer.until,
        days=[
            ReportDayView(
                day=d.day,
                terminations=d.terminations,
                stops=d.stops,
                attempts=d.attempts,
                succeeded=d.succeeded,
                failed_attempts=d.failed_attempts,
                success_rate=d.success_rate,
                mean_s_to_terminated=d.mean_s_to_terminated,
            )
            for d in report.days
        ],
        runs_by_outcome=dict(sorted(report.runs_by_outcome.items())),
        runs=sum(report.runs_by_outcome.values()),
        crash_rate=report.crash_rate,
        open_zombies=report.open_zombies,
        idle_days=[IdleDayView(day=d.day, runs=d.runs, idle_s=d.idle_s) for d in report.idle_days],
    )


class ControlViews:
    """A `ControlPort` served as the `ControlHandler` of `ControlServer`: each answer mapped
    to its view here, at the edge."""

    def __init__(self, port: ControlPort) -> None:
        self._port = port

    async def attach(self, request: AttachRequest) -> RunView:
        return run_view(await self._port.attach(attach_order(request)))

    async def list_runs(self) -> list[RunView]:
        return [run_view(run) for run in await self._port.list_runs()]

    async def run_detail(self, run_id: str) -> RunDetail:
        return run_detail_view(await self._port.run_detail(run_id))

    async def request(self, run_id: str, action: str, *, from_scratch: bool = False) -> RunView:
        return run_view(await self._port.request(run_id, action, from_scratch=from_scratch))

    async def tail(self, run_id: str, *, follow: bool) -> AsyncIterator[TailItem]:
        items = self._port.tail(run_id, follow=follow)
        try:
            async for item in items:
                yield tail_item(item)
        finally:
            await _close(items)

    async def attach_file(self, run_id: str, request: AttachFileRequest) -> AttachmentView:
        return attachment_view(await self._port.attach_file(run_id, request.kind, request.uri))

    async def training_log(
        self, run_id: str, *, key: str, offset: int | None, last: int, follow: bool
    ) -> AsyncIterator[TrainingLogItem]:
        pieces = self._port.training_log(run_id, key=key, offset=offset, last=last, follow=follow)
        try:
            async for piece in pieces:
                yield training_log_item(piece)
        finally:
            await _close(pieces)

    async def status(self) -> DaemonStatus:
        return status_view(await self._port.status())

    async def zombies(self) -> ZombieList:
        return zombie_list_view(await self._port.zombies())

    async def report(self, since_days: float) -> ReportView:
        return report_view(await self._port.report(since_days))

    async def metrics(self, accept: str) -> Exposition:
        return await self._port.metrics(accept)

    async def notify_test(self) -> NotifyTestReply:
        return NotifyTestReply(
            results=[target_view(result) for result in await self._port.notify_test()]
        )


async def _close(items: AsyncIterator[Any]) -> None:
    """Close a stream the moment its reader stops (a follower that went away stops following
    its run): an async generator's `finally` runs now, not at garbage collection."""
    close = getattr(items, "aclose", None)
    if close is not None:
        await close()


# -- issue 15: notifications ----------------------------------------------------------------------


def target_view(result: TargetResult, figures: TargetFigures | None = None) -> NotifyTargetView:
    counts = {}
    if figures is not None:
        counts = {"sent": figures.sent, "failed": figures.failed, "pending": figures.pending,
                  "failed_rows": figures.failed_rows}  # fmt: skip
    return NotifyTargetView(
        target=result.target.shown, digest=result.target.digest, last_ok=result.ok,
        last_error=result.error, last_at=result.at, **counts,
    )  # fmt: skip


def notifications_view(status: NotifierStatus | None) -> NotificationsView | None:
    if status is None:
        return None
    return NotificationsView(
        targets=[target_view(f.last, f) for f in status.targets],
        pending=status.rows.get("pending", 0),
        sent=status.rows.get("sent", 0),
        failed=status.rows.get("failed", 0),
    )
