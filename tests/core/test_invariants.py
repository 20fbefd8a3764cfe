"""Invariants of step() that hold for every run, checked on random walks and on each path into
terminating: a run with checkpointing is never terminated without a verified checkpoint, every
transition is an edge of the table, each one bumps the version by exactly one, and a report
file is read only when its ETag is new."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, get_args

import pytest

from supervisor.core.checkpoint import (
    CommandKind,
    CommandResult,
    CommandStatus,
    Verification,
)
from supervisor.core.effects import (
    ActOnInstance,
    AttachCrashReport,
    AutoResume,
    Effect,
    IngestReport,
)
from supervisor.core.errors import InvalidTransition
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
from supervisor.core.idle import Datapoint, IdleMetric
from supervisor.core.machine import ACCEPTS, EDGES, INTERRUPT_OVERDUE_S, Decision, new_run, step
from supervisor.core.reports import report_keys
from supervisor.core.run import CheckpointStatus, Outcome, Phase, Run
from supervisor.core.spec import RunSpec
from supervisor.core.values import InstanceId, InstanceState, ObjectInfo
from tests.core.builders import (
    GRACE_UNTIL,
    LAUNCH_TEMPLATE,
    NOW,
    POLICY,
    checked,
    checkpoint_spec,
    finished,
    make_run,
    obj,
    run_step,
    warning,
)

P, S, A = Phase, InstanceState, Action
V, UV = CheckpointStatus.VERIFIED, CheckpointStatus.UNVERIFIED
TERMINATE = ActOnInstance(A.TERMINATE)
STOP = ActOnInstance(A.STOP)


def terminates(effects: tuple[Effect, ...]) -> bool:
    return TERMINATE in effects


def check_decision(before: Run, d: Decision, now: datetime) -> None:
    """Every invariant one decision must keep, whatever the event was."""
    after = d.run
    if terminates(d.effects):
        assert V in (before.checkpoint, after.checkpoint), "terminate without a verified checkpoint"
    if P.INTERRUPTING in (before.phase, after.phase):
        # AWS takes a spot instance back by itself: the supervisor never calls stop on it,
        # unless the instance outlived the interruption deadline by INTERRUPT_OVERDUE_S.
        acts = [e for e in d.effects if isinstance(e, ActOnInstance)]
        deadline = before.interrupt_deadline
        overdue = deadline is not None and now >= deadline + timedelta(seconds=INTERRUPT_OVERDUE_S)
        assert acts == [] or overdue, "acted on an instance that is being interrupted"
    resumes = [e for e in d.effects if isinstance(e, AutoResume)]
    if resumes:
        assert d.transition is not None and after.phase is P.INTERRUPTED, "resume not by policy"
        assert before.attempt - 1 < before.spec.max_restarts, "resumed beyond max_restarts"
        # From the newest verified checkpoint, of this attempt or an earlier one.
        assert resumes == [AutoResume(from_scratch=after.verified_attempt is None)]
    if after.verified_attempt is not None:
        assert after.verified_attempt <= after.attempt
    if after.verified_attempt != before.verified_attempt:
        # Only a checkpoint of the attempt under way is ever verified; nothing forgets one.
        assert after.verified_attempt == after.attempt == before.attempt, "verified a stale one"
    if {before.phase, after.phase} <= {P.RUNNING, P.STALLED}:
        # An early (rebalance) checkpoint is never taken for the final one.
        assert after.checkpoint == before.checkpoint, "an early checkpoint became the final one"
    check_reports(before, d)
    if not d.persist:
        # (`Run.__eq__` compares the stored fields: test_machine checks that it does)
        assert after == before, "a stored field changed in a decision that is not persisted"
    t = d.transition
    if t is None:
        assert (after.phase, after.version) == (before.phase, before.version)
        return
    assert (t.from_phase, t.to_phase) in EDGES
    assert (t.from_phase, t.to_phase, t.at) == (before.phase, after.phase, now)
    assert after.version == before.version + 1
    assert (after.phase_since, after.reason) == (now, t.reason)
    if after.phase is P.TERMINATING:
        assert after.checkpoint is V, "entered terminating without a verified checkpoint"
    if after.phase is P.CRASHED:
        assert AttachCrashReport(after.spec.crash_report) in d.effects, "crash report left out"


def check_reports(before: Run, d: Decision) -> None:
    """Reports are read first, each only when its ETag is one the run has not read; a read
    records one key's ETag at a time, persisted, and no key is ever forgotten."""
    reads = [e for e in d.effects if isinstance(e, IngestReport)]
    assert list(d.effects[: len(reads)]) == reads, "a report read after another effect"
    read, now_read = dict(before.report_etags), dict(d.run.report_etags)
    keys = report_keys(before.spec.heartbeat_file)
    for e in reads:
        assert e.key in keys and read.get(e.key) != e.etag, f"{e.key} read again at {e.etag}"
    if now_read != read:
        assert now_read.keys() >= read.keys(), "a read report was forgotten"
        assert len(now_read.items() - read.items()) == 1, "more than one report recorded"
        assert d.persist and d.transition is None, "a read ETag recorded but not persisted"


