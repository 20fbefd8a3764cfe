"""The transition table and `step()`: every decision about a run is made here.

Two tables are the contract, and tests walk both:

- `TRANSITIONS`: (phase, event type) -> the function that decides (h11's
  `EVENT_TRIGGERED_TRANSITIONS`), written as one row per phase at the end of this module.
  What a phase accepts (`ACCEPTS`) is derived from its keys; any other event raises
  `InvalidTransition` and nothing changes. A new phase or event is a row plus its handler.
- `EDGES`: the legal phase changes. A handler that tried any other change is a bug, and
  `step()` refuses it the same way.

`step()` is pure: it reads no clock (`now` is passed in), does no I/O, and draws jitter only
from the `rng` it is given. The runtime carries out the returned effects and commits the
returned transition.

One rule is enforced in a single place, `_Ctx.act()`: a run with checkpointing configured is
never terminated unless its final checkpoint was verified in S3; the terminate becomes a stop
(the EBS volume keeps the data) and the reason says so.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Unpack

from supervisor.core.backoff import BackoffPolicy, base_delay, checks_made
from supervisor.core.checkpoint import (
    MANIFEST_NAME,
    CommandKind,
    CommandResult,
    CommandStatus,
    InstanceCommand,
)
from supervisor.core.completion import (
    Completed,
    FailureMarked,
    OutputSnapshot,
    evaluate,
    listing_request,
    quiet_request,
    watched_keys,
)
from supervisor.core.effects import (
    ActOnInstance,
    AttachCrashReport,
    AutoResume,
    Effect,
    IngestReport,
    LaunchInstance,
    ListPrefix,
    ObserveInstance,
    ReadObject,
    RunInstanceCommand,
    VerifyCheckpoint,
    WakeAt,
)
from supervisor.core.errors import InvalidTransition
from supervisor.core.eta import (
    POLL_MAX_WITHOUT_ETA_S,
    ProgressSample,
    estimate_end,
    jittered,
    next_check_wait,
    wait_before_check,
    without_eta,
)
from supervisor.core.events import (
    Action,
    ActionSucceeded,
    Armed,
    CheckpointChecked,
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
    SpotInterruptionWarning,
    Tick,
    UserAction,
    UserRequested,
    UtilisationObserved,
)
from supervisor.core.idle import IdleVerdict, judge
from supervisor.core.reports import report_keys
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
from supervisor.core.spec import (
    CheckpointFailure,
    GraceMode,
    OnComplete,
    OnCrash,
    OnInterruption,
    OnRebalance,
    OnStall,
    RunSpec,
)
from supervisor.core.values import InstanceState, ObjectInfo, S3Prefix

P = Phase

_RESUMABLE_PHASES = (P.STOPPED, P.TERMINATED, P.CRASHED, P.INTERRUPTED)

_EDGES = frozenset(
    {
        (P.PENDING, P.RUNNING),
        (P.PENDING, P.CRASHED),
        (P.PENDING, P.INTERRUPTED),  # a spot instance taken back before training started
        (P.RUNNING, P.GRACE),
        (P.RUNNING, P.CHECKPOINTING),
        (P.RUNNING, P.CRASHED),
        (P.RUNNING, P.STOPPED),
        (P.RUNNING, P.TERMINATED),
        (P.CHECKPOINTING, P.GRACE),
        (P.CHECKPOINTING, P.STOPPING),
        (P.CHECKPOINTING, P.TERMINATING),
        (P.CHECKPOINTING, P.STOPPED),
        (P.CHECKPOINTING, P.TERMINATED),
        (P.GRACE, P.STOPPING),
        (P.GRACE, P.TERMINATING),
        (P.GRACE, P.DONE),
        (P.GRACE, P.STOPPED),
        (P.GRACE, P.TERMINATED),
        (P.STOPPING, P.STOPPED),
        (P.STOPPING, P.TERMINATED),
        (P.STOPPING, P.TERMINATING),
        (P.TERMINATING, P.TERMINATED),
        (P.RESUMING, P.RUNNING),
        # spot: the warning starts the checkpoint at once; the instance going ends it (in
        # grace the training is over: the warning ends the grace instead)
        *((p, P.INTERRUPTING) for p in (P.PENDING, P.RUNNING, P.CHECKPOINTING, P.RESUMING)),
        (P.INTERRUPTING, P.INTERRUPTED),
        (P.RUNNING, P.INTERRUPTED),
        # ... unless AWS never takes the instance (see `_interrupt_overdue`)
        *((P.INTERRUPTING, p) for p in (P.RUNNING, P.STOPPING, P.TERMINATING, P.DONE)),
        # the heartbeat: stale -> stalled, fresh again -> running
        (P.RUNNING, P.STALLED),
        (P.STALLED, P.RUNNING),
        # a person's request, from any phase that has not yet acted
        *((p, P.STOPPING) for p in (P.PENDING, P.RUNNING, P.GRACE, P.RESUMING)),
        *((p, P.TERMINATING) for p in (P.PENDING, P.RUNNING, P.RESUMING)),
        *((p, P.RESUMING) for p in _RESUMABLE_PHASES),
        # detach, and a permanent error, from any non-terminal phase
        *((p, P.DETACHED) for p in ACTIVE_PHASES),
        *((p, P.FAILED) for p in ACTIVE_PHASES),
    }
)
# A stalled run is still watched: it can go wherever a running one can.
EDGES: frozenset[tuple[Phase, Phase]] = _EDGES | {
    (P.STALLED, to) for (at, to) in _EDGES if at is P.RUNNING and to is not P.STALLED
}

_ACTING_PHASE = {Action.STOP: P.STOPPING, Action.TERMINATE: P.TERMINATING}
_ON_COMPLETE_ACTION = {
    OnComplete.STOP: Action.STOP,
    OnComplete.TERMINATE: Action.TERMINATE,
    OnComplete.NONE: None,
}
# Budgets for instance commands beyond their own waits (uploads, downloads, start-up).
CHECKPOINT_UPLOAD_BUDGET_S = 1800.0
RESTORE_TIMEOUT_S = 3600.0
START_TIMEOUT_S = 120.0
# How long a resume waits for a new instance's SSM agent: AGENT_WAIT_TRIES x AGENT_WAIT_S.
AGENT_WAIT_TRIES = 20
AGENT_WAIT_S = 15.0
# After a spot warning's deadline, how long the instance may stay before AWS is taken not to
# be coming for it (see `_interrupt_overdue`).
INTERRUPT_OVERDUE_S = 300.0
# S3 keeps whole seconds: a LastModified may be up to 1 s older than the write.
S3_CLOCK_SLACK = timedelta(seconds=1)


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
    to carry out, and whether persisted fields changed (`persist`: computed by `step()` from
    the old and new run, never set by a handler; a transition always changes them)."""

    run: Run
    effects: tuple[Effect, ...] = ()
    transition: Transition | None = None
    persist: bool = False


@dataclass(frozen=True, slots=True)
class Policy:
    """Daemon-wide settings that decisions depend on."""

    poll: BackoffPolicy = field(default_factory=BackoffPolicy)
    poll_max_without_eta_s: float | None = POLL_MAX_WITHOUT_ETA_S
    """The check backoff's cap for a run without an estimated end (core/eta.py `without_eta`);
    None: `poll`'s own cap (with an events queue)."""


def new_run(spec: RunSpec, *, now: datetime) -> Decision:
    """Pure. The first state of a freshly attached run, and its first transition."""
    run = Run(
        spec=spec, phase=P.PENDING, outcome=None, version=1, phase_since=now, reason="attached"
    )
    return Decision(run=run, transition=Transition(None, P.PENDING, now, "attached"))


def run_id_taken(run: Run) -> str:
    """Pure. Why an attach under the id of `run` (already stored) is refused, and what works
    instead. A run id names one run for good (its transitions stay under it), so detaching
    the old run frees nothing: the way forward is a new id, or resuming the old run."""
    spec = run.spec
    if run.phase.is_terminal:
        outcome = f", outcome {run.outcome}" if run.outcome is not None else ""
        state = f"has ended ({run.phase}{outcome})"
    else:
        state = f"is still active ({run.phase})"
    ways = [f"attach this run under a new run id (e.g. {spec.run_id[:120]}-2)"]
    # Suggest a resume only where `step` would take one, so the hint never leads to a refusal.
    from_scratch = run.verified_attempt is None
    try:
        step(run, ResumeRequested(from_scratch=from_scratch), now=run.phase_since,
             policy=Policy(), rng=random.Random(0))  # fmt: skip
    except InvalidTransition:
        pass
    else:
        flag = " --from-scratch" if from_scratch else ""
        ways.append(f"run the old one again with `supervisorctl resume {spec.run_id}{flag}`")
    return (
        f"run id {spec.run_id!r} is taken: that run {state}, and a run id names one run for "
        f"good; {', or '.join(ways)}. Nothing was attached."
    )


def step(run: Run, event: Event, *, now: datetime, policy: Policy, rng: random.Random) -> Decision:
    """Pure. Apply one observed event to a run; return the new run and the effects to carry out.

    Raises `InvalidTransition` (and changes nothing) when the run's phase does not take the
    event, or a request makes no sense in it.
    """
    handler = TRANSITIONS.get((run.phase, type(event)))
    if handler is None:
        raise InvalidTransition(
            f"run {run.spec.run_id} is {run.phase}: {type(event).__name__} does not apply"
        )
    decision = handler(_Ctx(run, now, policy, rng), event)
    if decision.run is not run and decision.run != run:  # `__eq__`: the persisted fields
        decision = replace(decision, persist=True)
    t = decision.transition
    if t is not None and (t.from_phase, t.to_phase) not in EDGES:
        raise InvalidTransition(f"run {run.spec.run_id}: no edge {t.from_phase} -> {t.to_phase}")
    return decision


