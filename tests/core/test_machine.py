"""The transition table and step(): every edge is reachable, everything else is refused."""

from __future__ import annotations

import dataclasses
import inspect
import random
import re
import typing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, get_args

import pytest

from supervisor.core import machine
from supervisor.core.backoff import checks_made, delay
from supervisor.core.checkpoint import (
    CommandKind,
    CommandResult,
    CommandStatus,
    Manifest,
    ProcessFate,
)
from supervisor.core.effects import (
    ActOnInstance,
    AttachCrashReport,
    Effect,
    IngestReport,
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
    ReportIngested,
    ResumeRequested,
    Tick,
    UserAction,
    UserRequested,
    UtilisationObserved,
)
from supervisor.core.idle import IdleMetric, judge
from supervisor.core.machine import (
    ACCEPTS,
    AGENT_WAIT_S,
    AGENT_WAIT_TRIES,
    CHECKPOINT_UPLOAD_BUDGET_S,
    EDGES,
    INTERRUPT_OVERDUE_S,
    RESTORE_TIMEOUT_S,
    START_TIMEOUT_S,
    TRANSITIONS,
    Policy,
    checkpoint_command,
    new_run,
    restore_command,
    start_command,
    step,
)
from supervisor.core.run import (
    ACTIVE_PHASES,
    TERMINAL_PHASES,
    AttemptState,
    CheckpointStatus,
    Outcome,
    Phase,
    Resume,
    ResumeStage,
    Run,
    RunChanges,
)
from supervisor.core.values import InstanceId, InstanceState
from tests.core.builders import (
    CHECKPOINT_DIR,
    CHECKPOINT_FIELDS,
    DEADLINE,
    GRACE_UNTIL,
    INSTANCE,
    LAUNCH_TEMPLATE,
    LIST_ALL,
    LIST_TOP,
    NOW,
    PID_FILE,
    POLICY,
    POLL_WITHOUT_ETA,
    RESUME_COMMAND,
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
    state_of,
    warning,
    with_state,
)

P, S = Phase, InstanceState
STOP, TERMINATE = ActOnInstance(Action.STOP), ActOnInstance(Action.TERMINATE)
DENIED = EffectFailed("StopInstances", "UnauthorizedOperation", "not authorized", transient=False)
THROTTLED = EffectFailed("ListObjectsV2", "SlowDown", "reduce your request rate", transient=True)
ACTIVE = (
    P.PENDING, P.RUNNING, P.STALLED, P.CHECKPOINTING, P.GRACE, P.STOPPING, P.TERMINATING,
    P.RESUMING, P.INTERRUPTING,
)  # fmt: skip
EFFECTFUL = (
    P.RUNNING, P.STALLED, P.CHECKPOINTING, P.STOPPING, P.TERMINATING, P.RESUMING, P.INTERRUPTING,
)  # fmt: skip
RESUMABLE = (P.STOPPED, P.TERMINATED, P.CRASHED, P.INTERRUPTED)
CRASH = MonitorFailed("KeyError", "'Contents'")
CF = CHECKPOINT_FIELDS
V, UV = CheckpointStatus.VERIFIED, CheckpointStatus.UNVERIFIED
CP, RS, ST = CommandKind.CHECKPOINT, CommandKind.RESTORE, CommandKind.START
QUIET = timedelta(seconds=30)
"""The default quiet_s of an until-quiet grace."""
SLACK = timedelta(seconds=1)
"""S3 keeps whole seconds: a LastModified may be up to a second older than the write."""
NEW_INSTANCE = InstanceId("i-0fedcba9876543210")
CRASH_REPORT = AttachCrashReport("crash/error.log")
"""The default spec's crash report, attached on every move to crashed."""
OVERDUE = DEADLINE + timedelta(seconds=INTERRUPT_OVERDUE_S)
"""When an instance still there after the default spot warning's deadline is overdue."""
WAKE_OVERDUE = WakeAt(OVERDUE)
FIRST_CHECK = WakeAt(NOW + timedelta(seconds=delay(0, POLICY.poll, seeded())))
"""The next check a run with no checks yet schedules after a listing without a verdict."""
STALL: dict[str, Any] = {"stall_timeout_s": 60}
"""A heartbeat older than a minute (and S3's second of slack) is a stall."""
READ_HEARTBEAT = IngestReport("status.json", "e1", 10)
"""A `heartbeat()` listing's heartbeat, read (first) by a run that has not read it yet."""


def checkpoint_step(**spec: Any) -> RunInstanceCommand:
    """The effect that runs the checkpoint step for a run of `checkpoint_spec(**spec)`."""
    run = make_run(spec=checkpoint_spec(**spec))
    timeout = run.spec.sigterm_timeout_s + CHECKPOINT_UPLOAD_BUDGET_S
    return RunInstanceCommand(checkpoint_command(run), timeout)


CKPT = checkpoint_step()
SPOT_CKPT = RunInstanceCommand(
    checkpoint_command(make_run(spec=checkpoint_spec()), sigterm_timeout_s=50), 100.0
)
"""The checkpoint step a spot warning 100 s ahead starts: SIGTERM timeout cut from 120 to 50."""


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
INT = Outcome.INTERRUPTED
WARNED = "spot interruption warning (terminate, 100s left)"


def kept(phase: Phase) -> Outcome | None:
    """The outcome `make_run(phase)` starts with, which detach and failure leave alone."""
    return make_run(phase).outcome


