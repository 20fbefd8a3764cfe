"""The transition table and step(): every edge is reachable, everything else is refused."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, get_args

import pytest

from supervisor.core.backoff import delay
from supervisor.core.effects import ActOnInstance, Effect, ObserveInstance, ReadObject, WakeAt
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
from supervisor.core.machine import ACCEPTS, EDGES, Policy, new_run, step
from supervisor.core.run import TERMINAL_PHASES, Outcome, Phase, Run
from supervisor.core.values import InstanceState
from tests.core.builders import (
    GRACE_UNTIL,
    INSTANCE,
    LIST_TOP,
    NOW,
    POLICY,
    listed,
    make_run,
    make_spec,
    obj,
    run_step,
    seeded,
)

P, S = Phase, InstanceState
STOP, TERMINATE = ActOnInstance(Action.STOP), ActOnInstance(Action.TERMINATE)
DENIED = EffectFailed("StopInstances", "UnauthorizedOperation", "not authorized", transient=False)
THROTTLED = EffectFailed("ListObjectsV2", "SlowDown", "reduce your request rate", transient=True)
ACTIVE = (P.PENDING, P.RUNNING, P.GRACE, P.STOPPING, P.TERMINATING)
EFFECTFUL = (P.RUNNING, P.STOPPING, P.TERMINATING)
CRASH = MonitorFailed("KeyError", "'Contents'")


def seen(state: InstanceState) -> InstanceObserved:
    return InstanceObserved(state)


def user(action: UserAction) -> UserRequested:
    return UserRequested(action)


@dataclass(frozen=True)
class EdgeCase:
    run: Run
    event: Event
    to: Phase
    outcome: Outcome | None
    reason: str
    effects: tuple[Effect, ...] = ()
    now: datetime = NOW
    fields: dict[str, Any] = field(default_factory=dict)


def _edge(
    phase: Phase,
    event: Event,
    to: Phase,
    outcome: Outcome | None,
    reason: str,
    /,
    *effects: Effect,
    now: datetime = NOW,
    spec: dict[str, Any] | None = None,
    fields: dict[str, Any] | None = None,
    **run: Any,
) -> Any:
    case = EdgeCase(
        make_run(phase, spec=make_spec(**(spec or {})), **run),
        event,
        to,
        outcome,
        reason,
        effects,
        now,
        fields or {},
    )
    return pytest.param(case, id=f"{phase}->{to}:{type(event).__name__}")


C, X, U = Outcome.COMPLETED, Outcome.CANCELLED, UserAction


def kept(phase: Phase) -> Outcome | None:
    """The outcome `make_run(phase)` starts with, which detach and failure leave alone."""
    return make_run(phase).outcome


A, PO = Action, P.PENDING
# fmt: off
EDGE_CASES = [
    _edge(PO, seen(S.RUNNING), P.RUNNING, None, "instance running", LIST_TOP),
    _edge(PO, seen(S.TERMINATED), P.CRASHED, Outcome.CRASHED,
          "instance ended before training started (instance terminated)"),
    _edge(P.RUNNING, listed("done"), P.GRACE, C, "completion marker done found",
          WakeAt(GRACE_UNTIL), fields={"grace_until": GRACE_UNTIL}),
    _edge(P.RUNNING, ObjectRead("FAILED", "CUDA out of memory\n"), P.CRASHED, Outcome.CRASHED,
          "failure marker FAILED: CUDA out of memory"),
    _edge(P.RUNNING, listed("done"), P.STOPPED, C, "instance was already stopped",
          instance_ended=S.STOPPED),
    _edge(P.RUNNING, listed("done"), P.TERMINATED, C, "instance was already terminated",
          instance_ended=S.TERMINATED),
    _edge(P.GRACE, Tick(), P.STOPPING, C, "stop requested (on_complete=stop)", STOP,
          now=GRACE_UNTIL),
    _edge(P.GRACE, Tick(), P.TERMINATING, C, "terminate requested (on_complete=terminate)",
          TERMINATE, now=GRACE_UNTIL, spec={"on_complete": "terminate"}),
    _edge(P.GRACE, Tick(), P.DONE, C, "on_complete=none leaves the instance running",
          now=GRACE_UNTIL, spec={"on_complete": "none"}),
    _edge(P.GRACE, seen(S.STOPPED), P.STOPPED, C, "instance stopped during grace"),
    _edge(P.GRACE, seen(S.TERMINATED), P.TERMINATED, C, "instance terminated during grace"),
    _edge(P.STOPPING, ActionSucceeded(A.STOP, S.STOPPED), P.STOPPED, C, "stop confirmed",
          outcome=C, fields={"action_acked_at": NOW}),
    _edge(P.STOPPING, seen(S.TERMINATED), P.TERMINATED, C, "instance already gone", outcome=C),
    _edge(P.STOPPING, user(U.TERMINATE), P.TERMINATING, C, "terminate requested by user",
          TERMINATE, outcome=C, action_acked_at=NOW, fields={"action_acked_at": None}),
    _edge(P.TERMINATING, ActionSucceeded(A.TERMINATE, S.TERMINATED), P.TERMINATED, C,
          "terminate confirmed", outcome=C),
    _edge(PO, user(U.STOP), P.STOPPING, X, "stop requested by user", STOP),
    _edge(P.RUNNING, user(U.STOP), P.STOPPING, X, "stop requested by user", STOP),
    _edge(P.GRACE, user(U.STOP), P.STOPPING, C, "stop requested by user", STOP),
    _edge(PO, user(U.TERMINATE), P.TERMINATING, X, "terminate requested by user", TERMINATE),
    _edge(P.RUNNING, user(U.TERMINATE), P.TERMINATING, X, "terminate requested by user",
          TERMINATE),
    *(_edge(p, user(U.DETACH), P.DETACHED, kept(p), "detached by user request") for p in ACTIVE),
    # A crashed monitor fails the run from any active phase (DESIGN invariant 6); a permanent
    # effect error does so in the phases that issue effects.
    *(_edge(p, CRASH, P.FAILED, kept(p), "monitor failed: KeyError: 'Contents'",
            fields={"error_code": "KeyError"}) for p in ACTIVE),
    *(_edge(p, DENIED, P.FAILED, kept(p), "StopInstances failed: UnauthorizedOperation",
            fields={"error_code": "UnauthorizedOperation"}) for p in EFFECTFUL),
]
# fmt: on


def test_edge_cases_cover_exactly_the_edges_table() -> None:
    covered = {(c.run.phase, c.to) for p in EDGE_CASES for c in p.values if isinstance(c, EdgeCase)}
    assert covered == EDGES


@pytest.mark.parametrize("case", EDGE_CASES)
def test_each_edge_is_one_step_with_its_outcome_reason_and_effects(case: EdgeCase) -> None:
    decision = run_step(case.run, case.event, now=case.now)
    t = decision.transition
    assert t is not None
    assert (t.from_phase, t.to_phase, t.at) == (case.run.phase, case.to, case.now)
    assert decision.run.phase is case.to
    assert decision.run.outcome == case.outcome
    assert case.reason in decision.run.reason
    assert t.reason == decision.run.reason
    assert decision.effects == case.effects
    assert decision.run.version == case.run.version + 1
    assert decision.run.phase_since == case.now
    for name, value in case.fields.items():
        assert getattr(decision.run, name) == value


# -- events a phase does not take --------------------------------------------------------------

# fmt: off
ONE_OF_EACH: list[Event] = [
    Armed(), Tick(), seen(S.RUNNING), listed("done"), ObjectRead("FAILED", "boom"),
    ActionSucceeded(A.STOP, S.STOPPED), DENIED, user(U.DETACH), CRASH,
]
REFUSED = [
    pytest.param(phase, event, id=f"{phase}:{type(event).__name__}")
    for phase in Phase for event in ONE_OF_EACH if type(event) not in ACCEPTS[phase]
]
# fmt: on


def test_every_phase_has_a_row_terminal_rows_are_empty_and_every_event_is_tried() -> None:
    assert set(ACCEPTS) == set(Phase)
    assert all(not ACCEPTS[p] for p in TERMINAL_PHASES)
    assert {type(e) for e in ONE_OF_EACH} == set(get_args(Event))


@pytest.mark.parametrize(("phase", "event"), REFUSED)
def test_an_event_the_phase_does_not_take_raises_and_changes_nothing(
    phase: Phase, event: Event
) -> None:
    run = make_run(phase)
    with pytest.raises(InvalidTransition, match=f"is {phase}"):
        run_step(run, event)
    assert run == make_run(phase)
    assert run.phase is phase and run.version == 3


# -- pending -----------------------------------------------------------------------------------


def test_new_run_is_pending_at_version_1_with_an_attached_transition() -> None:
    d = new_run(make_spec(), now=NOW)
    assert (d.run.phase, d.run.version, d.run.outcome) == (P.PENDING, 1, None)
    assert d.transition is not None
    assert (d.transition.from_phase, d.transition.to_phase) == (None, P.PENDING)


@pytest.mark.parametrize("state", [S.STOPPING, S.STOPPED, S.SHUTTING_DOWN, S.TERMINATED, S.UNKNOWN])
def test_pending_instance_that_ends_is_crashed_before_training(state: InstanceState) -> None:
    d = run_step(make_run(P.PENDING), seen(state))
    assert (d.run.phase, d.run.outcome) == (P.CRASHED, Outcome.CRASHED)
    assert d.run.reason.startswith("instance ended before training started")


def test_pending_instance_still_pending_is_a_stay_without_effects() -> None:
    run = make_run(P.PENDING)
    assert run_step(run, seen(S.PENDING)).run == run


# -- running -----------------------------------------------------------------------------------


def test_running_armed_staggers_the_first_check_within_one_initial_interval() -> None:
    for seed in range(20):
        run = make_run(P.RUNNING, attempt=4)
        d = step(run, Armed(), now=NOW, policy=POLICY, rng=random.Random(seed))
        (wake,) = d.effects
        assert isinstance(wake, WakeAt)
        assert NOW <= wake.at <= NOW + timedelta(seconds=POLICY.poll.initial_s)
        assert (d.run.attempt, d.run.next_check_at, d.transition) == (0, wake.at, None)


def test_running_listing_without_evidence_schedules_the_next_check_with_backoff() -> None:
    d = run_step(make_run(P.RUNNING, attempt=2), listed("logs.txt"))
    at = NOW + timedelta(seconds=delay(2, POLICY.poll, seeded()))
    assert d.effects == (WakeAt(at),)
    assert (d.run.attempt, d.run.next_check_at, d.run.version) == (3, at, 3)


def test_running_tick_before_the_check_is_due_only_rearms_the_timer() -> None:
    due = NOW + timedelta(seconds=5)
    assert run_step(make_run(P.RUNNING, next_check_at=due), Tick()).effects == (WakeAt(due),)


def test_running_tick_when_due_lists_the_prefix() -> None:
    assert run_step(make_run(P.RUNNING, next_check_at=NOW), Tick()).effects == (LIST_TOP,)


def test_running_failure_marker_reads_it_before_deciding() -> None:
    d = run_step(make_run(P.RUNNING), listed("FAILED"))
    assert (d.effects, d.transition, d.run.phase) == ((ReadObject("FAILED"),), None, P.RUNNING)


def test_running_failure_marker_body_goes_into_the_reason_and_detail() -> None:
    d = run_step(make_run(P.RUNNING), ObjectRead("FAILED", "  NaN loss at step 900\n"))
    assert d.run.reason == "failure marker FAILED: NaN loss at step 900"
    assert d.transition is not None
    assert d.transition.detail == {"failure_marker_body": "NaN loss at step 900"}


def test_running_read_of_another_key_is_ignored() -> None:
    run = make_run(P.RUNNING)
    assert run_step(run, ObjectRead("other.txt", "x")).run == run


ENDED = [
    (S.STOPPING, P.STOPPED), (S.STOPPED, P.STOPPED), (S.SHUTTING_DOWN, P.TERMINATED),
    (S.TERMINATED, P.TERMINATED), (S.UNKNOWN, P.TERMINATED),
]  # fmt: skip


@pytest.mark.parametrize(("state", "final"), ENDED)
def test_running_instance_ended_takes_one_last_look_at_the_prefix(
    state: InstanceState, final: Phase
) -> None:
    d = run_step(make_run(P.RUNNING), seen(state))
    assert (d.effects, d.transition, d.run.instance_ended) == ((LIST_TOP,), None, state)
    assert run_step(d.run, seen(state)).effects == ()  # a repeated observation lists nothing
    done = run_step(d.run, listed("done"))
    assert (done.run.phase, done.run.outcome) == (final, Outcome.COMPLETED)
    crashed = run_step(d.run, listed("logs.txt"))
    assert (crashed.run.phase, crashed.run.outcome) == (P.CRASHED, Outcome.CRASHED)
    assert "no completion marker" in crashed.run.reason


def test_running_instance_still_alive_is_a_stay() -> None:
    assert run_step(make_run(P.RUNNING), seen(S.RUNNING)).effects == ()


def test_running_transient_error_reschedules_the_check_with_backoff() -> None:
    d = run_step(make_run(P.RUNNING, attempt=1), THROTTLED)
    at = NOW + timedelta(seconds=delay(1, POLICY.poll, seeded()))
    assert (d.effects, d.transition) == ((WakeAt(at),), None)
    assert (d.run.phase, d.run.attempt, d.run.next_check_at) == (P.RUNNING, 2, at)


# -- grace -------------------------------------------------------------------------------------


def test_grace_tick_before_grace_until_only_rearms_the_timer() -> None:
    d = run_step(make_run(P.GRACE), Tick(), now=GRACE_UNTIL - timedelta(seconds=1))
    assert (d.effects, d.transition) == ((WakeAt(GRACE_UNTIL),), None)


def test_grace_armed_after_a_restart_waits_for_the_same_grace_until() -> None:
    assert run_step(make_run(P.GRACE), Armed()).effects == (WakeAt(GRACE_UNTIL),)


# -- stopping and terminating ------------------------------------------------------------------


REDRIVE = [
    (P.STOPPING, S.RUNNING, None, (STOP,)), (P.STOPPING, S.RUNNING, NOW, ()),
    (P.STOPPING, S.STOPPING, None, ()), (P.TERMINATING, S.RUNNING, None, (TERMINATE,)),
    (P.TERMINATING, S.STOPPED, None, (TERMINATE,)), (P.TERMINATING, S.STOPPED, NOW, ()),
    (P.TERMINATING, S.SHUTTING_DOWN, None, ()),
]  # fmt: skip


@pytest.mark.parametrize(("phase", "state", "acked", "effects"), REDRIVE)
def test_open_intent_is_redriven_only_when_the_action_was_never_acknowledged(
    phase: Phase, state: InstanceState, acked: datetime | None, effects: tuple[Effect, ...]
) -> None:
    d = run_step(make_run(phase, action_acked_at=acked), seen(state))
    assert (d.effects, d.transition) == (effects, None)


@pytest.mark.parametrize("phase", [P.PENDING, P.STOPPING, P.TERMINATING])
def test_armed_in_pending_or_acting_phase_describes_before_acting(phase: Phase) -> None:
    assert run_step(make_run(phase), Armed()).effects == (ObserveInstance(),)


def test_stop_accepted_but_not_final_persists_the_ack_and_asks_for_a_describe() -> None:
    run = make_run(P.STOPPING)
    d = run_step(run, ActionSucceeded(Action.STOP, S.STOPPING))
    assert (d.persist, d.transition, d.effects) == (True, None, (ObserveInstance(),))
    assert (d.run.phase, d.run.action_acked_at, d.run.version) == (P.STOPPING, NOW, run.version)


def test_acknowledgement_of_a_superseded_action_is_ignored() -> None:
    run = make_run(P.TERMINATING)
    assert run_step(run, ActionSucceeded(Action.STOP, S.STOPPED)).run == run


@pytest.mark.parametrize("phase", [P.STOPPING, P.TERMINATING])
def test_transient_error_while_acting_changes_nothing(phase: Phase) -> None:
    run = make_run(phase)
    d = run_step(run, THROTTLED)
    assert (d.run, d.effects, d.transition, d.persist) == (run, (), None, False)


# -- user requests -----------------------------------------------------------------------------

USER_TABLE = [
    (p, a, to)
    for p, row in {
        P.PENDING: (P.STOPPING, P.TERMINATING, P.DETACHED),
        P.RUNNING: (P.STOPPING, P.TERMINATING, P.DETACHED),
        P.GRACE: (P.STOPPING, P.TERMINATING, P.DETACHED),
        P.STOPPING: (None, P.TERMINATING, P.DETACHED),
        P.TERMINATING: (None, None, P.DETACHED),
    }.items()
    for a, to in zip((U.STOP, U.TERMINATE, U.DETACH), row, strict=True)
]


@pytest.mark.parametrize(("phase", "action", "to"), USER_TABLE)
def test_user_request_moves_to_its_phase_or_is_refused(
    phase: Phase, action: UserAction, to: Phase | None
) -> None:
    run = make_run(phase)
    if to is None:
        with pytest.raises(InvalidTransition, match=f"already {phase}: cannot {action}"):
            run_step(run, user(action))
        assert run == make_run(phase)
    else:
        assert run_step(run, user(action)).run.phase is to


# -- versions, errors, repr --------------------------------------------------------------------


def test_permanent_error_records_its_code_and_the_failed_operation() -> None:
    d = run_step(make_run(P.STOPPING), DENIED)
    assert (d.run.phase, d.run.error_code) == (P.FAILED, "UnauthorizedOperation")
    assert d.transition is not None and d.transition.detail["operation"] == "StopInstances"


def test_a_walk_through_a_whole_run_bumps_the_version_once_per_transition() -> None:
    run = new_run(make_spec(), now=NOW).run
    later = NOW + timedelta(hours=1)
    script: list[tuple[Event, datetime, int]] = [
        (Armed(), NOW, 1), (seen(S.PENDING), NOW, 1), (seen(S.RUNNING), NOW, 2),
        (listed("logs.txt"), NOW, 2), (Tick(), later, 2), (listed("done"), NOW, 3),
        (Tick(), NOW, 3), (Tick(), GRACE_UNTIL, 4),
        (ActionSucceeded(A.STOP, S.STOPPING), GRACE_UNTIL, 4), (seen(S.STOPPED), GRACE_UNTIL, 5),
    ]  # fmt: skip
    for event, now, version in script:
        run = run_step(run, event, now=now).run
        assert run.version == version, event
    assert (run.phase, run.outcome) == (P.STOPPED, Outcome.COMPLETED)


def test_step_is_deterministic_for_the_same_inputs_and_seed() -> None:
    run = make_run(P.RUNNING)
    assert run_step(run, listed()) == run_step(run, listed())
    assert step(run, Armed(), now=NOW, policy=Policy(), rng=seeded()) == run_step(run, Armed())


def test_repr_shows_run_id_phase_outcome_and_version() -> None:
    assert repr(make_run(P.RUNNING)) == f"<Run run-42 running v3 instance={INSTANCE}>"
    assert repr(make_run(P.GRACE)).startswith("<Run run-42 grace/completed v3 ")


def test_expected_outputs_complete_only_after_two_identical_listings() -> None:
    run = make_run(P.RUNNING, spec=make_spec(expect=("model.pt",)))
    first = run_step(run, listed("model.pt"))
    assert first.run.phase is P.RUNNING
    changed = run_step(first.run, PrefixListed((obj("model.pt", etag="e2"),)))
    assert changed.run.phase is P.RUNNING
    assert run_step(changed.run, PrefixListed((obj("model.pt", etag="e2"),))).run.phase is P.GRACE