def checkpoint_command(
    run: Run, *, sigterm_timeout_s: float | None = None, early: bool = False
) -> InstanceCommand:
    """Pure. The instance command that ends training and uploads the newest checkpoint.
    `sigterm_timeout_s` cuts the spec's timeout to fit a spot interruption's notice; `early`
    uploads the newest checkpoint and leaves training running (a rebalance recommendation)."""
    spec = run.spec
    assert spec.checkpoint_dir is not None
    sigterm = spec.sigterm_timeout_s if sigterm_timeout_s is None else sigterm_timeout_s
    location = spec.early_checkpoint_location if early else spec.checkpoint_location
    options: list[tuple[str, str]] = [
        ("run-id", spec.run_id),
        ("checkpoint-dir", spec.checkpoint_dir),
        ("s3-url", str(location)),
        ("sigterm-timeout-s", f"{sigterm:g}"),
        ("on-timeout", str(spec.on_sigterm_timeout)),
        ("region", spec.region),
    ]
    if early:
        options.append(("mode", "early"))
    options += [("pattern", pattern) for pattern in spec.checkpoint_pattern]
    if spec.pid_file:
        options.append(("pid-file", spec.pid_file))
    return InstanceCommand(CommandKind.CHECKPOINT, tuple(options))


def restore_command(run: Run) -> InstanceCommand:
    """Pure. Download the newest verified checkpoint (final, or a rebalance's early one)."""
    spec = run.spec
    assert spec.checkpoint_dir is not None
    return InstanceCommand(
        CommandKind.RESTORE,
        (
            ("s3-url", run.verified_location or str(spec.checkpoint_location)),
            ("checkpoint-dir", spec.checkpoint_dir),
            ("region", spec.region),
        ),
    )


def start_command(run: Run) -> InstanceCommand:
    spec = run.spec
    options: list[tuple[str, str]] = []
    if spec.pid_file:
        options.append(("pid-file", spec.pid_file))
    if spec.resume_cwd:
        options.append(("cwd", spec.resume_cwd))
    return InstanceCommand(CommandKind.START, tuple(options), spec.resume_command)


@dataclass(frozen=True, slots=True)
class _Ctx:
    """What a handler decides from (the run, `now`, the policy, the rng), and the three ways
    to decide: `stay` in the phase, `move` to another (a transition), `act` on the instance
    (an intent). Whether the result must be persisted is for `step()` to work out."""

    run: Run
    now: datetime
    policy: Policy
    rng: random.Random

    def stay(self, *effects: Effect, **changes: Unpack[RunChanges]) -> Decision:
        run = self.run.evolve(**changes) if changes else self.run
        return Decision(run=run, effects=effects)

    def move(
        self,
        to: Phase,
        reason: str,
        /,
        *effects: Effect,
        detail: Mapping[str, Any] | None = None,
        **changes: Unpack[RunChanges],
    ) -> Decision:
        attempt = changes.get("this_attempt", self.run.this_attempt)
        if to not in (P.RUNNING, P.STALLED) and attempt.early_checkpoint:
            # leaving cancels the early checkpoint's step
            changes["this_attempt"] = replace(attempt, early_checkpoint=False)
        changes.update(
            {
                "phase": to,
                "version": self.run.version + 1,
                "phase_since": self.now,
                "reason": reason,
            }
        )
        run = self.run.evolve(**changes)
        transition = Transition(self.run.phase, to, self.now, reason, dict(detail or {}))
        return Decision(run=run, effects=effects, transition=transition)

    def act(
        self,
        action: Action,
        reason: str,
        detail: Mapping[str, Any] | None = None,
        /,
        **changes: Unpack[RunChanges],
    ) -> Decision:
        """Commit the intent (the transition) together with the effect that carries it out.

        The checkpoint invariant lives here: no terminate for a run with checkpointing
        configured unless its checkpoint is verified.
        """
        checkpoint = changes.get("checkpoint", self.run.checkpoint)
        detail = dict(detail or {})
        allowed = _allowed(self.run.evolve(checkpoint=checkpoint), action)
        if allowed is not action:
            action = allowed
            reason += "; downgraded to stop: no verified checkpoint, the EBS volume keeps the data"
            detail["downgraded"] = "terminate->stop"
        changes.update({"action_acked_at": None, "pending_action": None})
        return self.move(
            _ACTING_PHASE[action], reason, ActOnInstance(action), detail=detail, **changes
        )

    def check_prefix(self) -> ListPrefix:
        return ListPrefix(listing_request(self.run.spec))

    def schedule_next_check(self, outputs_seen: OutputSnapshot | None) -> Decision:
        # A job that reports its progress is checked around its estimated end (core/eta.py);
        # one that does not, on the backoff to its tighter cap.
        attempt, poll = self.run.this_attempt, self.policy.poll
        estimate = estimate_end(attempt.progress, self.now)
        until = next_check_wait(
            estimate, self.run.checks, self.now, poll, self.policy.poll_max_without_eta_s
        )
        at = self.now + timedelta(seconds=jittered(until, poll, self.rng))
        ends_at = estimate.ends_at if estimate is not None else None
        return self.stay(
            _wake_by_deadline(self.run, at), checks=self.run.checks + 1, next_check_at=at,
            outputs_seen=outputs_seen, this_attempt=replace(attempt, estimated_end=ends_at),
        )  # fmt: skip

    def quiet_check(self) -> ListPrefix:
        return ListPrefix(quiet_request(self.run.spec))

    def run_checkpoint(self) -> RunInstanceCommand:
        spec = self.run.spec
        return RunInstanceCommand(
            checkpoint_command(self.run), spec.sigterm_timeout_s + CHECKPOINT_UPLOAD_BUDGET_S
        )


# -- handlers, one per (phase, event type) row of `TRANSITIONS` ----------------------------------


def _nothing_to_do(c: _Ctx, _: Event) -> Decision:
    return c.stay()


def _describe_first(c: _Ctx, _: Armed) -> Decision:
    """Pending: look for the instance; stopping/terminating/resuming: describe before acting."""
    return c.stay(ObserveInstance())


def _armed_watched(c: _Ctx, _: Armed) -> Decision:
    # After a restart, the backoff goes on where its schedule would be after this long in the
    # phase, and the first check falls anywhere within one interval at that level: ten
    # thousand runs at the cap are checked at the steady rate from the start, not all within
    # the first 30 s. A check persisted as due sooner is kept.
    run = c.run
    poll = c.policy.poll
    if estimate_end(run.this_attempt.progress, c.now) is None:
        poll = without_eta(poll, c.policy.poll_max_without_eta_s)
    checks = checks_made((c.now - run.phase_since).total_seconds(), poll)
    interval = timedelta(seconds=base_delay(checks, poll))
    due = run.next_check_at
    if due is not None and c.now < due <= c.now + interval:
        return c.stay(_wake_by_deadline(run, due), checks=checks)
    at = c.now + interval * c.rng.random()
    return c.stay(_wake_by_deadline(run, at), checks=checks, next_check_at=at)


def _armed_in_grace(c: _Ctx, _: Armed) -> Decision:
    run = c.run
    assert run.grace_until is not None
    if _until_quiet(run):  # it may be quiet already: look now, not at the limit
        return c.stay(WakeAt(run.grace_until), c.quiet_check())
    return c.stay(WakeAt(run.grace_until))


def _armed_checkpointing(c: _Ctx, _: Armed) -> Decision:
    # The step is idempotent (the process is already gone, the upload is redone).
    return c.stay(c.run_checkpoint(), this_attempt=_first_checkpoint_try(c))


def _armed_interrupting(c: _Ctx, _: Armed) -> Decision:
    if c.run.interrupt_deadline is None:
        return c.stay(ObserveInstance())
    overdue = c.run.interrupt_deadline + timedelta(seconds=INTERRUPT_OVERDUE_S)
    return c.stay(WakeAt(overdue), ObserveInstance())


def _tick_running(c: _Ctx, _: Tick) -> Decision:
    run = c.run
    if _out_of_time(run, c.now):
        return _time_out(c)
    if run.next_check_at is not None and c.now < run.next_check_at:
        return c.stay(_wake_by_deadline(run, run.next_check_at))
    return c.stay(c.check_prefix())


def _tick_stalled(c: _Ctx, event: Tick) -> Decision:
    if _out_of_time(c.run, c.now):
        return _time_out(c)
    if c.run.spec.on_stall is not OnStall.NOTIFY:
        return _apply_stall_policy(c)
    return _tick_running(c, event)


def _tick_interrupting(c: _Ctx, _: Tick) -> Decision:
    return c.stay(ObserveInstance()) if _overdue(c) else c.stay()


def _tick_resuming(c: _Ctx, _: Tick) -> Decision:
    if c.run.resume.stage is ResumeStage.WAIT_AGENT:
        return c.stay(ObserveInstance(), resume=_stage(c, ResumeStage.OBSERVE))
    return c.stay()