A, PO = Action, P.PENDING
# fmt: off
EDGE_CASES = [
    _edge(PO, seen(S.RUNNING), P.RUNNING, None, "instance running", LIST_TOP),
    _edge(PO, seen(S.TERMINATED), P.CRASHED, Outcome.CRASHED,
          "instance ended before training started (instance terminated)", CRASH_REPORT),
    _edge(P.RUNNING, listed("done"), P.GRACE, C, "completion marker done found",
          WakeAt(GRACE_UNTIL), fields={"grace_until": GRACE_UNTIL}),
    _edge(P.RUNNING, ObjectRead("FAILED", "CUDA out of memory\n"), P.CRASHED, Outcome.CRASHED,
          "failure marker FAILED: CUDA out of memory; on_crash=keep leaves the instance "
          "running for a person", CRASH_REPORT, spec={"on_crash": "keep"}),
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
    # checkpoint safety: training ends and its final checkpoint is verified before any action
    _edge(P.RUNNING, listed("done"), P.CHECKPOINTING, C,
          "completion marker done found; ending training and saving the final checkpoint", CKPT,
          spec=CF, fields={"pending_action": A.STOP, "checkpoint_tries": 1}),
    _edge(P.CHECKPOINTING, checked(), P.GRACE, C, "checkpoint verified: 2 file(s), 300 bytes",
          WakeAt(NOW + QUIET), spec=CF, outcome=C, pending_action=A.STOP, process_exited=True,
          fields={"checkpoint": V, "grace_until": GRACE_UNTIL, "pending_action": A.STOP}),
    _edge(P.CHECKPOINTING, checked(), P.STOPPING, X, "verified in S3 (size and SHA-256); "
          "acting on the request", STOP, spec=CF, outcome=X, pending_action=A.STOP,
          fields={"checkpoint": V, "pending_action": None}),
    _edge(P.CHECKPOINTING, checked(), P.TERMINATING, X, "acting on the request", TERMINATE,
          spec=CF, outcome=X, pending_action=A.TERMINATE, fields={"checkpoint": V}),
    _edge(P.CHECKPOINTING, seen(S.STOPPED), P.STOPPED, C,
          "instance stopped during checkpointing; nothing left to do", spec=CF, outcome=C,
          fields={"checkpoint": UV}),
    _edge(P.CHECKPOINTING, seen(S.TERMINATED), P.TERMINATED, C,
          "instance terminated during checkpointing", spec=CF, outcome=C,
          fields={"checkpoint": UV}),
    # resume: from a run that ended, back to running training
    _edge(P.STOPPED, ResumeRequested(), P.RESUMING, C,
          "resume requested from its verified checkpoint (attempt 2)", ObserveInstance(),
          spec=CF, outcome=C, checkpoint=V, fields={"resume_stage": "observe", "checkpoint": V}),
    _edge(P.TERMINATED, ResumeRequested(), P.RESUMING, C, "resume requested", ObserveInstance(),
          spec={**CF, "launch_template": LAUNCH_TEMPLATE}, outcome=C, checkpoint=V),
    _edge(P.CRASHED, ResumeRequested(from_scratch=True), P.RESUMING, Outcome.CRASHED,
          "resume requested from scratch (attempt 2)", ObserveInstance(), spec=CF,
          outcome=Outcome.CRASHED, fields={"from_scratch": True}),
    _edge(P.RESUMING, finished(ST, pid=777), P.RUNNING, None,
          f"resumed on {INSTANCE} (attempt 2, checkpoint restored)", LIST_TOP, spec=CF,
          outcome=C, checkpoint=V, resume_stage="start",
          fields={"attempt": 2, "started_at": NOW, "checkpoint": None, "resume": Resume()}),
    _edge(P.RESUMING, user(U.STOP), P.STOPPING, X, "stop requested by user", STOP, spec=CF),
    # spot: the warning starts the checkpoint inside the notice; the instance going ends it
    _edge(PO, warning(), P.INTERRUPTING, INT, f"{WARNED}; no checkpoint step configured",
          WAKE_OVERDUE, ObserveInstance(), fields={"interrupt_deadline": DEADLINE}),
    _edge(P.RUNNING, warning(), P.INTERRUPTING, INT, f"{WARNED}; saving the final checkpoint now",
          WAKE_OVERDUE, SPOT_CKPT, spec=CF,
          fields={"interrupt_deadline": DEADLINE, "checkpoint_tries": 1}),
    _edge(P.CHECKPOINTING, warning(), P.INTERRUPTING, C, f"{WARNED}; during checkpointing",
          WAKE_OVERDUE, ObserveInstance(), spec=CF, outcome=C, checkpoint_tries=2,
          fields={"checkpoint_tries": 2, "interrupt_deadline": DEADLINE}),
    # in grace the training is over: the warning ends the grace at once
    _edge(P.GRACE, warning(), P.TERMINATING, C,
          f"{WARNED}; training had completed: grace ended; terminate requested "
          "(on_complete=terminate)", TERMINATE, spec={**CF, "on_complete": "terminate"},
          outcome=C, checkpoint=V, fields={"checkpoint": V}),
    _edge(P.GRACE, warning(), P.STOPPING, C,
          f"{WARNED}; training had completed: grace ended; stop requested (on_complete=stop)",
          STOP, spec=CF, outcome=C, checkpoint=V),
    _edge(P.GRACE, warning(), P.DONE, C,
          f"{WARNED}; training had completed: grace ended; on_complete=none leaves the "
          "instance running", spec={"on_complete": "none"}, outcome=C),
    _edge(P.RESUMING, warning(), P.INTERRUPTING, INT, f"{WARNED}; during resuming", WAKE_OVERDUE,
          ObserveInstance(), spec={**CF, "spot": True}, resume_stage="starting",
          fields={"interrupt_deadline": DEADLINE}),
    _edge(P.INTERRUPTING, listed("logs.txt"), P.INTERRUPTED, INT,
          "spot instance terminated after the interruption warning", spec={**CF, "spot": True},
          outcome=INT, checkpoint=V, instance_ended=S.TERMINATED, fields={"checkpoint": V}),
    # ... unless AWS never takes the instance back
    _edge(P.INTERRUPTING, seen(S.RUNNING), P.RUNNING, None,
          "instance still running 300s after the interruption deadline; AWS did not take it "
          "back: watching the run again", LIST_TOP, now=OVERDUE, spec={"spot": True},
          outcome=INT, interrupt_deadline=DEADLINE,
          fields={"interrupt_deadline": None, "checks": 0}),
    _edge(P.INTERRUPTING, seen(S.RUNNING), P.STOPPING, INT,
          "instance still running 300s after the interruption deadline; training was ended for "
          "the checkpoint: stopping the idle instance", STOP, now=OVERDUE,
          spec={**CF, "spot": True}, outcome=INT, checkpoint=V, interrupt_deadline=DEADLINE),
    _edge(P.INTERRUPTING, seen(S.RUNNING), P.TERMINATING, C,
          "instance still running 300s after the interruption deadline; training had completed; "
          "terminate requested (on_complete=terminate)", TERMINATE, now=OVERDUE,
          spec={**CF, "spot": True, "on_complete": "terminate"}, outcome=C, checkpoint=V,
          interrupt_deadline=DEADLINE),
    _edge(P.INTERRUPTING, seen(S.RUNNING), P.DONE, C,
          "training had completed; on_complete=none leaves the instance running", now=OVERDUE,
          spec={"spot": True, "on_complete": "none"}, outcome=C, interrupt_deadline=DEADLINE),
    _edge(P.RUNNING, listed("logs.txt"), P.INTERRUPTED, INT,
          "spot instance terminated without a request from the supervisor",
          spec={"spot": True}, instance_ended=S.TERMINATED),
    _edge(PO, listed("logs.txt"), P.INTERRUPTED, INT,
          "spot instance terminated before training started, without a request from the "
          "supervisor", spec={"spot": True}, instance_ended=S.TERMINATED),
    _edge(P.INTERRUPTED, ResumeRequested(from_scratch=True), P.RESUMING, INT,
          "resume requested from scratch (attempt 2)", ObserveInstance(),
          spec={**CF, "spot": True}, outcome=INT, checkpoint=UV,
          fields={"from_scratch": True, "resume_stage": "observe"}),
    _edge(P.RESUMING, user(U.TERMINATE), P.TERMINATING, X, "terminate requested by user",
          TERMINATE),
    # the heartbeat: a stale one stalls the run, a fresh one makes it running again
    _edge(P.RUNNING, heartbeat(120), P.STALLED, None,
          "heartbeat status.json is 119s old (stall timeout 60s) while the instance runs; "
          "on_stall=notify", READ_HEARTBEAT, FIRST_CHECK, spec=STALL,
          fields={"checks": 1, "next_check_at": FIRST_CHECK.at}),
    _edge(P.STALLED, heartbeat(10), P.RUNNING, None,
          "heartbeat status.json is fresh again (9s old)", READ_HEARTBEAT, FIRST_CHECK, spec=STALL,
          fields={"checks": 1, "next_check_at": FIRST_CHECK.at}),
    # ... and the stall policy ends it, through the final checkpoint when there is one
    _edge(P.STALLED, Tick(), P.CHECKPOINTING, Outcome.STALLED,
          "stalled; on_stall=checkpoint-stop: saving the final checkpoint, then stop", CKPT,
          spec={**CF, **STALL, "on_stall": "checkpoint-stop"},
          fields={"pending_action": A.STOP, "checkpoint_tries": 1}),
    _edge(P.STALLED, Tick(), P.STOPPING, Outcome.STALLED,
          "stalled; on_stall=checkpoint-stop: stop requested", STOP,
          spec={**STALL, "on_stall": "checkpoint-stop"}),
    _edge(P.STALLED, Tick(), P.TERMINATING, Outcome.STALLED,
          "stalled; on_stall=terminate: terminate requested", TERMINATE,
          spec={**STALL, "on_stall": "terminate"}),
    # a stalled run is still watched: it goes wherever a running one goes
    _edge(P.STALLED, listed("done"), P.GRACE, C, "completion marker done found",
          WakeAt(GRACE_UNTIL), spec=STALL, fields={"grace_until": GRACE_UNTIL}),
    _edge(P.STALLED, ObjectRead("FAILED", "hung in NCCL\n"), P.CRASHED, Outcome.CRASHED,
          "failure marker FAILED: hung in NCCL", CRASH_REPORT, spec={**STALL, "on_crash": "keep"}),
    _edge(P.STALLED, listed("done"), P.STOPPED, C, "instance was already stopped", spec=STALL,
          instance_ended=S.STOPPED),
    _edge(P.STALLED, listed("done"), P.TERMINATED, C, "instance was already terminated",
          spec=STALL, instance_ended=S.TERMINATED),
    _edge(P.STALLED, warning(), P.INTERRUPTING, INT, f"{WARNED}; saving the final checkpoint now",
          WAKE_OVERDUE, SPOT_CKPT, spec={**CF, **STALL},
          fields={"interrupt_deadline": DEADLINE, "checkpoint_tries": 1}),
    _edge(P.STALLED, listed("logs.txt"), P.INTERRUPTED, INT,
          "spot instance terminated without a request from the supervisor",
          spec={**STALL, "spot": True}, instance_ended=S.TERMINATED),
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
        assert state_of(decision.run, name) == value


# -- events a phase does not take --------------------------------------------------------------

# fmt: off
ONE_OF_EACH: list[Event] = [
    Armed(), Tick(), seen(S.RUNNING), listed("done"), ObjectRead("FAILED", "boom"),
    ActionSucceeded(A.STOP, S.STOPPED), DENIED, user(U.DETACH), CRASH, finished(CP), checked(),
    ResumeRequested(), InstanceLaunched(NEW_INSTANCE), Nudge("prefix"), warning(),
    RebalanceRecommended(), ReportIngested("status.json", "e1"),
    UtilisationObserved(IdleMetric.CPU, ()),
]
REFUSED = [
    pytest.param(phase, event, id=f"{phase}:{type(event).__name__}")
    for phase in Phase for event in ONE_OF_EACH if type(event) not in ACCEPTS[phase]
]
# fmt: on


def test_every_phase_has_a_row_terminal_rows_take_only_a_resume_and_every_event_is_tried() -> None:
    assert set(ACCEPTS) == set(Phase)
    for phase in TERMINAL_PHASES:
        resumable = frozenset({ResumeRequested}) if phase in RESUMABLE else frozenset()
        assert ACCEPTS[phase] == resumable, phase
    assert {p for p in Phase if ResumeRequested in ACCEPTS[p]} == set(RESUMABLE)
    assert {type(e) for e in ONE_OF_EACH} == set(get_args(Event))


def test_what_a_phase_accepts_is_exactly_the_keys_of_its_rows_in_the_table() -> None:
    for phase in Phase:
        assert ACCEPTS[phase] == {event for (at, event) in TRANSITIONS if at is phase}, phase
    assert set(TRANSITIONS) == {(p, e) for p in Phase for e in ACCEPTS[p]}


def test_the_active_phases_are_the_non_terminal_ones_and_each_takes_the_events_of_any_phase() -> (
    None
):
    assert set(Phase) - TERMINAL_PHASES == ACTIVE_PHASES and set(ACTIVE) == ACTIVE_PHASES
    anywhere = {Armed, Tick, InstanceObserved, UserRequested, MonitorFailed, Nudge,
                RebalanceRecommended, ReportIngested, EffectFailed}  # fmt: skip
    assert {p for p in Phase if anywhere <= ACCEPTS[p]} == ACTIVE_PHASES


@pytest.mark.parametrize(
    ("phase", "event"), [pytest.param(p, e, id=f"{p}:{e.__name__}") for (p, e) in TRANSITIONS]
)
def test_each_row_of_the_table_has_a_handler_for_its_event_type(
    phase: Phase, event: type[Event]
) -> None:
    handler = inspect.unwrap(TRANSITIONS[phase, event])
    hint = typing.get_type_hints(handler, vars(machine))[
        list(inspect.signature(handler).parameters)[1]
    ]
    assert event is hint or event in get_args(hint), handler.__name__


def test_each_edge_leaves_a_phase_that_takes_events_and_any_active_phase_can_fail_or_detach() -> (
    None
):
    assert all(ACCEPTS[at] for (at, _) in EDGES)
    for phase in ACTIVE_PHASES:
        assert {(phase, P.FAILED), (phase, P.DETACHED)} <= EDGES, phase
    assert not any(at in TERMINAL_PHASES and to is not P.RESUMING for (at, to) in EDGES)


@pytest.mark.parametrize(("phase", "event"), REFUSED)
def test_an_event_the_phase_does_not_take_raises_so_nothing_is_decided(
    phase: Phase, event: Event
) -> None:
    with pytest.raises(InvalidTransition, match=f"is {phase}"):
        run_step(make_run(phase), event)


def test_a_run_is_frozen_so_a_refused_step_cannot_have_changed_it() -> None:
    """What "changes nothing" rests on: step() can only return a new Run, never edit one."""
    run = make_run(Phase.RUNNING)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.phase = Phase.STOPPED  # type: ignore[misc]


# -- pending -----------------------------------------------------------------------------------


def test_new_run_is_pending_at_version_1_with_an_attached_transition() -> None:
    d = new_run(make_spec(), now=NOW)
    assert (d.run.phase, d.run.version, d.run.outcome) == (P.PENDING, 1, None)
    assert d.transition is not None
    assert (d.transition.from_phase, d.transition.to_phase) == (None, P.PENDING)


NOT_ALIVE = [S.STOPPING, S.STOPPED, S.SHUTTING_DOWN, S.TERMINATED, S.UNKNOWN]


@pytest.mark.parametrize("state", NOT_ALIVE)
def test_pending_instance_that_ends_is_crashed_before_training(state: InstanceState) -> None:
    d = run_step(make_run(P.PENDING), seen(state))
    assert (d.run.phase, d.run.outcome) == (P.CRASHED, Outcome.CRASHED)
    assert d.run.reason.startswith("instance ended before training started")


@pytest.mark.parametrize("state", NOT_ALIVE)
def test_a_pending_spot_instance_that_ends_is_interrupted_after_one_look_at_the_prefix(
    state: InstanceState,
) -> None:
    gone = run_step(make_run(P.PENDING, spec=make_spec(spot=True)), seen(state))
    assert (gone.run.phase, gone.transition, gone.effects) == (P.PENDING, None, (LIST_TOP,))
    assert gone.run.this_attempt.instance_ended is state
    d = run_step(gone.run, listed("logs.txt"))
    assert (d.run.phase, d.run.outcome, d.effects) == (P.INTERRUPTED, INT, ())
    assert d.run.reason == (
        f"spot instance {state} before training started, without a request from the supervisor"
    )


def test_pending_instance_still_pending_is_a_stay_without_effects() -> None:
    run = make_run(P.PENDING)
    assert run_step(run, seen(S.PENDING)).run == run


@pytest.mark.parametrize("event", [listed("done"), listed("FAILED"), THROTTLED, DENIED], ids=repr)
@pytest.mark.parametrize("spot", [True, False], ids=["spot", "on-demand"])
def test_a_listing_or_failure_while_pending_with_the_instance_not_gone_changes_nothing(
    event: Event, spot: bool
) -> None:
    run = make_run(P.PENDING, spec=make_spec(spot=spot))
    d = run_step(run, event)
    assert (d.run.phase, d.transition, d.persist) == (P.PENDING, None, False)
    assert [e for e in d.effects if not isinstance(e, IngestReport)] == []


def test_a_pending_spot_runs_last_look_that_fails_still_ends_it_interrupted() -> None:
    gone = run_step(make_run(P.PENDING, spec=make_spec(spot=True)), seen(S.TERMINATED)).run
    d = run_step(gone, DENIED)
    assert (d.run.phase, d.run.outcome) == (P.INTERRUPTED, INT)
    assert d.run.reason.endswith("(last look at the prefix failed: UnauthorizedOperation)")


# -- running -----------------------------------------------------------------------------------


def test_running_armed_right_after_it_started_checks_within_one_initial_interval() -> None:
    for seed in range(20):
        run = make_run(P.RUNNING, phase_since=NOW, checks=4)
        d = step(run, Armed(), now=NOW, policy=POLICY, rng=random.Random(seed))
        (wake,) = d.effects
        assert isinstance(wake, WakeAt)
        assert NOW <= wake.at <= NOW + timedelta(seconds=POLICY.poll.initial_s)
        assert (d.run.checks, d.run.next_check_at, d.transition) == (0, wake.at, None)


def test_running_armed_after_hours_resumes_the_backoff_at_its_cap() -> None:
    """A restart must not check ten thousand long-running runs within 30 s: each run's first
    check falls anywhere in one interval at the level its schedule has reached."""
    run = make_run(P.RUNNING, phase_since=NOW - timedelta(hours=2), next_check_at=None)
    wakes = []
    for seed in range(40):
        d = step(run, Armed(), now=NOW, policy=POLICY, rng=random.Random(seed))
        (wake,) = d.effects
        assert isinstance(wake, WakeAt)
        assert NOW <= wake.at <= NOW + timedelta(seconds=POLL_WITHOUT_ETA.max_s)
        assert (d.run.checks, d.run.next_check_at, d.transition) == (
            checks_made(7200, POLL_WITHOUT_ETA), wake.at, None,
        )  # fmt: skip
        wakes.append((wake.at - NOW).total_seconds())
        armed, first_check = d.run, wake.at
    assert max(wakes) > 3 * POLICY.poll.initial_s, "first checks are spread over the cap"
    # The check after that one waits a whole capped interval, not the initial 30 s.
    ticked = run_step(armed, Tick(), now=first_check)
    assert ticked.effects == (LIST_TOP,)
    listed_ = run_step(ticked.run, listed("logs.txt"), now=first_check)
    (next_wake,) = listed_.effects
    assert isinstance(next_wake, WakeAt)
    assert (next_wake.at - first_check).total_seconds() >= POLL_WITHOUT_ETA.max_s * 0.9


@pytest.mark.parametrize(
    ("due_in_s", "kept"), [(45.0, True), (POLICY.poll.max_s + 60, False), (-10.0, False)]
)
def test_running_armed_keeps_a_persisted_check_due_within_the_interval(
    due_in_s: float, kept: bool
) -> None:
    due = NOW + timedelta(seconds=due_in_s)
    run = make_run(P.RUNNING, phase_since=NOW - timedelta(hours=2), next_check_at=due)
    d = step(run, Armed(), now=NOW, policy=POLICY, rng=random.Random(1))
    (wake,) = d.effects
    assert isinstance(wake, WakeAt)
    assert (wake.at == due) is kept
    assert NOW <= wake.at <= NOW + timedelta(seconds=POLICY.poll.max_s)


def test_running_listing_without_evidence_schedules_the_next_check_with_backoff() -> None:
    d = run_step(make_run(P.RUNNING, checks=2), listed("logs.txt"))
    at = NOW + timedelta(seconds=delay(2, POLL_WITHOUT_ETA, seeded()))
    assert d.effects == (WakeAt(at),)
    assert (d.run.checks, d.run.next_check_at, d.run.version) == (3, at, 3)


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
    assert d.run.reason.startswith("failure marker FAILED: NaN loss at step 900; ")
    assert d.transition is not None
    assert d.transition.detail == {"failure_marker_body": "NaN loss at step 900"}


def test_running_read_of_another_key_is_ignored() -> None:
    run = make_run(P.RUNNING)
    assert run_step(run, ObjectRead("other.txt", "x")).run == run


ENDED = [
    (S.STOPPING, P.STOPPED), (S.STOPPED, P.STOPPED), (S.SHUTTING_DOWN, P.TERMINATED),
    (S.TERMINATED, P.TERMINATED), (S.UNKNOWN, P.TERMINATED),
]  # fmt: skip


CRASHES = [
    pytest.param(P.PENDING, seen(S.TERMINATED), {}, id="instance-ended-before-training"),
    pytest.param(P.RUNNING, ObjectRead("FAILED", "boom"), {}, id="failure-marker"),
    pytest.param(P.STALLED, ObjectRead("FAILED", "boom"), {}, id="failure-marker-while-stalled"),
    pytest.param(P.RUNNING, listed(), {"instance_ended": S.TERMINATED}, id="instance-ended"),
    # the failure marker's last look after the instance went: nothing left to stop
    pytest.param(P.RUNNING, ObjectRead("FAILED", "boom"), {"instance_ended": S.TERMINATED},
                 id="failure-marker-instance-gone"),
]  # fmt: skip


@pytest.mark.parametrize(("phase", "event", "changes"), CRASHES)
def test_every_crash_attaches_the_jobs_crash_report(
    phase: Phase, event: Event, changes: dict[str, Any]
) -> None:
    # (on_crash=keep: the instance is left as it is; the on_crash tests below cover the rest)
    spec = make_spec(crash_report="logs/traceback.txt", on_crash="keep")
    d = run_step(make_run(phase, spec=spec, **changes), event)
    assert (d.run.phase, d.run.outcome) == (P.CRASHED, Outcome.CRASHED)
    assert d.effects == (AttachCrashReport("logs/traceback.txt"),)
    default = run_step(make_run(phase, spec=make_spec(on_crash="keep"), **changes), event)
    assert default.effects == (CRASH_REPORT,)


@pytest.mark.parametrize(("state", "final"), ENDED)
def test_running_instance_ended_takes_one_last_look_at_the_prefix(
    state: InstanceState, final: Phase
) -> None:
    d = run_step(make_run(P.RUNNING), seen(state))
    assert (d.effects, d.transition, d.run.this_attempt.instance_ended) == (
        (LIST_TOP,),
        None,
        state,
    )
    assert run_step(d.run, seen(state)).effects == ()  # a repeated observation lists nothing
    done = run_step(d.run, listed("done"))
    assert (done.run.phase, done.run.outcome) == (final, Outcome.COMPLETED)
    crashed = run_step(d.run, listed("logs.txt"))
    assert (crashed.run.phase, crashed.run.outcome) == (P.CRASHED, Outcome.CRASHED)
    assert "no completion marker" in crashed.run.reason


def test_running_instance_still_alive_is_a_stay() -> None:
    assert run_step(make_run(P.RUNNING), seen(S.RUNNING)).effects == ()


def test_running_transient_error_reschedules_the_check_with_backoff() -> None:
    d = run_step(make_run(P.RUNNING, checks=1), THROTTLED)
    at = NOW + timedelta(seconds=delay(1, POLICY.poll, seeded()))
    assert (d.effects, d.transition) == ((WakeAt(at),), None)
    assert (d.run.phase, d.run.checks, d.run.next_check_at) == (P.RUNNING, 2, at)


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
        P.STALLED: (P.STOPPING, P.TERMINATING, P.DETACHED),
        P.GRACE: (P.STOPPING, P.TERMINATING, P.DETACHED),
        P.STOPPING: (None, P.TERMINATING, P.DETACHED),
        P.TERMINATING: (None, None, P.DETACHED),
        P.CHECKPOINTING: (P.CHECKPOINTING, P.CHECKPOINTING, P.DETACHED),
        P.RESUMING: (P.STOPPING, P.TERMINATING, P.DETACHED),
        P.INTERRUPTING: (None, None, P.DETACHED),
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


# -- the checkpoint step -----------------------------------------------------------------------

PATTERNS = ["*.pt", "*.pth", "*.ckpt", "*.safetensors", "checkpoint-*/", "checkpoint_*/"]
MANIFEST_KEY = "exp1/run42/checkpoints/_manifest.json"
NOT_FOUND = "exp1/run42/checkpoints/model.pt: missing in S3"


def test_checkpoint_argv_names_the_dir_the_prefixs_checkpoints_folder_and_each_pattern() -> None:
    assert checkpoint_command(make_run(spec=checkpoint_spec())).argv() == [
        "checkpoint", "--run-id", "run-42", "--checkpoint-dir", CHECKPOINT_DIR,
        "--s3-url", "s3://my-runs/exp1/run42/checkpoints/", "--sigterm-timeout-s", "120",
        "--on-timeout", "kill", "--region", "us-east-1",
        *(word for pattern in PATTERNS for word in ("--pattern", pattern)),
        "--pid-file", PID_FILE,
    ]  # fmt: skip


def test_checkpoint_command_follows_checkpoint_s3_patterns_and_sigterm_settings() -> None:
    spec = checkpoint_spec(
        checkpoint_s3="s3://other-bucket/ckpts/run42", checkpoint_pattern=("step-*/", "*.bin"),
        sigterm_timeout_s=7.5, on_sigterm_timeout="leave", pid_file=None, resume_command=(),
    )  # fmt: skip
    command = checkpoint_command(make_run(spec=spec))
    assert command.option("s3-url") == "s3://other-bucket/ckpts/run42/"
    assert (command.option("sigterm-timeout-s"), command.option("on-timeout")) == ("7.5", "leave")
    assert [v for n, v in command.options if n == "pattern"] == ["step-*/", "*.bin"]
    assert command.option("pid-file") is None


def test_checkpoint_step_may_take_the_sigterm_timeout_plus_an_upload_budget() -> None:
    assert checkpoint_step(sigterm_timeout_s=7.5).timeout_s == 7.5 + CHECKPOINT_UPLOAD_BUDGET_S


@pytest.mark.parametrize(
    ("on_complete", "pending"), [("stop", A.STOP), ("terminate", A.TERMINATE), ("none", None)]
)
def test_completion_with_checkpointing_first_ends_training_keeping_on_complete_for_later(
    on_complete: str, pending: Action | None
) -> None:
    d = run_step(make_run(P.RUNNING, spec=checkpoint_spec(on_complete=on_complete)), listed("done"))
    assert (d.run.phase, d.run.outcome, d.run.pending_action) == (P.CHECKPOINTING, C, pending)
    assert d.effects == (CKPT,)
    assert (d.run.checkpoint, d.run.this_attempt.checkpoint_tries) == (None, 1)


def checkpointing(tries: int = 1, *, outcome: Outcome = C, **spec: Any) -> Run:
    """A run whose checkpoint step is under way (`tries` attempts so far), entered on its
    completion marker or on a user's stop."""
    running = make_run(P.RUNNING, spec=checkpoint_spec(**spec))
    event = listed("done") if outcome is C else user(U.STOP)
    return with_state(run_step(running, event).run, checkpoint_tries=tries)


@pytest.mark.parametrize("exited", [True, False])
def test_checkpoint_step_success_asks_to_verify_the_manifest_and_records_the_process_fate(
    exited: bool,
) -> None:
    d = run_step(checkpointing(), finished(CP, exited=exited))
    assert d.effects == (VerifyCheckpoint("my-runs", MANIFEST_KEY),)
    assert (d.transition, d.run.phase, d.run.process_exited) == (None, P.CHECKPOINTING, exited)


def test_checkpoint_step_success_verifies_the_manifest_where_the_instance_wrote_it() -> None:
    run = checkpointing(checkpoint_s3="s3://other-bucket/ckpts/run42")
    assert run_step(run, finished(CP)).effects == (
        VerifyCheckpoint("other-bucket", "ckpts/run42/_manifest.json"),
    )
    moved = finished(CP, manifest_key="ckpts/run42/step-9/_manifest.json")
    assert run_step(run, moved).effects == (
        VerifyCheckpoint("other-bucket", "ckpts/run42/step-9/_manifest.json"),
    )


def test_verified_checkpoint_enters_grace_with_what_was_verified_in_the_detail() -> None:
    manifest = Manifest(
        run_id="run-42", created_at="2026-11-22T12:00:00Z", checkpoint="checkpoint-900",
        kind="dir", bucket="my-runs", prefix="exp1/run42/checkpoints/", files=(), total_bytes=0,
        process=ProcessFate(pid=4242, was_running=True, signalled=True, waited_s=3.5),
        timings={"upload_s": 12.0},
    )  # fmt: skip
    event = dataclasses.replace(checked(files=3, size=1710), manifest=manifest)
    d = run_step(checkpointing(2, grace_mode="fixed"), event)
    assert (d.run.phase, d.run.checkpoint, d.effects) == (P.GRACE, V, (WakeAt(GRACE_UNTIL),))
    assert (
        d.run.reason
        == "checkpoint verified: 3 file(s), 1710 bytes verified in S3 (size and SHA-256)"
    )
    assert d.transition is not None
    assert d.transition.detail == {
        "files": 3, "bytes": 1710, "verify_s": 0.25, "checkpoint_attempt": 2,
        "checkpoint_name": "checkpoint-900", "process": manifest.process.model_dump(),
        "instance_timings": {"upload_s": 12.0},
    }  # fmt: skip


TRANSIENT = EffectFailed("SendCommand", "ThrottlingException", "rate exceeded", transient=True)
ATTEMPT_FAILED = [
    pytest.param(checked(NOT_FOUND), "checkpoint not verified: " + NOT_FOUND, id="not-verified"),
    pytest.param(failed(CP), "checkpoint step failed: Failed (exit 1)", id="command-failed"),
    pytest.param(TRANSIENT, "SendCommand: ThrottlingException", id="transient-error"),
]


@pytest.mark.parametrize(("event", "why"), ATTEMPT_FAILED)
def test_a_failed_checkpoint_attempt_is_retried_until_checkpoint_attempts(
    event: Event, why: str
) -> None:
    for tries in (1, 2):
        d = run_step(checkpointing(tries), event)
        assert (d.effects, d.transition, d.persist) == ((CKPT,), None, False)
        assert (d.run.phase, d.run.this_attempt.checkpoint_tries) == (P.CHECKPOINTING, tries + 1)
    last = run_step(checkpointing(3), event)
    assert last.run.phase is P.GRACE
    assert f"{why}" in last.run.reason
    assert "(after 3 attempt(s)); checkpoint_unverified" in last.run.reason


def test_one_checkpoint_attempt_means_the_first_failure_applies_the_policy() -> None:
    d = run_step(checkpointing(1, checkpoint_attempts=1), failed(CP))
    assert (d.run.phase, d.run.checkpoint) == (P.GRACE, UV)


def test_unverified_after_completion_with_terminate_waits_out_grace_then_stops_instead() -> None:
    d = run_step(checkpointing(3, on_complete="terminate"), checked(NOT_FOUND))
    assert (d.run.phase, d.run.checkpoint, d.effects) == (P.GRACE, UV, (WakeAt(GRACE_UNTIL),))
    assert d.transition is not None and d.transition.detail["checkpoint"] == "unverified"
    end = run_step(d.run, Tick(), now=GRACE_UNTIL)
    assert (end.run.phase, end.effects) == (P.STOPPING, (STOP,))
    assert "terminate requested (on_complete=terminate); downgraded to stop" in end.run.reason
    assert end.transition is not None and end.transition.detail == {"downgraded": "terminate->stop"}


def test_unverified_after_completion_with_stop_waits_out_grace_then_stops_flagged() -> None:
    d = run_step(checkpointing(3, on_complete="stop"), checked(NOT_FOUND))
    end = run_step(d.run, Tick(), now=GRACE_UNTIL)
    assert (end.run.phase, end.run.checkpoint, end.effects) == (P.STOPPING, UV, (STOP,))
    assert "downgraded" not in end.run.reason


@pytest.mark.parametrize("pending", [A.STOP, A.TERMINATE])
def test_unverified_after_a_user_request_stops_at_once_flagged_unverified(pending: Action) -> None:
    run = checkpointing(3, outcome=X).evolve(pending_action=pending)
    assert run.outcome is X
    d = run_step(run, checked(NOT_FOUND))
    assert (d.run.phase, d.run.checkpoint, d.effects) == (P.STOPPING, UV, (STOP,))
    assert "checkpoint_unverified" in d.run.reason
    assert ("downgraded to stop" in d.run.reason) is (pending is A.TERMINATE)


@pytest.mark.parametrize("outcome", [C, X])
def test_unverified_with_keep_running_fails_the_run_and_leaves_the_instance_alone(
    outcome: Outcome,
) -> None:
    run = checkpointing(3, outcome=outcome, on_checkpoint_failure="keep-running")
    d = run_step(run, failed(CP))
    assert (d.run.phase, d.run.error_code, d.run.checkpoint) == (
        P.FAILED, "CheckpointUnverified", UV,
    )  # fmt: skip
    assert d.effects == ()
    assert "instance left running for a person" in d.run.reason


def test_checkpointing_armed_after_a_restart_runs_the_idempotent_step_again() -> None:
    d = run_step(checkpointing(2), Armed())
    assert (d.effects, d.run.this_attempt.checkpoint_tries, d.transition) == ((CKPT,), 1, None)


@pytest.mark.parametrize(
    "event", [Tick(), seen(S.RUNNING), seen(S.PENDING), finished(RS), finished(ST)], ids=repr
)
def test_checkpointing_waits_for_its_own_result_ignoring_other_news(event: Event) -> None:
    run = checkpointing()
    d = run_step(run, event)
    assert (d.run, d.effects, d.transition, d.persist) == (run, (), None, False)


# -- until-quiet grace -------------------------------------------------------------------------


def verified_grace(*, exited: bool = True, **spec: Any) -> Run:
    """A run that entered grace at NOW with its checkpoint verified."""
    run = checkpointing(**spec).evolve(process_exited=exited)
    return run_step(run, checked()).run


def test_until_quiet_grace_first_wakes_after_quiet_s_once_the_process_exited() -> None:
    d = run_step(checkpointing().evolve(process_exited=True), checked())
    assert (d.effects, d.run.grace_until) == ((WakeAt(NOW + QUIET),), GRACE_UNTIL)


def test_until_quiet_grace_never_wakes_later_than_grace_until() -> None:
    d = run_step(checkpointing(quiet_s=3600).evolve(process_exited=True), checked())
    assert d.effects == (WakeAt(GRACE_UNTIL),)


def test_until_quiet_grace_tick_lists_the_whole_run_prefix_recursively() -> None:
    assert run_step(verified_grace(), Tick(), now=NOW + QUIET).effects == (LIST_ALL,)


@pytest.mark.parametrize(
    "run",
    [verified_grace(exited=False), verified_grace(grace_mode="fixed")],
    ids=["process-alive", "fixed-mode"],
)
def test_grace_that_cannot_end_early_only_rearms_grace_until_on_a_tick(run: Run) -> None:
    d = run_step(run, Tick(), now=NOW + QUIET)
    assert (d.effects, d.transition) == ((WakeAt(GRACE_UNTIL),), None)


def test_fixed_grace_with_a_verified_checkpoint_first_wakes_at_grace_until() -> None:
    d = run_step(checkpointing(grace_mode="fixed").evolve(process_exited=True), checked())
    assert d.effects == (WakeAt(GRACE_UNTIL),)


def test_a_prefix_quiet_for_quiet_s_ends_grace_early_saying_how_much_was_saved() -> None:
    later = NOW + QUIET + SLACK
    d = run_step(verified_grace(), PrefixListed((obj("checkpoints/_manifest.json"),)), now=later)
    assert (d.run.phase, d.effects) == (P.STOPPING, (STOP,))
    assert d.run.reason.startswith(
        "grace ended early: checkpoint verified, training process exited, prefix quiet for 30s "
        "and no upload in progress (569s of grace saved); stop requested (on_complete=stop)"
    )
    assert d.transition is not None and d.transition.detail == {"grace_saved_s": 569.0}


@pytest.mark.parametrize(
    ("quiet_for", "phase"),
    [(QUIET - SLACK / 2, P.GRACE), (QUIET, P.STOPPING), (QUIET + SLACK, P.STOPPING)],
)
def test_the_prefix_is_quiet_quiet_s_after_the_newest_last_modified(
    quiet_for: timedelta, phase: Phase
) -> None:
    listing = PrefixListed((obj("checkpoints/_manifest.json"),))
    assert run_step(verified_grace(), listing, now=NOW + quiet_for).run.phase is phase


def test_an_empty_prefix_is_quiet() -> None:
    assert run_step(verified_grace(), PrefixListed(()), now=NOW + QUIET).run.phase is P.STOPPING


def test_an_upload_in_progress_keeps_a_quiet_prefix_in_grace_and_looks_again_a_quiet_later() -> (
    None
):
    listing = PrefixListed((obj("events.out", at=NOW),), ("checkpoints/model.pt",))
    d = run_step(verified_grace(), listing, now=NOW + 2 * QUIET)
    assert (d.effects, d.transition, d.run.phase) == (
        (WakeAt(NOW + 3 * QUIET),),
        None,
        P.GRACE,
    )
    done = run_step(d.run, PrefixListed((obj("events.out", at=NOW),)), now=NOW + 3 * QUIET)
    assert done.run.phase is P.STOPPING


def test_an_upload_in_progress_near_the_grace_limit_waits_only_until_the_limit() -> None:
    listing = PrefixListed((), ("checkpoints/model.pt",))
    d = run_step(verified_grace(), listing, now=GRACE_UNTIL - timedelta(seconds=5))
    assert d.effects == (WakeAt(GRACE_UNTIL),)


def plain_grace(**spec: Any) -> Run:
    """A run without checkpointing that entered grace at NOW (its marker just listed)."""
    run = make_run(P.RUNNING, spec=make_spec(grace_mode="until-quiet", **spec))
    return run_step(run, listed("COMPLETE")).run


@pytest.mark.parametrize(
    ("marker_age_s", "first_look_in_s"),
    [
        pytest.param(0, 30, id="seen-at-once-looks-quiet_s-after-the-marker"),
        pytest.param(12, 18, id="seen-later-looks-quiet_s-after-the-marker"),
        pytest.param(30, 0, id="seen-quiet_s-after-looks-now"),
        pytest.param(250, 0, id="found-late-by-a-check-looks-now"),
    ],
)
def test_an_until_quiet_grace_first_looks_quiet_s_after_the_marker_was_written(
    marker_age_s: float, first_look_in_s: float
) -> None:
    run = make_run(P.RUNNING, spec=make_spec(grace_mode="until-quiet"))
    marker = obj("COMPLETE", at=NOW - timedelta(seconds=marker_age_s))
    d = run_step(run, PrefixListed((marker,)))
    assert d.run.phase is P.GRACE
    assert d.effects == (WakeAt(NOW + timedelta(seconds=first_look_in_s)),)


def test_a_completion_found_late_ends_an_until_quiet_grace_at_the_first_look() -> None:
    """A check finds a marker written minutes ago, with nothing after it: the quiet look
    right away ends grace, without a wait of quiet_s more."""
    run = make_run(P.RUNNING, spec=make_spec(grace_mode="until-quiet"))
    marker = obj("COMPLETE", at=NOW - timedelta(seconds=250))
    grace = run_step(run, PrefixListed((marker,)))
    look = run_step(grace.run, Tick())
    assert look.effects == (LIST_ALL,)
    ended = run_step(look.run, PrefixListed((marker,)))
    assert (ended.run.phase, ended.effects) == (P.STOPPING, (STOP,))


def test_without_checkpointing_an_until_quiet_grace_first_looks_after_quiet_s() -> None:
    run = make_run(P.RUNNING, spec=make_spec(grace_mode="until-quiet"))
    d = run_step(run, listed("COMPLETE"))
    assert (d.run.phase, d.effects, d.run.grace_until) == (
        P.GRACE,
        (WakeAt(NOW + QUIET),),
        GRACE_UNTIL,
    )
    assert run_step(d.run, Tick(), now=NOW + QUIET).effects == (LIST_ALL,)


def test_without_checkpointing_a_quiet_prefix_with_no_upload_ends_grace_early() -> None:
    listing = PrefixListed((obj("COMPLETE", at=NOW),))
    d = run_step(plain_grace(), listing, now=NOW + QUIET + SLACK)
    assert (d.run.phase, d.effects) == (P.STOPPING, (STOP,))
    assert d.run.reason.startswith(
        "grace ended early: prefix quiet for 30s and no upload in progress (569s of grace saved)"
    )


def test_without_checkpointing_an_upload_in_progress_keeps_the_run_in_grace() -> None:
    listing = PrefixListed((obj("COMPLETE", at=NOW),), ("model.pt",))
    d = run_step(plain_grace(), listing, now=NOW + QUIET + SLACK)
    assert (d.run.phase, d.effects) == (P.GRACE, (WakeAt(NOW + 2 * QUIET + SLACK),))


def test_a_fixed_grace_waits_the_whole_grace_even_when_the_prefix_is_quiet() -> None:
    run = make_run(P.RUNNING, spec=make_spec(grace_mode="fixed"))
    d = run_step(run, listed("COMPLETE"))
    assert d.effects == (WakeAt(GRACE_UNTIL),)
    assert run_step(d.run, Tick(), now=NOW + QUIET).effects == (WakeAt(GRACE_UNTIL),)


QUIET_LISTINGS = [
    (NOW + QUIET, NOW + timedelta(seconds=20), WakeAt(NOW + timedelta(seconds=50))),
    (NOW + QUIET, NOW + QUIET, WakeAt(NOW + 2 * QUIET)),
    (NOW + QUIET, NOW + SLACK, WakeAt(NOW + QUIET + SLACK)),
    (GRACE_UNTIL - timedelta(seconds=5), GRACE_UNTIL - timedelta(seconds=10), WakeAt(GRACE_UNTIL)),
]


@pytest.mark.parametrize(("now", "newest", "wake"), QUIET_LISTINGS)
def test_a_newer_object_in_the_prefix_waits_until_it_is_quiet_s_old_bounded_by_grace(
    now: datetime, newest: datetime, wake: WakeAt
) -> None:
    listing = PrefixListed((obj("logs/train.log", at=NOW), obj("events.out", at=newest)))
    d = run_step(verified_grace(), listing, now=now)
    assert (d.effects, d.transition, d.run.phase) == ((wake,), None, P.GRACE)


@pytest.mark.parametrize("event", [THROTTLED, DENIED], ids=["transient", "permanent"])
def test_a_failed_quiet_check_only_costs_the_early_end(event: EffectFailed) -> None:
    d = run_step(verified_grace(), event, now=NOW + QUIET)
    assert (d.effects, d.transition, d.run.phase) == ((WakeAt(GRACE_UNTIL),), None, P.GRACE)


def test_until_quiet_grace_still_ends_at_grace_until() -> None:
    d = run_step(verified_grace(on_complete="terminate"), Tick(), now=GRACE_UNTIL)
    assert (d.run.phase, d.effects) == (P.TERMINATING, (TERMINATE,))
    assert d.run.reason == "grace over; terminate requested (on_complete=terminate)"


# -- nudges from the events queue --------------------------------------------------------------


@pytest.mark.parametrize("phase", ACTIVE)
def test_an_instance_nudge_describes_this_one_instance_now_in_every_active_phase(
    phase: Phase,
) -> None:
    # Direct: the queue message is deleted only once the observation it caused is committed.
    run = make_run(phase)
    d = run_step(run, Nudge("instance"))
    assert (d.effects, d.transition, d.persist, d.run) == (
        (ObserveInstance(direct=True),), None, False, run,
    )  # fmt: skip


@pytest.mark.parametrize("phase", [P.RUNNING, P.STALLED])
def test_a_prefix_nudge_lists_a_running_prefix_now_without_waiting_for_the_next_check(
    phase: Phase,
) -> None:
    due = NOW + timedelta(minutes=10)
    run = make_run(phase, checks=4, next_check_at=due)
    assert run_step(run, Tick()).effects == (WakeAt(due),)
    d = run_step(run, Nudge("prefix"))
    assert (d.effects, d.transition) == ((LIST_TOP,), None)
    assert (d.run.checks, d.run.next_check_at) == (4, due)


def test_a_prefix_nudge_lists_the_whole_prefix_in_a_grace_that_may_end_early() -> None:
    d = run_step(verified_grace(), Nudge("prefix"), now=NOW + timedelta(seconds=5))
    assert (d.effects, d.transition) == ((LIST_ALL,), None)


@pytest.mark.parametrize(
    ("key", "looks"),
    [
        ("exp1/run42/COMPLETE", True),
        ("exp1/run42/FAILED", True),
        ("exp1/run42/status.json", True),  # the heartbeat: a report to read
        ("exp1/run42/final_metrics.json", True),
        ("exp1/run42/checkpoints/step-900/model.pt", False),
        ("exp1/run42/logs/train.log", False),
        ("exp1/run42/done.tmp", False),
    ],
)
def test_a_prefix_nudge_while_running_lists_only_for_a_key_a_check_watches(
    key: str, looks: bool
) -> None:
    """A job writing checkpoints and logs must not cost a listing per object it writes."""
    d = run_step(make_run(P.RUNNING), Nudge("prefix", key=key))
    assert d.effects == ((LIST_TOP,) if looks else ())
    assert d.transition is None


HEARTBEAT_NUDGES = [
    pytest.param(P.RUNNING, "status.json", "e2", {}, (IngestReport("status.json", "e2", 9),),
                 id="heartbeat-read-without-a-listing"),
    pytest.param(P.RUNNING, "final_metrics.json", "e2", {},
                 (IngestReport("final_metrics.json", "e2", 9),), id="metrics-read-likewise"),
    pytest.param(P.RUNNING, "status.json", "e1", {}, (), id="heartbeat-already-read"),
    pytest.param(P.RUNNING, "status.json", None, {}, (LIST_TOP,), id="no-etag-lists"),
    pytest.param(P.RUNNING, "COMPLETE", "e2", {}, (LIST_TOP,), id="a-marker-lists"),
    pytest.param(P.RUNNING, "final_metrics.json", "e2", {"expect": ["final_metrics.json"]},
                 (LIST_TOP,), id="an-expected-output-lists"),
    pytest.param(P.STALLED, "status.json", "e2", {}, (LIST_TOP,),
                 id="stalled-lists-as-the-age-may-end-the-stall"),
]  # fmt: skip


@pytest.mark.parametrize(("phase", "key", "etag", "spec", "effects"), HEARTBEAT_NUDGES)
def test_a_notified_report_is_read_without_a_listing_while_running(
    phase: Phase, key: str, etag: str | None, spec: dict[str, Any], effects: tuple[Effect, ...]
) -> None:
    """Every heartbeat of a job would otherwise cost a listing as well as its read."""
    run = make_run(
        phase, spec=make_spec(**spec), report_etags=(("final_metrics.json", "e1"),
                                                     ("status.json", "e1"))
    )  # fmt: skip
    size = 9 if etag is not None else None
    d = run_step(run, Nudge("prefix", key=f"exp1/run42/{key}", etag=etag, size=size))
    assert (d.effects, d.transition) == (effects, None)


def test_a_prefix_nudge_in_a_grace_until_quiet_lists_for_any_key() -> None:
    """There any new object means the job is still writing: the quiet clock restarts."""
    nudge = Nudge("prefix", key="exp1/run42/checkpoints/step-900/model.pt")
    d = run_step(verified_grace(), nudge, now=NOW + timedelta(seconds=5))
    assert d.effects == (LIST_ALL,)


@pytest.mark.parametrize(
    ("phase", "state", "acked", "looks"),
    [
        (P.STOPPING, "stopping", True, False),  # what our StopInstances call returned
        (P.STOPPING, "stopped", True, True),
        (P.STOPPING, "stopping", False, True),  # our call has not been answered yet
        (P.TERMINATING, "shutting-down", True, False),
        (P.TERMINATING, "terminated", True, True),
        (P.RUNNING, "stopping", False, True),  # someone else stopped it
    ],
)
def test_an_instance_nudge_skips_only_the_state_our_own_call_already_returned(
    phase: Phase, state: str, acked: bool, looks: bool
) -> None:
    run = make_run(phase, action_acked_at=NOW if acked else None)
    d = run_step(run, Nudge("instance", state=state))
    assert d.effects == ((ObserveInstance(direct=True),) if looks else ())


PREFIX_NUDGE_IGNORED = [
    pytest.param(make_run(p), id=str(p)) for p in ACTIVE if p not in (P.RUNNING, P.STALLED)
] + [
    pytest.param(verified_grace(exited=False), id="grace-process-alive"),
    pytest.param(verified_grace(grace_mode="fixed"), id="grace-fixed"),
    pytest.param(make_run(P.GRACE, spec=checkpoint_spec(), checkpoint=UV, process_exited=True),
                 id="grace-unverified"),
]  # fmt: skip


@pytest.mark.parametrize("run", PREFIX_NUDGE_IGNORED)
def test_a_prefix_nudge_is_ignored_where_a_listing_decides_nothing(run: Run) -> None:
    d = run_step(run, Nudge("prefix"))
    assert (d.effects, d.transition, d.persist, d.run) == ((), None, False, run)


# -- user requests with checkpointing ----------------------------------------------------------


@pytest.mark.parametrize("action", [U.STOP, U.TERMINATE])
def test_a_request_while_running_saves_the_final_checkpoint_first(action: UserAction) -> None:
    d = run_step(make_run(P.RUNNING, spec=checkpoint_spec()), user(action))
    assert (d.run.phase, d.run.outcome, d.effects) == (P.CHECKPOINTING, X, (CKPT,))
    assert (d.run.pending_action, d.run.this_attempt.checkpoint_tries) == (Action(action.value), 1)
    assert d.run.reason == f"{action} requested by user; saving the final checkpoint first"


@pytest.mark.parametrize(
    ("action", "acting", "effect"),
    [(U.STOP, P.STOPPING, STOP), (U.TERMINATE, P.TERMINATING, TERMINATE)],
)
def test_a_requested_run_acts_right_after_verification_without_grace(
    action: UserAction, acting: Phase, effect: ActOnInstance
) -> None:
    run = run_step(make_run(P.RUNNING, spec=checkpoint_spec()), user(action)).run
    run = run_step(run, finished(CP)).run
    d = run_step(run, checked())
    assert (d.run.phase, d.effects, d.run.checkpoint) == (acting, (effect,), V)
    assert (d.run.outcome, d.run.pending_action, d.run.grace_until) == (X, None, None)


@pytest.mark.parametrize(
    ("outcome", "action", "kept"),
    [(C, U.TERMINATE, C), (C, U.STOP, C), (X, U.TERMINATE, X)],
)
def test_a_request_during_checkpointing_only_changes_what_happens_afterwards(
    outcome: Outcome, action: UserAction, kept: Outcome
) -> None:
    run = checkpointing(2, outcome=outcome, on_complete="none")
    d = run_step(run, user(action))
    assert (d.transition, d.effects, d.persist) == (None, (), True)
    assert (d.run.phase, d.run.version, d.run.this_attempt.checkpoint_tries) == (
        P.CHECKPOINTING, run.version, 2,
    )  # fmt: skip
    assert (d.run.pending_action, d.run.outcome) == (Action(action.value), kept)


def test_a_terminate_requested_during_the_completion_checkpoint_wins_at_grace_end() -> None:
    run = run_step(checkpointing(on_complete="stop"), user(U.TERMINATE)).run
    grace = run_step(run, checked()).run
    d = run_step(grace, Tick(), now=GRACE_UNTIL)
    assert (d.run.phase, d.effects) == (P.TERMINATING, (TERMINATE,))
    assert d.run.reason == "grace over; terminate requested (on_complete=stop)"


def test_terminate_of_a_pending_run_with_checkpointing_is_downgraded_to_stop() -> None:
    d = run_step(make_run(P.PENDING, spec=checkpoint_spec()), user(U.TERMINATE))
    assert (d.run.phase, d.run.outcome, d.effects) == (P.STOPPING, X, (STOP,))
    assert d.run.reason == (
        "terminate requested by user; downgraded to stop: no verified checkpoint, "
        "the EBS volume keeps the data"
    )
    assert d.transition is not None and d.transition.detail == {"downgraded": "terminate->stop"}


@pytest.mark.parametrize(("checkpoint", "acting"), [(V, P.TERMINATING), (UV, P.STOPPING)])
def test_terminate_in_grace_needs_the_verified_checkpoint(
    checkpoint: CheckpointStatus, acting: Phase
) -> None:
    run = make_run(P.GRACE, spec=checkpoint_spec(), checkpoint=checkpoint)
    assert run_step(run, user(U.TERMINATE)).run.phase is acting


def test_terminate_of_a_stopping_run_without_a_verified_checkpoint_is_refused() -> None:
    run = make_run(P.STOPPING, spec=checkpoint_spec(), outcome=X, checkpoint=UV)
    with pytest.raises(InvalidTransition):
        run_step(run, user(U.TERMINATE))
    verified = run.evolve(checkpoint=V)
    assert run_step(verified, user(U.TERMINATE)).effects == (TERMINATE,)


# -- resume ------------------------------------------------------------------------------------

RESTORE = RunInstanceCommand(restore_command(make_run(spec=checkpoint_spec())), RESTORE_TIMEOUT_S)
START = RunInstanceCommand(start_command(make_run(spec=checkpoint_spec())), START_TIMEOUT_S)
START_ACTION = ActOnInstance(A.START)


def ended(phase: Phase = P.STOPPED, checkpoint: CheckpointStatus | None = V, **spec: Any) -> Run:
    return make_run(phase, spec=checkpoint_spec(**spec), outcome=C, checkpoint=checkpoint)


def resuming(stage: str = "observe", *, from_scratch: bool = False, **spec: Any) -> Run:
    return make_run(
        P.RESUMING, spec=checkpoint_spec(**spec), outcome=C, checkpoint=V, resume_stage=stage,
        from_scratch=from_scratch,
    )  # fmt: skip


REFUSED_RESUMES = [
    pytest.param(ended(resume_command=()), ResumeRequested(), "has no resume_command",
                 id="no-resume-command"),
    pytest.param(ended(checkpoint=None), ResumeRequested(),
                 "no verified checkpoint to resume from: use `supervisorctl resume run-42 "
                 "--from-scratch`", id="no-checkpoint"),
    pytest.param(ended(checkpoint=UV), ResumeRequested(), "no verified checkpoint",
                 id="unverified-checkpoint"),
    pytest.param(ended(P.TERMINATED), ResumeRequested(), f"instance {INSTANCE} is terminated "
                 "and the spec has no launch_template; add launch_template", id="no-template"),
    pytest.param(ended(P.TERMINATED, None), ResumeRequested(from_scratch=True),
                 "add launch_template", id="no-template-from-scratch"),
    pytest.param(ended(P.DONE), ResumeRequested(), "does not apply", id="done"),
    pytest.param(ended(P.FAILED), ResumeRequested(), "does not apply", id="failed"),
    pytest.param(ended(P.DETACHED), ResumeRequested(), "does not apply", id="detached"),
    pytest.param(resuming(), ResumeRequested(), "does not apply", id="resuming"),
]  # fmt: skip


@pytest.mark.parametrize(("run", "event", "message"), REFUSED_RESUMES)
def test_a_resume_that_cannot_work_is_refused_saying_what_to_do(
    run: Run, event: ResumeRequested, message: str
) -> None:
    with pytest.raises(InvalidTransition) as info:
        run_step(run, event)
    assert message in str(info.value)


def test_a_resume_refused_for_want_of_a_launch_template_shows_a_toml_line_to_add() -> None:
    with pytest.raises(
        InvalidTransition, match=re.escape('add launch_template = { id = "lt-..." }')
    ):
        run_step(ended(P.TERMINATED), ResumeRequested())


@pytest.mark.parametrize(
    ("run", "from_scratch"),
    [(ended(checkpoint=None), True), (ended(checkpoint=UV), True), (ended(), True),
     (ended(P.TERMINATED, launch_template=LAUNCH_TEMPLATE), False),
     (ended(P.CRASHED, None), True)],
)  # fmt: skip
def test_an_accepted_resume_describes_the_instance_first(run: Run, from_scratch: bool) -> None:
    d = run_step(run, ResumeRequested(from_scratch=from_scratch))
    assert (d.run.phase, d.effects) == (P.RESUMING, (ObserveInstance(),))
    assert (d.run.resume.from_scratch, d.run.resume.stage, d.run.attempt) == (
        from_scratch,
        "observe",
        1,
    )
    assert d.transition is not None
    assert d.transition.detail == {"from_scratch": from_scratch, "attempt": 2}


RESUME_OBSERVED = [
    ("observe", {}, S.STOPPED, (START_ACTION,), "starting"),
    ("observe", {}, S.RUNNING, (RESTORE,), "restore"),
    ("starting", {}, S.RUNNING, (RESTORE,), "restore"),
    ("observe", {"from_scratch": True}, S.RUNNING, (START,), "start"),
    ("observe", {"checkpoint_dir": None}, S.RUNNING, (START,), "start"),
    ("observe", {"launch_template": LAUNCH_TEMPLATE}, S.TERMINATED, (LaunchInstance(),),
     "launching"),
    ("starting", {"launch_template": LAUNCH_TEMPLATE}, S.UNKNOWN, (LaunchInstance(),),
     "launching"),
    ("launching", {"launch_template": LAUNCH_TEMPLATE}, S.TERMINATED, (), "launching"),
    ("observe", {}, S.PENDING, (), "observe"),
    ("observe", {}, S.STOPPING, (), "observe"),
    ("starting", {}, S.PENDING, (), "starting"),
    ("restore", {}, S.RUNNING, (), "restore"),
    ("start", {}, S.RUNNING, (), "start"),
]  # fmt: skip


@pytest.mark.parametrize(("stage", "changes", "state", "effects", "next_stage"), RESUME_OBSERVED)
def test_resuming_drives_the_instance_one_stage_per_observation(
    stage: str,
    changes: dict[str, Any],
    state: InstanceState,
    effects: tuple[Effect, ...],
    next_stage: str,
) -> None:
    d = run_step(resuming(stage, **changes), seen(state))
    assert (d.effects, d.transition, d.run.resume.stage) == (effects, None, next_stage)


def test_restore_argv_downloads_the_checkpoint_into_the_checkpoint_dir() -> None:
    assert RESTORE.command.argv() == [
        "restore", "--s3-url", "s3://my-runs/exp1/run42/checkpoints/",
        "--checkpoint-dir", CHECKPOINT_DIR, "--region", "us-east-1",
    ]  # fmt: skip


def test_start_argv_records_the_pid_and_ends_with_the_resume_command_after_dashes() -> None:
    command = start_command(make_run(spec=checkpoint_spec(resume_cwd="/work")))
    assert command.argv() == [
        "start", "--pid-file", PID_FILE, "--cwd", "/work", "--", *RESUME_COMMAND,
    ]  # fmt: skip


def test_a_restored_checkpoint_is_followed_by_the_start_command() -> None:
    d = run_step(resuming("restore"), finished(RS, files=2))
    assert (d.effects, d.run.resume.stage, d.transition) == ((START,), "start", None)


def test_a_started_resume_is_running_again_as_a_new_attempt_with_a_clean_slate() -> None:
    run = with_state(
        resuming("start"), attempt=2, pending_action=A.STOP, grace_until=GRACE_UNTIL,
        action_acked_at=NOW, error_code="X", checks=7, process_exited=True,
        started_at=NOW - timedelta(days=1), interrupt_deadline=DEADLINE, early_checkpoint=True,
        checkpoint_tries=2, instance_ended=S.TERMINATED, seconds_left=3.0, command_tries=4,
        next_check_at=NOW, outputs_seen=(("model.pt", "e1", 10),),
        utilisation=judge((), metric=IdleMetric.CPU, below=5, window_s=600, now=NOW),
        job_ended_at=NOW - timedelta(hours=1),
    )  # fmt: skip
    later = NOW + timedelta(minutes=5)
    d = run_step(run, finished(ST, pid=777), now=later)
    assert (d.run.phase, d.run.attempt, d.run.started_at, d.effects) == (
        P.RUNNING, 3, later, (LIST_TOP,),
    )  # fmt: skip
    assert (d.run.outcome, d.run.checkpoint, d.run.pending_action, d.run.grace_until) == (
        None, None, None, None,
    )  # fmt: skip
    assert (d.run.action_acked_at, d.run.error_code, d.run.checks) == (None, None, 0)
    assert (d.run.process_exited, d.run.resume.from_scratch) == (False, False)
    assert d.run.interrupt_deadline is None
    assert (d.run.this_attempt, d.run.resume) == (AttemptState(), Resume())
    # Any other field (a new one too) either carries over, or starts fresh at its default.
    carried = {"spec", "instance_id", "verified_attempt", "verified_location", "report_etags",
               "running_s_before"}  # fmt: skip
    moved = {"phase", "version", "phase_since", "reason", "attempt", "started_at"}
    for f in dataclasses.fields(Run):
        if f.name in carried:
            assert getattr(d.run, f.name) == getattr(run, f.name), f.name
        elif f.name not in moved:
            fresh = None if f.default is dataclasses.MISSING else f.default
            assert getattr(d.run, f.name) == fresh != getattr(run, f.name), f.name
    # The checkpoint it restored stays the one a later resume restores, until a newer one.
    assert d.run.verified_attempt == 1
    assert d.transition is not None
    assert d.transition.detail == {
        "attempt": 3, "instance_id": INSTANCE, "pid": 777, "from_scratch": False,
    }  # fmt: skip


def test_a_launched_instance_becomes_the_runs_instance_and_is_persisted() -> None:
    run = resuming("launching", launch_template=LAUNCH_TEMPLATE)
    d = run_step(run, InstanceLaunched(NEW_INSTANCE))
    assert (d.persist, d.transition, d.effects) == (True, None, (ObserveInstance(),))
    assert (d.run.instance_id, d.run.resume.stage, d.run.version) == (NEW_INSTANCE, "starting", 3)
    assert run_step(d.run, seen(S.RUNNING)).effects == (RESTORE,)


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (failed(RS, "no manifest"), "ResumeRestoreFailed"),
        (failed(ST, "ENOENT"), "ResumeStartFailed"),
    ],
)
def test_a_failed_restore_or_start_fails_the_run_for_a_person(event: Event, code: str) -> None:
    d = run_step(resuming("restore"), event)
    assert (d.run.phase, d.run.error_code, d.effects) == (P.FAILED, code, ())
    assert d.run.reason.startswith("resume ")


