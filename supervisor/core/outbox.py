"""Notifications (issue 15), decided: which events of a run notify, what an outbox row holds,
and the message made from it. Pure: no I/O, no clock reads; `now` is passed in.

A transition that notifies becomes one outbox row, written in the transition's own
transaction (the store's commit), keyed by the run id and the transition's sequence number:
one row, hence one message, per transition, whatever happens to the daemon between the
commit and the send. A zombie becomes one row when it is marked, keyed by its instance and
mark time. The key travels in every message, for receivers that deduplicate.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from supervisor.core.errors import InvalidInput
from supervisor.core.records import idle_after_end_s
from supervisor.core.run import CheckpointStatus, Outcome, Phase

if TYPE_CHECKING:
    from supervisor.core.machine import Decision
    from supervisor.core.run import Run
    from supervisor.core.zombies import Zombie


class NotifyEvent(enum.StrEnum):
    """What can notify (`SUPERVISOR_NOTIFY_ON`)."""

    CRASHED = "crashed"  # the phase crashed, or the outcome crashed (stopped by on_crash)
    STALLED = "stalled"  # the heartbeat went quiet (entering stalled, or the stall policy acts)
    FAILED = "failed"  # the supervisor hit a permanent error: a person must look
    TIMED_OUT = "timed_out"  # max_duration reached: the outcome timed_out
    INTERRUPTED = "interrupted"  # a spot interruption: the outcome becomes interrupted
    CHECKPOINT_UNVERIFIED = "checkpoint_unverified"  # the final checkpoint failed verification
    ZOMBIE = "zombie"  # an instance left running after its run ended (the zombie sweep)
    COMPLETED = "completed"  # the training completed (the outcome)
    STOPPED = "stopped"  # the instance was stopped (the phase)
    TERMINATED = "terminated"  # the instance was terminated (the phase)
    RESUMED = "resumed"  # a resume brought the run back to running


DEFAULT_NOTIFY_ON = (
    NotifyEvent.CRASHED,
    NotifyEvent.STALLED,
    NotifyEvent.FAILED,
    NotifyEvent.TIMED_OUT,
    NotifyEvent.INTERRUPTED,
    NotifyEvent.CHECKPOINT_UNVERIFIED,
    NotifyEvent.ZOMBIE,
)
DEFAULT_NOTIFY_ON_TEXT = ",".join(DEFAULT_NOTIFY_ON)


def parse_notify_on(text: str) -> frozenset[NotifyEvent]:
    """Pure. The events named in `text` (commas or spaces between them; empty: none), or
    `InvalidInput` naming the first unknown one and the valid ones."""
    events = set()
    for word in text.replace(",", " ").split():
        name = word.strip().lower().replace("-", "_")
        try:
            events.add(NotifyEvent(name))
        except ValueError:
            valid = ", ".join(NotifyEvent)
            raise InvalidInput(
                f"unknown notification event {word!r}: expected a comma-separated list of {valid}"
            ) from None
    return frozenset(events)


def split_urls(text: str) -> tuple[str, ...]:
    """Pure. The URLs of `SUPERVISOR_NOTIFY_URLS`: separated by spaces, newlines or commas
    (Apprise's own separators)."""
    return tuple(u for u in text.replace(",", " ").split() if u)


def _newly(before: Run, run: Run, outcome: Outcome) -> bool:
    return run.outcome is outcome and before.outcome is not outcome


def transition_events(before: Run, decision: Decision) -> tuple[NotifyEvent, ...]:
    """Pure. The events a committed decision is, in `NotifyEvent` order; none without a
    transition (only a transition has a sequence number to key its message by)."""
    t = decision.transition
    if t is None:
        return ()
    run = decision.run
    to, came_from = t.to_phase, t.from_phase
    found = set()
    if to is Phase.CRASHED or _newly(before, run, Outcome.CRASHED):
        found.add(NotifyEvent.CRASHED)
    if came_from is not Phase.STALLED and (
        to is Phase.STALLED or _newly(before, run, Outcome.STALLED)
    ):
        found.add(NotifyEvent.STALLED)
    if to is Phase.FAILED:
        found.add(NotifyEvent.FAILED)
    if _newly(before, run, Outcome.TIMED_OUT):
        found.add(NotifyEvent.TIMED_OUT)
    if _newly(before, run, Outcome.INTERRUPTED):
        found.add(NotifyEvent.INTERRUPTED)
    unverified = run.checkpoint is CheckpointStatus.UNVERIFIED
    if unverified and (
        before.checkpoint is not CheckpointStatus.UNVERIFIED
        # A spot interruption's checkpoint is given up without a transition (the run stays
        # interrupting): it is told with the interruption's end.
        or (came_from is Phase.INTERRUPTING and to is Phase.INTERRUPTED)
    ):
        found.add(NotifyEvent.CHECKPOINT_UNVERIFIED)
    if _newly(before, run, Outcome.COMPLETED):
        found.add(NotifyEvent.COMPLETED)
    if to is Phase.STOPPED:
        found.add(NotifyEvent.STOPPED)
    if to is Phase.TERMINATED:
        found.add(NotifyEvent.TERMINATED)
    if came_from is Phase.RESUMING and to is Phase.RUNNING:
        found.add(NotifyEvent.RESUMED)
    return tuple(e for e in NotifyEvent if e in found)


class DeliveryState(enum.StrEnum):
    """An outbox row's state, and each target's within it."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # gave up after the retries


@dataclass(frozen=True, slots=True)
class Notice:
    """What one outbox row says happened: the facts a message is made from (stored as JSON,
    so a message can be made again after a restart, with the settings of that daemon)."""

    key: str
    """The idempotency key: `RUN_ID:SEQ` for a transition, `zombie:INSTANCE:REGION:MARKED_AT`
    for a zombie."""
    events: tuple[NotifyEvent, ...]
    at: datetime
    run_id: str | None = None
    seq: int | None = None
    name: str | None = None
    project: str | None = None
    phase: str | None = None
    outcome: str | None = None
    from_phase: str | None = None
    reason: str = ""
    instance_id: str | None = None
    region: str | None = None
    idle_s: float | None = None
    """Idle instance-seconds after the job's end, when known (issue 13)."""

    def facts(self) -> dict[str, Any]:
        """The JSON the outbox row stores (the key and events have columns of their own)."""
        return {
            "at": self.at.isoformat(),
            "run_id": self.run_id,
            "seq": self.seq,
            "name": self.name,
            "project": self.project,
            "phase": self.phase,
            "outcome": self.outcome,
            "from_phase": self.from_phase,
            "reason": self.reason,
            "instance_id": self.instance_id,
            "region": self.region,
            "idle_s": self.idle_s,
        }

    @classmethod
    def from_stored(cls, key: str, events: str, facts: dict[str, Any]) -> Notice:
        known = {e.value for e in NotifyEvent}
        return cls(
            key=key,
            events=tuple(NotifyEvent(e) for e in events.split(",") if e in known),
            at=datetime.fromisoformat(facts["at"]),
            run_id=facts.get("run_id"),
            seq=facts.get("seq"),
            name=facts.get("name"),
            project=facts.get("project"),
            phase=facts.get("phase"),
            outcome=facts.get("outcome"),
            from_phase=facts.get("from_phase"),
            reason=facts.get("reason") or "",
            instance_id=facts.get("instance_id"),
            region=facts.get("region"),
            idle_s=facts.get("idle_s"),
        )


def transition_notice(
    before: Run, decision: Decision, notify_on: frozenset[NotifyEvent]
) -> Notice | None:
    """Pure. The outbox row a committed decision needs, if any of its events is in
    `notify_on` (the row names all its events: one message per transition)."""
    if not notify_on:  # notifications off: nothing to work out on the commit path
        return None
    events = transition_events(before, decision)
    if not events or notify_on.isdisjoint(events):
        return None
    t = decision.transition
    assert t is not None
    run = decision.run
    spec = run.spec
    return Notice(
        key=f"{spec.run_id}:{run.version}",
        events=events,
        at=t.at,
        run_id=spec.run_id,
        seq=run.version,
        name=spec.name,
        project=spec.project,
        phase=str(t.to_phase),
        outcome=str(run.outcome) if run.outcome is not None else None,
        from_phase=str(t.from_phase) if t.from_phase is not None else None,
        reason=t.reason,
        instance_id=run.instance_id,
        region=spec.region,
        idle_s=idle_after_end_s(run.job_ended_at, run.action_acked_at),
    )


def zombie_notice(zombie: Zombie, notify_on: frozenset[NotifyEvent]) -> Notice | None:
    """Pure. The outbox row of a zombie as it is marked (None once it is closed, or when
    zombies do not notify). Its key is the mark's: marked again later, it notifies again."""
    if NotifyEvent.ZOMBIE not in notify_on or not zombie.state.open:
        return None
    return Notice(
        key=f"zombie:{zombie.instance_id}:{zombie.region}:{zombie.marked_at.isoformat()}",
        events=(NotifyEvent.ZOMBIE,),
        at=zombie.marked_at,
        run_id=zombie.run_id,
        phase=str(zombie.cause.run_phase) if zombie.cause.run_phase is not None else None,
        reason=zombie.reason(zombie.marked_at),
        instance_id=zombie.instance_id,
        region=zombie.region,
    )


# -- the message ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """What is sent: a title, a plain-text body, and the idempotency key (also in the body,
    for receivers that can only read the text)."""

    title: str
    body: str
    key: str
    failure: bool
    """Something went wrong (the receiver may show it as a warning or failure)."""


_FAILURES = frozenset(
    {
        NotifyEvent.CRASHED,
        NotifyEvent.STALLED,
        NotifyEvent.FAILED,
        NotifyEvent.TIMED_OUT,
        NotifyEvent.INTERRUPTED,
        NotifyEvent.CHECKPOINT_UNVERIFIED,
        NotifyEvent.ZOMBIE,
    }
)


def _seconds(value: float) -> str:
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def render(notice: Notice, *, public_url: str | None = None) -> Message:
    """Pure. The message of an outbox row: the run (with its name and project), what
    happened, the reason, the instance and its idle time, and the run page's link when a
    public dashboard address is set. Text a job wrote (the reason) is sent as plain text."""
    what = ", ".join(notice.events) or "notice"
    subject = notice.run_id or notice.instance_id or "?"
    title = f"{subject}: {what}"
    lines = []
    if notice.run_id is not None:
        run = f"run {notice.run_id}"
        labels = [f"name {notice.name!r}"] if notice.name else []
        labels += [f"project {notice.project}"] if notice.project else []
        if labels:
            run += f" ({', '.join(labels)})"
        lines.append(run)
    happened = f"what happened: {what}"
    if notice.phase is not None:
        moved = f"{notice.from_phase} -> " if notice.from_phase else ""
        happened += f" (phase {moved}{notice.phase}"
        happened += f", outcome {notice.outcome})" if notice.outcome else ")"
    lines.append(happened)
    if notice.reason:
        lines.append(f"reason: {notice.reason}")
    if notice.instance_id:
        where = f" in {notice.region}" if notice.region else ""
        lines.append(f"instance: {notice.instance_id}{where}")
    if notice.idle_s is not None:
        lines.append(f"idle after the job ended: {_seconds(notice.idle_s)}")
    lines.append(f"at: {notice.at.isoformat()}")
    if public_url and notice.run_id is not None:
        from urllib.parse import quote

        lines.append(f"run page: {public_url.rstrip('/')}/runs/{quote(notice.run_id, safe='')}")
    lines.append(f"idempotency key: {notice.key}")
    return Message(
        title=title,
        body="\n".join(lines),
        key=notice.key,
        failure=not _FAILURES.isdisjoint(notice.events),
    )


def trial_message(*, at: datetime, replica_id: str, public_url: str | None = None) -> Message:
    """Pure. What `supervisorctl notify-test` sends."""
    key = f"test:{replica_id}:{at.isoformat()}"
    lines = [
        f"A test notification from supervisord ({replica_id}) at {at.isoformat()}.",
        "If you read this, this URL receives the supervisor's notifications.",
    ]
    if public_url:
        lines.append(f"dashboard: {public_url.rstrip('/')}/")
    lines.append(f"idempotency key: {key}")
    return Message(title="supervisor: test notification", body="\n".join(lines), key=key,
                   failure=False)  # fmt: skip


# -- delivery ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One configured notification URL, as the rest of the program knows it: never the URL
    itself (it holds secrets), but a digest of it (stable across restarts, stored in the
    outbox's per-target results) and its redacted form, fit to show."""

    digest: str
    shown: str