# -- the random walk ---------------------------------------------------------------------------

Maker = Callable[[random.Random, datetime], Event]
KEYS = ("done", "logs/train.log", "checkpoints/model.pt", "FAILED", "events.out", "status.json")
REPORTS = report_keys("status.json")
AGES_S = (0, 5, 29, 30, 120, 3600)


def written(key: str, at: datetime) -> ObjectInfo:
    """An object last written `at`: rewriting it changes its ETag, as in S3."""
    return obj(key, f"{at:%H%M%S}", at=at)


def _listing(rng: random.Random, now: datetime) -> PrefixListed:
    keys = rng.sample(KEYS, rng.randint(0, len(KEYS)))
    objects: list[ObjectInfo] = [
        written(key, now - timedelta(seconds=rng.choice(AGES_S))) for key in keys
    ]
    return PrefixListed(tuple(objects))


def _progress(rng: random.Random, now: datetime) -> PrefixListed:
    """A listing while training goes on: no verdict, a growing log and history, a fresh or
    stale heartbeat, and the final metrics of an earlier attempt."""
    age = timedelta(seconds=rng.choice(AGES_S))
    return PrefixListed((
        obj("logs/train.log", at=now), written("history.json", now),
        written("status.json", now - age), written("final_metrics.json", NOW),
    ))  # fmt: skip


def _observed(rng: random.Random, _: datetime) -> InstanceObserved:
    # Mostly a healthy instance, so that walks get past pending into training.
    return InstanceObserved(S.RUNNING if rng.random() < 0.6 else rng.choice(list(S)))


def _acted(rng: random.Random, _: datetime) -> ActionSucceeded:
    return ActionSucceeded(rng.choice(list(A)), rng.choice(list(S)))


def _request(rng: random.Random, _: datetime) -> UserRequested:
    return UserRequested(rng.choice([UserAction.STOP, UserAction.TERMINATE]))


def _command(rng: random.Random, _: datetime) -> CommandFinished:
    kind = rng.choice([CommandKind.CHECKPOINT, *CommandKind])
    if rng.random() < 0.6:
        return finished(kind, exited=rng.random() < 0.7, pid=4242)
    status = rng.choice([CommandStatus.FAILED, CommandStatus.TIMED_OUT, CommandStatus.UNDELIVERED])
    return CommandFinished(kind, CommandResult(status, 1, result={"ok": False, "error": "boom"}))


def _checked(rng: random.Random, _: datetime) -> CheckpointChecked:
    if rng.random() < 0.7:
        return checked()
    return CheckpointChecked(Verification(False, 1, 10, ("k: missing in S3",)), None, 0.1)


def _warning(rng: random.Random, now: datetime) -> SpotInterruptionWarning:
    # AWS gives two minutes, less the margin; a late delivery may arrive after the deadline.
    left = rng.choice((-10, 0, 0.5, 3, 45, 110))
    return SpotInterruptionWarning(
        now + timedelta(seconds=left), rng.choice(["terminate", "terminate", "stop", "hibernate"])
    )


def _ingested(rng: random.Random, _: datetime) -> ReportIngested:
    """A stray answer to a read (late, repeated, or of an ETag never listed), now and then of
    a report found unreadable."""
    key = rng.choice(REPORTS)
    error = f"{key} is not JSON: Expecting value" if rng.random() < 0.2 else None
    return ReportIngested(key, f"{rng.randint(0, 9)}", error)


def _failed(rng: random.Random, _: datetime) -> EffectFailed:
    operation = rng.choice(["ListObjectsV2", "StopInstances", "SendCommand", "RunInstances"])
    return EffectFailed(operation, "Code", "message", transient=rng.random() < 0.85)