def test_an_undelivered_resume_command_waits_for_the_agent_then_looks_again() -> None:
    undelivered = CommandFinished(RS, CommandResult(CommandStatus.UNDELIVERED, None))
    d = run_step(resuming("restore"), undelivered)
    assert (d.transition, d.effects) == (None, (WakeAt(NOW + timedelta(seconds=AGENT_WAIT_S)),))
    assert (d.run.resume.stage, d.run.resume.command_tries) == ("wait-agent", 1)
    d = run_step(d.run, Tick())
    assert (d.effects, d.run.resume.stage) == ((ObserveInstance(),), "observe")
    assert run_step(d.run, seen(S.RUNNING)).effects == (RESTORE,)


def test_an_agent_that_never_registers_fails_the_resume_after_the_bounded_wait() -> None:
    run = with_state(resuming("restore"), command_tries=AGENT_WAIT_TRIES)
    d = run_step(run, CommandFinished(RS, CommandResult(CommandStatus.UNDELIVERED, None)))
    assert (d.run.phase, d.run.error_code) == (P.FAILED, "ResumeRestoreFailed")


def test_an_instance_gone_without_a_launch_template_fails_the_resume() -> None:
    d = run_step(resuming(), seen(S.TERMINATED))
    assert (d.run.phase, d.run.error_code) == (P.FAILED, "InstanceGone")
    assert d.run.reason == f"instance {INSTANCE} is terminated and the spec has no launch_template"


