"""The ports the runtime works through. Adapters satisfy them structurally; tests may fake
them here (and only here) when a real part cannot run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from supervisor.core.checkpoint import CommandResult, InstanceCommand, StoredObject
from supervisor.core.completion import ListRequest
from supervisor.core.duties import DutyLease
from supervisor.core.idle import Datapoint, IdleMetric
from supervisor.core.inbox import InboxAnswer, InboxItem
from supervisor.core.leases import Lease, LeasedRun, Replica, ReplicaStatus
from supervisor.core.machine import Decision
from supervisor.core.outbox import (
    DeliveryState,
    Message,
    NotifyEvent,
    OutboxRow,
    Target,
    TargetDelivery,
)
from supervisor.core.records import (
    ActionRecord,
    AttachmentRecord,
    FleetReport,
    InstanceRecord,
    ReportProblemRecord,
    RunDataRecord,
    RunRecord,
    TransitionRecord,
)
from supervisor.core.reports import Report
from supervisor.core.run import Run
from supervisor.core.spec import LaunchTemplate
from supervisor.core.values import InstanceId, InstanceState, ObjectInfo
from supervisor.core.zombies import InstanceSeen, Termination, Zombie


class CallCounts(Protocol):
    """Every AWS call made, by service and operation, and by outcome once it ended."""

    @property
    def outcomes(self) -> Mapping[tuple[str, str, str], int]:
        """Ended calls by (service, operation, outcome): `ok`, or the error's class."""
        ...

    def count(self, operation: str) -> int:
        """Calls made of `operation` (e.g. `ListObjectsV2`), in any service."""
        ...

    def snapshot(self) -> dict[str, int]:
        """Calls made by `service:operation`."""
        ...


class Cloud(Protocol):
    """What the runtime needs of AWS (implemented by `supervisor.adapters.aws.Aws`)."""

    @property
    def default_region(self) -> str | None: ...

    @property
    def counter(self) -> CallCounts:
        """The calls this adapter made (`supervisord status`, `/metrics`, the benchmark)."""
        ...

    async def list_objects(self, request: ListRequest, region: str) -> tuple[ObjectInfo, ...]: ...

    async def list_uploads(self, bucket: str, prefix: str, region: str) -> tuple[str, ...]:
        """Keys of the multipart uploads begun under `prefix` and not completed or aborted
        (one ListMultipartUploads call: its first page, up to 1,000)."""
        ...

    async def read_object(self, bucket: str, key: str, region: str, *, limit: int = ...) -> str: ...

    async def read_tail(
        self, bucket: str, key: str, region: str, *, limit: int = ...
    ) -> tuple[str, int]: ...

    async def read_range(
        self, bucket: str, key: str, region: str, start: int, *, limit: int = ...
    ) -> tuple[bytes, int]: ...

    async def describe_instances(
        self, ids: Sequence[InstanceId], region: str
    ) -> dict[InstanceId, InstanceState]: ...

    async def describe_tagged(self, tag_key: str, region: str) -> list[InstanceSeen]: ...

    async def instance_exists(self, instance_id: InstanceId, region: str) -> bool: ...

    async def probe_prefix(self, bucket: str, prefix: str, region: str) -> None: ...

    async def stop_instance(self, instance_id: InstanceId, region: str) -> InstanceState: ...

    async def terminate_instance(self, instance_id: InstanceId, region: str) -> InstanceState: ...

    async def start_instance(self, instance_id: InstanceId, region: str) -> InstanceState: ...

    async def head_object(self, bucket: str, key: str, region: str) -> StoredObject | None: ...

    async def launch_from_template(
        self, template: LaunchTemplate, tags: Mapping[str, str], region: str, *, token: str
    ) -> InstanceId: ...

    async def create_tags(
        self, instance_id: InstanceId, tags: Mapping[str, str], region: str
    ) -> None: ...

    async def utilisation(
        self,
        ids: Sequence[InstanceId],
        metric: IdleMetric,
        region: str,
        *,
        start: datetime,
        end: datetime,
    ) -> dict[InstanceId, tuple[Datapoint, ...]]:
        """Each instance's datapoints of `metric` between `start` and `end` (CloudWatch
        GetMetricData, one call per 500 instances); none for an instance without data."""
        ...


