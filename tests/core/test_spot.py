"""Spot interruptions in step(): the warning starts the final checkpoint inside the notice, no
stop call is made before the deadline is long past, the instance going ends the run as
interrupted (or completed, if the last look at the prefix finds a marker), and the
on_interruption policy asks for a bounded number of resumes from the newest verified
checkpoint."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

import pytest

from supervisor.core.checkpoint import CommandKind, CommandResult, CommandStatus
from supervisor.core.effects import (
    ActOnInstance,
    AutoResume,
    LaunchInstance,
    ObserveInstance,
    ReadObject,
    RunInstanceCommand,
    VerifyCheckpoint,
    WakeAt,
)
from supervisor.core.errors import InvalidTransition
from supervisor.core.events import (
    Action,
    ActionSucceeded,
    Armed,
    CommandFinished,
    EffectFailed,
    Event,
    InstanceLaunched,
    InstanceObserved,
    MonitorFailed,
    Nudge,
    ObjectRead,
    PrefixListed,
    RebalanceRecommended,
    ResumeRequested,
    SpotInterruptionWarning,
    Tick,
    UserAction,
    UserRequested,
)
from supervisor.core.machine import (
    INTERRUPT_OVERDUE_S,
    RESTORE_TIMEOUT_S,
    START_TIMEOUT_S,
    Decision,
    checkpoint_command,
    restore_command,
    start_command,
)
from supervisor.core.run import CheckpointStatus, Outcome, Phase, Run
from supervisor.core.values import InstanceId, InstanceState
from tests.core.builders import (
    DEADLINE,
    LAUNCH_TEMPLATE,
    LIST_TOP,
    NOW,
    PID_FILE,
    RESUME_COMMAND,
    checked,
    failed,
    finished,
    listed,
    make_run,
    make_spec,
    obj,
    run_step,
    spot_spec,
    warning,
    with_state,
)

P, S, A = Phase, InstanceState, Action
V, UV = CheckpointStatus.VERIFIED, CheckpointStatus.UNVERIFIED
INT, C, X = Outcome.INTERRUPTED, Outcome.COMPLETED, Outcome.CANCELLED
CP, RS, ST = CommandKind.CHECKPOINT, CommandKind.RESTORE, CommandKind.START
MANIFEST_KEY = "exp1/run42/checkpoints/_manifest.json"
NOT_FOUND = "exp1/run42/checkpoints/model.pt: missing in S3"
THROTTLED = EffectFailed("SendCommand", "ThrottlingException", "rate exceeded", transient=True)
NEW_INSTANCE = InstanceId("i-0fedcba9876543210")
RESUME: dict[str, Any] = {"on_interruption": "resume", "launch_template": LAUNCH_TEMPLATE}
"""A spot run that resumes itself on a new instance after an interruption."""
OVERDUE_S = 100 + INTERRUPT_OVERDUE_S
"""Seconds after NOW when an instance still there after the default warning is overdue."""
WAKE_OVERDUE = WakeAt(NOW + timedelta(seconds=OVERDUE_S))
NOTHING = PrefixListed(())
"""An empty listing: no marker of any kind."""
STOP, TERMINATE = ActOnInstance(A.STOP), ActOnInstance(A.TERMINATE)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def interrupting(tries: int = 1, *, seconds_left: float = 100, **spec: Any) -> Run:
    """A spot run whose warning arrived at NOW while it was running: its checkpoint step is
    under way (`tries` attempts so far) and AWS takes the instance at NOW + seconds_left."""
    running = make_run(P.RUNNING, spec=spot_spec(**spec))
    return with_state(run_step(running, warning(seconds_left)).run, checkpoint_tries=tries)


def saved(**spec: Any) -> Run:
    """An interrupting run whose checkpoint was verified 40 s after the warning."""
    run = run_step(interrupting(**spec), finished(CP)).run
    return run_step(run, checked(), now=at(40)).run


def taken(
    run: Run,
    state: InstanceState = S.TERMINATED,
    *,
    now: datetime = NOW,
    last_look: PrefixListed | EffectFailed = NOTHING,
) -> Decision:
    """The reconciler finds the interrupted instance gone; the one last look at the prefix that
    this asks for finds `last_look` (by default, nothing)."""
    gone = run_step(run, InstanceObserved(state), now=now)
    assert (gone.effects, gone.transition, gone.run.this_attempt.instance_ended) == (
        (LIST_TOP,),
        None,
        state,
    )
    return run_step(gone.run, last_look, now=now)


def interrupted_run(
    checkpoint: CheckpointStatus | None = V,
    attempt: int = 1,
    *,
    verified: int | None = None,
    last_look: PrefixListed | EffectFailed = NOTHING,
    **spec: Any,
) -> Decision:
    """An interrupting run (of attempt `attempt`, its final checkpoint `checkpoint`, and the
    checkpoint of attempt `verified` the newest verified one) whose instance AWS took."""
    run = make_run(
        P.INTERRUPTING, spec=spot_spec(**spec), outcome=INT, checkpoint=checkpoint,
        attempt=attempt, interrupt_deadline=DEADLINE,
    )  # fmt: skip
    if verified is not None:
        run = run.evolve(verified_attempt=verified)
    return taken(run, last_look=last_look)


# -- the warning -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sigterm_timeout_s", "seconds_left", "cut", "shown"),
    [(120, 100, 50, "50"), (30, 100, 30, "30"), (120, 7, 3.5, "3.5"), (0, 100, 0, "0"),
     (120, 240, 120, "120")],
)  # fmt: skip
def test_a_warning_while_running_starts_the_checkpoint_with_the_sigterm_timeout_cut_to_fit(
    sigterm_timeout_s: float, seconds_left: float, cut: float, shown: str
) -> None:
    run = make_run(P.RUNNING, spec=spot_spec(sigterm_timeout_s=sigterm_timeout_s))
    d = run_step(run, warning(seconds_left))
    (wake, effect) = d.effects
    assert wake == WakeAt(at(seconds_left + INTERRUPT_OVERDUE_S))
    assert isinstance(effect, RunInstanceCommand)
    assert effect == RunInstanceCommand(
        checkpoint_command(run, sigterm_timeout_s=cut), seconds_left
    )
    assert effect.command.option("sigterm-timeout-s") == shown
    full = checkpoint_command(run)
    assert [o for o in effect.command.options if o[0] != "sigterm-timeout-s"] == [
        o for o in full.options if o[0] != "sigterm-timeout-s"
    ]
    assert d.transition is not None and d.transition.detail["sigterm_timeout_s"] == cut


def test_a_warning_records_its_deadline_action_and_the_time_left() -> None:
    d = run_step(make_run(P.RUNNING, spec=spot_spec()), warning(action="stop"))
    assert (d.run.phase, d.run.outcome, d.run.interrupt_deadline) == (P.INTERRUPTING, INT, DEADLINE)
    assert (d.run.this_attempt.checkpoint_tries, d.run.checkpoint, d.run.pending_action) == (
        1,
        None,
        None,
    )
    assert d.run.reason == (
        "spot interruption warning (stop, 100s left); saving the final checkpoint now"
    )
    assert d.transition is not None
    assert d.transition.detail == {
        "deadline": DEADLINE.isoformat(), "seconds_left": 100.0, "instance_action": "stop",
        "sigterm_timeout_s": 50.0,
    }  # fmt: skip


def test_without_checkpointing_a_warning_only_asks_for_a_describe() -> None:
    d = run_step(make_run(P.RUNNING, spec=make_spec(spot=True)), warning())
    assert (d.run.phase, d.run.outcome) == (P.INTERRUPTING, INT)
    assert d.effects == (WAKE_OVERDUE, ObserveInstance())
    assert d.run.reason.endswith("; no checkpoint step configured")


def test_a_second_warning_is_refused() -> None:
    with pytest.raises(
        InvalidTransition, match="is interrupting: SpotInterruptionWarning does not apply"
    ):
        run_step(interrupting(), warning(30), now=at(5))


@pytest.mark.parametrize("seconds_left", [0, -0.5, -30])
def test_a_warning_whose_deadline_has_passed_starts_no_checkpoint(seconds_left: float) -> None:
    d = run_step(make_run(P.RUNNING, spec=spot_spec()), warning(seconds_left))
    overdue = WakeAt(at(seconds_left + INTERRUPT_OVERDUE_S))
    assert (d.run.phase, d.effects, d.run.this_attempt.checkpoint_tries) == (
        P.INTERRUPTING, (overdue, ObserveInstance()), 0,
    )  # fmt: skip
    assert "(terminate, 0s left)" in d.run.reason
    assert d.transition is not None and d.transition.detail["seconds_left"] == seconds_left


def test_a_warning_during_the_completion_checkpoint_lets_that_step_finish() -> None:
    completing = run_step(make_run(P.RUNNING, spec=spot_spec()), listed("done")).run
    d = run_step(completing, warning())
    assert (d.run.phase, d.run.outcome) == (P.INTERRUPTING, C)
    assert d.effects == (WAKE_OVERDUE, ObserveInstance())
    assert d.run.this_attempt.checkpoint_tries == 1
    assert run_step(d.run, finished(CP)).effects == (VerifyCheckpoint("my-runs", MANIFEST_KEY),)


# -- interrupting: no stop call before the deadline is long past -------------------------------


def _entered_after_completion() -> Run:
    """Warned during the completion checkpoint, with a terminate to do once it is verified."""
    completing = make_run(
        P.CHECKPOINTING, spec=spot_spec(on_complete="terminate"), outcome=C,
        pending_action=A.TERMINATE, checkpoint_tries=1,
    )  # fmt: skip
    return run_step(completing, warning()).run


INTERRUPTING_RUNS = [
    pytest.param(interrupting(), id="from-running"),
    pytest.param(interrupting(3), id="attempts-used-up"),
    pytest.param(_entered_after_completion(), id="from-completion-with-terminate-pending"),
    pytest.param(run_step(make_run(P.PENDING, spec=spot_spec()), warning()).run,
                 id="from-pending"),
]  # fmt: skip
# fmt: off
NEWS = [
    Armed(), Tick(), InstanceObserved(S.RUNNING), InstanceObserved(S.PENDING),
    InstanceObserved(S.STOPPING), InstanceObserved(S.TERMINATED), finished(CP), failed(CP),
    checked(), checked(NOT_FOUND), THROTTLED, Nudge("prefix"), Nudge("instance"),
    UserRequested(UserAction.DETACH), MonitorFailed("KeyError", "'Contents'"), listed(),
    listed("done"), listed("FAILED"), RebalanceRecommended(),
]
# fmt: on


@pytest.mark.parametrize("run", INTERRUPTING_RUNS)
@pytest.mark.parametrize("event", NEWS, ids=lambda e: type(e).__name__)
def test_nothing_while_interrupting_calls_stop_or_terminate_until_it_is_overdue(
    run: Run, event: Event
) -> None:
    for now in (NOW, at(40), at(100), at(OVERDUE_S - 1)):
        d = run_step(run, event, now=now)
        assert [e for e in d.effects if isinstance(e, ActOnInstance)] == []
        gone = run_step(with_state(run, instance_ended=S.TERMINATED), event, now=now)
        assert [e for e in gone.effects if isinstance(e, ActOnInstance)] == []


@pytest.mark.parametrize("action", [UserAction.STOP, UserAction.TERMINATE])
def test_a_stop_or_terminate_request_while_interrupting_is_refused(action: UserAction) -> None:
    with pytest.raises(InvalidTransition, match=f"already interrupting: cannot {action}"):
        run_step(interrupting(), UserRequested(action))


def test_an_interrupting_run_armed_after_a_restart_describes_its_instance_and_rearms_overdue() -> (
    None
):
    d = run_step(restarted(interrupting()), Armed(), now=at(30))
    assert (d.effects, d.transition) == ((WAKE_OVERDUE, ObserveInstance()), None)


# -- interrupting: the checkpoint inside the notice --------------------------------------------


def test_a_finished_checkpoint_step_is_verified_where_the_instance_wrote_the_manifest() -> None:
    d = run_step(interrupting(), finished(CP))
    assert (d.effects, d.transition, d.persist) == (
        (VerifyCheckpoint("my-runs", MANIFEST_KEY),), None, False,
    )  # fmt: skip
    moved = finished(CP, manifest_key="exp1/run42/checkpoints/step-9/_manifest.json")
    assert run_step(interrupting(), moved).effects == (
        VerifyCheckpoint("my-runs", "exp1/run42/checkpoints/step-9/_manifest.json"),
    )


def test_a_verified_checkpoint_is_persisted_with_the_seconds_that_were_left() -> None:
    run = run_step(interrupting(), finished(CP)).run
    d = run_step(run, checked(), now=at(40))
    assert (d.persist, d.transition, d.effects) == (True, None, ())
    assert (d.run.phase, d.run.checkpoint, d.run.this_attempt.seconds_left) == (
        P.INTERRUPTING,
        V,
        60.0,
    )
    assert d.run.version == run.version


TIMED_OUT = CommandFinished(CP, CommandResult(CommandStatus.TIMED_OUT, None))
ATTEMPT_FAILED = [
    pytest.param(failed(CP), id="command-failed"),
    pytest.param(TIMED_OUT, id="command-timed-out"),
    pytest.param(checked(NOT_FOUND), id="not-verified"),
]


@pytest.mark.parametrize("event", ATTEMPT_FAILED)
def test_a_failed_attempt_is_retried_at_once_within_the_time_left(event: Event) -> None:
    for tries in (1, 2):
        run = interrupting(tries)
        d = run_step(run, event, now=at(30))
        # The training process was signalled by the first attempt: no second SIGTERM wait.
        retry = RunInstanceCommand(checkpoint_command(run, sigterm_timeout_s=0), 70.0)
        assert (d.effects, d.transition, d.persist) == ((retry,), None, False)
        assert (d.run.this_attempt.checkpoint_tries, d.run.checkpoint) == (tries + 1, None)
        assert retry.command.option("sigterm-timeout-s") == "0"


@pytest.mark.parametrize("event", ATTEMPT_FAILED)
def test_after_the_last_attempt_the_checkpoint_is_flagged_unverified(event: Event) -> None:
    d = run_step(interrupting(3), event, now=at(30))
    assert (d.effects, d.transition, d.persist) == ((), None, True)
    assert (d.run.phase, d.run.checkpoint, d.run.this_attempt.seconds_left) == (
        P.INTERRUPTING,
        UV,
        70.0,
    )


@pytest.mark.parametrize("elapsed", [99, 100, 130])
def test_with_a_second_or_less_left_a_failed_attempt_is_not_retried(elapsed: float) -> None:
    d = run_step(interrupting(1), failed(CP), now=at(elapsed))
    assert (d.effects, d.run.checkpoint, d.persist) == ((), UV, True)
    assert d.run.this_attempt.seconds_left == 100 - elapsed


def test_one_checkpoint_attempt_means_the_first_failure_flags_it_unverified() -> None:
    d = run_step(interrupting(1, checkpoint_attempts=1), failed(CP), now=at(10))
    assert (d.effects, d.run.checkpoint) == ((), UV)


def restarted(run: Run) -> Run:
    """The run as the store returns it after a daemon restart: persisted fields only."""
    return Run(**{f.name: getattr(run, f.name) for f in dataclasses.fields(Run) if f.compare})


def test_after_a_daemon_restart_no_checkpoint_step_is_under_way_so_a_failure_changes_nothing() -> (
    None
):
    run = restarted(interrupting())
    # The deadline is persisted (the overdue check needs it); the step under way is not.
    assert (run.interrupt_deadline, run.this_attempt.checkpoint_tries) == (DEADLINE, 0)
    d = run_step(run, failed(CP))
    assert (d.effects, d.run.checkpoint, d.persist) == ((), run.checkpoint, False)


# -- interrupted -------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [S.TERMINATED, S.SHUTTING_DOWN, S.STOPPED, S.STOPPING, S.UNKNOWN])
def test_the_instance_going_ends_the_run_as_interrupted_with_what_was_saved(
    state: InstanceState,
) -> None:
    d = taken(saved(), state, now=at(70))
    assert (d.run.phase, d.run.outcome, d.run.checkpoint, d.effects) == (P.INTERRUPTED, INT, V, ())
    assert d.run.reason == f"spot instance {state} after the interruption warning"
    assert d.transition is not None
    assert d.transition.detail == {
        "instance_state": str(state), "checkpoint": "verified", "seconds_left_when_verified": 60.0,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("run", "checkpoint"),
    [(run_step(interrupting(3), failed(CP), now=at(30)).run, "unverified"),
     (interrupting(), None)],
    ids=["unverified", "never-checked"],
)  # fmt: skip
def test_an_interruption_without_a_verified_checkpoint_says_so_in_the_detail(
    run: Run, checkpoint: str | None
) -> None:
    d = taken(run, now=at(90))
    assert d.transition is not None
    assert d.transition.detail["checkpoint"] == checkpoint
    assert d.run.phase is P.INTERRUPTED


@pytest.mark.parametrize("state", [S.RUNNING, S.PENDING])
def test_an_instance_still_alive_does_not_end_the_interruption(state: InstanceState) -> None:
    run = saved()
    for now in (at(50), at(OVERDUE_S - 1)):
        d = run_step(run, InstanceObserved(state), now=now)
        assert (d.run, d.effects, d.transition, d.persist) == (run, (), None, False)


def test_an_observation_of_another_instance_is_stale_while_interrupting() -> None:
    run = saved()
    old = InstanceObserved(S.TERMINATED, source="sweep", instance_id=NEW_INSTANCE)
    assert run_step(run, old).run.phase is P.INTERRUPTING


@pytest.mark.parametrize("spot", [True, False], ids=["spot", "on-demand"])
def test_a_spot_instance_that_ends_with_no_marker_is_interrupted_not_crashed(spot: bool) -> None:
    run = make_run(P.RUNNING, spec=make_spec(spot=spot))
    gone = run_step(run, InstanceObserved(S.TERMINATED))
    assert (gone.effects, gone.transition) == ((LIST_TOP,), None)
    d = run_step(gone.run, listed("logs/train.log"))
    if spot:
        assert (d.run.phase, d.run.outcome) == (P.INTERRUPTED, INT)
        assert d.run.reason == "spot instance terminated without a request from the supervisor"
    else:
        assert (d.run.phase, d.run.outcome) == (P.CRASHED, Outcome.CRASHED)
        assert "no completion marker" in d.run.reason


@pytest.mark.parametrize(("state", "final"), [(S.TERMINATED, P.TERMINATED), (S.STOPPED, P.STOPPED)])
def test_a_spot_instance_that_ends_after_its_marker_completed(
    state: InstanceState, final: Phase
) -> None:
    gone = run_step(make_run(P.RUNNING, spec=make_spec(spot=True)), InstanceObserved(state)).run
    d = run_step(gone, listed("done"))
    assert (d.run.phase, d.run.outcome) == (final, C)


def test_a_spot_instance_that_ends_after_a_failure_marker_crashed() -> None:
    gone = run_step(make_run(P.RUNNING, spec=make_spec(spot=True)), InstanceObserved(S.TERMINATED))
    d = run_step(gone.run, listed("FAILED"))
    assert d.effects == (ReadObject("FAILED"),)
    crashed = run_step(d.run, ObjectRead("FAILED", "NaN loss"))
    assert (crashed.run.phase, crashed.run.outcome) == (P.CRASHED, Outcome.CRASHED)


# -- interrupting: one last look at the prefix once the instance is gone ---------------------

LIST_FAILED = EffectFailed("ListObjectsV2", "SlowDown", "reduce your request rate", transient=True)
LIST_DENIED = EffectFailed("ListObjectsV2", "AccessDenied", "denied", transient=False)
GONE = "spot instance terminated after the interruption warning"
RESUMING_1 = "; resuming (restart 1 of 3)"
# fmt: off
LAST_LOOKS = [
    pytest.param(listed(), INT, (AutoResume(from_scratch=False),), f"{GONE}{RESUMING_1}",
                 id="nothing"),
    pytest.param(listed("logs/train.log"), INT, (AutoResume(from_scratch=False),),
                 f"{GONE}{RESUMING_1}", id="no-marker"),
    pytest.param(listed("done"), C, (), f"completion marker done found; {GONE}",
                 id="completion-marker"),
    pytest.param(listed("training_complete.txt", "FAILED"), C, (),
                 f"completion marker training_complete.txt found; {GONE}",
                 id="completion-beside-failure-marker"),
    # the shutdown killing the job may leave a failure marker: it is not evidence here
    pytest.param(listed("FAILED"), INT, (AutoResume(from_scratch=False),), f"{GONE}{RESUMING_1}",
                 id="failure-marker-ignored"),
    pytest.param(LIST_FAILED, INT, (AutoResume(from_scratch=False),),
                 f"{GONE} (last look at the prefix failed: SlowDown){RESUMING_1}",
                 id="listing-failed"),
    pytest.param(LIST_DENIED, INT, (AutoResume(from_scratch=False),),
                 f"{GONE} (last look at the prefix failed: AccessDenied){RESUMING_1}",
                 id="listing-denied"),
]
# fmt: on


@pytest.mark.parametrize(("last_look", "outcome", "effects", "reason"), LAST_LOOKS)
def test_the_last_look_at_the_prefix_decides_interrupted_or_completed(
    last_look: PrefixListed | EffectFailed,
    outcome: Outcome,
    effects: tuple[AutoResume, ...],
    reason: str,
) -> None:
    # A completed run is not resumed: its training is over.
    d = interrupted_run(V, last_look=last_look, **RESUME)
    assert (d.run.phase, d.run.outcome, d.effects) == (P.INTERRUPTED, outcome, effects)
    assert d.run.reason == reason
    assert d.transition is not None and d.transition.detail["instance_state"] == "terminated"


def test_a_completion_marker_of_an_earlier_attempt_is_not_evidence_in_the_last_look() -> None:
    run = make_run(
        P.INTERRUPTING, spec=spot_spec(**RESUME), outcome=INT, attempt=2, started_at=at(-60),
        interrupt_deadline=DEADLINE,
    )  # fmt: skip
    d = taken(run, last_look=PrefixListed((obj("done", at=at(-3600)),)))
    assert (d.run.phase, d.run.outcome) == (P.INTERRUPTED, INT)
    fresh = taken(run, last_look=PrefixListed((obj("done", at=at(-30)),)))
    assert (fresh.run.phase, fresh.run.outcome) == (P.INTERRUPTED, C)


def test_a_gone_instance_seen_again_while_the_last_look_is_under_way_lists_nothing_more() -> None:
    gone = run_step(saved(), InstanceObserved(S.TERMINATED), now=at(100)).run
    again = run_step(gone, InstanceObserved(S.SHUTTING_DOWN), now=at(101))
    assert (again.run, again.effects, again.transition) == (gone, (), None)


@pytest.mark.parametrize("event", [listed("done"), listed("FAILED")], ids=["done", "FAILED"])
def test_a_listing_before_the_instance_is_gone_decides_nothing(event: PrefixListed) -> None:
    run = saved()
    d = run_step(run, event, now=at(50))
    assert (d.run, d.effects, d.transition, d.persist) == (run, (), None, False)


# -- interrupting: an instance AWS never took back ---------------------------------------------


def _warned(run: Run) -> Run:
    return run_step(run, warning()).run


def _completed_and_warned(checkpoint: CheckpointStatus | None, **spec: Any) -> Run:
    """Training had completed when the warning came (during the completion checkpoint, whose
    result is `checkpoint`; before a warning in grace ended the grace, also from grace)."""
    return make_run(
        P.INTERRUPTING, spec=spot_spec(**spec), outcome=C, checkpoint=checkpoint,
        interrupt_deadline=DEADLINE, process_exited=True,
    )  # fmt: skip


LATE = "instance still running 300s after the interruption deadline"
# fmt: off
OVERDUE_CASES = [
    pytest.param(saved(), P.STOPPING, INT, (STOP,),
                 f"{LATE}; training was ended for the checkpoint: stopping the idle instance "
                 "(resume it with `supervisorctl resume`)", id="checkpoint-step-ended-training"),
    pytest.param(_warned(make_run(P.PENDING, spec=spot_spec())), P.STOPPING, INT, (STOP,),
                 "training was ended for the checkpoint", id="from-pending-with-checkpointing"),
    pytest.param(_warned(make_run(P.RUNNING, spec=make_spec(spot=True))), P.RUNNING, None,
                 (LIST_TOP,), f"{LATE}; AWS did not take it back: watching the run again",
                 id="no-checkpoint-step-training-goes-on"),
    pytest.param(_completed_and_warned(V), P.STOPPING, C, (STOP,),
                 f"{LATE}; training had completed; stop requested (on_complete=stop)",
                 id="completed-on-complete-stop"),
    pytest.param(run_step(_entered_after_completion(), checked()).run, P.TERMINATING, C,
                 (TERMINATE,),
                 f"{LATE}; training had completed; terminate requested (on_complete=terminate)",
                 id="completed-terminate-verified"),
    pytest.param(_completed_and_warned(UV, on_complete="terminate"), P.STOPPING, C, (STOP,),
                 "terminate requested (on_complete=terminate); downgraded to stop",
                 id="completed-terminate-unverified"),
    pytest.param(_completed_and_warned(None, checkpoint_dir=None, on_complete="none"), P.DONE,
                 C, (),
                 f"{LATE}; training had completed; on_complete=none leaves the instance running",
                 id="completed-on-complete-none"),
]
# fmt: on


@pytest.mark.parametrize(("run", "to", "outcome", "effects", "reason"), OVERDUE_CASES)
@pytest.mark.parametrize("state", [S.RUNNING, S.PENDING])
def test_an_instance_still_there_long_after_the_deadline_is_not_left_hanging(
    run: Run,
    to: Phase,
    outcome: Outcome | None,
    effects: tuple[Any, ...],
    reason: str,
    state: InstanceState,
) -> None:
    late = reason.replace("still running", f"still {state}")
    assert run.interrupt_deadline == DEADLINE
    d = run_step(run, InstanceObserved(state), now=at(OVERDUE_S))
    assert (d.run.phase, d.run.outcome, d.effects) == (to, outcome, effects)
    assert late in d.run.reason


def test_an_overdue_run_back_to_running_watches_it_again_from_a_fresh_start() -> None:
    run = _warned(make_run(P.RUNNING, spec=make_spec(spot=True), checks=6))
    d = run_step(run, InstanceObserved(S.RUNNING), now=at(OVERDUE_S + 30))
    assert (d.run.phase, d.run.outcome, d.run.interrupt_deadline) == (P.RUNNING, None, None)
    assert (d.run.checks, d.run.next_check_at) == (0, None)
    # A later warning is a new interruption, with a deadline of its own.
    later = SpotInterruptionWarning(at(OVERDUE_S + 160))
    again = run_step(d.run, later, now=at(OVERDUE_S + 60))
    assert (again.run.phase, again.run.interrupt_deadline) == (P.INTERRUPTING, later.deadline)


@pytest.mark.parametrize(
    ("seconds", "effects"), [(OVERDUE_S - 1, ()), (OVERDUE_S, (ObserveInstance(),))]
)
def test_the_overdue_wake_up_asks_for_a_describe_and_the_observation_decides(
    seconds: float, effects: tuple[ObserveInstance, ...]
) -> None:
    run = saved()
    d = run_step(run, Tick(), now=at(seconds))
    assert (d.run, d.effects, d.transition) == (run, effects, None)


def test_a_stop_or_terminate_request_is_refused_even_when_overdue() -> None:
    for action in (UserAction.STOP, UserAction.TERMINATE):
        with pytest.raises(InvalidTransition, match="already interrupting"):
            run_step(saved(), UserRequested(action), now=at(OVERDUE_S))


# -- interrupting: a warning while resuming ----------------------------------------------------


def test_a_warning_while_resuming_starts_no_checkpoint_and_waits_for_aws() -> None:
    run = make_run(
        P.RESUMING, spec=spot_spec(**RESUME), outcome=INT, checkpoint=V, resume_stage="starting",
    )  # fmt: skip
    d = run_step(run, warning())
    assert (d.run.phase, d.run.outcome, d.effects) == (
        P.INTERRUPTING, INT, (WAKE_OVERDUE, ObserveInstance()),
    )  # fmt: skip
    # The resume's attempt (2) began with its instance and ends here, before training restarted.
    assert (d.run.this_attempt.checkpoint_tries, d.run.attempt, d.run.checkpoint) == (0, 2, None)
    assert d.run.reason.endswith("; during resuming, before training restarted (attempt 2)")
    # The next restart comes from the same (attempt 1) checkpoint.
    end = taken(d.run, now=at(100))
    assert (end.run.phase, end.effects) == (P.INTERRUPTED, (AutoResume(from_scratch=False),))
    assert end.run.reason.endswith("; resuming (restart 2 of 3)")


def test_an_overdue_interruption_that_began_during_a_resume_does_not_claim_training_runs() -> None:
    spec = make_spec(
        spot=True, pid_file=PID_FILE, resume_command=RESUME_COMMAND, **RESUME
    )  # no checkpoint_dir: resumes start from scratch
    run = make_run(P.RESUMING, spec=spec, outcome=INT, resume_stage="starting", from_scratch=True)
    warned = run_step(run, warning())
    # The resume's attempt began with its instance and ends here: it counts against the limit.
    assert (warned.run.attempt, warned.run.started_at, warned.run.checkpoint) == (2, NOW, None)
    assert "during resuming, before training restarted (attempt 2)" in warned.run.reason
    d = run_step(warned.run, InstanceObserved(S.RUNNING), now=at(OVERDUE_S))
    assert (d.run.phase, d.effects) == (P.STOPPING, (ActOnInstance(A.STOP),))
    assert "the resume had not restarted training: stopping the idle instance" in d.run.reason


def test_an_interruption_during_a_resume_counts_against_max_restarts() -> None:
    spec = spot_spec(max_restarts=1, **RESUME)
    run = make_run(P.RESUMING, spec=spec, outcome=INT, resume_stage="starting", verified_attempt=1)
    warned = run_step(run, warning()).run
    gone = run_step(warned, InstanceObserved(S.TERMINATED), now=at(10)).run
    end = run_step(gone, listed(), now=at(10))
    assert (end.run.phase, end.effects) == (P.INTERRUPTED, ())
    assert end.run.reason.endswith("; not resumed: max_restarts (1) reached")


# -- on_interruption=resume --------------------------------------------------------------------

AUTO_RESUME = [
    pytest.param(1, 3, V, None, (AutoResume(from_scratch=False),), "; resuming (restart 1 of 3)",
                 id="first-verified"),
    pytest.param(2, 3, UV, None, (AutoResume(from_scratch=True),),
                 "; resuming (restart 2 of 3)", id="unverified-from-scratch"),
    pytest.param(3, 3, None, None, (AutoResume(from_scratch=True),),
                 "; resuming (restart 3 of 3)", id="never-checked-last-restart"),
    # the newest verified checkpoint is restored, whichever attempt (or early step) made it
    pytest.param(2, 3, None, 1, (AutoResume(from_scratch=False),),
                 "; resuming (restart 2 of 3)", id="never-checked-earlier-attempt-verified"),
    pytest.param(3, 3, UV, 2, (AutoResume(from_scratch=False),),
                 "; resuming (restart 3 of 3)", id="unverified-earlier-attempt-verified"),
    pytest.param(2, 3, None, 2, (AutoResume(from_scratch=False),),
                 "; resuming (restart 2 of 3)", id="early-checkpoint-verified"),
    pytest.param(4, 3, V, None, (), "; not resumed: max_restarts (3) reached",
                 id="limit-reached"),
    pytest.param(1, 0, V, None, (), "; not resumed: max_restarts (0) reached", id="no-restarts"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("attempt", "max_restarts", "checkpoint", "verified", "effects", "says"), AUTO_RESUME
)
def test_the_resume_policy_asks_for_a_resume_until_max_restarts(
    attempt: int,
    max_restarts: int,
    checkpoint: CheckpointStatus | None,
    verified: int | None,
    effects: tuple[AutoResume, ...],
    says: str,
) -> None:
    d = interrupted_run(checkpoint, attempt, verified=verified, max_restarts=max_restarts, **RESUME)
    assert (d.run.phase, d.run.outcome, d.effects) == (P.INTERRUPTED, INT, effects)
    assert d.run.reason == f"spot instance terminated after the interruption warning{says}"


def test_without_the_resume_policy_an_interrupted_run_waits_for_a_person() -> None:
    d = interrupted_run(V)
    assert (d.run.phase, d.effects) == (P.INTERRUPTED, ())
    assert "resum" not in d.run.reason


def test_the_resume_policy_also_covers_an_instance_that_ended_without_a_warning() -> None:
    gone = make_run(P.RUNNING, spec=spot_spec(**RESUME), instance_ended=S.TERMINATED)
    d = run_step(gone, listed())
    assert (d.run.phase, d.effects) == (P.INTERRUPTED, (AutoResume(from_scratch=True),))


@pytest.mark.parametrize(("checkpoint", "from_scratch"), [(V, False), (UV, True), (None, True)])
def test_the_resume_the_policy_asks_for_is_accepted_by_the_interrupted_run(
    checkpoint: CheckpointStatus | None, from_scratch: bool
) -> None:
    d = interrupted_run(checkpoint, **RESUME)
    (effect,) = d.effects
    assert isinstance(effect, AutoResume) and effect.from_scratch is from_scratch
    resumed = run_step(d.run, ResumeRequested(from_scratch=effect.from_scratch))
    assert (resumed.run.phase, resumed.effects) == (P.RESUMING, (ObserveInstance(),))
    assert (resumed.run.resume.from_scratch, resumed.run.resume.stage) == (from_scratch, "observe")
    assert resumed.transition is not None
    assert resumed.transition.detail == {"from_scratch": from_scratch, "attempt": 2}


@pytest.mark.parametrize(("checkpoint", "verified"), [(UV, 1), (None, 1)])
def test_an_interrupted_run_whose_earlier_checkpoint_was_verified_accepts_a_resume_from_it(
    checkpoint: CheckpointStatus | None, verified: int
) -> None:
    run = interrupted_run(checkpoint, 2, verified=verified, **RESUME).run
    d = run_step(run, ResumeRequested())
    assert (d.run.phase, d.run.resume.from_scratch) == (P.RESUMING, False)
    assert d.run.reason == "resume requested from its verified checkpoint (attempt 3)"


@pytest.mark.parametrize("checkpoint", [UV, None])
def test_an_interrupted_run_without_a_verified_checkpoint_refuses_a_resume_from_it(
    checkpoint: CheckpointStatus | None,
) -> None:
    run = interrupted_run(checkpoint, **RESUME).run
    with pytest.raises(InvalidTransition, match="no verified checkpoint to resume from"):
        run_step(run, ResumeRequested())


def resumed(run: Run, *, now: datetime) -> Run:
    """Carry out the AutoResume of an interrupted run: a new instance, the checkpoint restored,
    training started again."""
    restore = RunInstanceCommand(restore_command(run), RESTORE_TIMEOUT_S)
    start = RunInstanceCommand(start_command(run), START_TIMEOUT_S)
    script: list[tuple[Event, tuple[Any, ...]]] = [
        (ResumeRequested(from_scratch=False), (ObserveInstance(),)),
        (InstanceObserved(S.TERMINATED), (LaunchInstance(),)),
        (InstanceLaunched(NEW_INSTANCE), (ObserveInstance(),)),
        (InstanceObserved(S.RUNNING, instance_id=NEW_INSTANCE), (restore,)),
        (finished(RS, files=2), (start,)),
        (finished(ST, pid=777), (LIST_TOP,)),
    ]
    for event, effects in script:
        d = run_step(run, event, now=now)
        assert d.effects == effects, event
        run = d.run
    return run


def test_a_resumed_spot_run_runs_on_a_new_instance_and_counts_against_max_restarts() -> None:
    d = taken(saved(max_restarts=1, **RESUME), now=at(100))
    assert d.effects == (AutoResume(from_scratch=False),)
    later = at(130)
    run = resumed(d.run, now=later)
    assert (run.phase, run.attempt, run.instance_id, run.outcome, run.started_at) == (
        P.RUNNING, 2, NEW_INSTANCE, None, later,
    )  # fmt: skip
    # The second interruption finds the one allowed restart used up.
    again = run_step(run, warning(), now=later)
    assert (again.run.phase, again.run.interrupt_deadline) == (P.INTERRUPTING, DEADLINE)
    gone = run_step(again.run, InstanceObserved(S.TERMINATED, instance_id=NEW_INSTANCE), now=later)
    last = run_step(gone.run, listed(), now=later)
    assert (last.run.phase, last.effects) == (P.INTERRUPTED, ())
    assert last.run.reason.endswith("not resumed: max_restarts (1) reached")


def test_a_second_interruption_before_its_own_checkpoint_resumes_from_the_first_ones() -> None:
    first = taken(saved(**RESUME), now=at(100))
    run = resumed(first.run, now=at(130))
    assert (run.attempt, run.checkpoint, run.verified_attempt) == (2, None, 1)
    # Attempt 2's instance goes without a warning, so without a checkpoint of its own.
    gone = run_step(run, InstanceObserved(S.TERMINATED, instance_id=NEW_INSTANCE), now=at(900))
    d = run_step(gone.run, listed(), now=at(900))
    assert (d.run.phase, d.effects) == (P.INTERRUPTED, (AutoResume(from_scratch=False),))
    assert d.run.reason.endswith("; resuming (restart 2 of 3)")
    # ... and the resume restores attempt 1's checkpoint (`resumed` checks the restore step).
    again = resumed(d.run, now=at(930))
    assert (again.phase, again.attempt, again.verified_attempt) == (P.RUNNING, 3, 1)


# -- found by the randomized walk, then fixed -------------------------------------------------


def _taken_after(run: Run) -> Decision:
    return taken(run_step(run, warning()).run)


@pytest.mark.parametrize(
    ("run", "outcome"),
    [
        (make_run(P.CHECKPOINTING, spec=spot_spec(**RESUME), outcome=C, pending_action=A.STOP,
                  checkpoint_tries=1), C),
        (make_run(P.CHECKPOINTING, spec=spot_spec(**RESUME), outcome=X, pending_action=A.STOP,
                  checkpoint_tries=1), X),
    ],
    ids=["completed-in-its-checkpoint-step", "stop-requested-by-user"],
)  # fmt: skip
def test_a_run_that_had_already_ended_its_training_is_not_resumed_after_an_interruption(
    run: Run, outcome: Outcome
) -> None:
    d = _taken_after(run)
    assert d.run.outcome is outcome
    assert [e for e in d.effects if isinstance(e, AutoResume)] == []


@pytest.mark.parametrize("event", [failed(CP), checked(NOT_FOUND)], ids=["command", "verify"])
def test_a_failed_result_while_interrupting_without_checkpointing_changes_nothing(
    event: Event,
) -> None:
    run = run_step(make_run(P.RUNNING, spec=make_spec(spot=True)), warning()).run
    d = run_step(run, event)
    assert (d.effects, d.run.checkpoint) == ((), None)


def test_a_resumed_attempt_does_not_carry_the_previous_interruptions_seconds_left() -> None:
    run = resumed(taken(saved(**RESUME), now=at(100)).run, now=at(130))
    gone = run_step(run, InstanceObserved(S.TERMINATED, instance_id=NEW_INSTANCE), now=at(900))
    d = run_step(gone.run, listed(), now=at(900))
    assert d.run.phase is P.INTERRUPTED
    assert d.transition is not None
    assert d.transition.detail["checkpoint"] is None
    assert d.transition.detail["seconds_left_when_verified"] is None


def test_no_resume_is_asked_for_a_terminated_spot_instance_without_a_launch_template() -> None:
    d = interrupted_run(V, on_interruption="resume")
    assert d.effects == ()
    assert "launch_template" in d.run.reason


# -- a warning in grace: the training is over, so the grace ends at once ----------------------

# fmt: off
GRACE_WARNED = [
    pytest.param("terminate", V, P.TERMINATING, (TERMINATE,), "terminate requested", None,
                 id="terminate-verified"),
    pytest.param("terminate", UV, P.STOPPING, (STOP,), "downgraded to stop", "terminate->stop",
                 id="terminate-unverified-becomes-stop"),
    pytest.param("stop", V, P.STOPPING, (STOP,), "stop requested", None, id="stop"),
    pytest.param("none", V, P.DONE, (), "on_complete=none leaves the instance running", None,
                 id="none"),
]
# fmt: on


@pytest.mark.parametrize(
    ("on_complete", "checkpoint", "to", "effects", "says", "downgraded"), GRACE_WARNED
)
@pytest.mark.parametrize("seconds_left", [100, 3, -20], ids=["in-time", "late", "past-deadline"])
def test_a_warning_in_grace_carries_out_the_runs_action_at_the_moment_it_arrives(
    on_complete: str,
    checkpoint: CheckpointStatus,
    to: Phase,
    effects: tuple[ActOnInstance, ...],
    says: str,
    downgraded: str | None,
    seconds_left: float,
) -> None:
    grace = make_run(
        P.GRACE, spec=spot_spec(on_complete=on_complete, **RESUME), checkpoint=checkpoint,
        process_exited=True,
    )  # fmt: skip
    assert grace.grace_until is not None and grace.grace_until > at(60)
    # The warning is taken a minute into the grace, long before its end (or the deadline's).
    d = run_step(grace, warning(seconds_left), now=at(60))
    assert (d.run.phase, d.run.outcome, d.effects) == (to, C, effects)
    assert d.transition is not None and d.transition.at == at(60)
    assert d.run.reason.startswith("spot interruption warning (terminate, ")
    assert "training had completed: grace ended" in d.run.reason and says in d.run.reason
    assert d.transition.detail["deadline"] == at(seconds_left).isoformat()
    assert d.transition.detail.get("downgraded") == downgraded
    assert d.run.interrupt_deadline is None  # no overdue wait: nothing is left to AWS


def test_a_stop_started_by_a_warning_in_grace_ends_as_the_grace_would_have() -> None:
    grace = make_run(P.GRACE, spec=spot_spec(**RESUME), checkpoint=V, process_exited=True)
    stopping = run_step(grace, warning(), now=at(5)).run
    stopped = run_step(stopping, ActionSucceeded(A.STOP, S.STOPPED), now=at(6))
    assert (stopped.run.phase, stopped.run.outcome, stopped.effects) == (P.STOPPED, C, ())
    # AWS taking the instance instead ends it the same way, and nothing resumes a completed run.
    taken_back = run_step(stopping, InstanceObserved(S.TERMINATED), now=at(90))
    assert (taken_back.run.phase, taken_back.run.outcome) == (P.TERMINATED, C)
    assert [e for e in taken_back.effects if isinstance(e, AutoResume)] == []


# -- a spot instance gone while pending: the outcome does not depend on the order -------------


def _fed(run: Run, *events: Event, now: datetime = NOW) -> tuple[Run, list[Any]]:
    """Feed `events` in order, as the monitor does; an event the phase refuses changes nothing
    (the queue consumer audits it). Returns the run and every effect asked for."""
    effects: list[Any] = []
    for event in events:
        try:
            d = run_step(run, event, now=now)
        except InvalidTransition:
            continue
        run = d.run
        effects += d.effects
    return run, effects


def _gone_in_order(order: str, last_look: PrefixListed | EffectFailed) -> tuple[Event, ...]:
    """The warning, the sweep that finds the instance gone and the last look it asks for,
    in one of the orders they can arrive in."""
    gone = InstanceObserved(S.TERMINATED)
    orders: dict[str, tuple[Event, ...]] = {
        "warning-then-sweep": (warning(), gone, last_look),
        "sweep-then-warning": (gone, last_look, warning()),
        "warning-during-the-last-look": (gone, warning(), last_look),
    }
    return orders[order]


GONE_ORDERS = ["warning-then-sweep", "sweep-then-warning", "warning-during-the-last-look"]
PENDING_SPECS = {
    "checkpointed": {},
    "no-checkpoint-dir": {"checkpoint_dir": None},
    "resume": RESUME,
}
LOOKS: dict[str, tuple[PrefixListed | EffectFailed, Outcome]] = {
    "nothing": (NOTHING, INT),
    "log-only": (listed("logs/train.log"), INT),
    "failure-marker": (listed("FAILED"), INT),
    "completion-marker": (listed("done"), C),
    "listing-failed": (LIST_FAILED, INT),
}


@pytest.mark.parametrize("look", list(LOOKS))
@pytest.mark.parametrize("spec", list(PENDING_SPECS))
def test_a_pending_spot_instance_taken_back_ends_the_same_whichever_event_comes_first(
    spec: str, look: str
) -> None:
    last_look, outcome = LOOKS[look]
    pending = make_run(P.PENDING, spec=spot_spec(**PENDING_SPECS[spec]))
    ends = {order: _fed(pending, *_gone_in_order(order, last_look)) for order in GONE_ORDERS}
    for order, (run, effects) in ends.items():
        assert (run.phase, run.outcome) == (P.INTERRUPTED, outcome), (order, run.reason)
        assert [e for e in effects if isinstance(e, ActOnInstance)] == [], order
        resumes = [e for e in effects if isinstance(e, AutoResume)]
        expected = [AutoResume(from_scratch=True)] if spec == "resume" and outcome is INT else []
        assert resumes == expected, order
    assert len({(run.phase, run.outcome, run.attempt) for run, _ in ends.values()}) == 1


@pytest.mark.parametrize("checkpointing", [True, False], ids=["checkpointing", "no-checkpoint"])
@pytest.mark.parametrize("look", list(LOOKS))
def test_a_warning_after_the_instance_ended_and_its_last_look_failed_still_ends_the_run(
    checkpointing: bool, look: str
) -> None:
    """Events arrive in any order: the instance's end, its last look failing (a throttled
    listing), then the warning. Interrupting must begin with a new last look, not wait for
    a checkpoint or an observation that would change nothing (the soak found this)."""
    spec = spot_spec() if checkpointing else make_spec(spot=True)
    running = make_run(P.RUNNING, spec=spec)
    gone = run_step(running, InstanceObserved(S.TERMINATED))
    assert gone.effects == (LIST_TOP,)
    still = run_step(gone.run, LIST_FAILED)
    assert still.run.phase is P.RUNNING
    warned = run_step(still.run, warning(100))
    assert warned.run.phase is P.INTERRUPTING
    assert LIST_TOP in warned.effects
    assert not [e for e in warned.effects if isinstance(e, RunInstanceCommand)]
    last_look, outcome = LOOKS[look]
    ended = run_step(warned.run, last_look)
    assert (ended.run.phase, ended.run.outcome) == (P.INTERRUPTED, outcome), ended.run.reason