def _utilisation(rng: random.Random, now: datetime) -> UtilisationObserved:
    """The idle sweep's datapoints over the last 40 minutes: low, none, or one busy."""
    shape = rng.choice(["low", "low", "none", "busy"])
    if shape == "none":
        return UtilisationObserved(IdleMetric.CPU, ())
    values = [1.0] * 9
    if shape == "busy":
        values[rng.randrange(9)] = 90.0
    points = tuple(
        Datapoint(now - timedelta(seconds=300 * (8 - i)), value) for i, value in enumerate(values)
    )
    return UtilisationObserved(IdleMetric.CPU, points)


MAKERS: list[tuple[float, type[Any], Maker]] = [
    (1, Armed, lambda rng, now: Armed()),
    (4, Tick, lambda rng, now: Tick()),
    (4, InstanceObserved, _observed),
    (4, PrefixListed, _listing),
    (3, PrefixListed, _progress),
    (1, ObjectRead, lambda rng, now: ObjectRead(rng.choice(["FAILED", "x"]), "out of memory")),
    (2, ActionSucceeded, _acted),
    (1, EffectFailed, _failed),
    (1, UserRequested, _request),
    (0.2, UserRequested, lambda rng, now: UserRequested(UserAction.DETACH)),
    (0.2, MonitorFailed, lambda rng, now: MonitorFailed("KeyError", "'Contents'")),
    (4, CommandFinished, _command),
    (4, CheckpointChecked, _checked),
    (2, ResumeRequested, lambda rng, now: ResumeRequested(from_scratch=rng.random() < 0.3)),
    (1, InstanceLaunched, lambda rng, now: InstanceLaunched(InstanceId("i-0fedcba9876543210"))),
    (1, Nudge, lambda rng, now: Nudge(rng.choice(["prefix", "instance"]))),
    (0.6, SpotInterruptionWarning, _warning),
    (0.4, RebalanceRecommended, lambda rng, now: RebalanceRecommended()),
    (1, ReportIngested, _ingested),
    (0.5, UtilisationObserved, _utilisation),
]  # fmt: skip
SEEDS = range(800)
"""Enough walks that each edge below is reached a few times (a stall a notified run recovers
from is the rarest)."""
STEPS = 40


def walk_spec(rng: random.Random) -> RunSpec:
    """Checkpointing on, on_complete=terminate; the other checkpoint, spot, stall and
    rebalance knobs drawn at random (on_interruption=resume twice as often as none, so that
    walks go round interrupted -> resuming)."""
    return checkpoint_spec(
        on_complete="terminate",
        grace_mode=rng.choice(["until-quiet", "fixed"]),
        on_checkpoint_failure=rng.choice(["stop", "stop", "keep-running"]),
        checkpoint_attempts=rng.randint(1, 3),
        launch_template=rng.choice([LAUNCH_TEMPLATE, None]),
        spot=rng.random() < 0.5,
        on_interruption=rng.choice(["resume", "resume", "none"]),
        max_restarts=rng.randint(0, 2),
        stall_timeout_s=rng.choice([None, 60.0, 600.0]),
        on_stall=rng.choice(["notify", "checkpoint-stop", "terminate"]),
        on_rebalance=rng.choice(["checkpoint", "ignore"]),
        **rng.choice([{}, {"idle_below": 5.0, "idle_for_s": 600.0}]),
    )


def next_event(rng: random.Random, run: Run, now: datetime) -> Event:
    """Mostly an event the phase takes (so walks get far), sometimes any event at all."""
    taken = ACCEPTS[run.phase]
    makers = MAKERS if rng.random() < 0.2 else [m for m in MAKERS if m[1] in taken]
    weights = [weight for weight, _, _ in makers]
    make = rng.choices([make for _, _, make in makers], weights)[0]
    event = make(rng, now)
    deadline = run.interrupt_deadline
    if (
        isinstance(event, InstanceObserved)
        and run.phase is P.INTERRUPTING
        and deadline is not None
        and now >= deadline
        and rng.random() < 0.6
    ):
        # AWS mostly takes a warned instance back by its deadline (the rest is overdue).
        return InstanceObserved(rng.choice([S.SHUTTING_DOWN, S.TERMINATED, S.STOPPING, S.STOPPED]))
    return event


@dataclass
class WalkStats:
    edges: Counter[tuple[Phase | None, Phase]]
    terminates: int = 0
    downgrades: int = 0
    auto_resumes: int = 0
    reads: int = 0


def walk(seed: int, stats: WalkStats) -> None:
    rng = random.Random(seed)
    now = NOW
    run = new_run(walk_spec(rng), now=now).run
    for _ in range(STEPS):
        if not ACCEPTS[run.phase]:
            break  # done, failed or detached: nothing can happen to this run any more
        now += timedelta(seconds=rng.choice((0, 1, 10, 31, 120, 700)))
        run = apply(seed, run, next_event(rng, run, now), now, stats)