class InstanceShell(Protocol):
    """Runs the instance-side program on an instance (SSM) or on this machine (local)."""

    async def run(
        self,
        instance_id: str,
        region: str,
        command: InstanceCommand,
        *,
        timeout_s: float,
        comment: str,
    ) -> CommandResult: ...


class RunStore(Protocol):
    """The run database (implemented on SQLite by `supervisor.adapters.store.Store`; a second
    backend implements the same methods over the same declarations,
    `supervisor.adapters.schema`).

    Writes are atomic: a decision's run row, transition and instance together, or nothing.
    `commit` raises `StaleVersion` when the run is no longer at `before`'s version, and
    `create_run` raises `InvalidInput` when the run id is taken."""

    async def close(self) -> None: ...

    # -- runs and their transitions --
    async def create_run(self, decision: Decision, *, lease: Lease | None = ...) -> None: ...

    async def commit(
        self, before: Run, decision: Decision, *, now: datetime, lease: Lease | None = ...
    ) -> None: ...

    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def runs(self, *, active_only: bool = ...) -> list[RunRecord]: ...

    def active_runs(self, *, page: int = ...) -> AsyncIterator[list[RunRecord]]: ...

    async def transitions(self, run_id: str, *, after_seq: int = ...) -> list[TransitionRecord]: ...

    async def instances(self, run_id: str) -> list[InstanceRecord]: ...

    async def crashed_without_crash_log(self, *, since: datetime) -> list[RunRecord]: ...

    async def runs_on_instances(
        self, instance_ids: Iterable[str], run_ids: Iterable[str] = ...
    ) -> list[Run]: ...

    async def active_owner(self, instance_id: str, region: str) -> str | None: ...

    async def runs_by_phase_and_outcome(self) -> dict[tuple[str, str | None], int]: ...

    async def run_regions(self) -> set[str]: ...

    # -- what happened to a run: actions, attachments, reports --
    async def record_action(self, record: ActionRecord, *, lease: Lease | None = ...) -> None: ...

    async def actions(self, run_id: str) -> list[ActionRecord]: ...

    async def attach(
        self,
        record: AttachmentRecord,
        *,
        lease: Lease | None = ...,
        duty: DutyLease | None = ...,
    ) -> None: ...

    async def attachments(self, run_id: str) -> list[AttachmentRecord]: ...

    async def record_report(
        self,
        run_id: str,
        key: str,
        report: Report,
        *,
        read_at: datetime,
        now: datetime,
        lease: Lease | None = ...,
    ) -> None: ...

    async def run_data(self, run_id: str) -> RunDataRecord | None: ...

    async def record_report_problem(
        self, problem: ReportProblemRecord, *, lease: Lease | None = ...
    ) -> None: ...

    async def report_problems(self, run_id: str) -> list[ReportProblemRecord]: ...

    async def record_audit(
        self, *, at: datetime, source: str, kind: str, subject: str | None, detail: dict[str, Any]
    ) -> None: ...

    async def audit(self, *, limit: int = ...) -> list[dict[str, Any]]: ...

    # -- zombies and terminations --
    async def save_zombie(
        self,
        zombie: Zombie,
        termination: Termination | None = ...,
        *,
        duty: DutyLease | None = ...,
    ) -> None: ...

    async def zombies(self, *, open_only: bool = ...) -> list[Zombie]: ...

    async def terminations(self, *, since: datetime | None = ...) -> list[Termination]: ...

    async def ended_run_instances(self, *, since: datetime) -> list[tuple[InstanceId, str]]: ...

    async def fleet_report(self, *, since: datetime) -> FleetReport: ...

    # -- leases and replicas (issue 14) --
    @property
    def single_writer(self) -> bool:
        """One daemon holds this database alone (SQLite): it may take over every lease."""
        ...

    # A monitor's writes (`commit`, `record_action`, `attach`, `record_report`,
    # `record_report_problem`) given a `lease` are fenced: written only while the run is
    # still owned under it, else `LeaseLost` and nothing written.
    async def claim_runs(
        self, owner: str, *, limit: int, now: datetime, until: datetime, only: str | None = ...
    ) -> list[LeasedRun]: ...

    async def renew_leases(self, owner: str, *, until: datetime) -> dict[str, int]: ...

    async def release_runs(
        self, owner: str, leases: Iterable[tuple[str, int]], *, notify: bool = ...
    ) -> int: ...

    async def release_every_lease(self) -> int: ...

    async def record_replica(self, replica: Replica) -> None: ...

    async def replicas(self) -> list[ReplicaStatus]: ...

    # -- replicas: the run inbox and duty leases (issue 14) --
    async def post_to_inbox(self, item: InboxItem) -> None: ...

    async def pending_inbox(self, *, limit: int = ...) -> list[InboxItem]: ...

    async def answer_inbox(self, item_id: str, answer: InboxAnswer, *, now: datetime) -> bool: ...

    async def inbox_answer(self, item_id: str) -> InboxAnswer | None: ...

    async def expire_inbox(
        self, *, now: datetime, keep: timedelta, duty: DutyLease | None = ...
    ) -> None: ...

    async def hold_duty(
        self, name: str, owner: str, *, now: datetime, until: datetime, take_over: bool = ...
    ) -> DutyLease: ...

    async def release_duty(self, name: str, owner: str, *, now: datetime) -> None: ...

    # -- notifications: the outbox (issue 15) --
    # `commit` and `save_zombie` write a row, in their own transaction, for each transition or
    # zombie that is one of the events set with `notify_on_events`.
    def notify_on_events(self, events: frozenset[NotifyEvent]) -> None: ...

    async def pending_outbox(
        self, sender: str, *, leader: bool, alive_since: datetime, limit: int = ...
    ) -> list[OutboxRow]: ...

    async def claim_outbox(
        self, key: str, *, attempts: int, sender: str, now: datetime
    ) -> bool: ...

    async def record_outbox(
        self,
        key: str,
        deliveries: Iterable[TargetDelivery],
        *,
        state: DeliveryState,
        last_error: str | None,
        now: datetime,
    ) -> None: ...

    async def outbox_rows(
        self, *, run_id: str | None = ..., state: DeliveryState | None = ...
    ) -> list[OutboxRow]: ...

    async def outbox_counts(self) -> dict[str, int]: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


# -- replicas: notices (issue 14) ----------------------------------------------------------------


class Notices(Protocol):
    """Wake-ups between replicas: PostgreSQL's LISTEN/NOTIFY; without them, a poll."""

    async def wait(self, channel: str, timeout_s: float) -> None:
        """Return once a notice on `channel` arrives, or after `timeout_s` at the latest."""
        ...


class PollingNotices:
    """No notices (SQLite: one daemon, whose requests never leave it): every wait is the
    whole poll interval."""

    async def wait(self, channel: str, timeout_s: float) -> None:
        await asyncio.sleep(timeout_s)


# -- notifications (issue 15) ----------------------------------------------------------------------


class NotificationSender(Protocol):
    """Sends messages to the configured notification URLs (`supervisor.adapters.notify`)."""

    @property
    def targets(self) -> tuple[Target, ...]: ...

    async def send(self, target: Target, message: Message) -> None:
        """Deliver one message to one target, or raise `ExternalError` (`TransientError`:
        worth another try) saying why not. Bounded in time."""
        ...
