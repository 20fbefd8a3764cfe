"""Rebalance recommendations in step(): with on_rebalance=checkpoint, a running (or stalled) run
uploads its newest checkpoint early, in the background and to its own `early/` location, while
training goes on; once verified it is what a resume restores, but it is never the final
checkpoint the terminate rule asks for."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from supervisor.core.checkpoint import CommandKind, CommandResult, CommandStatus
from supervisor.core.effects import (
    AutoResume,
    RunInstanceCommand,
    VerifyCheckpoint,
    WakeAt,
)
from supervisor.core.events import (
    Action,
    CommandFinished,
    Event,
    InstanceObserved,
    PrefixListed,
    RebalanceRecommended,
    ResumeRequested,
    UserAction,
    UserRequested,
)
from supervisor.core.machine import (
    CHECKPOINT_UPLOAD_BUDGET_S,
    RESTORE_TIMEOUT_S,
    checkpoint_command,
    restore_command,
)
from supervisor.core.run import CheckpointStatus, Outcome, Phase, Run
from supervisor.core.spec import RunSpec
from supervisor.core.values import InstanceState
from tests.core.builders import (
    LAUNCH_TEMPLATE,
    checked,
    failed,
    finished,
    listed,
    make_run,
    run_step,
    spot_spec,
    warning,
    with_state,
)

P, S = Phase, InstanceState
V, UV = CheckpointStatus.VERIFIED, CheckpointStatus.UNVERIFIED
CP, RS, ST = CommandKind.CHECKPOINT, CommandKind.RESTORE, CommandKind.START
REBALANCE = RebalanceRecommended()
EARLY_URL = "s3://my-runs/exp1/run42/checkpoints/early/"
MANIFEST_KEY = "exp1/run42/checkpoints/early/_manifest.json"
NOT_FOUND = "exp1/run42/checkpoints/model.pt: missing in S3"
TIMED_OUT = CommandFinished(CP, CommandResult(CommandStatus.TIMED_OUT, None))
RESUME: dict[str, Any] = {"on_interruption": "resume", "launch_template": LAUNCH_TEMPLATE}


def rebalancing(**spec: Any) -> RunSpec:
    """A checkpointed spot spec that takes an early checkpoint on a rebalance recommendation."""
    return spot_spec(on_rebalance="checkpoint", **spec)


def early_step(run: Run) -> RunInstanceCommand:
    command = checkpoint_command(run, early=True)
    return RunInstanceCommand(command, CHECKPOINT_UPLOAD_BUDGET_S, background=True)


def uploading(**changes: Any) -> Run:
    """A running run whose early checkpoint is under way."""
    run = make_run(P.RUNNING, spec=rebalancing(), **changes)
    return run_step(run, REBALANCE).run


# -- the recommendation ------------------------------------------------------------------------


@pytest.mark.parametrize("phase", [P.RUNNING, P.STALLED])
def test_a_recommendation_while_training_uploads_the_newest_checkpoint_early(
    phase: Phase,
) -> None:
    run = make_run(phase, spec=rebalancing())
    d = run_step(run, REBALANCE)
    assert (d.effects, d.transition, d.persist) == ((early_step(run),), None, False)
    assert (d.run.phase, d.run.this_attempt.early_checkpoint, d.run.checkpoint) == (
        phase,
        True,
        None,
    )


def test_the_early_step_leaves_training_running_and_may_take_the_upload_budget() -> None:
    run = make_run(P.RUNNING, spec=rebalancing())
    (effect,) = run_step(run, REBALANCE).effects
    assert isinstance(effect, RunInstanceCommand)
    assert (effect.timeout_s, effect.background) == (CHECKPOINT_UPLOAD_BUDGET_S, True)
    assert effect.command.option("mode") == "early"
    final = checkpoint_command(run)
    assert final.option("mode") is None
    # The same step but for the mode and the location: early/ never overwrites the final one.
    assert effect.command.option("s3-url") == EARLY_URL
    assert final.option("s3-url") == "s3://my-runs/exp1/run42/checkpoints/"
    different = {("mode", "early"), ("s3-url", EARLY_URL)}
    assert [o for o in effect.command.options if o not in different] == [
        o for o in final.options if o[0] != "s3-url"
    ]
    argv = effect.command.argv()
    assert argv[argv.index("--mode") + 1] == "early"


# fmt: off
IGNORED = [
    pytest.param(make_run(P.RUNNING, spec=spot_spec()), id="on-rebalance-ignore"),
    pytest.param(uploading(), id="already-under-way"),
    *(pytest.param(make_run(p, spec=rebalancing()), id=str(p)) for p in (
        P.PENDING, P.CHECKPOINTING, P.GRACE, P.STOPPING, P.TERMINATING, P.RESUMING,
        P.INTERRUPTING)),
]
# fmt: on


@pytest.mark.parametrize("run", IGNORED)
def test_a_recommendation_is_taken_and_ignored_by_policy_or_past_training(run: Run) -> None:
    d = run_step(run, REBALANCE)
    assert (d.run, d.effects, d.transition, d.persist) == (run, (), None, False)
    assert d.run.this_attempt.early_checkpoint is run.this_attempt.early_checkpoint


# -- the result --------------------------------------------------------------------------------


def test_a_finished_early_step_is_verified_where_the_instance_wrote_the_manifest() -> None:
    d = run_step(uploading(), finished(CP, exited=False))
    assert (d.effects, d.transition, d.persist) == (
        (VerifyCheckpoint("my-runs", MANIFEST_KEY, early=True),), None, False,
    )  # fmt: skip
    key = "exp1/run42/checkpoints/early/s9/_manifest.json"
    moved = finished(CP, exited=False, manifest_key=key)
    assert run_step(uploading(), moved).effects == (VerifyCheckpoint("my-runs", key, early=True),)


@pytest.mark.parametrize("attempt", [1, 3])
def test_a_verified_early_checkpoint_is_what_a_resume_restores_not_the_final_one(
    attempt: int,
) -> None:
    run = run_step(uploading(attempt=attempt), finished(CP, exited=False)).run
    d = run_step(run, checked())
    assert (d.transition, d.effects, d.persist) == (None, (), True)
    assert (d.run.phase, d.run.checkpoint, d.run.verified_attempt) == (P.RUNNING, None, attempt)
    assert d.run.verified_location == EARLY_URL
    assert (d.run.this_attempt.early_checkpoint, d.run.version) == (False, run.version)


FAILURES = [
    pytest.param([failed(CP)], id="command-failed"),
    pytest.param([TIMED_OUT], id="command-timed-out"),
    pytest.param([finished(CP, exited=False), checked(NOT_FOUND)], id="not-verified"),
]


@pytest.mark.parametrize("events", FAILURES)
def test_a_failed_early_checkpoint_changes_nothing_but_lets_a_later_one_start(
    events: list[Event],
) -> None:
    run = uploading()
    for event in events:
        d = run_step(run, event)
        run = d.run
    assert (d.transition, d.effects, d.persist) == (None, (), False)
    assert (run.phase, run.checkpoint, run.verified_attempt, run.this_attempt.early_checkpoint) == (
        P.RUNNING, None, None, False,
    )  # fmt: skip
    assert run_step(run, REBALANCE).effects == (early_step(run),)


@pytest.mark.parametrize(
    "event",
    [finished(CP), failed(CP), checked(), checked(NOT_FOUND), finished(RS), finished(ST)],
    ids=["finished", "failed", "verified", "not-verified", "restore", "start"],
)
def test_a_result_with_no_early_checkpoint_under_way_is_ignored(event: Event) -> None:
    # After a daemon restart, say: the step under way is not persisted.
    run = make_run(P.RUNNING, spec=rebalancing())
    d = run_step(run, event)
    assert (d.run, d.effects, d.transition, d.persist) == (run, (), None, False)


def test_an_early_checkpoint_under_way_is_forgotten_by_a_restart_but_a_verified_one_is_not() -> (
    None
):
    def restarted(run: Run) -> Run:
        return Run(**{f.name: getattr(run, f.name) for f in dataclasses.fields(Run) if f.compare})

    assert restarted(uploading()).this_attempt.early_checkpoint is False
    run = run_step(uploading(), finished(CP, exited=False)).run
    verified = run_step(run, checked()).run
    assert restarted(verified).verified_attempt == 1


# -- what the early checkpoint is for ----------------------------------------------------------


def early_verified(**spec: Any) -> Run:
    """A running run (attempt 1) whose early checkpoint was verified; no final one yet."""
    run = make_run(P.RUNNING, spec=rebalancing(**spec))
    for event in (REBALANCE, finished(CP, exited=False), checked()):
        run = run_step(run, event).run
    assert (run.checkpoint, run.verified_attempt) == (None, 1)
    return run


def test_completion_after_an_early_checkpoint_still_saves_the_final_one() -> None:
    d = run_step(early_verified(), listed("done"))
    assert (d.run.phase, d.run.checkpoint) == (P.CHECKPOINTING, None)


@pytest.mark.parametrize("action", [UserAction.STOP, UserAction.TERMINATE])
def test_a_request_after_an_early_checkpoint_still_saves_the_final_one(
    action: UserAction,
) -> None:
    d = run_step(early_verified(), UserRequested(action))
    assert (d.run.phase, d.run.pending_action) == (P.CHECKPOINTING, Action(action.value))


def test_an_interruption_with_only_an_early_checkpoint_resumes_from_it() -> None:
    # The warning comes too late for a checkpoint step of its own.
    run = run_step(early_verified(**RESUME), warning(0)).run
    assert (run.phase, run.this_attempt.checkpoint_tries) == (P.INTERRUPTING, 0)
    gone = run_step(run, InstanceObserved(S.TERMINATED))
    d = run_step(gone.run, PrefixListed(()))
    assert (d.run.phase, d.run.checkpoint) == (P.INTERRUPTED, None)
    assert d.effects == (AutoResume(from_scratch=False),)
    resuming = run_step(d.run, ResumeRequested()).run
    assert resuming.reason == "resume requested from its verified checkpoint (attempt 2)"
    launched = run_step(with_state(resuming, resume_stage="starting"), InstanceObserved(S.RUNNING))
    assert launched.effects == (RunInstanceCommand(restore_command(run), RESTORE_TIMEOUT_S),)
    (restore,) = launched.effects
    assert isinstance(restore, RunInstanceCommand)
    assert restore.command.option("s3-url") == EARLY_URL  # where the verified one is


def test_a_final_checkpoint_verified_after_an_early_one_is_what_a_resume_restores() -> None:
    run = run_step(early_verified(), listed("done")).run  # completion: the final step
    run = run_step(run_step(run, finished(CP)).run, checked()).run
    assert (run.phase, run.checkpoint, run.verified_location) == (
        P.GRACE, V, "s3://my-runs/exp1/run42/checkpoints/",
    )  # fmt: skip
    assert restore_command(run).option("s3-url") == "s3://my-runs/exp1/run42/checkpoints/"


@pytest.mark.parametrize("phase", [P.CHECKPOINTING, P.INTERRUPTING])
def test_a_late_early_result_after_training_ended_is_stale_and_ignored(phase: Phase) -> None:
    # Leaving running cancels the early step; a result that still arrives must not pass for
    # the final checkpoint's.
    run = make_run(phase, spec=rebalancing(), checkpoint_tries=1, outcome=Outcome.COMPLETED)
    late = dataclasses.replace(finished(CP, exited=False), early=True)
    d = run_step(run, late)
    assert (d.run, d.effects, d.transition, d.persist) == (run, (), None, False)


def test_a_warning_during_an_early_checkpoint_starts_the_final_one_instead() -> None:
    d = run_step(uploading(), warning())
    assert (d.run.phase, d.run.this_attempt.early_checkpoint, d.run.outcome) == (
        P.INTERRUPTING, False, Outcome.INTERRUPTED,
    )  # fmt: skip
    (wake, command) = d.effects
    assert isinstance(wake, WakeAt) and isinstance(command, RunInstanceCommand)
    assert command.command.option("mode") is None


def test_an_early_checkpoint_while_stalled_does_not_end_the_stall() -> None:
    run = make_run(P.STALLED, spec=rebalancing(stall_timeout_s=60))
    for event in (REBALANCE, finished(CP, exited=False), checked()):
        d = run_step(run, event)
        assert d.transition is None
        run = d.run
    assert (run.phase, run.verified_attempt, run.checkpoint) == (P.STALLED, 1, None)