def _tick_in_grace(c: _Ctx, _: Tick) -> Decision:
    run = c.run
    assert run.grace_until is not None
    if c.now >= run.grace_until:
        return _end_grace(c, "grace over")
    if _until_quiet(run):
        return c.stay(c.quiet_check())
    return c.stay(WakeAt(run.grace_until))


def _until_quiet(run: Run) -> bool:
    """Grace may end early: until-quiet mode, and with checkpointing, a verified checkpoint
    and the training process gone."""
    return _may_end_early(run, run.checkpoint)


def _may_end_early(run: Run, checkpoint: CheckpointStatus | None) -> bool:
    if run.spec.grace_mode is not GraceMode.UNTIL_QUIET:
        return False
    if not run.spec.checkpointing:
        return True  # no checkpoint step: the quiet prefix alone says the job is done writing
    return checkpoint is CheckpointStatus.VERIFIED and run.process_exited


def _end_grace(c: _Ctx, why: str, detail: Mapping[str, Any] | None = None) -> Decision:
    run = c.run
    action = run.pending_action or _ON_COMPLETE_ACTION[run.spec.on_complete]
    if action is None:
        return c.move(P.DONE, f"{why}; on_complete=none leaves the instance running", detail=detail)
    return c.act(action, f"{why}; {action} requested (on_complete={run.spec.on_complete})", detail)


def _enter_grace(
    c: _Ctx, reason: str, detail: Mapping[str, Any], /, **changes: Unpack[RunChanges]
) -> Decision:
    run = c.run
    grace_until = c.now + timedelta(seconds=run.spec.grace_s)
    first_wake = grace_until
    if _may_end_early(run, changes.get("checkpoint", run.checkpoint)):
        # Quiet is counted from the job's end (its marker's LastModified), not from when the
        # supervisor saw it: a completion found late by a check may be quiet already. After
        # the checkpoint step, its upload is the last write: quiet counts from now.
        ended = changes.get("job_ended_at", run.job_ended_at) or c.now
        if run.spec.checkpointing:
            ended = c.now
        quiet_from_end = ended + timedelta(seconds=run.spec.quiet_s)
        first_wake = min(grace_until, max(c.now, quiet_from_end))
    changes["grace_until"] = grace_until
    return c.move(P.GRACE, reason, WakeAt(first_wake), detail=detail, **changes)


def _ended_phase(state: InstanceState) -> Phase:
    return P.STOPPED if state in (InstanceState.STOPPING, InstanceState.STOPPED) else P.TERMINATED


_InstanceHandler = Callable[[_Ctx, InstanceObserved], Decision]


def _of_this_instance(handler: _InstanceHandler) -> _InstanceHandler:
    """An observation of another instance (a sweep that began before a resume switched
    instances) is stale: it changes nothing."""

    @functools.wraps(handler)
    def handle(c: _Ctx, event: InstanceObserved) -> Decision:
        if event.instance_id is not None and event.instance_id != c.run.instance_id:
            return c.stay()
        return handler(c, event)

    return handle


def _first_checkpoint_try(c: _Ctx) -> AttemptState:
    return replace(c.run.this_attempt, checkpoint_tries=1)


def _ended(run: Run, state: InstanceState) -> AttemptState:
    return replace(run.this_attempt, instance_ended=state)


def _seen(event: InstanceObserved) -> dict[str, Any]:
    return {"instance_state": str(event.state), "source": event.source}


@_of_this_instance
def _pending_observed(c: _Ctx, event: InstanceObserved) -> Decision:
    run, state = c.run, event.state
    if state is InstanceState.RUNNING:
        return c.move(
            P.RUNNING, "instance running", c.check_prefix(), detail=_seen(event),
            checks=0, next_check_at=None, started_at=run.started_at or c.now,
        )  # fmt: skip
    if state is InstanceState.PENDING:
        return c.stay()
    if run.spec.spot:
        # Level-triggered: a spot instance that goes was taken back, whether its warning
        # came first or not; the same last look as after a warning decides.
        return c.stay(c.check_prefix(), this_attempt=_ended(run, state))
    reason = f"instance ended before training started (instance {state})"
    return _crashed(c, reason, _seen(event))


@_of_this_instance
def _watched_observed(c: _Ctx, event: InstanceObserved) -> Decision:
    if event.state.is_alive or c.run.this_attempt.instance_ended is not None:
        return c.stay()
    # Level-triggered: one last look at the prefix decides completed or crashed.
    return c.stay(c.check_prefix(), this_attempt=_ended(c.run, event.state))


@_of_this_instance
def _checkpointing_observed(c: _Ctx, event: InstanceObserved) -> Decision:
    if event.state.is_alive:
        return c.stay()
    return _gone_with_nothing_left_to_do(c, event, checkpoint=CheckpointStatus.UNVERIFIED)


@_of_this_instance
def _grace_observed(c: _Ctx, event: InstanceObserved) -> Decision:
    return c.stay() if event.state.is_alive else _gone_with_nothing_left_to_do(c, event)


def _gone_with_nothing_left_to_do(
    c: _Ctx, event: InstanceObserved, **changes: Unpack[RunChanges]
) -> Decision:
    return c.move(
        _ended_phase(event.state),
        f"instance {event.state} during {c.run.phase}; nothing left to do",
        detail=_seen(event),
        **changes,
    )


@_of_this_instance
def _stopping_observed(c: _Ctx, event: InstanceObserved) -> Decision:
    state = event.state
    if state is InstanceState.STOPPED:
        return c.move(P.STOPPED, "instance stopped", detail=_seen(event))
    if state.is_gone:
        return c.move(P.TERMINATED, f"instance already gone ({state})", detail=_seen(event))
    if state.is_alive and c.run.action_acked_at is None:
        return c.stay(ActOnInstance(Action.STOP))
    return c.stay()


@_of_this_instance
def _terminating_observed(c: _Ctx, event: InstanceObserved) -> Decision:
    state = event.state
    if state in (InstanceState.TERMINATED, InstanceState.UNKNOWN):
        return c.move(P.TERMINATED, f"instance {state}", detail=_seen(event))
    if state is not InstanceState.SHUTTING_DOWN and c.run.action_acked_at is None:
        return c.stay(ActOnInstance(Action.TERMINATE))
    return c.stay()


@_of_this_instance
def _interrupting_observed(c: _Ctx, event: InstanceObserved) -> Decision:
    if event.state.is_alive:
        return _interrupt_overdue(c, event.state) if _overdue(c) else c.stay()
    if c.run.this_attempt.instance_ended is not None:
        return c.stay()
    # One last look: a marker written just before the warning means training completed.
    return c.stay(c.check_prefix(), this_attempt=_ended(c.run, event.state))


_ListingHandler = Callable[[_Ctx, PrefixListed], Decision]


def _reading_reports(judge: _ListingHandler) -> _ListingHandler:
    """Judge the listing; and read each report file the job changed since it was last read."""

    @functools.wraps(judge)
    def handle(c: _Ctx, event: PrefixListed) -> Decision:
        decision = judge(c, event)
        seen = dict(c.run.report_etags)
        keys = report_keys(c.run.spec.heartbeat_file)
        ingest = tuple(
            IngestReport(o.key, o.etag, o.size)
            for o in event.objects
            if o.key in keys and seen.get(o.key) != o.etag
        )
        return replace(decision, effects=ingest + decision.effects) if ingest else decision

    return handle


def _on_report(c: _Ctx, event: ReportIngested) -> Decision:
    etags = dict(c.run.report_etags)
    etags[event.key] = event.etag
    if event.progress is not None:
        return _progressed(c, event.progress, tuple(sorted(etags.items())))
    return c.stay(report_etags=tuple(sorted(etags.items())))


def _progressed(
    c: _Ctx, sample: ProgressSample, report_etags: tuple[tuple[str, str], ...]
) -> Decision:
    """A heartbeat with a step: a new estimate of the end; a check brought forward when the
    end is nearer than the check scheduled before this heartbeat was read."""
    run = c.run
    progress = run.this_attempt.progress.add(sample)
    estimate = estimate_end(progress, c.now)
    attempt = replace(run.this_attempt, progress=progress,
                      estimated_end=estimate.ends_at if estimate is not None else None)  # fmt: skip
    due = run.next_check_at
    if estimate is None or due is None or run.phase not in (P.RUNNING, P.STALLED):
        return c.stay(report_etags=report_etags, this_attempt=attempt)
    sooner = c.now + timedelta(seconds=wait_before_check(estimate.ends_at, c.now, c.policy.poll))
    if sooner >= due:
        return c.stay(report_etags=report_etags, this_attempt=attempt)
    return c.stay(_wake_by_deadline(run, sooner), report_etags=report_etags,
                  this_attempt=attempt, next_check_at=sooner)  # fmt: skip


@_reading_reports
def _grace_listed(c: _Ctx, event: PrefixListed) -> Decision:
    return _quiet_listed(c, event) if _until_quiet(c.run) else c.stay()


@_reading_reports
def _last_look_listed(c: _Ctx, event: PrefixListed) -> Decision:
    """Pending (spot) or interrupting, once the instance went: the last look decides."""
    run = c.run
    if run.this_attempt.instance_ended is None:
        return c.stay()
    # A failure marker here is most likely the shutdown killing the job: not evidence.
    verdict = evaluate(run.spec, event.objects, run.outputs_seen, since=_cutoff(run))
    why = _taken_back(run)
    if isinstance(verdict, Completed):
        why = f"{verdict.evidence}; {why}"
        return _interrupted(c, why, run.this_attempt.instance_ended, outcome=Outcome.COMPLETED)
    return _interrupted(c, why, run.this_attempt.instance_ended)