def test_an_accepted_start_asks_for_a_prompt_describe() -> None:
    d = run_step(resuming("starting"), ActionSucceeded(A.START, S.PENDING))
    assert (d.effects, d.transition) == ((ObserveInstance(),), None)


def test_resuming_armed_after_a_restart_describes_the_instance_again() -> None:
    assert run_step(resuming("restore"), Armed()).effects == (ObserveInstance(),)


def restarted(run: Run) -> Run:
    """The run as the store returns it after a daemon restart: persisted fields only."""
    kept = {f.name: getattr(run, f.name) for f in dataclasses.fields(Run) if f.compare}
    return Run(**kept)


def test_a_from_scratch_resume_still_starts_from_scratch_after_a_daemon_restart() -> None:
    run = run_step(ended(checkpoint=UV), ResumeRequested(from_scratch=True)).run
    after = run_step(restarted(run), Armed()).run
    assert run_step(after, seen(S.RUNNING)).effects == (START,)


# -- the checkpoint a resume restores: the newest verified one, of any attempt -----------------


def test_verifying_the_final_checkpoint_makes_it_the_one_a_resume_restores() -> None:
    run = checkpointing(outcome=X).evolve(attempt=3, verified_attempt=2)
    d = run_step(run, checked())
    assert (d.run.checkpoint, d.run.verified_attempt) == (V, 3)
    failed_ = run_step(checkpointing(3, outcome=X).evolve(verified_attempt=1), failed(CP))
    assert (failed_.run.checkpoint, failed_.run.verified_attempt) == (UV, 1)


