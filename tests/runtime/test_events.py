"""The events queue consumer and spot interruptions, in-process against a real moto SQS queue,
real moto EC2/S3, real SQLite and (for checkpoints) a real local stand-in trainer.

Polling is slow on purpose here (prefix checks every 60 s, sweeps every 30 s): only an event
on the queue explains a reaction within seconds. The message bodies are the shapes AWS sends
(the six files of /work/shared/aws-events/, copied below), with the instance id,
bucket, key and time replaced.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from supervisor.adapters.aws import Aws, QueueMessage
from supervisor.core.errors import TransientError
from supervisor.core.machine import Transition
from supervisor.core.run import CheckpointStatus, Outcome, Phase, Run
from supervisor.runtime.daemon import Daemon
from supervisor.runtime.events import EventConsumer
from supervisor.runtime.ports import SystemClock
from tests.conftest import AMI, BUCKET, REGION, Fleet
from tests.runtime.conftest import Harness
from tests.runtime.trainers import TRAINER, Trainers, clear, is_trainer, pid_in
from tests.runtime.waiting import wait_for

P = Phase
SLOW: dict[str, Any] = {"poll_initial_s": 60.0, "poll_max_s": 60.0, "reconcile_interval_s": 30.0}
REACT_S = 20.0  # an event must have its effect within this; polling is at 60 s, sweeps at 30
FAKE_INSTANCE = "i-0fedcba9876543210"  # no run owns it (and moto never made it)


# -- the real message bodies ----------------------------------------------------------------

BODIES: Mapping[str, str] = {
    "ec2-state-change": """{
  "version": "0",
  "id": "7bf73129-1428-4cd3-a780-95db273d1602",
  "detail-type": "EC2 Instance State-change Notification",
  "source": "aws.ec2",
  "account": "123456789012",
  "time": "2026-11-22T12:00:00Z",
  "region": "us-east-1",
  "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-0abcd1234ef567890"],
  "detail": {"instance-id": "i-0abcd1234ef567890", "state": "terminated"}
}""",
    "ec2-spot-interruption-warning": """{
  "version": "0",
  "id": "12345678-1234-1234-1234-123456789012",
  "detail-type": "EC2 Spot Instance Interruption Warning",
  "source": "aws.ec2",
  "account": "123456789012",
  "time": "2026-11-22T12:00:00Z",
  "region": "us-east-1",
  "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-0abcd1234ef567890"],
  "detail": {"instance-id": "i-0abcd1234ef567890", "instance-action": "terminate"}
}""",
    "ec2-rebalance-recommendation": """{
  "version": "0",
  "id": "23456789-2345-2345-2345-234567890123",
  "detail-type": "EC2 Instance Rebalance Recommendation",
  "source": "aws.ec2",
  "account": "123456789012",
  "time": "2026-11-22T12:00:00Z",
  "region": "us-east-1",
  "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-0abcd1234ef567890"],
  "detail": {"instance-id": "i-0abcd1234ef567890"}
}""",
    "s3-object-created-eventbridge": """{
  "version": "0",
  "id": "17793124-05d4-b198-2fde-7ededc63b103",
  "detail-type": "Object Created",
  "source": "aws.s3",
  "account": "123456789012",
  "time": "2026-11-22T12:00:00Z",
  "region": "us-east-1",
  "resources": ["arn:aws:s3:::example-runs-bucket"],
  "detail": {
    "version": "0",
    "bucket": {"name": "example-runs-bucket"},
    "object": {"key": "runs/example-run/COMPLETE", "size": 0, \
"etag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": "00617F08299329D189"},
    "request-id": "N4N7GDK58NMKJ12R",
    "requester": "123456789012",
    "source-ip-address": "10.0.0.1",
    "reason": "PutObject"
  }
}""",
    "s3-notification-put": """{
  "Records": [
    {
      "eventVersion": "2.1",
      "eventSource": "aws:s3",
      "awsRegion": "us-east-1",
      "eventTime": "2026-11-22T12:00:00.000Z",
      "eventName": "ObjectCreated:Put",
      "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
      "requestParameters": {"sourceIPAddress": "10.0.0.1"},
      "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", \
"x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD"},
      "s3": {
        "s3SchemaVersion": "1.0",
        "configurationId": "runs-prefix",
        "bucket": {"name": "example-runs-bucket", \
"ownerIdentity": {"principalId": "A3NL1KOZZKExample"}, "arn": "arn:aws:s3:::example-runs-bucket"},
        "object": {"key": "runs/example-run/COMPLETE", "size": 0, \
"eTag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": "0055AED6DCD90281E5"}
      }
    }
  ]
}""",
    "s3-test-event": '{"Service": "Amazon S3", "Event": "s3:TestEvent", '
    '"Time": "2026-11-22T12:00:00.000Z", "Bucket": "example-runs-bucket", '
    '"RequestId": "5582815E1AEA5ADF", '
    '"HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE"}',
}


def body_of(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(BODIES[name])
    return body


def bridge_time(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def ec2_event(name: str, instance_id: str, **detail: str) -> dict[str, Any]:
    body = body_of(name)
    body["id"] = str(uuid.uuid4())
    body["time"] = bridge_time()
    body["resources"] = [f"arn:aws:ec2:{REGION}:123456789012:instance/{instance_id}"]
    body["detail"] = {**body["detail"], "instance-id": instance_id, **detail}
    return body


def state_change(instance_id: str, state: str) -> dict[str, Any]:
    return ec2_event("ec2-state-change", instance_id, state=state)


def spot_warning(instance_id: str) -> dict[str, Any]:
    return ec2_event("ec2-spot-interruption-warning", instance_id)


def s3_put(key: str) -> dict[str, Any]:
    """S3's own notification, sent straight to SQS."""
    body = body_of("s3-notification-put")
    record = body["Records"][0]
    record["eventTime"] = (
        datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
    record["s3"]["bucket"]["name"] = BUCKET
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{BUCKET}"
    record["s3"]["object"]["key"] = key
    return body


def s3_object_created(key: str) -> dict[str, Any]:
    """The EventBridge shape of the same (a bucket with EventBridge notifications on)."""
    body = body_of("s3-object-created-eventbridge")
    body["id"] = str(uuid.uuid4())
    body["time"] = bridge_time()
    body["resources"] = [f"arn:aws:s3:::{BUCKET}"]
    body["detail"]["bucket"]["name"] = BUCKET
    body["detail"]["object"]["key"] = key
    return body


def s3_test_event() -> dict[str, Any]:
    body = body_of("s3-test-event")
    body["Bucket"] = BUCKET
    body["Time"] = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return body


# -- the queue --------------------------------------------------------------------------------


class Events:
    """A real moto SQS queue, fed with plain boto3 as EventBridge and S3 would."""

    def __init__(self, fleet: Fleet, name: str) -> None:
        self.sqs: Any = boto3.client("sqs", endpoint_url=fleet.url, region_name=REGION)
        self.url: str = self.sqs.create_queue(QueueName=name)["QueueUrl"]

    def send(self, body: Mapping[str, Any] | str) -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        self.sqs.send_message(QueueUrl=self.url, MessageBody=text)

    def depth(self) -> tuple[int, int]:
        """(visible, in flight) messages."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (
            int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        )

    async def drained(self, within_s: float = REACT_S) -> None:
        async def empty() -> bool:
            return self.depth() == (0, 0)

        await wait_for(empty, within_s=within_s, what=f"queue {self.url} to be empty")


def consumer_of(daemon: Daemon) -> EventConsumer:
    assert daemon.consumer is not None, "the daemon started no events consumer"
    return daemon.consumer


async def handled(daemon: Daemon, count: int, within_s: float = REACT_S) -> None:
    """Wait until the daemon's consumer has handled and deleted `count` messages in all."""
    consumer = consumer_of(daemon)

    async def done() -> bool:
        return consumer.handled >= count

    await wait_for(done, within_s=within_s, what=f"{count} messages handled ({consumer!r})")
    assert consumer.handled == count, consumer


class Describes:
    """Counts DescribeInstanceStatus replies the daemon received (a botocore after-call hook on
    its shared EC2 client): a sweep asked for by an event has happened once this grows."""

    def __init__(self) -> None:
        self.replies = 0

    @classmethod
    async def of(cls, harness: Harness) -> Describes:
        assert harness.aws is not None
        counter = cls()
        ec2 = await harness.aws.client("ec2", REGION)
        ec2.meta.events.register("after-call.ec2.DescribeInstanceStatus", counter.hook)
        return counter

    def hook(self, **_: Any) -> None:
        self.replies += 1

    async def after(self, since: int, daemon: Daemon) -> None:
        """Wait for a reply after `since`, and for the monitors to take what it showed."""

        async def done() -> bool:
            return self.replies > since and not any(m.busy for m in daemon.monitors.values())

        await wait_for(done, within_s=REACT_S, what="a sweep asked for by an event")


async def history(harness: Harness, run_id: str) -> list[Transition]:
    assert harness.store is not None
    return [record.transition for record in await harness.store.transitions(run_id)]


def phases(transitions: list[Transition]) -> list[Phase]:
    return [t.to_phase for t in transitions]


def only(transitions: list[Transition], to: Phase) -> Transition:
    found = [t for t in transitions if t.to_phase is to]
    assert len(found) == 1, f"expected one transition to {to}, got {phases(transitions)}"
    return found[0]


async def audit(harness: Harness) -> list[dict[str, Any]]:
    assert harness.store is not None
    return list(reversed(await harness.store.audit()))  # oldest first


async def checks_scheduled_late(harness: Harness, run_id: str) -> None:
    """The run is running and its next prefix check is the slow poll's, about 60 s away:
    anything that happens within seconds from now was caused by an event."""
    daemon = harness.daemon
    assert daemon is not None

    async def scheduled() -> bool:
        monitor = daemon.monitors.get(run_id)
        return monitor is not None and monitor.run.next_check_at is not None

    await wait_for(scheduled, what=f"{run_id}'s first prefix check")
    next_check_at = daemon.monitors[run_id].run.next_check_at
    assert next_check_at is not None
    assert (next_check_at - datetime.now(UTC)).total_seconds() > 45


def clock() -> float:
    return asyncio.get_running_loop().time()


async def phase_within(
    harness: Harness, run_id: str, *wanted: Phase, since: float, within_s: float = REACT_S
) -> tuple[Run, float]:
    """Wait for a phase; return the run and the seconds from `since` (a `clock()` reading
    taken just before sending the event) until it was seen."""
    run = await harness.wait_phase(run_id, *wanted, within_s=within_s)
    return run, clock() - since


async def checkpoint_verified(harness: Harness, run_id: str, within_s: float = 15.0) -> Run:
    async def verified() -> bool:
        return (await harness.run(run_id)).checkpoint is CheckpointStatus.VERIFIED

    await wait_for(verified, within_s=within_s, what=f"{run_id}'s checkpoint verified")
    return await harness.run(run_id)


def commands_sent(daemon: Daemon, run_id: str) -> list[str]:
    monitor = daemon.monitors[run_id]
    return [e.fields["kind"] for e in monitor.recent if e.event == "command_sent"]


# -- 1, 3: completion markers through the queue; duplicates; out of order ----------------------


async def test_a_marker_event_ends_the_run_within_seconds_once_in_both_s3_shapes(
    harness: Harness,
) -> None:
    events = Events(harness.fleet, "ev-markers")
    daemon = await harness.start(events_queue_url=events.url, **SLOW)
    direct, bridge = harness.fleet.launch(2)
    await harness.attach("direct", direct)
    await harness.attach("bridge", bridge)
    await harness.wait_phase("direct", P.RUNNING)
    await harness.wait_phase("bridge", P.RUNNING)
    await checks_scheduled_late(harness, "direct")
    await checks_scheduled_late(harness, "bridge")

    # A stale event that says the running instance is gone: the sweep it asks for shows it
    # running, and nothing happens to the run.
    describes = await Describes.of(harness)
    before = describes.replies
    events.send(state_change(bridge, "terminated"))
    await handled(daemon, 1)
    await describes.after(before, daemon)
    assert daemon.monitors["bridge"].run.this_attempt.instance_ended is None
    assert phases(await history(harness, "bridge")) == [P.PENDING, P.RUNNING]

    # S3 notification straight to SQS, delivered twice (at least once delivery).
    harness.fleet.put("runs/direct/COMPLETE")
    message = s3_put("runs/direct/COMPLETE")
    sent = clock()
    events.send(message)
    events.send(message)
    run, took = await phase_within(harness, "direct", P.STOPPED, since=sent)
    assert took < REACT_S
    assert run.outcome is Outcome.COMPLETED, run.reason
    await handled(daemon, 3)

    # The EventBridge "Object Created" shape.
    harness.fleet.put("runs/bridge/COMPLETE")
    sent = clock()
    events.send(s3_object_created("runs/bridge/COMPLETE"))
    run, took = await phase_within(harness, "bridge", P.STOPPED, since=sent)
    assert took < REACT_S
    assert run.outcome is Outcome.COMPLETED, run.reason
    await handled(daemon, 4)

    for run_id, instance in (("direct", direct), ("bridge", bridge)):
        transitions = await history(harness, run_id)
        assert phases(transitions) == [P.PENDING, P.RUNNING, P.GRACE, P.STOPPING, P.STOPPED]
        assert only(transitions, P.GRACE).from_phase is P.RUNNING
        assert harness.fleet.state(instance) == "stopped"
    assert harness.calls("StopInstances") == 2

    # Out of order, after the supervisor's own stop: "stopped", then a late "stopping".
    events.send(state_change(direct, "stopped"))
    events.send(state_change(direct, "stopping"))
    await handled(daemon, 6)
    await events.drained()
    assert len(await history(harness, "direct")) == 5
    assert harness.calls("StopInstances") == 2
    # Both came after the run ended: recorded against it (not as unowned), with its end.
    entries = await audit(harness)
    late = [(a["kind"], a["subject"], a["detail"]["state"]) for a in entries]
    assert late == [("ended-run", direct, "stopped"), ("ended-run", direct, "stopping")]
    stopped = await harness.run("direct")
    for entry in entries:
        assert entry["detail"]["run_id"] == "direct"
        assert (entry["detail"]["phase"], entry["detail"]["outcome"]) == ("stopped", "completed")
        assert entry["detail"]["ended_at"] == stopped.phase_since.isoformat()
        assert entry["detail"]["notification"] == "Ec2StateChange"


# -- 2, 4, 8: an instance gone; junk on the queue ---------------------------------------------


async def test_gone_instances_end_runs_at_once_and_junk_is_audited_and_acknowledged(
    harness: Harness,
) -> None:
    events = Events(harness.fleet, "ev-gone")
    daemon = await harness.start(events_queue_url=events.url, **SLOW)
    ondemand, spot, later = harness.fleet.launch(3)
    await harness.attach("ondemand", ondemand)
    await harness.attach("spot", spot, spot=True)
    await harness.attach("later", later)
    for run_id in ("ondemand", "spot", "later"):
        await harness.wait_phase(run_id, P.RUNNING)

    # Junk first: none of it may stop the consumer or touch a run.
    unknown = state_change(ondemand, "running")
    unknown["source"], unknown["detail-type"] = "aws.autoscaling", "EC2 Instance Launch Successful"
    events.send('{"detail-type": "EC2 Instance State-change Notification", "detail": {')
    events.send(unknown)
    events.send(s3_test_event())
    events.send(state_change(FAKE_INSTANCE, "terminated"))
    events.send(ec2_event("ec2-rebalance-recommendation", spot))
    await handled(daemon, 5)
    await events.drained()
    entries = await audit(harness)
    assert Counter(e["kind"] for e in entries) == {
        "unrecognized": 2,
        "s3-test-event": 1,
        "unowned": 1,
        "rebalance-ignored": 1,
    }, entries
    by_kind = {e["kind"]: e for e in entries}
    assert all(e["source"] == "sqs" and e["detail"]["message_id"] for e in entries)
    reasons = [e["detail"]["reason"] for e in entries if e["kind"] == "unrecognized"]
    assert reasons[0].startswith("malformed message: JSONDecodeError")
    assert reasons[1] == (
        "unhandled EventBridge event aws.autoscaling/EC2 Instance Launch Successful"
    )
    assert by_kind["s3-test-event"]["subject"] == BUCKET
    assert by_kind["unowned"]["subject"] == FAKE_INSTANCE
    assert by_kind["unowned"]["detail"]["state"] == "terminated"
    assert by_kind["rebalance-ignored"]["subject"] == spot
    for run_id in ("ondemand", "spot", "later"):
        assert phases(await history(harness, run_id)) == [P.PENDING, P.RUNNING]

    # AWS ends two instances; each state-change event has its instance described at once.
    harness.fleet.terminate(ondemand)
    harness.fleet.terminate(spot)
    describes = harness.calls("DescribeInstanceStatus")
    sent = clock()
    events.send(state_change(ondemand, "terminated"))
    events.send(state_change(spot, "terminated"))
    run, took = await phase_within(harness, "ondemand", P.CRASHED, since=sent)
    assert took < REACT_S
    assert run.outcome is Outcome.CRASHED, run.reason
    assert "without a request from the supervisor" in run.reason
    run, took = await phase_within(harness, "spot", P.INTERRUPTED, P.CRASHED, since=sent)
    assert took < REACT_S
    assert (run.phase, run.outcome) == (P.INTERRUPTED, Outcome.INTERRUPTED), run.reason
    assert run.reason.startswith("spot instance terminated without a request")
    assert harness.calls("DescribeInstanceStatus") >= describes + 2
    await handled(daemon, 7)
    await events.drained()
    assert phases(await history(harness, "spot"))[-2:] == [P.RUNNING, P.INTERRUPTED]
    assert (harness.calls("StopInstances"), harness.calls("TerminateInstances")) == (0, 0)

    # The consumer still works: a marker for the third run ends it within seconds.
    harness.fleet.put("runs/later/COMPLETE")
    sent = clock()
    events.send(s3_put("runs/later/COMPLETE"))
    run, took = await phase_within(harness, "later", P.STOPPED, since=sent)
    assert took < REACT_S
    assert run.outcome is Outcome.COMPLETED, run.reason
    await handled(daemon, 8)
    assert len(await audit(harness)) == 5


# -- 5: deleted only after commit ------------------------------------------------------------


class FailFirstDelete:
    """The real queue adapter, whose first DeleteMessage fails (after the transition)."""

    def __init__(self, aws: Aws) -> None:
        self._aws = aws
        self.deletes = 0

    async def receive_messages(
        self, queue_url: str, region: str, *, wait_s: int = 20, max_messages: int = 10
    ) -> list[QueueMessage]:
        return await self._aws.receive_messages(
            queue_url, region, wait_s=wait_s, max_messages=max_messages
        )

    async def delete_message(self, queue_url: str, receipt: str, region: str) -> None:
        self.deletes += 1
        if self.deletes == 1:
            raise TransientError("ServiceUnavailable", "injected", operation="DeleteMessage")
        await self._aws.delete_message(queue_url, receipt, region)


async def test_a_message_is_deleted_only_after_its_transition_and_a_redelivery_is_a_no_op(
    harness: Harness,
) -> None:
    events = Events(harness.fleet, "ev-commit")
    daemon = await harness.start(**SLOW)  # no consumer of its own: this test drives one
    assert daemon.consumer is None and harness.aws is not None and harness.store is not None
    queue = FailFirstDelete(harness.aws)
    consumer = EventConsumer(
        queue, events.url, REGION, lambda: list(daemon.monitors.values()), harness.store,
        SystemClock(), spot_margin_s=15.0, wait_s=1,
    )  # fmt: skip
    (instance,) = harness.fleet.launch()
    # A fixed grace: in an until-quiet one a redelivered nudge looks at the prefix again.
    await harness.attach("r1", instance, grace_s=300.0, grace_mode="fixed")
    await harness.wait_phase("r1", P.RUNNING)
    await checks_scheduled_late(harness, "r1")

    harness.fleet.put("runs/r1/COMPLETE")
    events.send(s3_put("runs/r1/COMPLETE"))
    (message,) = await queue.receive_messages(events.url, REGION, wait_s=1)
    assert await consumer.handle(message) is False
    # The transition is committed although the delete failed: the message stays queued.
    run = await harness.run("r1")
    assert (run.phase, run.outcome) == (P.GRACE, Outcome.COMPLETED), run.reason
    assert phases(await history(harness, "r1")) == [P.PENDING, P.RUNNING, P.GRACE]
    assert events.depth() == (0, 1)
    assert consumer.handled == 0
    lists = harness.calls("ListObjectsV2")

    # Redelivery (the visibility timeout ran out): no second transition, no AWS action.
    events.sqs.change_message_visibility(
        QueueUrl=events.url, ReceiptHandle=message.receipt, VisibilityTimeout=0
    )
    (again,) = await queue.receive_messages(events.url, REGION, wait_s=1)
    assert (again.message_id, again.receive_count) == (message.message_id, 2)
    assert await consumer.handle(again) is True
    assert phases(await history(harness, "r1")) == [P.PENDING, P.RUNNING, P.GRACE]
    assert (await harness.run("r1")).version == run.version
    assert harness.calls("ListObjectsV2") == lists
    assert (harness.calls("StopInstances"), harness.calls("TerminateInstances")) == (0, 0)
    assert (queue.deletes, consumer.handled) == (2, 1)
    assert events.depth() == (0, 0)
    assert await audit(harness) == []


# -- 6: a spot warning: checkpoint inside the notice, no stop call -----------------------------


async def test_a_spot_warning_checkpoints_at_once_and_the_instance_going_ends_it_interrupted(
    harness: Harness, trainers: Trainers
) -> None:
    trainer = trainers.start("t1")
    events = Events(harness.fleet, "ev-spot")
    daemon = await harness.start(events_queue_url=events.url, **SLOW)
    await trainer.started()
    (instance,) = harness.fleet.launch()
    # A SIGTERM timeout longer than the notice: the warning cuts it to fit.
    await harness.attach("spot", instance, **trainer.spec(spot=True, sigterm_timeout_s=300.0))
    await harness.wait_phase("spot", P.RUNNING)

    warning = spot_warning(instance)
    sent = clock()
    events.send(warning)
    events.send(warning)  # delivered twice
    run, took = await phase_within(harness, "spot", P.INTERRUPTING, since=sent)
    assert took < REACT_S
    assert await trainer.exited() == 0  # SIGTERM: it saved a final checkpoint and exited
    assert clock() - sent < REACT_S
    (final,) = trainer.checkpoint_dir.glob("step_*_final.pt")
    run = await checkpoint_verified(harness, "spot")
    assert run.phase is P.INTERRUPTING, run.reason
    assert commands_sent(daemon, "spot") == ["checkpoint"]
    manifest = json.loads(
        harness.fleet.s3.get_object(Bucket=BUCKET, Key="runs/spot/checkpoints/_manifest.json")[
            "Body"
        ].read()
    )
    assert manifest["checkpoint"] == final.name
    await handled(daemon, 2)  # the repeat was refused, and acknowledged
    interrupting = only(await history(harness, "spot"), P.INTERRUPTING)
    assert interrupting.detail["instance_action"] == "terminate"
    assert 90 < interrupting.detail["seconds_left"] <= 120 - 15
    assert interrupting.detail["sigterm_timeout_s"] == pytest.approx(
        interrupting.detail["seconds_left"] / 2, abs=0.01
    )
    # No grace and no stop call: AWS takes the instance.
    assert (harness.calls("StopInstances"), harness.calls("TerminateInstances")) == (0, 0)
    assert harness.fleet.state(instance) == "running"

    harness.fleet.terminate(instance)  # AWS taking it back
    sent = clock()
    events.send(state_change(instance, "shutting-down"))
    run, took = await phase_within(harness, "spot", P.INTERRUPTED, since=sent)
    assert took < REACT_S
    assert (run.outcome, run.checkpoint) == (Outcome.INTERRUPTED, CheckpointStatus.VERIFIED)
    transitions = await history(harness, "spot")
    assert phases(transitions) == [P.PENDING, P.RUNNING, P.INTERRUPTING, P.INTERRUPTED]
    interrupted = only(transitions, P.INTERRUPTED)
    assert interrupted.detail["checkpoint"] == "verified"
    assert interrupted.detail["instance_state"] == "terminated"
    assert (
        0 < interrupted.detail["seconds_left_when_verified"] <= interrupting.detail["seconds_left"]
    )
    assert "max_restarts" not in interrupted.reason and "resum" not in interrupted.reason
    assert (harness.calls("StopInstances"), harness.calls("TerminateInstances")) == (0, 0)
    await handled(daemon, 3)
    await events.drained()


# -- 7: on_interruption=resume, up to max_restarts ---------------------------------------------


async def test_an_interrupted_run_resumes_on_a_new_instance_until_max_restarts(
    harness: Harness, trainers: Trainers
) -> None:
    template = harness.fleet.ec2.create_launch_template(
        LaunchTemplateName="ev-resume",
        LaunchTemplateData={"ImageId": AMI, "InstanceType": "t3.micro"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    trainer = trainers.start("t1")
    events = Events(harness.fleet, "ev-resume")
    daemon = await harness.start(events_queue_url=events.url, **SLOW)
    await trainer.started()
    (first,) = harness.fleet.launch()
    spec = trainer.spec(
        spot=True, on_interruption="resume", max_restarts=1,
        launch_template={"id": template}, resume_command=trainer.resume_command(),
    )  # fmt: skip
    await harness.attach("r1", first, **spec)
    await harness.wait_phase("r1", P.RUNNING)

    # Attempt 1: the warning, the checkpoint, then AWS takes the instance.
    events.send(spot_warning(first))
    await harness.wait_phase("r1", P.INTERRUPTING, within_s=REACT_S)
    assert await trainer.exited() == 0
    await checkpoint_verified(harness, "r1")
    manifest = json.loads(
        harness.fleet.s3.get_object(Bucket=BUCKET, Key="runs/r1/checkpoints/_manifest.json")[
            "Body"
        ].read()
    )
    clear(trainer.checkpoint_dir)  # the new instance's disk: everything comes from S3
    harness.fleet.terminate(first)
    events.send(state_change(first, "terminated"))

    async def resumed() -> bool:
        run = await harness.run("r1")
        return run.attempt == 2 or run.phase is P.FAILED

    await wait_for(resumed, what="r1 to resume as attempt 2")
    run = await harness.run("r1")
    assert (run.phase, run.attempt) == (P.RUNNING, 2), run.reason
    second = run.instance_id
    assert second != first
    assert harness.fleet.state(second) == "running"
    assert harness.store is not None
    instances = await harness.store.instances("r1")
    assert [(i.instance_id, i.source) for i in instances] == [
        (first, "attached"),
        (second, "launched"),
    ]
    transitions = await history(harness, "r1")
    assert phases(transitions) == [
        P.PENDING, P.RUNNING, P.INTERRUPTING, P.INTERRUPTED, P.RESUMING, P.RUNNING,
    ]  # fmt: skip
    interrupted = only(transitions, P.INTERRUPTED)
    assert "resuming (restart 1 of 1)" in interrupted.reason, interrupted.reason
    assert interrupted.detail["checkpoint"] == "verified"
    running = transitions[-1]
    assert running.detail["from_scratch"] is False and running.detail["attempt"] == 2
    assert commands_sent(daemon, "r1")[-2:] == ["restore", "start"]
    for entry in manifest["files"]:  # the checkpoint came back from S3
        assert (trainer.checkpoint_dir / entry["path"]).exists(), entry["path"]
    pid = running.detail["pid"]
    assert isinstance(pid, int) and pid_in(trainer.pid_file) == pid
    assert is_trainer(pid, trainer.pid_file)

    # Attempt 2 is interrupted too: with max_restarts 1 it stays interrupted.
    events.send(spot_warning(second))
    await harness.wait_phase("r1", P.INTERRUPTING, within_s=REACT_S)
    await checkpoint_verified(harness, "r1")
    harness.fleet.terminate(second)
    sent = clock()
    events.send(state_change(second, "terminated"))
    run, took = await phase_within(harness, "r1", P.INTERRUPTED, since=sent)
    assert took < REACT_S
    assert run.outcome is Outcome.INTERRUPTED and run.attempt == 2
    assert "max_restarts" in run.reason, run.reason
    await handled(daemon, 4)
    assert (await harness.run("r1")).phase is P.INTERRUPTED
    assert phases(await history(harness, "r1"))[-3:] == [P.RUNNING, P.INTERRUPTING, P.INTERRUPTED]
    assert harness.calls("RunInstances") == 1
    assert (harness.calls("StopInstances"), harness.calls("TerminateInstances")) == (0, 0)


# -- a spot interruption after the training completed ---------------------------------------


async def test_a_completed_run_interrupted_during_grace_stays_completed_and_is_not_resumed(
    harness: Harness, trainers: Trainers
) -> None:
    pid_file = trainers.root / "train.pid"
    events = Events(harness.fleet, "ev-grace-spot")
    daemon = await harness.start(events_queue_url=events.url, **SLOW)
    (instance,) = harness.fleet.launch()
    await harness.attach(
        "r1", instance, spot=True, on_interruption="resume", grace_s=300.0,
        resume_command=[sys.executable, str(TRAINER)], pid_file=str(pid_file), transport="local",
    )  # fmt: skip
    await harness.wait_phase("r1", P.RUNNING)
    harness.fleet.put("runs/r1/COMPLETE")
    events.send(s3_put("runs/r1/COMPLETE"))
    run = await harness.wait_phase("r1", P.GRACE, within_s=REACT_S)
    assert run.outcome is Outcome.COMPLETED

    # The training is over; AWS reclaims the instance during grace.
    events.send(spot_warning(instance))
    await handled(daemon, 2)
    harness.fleet.terminate(instance)
    events.send(state_change(instance, "terminated"))
    await handled(daemon, 3)

    async def settled() -> bool:
        current = await harness.run("r1")
        return current.phase.is_terminal and "r1" not in daemon.monitors

    await wait_for(settled, within_s=REACT_S, what="r1 to end")
    run = await harness.run("r1")
    assert run.outcome is Outcome.COMPLETED, (run.phase, run.outcome, run.reason)
    assert P.RESUMING not in phases(await history(harness, "r1"))
    assert harness.calls("RunInstances") == 0


# -- found by these tests, then fixed ----------------------------------------------------------


async def test_spot_warnings_for_two_runs_start_both_checkpoints_at_once(
    harness: Harness, trainers: Trainers
) -> None:
    # Trainers that ignore SIGTERM: each checkpoint step takes its whole SIGTERM timeout (15 s),
    # so steps taken one after the other would put the second run in interrupting 15 s late.
    first, second = (
        trainers.start("a", ignore_sigterm=True),
        trainers.start("b", ignore_sigterm=True),
    )
    events = Events(harness.fleet, "ev-two-spot")
    await harness.start(events_queue_url=events.url, **SLOW)
    await first.started()
    await second.started()
    a, b = harness.fleet.launch(2)
    await harness.attach("a", a, **first.spec(spot=True, sigterm_timeout_s=15.0))
    await harness.attach("b", b, **second.spec(spot=True, sigterm_timeout_s=15.0))
    await harness.wait_phase("a", P.RUNNING)
    await harness.wait_phase("b", P.RUNNING)

    # AWS reclaims capacity in a pool: both warnings arrive together.
    sent = clock()
    events.send(spot_warning(a))
    events.send(spot_warning(b))
    _, took_a = await phase_within(harness, "a", P.INTERRUPTING, since=sent)
    _, took_b = await phase_within(harness, "b", P.INTERRUPTING, since=sent)
    assert max(took_a, took_b) < 10.0, f"interrupting after {took_a:.1f}s and {took_b:.1f}s"


async def test_with_a_queue_the_check_backs_off_to_the_events_cap_and_polls_with_its_wait(
    harness: Harness,
) -> None:
    events = Events(harness.fleet, "ev-settings")
    daemon = await harness.start(
        events_queue_url=events.url, poll_max_s=60.0, poll_max_with_events_s=900.0,
        events_wait_s=3,
    )  # fmt: skip
    assert consumer_of(daemon)._wait_s == 3
    assert daemon.policy.poll.max_s == 900.0
    assert daemon.policy.poll_max_without_eta_s is None  # notifications find every run's end


# -- a heartbeat through the queue is read without a listing (issue 13) ----------------------


def heartbeat_notified(fleet: Fleet, run_id: str, step: int, *, bridge: bool) -> dict[str, Any]:
    """The job writes its heartbeat; the notification S3 sends for it (with its ETag, size)."""
    key = f"runs/{run_id}/status.json"
    now = datetime.now(UTC).isoformat()
    fleet.put(key, json.dumps({"format": 1, "step": step, "total_steps": 10_000, "time": now}))
    head = fleet.s3.head_object(Bucket=BUCKET, Key=key)
    etag, size = str(head["ETag"]).strip('"'), int(head["ContentLength"])
    if bridge:
        body = s3_object_created(key)
        body["detail"]["object"] |= {"etag": etag, "size": size}
    else:
        body = s3_put(key)
        body["Records"][0]["s3"]["object"] |= {"eTag": etag, "size": size}
    return body


async def test_a_heartbeat_notification_costs_its_read_and_no_listing(harness: Harness) -> None:
    events = Events(harness.fleet, "ev-heartbeat")
    daemon = await harness.start(events_queue_url=events.url, **SLOW)
    (instance,) = harness.fleet.launch()
    await harness.attach("beats", instance)
    await harness.wait_phase("beats", P.RUNNING)
    await checks_scheduled_late(harness, "beats")
    lists, gets = harness.calls("ListObjectsV2"), harness.calls("GetObject")

    # Two heartbeats, one in each shape, and the first one delivered twice.
    first = heartbeat_notified(harness.fleet, "beats", 100, bridge=False)
    events.send(first)
    events.send(first)
    await handled(daemon, 2)
    events.send(heartbeat_notified(harness.fleet, "beats", 200, bridge=True))
    await handled(daemon, 3)

    assert harness.calls("ListObjectsV2") == lists, "a heartbeat alone is no reason to list"
    assert harness.calls("GetObject") == gets + 2, "each new heartbeat read once"
    monitor = daemon.monitors["beats"]
    assert [s.step for s in monitor.run.this_attempt.progress.samples] == [100, 200]
    assert monitor.run.this_attempt.estimated_end is not None

    # The marker's notification still lists at once, and ends the run.
    harness.fleet.put("runs/beats/COMPLETE")
    events.send(s3_put("runs/beats/COMPLETE"))
    run = await harness.wait_phase("beats", P.STOPPED, within_s=REACT_S)
    assert run.outcome is Outcome.COMPLETED, run.reason
    assert harness.calls("ListObjectsV2") > lists
