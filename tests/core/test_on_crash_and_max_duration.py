"""Issue 13: a crashed run's instance stops billing (`on_crash`), and a run that has been
running for its `max_duration` is ended like a person's stop, with outcome `timed_out`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from supervisor.core.checkpoint import CommandKind
from supervisor.core.effects import (
    ActOnInstance,
    AttachCrashReport,
    ListPrefix,
    RunInstanceCommand,
    VerifyCheckpoint,
    WakeAt,
)
from supervisor.core.errors import InvalidInput
from supervisor.core.events import (
    Action,
    ActionSucceeded,
    Armed,
    ObjectRead,
    ResumeRequested,
    Tick,
)
from supervisor.core.machine import (
    CHECKPOINT_UPLOAD_BUDGET_S,
    checkpoint_command,
    max_duration_deadline,
)
from supervisor.core.run import CheckpointStatus, Outcome, Phase, Run
from supervisor.core.spec import parse_duration
from supervisor.core.values import InstanceState
from tests.core.builders import (
    CHECKPOINT_FIELDS,
    NOW,
    checked,
    failed,
    finished,
    listed,
    make_run,
    make_spec,
    run_step,
)

P = Phase
STOP, TERMINATE = ActOnInstance(Action.STOP), ActOnInstance(Action.TERMINATE)
REPORT = AttachCrashReport("crash/error.log")
FAILED_MARKER = ObjectRead("FAILED", "CUDA out of memory\n")
CP = CommandKind.CHECKPOINT


def checkpoint_effect(run: Run) -> RunInstanceCommand:
    return RunInstanceCommand(
        checkpoint_command(run), run.spec.sigterm_timeout_s + CHECKPOINT_UPLOAD_BUDGET_S
    )


# -- on_crash -----------------------------------------------------------------------------------

# fmt: off
ON_CRASH = [
    # (spec, phase the failure marker leads to, effects, pending action, reason's tail)
    pytest.param({}, P.STOPPING, (REPORT, STOP), None,
                 "on_crash=stop: stop requested", id="default-stops"),
    pytest.param({"on_crash": "stop"}, P.STOPPING, (REPORT, STOP), None,
                 "on_crash=stop: stop requested", id="stop"),
    pytest.param({"on_crash": "terminate"}, P.TERMINATING, (REPORT, TERMINATE), None,
                 "on_crash=terminate: terminate requested", id="terminate"),
    pytest.param({"on_crash": "keep"}, P.CRASHED, (REPORT,), None,
                 "on_crash=keep leaves the instance running for a person", id="keep"),
    pytest.param({**CHECKPOINT_FIELDS}, P.CHECKPOINTING, "checkpoint", Action.STOP,
                 "on_crash=stop: saving the final checkpoint, then stop", id="checkpoint-first"),
    pytest.param({**CHECKPOINT_FIELDS, "on_crash": "terminate"}, P.CHECKPOINTING, "checkpoint",
                 Action.TERMINATE, "on_crash=terminate: saving the final checkpoint, then "
                 "terminate", id="checkpoint-first-then-terminate"),
    pytest.param({**CHECKPOINT_FIELDS, "on_crash": "keep"}, P.CRASHED, (REPORT,), None,
                 "on_crash=keep leaves the instance running for a person",
                 id="keep-with-checkpointing"),
]
# fmt: on


@pytest.mark.parametrize(("spec", "to", "effects", "pending", "why"), ON_CRASH)
@pytest.mark.parametrize("phase", [P.RUNNING, P.STALLED])
def test_a_failure_marker_attaches_the_crash_report_then_acts_as_on_crash_says(
    phase: Phase, spec: dict[str, Any], to: Phase, effects: Any, pending: Action | None, why: str
) -> None:
    run = make_run(phase, spec=make_spec(**spec))
    d = run_step(run, FAILED_MARKER)
    if effects == "checkpoint":
        effects = (REPORT, checkpoint_effect(run))
    assert (d.run.phase, d.run.outcome, d.effects) == (to, Outcome.CRASHED, effects)
    assert d.run.reason == f"failure marker FAILED: CUDA out of memory; {why}"
    assert d.run.pending_action is pending
    assert d.transition is not None
    assert d.transition.detail["failure_marker_body"] == "CUDA out of memory"


def test_a_crashed_runs_stop_ends_it_stopped_with_outcome_crashed() -> None:
    stopping = run_step(make_run(P.RUNNING), FAILED_MARKER).run
    d = run_step(stopping, ActionSucceeded(Action.STOP, InstanceState.STOPPED))
    assert (d.run.phase, d.run.outcome) == (P.STOPPED, Outcome.CRASHED)


def test_a_failure_marker_after_the_instance_went_is_crashed_with_nothing_to_stop() -> None:
    run = make_run(P.RUNNING, instance_ended=InstanceState.TERMINATED)
    d = run_step(run, FAILED_MARKER)
    assert (d.run.phase, d.run.outcome, d.effects) == (P.CRASHED, Outcome.CRASHED, (REPORT,))


def crashed_checkpointing(on_crash: str, **spec: Any) -> Run:
    run = make_run(P.RUNNING, spec=make_spec(**CHECKPOINT_FIELDS, on_crash=on_crash, **spec))
    return run_step(run, FAILED_MARKER).run


@pytest.mark.parametrize(("on_crash", "to", "effect"), [
    ("stop", P.STOPPING, STOP), ("terminate", P.TERMINATING, TERMINATE),
])  # fmt: skip
def test_a_crashed_runs_verified_checkpoint_lets_on_crash_act(
    on_crash: str, to: Phase, effect: ActOnInstance
) -> None:
    run = crashed_checkpointing(on_crash)
    d = run_step(run, finished(CP))
    assert len(d.effects) == 1 and isinstance(d.effects[0], VerifyCheckpoint)
    d = run_step(d.run, checked())
    assert (d.run.phase, d.run.outcome, d.effects) == (to, Outcome.CRASHED, (effect,))
    assert d.run.checkpoint is CheckpointStatus.VERIFIED


def test_a_crashed_run_is_never_terminated_without_a_verified_checkpoint() -> None:
    run = crashed_checkpointing("terminate", checkpoint_attempts=1)
    d = run_step(run, failed(CP))
    assert (d.run.phase, d.run.outcome, d.effects) == (P.STOPPING, Outcome.CRASHED, (STOP,))
    assert "downgraded to stop: no verified checkpoint" in d.run.reason
    assert d.transition is not None and d.transition.detail["downgraded"] == "terminate->stop"


def test_a_crashed_run_whose_checkpoint_is_not_verified_is_stopped_not_terminated() -> None:
    run = crashed_checkpointing("terminate", checkpoint_attempts=1)
    d = run_step(run_step(run, finished(CP)).run, checked("sha256 mismatch"))
    assert (d.run.phase, d.effects) == (P.STOPPING, (STOP,))
    assert d.run.checkpoint is CheckpointStatus.UNVERIFIED


# -- parsing a duration -------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "seconds"), [
    ("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("12h", 43200.0), ("1.5d", 129600.0),
    (" 2h ", 7200.0), (7200, 7200.0), (0.5, 0.5), ("366d", 366 * 86400.0),
])  # fmt: skip
def test_a_duration_is_seconds_or_a_number_with_a_unit(given: object, seconds: float) -> None:
    assert parse_duration(given, what="max_duration") == seconds
    assert make_spec(max_duration=given).max_duration == seconds


@pytest.mark.parametrize(
    "given", ["12x", "", "h", "-5m", "0", "0s", "1e3", "367d", "2 hours", True, float("nan"), [1]]
)
def test_a_bad_duration_is_refused_naming_the_value(given: object) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_duration(given, what="max_duration")
    assert str(info.value).startswith(f"max_duration {given!r}: give ")
    with pytest.raises(InvalidInput, match="max_duration"):
        make_spec(max_duration=given)


def test_no_max_duration_means_no_deadline() -> None:
    run = make_run(P.RUNNING, started_at=NOW)
    assert make_spec().max_duration is None
    assert max_duration_deadline(run) is None


# -- max_duration -------------------------------------------------------------------------------

HOUR = timedelta(hours=1)


def timed(phase: Phase = P.RUNNING, max_duration: str = "2h", **changes: Any) -> Run:
    """A run that started training an hour before NOW, limited to `max_duration`."""
    spec = make_spec(max_duration=max_duration, **changes.pop("spec", {}))
    return make_run(phase, spec=spec, **{"started_at": NOW - HOUR, **changes})


def test_the_deadline_counts_from_running_over_the_attempts() -> None:
    assert max_duration_deadline(timed()) == NOW + HOUR
    earlier = timed(running_s_before=1800.0, attempt=2)
    assert max_duration_deadline(earlier) == NOW + HOUR / 2


def test_a_check_scheduled_past_the_deadline_wakes_at_the_deadline() -> None:
    run = timed(max_duration="3610s")
    d = run_step(run, listed())
    assert d.effects == (WakeAt(NOW + timedelta(seconds=10)),)
    assert d.run.next_check_at is not None and d.run.next_check_at > NOW + timedelta(seconds=10)
    # far from it, the check's own time stands
    far = run_step(timed(), listed())
    assert far.effects == (WakeAt(far.run.next_check_at),)  # type: ignore[arg-type]


def test_armed_after_a_restart_wakes_by_the_deadline() -> None:
    d = run_step(timed(max_duration="3601s"), Armed())
    assert d.effects == (WakeAt(NOW + timedelta(seconds=1)),)


def test_a_tick_before_the_deadline_only_rearms_the_timer_for_the_sooner_of_the_two() -> None:
    run = timed(max_duration="3620s", next_check_at=NOW + timedelta(seconds=60))
    d = run_step(run, Tick())
    assert (d.effects, d.transition) == ((WakeAt(NOW + timedelta(seconds=20)),), None)
    sooner = timed(next_check_at=NOW + timedelta(seconds=60))
    assert run_step(sooner, Tick()).effects == (WakeAt(NOW + timedelta(seconds=60)),)


@pytest.mark.parametrize("phase", [P.RUNNING, P.STALLED])
def test_at_the_deadline_the_run_is_stopped_with_outcome_timed_out(phase: Phase) -> None:
    run = timed(phase, max_duration="1h", next_check_at=NOW + timedelta(seconds=60))
    d = run_step(run, Tick())
    assert (d.run.phase, d.run.outcome, d.effects) == (P.STOPPING, Outcome.TIMED_OUT, (STOP,))
    assert d.run.reason == (
        "max_duration 3600s reached (running 3600s over 1 attempt(s)): stop requested"
    )
    assert d.transition is not None
    assert d.transition.detail == {"max_duration_s": 3600.0, "running_s": 3600.0}
    done = run_step(d.run, ActionSucceeded(Action.STOP, InstanceState.STOPPED))
    assert (done.run.phase, done.run.outcome) == (P.STOPPED, Outcome.TIMED_OUT)


def test_a_timed_out_run_with_checkpointing_saves_its_checkpoint_first() -> None:
    run = timed(max_duration="1h", spec=CHECKPOINT_FIELDS)
    d = run_step(run, Tick())
    assert (d.run.phase, d.run.outcome) == (P.CHECKPOINTING, Outcome.TIMED_OUT)
    assert d.effects == (checkpoint_effect(run),)
    assert d.run.pending_action is Action.STOP
    d = run_step(run_step(d.run, finished(CP)).run, checked())
    assert (d.run.phase, d.run.outcome, d.effects) == (P.STOPPING, Outcome.TIMED_OUT, (STOP,))


def test_earlier_attempts_count_against_the_max_duration() -> None:
    run = timed(max_duration="90m", running_s_before=1800.0, attempt=2)
    d = run_step(run, Tick())
    assert (d.run.phase, d.run.outcome) == (P.STOPPING, Outcome.TIMED_OUT)
    assert "running 5400s over 2 attempt(s)" in d.run.reason


def test_a_resume_adds_the_ended_attempts_running_time() -> None:
    spec = make_spec(max_duration="10h", **CHECKPOINT_FIELDS)
    stopped = make_run(
        P.STOPPED, spec=spec, started_at=NOW - 3 * HOUR, phase_since=NOW - HOUR,
        running_s_before=600.0, outcome=Outcome.COMPLETED,
    )  # fmt: skip
    d = run_step(stopped, ResumeRequested(from_scratch=True))
    assert d.run.phase is P.RESUMING
    assert d.run.running_s_before == 600.0 + 2 * 3600.0


def test_a_run_without_a_max_duration_checks_on_its_own_schedule() -> None:
    run = make_run(P.RUNNING, started_at=NOW - 100 * HOUR)
    d = run_step(run, Tick())
    assert (d.run.phase, d.effects) == (P.RUNNING, (ListPrefix(d.effects[0].request),))  # type: ignore[union-attr]
