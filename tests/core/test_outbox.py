"""What notifies (issue 15): the events of a transition, the outbox row's facts, the message
made from them, and `SUPERVISOR_NOTIFY_ON`'s parsing. Pure, table-driven."""

from __future__ import annotations

from datetime import timedelta

import pytest

from supervisor.core.errors import InvalidInput
from supervisor.core.machine import Decision, Transition, new_run
from supervisor.core.outbox import (
    DEFAULT_NOTIFY_ON,
    DeliveryState,
    Notice,
    NotifyEvent,
    Target,
    TargetDelivery,
    parse_notify_on,
    render,
    row_state,
    transition_events,
    transition_notice,
    trial_message,
    zombie_notice,
)
from supervisor.core.run import CheckpointStatus, Outcome, Phase, Run
from supervisor.core.values import InstanceId
from supervisor.core.zombies import Cause, Zombie, ZombieKind, ZombieState
from tests.core.builders import INSTANCE, NOW, make_spec

E = NotifyEvent
P = Phase
ALL = frozenset(NotifyEvent)


def run_in(phase: Phase, outcome: Outcome | None = None, **changes: object) -> Run:
    run = new_run(make_spec(name="sweep 3", project="deco"), now=NOW).run
    return run.evolve(phase=phase, outcome=outcome, version=5, **changes)  # type: ignore[arg-type]


def moved(before: Run, to: Phase, outcome: Outcome | None = None, **changes: object) -> Decision:
    at = NOW + timedelta(minutes=1)
    after = before.evolve(phase=to, outcome=outcome, version=before.version + 1, phase_since=at,
                          reason="why", **changes)  # type: ignore[arg-type]  # fmt: skip
    return Decision(run=after, transition=Transition(before.phase, to, at, "why"))


@pytest.mark.parametrize(
    ("before", "to", "outcome", "events"),
    [
        (run_in(P.RUNNING), P.CRASHED, Outcome.CRASHED, (E.CRASHED,)),
        (run_in(P.RUNNING), P.STOPPING, Outcome.CRASHED, (E.CRASHED,)),  # on_crash=stop
        (run_in(P.STOPPING, Outcome.CRASHED), P.STOPPED, Outcome.CRASHED, (E.STOPPED,)),
        (run_in(P.RUNNING), P.STALLED, None, (E.STALLED,)),
        (run_in(P.STALLED), P.STOPPING, Outcome.STALLED, ()),  # the stall was told already
        (run_in(P.RUNNING), P.FAILED, None, (E.FAILED,)),
        (run_in(P.RUNNING), P.STOPPING, Outcome.TIMED_OUT, (E.TIMED_OUT,)),
        (run_in(P.RUNNING), P.INTERRUPTING, Outcome.INTERRUPTED, (E.INTERRUPTED,)),
        (run_in(P.INTERRUPTING, Outcome.INTERRUPTED), P.INTERRUPTED, Outcome.INTERRUPTED, ()),
        (run_in(P.RUNNING), P.GRACE, Outcome.COMPLETED, (E.COMPLETED,)),
        (run_in(P.STOPPING, Outcome.COMPLETED), P.STOPPED, Outcome.COMPLETED, (E.STOPPED,)),
        (run_in(P.TERMINATING), P.TERMINATED, Outcome.COMPLETED, (E.COMPLETED, E.TERMINATED)),
        (run_in(P.RESUMING), P.RUNNING, None, (E.RESUMED,)),
        (run_in(P.STOPPED), P.RESUMING, None, ()),
        (run_in(P.PENDING), P.RUNNING, None, ()),
    ],
)
def test_each_transition_is_the_events_its_phase_and_outcome_say(
    before: Run, to: Phase, outcome: Outcome | None, events: tuple[NotifyEvent, ...]
) -> None:
    assert transition_events(before, moved(before, to, outcome)) == events


def test_a_checkpoint_that_failed_verification_notifies_on_its_transition() -> None:
    before = run_in(P.CHECKPOINTING, Outcome.COMPLETED)
    decision = moved(before, P.STOPPING, Outcome.COMPLETED, checkpoint=CheckpointStatus.UNVERIFIED)
    assert transition_events(before, decision) == (E.CHECKPOINT_UNVERIFIED,)


def test_a_checkpoint_given_up_during_a_spot_interruption_is_told_at_its_end() -> None:
    before = run_in(P.INTERRUPTING, Outcome.INTERRUPTED, checkpoint=CheckpointStatus.UNVERIFIED)
    decision = moved(before, P.INTERRUPTED, Outcome.INTERRUPTED)
    assert transition_events(before, decision) == (E.CHECKPOINT_UNVERIFIED,)


