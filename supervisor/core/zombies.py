"""Zombie instances: an instance still running after its run ended, or one carrying the run tag
`supervisor:run-id` that no active run owns.

Pure decisions only: whether a seen instance is a zombie and why (`classify`), the zombie record
after a sighting (`mark`, `observe_ended`, `clear`), whether and when to act on it (`decide`:
the wait, the cooldown between attempts, and the checkpoint invariant), and what an attempt's
result does to it (`attempted`). Time is passed in (`now`); nothing here reads a clock, calls
AWS or touches the database. The runtime's `ZombieWatch` carries out what these decide.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from supervisor.core.defaults import RUN_TAG as RUN_TAG
from supervisor.core.events import Action
from supervisor.core.run import TERMINAL_PHASES, CheckpointStatus, Phase, Run
from supervisor.core.spec import OnComplete
from supervisor.core.values import InstanceId, InstanceState

"""The tag the supervisor puts on instances it launches (and `attach --tag-instance` adds);
deploy/iam-policy.json allows stop, start and terminate only on instances carrying it."""

ZOMBIE_PHASES: frozenset[Phase] = TERMINAL_PHASES - {Phase.DONE, Phase.DETACHED, Phase.FAILED}
"""Ended phases after which the run's instance should not be running. Not `done`
(on_complete=none leaves the instance running on purpose), `detached` (a person took it over)
or `failed` (a person must look before anything is touched)."""

UNAUTHORIZED_CODES = frozenset({"UnauthorizedOperation"})

_PERMISSION = {Action.TERMINATE: "ec2:TerminateInstances", Action.STOP: "ec2:StopInstances"}


class ZombieKind(enum.StrEnum):
    RUN_ENDED = "run-ended"  # the run that owns the instance has ended; the instance runs on
    UNOWNED = "unowned"  # tagged supervisor:run-id, and no active run has it as its instance


class ZombieState(enum.StrEnum):
    MARKED = "marked"  # seen running; waiting, listed only, or after a failed attempt
    STOPPING = "stopping"  # a stop was accepted; the instance not yet seen stopping
    TERMINATING = "terminating"  # a terminate was accepted; not yet seen shutting down
    CONFIRMED = "confirmed"  # seen gone (or stopped, after our stop): no compute billed
    CLEARED = "cleared"  # no longer a zombie for another reason (owned again, ended by others)

    @property
    def open(self) -> bool:
        return self in (ZombieState.MARKED, ZombieState.STOPPING, ZombieState.TERMINATING)


class AttemptOutcome(enum.StrEnum):
    """One line of the terminations log: how an attempt went, or a later confirmation."""

    ACCEPTED = "accepted"  # the call succeeded; the end state not yet seen
    CONFIRMED = "confirmed"  # the instance was seen gone (or stopping/stopped, for a stop)
    NOT_FOUND = "not-found"  # InvalidInstanceID.NotFound: already gone; counts as confirmed
    UNAUTHORIZED = "unauthorized"  # UnauthorizedOperation: a permission is missing
    FAILED = "failed"  # any other error, after the retries of transient ones


SUCCESSFUL_OUTCOMES = frozenset(
    {AttemptOutcome.ACCEPTED, AttemptOutcome.CONFIRMED, AttemptOutcome.NOT_FOUND}
)
TERMINATED_OUTCOMES = frozenset({AttemptOutcome.CONFIRMED, AttemptOutcome.NOT_FOUND})
"""Outcomes that end a zombie: with action `terminate`, one termination each."""


@dataclass(frozen=True, slots=True)
class InstanceSeen:
    """An instance as one sweep saw it. `tags` is empty when it was described by id only."""

    instance_id: InstanceId
    region: str
    state: InstanceState
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Cause:
    """Why an instance is a zombie. `run_id` is the ended run, or the run the tag names."""

    kind: ZombieKind
    run_id: str | None
    run_phase: Phase | None = None
    """The ended run's phase; for an unowned instance, the named run's phase if it is known."""
    run_ended_at: datetime | None = None
    keep_data: bool = False
    """The checkpoint invariant applies: stop it, never terminate it."""

    def describe(self, now: datetime) -> str:
        if self.kind is ZombieKind.RUN_ENDED:
            ended = (
                f" {span((now - self.run_ended_at).total_seconds())} ago"
                if self.run_ended_at is not None
                else ""
            )
            text = f"run {self.run_id} ended ({self.run_phase}){ended}; instance still running"
        else:
            text = f"tagged {RUN_TAG}={self.run_id}; no active run owns it"
            if self.run_phase is not None:
                text += f" (run {self.run_id} is {self.run_phase}, on another instance)"
        if self.keep_data:
            text += (
                f"; run {self.run_id} has checkpointing and no verified checkpoint: "
                "it is stopped, never terminated"
            )
        return text


@dataclass(frozen=True, slots=True)
class NotZombie:
    """A live instance that is not a zombie, and why (the note when a zombie is cleared)."""

    why: str


@dataclass(frozen=True, slots=True)
class Zombie:
    """The current record of one zombie instance (one per instance id and region)."""

    instance_id: InstanceId
    region: str
    cause: Cause
    marked_at: datetime
    state: ZombieState = ZombieState.MARKED
    action: Action | None = None
    """The action of the latest attempt (terminate, or stop under the checkpoint invariant)."""
    attempts: int = 0
    last_attempt_at: datetime | None = None
    last_error: str | None = None
    """`CODE: message` of the latest attempt, if it failed."""
    resolved_at: datetime | None = None
    note: str = ""
    """How it was resolved, or what the latest attempt did."""

    @property
    def run_id(self) -> str | None:
        return self.cause.run_id

    def reason(self, now: datetime) -> str:
        return self.cause.describe(now)

    def age_s(self, now: datetime) -> float:
        return (now - self.marked_at).total_seconds()

    def __repr__(self) -> str:
        return (
            f"<Zombie {self.instance_id} {self.state} {self.cause.kind} run={self.run_id}"
            f" attempts={self.attempts}>"
        )


@dataclass(frozen=True, slots=True)
class Termination:
    """One line of the append-only terminations log. `calls` is how many AWS calls the attempt
    made (its retries of transient errors included); 0 for a confirmation seen by a sweep."""

    at: datetime
    instance_id: InstanceId
    region: str
    run_id: str | None
    action: Action
    outcome: AttemptOutcome
    calls: int
    seconds_since_marked: float
    error_code: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class ZombiePolicy:
    """`SUPERVISOR_AUTO_TERMINATE`, `SUPERVISOR_ZOMBIE_WAIT_S`, `..._TERMINATION_COOLDOWN_S`."""

    auto_terminate: bool = False
    wait_s: float = 300.0
    """From marking to the first attempt."""
    cooldown_s: float = 300.0
    """The least time between two attempts on the same zombie."""

    def __post_init__(self) -> None:
        for name in ("wait_s", "cooldown_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"need a finite {name} >= 0, got {value}")


# -- plans --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Leave:
    """Nothing will be done: auto-terminate is off, or it is no longer a zombie."""

    why: str


@dataclass(frozen=True, slots=True)
class Wait:
    """`action` is due at `until` (the wait after marking, or the cooldown), not before."""

    action: Action
    until: datetime
    why: str


@dataclass(frozen=True, slots=True)
class Act:
    action: Action
    why: str


Plan = Leave | Wait | Act


# -- attempt results ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """The call succeeded; `state` is the instance's state in AWS's answer."""

    state: InstanceState
    calls: int = 1


@dataclass(frozen=True, slots=True)
class Gone:
    """AWS does not know the instance (InvalidInstanceID.NotFound): it is already gone."""

    code: str
    message: str
    calls: int = 1


@dataclass(frozen=True, slots=True)
class CallFailed:
    """Any other error: permanent, or transient after the retries gave up."""

    code: str
    message: str
    calls: int = 1


CallResult = Accepted | Gone | CallFailed


# -- decisions ----------------------------------------------------------------------------------


def owns(run: Run, instance_id: str, region: str) -> bool:
    return run.instance_id == instance_id and run.spec.region == region


def keeps_data(run: Run) -> bool:
    """The checkpoint invariant: with checkpointing configured and the checkpoint not verified,
    the instance may be stopped (EBS keeps the data) but never terminated."""
    return run.spec.checkpointing and run.checkpoint is not CheckpointStatus.VERIFIED


def classify(seen: InstanceSeen, runs: Iterable[Run]) -> Cause | NotZombie:
    """Pure. Whether `seen` is a zombie, and why.

    `runs` must hold every run whose current instance `seen` is, in any phase, and the run its
    tag names if that run is known; other runs are ignored. An instance that is not pending or
    running is never a zombie (it bills no compute). An active owner wins over everything. Of
    ended owners, the latest to end decides; its on_complete=none leaves the instance running
    on purpose, however the run ended. A tagged instance without an owner is a zombie unless
    the run it names is resuming (its launch may not be committed yet).
    """
    if not seen.state.is_alive:
        return NotZombie(f"instance is {seen.state}")
    runs = list(runs)
    owners = [r for r in runs if owns(r, seen.instance_id, seen.region)]
    active = [r for r in owners if not r.phase.is_terminal]
    if active:
        return NotZombie(f"run {active[0].spec.run_id} ({active[0].phase}) owns it")
    if owners:
        last = max(owners, key=lambda r: r.phase_since)
        if last.phase not in ZOMBIE_PHASES:
            return NotZombie(f"run {last.spec.run_id} is {last.phase}: {_LEFT_ALONE[last.phase]}")
        if last.spec.on_complete is OnComplete.NONE:
            return NotZombie(
                f"run {last.spec.run_id} has on_complete=none: its instance is left running"
            )
        return Cause(
            ZombieKind.RUN_ENDED,
            last.spec.run_id,
            run_phase=last.phase,
            run_ended_at=last.phase_since,
            keep_data=keeps_data(last),
        )
    tag = seen.tags.get(RUN_TAG)
    if tag is None:
        return NotZombie(f"no run owns it and it has no {RUN_TAG} tag")
    named = [r for r in runs if r.spec.run_id == tag]
    if any(r.phase is Phase.RESUMING for r in named):
        return NotZombie(f"run {tag} is resuming: its new instance may not be recorded yet")
    return Cause(
        ZombieKind.UNOWNED,
        tag,
        run_phase=named[0].phase if named else None,
        keep_data=any(keeps_data(r) for r in named),
    )


_LEFT_ALONE = {
    Phase.DONE: "on_complete=none leaves its instance running",
    Phase.DETACHED: "a person took the instance over",
    Phase.FAILED: "a person must look first",
}


def mark(seen: InstanceSeen, cause: Cause, existing: Zombie | None, *, now: datetime) -> Zombie:
    """Pure. The record after a sighting of a live zombie: a new one marked `now`, unless one
    is still open for this instance; an open one keeps its mark time and attempts, with the
    cause brought up to date."""
    if existing is None or not existing.state.open:
        return Zombie(seen.instance_id, seen.region, cause, marked_at=now)
    return existing if existing.cause == cause else replace(existing, cause=cause)


def clear(zombie: Zombie, why: str, *, now: datetime) -> Zombie:
    """Pure. A live instance that is no longer a zombie (owned again, tag removed)."""
    return replace(zombie, state=ZombieState.CLEARED, resolved_at=now, note=why)


def observe_ended(
    zombie: Zombie, state: InstanceState, *, now: datetime
) -> tuple[Zombie, Termination | None]:
    """Pure. A sweep saw the zombie's instance no longer pending or running.

    After an accepted call, the action's end state confirms it (a log line with `calls=0`);
    any other ending clears it (someone else stopped or terminated it)."""
    accepted = zombie.state in (ZombieState.TERMINATING, ZombieState.STOPPING)
    if accepted and zombie.action is not None and _reached(zombie.action, state):
        confirmed = replace(
            zombie,
            state=ZombieState.CONFIRMED,
            resolved_at=now,
            note=f"{_past(zombie.action)}: instance seen {state}",
        )
        return confirmed, _log(zombie, zombie.action, AttemptOutcome.CONFIRMED, 0, now)
    note = f"instance is {state} now" + ("" if zombie.attempts else ", not by the supervisor")
    return replace(zombie, state=ZombieState.CLEARED, resolved_at=now, note=note), None


def decide(zombie: Zombie, *, now: datetime, policy: ZombiePolicy) -> Plan:
    """Pure. What to do about a zombie seen alive `now`.

    Nothing while auto-terminate is off. Otherwise the first attempt waits `wait_s` from the
    mark, and each next one `cooldown_s` from the last. A zombie under the checkpoint
    invariant is stopped, never terminated."""
    if not zombie.state.open:
        return Leave(f"no longer a zombie ({zombie.state})")
    if not policy.auto_terminate:
        return Leave("auto-terminate is off (SUPERVISOR_AUTO_TERMINATE): listed only")
    action = Action.STOP if zombie.cause.keep_data else Action.TERMINATE
    due = zombie.marked_at + timedelta(seconds=policy.wait_s)
    why = f"{policy.wait_s:g} s after it was marked"
    if zombie.last_attempt_at is not None:
        after_cooldown = zombie.last_attempt_at + timedelta(seconds=policy.cooldown_s)
        if after_cooldown > due:
            due, why = after_cooldown, f"{policy.cooldown_s:g} s after the last attempt"
    if zombie.cause.keep_data:
        why += "; stop, not terminate: no verified checkpoint"
    if now < due:
        return Wait(action, due, why)
    return Act(action, why)


def begin(zombie: Zombie, action: Action, *, now: datetime) -> Zombie:
    """Pure. The intent, committed before the call: a daemon killed during the call finds the
    zombie terminating (or stopping) after its restart, so the instance's end confirms it, and
    an instance still running waits for the cooldown before the next attempt."""
    waiting = ZombieState.TERMINATING if action is Action.TERMINATE else ZombieState.STOPPING
    return replace(zombie, state=waiting, action=action, last_attempt_at=now)


def attempted(
    zombie: Zombie, action: Action, result: CallResult, *, now: datetime
) -> tuple[Zombie, Termination]:
    """Pure. The zombie and the log line after an attempt at `action`.

    Accepted with the end state already in AWS's answer (shutting-down or terminated; stopping
    or stopped for a stop) is confirmed at once; accepted otherwise waits for a sweep to see it.
    NotFound counts as confirmed. A failure leaves it marked, to be tried again after the
    cooldown; `UnauthorizedOperation` is recorded with the permission that is missing."""
    tried = replace(zombie, action=action, attempts=zombie.attempts + 1, last_attempt_at=now)
    kept = _kept_note(zombie) if action is Action.STOP else None
    match result:
        case Accepted(state=state, calls=calls):
            if _reached(action, state):
                note = f"{_past(action)}: AWS answered {state}"
                done = replace(
                    tried,
                    state=ZombieState.CONFIRMED,
                    resolved_at=now,
                    last_error=None,
                    note=note,
                )
                return done, _log(zombie, action, AttemptOutcome.CONFIRMED, calls, now, None, kept)
            waiting = (
                ZombieState.TERMINATING if action is Action.TERMINATE else ZombieState.STOPPING
            )
            note = f"{action} accepted; instance {state}"
            accepted = replace(tried, state=waiting, last_error=None, note=note)
            return accepted, _log(zombie, action, AttemptOutcome.ACCEPTED, calls, now, None, kept)
        case Gone(code=code, message=message, calls=calls):
            note = f"AWS no longer knows the instance ({code}): counted as {_past(action)}"
            gone = replace(
                tried, state=ZombieState.CONFIRMED, resolved_at=now, last_error=None, note=note
            )
            return gone, _log(zombie, action, AttemptOutcome.NOT_FOUND, calls, now, code, message)
        case CallFailed(code=code, message=message, calls=calls):
            if code in UNAUTHORIZED_CODES:
                outcome, text = AttemptOutcome.UNAUTHORIZED, missing_permission(action, message)
            else:
                outcome, text = AttemptOutcome.FAILED, message
            failed = replace(
                tried,
                state=ZombieState.MARKED,
                last_error=f"{code}: {text}",
                note=f"{action} failed ({code}); tried again after the cooldown",
            )
            return failed, _log(zombie, action, outcome, calls, now, code, text)


def missing_permission(action: Action, aws_message: str = "") -> str:
    """What an UnauthorizedOperation means here, and what to do about it."""
    permission = _PERMISSION.get(action, f"ec2:{str(action).title()}Instances")
    text = (
        f"the supervisor's AWS identity lacks {permission} for this instance; "
        f"deploy/iam-policy.json grants it only on instances tagged {RUN_TAG}: tag the "
        f"instance, widen the policy, or {action} it by hand"
    )
    if aws_message:
        text += f" (AWS: {aws_message[:200]})"
    return text


def span(seconds: float) -> str:
    """A rough, readable length of time: '45 s', '12 min', '5 h', '3 days'."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _reached(action: Action, state: InstanceState) -> bool:
    """Whether `state` is where `action` leaves an instance (and no compute is billed)."""
    if state.is_gone:
        return True
    return action is Action.STOP and state in (InstanceState.STOPPING, InstanceState.STOPPED)


def _past(action: Action) -> str:
    return {Action.TERMINATE: "terminated", Action.STOP: "stopped"}.get(action, str(action))


def _kept_note(zombie: Zombie) -> str | None:
    if not zombie.cause.keep_data:
        return None
    return (
        f"stopped, not terminated: run {zombie.run_id} has checkpointing and no verified "
        "checkpoint, so its EBS volume keeps the data"
    )


def _log(
    zombie: Zombie,
    action: Action,
    outcome: AttemptOutcome,
    calls: int,
    now: datetime,
    error_code: str | None = None,
    message: str | None = None,
) -> Termination:
    return Termination(
        at=now,
        instance_id=zombie.instance_id,
        region=zombie.region,
        run_id=zombie.run_id,
        action=action,
        outcome=outcome,
        calls=calls,
        seconds_since_marked=max(0.0, zombie.age_s(now)),
        error_code=error_code,
        message=message,
    )