@pytest.mark.parametrize("checkpoint", [None, UV])
def test_a_resume_restores_an_earlier_attempts_checkpoint_when_this_one_has_none(
    checkpoint: CheckpointStatus | None,
) -> None:
    run = ended(checkpoint=checkpoint).evolve(attempt=2, verified_attempt=1)
    d = run_step(run, ResumeRequested())
    assert (d.run.phase, d.run.resume.from_scratch) == (P.RESUMING, False)
    assert d.run.reason == "resume requested from its verified checkpoint (attempt 3)"
    assert run_step(d.run, seen(S.RUNNING)).effects == (RESTORE,)
    # After a daemon restart too: what is restored is persisted.
    assert run_step(restarted(d.run), seen(S.RUNNING)).effects == (RESTORE,)


def test_a_resume_without_any_verified_checkpoint_starts_training_from_scratch() -> None:
    run = make_run(
        P.RESUMING, spec=checkpoint_spec(), outcome=C, checkpoint=UV, resume_stage="observe"
    )
    assert run.verified_attempt is None
    assert run_step(run, seen(S.RUNNING)).effects == (START,)


# -- process_exited is persisted ---------------------------------------------------------------


def test_an_until_quiet_grace_can_still_end_early_after_a_daemon_restart() -> None:
    run = restarted(verified_grace())
    assert run.process_exited is True
    d = run_step(run, PrefixListed(()), now=NOW + QUIET + SLACK)
    assert d.run.phase is P.STOPPING


