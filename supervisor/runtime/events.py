"""The events queue consumer: SQS long polls of EventBridge and S3 messages, routed to monitors.

Events only wake monitors early or carry facts no describe call shows (a spot warning);
decisions still rest on observed state, and the reconcile sweep remains the safety net.

A message is deleted only after what it caused is committed (`Monitor.request(settle=True)`).
With replicas, a message about an active run that another replica watches is written to that
run's inbox (`runtime.inbox`) and deleted once that row is committed; the owner gives it to
the run's monitor as if it had received it.
The same message twice, or messages out of order, cause no second transition: a nudge leads
to a look, and the transition table refuses a repeated warning. Whatever causes nothing is
recorded in the audit log and deleted: a message that cannot be parsed, one that names no
active run (against the run that ended on that instance within `ENDED_RECENTLY`, if any),
and an event a run's phase refused (a repeat, or one too late). The consumer never dies of a
message (a failure to handle one leaves it on the queue for redelivery).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from supervisor.adapters.aws import QueueMessage
from supervisor.core.errors import ExternalError, InvalidTransition
from supervisor.core.events import Event, Nudge, RebalanceRecommended, SpotInterruptionWarning
from supervisor.core.inbox import HandedEvent
from supervisor.core.notifications import (
    Ec2StateChange,
    Notification,
    ObjectCreated,
    RebalanceRecommendation,
    S3TestEvent,
    SpotWarning,
    Unrecognized,
    parse_message,
)
from supervisor.core.records import RunRecord
from supervisor.core.run import Run
from supervisor.core.spec import OnRebalance
from supervisor.core.values import S3Prefix
from supervisor.runtime.monitor import Monitor
from supervisor.runtime.ports import Clock
from supervisor.runtime.zombies import LOOKBACK

log = structlog.get_logger("supervisor.events")

SPOT_NOTICE_S = 120.0  # AWS's two-minute warning
MAX_IN_FLIGHT = 100  # messages being handled at once; polling waits beyond this
ENDED_RECENTLY = LOOKBACK
"""An event for the instance of a run that ended this recently is recorded against that run
(the same window in which the zombie sweep still looks at such instances)."""


class Queue(Protocol):
    async def receive_messages(
        self, queue_url: str, region: str, *, wait_s: int = ..., max_messages: int = ...
    ) -> list[QueueMessage]: ...

    async def delete_message(self, queue_url: str, receipt: str, region: str) -> None: ...


class Audit(Protocol):
    """The audit log, and the runs it names (the store)."""

    async def record_audit(
        self, *, at: datetime, source: str, kind: str, subject: str | None, detail: dict[str, Any]
    ) -> None: ...

    async def runs_on_instances(
        self, instance_ids: Iterable[str], run_ids: Iterable[str] = ()
    ) -> list[Run]: ...

    async def runs(self, *, active_only: bool = ...) -> list[RunRecord]: ...


HandOver = Callable[[str, HandedEvent], Awaitable[str]]
"""Writes an event to a run's inbox, for the replica that watches it; returns the row's id."""


class EventConsumer:
    def __init__(
        self,
        queue: Queue,
        queue_url: str,
        region: str,
        monitors: Callable[[], Iterable[Monitor]],
        audit: Audit,
        clock: Clock,
        *,
        spot_margin_s: float,
        wait_s: int = 20,
        error_backoff_s: float = 5.0,
        hand_over: HandOver | None = None,
    ) -> None:
        """`hand_over`: for a message about an active run that another replica watches
        (without it, such a message is recorded as unowned)."""
        self._queue = queue
        self._inbox = hand_over
        self.queue_url = queue_url
        self._region = region
        self._monitors = monitors
        self._audit = audit
        self._clock = clock
        self._margin = timedelta(seconds=spot_margin_s)
        self._wait_s = wait_s
        self._error_backoff_s = error_backoff_s
        self.handled = 0
        self._prefixes: dict[str, S3Prefix] = {}
        """The prefixes of the active runs last read from the store (a run's never changes):
        an upload under another replica's run is matched here, then read by its id."""

    def __repr__(self) -> str:
        return f"<EventConsumer {self.queue_url} handled={self.handled}>"

    async def run_forever(self) -> None:
        # Messages are handled as tasks while polling goes on: one run's spot checkpoint
        # (up to two minutes) must not hold back another run's warning. Each message is still
        # deleted only once what it caused is committed.
        in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def handle_one(message: QueueMessage) -> None:
            try:
                await self.handle(message)
            finally:
                in_flight.release()

        async with asyncio.TaskGroup() as tasks:
            while True:
                try:
                    messages = await self._queue.receive_messages(
                        self.queue_url, self._region, wait_s=self._wait_s
                    )
                except ExternalError as exc:
                    log.warning("queue_receive_failed", code=exc.code, message=exc.message)
                    await asyncio.sleep(self._error_backoff_s)
                    continue
                for message in messages:
                    await in_flight.acquire()
                    tasks.create_task(handle_one(message))

    async def handle(self, message: QueueMessage) -> bool:
        """Act on one message; delete it once what it caused is committed. Returns whether
        it was deleted (False leaves it for redelivery after the visibility timeout)."""
        try:
            for notification in parse_message(message.body):
                await self._route(notification, message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "queue_message_failed",
                message_id=message.message_id,
                receive_count=message.receive_count,
            )
            return False
        try:
            await self._queue.delete_message(self.queue_url, message.receipt, self._region)
        except ExternalError as exc:
            log.warning("queue_delete_failed", message_id=message.message_id, code=exc.code)
            return False
        self.handled += 1
        return True

    async def _route(self, note: Notification, message: QueueMessage) -> None:
        match note:
            case Ec2StateChange(instance_id=instance_id, state=state):
                await self._deliver(
                    self._by_instance(instance_id),
                    Nudge("instance", state=str(state)),
                    note,
                    message,
                    subject=instance_id,
                    state=str(state),
                )
            case SpotWarning(instance_id=instance_id, action=action, time=time):
                if note.action_at is not None:
                    deadline = note.action_at - self._margin
                else:
                    if time is None:  # as aws-node-termination-handler: the time received
                        time = self._clock.now()
                        log.info("spot_warning_untimed", instance_id=instance_id)
                    deadline = time + timedelta(seconds=SPOT_NOTICE_S) - self._margin
                warning = SpotInterruptionWarning(deadline=deadline, action=action)
                await self._deliver(
                    self._by_instance(instance_id), warning, note, message, subject=instance_id
                )
            case RebalanceRecommendation(instance_id=instance_id):
                owners = self._by_instance(instance_id)
                ignoring = [m for m in owners if m.run.spec.on_rebalance is OnRebalance.IGNORE]
                for monitor in ignoring:
                    await self._record(
                        "rebalance-ignored", instance_id, message, run_id=monitor.run_id,
                        reason="on_rebalance=ignore; the interruption warning still "
                        "starts the final checkpoint",
                    )  # fmt: skip
                if ignoring and len(ignoring) == len(owners):
                    return
                # An early checkpoint is best effort and may take minutes: the message goes
                # once it has started, not when the upload is done (the queue would redeliver).
                await self._deliver(
                    [m for m in owners if m not in ignoring], RebalanceRecommended(), note,
                    message, subject=instance_id, settle=False,
                )  # fmt: skip
            case ObjectCreated(bucket=bucket, key=key, etag=etag, size=size):
                owners = [
                    m
                    for m in self._monitors()
                    if _owns_key(m, bucket, key) and not m.run.phase.is_terminal
                ]
                nudge = Nudge("prefix", key=key, etag=etag, size=size)
                await self._deliver(owners, nudge, note, message, subject=f"s3://{bucket}/{key}")
            case S3TestEvent(bucket=bucket):
                await self._record("s3-test-event", bucket, message)
            case Unrecognized(reason=reason):
                await self._record(
                    "unrecognized",
                    message.message_id,
                    message,
                    reason=reason,
                    body=message.body[:2000],
                )

    def _by_instance(self, instance_id: str) -> list[Monitor]:
        return [
            m
            for m in self._monitors()
            if m.run.instance_id == instance_id and not m.run.phase.is_terminal
        ]

    async def _deliver(
        self,
        monitors: list[Monitor],
        event: Event,
        note: Notification,
        message: QueueMessage,
        *,
        subject: str,
        settle: bool = True,
        **fields: Any,
    ) -> None:
        handed_over = (
            not monitors
            and isinstance(event, HandedEvent)
            and await self._hand_over(note, event, message, subject=subject, **fields)
        )
        if handed_over:
            return
        if not monitors:
            ended = await self._ended_run(note)
            if ended is not None:
                await self._record(
                    "ended-run", subject, message, notification=type(note).__name__,
                    run_id=ended.spec.run_id, phase=str(ended.phase), outcome=ended.outcome,
                    ended_at=ended.phase_since.isoformat(), **fields,
                )  # fmt: skip
                return
            await self._record(
                "unowned", subject, message, notification=type(note).__name__, **fields
            )
            return
        for monitor in monitors:
            try:
                await monitor.request(event, settle=settle)
            except InvalidTransition as exc:  # a repeat, or late for the run's phase
                await self._record(
                    "refused", subject, message, run_id=monitor.run_id,
                    event=type(event).__name__, why=str(exc), **fields,
                )  # fmt: skip
            else:
                log.info(
                    "event_routed",
                    run_id=monitor.run_id,
                    kind=type(event).__name__,
                    message_id=message.message_id,
                    **fields,
                )

    # -- replicas: runs another replica watches (issue 14) --------------------------------------

    async def _hand_over(
        self, note: Notification, event: HandedEvent, message: QueueMessage, *, subject: str,
        **fields: Any,
    ) -> bool:  # fmt: skip
        """Write the event to the inbox of each active run it concerns that another replica
        watches (committed before `handle` deletes the message; that replica's inbox consumer
        gives it to the run's monitor). Returns whether there was any."""
        if self._inbox is None:
            return False
        handed = False
        for run in await self._active_elsewhere(note):
            if isinstance(event, RebalanceRecommended) and (
                run.spec.on_rebalance is OnRebalance.IGNORE
            ):
                await self._record(
                    "rebalance-ignored", subject, message, run_id=run.spec.run_id,
                    reason="on_rebalance=ignore; the interruption warning still "
                    "starts the final checkpoint",
                )  # fmt: skip
                handed = True
                continue
            inbox_id = await self._inbox(run.spec.run_id, event)
            handed = True
            log.info(
                "event_handed_over", run_id=run.spec.run_id, kind=type(event).__name__,
                message_id=message.message_id, inbox_id=inbox_id, **fields,
            )  # fmt: skip
        return handed

    async def _active_elsewhere(self, note: Notification) -> list[Run]:
        """The active runs `note` concerns that no local monitor watches, from the store."""
        local = {m.run_id for m in self._monitors()}
        match note:
            case Ec2StateChange() | SpotWarning() | RebalanceRecommendation():
                runs = await self._audit.runs_on_instances([note.instance_id])
            case ObjectCreated(bucket=bucket, key=key):
                runs = await self._runs_under(bucket, key)
            case _:
                return []
        return [r for r in runs if not r.phase.is_terminal and r.spec.run_id not in local]

    async def _runs_under(self, bucket: str, key: str) -> list[Run]:
        """The active run whose prefix holds the key (attach keeps active runs' prefixes from
        overlapping), by its id when a known prefix holds it: one indexed read per upload, not
        every active run's. Every active run is read (and its prefix kept) only when no known
        prefix holds the key or the run it names has ended: a run attached since."""
        known = [run_id for run_id, p in self._prefixes.items() if _under(p, bucket, key)]
        if known:
            runs = await self._audit.runs_on_instances((), run_ids=known)
            if any(not run.phase.is_terminal for run in runs):
                return runs
        active = [record.run for record in await self._audit.runs(active_only=True)]
        self._prefixes = {run.spec.run_id: run.spec.prefix for run in active}
        return [run for run in active if _under(run.spec.prefix, bucket, key)]

    async def _ended_run(self, note: Notification) -> Run | None:
        """The run that most recently ended on the instance an EC2 event names, if it ended
        within `ENDED_RECENTLY`."""
        if not isinstance(note, Ec2StateChange | SpotWarning | RebalanceRecommendation):
            return None
        since = self._clock.now() - ENDED_RECENTLY
        ended = [
            run
            for run in await self._audit.runs_on_instances([note.instance_id])
            if run.phase.is_terminal and run.phase_since >= since
        ]
        return max(ended, key=lambda run: run.phase_since, default=None)

    async def _record(
        self, kind: str, subject: str | None, message: QueueMessage, **detail: Any
    ) -> None:
        log.info("event_recorded", kind=kind, subject=subject, message_id=message.message_id)
        await self._audit.record_audit(
            at=self._clock.now(),
            source="sqs",
            kind=kind,
            subject=subject,
            detail={"message_id": message.message_id, **detail},
        )


def _owns_key(monitor: Monitor, bucket: str, key: str) -> bool:
    return _under(monitor.run.spec.prefix, bucket, key)


def _under(prefix: S3Prefix, bucket: str, key: str) -> bool:
    return prefix.bucket == bucket and key.startswith(prefix.prefix)