@_reading_reports
def _watched_listed(c: _Ctx, event: PrefixListed) -> Decision:
    run = c.run
    verdict = evaluate(run.spec, event.objects, run.outputs_seen, since=_cutoff(run))
    if isinstance(verdict, FailureMarked):
        return c.stay(ReadObject(verdict.key), job_ended_at=verdict.ended_at)
    if isinstance(verdict, Completed):
        if run.this_attempt.instance_ended is not None:
            return c.move(
                _ended_phase(run.this_attempt.instance_ended),
                f"{verdict.evidence}; instance was already {run.this_attempt.instance_ended}",
                outcome=Outcome.COMPLETED, job_ended_at=verdict.ended_at,
            )  # fmt: skip
        action = _ON_COMPLETE_ACTION[run.spec.on_complete]
        if run.spec.checkpointing:
            return c.move(
                P.CHECKPOINTING,
                f"{verdict.evidence}; ending training and saving the final checkpoint",
                c.run_checkpoint(),
                outcome=Outcome.COMPLETED, pending_action=action,
                this_attempt=_first_checkpoint_try(c), job_ended_at=verdict.ended_at,
            )  # fmt: skip
        return _enter_grace(
            c,
            verdict.evidence,
            {},
            outcome=Outcome.COMPLETED,
            pending_action=action,
            job_ended_at=verdict.ended_at,
        )
    if run.this_attempt.instance_ended is not None:
        if run.spec.spot:
            return _interrupted(
                c,
                f"spot instance {run.this_attempt.instance_ended} without a request from the "
                "supervisor",
                run.this_attempt.instance_ended,
            )
        return _crashed(
            c,
            f"instance {run.this_attempt.instance_ended} without a request from the supervisor, "
            "and no completion marker",
        )
    return _heartbeat(c, event.objects, verdict.outputs)


def _taken_back(run: Run) -> str:
    """Why a spot run whose instance went, while interrupting or still pending, is over."""
    if run.phase is P.PENDING:
        return (
            f"spot instance {run.this_attempt.instance_ended} before training started, "
            "without a request from the supervisor"
        )
    return f"spot instance {run.this_attempt.instance_ended} after the interruption warning"


def _crashed(c: _Ctx, reason: str, detail: Mapping[str, Any] | None = None) -> Decision:
    """The run crashed: record it, and attach the job's crash report if it left one."""
    return c.move(P.CRASHED, reason, AttachCrashReport(c.run.spec.crash_report),
                  detail=detail, outcome=Outcome.CRASHED)  # fmt: skip


# -- the heartbeat --------------------------------------------------------------------------


def _heartbeat(
    c: _Ctx, objects: tuple[ObjectInfo, ...], outputs: OutputSnapshot | None
) -> Decision:
    """No verdict yet: judge the heartbeat, then schedule the next check."""
    run, spec = c.run, c.run.spec
    age = _heartbeat_age(run, objects, c.now)
    timeout = spec.stall_timeout_s
    scheduled = c.schedule_next_check(outputs_seen=outputs)
    if age is None or timeout is None:
        return scheduled
    detail = {"heartbeat_age_s": round(age, 3), "stall_timeout_s": timeout}
    if run.phase is P.STALLED and age <= timeout:
        return c.move(P.RUNNING, f"heartbeat {spec.heartbeat_file} is fresh again ({age:.0f}s old)",
                      *scheduled.effects, detail=detail, **_polling(scheduled.run))  # fmt: skip
    if run.phase is P.RUNNING and age > timeout:
        reason = (
            f"heartbeat {spec.heartbeat_file} is {age:.0f}s old (stall timeout {timeout:g}s) "
            f"while the instance runs; on_stall={spec.on_stall}"
        )
        if spec.on_stall is OnStall.NOTIFY:
            return c.move(P.STALLED, reason, *scheduled.effects, detail=detail,
                          **_polling(scheduled.run))  # fmt: skip
        # Record the stall, then act on it at once (the next tick applies the policy).
        return c.move(P.STALLED, reason, WakeAt(c.now), detail=detail, outputs_seen=outputs)
    return scheduled


def _polling(run: Run) -> RunChanges:
    return {
        "checks": run.checks,
        "next_check_at": run.next_check_at,
        "outputs_seen": run.outputs_seen,
    }


def _heartbeat_age(run: Run, objects: tuple[ObjectInfo, ...], now: datetime) -> float | None:
    """Seconds since the job last wrote its heartbeat (this attempt's), or None."""
    if run.spec.stall_timeout_s is None:
        return None
    cutoff = _cutoff(run)
    for obj in objects:
        if obj.key == run.spec.heartbeat_file:
            if cutoff is not None and obj.last_modified < cutoff.replace(microsecond=0):
                return None  # an earlier attempt's heartbeat
            return max(0.0, (now - obj.last_modified - S3_CLOCK_SLACK).total_seconds())
    return None


def _apply_stall_policy(c: _Ctx) -> Decision:
    spec = c.run.spec
    action = Action.STOP if spec.on_stall is OnStall.CHECKPOINT_STOP else Action.TERMINATE
    why = f"stalled; on_stall={spec.on_stall}"
    if spec.checkpointing:
        return c.move(
            P.CHECKPOINTING, f"{why}: saving the final checkpoint, then {action}",
            c.run_checkpoint(), outcome=Outcome.STALLED, pending_action=action,
            this_attempt=_first_checkpoint_try(c),
        )  # fmt: skip
    return c.act(action, f"{why}: {action} requested", outcome=Outcome.STALLED)


def _cutoff(run: Run) -> datetime | None:
    """Markers written before a resumed attempt started are an earlier attempt's."""
    return run.started_at if run.attempt > 1 else None


def _quiet_listed(c: _Ctx, event: PrefixListed) -> Decision:
    """The prefix is quiet when nothing under it is newer than `quiet_s` by its LastModified,
    and no upload is under way. S3 keeps whole seconds, so the newest write may be up to 1 s
    younger than it says: a quiet of at least quiet_s - 1 s. That is what the setting asks
    for (nothing new for about that long); a second more, at every run's end, buys nothing."""
    run = c.run
    assert run.grace_until is not None
    quiet = timedelta(seconds=run.spec.quiet_s)
    newest = max((o.last_modified for o in event.objects), default=None)
    if event.uploads_in_progress:  # an object still being uploaded: look again a quiet later
        return c.stay(WakeAt(min(run.grace_until, c.now + quiet)))
    if newest is None or c.now - newest >= quiet:
        saved = max(0.0, (run.grace_until - c.now).total_seconds())
        done = "checkpoint verified, training process exited, " if run.spec.checkpointing else ""
        return _end_grace(
            c,
            f"grace ended early: {done}prefix quiet for {run.spec.quiet_s:g}s and no upload "
            f"in progress ({saved:.0f}s of grace saved)",
            {"grace_saved_s": round(saved, 3)},
        )
    return c.stay(WakeAt(min(run.grace_until, newest + quiet)))


def _on_read(c: _Ctx, event: ObjectRead) -> Decision:
    if event.key != c.run.spec.failure_marker:
        return c.stay()
    body = event.body.strip()
    summary = body[:500] or "(empty)"
    return _crash_policy(
        c, f"failure marker {event.key}: {summary}", {"failure_marker_body": body[:4000]}
    )


# -- crashed runs stop billing, and a maximum duration (issue 13) -------------------------------

_ON_CRASH_ACTION = {OnCrash.STOP: Action.STOP, OnCrash.TERMINATE: Action.TERMINATE}


def _crash_policy(c: _Ctx, reason: str, detail: Mapping[str, Any]) -> Decision:
    """The failure marker appeared: attach the crash report, then act on the instance as
    `on_crash` says, like any stop (the checkpoint step first when configured; terminate under
    the checkpoint invariant of `_Ctx.act`). The outcome is `crashed` throughout; the phase
    ends `stopped`/`terminated`, or `crashed` when the instance is kept (or already gone)."""
    run, spec = c.run, c.run.spec
    if run.this_attempt.instance_ended is not None:
        return _crashed(c, reason, detail)  # nothing left to stop
    action = _ON_CRASH_ACTION.get(spec.on_crash)
    if action is None:
        return _crashed(
            c, f"{reason}; on_crash=keep leaves the instance running for a person", detail
        )
    report = AttachCrashReport(spec.crash_report)
    why = f"{reason}; on_crash={spec.on_crash}"
    if spec.checkpointing:
        return c.move(
            P.CHECKPOINTING, f"{why}: saving the final checkpoint, then {action}", report,
            c.run_checkpoint(), detail=detail, outcome=Outcome.CRASHED, pending_action=action,
            this_attempt=_first_checkpoint_try(c),
        )  # fmt: skip
    decision = c.act(action, f"{why}: {action} requested", detail, outcome=Outcome.CRASHED)
    return replace(decision, effects=(report, *decision.effects))


def max_duration_deadline(run: Run) -> datetime | None:
    """Pure. When the run's `max_duration` runs out, if it has one and this attempt has
    started: the earlier attempts' running time counts against it."""
    limit = run.spec.max_duration
    if limit is None or run.started_at is None:
        return None
    return run.started_at + timedelta(seconds=limit - run.running_s_before)