def apply(seed: int, run: Run, event: Event, now: datetime, stats: WalkStats) -> Run:
    """Step one event, check the decision, and answer its report reads as the executor does
    (outside the walk's own draws, so that they do not thin out its other events)."""
    try:
        d = step(run, event, now=now, policy=POLICY, rng=random.Random(seed))
    except InvalidTransition:
        return run
    try:
        check_decision(run, d, now)
    except AssertionError as exc:
        raise AssertionError(f"seed {seed}: {run!r} + {event!r} -> {d!r}: {exc}") from exc
    if d.transition is not None:
        stats.edges[(d.transition.from_phase, d.transition.to_phase)] += 1
        stats.downgrades += "downgraded" in d.transition.detail
    stats.terminates += terminates(d.effects)
    stats.auto_resumes += any(isinstance(e, AutoResume) for e in d.effects)
    run = d.run
    for read in (e for e in d.effects if isinstance(e, IngestReport)):
        stats.reads += 1
        error = None if stats.reads % 5 else f"{read.key} is not JSON: Expecting value"
        run = apply(seed, run, ReportIngested(read.key, read.etag, error), now, stats)
    return run


def test_the_walk_draws_from_every_event_type() -> None:
    for _, kind, make in MAKERS:
        assert all(type(make(random.Random(seed), NOW)) is kind for seed in range(5))
    assert {kind for _, kind, _ in MAKERS} == set(get_args(Event))


def test_no_random_walk_terminates_unverified_or_leaves_the_edges_table() -> None:
    stats = WalkStats(Counter())
    for seed in SEEDS:
        walk(seed, stats)
    # The walks reached the places where the invariant is at stake, more than once.
    must_reach = {
        (P.RUNNING, P.CHECKPOINTING), (P.CHECKPOINTING, P.GRACE), (P.CHECKPOINTING, P.STOPPING),
        (P.CHECKPOINTING, P.TERMINATING), (P.GRACE, P.TERMINATING), (P.GRACE, P.STOPPING),
        (P.STOPPED, P.RESUMING), (P.RESUMING, P.RUNNING), (P.TERMINATING, P.TERMINATED),
        (P.RUNNING, P.INTERRUPTING), (P.CHECKPOINTING, P.INTERRUPTING),
        (P.INTERRUPTING, P.INTERRUPTED), (P.RUNNING, P.INTERRUPTED), (P.INTERRUPTED, P.RESUMING),
        (P.RUNNING, P.STALLED), (P.STALLED, P.RUNNING), (P.STALLED, P.CHECKPOINTING),
        (P.RESUMING, P.INTERRUPTING), (P.INTERRUPTING, P.STOPPING),
    }  # fmt: skip
    assert {edge for edge in must_reach if stats.edges[edge] < 3} == set()
    assert stats.terminates >= 20 and stats.downgrades >= 20 and stats.auto_resumes >= 10
    assert stats.reads >= 500  # and each was answered, now and then as unreadable


# -- every path into terminating ---------------------------------------------------------------


def ckpt_run(phase: Phase, checkpoint: CheckpointStatus | None, **changes: Any) -> Run:
    spec = checkpoint_spec(on_complete="terminate", launch_template=LAUNCH_TEMPLATE)
    return make_run(phase, spec=spec, checkpoint=checkpoint, **changes)


def user(action: UserAction) -> UserRequested:
    return UserRequested(action)