RESUME_TRANSIENT = [
    pytest.param(
        "starting", EffectFailed("StartInstances", "RequestLimitExceeded", "x", transient=True),
        S.STOPPED, START_ACTION, id="start",
    ),
    pytest.param(
        "launching", EffectFailed("RunInstances", "RequestLimitExceeded", "x", transient=True),
        S.TERMINATED, LaunchInstance(), id="launch",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("stage", "event", "state", "effect"), RESUME_TRANSIENT)
def test_a_start_or_launch_that_gave_up_on_transient_errors_is_redriven_by_the_next_observation(
    stage: str, event: EffectFailed, state: InstanceState, effect: Effect
) -> None:
    run = resuming(stage, launch_template=LAUNCH_TEMPLATE)
    d = run_step(run, event)
    assert d.run.phase is P.RESUMING
    assert run_step(d.run, seen(state)).effects == (effect,)


# -- completion after a resume -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "marker_at", "phase"),
    [
        (2, NOW - timedelta(hours=1), P.RUNNING),
        (2, NOW - timedelta(seconds=1), P.RUNNING),
        (2, NOW, P.CHECKPOINTING),
        (2, NOW + timedelta(minutes=1), P.CHECKPOINTING),
        (1, NOW - timedelta(hours=1), P.CHECKPOINTING),
    ],
)
def test_a_resumed_run_completes_only_on_a_marker_written_since_its_attempt_started(
    attempt: int, marker_at: datetime, phase: Phase
) -> None:
    run = make_run(
        P.RUNNING, spec=checkpoint_spec(), attempt=attempt,
        started_at=NOW + timedelta(microseconds=500_000),
    )  # fmt: skip
    later = NOW + timedelta(hours=2)
    d = run_step(run, PrefixListed((obj("done", at=marker_at),)), now=later)
    assert d.run.phase is phase