def _out_of_time(run: Run, now: datetime) -> bool:
    deadline = max_duration_deadline(run)
    return deadline is not None and now >= deadline


def _wake_by_deadline(run: Run, at: datetime) -> WakeAt:
    """Wake at `at`, or at the max_duration deadline if that comes first."""
    deadline = max_duration_deadline(run)
    return WakeAt(at if deadline is None else min(at, deadline))


def _attempt_ran_s(run: Run) -> float:
    """Seconds the ended attempt ran: from its start to the phase it ended in (a resume
    starts from that phase)."""
    if run.started_at is None:
        return 0.0
    return max(0.0, (run.phase_since - run.started_at).total_seconds())


def _time_out(c: _Ctx) -> Decision:
    """The run has been running for its max_duration: end it like a person's `stop`."""
    run, spec = c.run, c.run.spec
    assert spec.max_duration is not None and run.started_at is not None
    ran = run.running_s_before + (c.now - run.started_at).total_seconds()
    why = (
        f"max_duration {spec.max_duration:g}s reached (running {ran:.0f}s over "
        f"{run.attempt} attempt(s))"
    )
    detail = {"max_duration_s": spec.max_duration, "running_s": round(ran, 3)}
    if spec.checkpointing:
        return c.move(
            P.CHECKPOINTING, f"{why}: saving the final checkpoint, then stop", c.run_checkpoint(),
            detail=detail, outcome=Outcome.TIMED_OUT, pending_action=Action.STOP,
            this_attempt=_first_checkpoint_try(c),
        )  # fmt: skip
    return c.act(Action.STOP, f"{why}: stop requested", detail, outcome=Outcome.TIMED_OUT)


_CommandHandler = Callable[[_Ctx, CommandFinished], Decision]


def _not_early(handler: _CommandHandler) -> _CommandHandler:
    """Past running/stalled: leaving them cancelled the early step, a late result is stale."""

    @functools.wraps(handler)
    def handle(c: _Ctx, event: CommandFinished) -> Decision:
        return c.stay() if event.early else handler(c, event)

    return handle


@_not_early
def _checkpoint_finished(c: _Ctx, event: CommandFinished) -> Decision:
    run, result = c.run, event.result
    if event.kind is not CommandKind.CHECKPOINT:
        return c.stay()
    process = result.result.get("process")
    exited = bool(process.get("exited", False)) if isinstance(process, Mapping) else False
    if result.ok:
        return c.stay(_verify(result, run.spec.checkpoint_location), process_exited=exited)
    return _checkpoint_attempt_failed(
        c, f"checkpoint step failed: {result.error()}", {"process": process} if process else {}
    )


def _verify(result: CommandResult, location: S3Prefix, *, early: bool = False) -> VerifyCheckpoint:
    """Verify the manifest where the instance program says it wrote it (else where it goes)."""
    key = str(result.result.get("manifest_key") or location.key(MANIFEST_NAME))
    return VerifyCheckpoint(location.bucket, key, early=early)


def _checkpoint_attempt_failed(c: _Ctx, why: str, detail: Mapping[str, Any]) -> Decision:
    run = c.run
    if run.this_attempt.checkpoint_tries < run.spec.checkpoint_attempts:
        tries = run.this_attempt.checkpoint_tries + 1
        attempt = replace(run.this_attempt, checkpoint_tries=tries)
        return c.stay(c.run_checkpoint(), this_attempt=attempt)
    return _checkpoint_failed(
        c, f"{why} (after {run.this_attempt.checkpoint_tries} attempt(s))", detail
    )


def _checkpoint_failed(c: _Ctx, why: str, detail: Mapping[str, Any]) -> Decision:
    run = c.run
    detail = {**detail, "checkpoint": "unverified"}
    if run.spec.on_checkpoint_failure is CheckpointFailure.KEEP_RUNNING:
        return c.move(
            P.FAILED, f"{why}; instance left running for a person (on_checkpoint_failure)",
            detail=detail, checkpoint=CheckpointStatus.UNVERIFIED,
            error_code="CheckpointUnverified",
        )  # fmt: skip
    if run.outcome is Outcome.COMPLETED:
        return _enter_grace(c, f"{why}; checkpoint_unverified", detail,
                            checkpoint=CheckpointStatus.UNVERIFIED)  # fmt: skip
    action = run.pending_action or Action.STOP
    return c.act(action, f"{why}; checkpoint_unverified", detail,
                 checkpoint=CheckpointStatus.UNVERIFIED)  # fmt: skip


def _final_checked(c: _Ctx, event: CheckpointChecked) -> Decision:
    run, v = c.run, event.verification
    detail: dict[str, Any] = {
        "files": v.files, "bytes": v.bytes, "verify_s": round(event.seconds, 3),
        "checkpoint_attempt": run.this_attempt.checkpoint_tries,
    }  # fmt: skip
    if event.manifest is not None:
        detail["checkpoint_name"] = event.manifest.checkpoint
        detail["process"] = event.manifest.process.model_dump()
        detail["instance_timings"] = dict(event.manifest.timings)
    if not v.ok:
        detail["problems"] = list(v.problems)
        return _checkpoint_attempt_failed(c, f"checkpoint not verified: {v.summary()}", detail)
    reason = f"checkpoint verified: {v.summary()}"
    verified: RunChanges = {
        "checkpoint": CheckpointStatus.VERIFIED, "verified_attempt": run.attempt,
        "verified_location": str(run.spec.checkpoint_location),
    }  # fmt: skip
    if run.outcome is Outcome.COMPLETED:
        return _enter_grace(c, reason, detail, **verified)
    return c.act(run.pending_action or Action.STOP, f"{reason}; acting on the request",
                 detail, **verified)  # fmt: skip


def _resume_action_succeeded(c: _Ctx, event: ActionSucceeded) -> Decision:
    return c.stay(ObserveInstance()) if event.action is Action.START else c.stay()


def _action_succeeded(c: _Ctx, event: ActionSucceeded) -> Decision:
    if event.action is Action.START or c.run.phase is not _ACTING_PHASE[event.action]:
        return c.stay()
    state = event.state_after
    detail = {"instance_state": str(state)}
    final = state is InstanceState.TERMINATED or (
        event.action is Action.STOP and state is InstanceState.STOPPED
    )
    if final:
        return c.move(_ended_phase(state), f"{event.action} confirmed (instance {state})",
                      detail=detail, action_acked_at=c.now)  # fmt: skip
    # Accepted, not yet final (e.g. "stopping"): record it so a restart never re-issues it,
    # and ask the reconciler to confirm soon.
    return c.stay(ObserveInstance(), action_acked_at=c.now)


def _failed_for_good(c: _Ctx, event: EffectFailed) -> Decision:
    return c.move(
        P.FAILED, f"{event.operation} failed: {event.code}: {event.message}",
        detail=_failure(event), error_code=event.code,
    )  # fmt: skip


def _failure(event: EffectFailed) -> dict[str, Any]:
    return {"operation": event.operation, "error_code": event.code, "message": event.message}


def _grace_effect_failed(c: _Ctx, _: EffectFailed) -> Decision:
    # A failed quiet check only costs the early end: wait for the grace limit.
    assert c.run.grace_until is not None
    return c.stay(WakeAt(c.run.grace_until))


def _last_look_failed(c: _Ctx, event: EffectFailed) -> Decision | None:
    """The last look at the prefix failed; the instance is gone all the same."""
    if c.run.this_attempt.instance_ended is None:
        return None
    why = f"{_taken_back(c.run)} (last look at the prefix failed: {event.code})"
    return _interrupted(c, why, c.run.this_attempt.instance_ended)


def _pending_effect_failed(c: _Ctx, event: EffectFailed) -> Decision:
    # (otherwise a failed describe: the next observation decides)
    return _last_look_failed(c, event) or c.stay()


def _interrupting_effect_failed(c: _Ctx, event: EffectFailed) -> Decision:
    if (last_look := _last_look_failed(c, event)) is not None:
        return last_look
    if not event.transient:
        return _failed_for_good(c, event)
    return _interrupt_retry_or_give_up(c)  # while time and attempts are left


def _watched_effect_failed(c: _Ctx, event: EffectFailed) -> Decision:
    if not event.transient:
        return _failed_for_good(c, event)
    return c.schedule_next_check(c.run.outputs_seen)


def _checkpointing_effect_failed(c: _Ctx, event: EffectFailed) -> Decision:
    if not event.transient:
        return _failed_for_good(c, event)
    why = f"{event.operation}: {event.code}"
    return _checkpoint_attempt_failed(c, why, _failure(event))


def _resuming_effect_failed(c: _Ctx, event: EffectFailed) -> Decision:
    if not event.transient:
        return _failed_for_good(c, event)
    # Start/launch gave up on transient errors: look again and redo what is still needed
    # (a launch is idempotent through its client token).
    return c.stay(ObserveInstance(), resume=_stage(c, ResumeStage.OBSERVE))


def _acting_effect_failed(c: _Ctx, event: EffectFailed) -> Decision:
    # Stopping/terminating: the intent stays open; the next observation re-drives it.
    return c.stay() if event.transient else _failed_for_good(c, event)


