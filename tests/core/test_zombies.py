"""Zombie instances, pure: which seen instance is a zombie and why, the record's life (mark,
clear, confirm), when to act (wait, cooldown, checkpoint invariant), and what an attempt's
result does. Plain datetimes; nothing reads a clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from supervisor.core.events import Action
from supervisor.core.run import TERMINAL_PHASES, CheckpointStatus, Phase, Run
from supervisor.core.values import InstanceId, InstanceState
from supervisor.core.zombies import (
    RUN_TAG,
    SUCCESSFUL_OUTCOMES,
    TERMINATED_OUTCOMES,
    ZOMBIE_PHASES,
    Accepted,
    Act,
    AttemptOutcome,
    CallFailed,
    Cause,
    Gone,
    InstanceSeen,
    Leave,
    NotZombie,
    Wait,
    Zombie,
    ZombieKind,
    ZombiePolicy,
    ZombieState,
    attempted,
    begin,
    classify,
    clear,
    decide,
    mark,
    missing_permission,
    observe_ended,
    span,
)
from tests.core.builders import INSTANCE, NOW, checkpoint_spec, make_run, make_spec

OTHER = InstanceId("i-0fedcba9876543210")
REGION = "us-east-1"
ON = ZombiePolicy(auto_terminate=True, wait_s=300, cooldown_s=300)
OFF = ZombiePolicy()
MARKED_AT = NOW - timedelta(minutes=1)


def seen(
    state: InstanceState = InstanceState.RUNNING,
    *,
    instance: str = INSTANCE,
    region: str = REGION,
    tag: str | None = None,
) -> InstanceSeen:
    tags = {RUN_TAG: tag, "Name": "trainer"} if tag is not None else {"Name": "trainer"}
    return InstanceSeen(InstanceId(instance), region, state, tags)


def run_in(phase: Phase, *, minutes_ago: float = 12, **spec_fields: Any) -> Run:
    """A run in `phase` since `minutes_ago`, on INSTANCE unless the spec says otherwise."""
    spec = make_spec(**spec_fields)
    return make_run(phase, spec=spec, phase_since=NOW - timedelta(minutes=minutes_ago))


def checkpointed(phase: Phase, checkpoint: CheckpointStatus | None, **spec: Any) -> Run:
    run = make_run(phase, spec=checkpoint_spec(**spec), phase_since=NOW - timedelta(minutes=5))
    return run.evolve(checkpoint=checkpoint)


def zombie(
    *,
    keep_data: bool = False,
    kind: ZombieKind = ZombieKind.RUN_ENDED,
    **changes: Any,
) -> Zombie:
    cause = Cause(
        kind,
        "run-42",
        run_phase=Phase.CRASHED,
        run_ended_at=NOW - timedelta(minutes=12),
        keep_data=keep_data,
    )
    return replace(Zombie(InstanceId(INSTANCE), REGION, cause, marked_at=MARKED_AT), **changes)


def cause_of(verdict: Cause | NotZombie) -> Cause:
    assert isinstance(verdict, Cause), verdict
    return verdict


def why_not(verdict: Cause | NotZombie) -> str:
    assert isinstance(verdict, NotZombie), verdict
    return verdict.why


# -- classify: which instances are zombies ------------------------------------------------------


def test_zombie_phases_are_the_ended_ones_but_done_detached_and_failed() -> None:
    ended = {Phase.STOPPED, Phase.TERMINATED, Phase.CRASHED, Phase.INTERRUPTED}
    assert ended <= ZOMBIE_PHASES <= TERMINAL_PHASES
    assert not ZOMBIE_PHASES & {Phase.DONE, Phase.DETACHED, Phase.FAILED}


def test_a_running_instance_of_a_crashed_run_is_a_zombie_with_a_readable_reason() -> None:
    cause = cause_of(classify(seen(), [run_in(Phase.CRASHED, minutes_ago=12)]))

    assert cause.kind is ZombieKind.RUN_ENDED
    assert (cause.run_id, cause.run_phase) == ("run-42", Phase.CRASHED)
    assert cause.run_ended_at == NOW - timedelta(minutes=12)
    assert not cause.keep_data
    assert cause.describe(NOW) == "run run-42 ended (crashed) 12 min ago; instance still running"


@pytest.mark.parametrize("phase", sorted(ZOMBIE_PHASES))
def test_every_zombie_phase_makes_a_live_instance_a_zombie(phase: Phase) -> None:
    for state in (InstanceState.RUNNING, InstanceState.PENDING):
        assert cause_of(classify(seen(state), [run_in(phase)])).run_phase is phase


@pytest.mark.parametrize(
    ("phase", "why"),
    [
        (Phase.DONE, "on_complete=none leaves its instance running"),
        (Phase.DETACHED, "a person took the instance over"),
        (Phase.FAILED, "a person must look first"),
    ],
)
def test_done_detached_and_failed_runs_leave_their_instance_alone(phase: Phase, why: str) -> None:
    assert why_not(classify(seen(), [run_in(phase)])) == f"run run-42 is {phase}: {why}"


@pytest.mark.parametrize("phase", sorted(ZOMBIE_PHASES))
def test_a_run_with_on_complete_none_leaves_its_instance_running_however_it_ended(
    phase: Phase,
) -> None:
    left_on = run_in(phase, on_complete="none")

    assert why_not(classify(seen(), [left_on])) == (
        "run run-42 has on_complete=none: its instance is left running"
    )


@pytest.mark.parametrize("phase", sorted(set(Phase) - TERMINAL_PHASES))
def test_an_active_run_owns_its_instance(phase: Phase) -> None:
    assert why_not(classify(seen(), [run_in(phase)])) == f"run run-42 ({phase}) owns it"


@pytest.mark.parametrize(
    "state",
    [
        InstanceState.STOPPING,
        InstanceState.STOPPED,
        InstanceState.SHUTTING_DOWN,
        InstanceState.TERMINATED,
        InstanceState.UNKNOWN,
    ],
)
def test_an_instance_that_is_not_pending_or_running_is_never_a_zombie(
    state: InstanceState,
) -> None:
    assert why_not(classify(seen(state, tag="r9"), [run_in(Phase.CRASHED)])) == (
        f"instance is {state}"
    )


def test_an_active_owner_wins_over_an_ended_one_on_the_same_instance() -> None:
    old = run_in(Phase.CRASHED, run_id="old", minutes_ago=60)
    new = run_in(Phase.RUNNING, run_id="new", minutes_ago=1)

    assert why_not(classify(seen(), [old, new])) == "run new (running) owns it"


def test_of_two_ended_owners_the_latest_to_end_decides() -> None:
    crashed_long_ago = run_in(Phase.CRASHED, run_id="first", minutes_ago=60)
    done_lately = run_in(Phase.DONE, run_id="second", minutes_ago=5)

    assert isinstance(classify(seen(), [crashed_long_ago, done_lately]), NotZombie)
    assert cause_of(classify(seen(), [done_lately.evolve(phase=Phase.STOPPED)])).run_id == (
        "second"
    )


def test_a_run_in_another_region_does_not_own_the_instance() -> None:
    elsewhere = run_in(Phase.RUNNING, region="eu-west-1")

    assert isinstance(classify(seen(), [elsewhere]), NotZombie)
    assert cause_of(classify(seen(tag="run-42"), [elsewhere])).kind is ZombieKind.UNOWNED


def test_a_tagged_instance_no_run_owns_is_a_zombie() -> None:
    cause = cause_of(classify(seen(tag="r9"), []))

    assert (cause.kind, cause.run_id, cause.run_phase) == (ZombieKind.UNOWNED, "r9", None)
    assert cause.describe(NOW) == f"tagged {RUN_TAG}=r9; no active run owns it"


def test_a_tagged_instance_whose_run_is_on_another_instance_is_a_zombie() -> None:
    moved_on = run_in(Phase.RUNNING, instance_id=str(OTHER))

    cause = cause_of(classify(seen(tag="run-42"), [moved_on]))

    assert cause.kind is ZombieKind.UNOWNED
    assert "(run run-42 is running, on another instance)" in cause.describe(NOW)


def test_a_tagged_instance_of_a_resuming_run_is_left_alone_while_its_launch_settles() -> None:
    resuming = run_in(Phase.RESUMING, instance_id=str(OTHER))

    assert "resuming" in why_not(classify(seen(tag="run-42"), [resuming]))


def test_an_untagged_instance_no_run_owns_is_not_a_zombie() -> None:
    assert "no run owns it" in why_not(classify(seen(), []))


def test_runs_that_neither_own_nor_name_the_instance_are_ignored() -> None:
    stranger = run_in(Phase.CRASHED, run_id="stranger", instance_id=str(OTHER))

    assert isinstance(classify(seen(), [stranger]), NotZombie)


# -- the checkpoint invariant ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checkpoint", "keep"),
    [(None, True), (CheckpointStatus.UNVERIFIED, True), (CheckpointStatus.VERIFIED, False)],
)
def test_a_checkpointing_run_without_a_verified_checkpoint_keeps_its_data(
    checkpoint: CheckpointStatus | None, keep: bool
) -> None:
    cause = cause_of(classify(seen(), [checkpointed(Phase.CRASHED, checkpoint)]))

    assert cause.keep_data is keep
    assert ("never terminated" in cause.describe(NOW)) is keep


def test_a_run_without_checkpointing_does_not_keep_data() -> None:
    assert not cause_of(classify(seen(), [run_in(Phase.STOPPED)])).keep_data


def test_an_unowned_instance_of_a_checkpointing_run_keeps_its_data() -> None:
    named = checkpointed(Phase.STOPPED, None, instance_id=str(OTHER))

    assert cause_of(classify(seen(tag="run-42"), [named])).keep_data


# -- the record: mark, clear, observe --------------------------------------------------------------


def test_a_first_sighting_marks_a_new_zombie_now() -> None:
    cause = cause_of(classify(seen(), [run_in(Phase.CRASHED)]))

    marked = mark(seen(), cause, None, now=NOW)

    assert marked == Zombie(InstanceId(INSTANCE), REGION, cause, marked_at=NOW)
    assert marked.state is ZombieState.MARKED and marked.attempts == 0
    assert repr(marked) == f"<Zombie {INSTANCE} marked run-ended run=run-42 attempts=0>"


def test_an_open_zombie_keeps_its_mark_and_history_when_seen_again() -> None:
    failed_once = zombie(attempts=1, last_attempt_at=NOW, last_error="X: y")
    newer_cause = Cause(ZombieKind.RUN_ENDED, "run-42", Phase.STOPPED, NOW, keep_data=True)

    again = mark(seen(), failed_once.cause, failed_once, now=NOW + timedelta(hours=1))
    updated = mark(seen(), newer_cause, failed_once, now=NOW + timedelta(hours=1))

    assert again is failed_once
    assert updated == replace(failed_once, cause=newer_cause)


@pytest.mark.parametrize("state", [ZombieState.CONFIRMED, ZombieState.CLEARED])
def test_a_resolved_zombie_running_again_is_marked_anew(state: ZombieState) -> None:
    resolved = zombie(state=state, attempts=2, resolved_at=NOW)
    later = NOW + timedelta(days=1)

    again = mark(seen(), resolved.cause, resolved, now=later)

    assert (again.state, again.marked_at, again.attempts) == (ZombieState.MARKED, later, 0)


def test_a_zombie_that_is_owned_again_is_cleared_with_the_reason() -> None:
    cleared = clear(zombie(), "run r2 (pending) owns it", now=NOW)

    assert (cleared.state, cleared.resolved_at, cleared.note) == (
        ZombieState.CLEARED,
        NOW,
        "run r2 (pending) owns it",
    )
    assert not cleared.state.open


@pytest.mark.parametrize(
    ("state", "action", "seen_as"),
    [
        (ZombieState.TERMINATING, Action.TERMINATE, InstanceState.TERMINATED),
        (ZombieState.TERMINATING, Action.TERMINATE, InstanceState.SHUTTING_DOWN),
        (ZombieState.TERMINATING, Action.TERMINATE, InstanceState.UNKNOWN),
        (ZombieState.STOPPING, Action.STOP, InstanceState.STOPPED),
        (ZombieState.STOPPING, Action.STOP, InstanceState.STOPPING),
    ],
)
def test_the_end_state_after_an_accepted_call_confirms_it(
    state: ZombieState, action: Action, seen_as: InstanceState
) -> None:
    waiting = zombie(state=state, action=action, attempts=1, last_attempt_at=NOW)

    ended, line = observe_ended(waiting, seen_as, now=NOW + timedelta(seconds=60))

    assert (ended.state, ended.resolved_at) == (ZombieState.CONFIRMED, NOW + timedelta(seconds=60))
    assert line is not None
    assert (line.outcome, line.action, line.calls) == (AttemptOutcome.CONFIRMED, action, 0)
    assert line.seconds_since_marked == 120


def test_a_zombie_ended_by_someone_else_is_cleared_without_a_log_line() -> None:
    ended, line = observe_ended(zombie(), InstanceState.TERMINATED, now=NOW)

    assert ended.state is ZombieState.CLEARED
    assert ended.note == "instance is terminated now, not by the supervisor"
    assert line is None


def test_a_terminating_zombie_seen_stopped_is_cleared_not_confirmed() -> None:
    waiting = zombie(state=ZombieState.TERMINATING, action=Action.TERMINATE, attempts=1)

    ended, line = observe_ended(waiting, InstanceState.STOPPED, now=NOW)

    assert (ended.state, ended.note, line) == (
        ZombieState.CLEARED,
        "instance is stopped now",
        None,
    )


# -- decide: when to act ------------------------------------------------------------------------


def test_with_auto_terminate_off_a_zombie_is_only_listed_forever() -> None:
    plan = decide(zombie(), now=NOW + timedelta(days=30), policy=OFF)

    assert isinstance(plan, Leave)
    assert "auto-terminate is off" in plan.why


def test_with_auto_terminate_on_it_waits_from_the_mark() -> None:
    due = MARKED_AT + timedelta(seconds=300)

    before = decide(zombie(), now=due - timedelta(seconds=1), policy=ON)
    at = decide(zombie(), now=due, policy=ON)

    assert isinstance(before, Wait)
    assert (before.action, before.until) == (Action.TERMINATE, due)
    assert isinstance(at, Act)
    assert at.action is Action.TERMINATE


def test_a_zero_wait_acts_at_once() -> None:
    plan = decide(zombie(), now=MARKED_AT, policy=ZombiePolicy(True, wait_s=0, cooldown_s=300))
    assert isinstance(plan, Act)


def test_the_checkpoint_invariant_makes_the_action_a_stop() -> None:
    keeper = zombie(keep_data=True)
    due = MARKED_AT + timedelta(seconds=300)

    waiting = decide(keeper, now=NOW, policy=ON)
    acting = decide(keeper, now=due, policy=ON)

    assert isinstance(waiting, Wait) and waiting.action is Action.STOP
    assert isinstance(acting, Act) and acting.action is Action.STOP
    assert "no verified checkpoint" in acting.why


def test_after_a_failed_attempt_the_next_waits_for_the_cooldown() -> None:
    last = MARKED_AT + timedelta(seconds=400)
    failed = zombie(attempts=1, last_attempt_at=last, last_error="InternalError: boom")

    early = decide(failed, now=last + timedelta(seconds=299), policy=ON)
    late = decide(failed, now=last + timedelta(seconds=300), policy=ON)

    assert isinstance(early, Wait)
    assert early.until == last + timedelta(seconds=300)
    assert "after the last attempt" in early.why
    assert isinstance(late, Act)


def test_a_short_cooldown_never_shortens_the_wait() -> None:
    policy = ZombiePolicy(True, wait_s=600, cooldown_s=10)
    tried_early = zombie(attempts=1, last_attempt_at=MARKED_AT)

    plan = decide(tried_early, now=MARKED_AT + timedelta(seconds=20), policy=policy)

    assert isinstance(plan, Wait) and plan.until == MARKED_AT + timedelta(seconds=600)


def test_an_accepted_terminate_still_running_after_the_cooldown_is_tried_again() -> None:
    accepted = zombie(
        state=ZombieState.TERMINATING, action=Action.TERMINATE, attempts=1, last_attempt_at=NOW
    )

    assert isinstance(decide(accepted, now=NOW + timedelta(seconds=10), policy=ON), Wait)
    assert isinstance(decide(accepted, now=NOW + timedelta(seconds=300), policy=ON), Act)


@pytest.mark.parametrize("state", [ZombieState.CONFIRMED, ZombieState.CLEARED])
def test_a_resolved_zombie_is_left_alone(state: ZombieState) -> None:
    assert isinstance(decide(zombie(state=state), now=NOW + timedelta(days=1), policy=ON), Leave)


@pytest.mark.parametrize("field", ["wait_s", "cooldown_s"])
@pytest.mark.parametrize("value", [-1.0, float("inf"), float("nan")])
def test_a_policy_with_a_negative_or_endless_time_is_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        ZombiePolicy(True, **{field: value})


# -- begin: the intent before the call -------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "state"),
    [(Action.TERMINATE, ZombieState.TERMINATING), (Action.STOP, ZombieState.STOPPING)],
)
def test_the_intent_is_recorded_before_the_call(action: Action, state: ZombieState) -> None:
    begun = begin(zombie(), action, now=NOW)

    assert (begun.state, begun.action, begun.last_attempt_at, begun.attempts) == (
        state,
        action,
        NOW,
        0,
    )


def test_after_a_kill_during_the_call_the_instances_end_confirms_it() -> None:
    begun = begin(zombie(), Action.TERMINATE, now=NOW)

    ended, line = observe_ended(begun, InstanceState.TERMINATED, now=NOW + timedelta(minutes=1))

    assert ended.state is ZombieState.CONFIRMED
    assert line is not None and line.outcome is AttemptOutcome.CONFIRMED


def test_after_a_kill_during_the_call_a_running_instance_waits_for_the_cooldown() -> None:
    begun = begin(zombie(), Action.TERMINATE, now=NOW)

    plan = decide(begun, now=NOW + timedelta(seconds=10), policy=ON)

    assert isinstance(plan, Wait) and plan.until == NOW + timedelta(seconds=300)


# -- attempted: what a result does ----------------------------------------------------------------


AFTER = NOW + timedelta(minutes=5)


@pytest.mark.parametrize("state", [InstanceState.SHUTTING_DOWN, InstanceState.TERMINATED])
def test_an_accepted_terminate_answering_shutting_down_is_confirmed(state: InstanceState) -> None:
    done, line = attempted(zombie(), Action.TERMINATE, Accepted(state, calls=2), now=AFTER)

    assert (done.state, done.action, done.attempts) == (
        ZombieState.CONFIRMED,
        Action.TERMINATE,
        1,
    )
    assert (done.last_attempt_at, done.resolved_at, done.last_error) == (AFTER, AFTER, None)
    assert line.outcome is AttemptOutcome.CONFIRMED
    assert (line.calls, line.seconds_since_marked) == (2, 360)
    assert (line.instance_id, line.region, line.run_id) == (INSTANCE, REGION, "run-42")
    assert (line.error_code, line.message) == (None, None)


def test_an_accepted_terminate_still_running_waits_for_a_sweep_to_confirm() -> None:
    waiting, line = attempted(
        zombie(), Action.TERMINATE, Accepted(InstanceState.RUNNING), now=AFTER
    )

    assert waiting.state is ZombieState.TERMINATING and waiting.state.open
    assert line.outcome is AttemptOutcome.ACCEPTED


def test_an_accepted_stop_records_that_it_stopped_instead_of_terminating() -> None:
    keeper = zombie(keep_data=True)

    done, line = attempted(keeper, Action.STOP, Accepted(InstanceState.STOPPING), now=AFTER)

    assert (done.state, line.outcome, line.action) == (
        ZombieState.CONFIRMED,
        AttemptOutcome.CONFIRMED,
        Action.STOP,
    )
    assert line.message is not None
    assert "stopped, not terminated" in line.message and "EBS" in line.message


def test_not_found_counts_as_confirmed() -> None:
    done, line = attempted(
        zombie(),
        Action.TERMINATE,
        Gone("InvalidInstanceID.NotFound", "The instance ID does not exist"),
        now=AFTER,
    )

    assert done.state is ZombieState.CONFIRMED
    assert "counted as terminated" in done.note
    assert line.outcome is AttemptOutcome.NOT_FOUND
    assert line.outcome in TERMINATED_OUTCOMES and line.outcome in SUCCESSFUL_OUTCOMES
    assert line.error_code == "InvalidInstanceID.NotFound"


@pytest.mark.parametrize(
    ("action", "permission"),
    [(Action.TERMINATE, "ec2:TerminateInstances"), (Action.STOP, "ec2:StopInstances")],
)
def test_unauthorized_is_recorded_with_the_missing_permission(
    action: Action, permission: str
) -> None:
    refused = CallFailed("UnauthorizedOperation", "You are not authorized to perform this")

    after, line = attempted(zombie(), action, refused, now=AFTER)

    assert (after.state, after.attempts, after.last_attempt_at) == (ZombieState.MARKED, 1, AFTER)
    assert line.outcome is AttemptOutcome.UNAUTHORIZED
    assert line.error_code == "UnauthorizedOperation"
    assert line.message is not None
    for needed in (permission, "deploy/iam-policy.json", RUN_TAG, "You are not authorized"):
        assert needed in line.message
    assert after.last_error == f"UnauthorizedOperation: {line.message}"


def test_another_failure_leaves_it_marked_for_a_retry_after_the_cooldown() -> None:
    after, line = attempted(
        zombie(),
        Action.TERMINATE,
        CallFailed("RequestLimitExceeded", "Request limit exceeded.", calls=4),
        now=AFTER,
    )

    assert after.state is ZombieState.MARKED
    assert after.last_error == "RequestLimitExceeded: Request limit exceeded."
    assert (line.outcome, line.calls, line.message) == (
        AttemptOutcome.FAILED,
        4,
        "Request limit exceeded.",
    )
    retry = decide(after, now=AFTER + timedelta(seconds=1), policy=ON)
    assert isinstance(retry, Wait) and retry.until == AFTER + timedelta(seconds=300)


def test_a_success_after_a_failure_clears_the_last_error() -> None:
    failed, _ = attempted(zombie(), Action.TERMINATE, CallFailed("X", "y"), now=AFTER)

    done, _ = attempted(failed, Action.TERMINATE, Accepted(InstanceState.SHUTTING_DOWN), now=AFTER)

    assert (done.attempts, done.last_error) == (2, None)


def test_missing_permission_without_an_aws_message_says_what_to_do() -> None:
    text = missing_permission(Action.TERMINATE)

    assert text.startswith("the supervisor's AWS identity lacks ec2:TerminateInstances")
    assert text.endswith("or terminate it by hand")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (-5, "0 s"),
        (89, "89 s"),
        (720, "12 min"),
        (5 * 3600, "5 h"),
        (3 * 86400, "3 days"),
    ],
)
def test_span_reads_like_a_person_would_say_it(seconds: float, text: str) -> None:
    assert span(seconds) == text