def test_a_stale_failure_marker_does_not_crash_a_resumed_run() -> None:
    run = make_run(P.RUNNING, spec=checkpoint_spec(), attempt=2, started_at=NOW)
    d = run_step(run, PrefixListed((obj("FAILED", at=NOW - timedelta(hours=1)),)))
    assert (d.run.phase, [type(e) for e in d.effects]) == (P.RUNNING, [WakeAt])


def test_an_observation_of_another_instance_is_stale_and_changes_nothing() -> None:
    run = dataclasses.replace(resuming("starting"), instance_id=NEW_INSTANCE)
    old = InstanceObserved(S.TERMINATED, source="sweep", instance_id=InstanceId(INSTANCE))
    d = run_step(run, old)
    assert (d.run, d.effects, d.transition) == (run, (), None)
    current = InstanceObserved(S.RUNNING, source="sweep", instance_id=NEW_INSTANCE)
    assert run_step(run, current).effects == (RESTORE,)


# -- whether a decision is persisted is computed, not set by hand --------------------------------

STORED_FIELDS = {
    "spec", "phase", "outcome", "version", "phase_since", "reason", "instance_id", "grace_until",
    "action_acked_at", "error_code", "pending_action", "checkpoint", "attempt", "started_at",
    "process_exited", "verified_attempt", "verified_location", "interrupt_deadline",
    "report_etags", "running_s_before", "job_ended_at",
}  # fmt: skip
"""The fields the store writes to the runs row (and reads back after a restart)."""