def _user_request(c: _Ctx, event: UserRequested) -> Decision:
    if event.action is UserAction.DETACH:
        return _detach(c)
    run, action = c.run, Action(event.action.value)
    if (run.phase, _ACTING_PHASE[_allowed(run, action)]) not in EDGES:
        raise _cannot(run, action)
    return c.act(action, f"{action} requested by user", outcome=run.outcome or Outcome.CANCELLED)


def _detach(c: _Ctx) -> Decision:
    return c.move(P.DETACHED, "detached by user request; instance left as it is")


def _cannot(run: Run, action: Action) -> InvalidTransition:
    downgraded = _allowed(run, action) is not action
    why = " (terminate needs a verified checkpoint; it would be a stop)" if downgraded else ""
    return InvalidTransition(f"run {run.spec.run_id} is already {run.phase}: cannot {action}{why}")


def _user_while_watching(c: _Ctx, event: UserRequested) -> Decision:
    run = c.run
    if event.action is UserAction.DETACH or not run.spec.checkpointing:
        return _user_request(c, event)
    action = Action(event.action.value)
    return c.move(
        P.CHECKPOINTING, f"{action} requested by user; saving the final checkpoint first",
        c.run_checkpoint(), outcome=run.outcome or Outcome.CANCELLED, pending_action=action,
        this_attempt=_first_checkpoint_try(c),
    )  # fmt: skip


def _user_while_checkpointing(c: _Ctx, event: UserRequested) -> Decision:
    if event.action is UserAction.DETACH:
        return _detach(c)
    # The checkpoint step is already under way; act on the request once it is done.
    action = Action(event.action.value)
    return c.stay(pending_action=action, outcome=c.run.outcome or Outcome.CANCELLED)


def _user_while_interrupting(c: _Ctx, event: UserRequested) -> Decision:
    # (Its edges to stopping/terminating are only for an instance AWS did not take.)
    if event.action is UserAction.DETACH:
        return _detach(c)
    raise _cannot(c.run, Action(event.action.value))


def _allowed(run: Run, action: Action) -> Action:
    """The action the checkpoint invariant allows for this run (see `_Ctx.act`)."""
    if (
        action is Action.TERMINATE
        and run.spec.checkpointing
        and run.checkpoint is not CheckpointStatus.VERIFIED
    ):
        return Action.STOP
    return action


def _on_monitor_failed(c: _Ctx, event: MonitorFailed) -> Decision:
    return c.move(
        P.FAILED, f"monitor failed: {event.error_type}: {event.message}",
        detail={"error_type": event.error_type, "message": event.message},
        error_code=event.error_type,
    )  # fmt: skip


_STATES_ALREADY_KNOWN = frozenset({(P.STOPPING, "stopping"), (P.TERMINATING, "shutting-down")})
"""(phase, reported state) pairs an accepted stop/terminate call already told us about."""


def _nudge(c: _Ctx, event: Nudge) -> Decision:
    """An event says something changed: look now (level-triggered: the look decides).

    Two looks are skipped, as they could show nothing new: an instance event reporting the
    very state our own accepted stop/terminate call already returned (the next event, or
    sweep, brings the end state), and, while running, an object that is not one of the keys a
    check watches (a job's checkpoints and logs would otherwise cost a listing each). Outside
    running, stalled and an until-quiet grace, a listing decides nothing."""
    run = c.run
    if event.target != "instance":
        return c.stay()
    if (run.phase, event.state) in _STATES_ALREADY_KNOWN and run.action_acked_at:
        return c.stay()
    return c.stay(ObserveInstance(direct=True))


def _nudge_watched(c: _Ctx, event: Nudge) -> Decision:
    if event.target == "instance":
        return _nudge(c, event)
    spec = c.run.spec
    if event.key is not None and spec.prefix.relative(event.key) not in watched_keys(spec):
        return c.stay()
    report = _rewritten_report(c.run, event)
    if report is not None:
        return c.stay(*report)
    return c.stay(c.check_prefix())


def _rewritten_report(run: Run, event: Nudge) -> tuple[IngestReport, ...] | None:
    """While running, a notification of a report file alone (the heartbeat every minute, the
    metrics) is read at once, one GET, without a listing: a report is no evidence of the end,
    and the listing's only other use, the heartbeat's age, can only show a stall that a fresh
    write is not. None: the notification needs a listing (a marker or an expected output, no
    ETag or size to read by, or a stalled run that a fresh heartbeat may make running)."""
    spec = run.spec
    if run.phase is not P.RUNNING or event.key is None:
        return None
    if event.etag is None or event.size is None:
        return None
    key = spec.prefix.relative(event.key)
    evidence = (*spec.markers, spec.failure_marker, *spec.expect)
    if key not in report_keys(spec.heartbeat_file) or key in evidence:
        return None
    if dict(run.report_etags).get(key) == event.etag:
        return ()  # already read (a notification sent twice, or a listing got there first)
    return (IngestReport(key, event.etag, event.size),)


def _nudge_in_grace(c: _Ctx, event: Nudge) -> Decision:
    if event.target == "instance" or not _until_quiet(c.run):
        return _nudge(c, event)
    return c.stay(c.quiet_check())


# -- spot interruptions -------------------------------------------------------------------------


def _warning(c: _Ctx, event: SpotInterruptionWarning) -> tuple[str, dict[str, Any], float]:
    """Why (for the reason), the detail, and the seconds left until the deadline."""
    remaining = (event.deadline - c.now).total_seconds()
    detail: dict[str, Any] = {
        "deadline": event.deadline.isoformat(), "seconds_left": round(remaining, 3),
        "instance_action": event.action,
    }  # fmt: skip
    why = f"spot interruption warning ({event.action}, {max(remaining, 0):.0f}s left)"
    return why, detail, remaining


def _warned_in_grace(c: _Ctx, event: SpotInterruptionWarning) -> Decision:
    # Training completed and its checkpoint step is done: the rest of the grace would only
    # leave the instance to AWS (or, if AWS never takes it, idle until the deadline has long
    # passed). Act now, as the grace's end would, under the checkpoint invariant.
    why, detail, _ = _warning(c, event)
    return _end_grace(c, f"{why}; training had completed: grace ended", detail)


def _warned_while_watched(c: _Ctx, event: SpotInterruptionWarning) -> Decision:
    run, spec = c.run, c.run.spec
    why, detail, remaining = _warning(c, event)
    if (ended := run.this_attempt.instance_ended) is not None:
        # The instance's end came first (events arrive in any order) and its last look at the
        # prefix failed: no checkpoint can be taken now, so interrupting begins with the last
        # look, whose answer (or failure) ends the run as any interruption ends.
        return c.move(
            P.INTERRUPTING, f"{why}; the instance had already ended ({ended}): one last look",
            _overdue_wake(event), c.check_prefix(), detail=detail,
            interrupt_deadline=event.deadline, outcome=run.outcome or Outcome.INTERRUPTED,
        )  # fmt: skip
    if not spec.checkpointing or remaining <= 0:
        return _warned(c, event)
    # No grace and no stop call: AWS takes the instance; the notice is for the checkpoint.
    sigterm = max(0.0, min(spec.sigterm_timeout_s, remaining / 2))
    detail["sigterm_timeout_s"] = round(sigterm, 3)
    command = RunInstanceCommand(checkpoint_command(run, sigterm_timeout_s=sigterm), remaining)
    return c.move(
        P.INTERRUPTING, f"{why}; saving the final checkpoint now", _overdue_wake(event), command,
        detail=detail, interrupt_deadline=event.deadline, this_attempt=_first_checkpoint_try(c),
        outcome=run.outcome or Outcome.INTERRUPTED,
    )  # fmt: skip


def _warned(
    c: _Ctx,
    event: SpotInterruptionWarning,
    note: str | None = None,
    /,
    **changes: Unpack[RunChanges],
) -> Decision:
    """Interrupting without a checkpoint step of its own: wait for AWS to take the instance."""
    run = c.run
    why, detail, _ = _warning(c, event)
    if note is None:
        configured = run.spec.checkpointing
        note = f"during {run.phase}" if configured else "no checkpoint step configured"
    changes.update(
        {"interrupt_deadline": event.deadline, "outcome": run.outcome or Outcome.INTERRUPTED}
    )
    why = f"{why}; {note}"
    return c.move(
        P.INTERRUPTING, why, _overdue_wake(event), ObserveInstance(), detail=detail, **changes
    )


def _warned_during_resume(c: _Ctx, event: SpotInterruptionWarning) -> Decision:
    # The resume's attempt has begun (it has its instance) and ends here, before training
    # restarted: it counts against max_restarts, and its final checkpoint is none.
    attempt = c.run.attempt + 1
    note = f"during resuming, before training restarted (attempt {attempt})"
    return _warned(c, event, note, attempt=attempt, started_at=c.now, checkpoint=None)


def _overdue_wake(event: SpotInterruptionWarning) -> WakeAt:
    return WakeAt(event.deadline + timedelta(seconds=INTERRUPT_OVERDUE_S))


def _overdue(c: _Ctx) -> bool:
    deadline = c.run.interrupt_deadline
    return deadline is not None and c.now >= deadline + timedelta(seconds=INTERRUPT_OVERDUE_S)


