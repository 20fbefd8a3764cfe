"""The transition table and `step()`: every decision about a run is made here.

Two tables are the contract, and tests walk both:

- `ACCEPTS`: which event types each phase takes. Anything else raises `InvalidTransition`
  and nothing changes.
- `EDGES`: the legal phase changes. A handler that tried any other change is a bug, and
  `step()` refuses it the same way.

`step()` is pure: it reads no clock (`now` is passed in), does no I/O, and draws jitter only
from the `rng` it is given. The runtime carries out the returned effects and commits the
returned transition.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from supervisor.core.backoff import BackoffPolicy, delay
from supervisor.core.completion import Completed, FailureMarked, evaluate, listing_request
from supervisor.core.effects import (
    ActOnInstance,
    Effect,
    ListPrefix,
    ObserveInstance,
    ReadObject,
    WakeAt,
)
from supervisor.core.errors import InvalidTransition
from supervisor.core.events import (
    Action,
    ActionSucceeded,
    Armed,
    EffectFailed,
    Event,
    InstanceObserved,
    MonitorFailed,
    ObjectRead,
    PrefixListed,
    Tick,
    UserAction,
    UserRequested,
)
from supervisor.core.run import TERMINAL_PHASES, Outcome, Phase, Run
from supervisor.core.spec import OnComplete, RunSpec
from supervisor.core.values import InstanceState

P = Phase

_ALWAYS: frozenset[type[Any]] = frozenset(
    {Armed, Tick, InstanceObserved, UserRequested, MonitorFailed}
)

ACCEPTS: Mapping[Phase, frozenset[type[Any]]] = {
    P.PENDING: _ALWAYS,
    P.RUNNING: _ALWAYS | {PrefixListed, ObjectRead, EffectFailed},
    P.GRACE: _ALWAYS,
    P.STOPPING: _ALWAYS | {ActionSucceeded, EffectFailed},
    P.TERMINATING: _ALWAYS | {ActionSucceeded, EffectFailed},
    **{phase: frozenset() for phase in TERMINAL_PHASES},
}

EDGES: frozenset[tuple[Phase, Phase]] = frozenset(
    {
        (P.PENDING, P.RUNNING),
        (P.PENDING, P.CRASHED),
        (P.RUNNING, P.GRACE),
        (P.RUNNING, P.CRASHED),
        (P.RUNNING, P.STOPPED),
        (P.RUNNING, P.TERMINATED),
        (P.GRACE, P.STOPPING),
        (P.GRACE, P.TERMINATING),
        (P.GRACE, P.DONE),
        (P.GRACE, P.STOPPED),
        (P.GRACE, P.TERMINATED),
        (P.STOPPING, P.STOPPED),
        (P.STOPPING, P.TERMINATED),
        (P.STOPPING, P.TERMINATING),
        (P.TERMINATING, P.TERMINATED),
        # a person's request, from any phase that has not yet acted
        *((p, P.STOPPING) for p in (P.PENDING, P.RUNNING, P.GRACE)),
        *((p, P.TERMINATING) for p in (P.PENDING, P.RUNNING)),
        # detach, and a permanent error, from any non-terminal phase
        *((p, P.DETACHED) for p in (P.PENDING, P.RUNNING, P.GRACE, P.STOPPING, P.TERMINATING)),
        *((p, P.FAILED) for p in (P.PENDING, P.RUNNING, P.GRACE, P.STOPPING, P.TERMINATING)),
    }
)

_FINAL_PHASE = {Action.STOP: P.STOPPED, Action.TERMINATE: P.TERMINATED}
_ACTING_PHASE = {Action.STOP: P.STOPPING, Action.TERMINATE: P.TERMINATING}
_ON_COMPLETE_ACTION = {OnComplete.STOP: Action.STOP, OnComplete.TERMINATE: Action.TERMINATE}


@dataclass(frozen=True, slots=True)
class Transition:
    """One committed change of phase: what, when, why, and the facts behind it."""

    from_phase: Phase | None
    to_phase: Phase
    at: datetime
    reason: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """What `step()` decided: the new run, its transition (if the phase changed), the effects
    to carry out, and whether persisted fields changed without a transition."""

    run: Run
    effects: tuple[Effect, ...] = ()
    transition: Transition | None = None
    persist: bool = False


@dataclass(frozen=True, slots=True)
class Policy:
    """Daemon-wide settings that decisions depend on."""

    poll: BackoffPolicy = field(default_factory=BackoffPolicy)


def new_run(spec: RunSpec, *, now: datetime) -> Decision:
    """Pure. The first state of a freshly attached run, and its first transition."""
    run = Run(
        spec=spec, phase=P.PENDING, outcome=None, version=1, phase_since=now, reason="attached"
    )
    return Decision(run=run, transition=Transition(None, P.PENDING, now, "attached"))


def step(run: Run, event: Event, *, now: datetime, policy: Policy, rng: random.Random) -> Decision:
    """Pure. Apply one observed event to a run; return the new run and the effects to carry out.

    Raises `InvalidTransition` (and changes nothing) when the run's phase does not take the
    event, or a request makes no sense in it.
    """
    if type(event) not in ACCEPTS[run.phase]:
        raise InvalidTransition(
            f"run {run.spec.run_id} is {run.phase}: {type(event).__name__} does not apply"
        )
    handler = _HANDLERS[type(event)]
    decision = handler(_Ctx(run, now, policy, rng), event)
    t = decision.transition
    if t is not None and (t.from_phase, t.to_phase) not in EDGES:
        raise InvalidTransition(f"run {run.spec.run_id}: no edge {t.from_phase} -> {t.to_phase}")
    return decision


@dataclass(frozen=True, slots=True)
class _Ctx:
    run: Run
    now: datetime
    policy: Policy
    rng: random.Random

    def stay(self, *effects: Effect, persist: bool = False, **changes: Any) -> Decision:
        run = self.run.evolve(**changes) if changes else self.run
        return Decision(run=run, effects=effects, persist=persist)

    def move(
        self,
        to: Phase,
        reason: str,
        *effects: Effect,
        detail: Mapping[str, Any] | None = None,
        **changes: Any,
    ) -> Decision:
        run = self.run.evolve(
            phase=to, version=self.run.version + 1, phase_since=self.now, reason=reason, **changes
        )
        transition = Transition(self.run.phase, to, self.now, reason, dict(detail or {}))
        return Decision(run=run, effects=effects, transition=transition)

    def act(self, action: Action, reason: str, **changes: Any) -> Decision:
        """Commit the intent (the transition) together with the effect that carries it out."""
        return self.move(
            _ACTING_PHASE[action], reason, ActOnInstance(action), action_acked_at=None, **changes
        )

    def check_prefix(self) -> ListPrefix:
        return ListPrefix(listing_request(self.run.spec))

    def schedule_next_check(self, **changes: Any) -> Decision:
        wait = delay(self.run.attempt, self.policy.poll, self.rng)
        at = self.now + timedelta(seconds=wait)
        return self.stay(WakeAt(at), attempt=self.run.attempt + 1, next_check_at=at, **changes)


def _on_armed(c: _Ctx, _: Armed) -> Decision:
    run = c.run
    match run.phase:
        case P.RUNNING:
            # After a restart, spread first checks over one initial interval.
            at = c.now + timedelta(seconds=c.rng.uniform(0, c.policy.poll.initial_s))
            return c.stay(WakeAt(at), attempt=0, next_check_at=at)
        case P.GRACE:
            assert run.grace_until is not None
            return c.stay(WakeAt(run.grace_until))
        case _:
            # pending: look for the instance; stopping/terminating: describe before re-driving.
            return c.stay(ObserveInstance())


def _on_tick(c: _Ctx, _: Tick) -> Decision:
    run = c.run
    if run.phase is P.RUNNING:
        if run.next_check_at is not None and c.now < run.next_check_at:
            return c.stay(WakeAt(run.next_check_at))
        return c.stay(c.check_prefix())
    if run.phase is P.GRACE:
        assert run.grace_until is not None
        if c.now < run.grace_until:
            return c.stay(WakeAt(run.grace_until))
        return _end_grace(c)
    return c.stay()


def _end_grace(c: _Ctx) -> Decision:
    spec = c.run.spec
    if spec.on_complete is OnComplete.NONE:
        return c.move(P.DONE, "grace over; on_complete=none leaves the instance running")
    action = _ON_COMPLETE_ACTION[spec.on_complete]
    return c.act(action, f"grace over; {action} requested (on_complete={spec.on_complete})")


def _ended_phase(state: InstanceState) -> Phase:
    return P.STOPPED if state in (InstanceState.STOPPING, InstanceState.STOPPED) else P.TERMINATED


def _on_instance(c: _Ctx, event: InstanceObserved) -> Decision:
    run, state = c.run, event.state
    detail = {"instance_state": str(state), "source": event.source}
    match run.phase:
        case P.PENDING:
            if state is InstanceState.RUNNING:
                return c.move(
                    P.RUNNING,
                    "instance running",
                    c.check_prefix(),
                    detail=detail,
                    attempt=0,
                    next_check_at=None,
                )
            if state is InstanceState.PENDING:
                return c.stay()
            return c.move(
                P.CRASHED,
                f"instance ended before training started (instance {state})",
                detail=detail,
                outcome=Outcome.CRASHED,
            )
        case P.RUNNING:
            if state.is_alive or run.instance_ended is not None:
                return c.stay()
            # Level-triggered: one last look at the prefix decides completed or crashed.
            return c.stay(c.check_prefix(), instance_ended=state)
        case P.GRACE:
            if state.is_alive:
                return c.stay()
            return c.move(
                _ended_phase(state),
                f"instance {state} during grace; nothing left to do",
                detail=detail,
            )
        case P.STOPPING:
            if state is InstanceState.STOPPED:
                return c.move(P.STOPPED, "instance stopped", detail=detail)
            if state.is_gone:
                return c.move(P.TERMINATED, f"instance already gone ({state})", detail=detail)
            if state.is_alive and run.action_acked_at is None:
                return c.stay(ActOnInstance(Action.STOP))
            return c.stay()
        case P.TERMINATING:
            if state in (InstanceState.TERMINATED, InstanceState.UNKNOWN):
                return c.move(P.TERMINATED, f"instance {state}", detail=detail)
            if state is not InstanceState.SHUTTING_DOWN and run.action_acked_at is None:
                return c.stay(ActOnInstance(Action.TERMINATE))
            return c.stay()
    raise AssertionError(f"unhandled phase {run.phase}")  # ACCEPTS keeps terminal phases out


def _on_listed(c: _Ctx, event: PrefixListed) -> Decision:
    run = c.run
    verdict = evaluate(run.spec, event.objects, run.outputs_seen)
    if isinstance(verdict, FailureMarked):
        return c.stay(ReadObject(verdict.key))
    if isinstance(verdict, Completed):
        if run.instance_ended is not None:
            return c.move(
                _ended_phase(run.instance_ended),
                f"{verdict.evidence}; instance was already {run.instance_ended}",
                outcome=Outcome.COMPLETED,
            )
        grace_until = c.now + timedelta(seconds=run.spec.grace_s)
        return c.move(
            P.GRACE,
            verdict.evidence,
            WakeAt(grace_until),
            outcome=Outcome.COMPLETED,
            grace_until=grace_until,
        )
    if run.instance_ended is not None:
        return c.move(
            P.CRASHED,
            f"instance {run.instance_ended} without a request from the supervisor, "
            "and no completion marker",
            outcome=Outcome.CRASHED,
        )
    return c.schedule_next_check(outputs_seen=verdict.outputs)


def _on_read(c: _Ctx, event: ObjectRead) -> Decision:
    if event.key != c.run.spec.failure_marker:
        return c.stay()
    body = event.body.strip()
    summary = body[:500] or "(empty)"
    return c.move(
        P.CRASHED,
        f"failure marker {event.key}: {summary}",
        detail={"failure_marker_body": body[:4000]},
        outcome=Outcome.CRASHED,
    )


def _on_action_succeeded(c: _Ctx, event: ActionSucceeded) -> Decision:
    if c.run.phase is not _ACTING_PHASE[event.action]:
        return c.stay()
    state = event.state_after
    detail = {"instance_state": str(state)}
    final = state is InstanceState.TERMINATED or (
        event.action is Action.STOP and state is InstanceState.STOPPED
    )
    if final:
        return c.move(
            _ended_phase(state),
            f"{event.action} confirmed (instance {state})",
            detail=detail,
            action_acked_at=c.now,
        )
    # Accepted, not yet final (e.g. "stopping"): record it so a restart never re-issues it,
    # and ask the reconciler to confirm soon.
    return c.stay(ObserveInstance(), persist=True, action_acked_at=c.now)


def _on_effect_failed(c: _Ctx, event: EffectFailed) -> Decision:
    detail = {"operation": event.operation, "error_code": event.code, "message": event.message}
    if not event.transient:
        return c.move(
            P.FAILED,
            f"{event.operation} failed: {event.code}: {event.message}",
            detail=detail,
            error_code=event.code,
        )
    if c.run.phase is P.RUNNING:
        return c.schedule_next_check()
    # Stopping/terminating: the intent stays open; the next observation re-drives it.
    return c.stay()


def _on_user(c: _Ctx, event: UserRequested) -> Decision:
    run = c.run
    if event.action is UserAction.DETACH:
        return c.move(P.DETACHED, "detached by user request; instance left as it is")
    action = Action(event.action.value)
    if (run.phase, _ACTING_PHASE[action]) not in EDGES:
        raise InvalidTransition(f"run {run.spec.run_id} is already {run.phase}: cannot {action}")
    return c.act(action, f"{action} requested by user", outcome=run.outcome or Outcome.CANCELLED)


def _on_monitor_failed(c: _Ctx, event: MonitorFailed) -> Decision:
    return c.move(
        P.FAILED,
        f"monitor failed: {event.error_type}: {event.message}",
        detail={"error_type": event.error_type, "message": event.message},
        error_code=event.error_type,
    )


_HANDLERS: Mapping[type[Any], Callable[[_Ctx, Any], Decision]] = {
    Armed: _on_armed,
    Tick: _on_tick,
    InstanceObserved: _on_instance,
    PrefixListed: _on_listed,
    ObjectRead: _on_read,
    ActionSucceeded: _on_action_succeeded,
    EffectFailed: _on_effect_failed,
    UserRequested: _on_user,
    MonitorFailed: _on_monitor_failed,
}