def test_the_fields_run_compares_are_exactly_the_ones_the_store_keeps() -> None:
    """`step()` judges `persist` by `Run.__eq__`, so it must look at no more and no less."""
    assert {f.name for f in dataclasses.fields(Run) if f.compare} == STORED_FIELDS


def checkpoint_result_of_a_process_already_known_gone() -> Run:
    return checkpointing().evolve(process_exited=True)


# fmt: off
PERSISTED = [
    pytest.param(checkpointing(), finished(CP, exited=True), True, id="process-exited-recorded"),
    pytest.param(checkpointing(), finished(CP, exited=False), False, id="process-fate-unchanged"),
    pytest.param(checkpoint_result_of_a_process_already_known_gone(), finished(CP, exited=True),
                 False, id="process-exit-already-known"),
    pytest.param(make_run(P.RUNNING), ReportIngested("status.json", "e1"), True, id="report-etag"),
    pytest.param(make_run(P.STOPPING), ActionSucceeded(A.STOP, S.STOPPING), True, id="ack"),
    pytest.param(make_run(P.RUNNING), Tick(), False, id="polling-only"),
    pytest.param(make_run(P.RUNNING), listed(), False, id="next-check-scheduled"),
    pytest.param(make_run(P.RUNNING), listed("done"), True, id="transition"),
]
# fmt: on


@pytest.mark.parametrize(("run", "event", "persist"), PERSISTED)
def test_a_decision_is_persisted_exactly_when_a_stored_field_changed(
    run: Run, event: Event, persist: bool
) -> None:
    d = run_step(run, event)
    stored = {name: getattr(d.run, name) for name in STORED_FIELDS}
    assert (d.persist, stored != {name: getattr(run, name) for name in STORED_FIELDS}) == (
        persist,
        persist,
    )


def test_the_checkpoint_steps_process_fate_survives_a_restart() -> None:
    """Whether training exited decides if grace may end early; it was once changed without
    being persisted, so a restart lost it."""
    d = run_step(checkpointing(), finished(CP, exited=True))
    assert (d.transition, d.run.process_exited, d.persist) == (None, True, True)


def test_the_typed_changes_of_a_run_name_exactly_its_fields_with_the_same_types() -> None:
    """`RunChanges` is what keeps `Run.evolve(**changes)` type-checked: it must not drift."""
    declared = {name: t.__forward_arg__ for name, t in RunChanges.__annotations__.items()}
    assert declared == {f.name: f.type for f in dataclasses.fields(Run)}


def test_a_new_attempt_and_a_new_resume_start_from_fresh_sub_state_values() -> None:
    """A resume request starts a fresh `Resume` (nothing of an earlier resume's tries)."""
    run = with_state(ended(), command_tries=AGENT_WAIT_TRIES, resume_stage="wait-agent")
    d = run_step(run, ResumeRequested())
    assert d.run.resume == Resume(ResumeStage.OBSERVE, from_scratch=False, command_tries=0)