def _interrupt_overdue(c: _Ctx, state: InstanceState) -> Decision:
    """AWS did not take the instance back: don't leave the run (and the bill) hanging."""
    run = c.run
    assert run.interrupt_deadline is not None
    late = (c.now - run.interrupt_deadline).total_seconds()
    why = f"instance still {state} {late:.0f}s after the interruption deadline"
    if run.outcome is Outcome.COMPLETED:
        return _end_grace(c, f"{why}; training had completed")
    idle = ""
    if _warned_while_resuming(run):
        idle = "the resume had not restarted training"
    elif run.spec.checkpointing:
        idle = "training was ended for the checkpoint"  # (or would have been, had it started)
    if idle:
        return c.act(run.pending_action or Action.STOP, f"{why}; {idle}: stopping the idle "
                     "instance (resume it with `supervisorctl resume`)")  # fmt: skip
    return c.move(
        P.RUNNING, f"{why}; AWS did not take it back: watching the run again", c.check_prefix(),
        outcome=None, interrupt_deadline=None, checks=0, next_check_at=None,
    )  # fmt: skip


def _warned_while_resuming(run: Run) -> bool:
    """An interruption that began during a resume: that warning started the attempt, so the
    attempt's start and the phase's start are the same moment (both persisted)."""
    return run.phase is P.INTERRUPTING and run.started_at == run.phase_since


def _seconds_left(c: _Ctx) -> float | None:
    deadline = c.run.interrupt_deadline
    return None if deadline is None else round((deadline - c.now).total_seconds(), 3)


@_not_early
def _interrupt_command_finished(c: _Ctx, event: CommandFinished) -> Decision:
    run, result = c.run, event.result
    if event.kind is not CommandKind.CHECKPOINT:
        return c.stay()
    if result.ok:
        return c.stay(_verify(result, run.spec.checkpoint_location))
    return _interrupt_retry_or_give_up(c)


def _interrupt_retry_or_give_up(c: _Ctx) -> Decision:
    run, left = c.run, _seconds_left(c)
    if not run.spec.checkpointing or run.this_attempt.checkpoint_tries == 0:
        return c.stay()  # no checkpoint step under way in this interruption
    if (
        left is not None
        and left > 1
        and run.this_attempt.checkpoint_tries < run.spec.checkpoint_attempts
    ):
        command = checkpoint_command(run, sigterm_timeout_s=0)  # the process was signalled
        tries = run.this_attempt.checkpoint_tries + 1
        attempt = replace(run.this_attempt, checkpoint_tries=tries)
        return c.stay(RunInstanceCommand(command, left), this_attempt=attempt)
    attempt = replace(run.this_attempt, seconds_left=left)
    return c.stay(checkpoint=CheckpointStatus.UNVERIFIED, this_attempt=attempt)


def _interrupt_checked(c: _Ctx, event: CheckpointChecked) -> Decision:
    if not event.verification.ok:
        return _interrupt_retry_or_give_up(c)
    left = replace(c.run.this_attempt, seconds_left=_seconds_left(c))
    return c.stay(checkpoint=CheckpointStatus.VERIFIED,
                  verified_attempt=c.run.attempt, this_attempt=left,
                  verified_location=str(c.run.spec.checkpoint_location))  # fmt: skip


def _interrupted(
    c: _Ctx, reason: str, state: InstanceState, *, outcome: Outcome | None = None
) -> Decision:
    run, spec = c.run, c.run.spec
    detail: dict[str, Any] = {
        "instance_state": str(state),
        "checkpoint": str(run.checkpoint) if run.checkpoint else None,
        "seconds_left_when_verified": run.this_attempt.seconds_left,
    }
    effects: tuple[Effect, ...] = ()
    outcome = outcome or run.outcome or Outcome.INTERRUPTED
    training_cut_short = outcome is Outcome.INTERRUPTED and run.pending_action is None
    if spec.on_interruption is OnInterruption.RESUME and training_cut_short:
        restarts = run.attempt - 1
        if state.is_gone and spec.launch_template is None:
            reason += "; not resumed: the instance is gone and the spec has no launch_template"
        elif restarts < spec.max_restarts:
            # The newest verified checkpoint, of this attempt or an earlier one.
            effects = (AutoResume(from_scratch=run.verified_attempt is None),)
            reason += f"; resuming (restart {restarts + 1} of {spec.max_restarts})"
        else:
            reason += f"; not resumed: max_restarts ({spec.max_restarts}) reached"
    return c.move(P.INTERRUPTED, reason, *effects, detail=detail, outcome=outcome)


# -- resume -----------------------------------------------------------------------------------


def _on_resume(c: _Ctx, event: ResumeRequested) -> Decision:
    run, spec = c.run, c.run.spec
    who = f"run {spec.run_id}"
    if not spec.resume_command:
        raise InvalidTransition(
            f"{who} has no resume_command: it is part of the run spec, given at attach "
            "(--resume-command or resume_command in --spec)"
        )
    if not event.from_scratch and run.verified_attempt is None:
        raise InvalidTransition(
            f"{who} has no verified checkpoint to resume from: use `supervisorctl resume "
            f"{spec.run_id} --from-scratch` to start it without one"
        )
    if run.phase is P.TERMINATED and spec.launch_template is None:
        raise InvalidTransition(
            f"{who}: instance {run.instance_id} is terminated and the spec has no "
            'launch_template; add launch_template = { id = "lt-..." } (or name) to the '
            "run spec to resume on a new instance"
        )
    how = "from scratch" if event.from_scratch else "from its verified checkpoint"
    return c.move(
        P.RESUMING, f"resume requested {how} (attempt {run.attempt + 1})", ObserveInstance(),
        detail={"from_scratch": event.from_scratch, "attempt": run.attempt + 1},
        resume=Resume(from_scratch=event.from_scratch), action_acked_at=None,
        running_s_before=run.running_s_before + _attempt_ran_s(run),
    )  # fmt: skip


@_of_this_instance
def _resuming_observed(c: _Ctx, event: InstanceObserved) -> Decision:
    run, state, stage = c.run, event.state, c.run.resume.stage
    if stage not in (ResumeStage.OBSERVE, ResumeStage.STARTING, ResumeStage.LAUNCHING):
        return c.stay()  # restore/start in progress or waiting for the agent
    if state is InstanceState.RUNNING:
        # Only a verified checkpoint is restored (also after a restart lost `from_scratch`).
        verified = run.spec.checkpointing and run.verified_attempt is not None
        if run.resume.from_scratch or not verified:
            return c.stay(RunInstanceCommand(start_command(run), START_TIMEOUT_S),
                          resume=_stage(c, ResumeStage.START))  # fmt: skip
        return c.stay(RunInstanceCommand(restore_command(run), RESTORE_TIMEOUT_S),
                      resume=_stage(c, ResumeStage.RESTORE))  # fmt: skip
    if state is InstanceState.STOPPED and stage is ResumeStage.OBSERVE:
        return c.stay(ActOnInstance(Action.START), resume=_stage(c, ResumeStage.STARTING))
    if state.is_gone and stage in (ResumeStage.OBSERVE, ResumeStage.STARTING):
        if run.spec.launch_template is None:
            return c.move(
                P.FAILED,
                f"instance {run.instance_id} is {state} and the spec has no launch_template",
                error_code="InstanceGone",
            )
        return c.stay(LaunchInstance(), resume=_stage(c, ResumeStage.LAUNCHING))
    if state.is_gone and stage is ResumeStage.LAUNCHING:
        return c.stay()  # the launch result (InstanceLaunched) is what matters
    return c.stay()  # pending/stopping: the next observation decides


def _stage(c: _Ctx, stage: ResumeStage) -> Resume:
    return replace(c.run.resume, stage=stage)


def _on_launched(c: _Ctx, event: InstanceLaunched) -> Decision:
    return c.stay(ObserveInstance(), instance_id=event.instance_id,
                  resume=_stage(c, ResumeStage.STARTING))  # fmt: skip


@_not_early
def _resume_command_finished(c: _Ctx, event: CommandFinished) -> Decision:
    run, result = c.run, event.result
    if result.status is CommandStatus.UNDELIVERED and run.resume.command_tries < AGENT_WAIT_TRIES:
        # A freshly started or launched instance reports "running" before its SSM agent
        # has registered: wait, look again, and send the command again.
        at = c.now + timedelta(seconds=AGENT_WAIT_S)
        tries = run.resume.command_tries + 1
        waiting = replace(run.resume, stage=ResumeStage.WAIT_AGENT, command_tries=tries)
        return c.stay(WakeAt(at), resume=waiting)
    if not result.ok:
        return c.move(
            P.FAILED, f"resume {event.kind} failed: {result.error()}",
            detail={"command": str(event.kind), "result": dict(result.result)},
            error_code=f"Resume{str(event.kind).capitalize()}Failed",
        )  # fmt: skip
    if event.kind is CommandKind.RESTORE:
        return c.stay(RunInstanceCommand(start_command(run), START_TIMEOUT_S),
                      resume=_stage(c, ResumeStage.START))  # fmt: skip
    if event.kind is not CommandKind.START:
        return c.stay()
    attempt = run.attempt + 1
    return c.move(
        P.RUNNING,
        f"resumed on {run.instance_id} (attempt {attempt}, "
        f"{'from scratch' if run.resume.from_scratch else 'checkpoint restored'})",
        c.check_prefix(),
        detail={"attempt": attempt, "instance_id": run.instance_id,
                "pid": result.result.get("pid"), "from_scratch": run.resume.from_scratch},
        **_new_attempt(c),
    )  # fmt: skip