@dataclass(frozen=True, slots=True)
class TargetDelivery:
    """How one target fared with one outbox row."""

    target: str
    """The target's digest."""
    state: DeliveryState
    attempts: int
    error: str | None = None

    def stored(self) -> dict[str, Any]:
        return {"state": self.state.value, "attempts": self.attempts, "error": self.error}

    @classmethod
    def from_stored(cls, target: str, stored: dict[str, Any]) -> TargetDelivery:
        return cls(target, DeliveryState(stored["state"]), int(stored["attempts"]),
                   stored.get("error"))  # fmt: skip


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An outbox row as stored."""

    notice: Notice
    state: DeliveryState
    attempts: int
    """Delivery rounds begun (by any replica)."""
    last_error: str | None = None
    sender: str | None = None
    deliveries: tuple[TargetDelivery, ...] = ()

    @property
    def key(self) -> str:
        return self.notice.key

    def delivery(self, target: Target) -> TargetDelivery | None:
        return next((d for d in self.deliveries if d.target == target.digest), None)


def row_state(deliveries: dict[str, TargetDelivery], targets: tuple[Target, ...]) -> DeliveryState:
    """Pure. A row's state from its targets' results: pending while a configured target is
    not done with, then failed if any gave up, else sent."""
    states = [deliveries[t.digest].state if t.digest in deliveries else None for t in targets]
    if any(s is None or s is DeliveryState.PENDING for s in states):
        return DeliveryState.PENDING
    return DeliveryState.FAILED if DeliveryState.FAILED in states else DeliveryState.SENT


# -- what the sender reports ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetResult:
    """One target's last result, for `supervisord status` and `notify-test`."""

    target: Target
    ok: bool | None
    """None: nothing sent yet."""
    error: str | None = None
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TargetFigures:
    """A target's figures since this daemon started, and its last result."""

    target: Target
    sent: int
    """Messages it accepted since this daemon started."""
    failed: int
    """Messages given up on for it since this daemon started."""
    last: TargetResult
    pending: int = 0
    """Pending outbox rows it has not been sent yet (in the whole database)."""
    failed_rows: int = 0
    """Outbox rows it was given up on for (in the whole database)."""


@dataclass(frozen=True, slots=True)
class NotifierStatus:
    targets: tuple[TargetFigures, ...]
    rows: dict[str, int]
    """Outbox rows by state (pending, sent, failed), in the whole database."""