def test_a_decision_without_a_transition_notifies_nothing() -> None:
    before = run_in(P.RUNNING)
    decision = Decision(run=before.evolve(checkpoint=CheckpointStatus.UNVERIFIED), persist=True)
    assert transition_notice(before, decision, ALL) is None


def test_the_notice_is_keyed_by_run_and_sequence_and_names_every_event() -> None:
    before = run_in(P.TERMINATING, job_ended_at=NOW, action_acked_at=NOW + timedelta(seconds=42))
    decision = moved(before, P.TERMINATED, Outcome.COMPLETED)

    notice = transition_notice(before, decision, frozenset({E.TERMINATED}))

    assert notice is not None
    assert (notice.key, notice.seq, notice.events) == ("run-42:6", 6, (E.COMPLETED, E.TERMINATED))
    assert (notice.name, notice.project, notice.instance_id) == ("sweep 3", "deco", INSTANCE)
    assert notice.idle_s == 42.0
    assert transition_notice(before, decision, frozenset({E.CRASHED})) is None
    assert Notice.from_stored(notice.key, ",".join(notice.events), notice.facts()) == notice


def test_the_message_names_the_run_what_happened_why_the_instance_its_idle_time_and_link() -> None:
    before = run_in(P.STOPPING, job_ended_at=NOW, action_acked_at=NOW + timedelta(seconds=75))
    notice = transition_notice(before, moved(before, P.STOPPED, Outcome.CRASHED), ALL)
    assert notice is not None

    message = render(notice, public_url="https://runs.example.com/")

    assert message.title == "run-42: crashed, stopped"
    assert message.body.splitlines() == [
        "run run-42 (name 'sweep 3', project deco)",
        "what happened: crashed, stopped (phase stopping -> stopped, outcome crashed)",
        "reason: why",
        f"instance: {INSTANCE} in us-east-1",
        "idle after the job ended: 75 s",
        f"at: {(NOW + timedelta(minutes=1)).isoformat()}",
        "run page: https://runs.example.com/runs/run-42",
        "idempotency key: run-42:6",
    ]
    assert message.key == "run-42:6" and message.failure
    assert "run page" not in render(notice).body


def test_a_zombie_notifies_while_open_keyed_by_its_mark() -> None:
    cause = Cause(ZombieKind.RUN_ENDED, "run-42", Phase.STOPPED, NOW)
    zombie = Zombie(InstanceId(INSTANCE), "us-east-1", cause, NOW)

    notice = zombie_notice(zombie, frozenset(DEFAULT_NOTIFY_ON))

    assert notice is not None
    assert notice.key == f"zombie:{INSTANCE}:us-east-1:{NOW.isoformat()}"
    assert notice.events == (E.ZOMBIE,) and notice.seq is None
    assert zombie_notice(zombie, frozenset({E.CRASHED})) is None
    closed = Zombie(zombie.instance_id, zombie.region, cause, NOW, state=ZombieState.CONFIRMED)
    assert zombie_notice(closed, ALL) is None


@pytest.mark.parametrize(
    ("text", "events"),
    [
        ("", frozenset()),
        ("crashed", frozenset({E.CRASHED})),
        ("crashed, Timed-Out  zombie", frozenset({E.CRASHED, E.TIMED_OUT, E.ZOMBIE})),
    ],
)
def test_notify_on_takes_commas_or_spaces(text: str, events: frozenset[NotifyEvent]) -> None:
    assert parse_notify_on(text) == events


def test_an_unknown_event_is_named_with_the_valid_ones() -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_notify_on("crashed,exploded")
    assert str(raised.value) == (
        "unknown notification event 'exploded': expected a comma-separated list of crashed, "
        "stalled, failed, timed_out, interrupted, checkpoint_unverified, zombie, completed, "
        "stopped, terminated, resumed"
    )


def test_a_row_is_done_once_every_configured_target_is() -> None:
    a, b = Target("a", "json://a"), Target("b", "json://b")
    sent = TargetDelivery("a", DeliveryState.SENT, 1)
    failed = TargetDelivery("b", DeliveryState.FAILED, 4, "500")
    assert row_state({"a": sent}, (a, b)) is DeliveryState.PENDING
    assert row_state({"a": sent}, (a,)) is DeliveryState.SENT
    assert row_state({"a": sent, "b": failed}, (a, b)) is DeliveryState.FAILED


def test_the_test_message_carries_its_own_key() -> None:
    message = trial_message(at=NOW, replica_id="box-1", public_url="https://runs.example.com")
    assert message.key == f"test:box-1:{NOW.isoformat()}"
    assert "dashboard: https://runs.example.com/" in message.body
    assert not message.failure