def _new_attempt(c: _Ctx) -> RunChanges:
    """The next attempt at training, as changes: its number and start, and everything the last
    attempt left (how it ended, its intent, acknowledgement and deadline, the polling state,
    the sub-state values) fresh. What carries over: the spec, the instance, the verified
    checkpoint a later resume restores, and the report files already read."""
    return {
        "attempt": c.run.attempt + 1, "started_at": c.now, "outcome": None, "checkpoint": None,
        "pending_action": None, "grace_until": None, "action_acked_at": None, "error_code": None,
        "process_exited": False, "interrupt_deadline": None, "checks": 0, "next_check_at": None,
        "outputs_seen": None, "this_attempt": AttemptState(), "resume": Resume(),
        "utilisation": None, "job_ended_at": None,
    }  # fmt: skip


# -- rebalance recommendations: an early checkpoint, training goes on ---------------------------


def _rebalance_watched(c: _Ctx, _: RebalanceRecommended) -> Decision:
    run, spec = c.run, c.run.spec
    if spec.on_rebalance is not OnRebalance.CHECKPOINT or run.this_attempt.early_checkpoint:
        return c.stay()  # ignored by policy, or already under way
    command = checkpoint_command(run, early=True)
    # In the background: a spot warning during the upload must start the final step at once.
    effect = RunInstanceCommand(command, CHECKPOINT_UPLOAD_BUDGET_S, background=True)
    return c.stay(effect, this_attempt=replace(run.this_attempt, early_checkpoint=True))


def _early_command_finished(c: _Ctx, event: CommandFinished) -> Decision:
    run, result = c.run, event.result
    if event.kind is not CommandKind.CHECKPOINT or not run.this_attempt.early_checkpoint:
        return c.stay()
    if not result.ok:
        return c.stay(this_attempt=_early_over(c))  # training goes on; the final step is as it was
    return c.stay(_verify(result, run.spec.early_checkpoint_location, early=True))


def _early_over(c: _Ctx) -> AttemptState:
    return replace(c.run.this_attempt, early_checkpoint=False)


def _early_checked(c: _Ctx, event: CheckpointChecked) -> Decision:
    if not c.run.this_attempt.early_checkpoint:
        return c.stay()
    if not event.verification.ok:
        return c.stay(this_attempt=_early_over(c))
    # A resume can restore it; the final checkpoint (and the terminate rule) is unchanged.
    location = str(c.run.spec.early_checkpoint_location)
    return c.stay(this_attempt=_early_over(c), verified_attempt=c.run.attempt,
                  verified_location=location)  # fmt: skip


# -- idle detection from utilisation: idle is a stall, and --on-stall decides ------------------

IDLE_REASON = "idle: "
"""How the reason of a stall found by idle detection begins (the heartbeat's is another):
only such a stall ends when utilisation rises again."""


def _utilisation_observed(c: _Ctx, event: UtilisationObserved) -> Decision:
    """Judge the sweep's datapoints: idle -> stalled with the reason (metric, level, how long),
    then the stall policy as for a stale heartbeat (on_stall=notify keeps watching, and busy
    again makes an idle stall running again). No datapoints is never idleness."""
    run, spec = c.run, c.run.spec
    if event.instance_id is not None and event.instance_id != run.instance_id:
        return c.stay()  # another instance's datapoints: a sweep older than a resume
    if spec.idle_below is None or spec.idle_for_s is None or event.metric != spec.idle_metric:
        return c.stay()
    seen = judge(event.datapoints, metric=spec.idle_metric, below=spec.idle_below,
                 window_s=spec.idle_for_s, now=c.now)  # fmt: skip
    detail = {
        "idle_metric": str(seen.metric),
        "idle_below": seen.below,
        "idle_for_s": seen.window_s,
        "peak": seen.peak,
        "datapoints": seen.datapoints,
    }
    if run.phase is P.STALLED:
        if seen.verdict is IdleVerdict.BUSY and run.reason.startswith(IDLE_REASON):
            return c.move(P.RUNNING, f"busy again: {seen.describe()}", detail=detail,
                          utilisation=seen)  # fmt: skip
        return c.stay(utilisation=seen)
    # Only time spent running counts: datapoints from before (a boot, an earlier attempt)
    # are not the training's.
    running_for = (c.now - run.phase_since).total_seconds()
    if seen.verdict is not IdleVerdict.IDLE or running_for < spec.idle_for_s:
        return c.stay(utilisation=seen)
    reason = f"{IDLE_REASON}{seen.describe()} while the instance runs; on_stall={spec.on_stall}"
    if spec.on_stall is OnStall.NOTIFY:
        return c.move(P.STALLED, reason, detail=detail, utilisation=seen)
    # Record the stall, then act on it at once (the next tick applies the policy).
    return c.move(P.STALLED, reason, WakeAt(c.now), detail=detail, utilisation=seen)


# -- the table -----------------------------------------------------------------------------------

_Handler = Callable[[_Ctx, Any], Decision]
_Row = Mapping[type[Any], _Handler]

_IN_EVERY_ACTIVE_PHASE: _Row = {
    Armed: _describe_first,
    Tick: _nothing_to_do,
    UserRequested: _user_request,
    MonitorFailed: _on_monitor_failed,
    Nudge: _nudge,
    RebalanceRecommended: _nothing_to_do,  # only a watched run takes an early checkpoint
    ReportIngested: _on_report,
}
_WATCHED: _Row = {
    **_IN_EVERY_ACTIVE_PHASE,
    Armed: _armed_watched,
    InstanceObserved: _watched_observed,
    PrefixListed: _watched_listed,
    ObjectRead: _on_read,
    EffectFailed: _watched_effect_failed,
    UserRequested: _user_while_watching,
    Nudge: _nudge_watched,
    SpotInterruptionWarning: _warned_while_watched,
    # a rebalance recommendation's early checkpoint
    RebalanceRecommended: _rebalance_watched,
    CommandFinished: _early_command_finished,
    CheckpointChecked: _early_checked,
    # idle detection from utilisation
    UtilisationObserved: _utilisation_observed,
}

_TABLE: Mapping[Phase, _Row] = {
    P.PENDING: {
        **_IN_EVERY_ACTIVE_PHASE,
        InstanceObserved: _pending_observed,
        # (a spot instance gone while pending: one last look at the prefix, as interrupting)
        PrefixListed: _last_look_listed,
        EffectFailed: _pending_effect_failed,
        SpotInterruptionWarning: _warned,
    },
    P.RUNNING: {**_WATCHED, Tick: _tick_running},
    P.STALLED: {**_WATCHED, Tick: _tick_stalled},
    P.CHECKPOINTING: {
        **_IN_EVERY_ACTIVE_PHASE,
        Armed: _armed_checkpointing,
        InstanceObserved: _checkpointing_observed,
        UserRequested: _user_while_checkpointing,
        CommandFinished: _checkpoint_finished,
        CheckpointChecked: _final_checked,
        EffectFailed: _checkpointing_effect_failed,
        SpotInterruptionWarning: _warned,
    },
    P.GRACE: {
        **_IN_EVERY_ACTIVE_PHASE,
        Armed: _armed_in_grace,
        Tick: _tick_in_grace,
        InstanceObserved: _grace_observed,
        Nudge: _nudge_in_grace,
        PrefixListed: _grace_listed,
        EffectFailed: _grace_effect_failed,
        SpotInterruptionWarning: _warned_in_grace,
    },
    P.INTERRUPTING: {
        **_IN_EVERY_ACTIVE_PHASE,
        Armed: _armed_interrupting,
        Tick: _tick_interrupting,
        InstanceObserved: _interrupting_observed,
        UserRequested: _user_while_interrupting,
        CommandFinished: _interrupt_command_finished,
        CheckpointChecked: _interrupt_checked,
        PrefixListed: _last_look_listed,
        EffectFailed: _interrupting_effect_failed,
    },
    P.STOPPING: {
        **_IN_EVERY_ACTIVE_PHASE,
        InstanceObserved: _stopping_observed,
        ActionSucceeded: _action_succeeded,
        EffectFailed: _acting_effect_failed,
    },
    P.TERMINATING: {
        **_IN_EVERY_ACTIVE_PHASE,
        InstanceObserved: _terminating_observed,
        ActionSucceeded: _action_succeeded,
        EffectFailed: _acting_effect_failed,
    },
    P.RESUMING: {
        **_IN_EVERY_ACTIVE_PHASE,
        Tick: _tick_resuming,
        InstanceObserved: _resuming_observed,
        ActionSucceeded: _resume_action_succeeded,
        InstanceLaunched: _on_launched,
        CommandFinished: _resume_command_finished,
        EffectFailed: _resuming_effect_failed,
        SpotInterruptionWarning: _warned_during_resume,
    },
    # A terminal phase takes nothing, except a resume where training can go on.
    **{phase: {} for phase in Phase if phase in TERMINAL_PHASES},
    **{phase: {ResumeRequested: _on_resume} for phase in _RESUMABLE_PHASES},
}

TRANSITIONS: Mapping[tuple[Phase, type[Any]], _Handler] = {
    (phase, event): handler for phase in Phase for event, handler in _TABLE[phase].items()
}
"""(phase, event type) -> the function that decides: the one table `step()` looks up."""

ACCEPTS: Mapping[Phase, frozenset[type[Any]]] = {
    phase: frozenset(event for (at, event) in TRANSITIONS if at is phase) for phase in Phase
}
"""The event types each phase takes: derived from the table's keys."""