X, C = Outcome.CANCELLED, Outcome.COMPLETED
OVERDUE = NOW - timedelta(seconds=INTERRUPT_OVERDUE_S)
"""An interruption deadline that AWS let pass INTERRUPT_OVERDUE_S ago without taking the
instance."""
QUIET_LISTING = PrefixListed((obj("checkpoints/_manifest.json"),))
LATER = NOW + timedelta(seconds=60)
# fmt: off
TERMINATE_PATHS = [
    pytest.param(ckpt_run(P.GRACE, V), Tick(), GRACE_UNTIL, P.TERMINATING, id="grace-over"),
    pytest.param(ckpt_run(P.GRACE, UV), Tick(), GRACE_UNTIL, P.STOPPING,
                 id="grace-over-unverified"),
    pytest.param(ckpt_run(P.GRACE, V, process_exited=True), QUIET_LISTING, LATER,
                 P.TERMINATING, id="grace-quiet"),
    pytest.param(ckpt_run(P.GRACE, UV), QUIET_LISTING, LATER, P.GRACE,
                 id="grace-listing-unverified"),  # a quiet listing counts only once verified
    pytest.param(ckpt_run(P.GRACE, V), warning(), NOW, P.TERMINATING, id="grace-spot-warning"),
    pytest.param(ckpt_run(P.GRACE, UV), warning(), NOW, P.STOPPING,
                 id="grace-spot-warning-unverified"),
    pytest.param(ckpt_run(P.GRACE, V), user(UserAction.TERMINATE), NOW, P.TERMINATING,
                 id="grace-user"),
    pytest.param(ckpt_run(P.GRACE, UV), user(UserAction.TERMINATE), NOW, P.STOPPING,
                 id="grace-user-unverified"),
    pytest.param(ckpt_run(P.CHECKPOINTING, None, outcome=X, pending_action=A.TERMINATE),
                 checked(), NOW, P.TERMINATING, id="checkpoint-verified-on-request"),
    pytest.param(ckpt_run(P.CHECKPOINTING, None, outcome=X, pending_action=A.TERMINATE,
                          checkpoint_tries=3),
                 checked("k: missing in S3"), NOW, P.STOPPING, id="checkpoint-failed-on-request"),
    pytest.param(ckpt_run(P.PENDING, None), user(UserAction.TERMINATE), NOW, P.STOPPING,
                 id="pending-user"),
    pytest.param(ckpt_run(P.RUNNING, None), user(UserAction.TERMINATE), NOW, P.CHECKPOINTING,
                 id="running-user"),
    pytest.param(ckpt_run(P.STOPPING, V, outcome=X), user(UserAction.TERMINATE), NOW,
                 P.TERMINATING, id="stopping-user"),
    pytest.param(ckpt_run(P.RESUMING, V), user(UserAction.TERMINATE), NOW, P.TERMINATING,
                 id="resuming-user"),
    pytest.param(ckpt_run(P.RESUMING, None, from_scratch=True), user(UserAction.TERMINATE), NOW,
                 P.STOPPING, id="resuming-from-scratch-user"),
    # an earlier attempt's (or an early) verified checkpoint is for resuming, not for terminating
    pytest.param(ckpt_run(P.RESUMING, UV, verified_attempt=1), user(UserAction.TERMINATE), NOW,
                 P.STOPPING, id="resuming-from-an-early-checkpoint-user"),
    pytest.param(ckpt_run(P.INTERRUPTING, V, outcome=C, interrupt_deadline=OVERDUE),
                 InstanceObserved(S.RUNNING), NOW, P.TERMINATING, id="interrupting-overdue"),
    pytest.param(ckpt_run(P.INTERRUPTING, UV, outcome=C, interrupt_deadline=OVERDUE),
                 InstanceObserved(S.RUNNING), NOW, P.STOPPING,
                 id="interrupting-overdue-unverified"),
    pytest.param(ckpt_run(P.INTERRUPTING, None, outcome=C, interrupt_deadline=OVERDUE,
                          verified_attempt=1),
                 InstanceObserved(S.RUNNING), NOW, P.STOPPING,
                 id="interrupting-overdue-early-checkpoint-only"),
]
# fmt: on


@pytest.mark.parametrize(("run", "event", "now", "to"), TERMINATE_PATHS)
def test_each_path_toward_terminating_needs_a_verified_checkpoint_or_becomes_a_stop(
    run: Run, event: Event, now: datetime, to: Phase
) -> None:
    d = run_step(run, event, now=now)
    check_decision(run, d, now)
    assert d.run.phase is to
    if to is run.phase:
        assert (d.transition, terminates(d.effects)) == (None, False)
        return
    assert d.transition is not None
    downgraded = "downgraded" in d.transition.detail
    if to is P.TERMINATING:
        assert (d.effects, d.run.checkpoint, downgraded) == ((TERMINATE,), V, False)
    elif to is P.STOPPING:
        assert (d.effects, downgraded) == ((STOP,), True)
        assert "downgraded to stop: no verified checkpoint" in d.run.reason
    else:
        assert not terminates(d.effects)


def test_a_stopping_run_without_a_verified_checkpoint_refuses_a_terminate() -> None:
    run = ckpt_run(P.STOPPING, UV, outcome=X)
    with pytest.raises(InvalidTransition):
        run_step(run, user(UserAction.TERMINATE))


def test_a_terminate_is_redriven_only_in_terminating_which_was_entered_verified() -> None:
    run = ckpt_run(P.TERMINATING, V, outcome=X)
    d = run_step(run, InstanceObserved(S.RUNNING))
    assert d.effects == (TERMINATE,)
    check_decision(run, d, NOW)
