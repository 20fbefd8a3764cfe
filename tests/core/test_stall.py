"""The heartbeat in step(): a job's status.json older than stall_timeout_s while its instance
runs makes the run `stalled`; on_stall=notify keeps watching (a fresh heartbeat makes it
running again), the other policies end the run through the final checkpoint, if there is one."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

import pytest

from supervisor.core.backoff import delay
from supervisor.core.checkpoint import CommandKind
from supervisor.core.effects import (
    ActOnInstance,
    Effect,
    ListPrefix,
    RunInstanceCommand,
    WakeAt,
)
from supervisor.core.events import (
    Action,
    Armed,
    CheckpointChecked,
    EffectFailed,
    InstanceObserved,
    PrefixListed,
    Tick,
    UserAction,
    UserRequested,
)
from supervisor.core.machine import (
    ACCEPTS,
    CHECKPOINT_UPLOAD_BUDGET_S,
    EDGES,
    checkpoint_command,
    step,
)
from supervisor.core.run import CheckpointStatus, Outcome, Phase, Run
from supervisor.core.spec import OnStall, RunSpec
from supervisor.core.values import InstanceState
from tests.core.builders import (
    LIST_TOP,
    NOW,
    POLICY,
    POLL_WITHOUT_ETA,
    checked,
    checkpoint_spec,
    failed,
    finished,
    heartbeat,
    listed,
    make_run,
    make_spec,
    obj,
    run_step,
    seeded,
)

P, A, S = Phase, Action, InstanceState
V, UV = CheckpointStatus.VERIFIED, CheckpointStatus.UNVERIFIED
STALLED = Outcome.STALLED
STOP, TERMINATE = ActOnInstance(A.STOP), ActOnInstance(A.TERMINATE)
CP = CommandKind.CHECKPOINT
TIMEOUT_S = 60.0
NEXT_CHECK = NOW + timedelta(seconds=delay(0, POLICY.poll, seeded()))
"""The check a run with no checks yet schedules after a listing without a verdict."""
THROTTLED = EffectFailed("ListObjectsV2", "SlowDown", "reduce your request rate", transient=True)
READ = (("status.json", "e1"),)
"""The heartbeat ETag of `heartbeat()` listings, already read: they ask for no IngestReport
(reading reports is tested in test_reports.py)."""


def stall_spec(on_stall: str = "notify", *, checkpointing: bool = False, **spec: Any) -> RunSpec:
    """A spec that watches the heartbeat with a one-minute stall timeout."""
    build = checkpoint_spec if checkpointing else make_spec
    return build(stall_timeout_s=TIMEOUT_S, on_stall=on_stall, **spec)


def watching(spec: RunSpec, **changes: Any) -> Run:
    """A running run that has read the heartbeat of `heartbeat()` listings already."""
    return make_run(P.RUNNING, spec=spec, report_etags=READ, **changes)


def stalled(on_stall: str = "notify", *, checkpointing: bool = False, **spec: Any) -> Run:
    """A run that became stalled at NOW on a heartbeat two minutes old (already read)."""
    run = watching(stall_spec(on_stall, checkpointing=checkpointing, **spec))
    d = run_step(run, heartbeat(120))
    assert d.run.phase is P.STALLED
    return d.run


def test_a_stalled_run_takes_every_event_a_running_one_takes_and_can_go_wherever_it_goes() -> None:
    assert ACCEPTS[P.STALLED] == ACCEPTS[P.RUNNING]
    from_running = {to for at, to in EDGES if at is P.RUNNING}
    from_stalled = {to for at, to in EDGES if at is P.STALLED}
    assert from_stalled == from_running - {P.STALLED} | {P.RUNNING}


# -- when the heartbeat is stale ---------------------------------------------------------------

# S3 keeps whole seconds: a heartbeat may be up to a second older than it looks.
AGES = [(0, P.RUNNING), (60, P.RUNNING), (61, P.RUNNING), (61.5, P.STALLED), (62, P.STALLED),
        (3600, P.STALLED)]  # fmt: skip


@pytest.mark.parametrize(("age_s", "phase"), AGES)
def test_a_heartbeat_is_stale_once_older_than_the_stall_timeout_and_a_second(
    age_s: float, phase: Phase
) -> None:
    d = run_step(make_run(P.RUNNING, spec=stall_spec()), heartbeat(age_s, "logs/train.log"))
    assert d.run.phase is phase


def test_a_stall_says_how_old_the_heartbeat_is_and_what_the_policy_is() -> None:
    d = run_step(make_run(P.RUNNING, spec=stall_spec()), heartbeat(600.4))
    assert d.run.reason == (
        "heartbeat status.json is 599s old (stall timeout 60s) while the instance runs; "
        "on_stall=notify"
    )
    assert d.transition is not None
    assert d.transition.detail == {"heartbeat_age_s": 599.4, "stall_timeout_s": 60.0}
    assert d.run.outcome is None


NOT_JUDGED = [
    pytest.param(make_spec(), heartbeat(3600), id="no-stall-timeout"),
    pytest.param(stall_spec(), listed("logs/train.log"), id="no-heartbeat-yet"),
    pytest.param(stall_spec(heartbeat_file="out/hb.json"), heartbeat(3600), id="another-file"),
]


@pytest.mark.parametrize(("spec", "listing"), NOT_JUDGED)
def test_without_a_stall_timeout_or_a_heartbeat_the_run_is_never_stalled(
    spec: RunSpec, listing: PrefixListed
) -> None:
    d = run_step(watching(spec), listing)
    assert (d.run.phase, d.transition, d.effects) == (P.RUNNING, None, (WakeAt(NEXT_CHECK),))


def test_a_configured_heartbeat_file_is_the_one_judged() -> None:
    spec = stall_spec(heartbeat_file="out/hb.json")
    d = run_step(make_run(P.RUNNING, spec=spec), heartbeat(120, key="out/hb.json"))
    assert d.run.phase is P.STALLED
    assert d.run.reason.startswith("heartbeat out/hb.json is 119s old")


@pytest.mark.parametrize(
    "listing",
    [listed("done"), heartbeat(3600, "done"), heartbeat(3600, "FAILED")],
    ids=["marker", "marker-beside-stale-heartbeat", "failure-beside-stale-heartbeat"],
)
def test_a_verdict_wins_over_a_stale_heartbeat(listing: PrefixListed) -> None:
    d = run_step(make_run(P.RUNNING, spec=stall_spec()), listing)
    assert d.run.phase is not P.STALLED


HEARTBEAT_AFTER_A_RESUME = [
    (NOW - timedelta(hours=2), P.RUNNING),  # the earlier attempt's: not this one's heartbeat
    (NOW - timedelta(hours=1, seconds=1), P.RUNNING),
    (NOW - timedelta(hours=1), P.STALLED),  # written in the second the attempt started
    (NOW - timedelta(minutes=30), P.STALLED),
    (NOW - timedelta(seconds=10), P.RUNNING),
]


@pytest.mark.parametrize(("written", "phase"), HEARTBEAT_AFTER_A_RESUME)
def test_a_resumed_attempt_is_judged_only_on_a_heartbeat_written_since_it_started(
    written: datetime, phase: Phase
) -> None:
    run = make_run(
        P.RUNNING, spec=stall_spec(), attempt=2,
        started_at=NOW - timedelta(hours=1) + timedelta(microseconds=400_000),
    )  # fmt: skip
    assert run_step(run, PrefixListed((obj("status.json", at=written),))).run.phase is phase


# -- on_stall=notify: keep watching ------------------------------------------------------------


def test_a_notified_stall_keeps_polling_with_backoff() -> None:
    run = watching(stall_spec(), checks=2)
    d = run_step(run, heartbeat(120))
    at = NOW + timedelta(seconds=delay(2, POLL_WITHOUT_ETA, seeded()))
    assert (d.run.phase, d.effects) == (P.STALLED, (WakeAt(at),))
    assert (d.run.checks, d.run.next_check_at) == (3, at)


def test_a_stalled_run_still_stale_stays_stalled_without_a_transition() -> None:
    run = stalled()
    d = run_step(run, heartbeat(600), now=NOW)
    assert (d.run.phase, d.run.version, d.transition) == (P.STALLED, run.version, None)
    assert [type(e) for e in d.effects] == [WakeAt]


def test_a_fresh_heartbeat_makes_a_stalled_run_running_again() -> None:
    run = stalled()
    d = run_step(run, heartbeat(5, "logs/train.log"))
    assert (d.run.phase, d.run.outcome, d.run.version) == (P.RUNNING, None, run.version + 1)
    assert d.run.reason == "heartbeat status.json is fresh again (4s old)"
    assert d.transition is not None
    assert d.transition.detail == {"heartbeat_age_s": 4.0, "stall_timeout_s": 60.0}
    assert [type(e) for e in d.effects] == [WakeAt]


def test_a_stalled_run_without_a_heartbeat_in_the_listing_stays_stalled() -> None:
    d = run_step(stalled(), listed("logs/train.log"))
    assert (d.run.phase, d.transition) == (P.STALLED, None)


def test_a_notified_stalled_run_ticks_like_a_running_one() -> None:
    due = NOW + timedelta(seconds=5)
    run = stalled().evolve(next_check_at=due)
    assert run_step(run, Tick()).effects == (WakeAt(due),)
    assert run_step(run, Tick(), now=due).effects == (LIST_TOP,)


def test_a_stalled_run_armed_after_a_restart_staggers_its_first_check() -> None:
    for on_stall in OnStall:
        run = stalled(on_stall)
        d = step(run, Armed(), now=NOW, policy=POLICY, rng=random.Random(7))
        (wake,) = d.effects
        assert isinstance(wake, WakeAt)
        assert NOW <= wake.at <= NOW + timedelta(seconds=POLICY.poll.max_s)
        assert (d.run.phase, d.transition) == (P.STALLED, None)


def test_a_transient_listing_error_while_stalled_reschedules_the_check() -> None:
    d = run_step(stalled(), THROTTLED)
    assert (d.run.phase, d.transition, [type(e) for e in d.effects]) == (
        P.STALLED, None, [WakeAt],
    )  # fmt: skip


def test_a_stalled_run_whose_instance_ends_takes_one_last_look_like_a_running_one() -> None:
    gone = run_step(stalled(), InstanceObserved(S.TERMINATED))
    assert (gone.effects, gone.run.this_attempt.instance_ended) == ((LIST_TOP,), S.TERMINATED)
    d = run_step(gone.run, listed("done"))
    assert (d.run.phase, d.run.outcome) == (P.TERMINATED, Outcome.COMPLETED)


# -- the other policies: end the run -----------------------------------------------------------


def _ckpt(**spec: Any) -> RunInstanceCommand:
    run = make_run(spec=checkpoint_spec(**spec))
    return RunInstanceCommand(
        checkpoint_command(run), run.spec.sigterm_timeout_s + CHECKPOINT_UPLOAD_BUDGET_S
    )


# fmt: off
POLICIES = [
    pytest.param("checkpoint-stop", True, P.CHECKPOINTING, (_ckpt(),), A.STOP,
                 "stalled; on_stall=checkpoint-stop: saving the final checkpoint, then stop",
                 id="checkpoint-stop"),
    pytest.param("terminate", True, P.CHECKPOINTING, (_ckpt(),), A.TERMINATE,
                 "stalled; on_stall=terminate: saving the final checkpoint, then terminate",
                 id="checkpoint-terminate"),
    pytest.param("checkpoint-stop", False, P.STOPPING, (STOP,), None,
                 "stalled; on_stall=checkpoint-stop: stop requested", id="stop"),
    pytest.param("terminate", False, P.TERMINATING, (TERMINATE,), None,
                 "stalled; on_stall=terminate: terminate requested", id="terminate"),
]
# fmt: on


@pytest.mark.parametrize(
    ("on_stall", "checkpointing", "to", "effects", "pending", "reason"), POLICIES
)
def test_a_stall_is_recorded_first_then_the_next_tick_applies_the_policy(
    on_stall: str,
    checkpointing: bool,
    to: Phase,
    effects: tuple[Effect, ...],
    pending: Action | None,
    reason: str,
) -> None:
    run = watching(stall_spec(on_stall, checkpointing=checkpointing))
    d = run_step(run, heartbeat(120))
    assert (d.run.phase, d.run.outcome, d.effects) == (P.STALLED, None, (WakeAt(NOW),))
    assert d.run.reason.endswith(f"; on_stall={on_stall}")
    acted = run_step(d.run, Tick())
    assert (acted.run.phase, acted.run.outcome, acted.effects) == (to, STALLED, effects)
    assert (acted.run.pending_action, acted.run.reason) == (pending, reason)


def test_a_stall_policy_stays_applied_after_a_daemon_restart() -> None:
    run = stalled("terminate")
    armed = step(run, Armed(), now=NOW, policy=POLICY, rng=random.Random(3)).run
    assert run_step(armed, Tick()).run.phase is P.TERMINATING


def test_a_fresh_heartbeat_before_the_policy_is_applied_makes_the_run_running_again() -> None:
    run = stalled("terminate")
    d = run_step(run, heartbeat(3, "logs/train.log"))
    assert (d.run.phase, [type(e) for e in d.effects]) == (P.RUNNING, [WakeAt])
    assert run_step(d.run, Tick()).run.phase is P.RUNNING


@pytest.mark.parametrize(
    ("verification", "acting", "effect"),
    [(checked(), P.TERMINATING, TERMINATE), (checked("k: missing in S3"), P.STOPPING, STOP)],
    ids=["verified", "unverified"],
)
def test_a_terminate_on_stall_needs_the_verified_final_checkpoint(
    verification: CheckpointChecked, acting: Phase, effect: ActOnInstance
) -> None:
    run = run_step(stalled("terminate", checkpointing=True, checkpoint_attempts=1), Tick()).run
    run = run_step(run, finished(CP, exited=True)).run
    d = run_step(run, verification)
    assert (d.run.phase, d.run.outcome, d.effects) == (acting, STALLED, (effect,))
    assert ("downgraded to stop" in d.run.reason) is (acting is P.STOPPING)


def test_a_stall_stop_whose_checkpoint_step_fails_still_stops_flagged_unverified() -> None:
    run = run_step(stalled("checkpoint-stop", checkpointing=True, checkpoint_attempts=1), Tick())
    d = run_step(run.run, failed(CP))
    assert (d.run.phase, d.run.checkpoint, d.run.outcome, d.effects) == (
        P.STOPPING, UV, STALLED, (STOP,),
    )  # fmt: skip
    assert "checkpoint_unverified" in d.run.reason


@pytest.mark.parametrize("action", [UserAction.STOP, UserAction.TERMINATE])
def test_a_request_while_stalled_saves_the_final_checkpoint_first_like_running(
    action: UserAction,
) -> None:
    d = run_step(stalled(checkpointing=True), UserRequested(action))
    assert (d.run.phase, d.run.outcome, d.run.pending_action) == (
        P.CHECKPOINTING, Outcome.CANCELLED, Action(action.value),
    )  # fmt: skip
    assert d.effects == (_ckpt(stall_timeout_s=TIMEOUT_S),)


# -- the listing ---------------------------------------------------------------------------------


def test_a_stall_timeout_puts_the_heartbeat_in_the_listing() -> None:
    folder = ListPrefix(LIST_TOP.request)
    assert run_step(make_run(P.RUNNING, spec=stall_spec()), Tick()).effects == (folder,)
    nested = make_run(P.RUNNING, spec=stall_spec(heartbeat_file="logs/status.json"))
    (listing,) = run_step(nested, Tick()).effects
    assert isinstance(listing, ListPrefix) and listing.request.delimiter is None
