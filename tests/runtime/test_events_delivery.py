"""Events as more of the real world delivers them, in-process against a real moto SQS queue (and
a real moto SNS topic), real moto EC2/S3, real SQLite and a real local stand-in trainer:

- EventBridge (or S3) -> SNS -> SQS, with and without raw message delivery;
- a spot warning without a time (taken as received, as aws-node-termination-handler does);
- a spot warning during grace, which ends the grace at once (the daemon's clock frozen);
- a pending spot instance taken back, with the warning before or after the sweep;
- events for runs that ended, and events a run refused, in the audit log.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from supervisor.adapters.aws import Aws
from supervisor.core.run import CheckpointStatus, Outcome, Phase
from supervisor.core.values import InstanceId, InstanceState
from tests.conftest import REGION, Fleet
from tests.runtime.conftest import Harness
from tests.runtime.test_events import (
    REACT_S,
    SLOW,
    Events,
    audit,
    checkpoint_verified,
    clock,
    commands_sent,
    handled,
    history,
    only,
    phase_within,
    phases,
    s3_put,
    spot_warning,
    state_change,
)
from tests.runtime.test_stall_and_crash import ClockedHarness
from tests.runtime.trainers import Trainers
from tests.runtime.waiting import wait_for

P = Phase
NOTICE_LEFT_S = 120 - 15  # the two-minute notice less the default spot margin


class Topic:
    """A real moto SNS topic with the events queue subscribed, as EventBridge -> SNS -> SQS is
    set up when one topic fans events out to several consumers."""

    def __init__(self, fleet: Fleet, events: Events, *, raw: bool) -> None:
        self.sns: Any = boto3.client("sns", endpoint_url=fleet.url, region_name=REGION)
        self.arn: str = self.sns.create_topic(Name=f"{events.url.rsplit('/', 1)[-1]}-topic")[
            "TopicArn"
        ]
        queue_arn = events.sqs.get_queue_attributes(
            QueueUrl=events.url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        self.sns.subscribe(
            TopicArn=self.arn, Protocol="sqs", Endpoint=queue_arn,
            Attributes={"RawMessageDelivery": "true" if raw else "false"},
        )  # fmt: skip

    def publish(self, event: Mapping[str, Any]) -> None:
        self.sns.publish(TopicArn=self.arn, Message=json.dumps(event))


def untimed(event: dict[str, Any], time: str | None) -> dict[str, Any]:
    """The event with its `time` empty (`""`) or missing (None)."""
    if time is None:
        event.pop("time")
    else:
        event["time"] = time
    return event


# -- a spot warning through SNS, or without a time, starts the checkpoint step -----------------

DELIVERIES = [
    pytest.param("sns", "now", id="sns-notification"),
    pytest.param("sns-raw", "now", id="sns-raw-delivery"),
    pytest.param("sqs", "", id="empty-time"),
    pytest.param("sqs", None, id="no-time"),
    pytest.param("sns", "", id="sns-notification-empty-time"),
]


@pytest.mark.parametrize(("delivery", "time"), DELIVERIES)
async def test_a_spot_warning_through_sns_or_without_a_time_starts_the_checkpoint_step(
    harness: Harness, trainers: Trainers, delivery: str, time: str | None
) -> None:
    trainer = trainers.start("t1")
    events = Events(harness.fleet, f"ev-deliver-{delivery}")
    topic = Topic(harness.fleet, events, raw=delivery == "sns-raw") if delivery != "sqs" else None
    daemon = await harness.start(events_queue_url=events.url, **SLOW)
    await trainer.started()
    (instance,) = harness.fleet.launch()
    await harness.attach("spot", instance, **trainer.spec(spot=True))
    await harness.wait_phase("spot", P.RUNNING)

    warning = spot_warning(instance)
    if time != "now":
        warning = untimed(warning, time)
    sent = clock()
    if topic is None:
        events.send(warning)
    else:
        topic.publish(warning)
    run, took = await phase_within(harness, "spot", P.INTERRUPTING, since=sent)
    assert took < REACT_S
    assert await trainer.exited() == 0  # SIGTERM: it saved a final checkpoint and exited
    run = await checkpoint_verified(harness, "spot")
    assert (run.phase, run.checkpoint) == (P.INTERRUPTING, CheckpointStatus.VERIFIED)
    assert commands_sent(daemon, "spot") == ["checkpoint"]
    await handled(daemon, 1)
    interrupting = only(await history(harness, "spot"), P.INTERRUPTING)
    # The deadline counts from the warning's time, or (without one) from when it was received.
    assert NOTICE_LEFT_S - REACT_S < interrupting.detail["seconds_left"] <= NOTICE_LEFT_S
    assert interrupting.detail["instance_action"] == "terminate"
    assert await audit(harness) == []  # nothing malformed, nothing unowned
    assert (harness.calls("StopInstances"), harness.calls("TerminateInstances")) == (0, 0)


async def test_a_warning_that_says_when_the_instance_goes_counts_its_deadline_from_then(
    harness: Harness,
) -> None:
    events = Events(harness.fleet, "ev-action-at")
    daemon = await harness.start(events_queue_url=events.url, **SLOW)
    (instance,) = harness.fleet.launch()
    await harness.attach("spot", instance, spot=True)
    await harness.wait_phase("spot", P.RUNNING)

    # The instance metadata's shape of instance-action: the action and when it happens.
    goes_at = datetime.now(UTC) + timedelta(seconds=60)
    warning = spot_warning(instance)
    warning["detail"]["instance-action"] = {
        "action": "stop", "time": goes_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }  # fmt: skip
    events.send(warning)
    await harness.wait_phase("spot", P.INTERRUPTING, within_s=REACT_S)
    await handled(daemon, 1)
    interrupting = only(await history(harness, "spot"), P.INTERRUPTING)
    assert interrupting.detail["instance_action"] == "stop"
    assert 60 - 15 - REACT_S < interrupting.detail["seconds_left"] <= 60 - 15


@pytest.mark.parametrize("raw", [False, True], ids=["sns-notification", "sns-raw-delivery"])
async def test_an_s3_notification_through_sns_ends_the_run_within_seconds(
    harness: Harness, raw: bool
) -> None:
    events = Events(harness.fleet, f"ev-s3-sns-{raw}")
    topic = Topic(harness.fleet, events, raw=raw)
    daemon = await harness.start(events_queue_url=events.url, **SLOW)
    (instance,) = harness.fleet.launch()
    await harness.attach("r1", instance, grace_s=0.0)
    await harness.wait_phase("r1", P.RUNNING)

    harness.fleet.put("runs/r1/COMPLETE")
    sent = clock()
    topic.publish(s3_put("runs/r1/COMPLETE"))
    run, took = await phase_within(harness, "r1", P.STOPPED, since=sent)
    assert took < REACT_S
    assert run.outcome is Outcome.COMPLETED, run.reason
    await handled(daemon, 1)
    assert await audit(harness) == []


# -- a spot warning during grace: the grace ends and the run's action is carried out at once ---


@pytest.fixture
async def timed(fleet: Fleet) -> AsyncIterator[ClockedHarness]:
    """A harness whose daemon runs on a clock the test can freeze."""
    state_dir = Path(tempfile.mkdtemp(prefix="sv-ev-", dir="/tmp"))  # short: socket path limit
    h = ClockedHarness(fleet, state_dir)
    try:
        yield h
    finally:
        await h.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


async def test_a_spot_warning_in_grace_terminates_a_verified_run_at_once_with_the_clock_frozen(
    timed: ClockedHarness, trainers: Trainers
) -> None:
    trainer = trainers.start("t1")
    events = Events(timed.fleet, "ev-grace-warning")
    daemon = await timed.start(events_queue_url=events.url, **SLOW)
    await trainer.started()
    (instance,) = timed.fleet.launch()
    spec = trainer.spec(spot=True, on_complete="terminate", grace_mode="fixed", grace_s=300.0)
    await timed.attach("r1", instance, **spec)
    await timed.wait_phase("r1", P.RUNNING)
    timed.fleet.put("runs/r1/COMPLETE")
    events.send(s3_put("runs/r1/COMPLETE"))
    run = await timed.wait_phase("r1", P.GRACE)
    assert (run.outcome, run.checkpoint) == (Outcome.COMPLETED, CheckpointStatus.VERIFIED)

    # From here the daemon's time stands still: only the warning can end the grace.
    timed.clock.freeze()
    frozen = timed.clock.now()
    sent = clock()
    events.send(spot_warning(instance))
    run, took = await phase_within(timed, "r1", P.TERMINATED, since=sent)
    assert took < REACT_S
    assert run.outcome is Outcome.COMPLETED, run.reason
    assert timed.fleet.state(instance) in ("shutting-down", "terminated")
    transitions = await timed.history("r1")
    assert phases(transitions)[-3:] == [P.GRACE, P.TERMINATING, P.TERMINATED]
    terminating = only(transitions, P.TERMINATING)
    assert terminating.at == frozen
    assert terminating.reason.startswith("spot interruption warning (terminate, ")
    assert "training had completed: grace ended; terminate requested" in terminating.reason
    assert "downgraded" not in terminating.detail
    assert (timed.calls("StopInstances"), timed.calls("TerminateInstances")) == (0, 1)
    assert P.INTERRUPTING not in phases(transitions)
    await handled(daemon, 2)


# -- a pending spot instance taken back: the same end, whichever comes first -------------------


@dataclass
class StillLaunching:
    """Our own port, faked for some instances: EC2 reports them `pending` (a spot request
    being fulfilled) while moto, whose instances run at once, says running."""

    inner: Aws
    launching: set[str]

    @property
    def default_region(self) -> str | None:
        return self.inner.default_region

    async def describe_instances(
        self, ids: Sequence[InstanceId], region: str
    ) -> dict[InstanceId, InstanceState]:
        states = await self.inner.describe_instances(ids, region)
        return {
            i: InstanceState.PENDING if i in self.launching and s.is_alive else s
            for i, s in states.items()
        }

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_a_pending_spot_instance_taken_back_is_interrupted_whether_warned_or_swept_first(
    harness: Harness,
) -> None:
    events = Events(harness.fleet, "ev-pending-spot")
    warned, swept = harness.fleet.launch(2)
    daemon = await harness.start(
        events_queue_url=events.url,
        wrap=lambda aws: StillLaunching(aws, {warned, swept}),  # type: ignore[arg-type,return-value]
        **SLOW,
    )
    await harness.attach("warned-first", warned, spot=True)
    await harness.attach("swept-first", swept, spot=True)

    async def looked() -> bool:  # each monitor has taken its first observation: still pending
        return harness.calls("DescribeInstanceStatus") >= 1 and not any(
            m.busy for m in daemon.monitors.values()
        )

    await wait_for(looked, within_s=REACT_S, what="the first sweep")
    for run_id in ("warned-first", "swept-first"):
        assert phases(await history(harness, run_id)) == [P.PENDING]

    # One run: the warning, then AWS takes the instance and the sweep finds it gone.
    events.send(spot_warning(warned))
    await harness.wait_phase("warned-first", P.INTERRUPTING, within_s=REACT_S)
    harness.fleet.terminate(warned)
    daemon.reconciler.kick()
    await harness.wait_phase("warned-first", P.INTERRUPTED, P.CRASHED, within_s=REACT_S)

    # The other: the sweep finds the instance gone first, then the warning arrives late.
    harness.fleet.terminate(swept)
    daemon.reconciler.kick()
    await harness.wait_phase("swept-first", P.INTERRUPTED, P.CRASHED, within_s=REACT_S)
    events.send(spot_warning(swept))
    await handled(daemon, 2)

    first, second = await harness.run("warned-first"), await harness.run("swept-first")
    assert (first.phase, first.outcome) == (P.INTERRUPTED, Outcome.INTERRUPTED), first.reason
    assert (second.phase, second.outcome) == (P.INTERRUPTED, Outcome.INTERRUPTED), second.reason
    assert phases(await history(harness, "warned-first")) == [
        P.PENDING, P.INTERRUPTING, P.INTERRUPTED,
    ]  # fmt: skip
    assert phases(await history(harness, "swept-first")) == [P.PENDING, P.INTERRUPTED]
    assert second.reason == (
        "spot instance terminated before training started, without a request from the supervisor"
    )
    # The late warning is recorded against the run it came too late for.
    (late,) = await audit(harness)
    assert (late["kind"], late["subject"]) == ("ended-run", swept)
    assert (late["detail"]["run_id"], late["detail"]["phase"]) == ("swept-first", "interrupted")
    assert late["detail"]["notification"] == "SpotWarning"
    assert (harness.calls("StopInstances"), harness.calls("TerminateInstances")) == (0, 0)


# -- what caused nothing is audited, naming the run --------------------------------------------


async def test_a_repeated_warning_is_audited_as_refused_naming_the_run(harness: Harness) -> None:
    events = Events(harness.fleet, "ev-refused")
    daemon = await harness.start(events_queue_url=events.url, **SLOW)
    (instance,) = harness.fleet.launch()
    await harness.attach("spot", instance, spot=True)
    await harness.wait_phase("spot", P.RUNNING)

    warning = spot_warning(instance)
    events.send(warning)
    await handled(daemon, 1)
    events.send(warning)  # EventBridge delivers at least once
    await handled(daemon, 2)
    assert phases(await history(harness, "spot")) == [P.PENDING, P.RUNNING, P.INTERRUPTING]
    (refused,) = await audit(harness)
    assert (refused["kind"], refused["subject"], refused["source"]) == ("refused", instance, "sqs")
    detail = refused["detail"]
    assert (detail["run_id"], detail["event"]) == ("spot", "SpotInterruptionWarning")
    assert "is interrupting: SpotInterruptionWarning does not apply" in detail["why"]
    assert detail["message_id"]


async def test_a_state_change_for_an_instance_no_run_ever_had_is_still_unowned(
    harness: Harness,
) -> None:
    events = Events(harness.fleet, "ev-unowned")
    daemon = await harness.start(events_queue_url=events.url, **SLOW)
    (instance,) = harness.fleet.launch()
    events.send(state_change(instance, "stopped"))
    await handled(daemon, 1)
    (entry,) = await audit(harness)
    assert (entry["kind"], entry["subject"]) == ("unowned", instance)
    assert "run_id" not in entry["detail"]
