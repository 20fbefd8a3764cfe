"""An EC2 state-change message is deleted only once the transition it caused is committed, and a
redelivery of it is a no-op: in-process against a real moto SQS queue, real moto EC2/S3 and
real SQLite.

tests/runtime/test_events.py shows this for an S3 notification (a failed delete after the
transition). Here the consumer is cancelled between the commit and the delete, as when the
daemon is killed there; the message is then received again after its visibility timeout.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from supervisor.adapters.aws import Aws, QueueMessage
from supervisor.adapters.sql_store import SqlStore
from supervisor.core.run import Outcome, Phase
from supervisor.runtime.events import EventConsumer
from supervisor.runtime.ports import SystemClock
from tests.conftest import BUCKET, REGION
from tests.runtime.conftest import Harness
from tests.runtime.test_events import (
    SLOW,
    Events,
    audit,
    checks_scheduled_late,
    history,
    phases,
    state_change,
)

P = Phase


class HeldDeletes:
    """The real queue adapter, whose deletes wait until `release()`; each records what the
    store held for the runs when the consumer asked for it."""

    def __init__(self, aws: Aws, store: SqlStore, run_ids: tuple[str, ...]) -> None:
        self._aws = aws
        self._store = store
        self._run_ids = run_ids
        self._released = asyncio.Event()
        self.asked = asyncio.Event()
        self.seen: list[dict[str, tuple[Phase, int, int]]] = []
        """Per delete asked for: run id -> (phase, version, attachments) in SQLite then."""

    def release(self) -> None:
        self._released.set()

    async def receive_messages(
        self, queue_url: str, region: str, *, wait_s: int = 20, max_messages: int = 10
    ) -> list[QueueMessage]:
        return await self._aws.receive_messages(
            queue_url, region, wait_s=wait_s, max_messages=max_messages
        )

    async def delete_message(self, queue_url: str, receipt: str, region: str) -> None:
        snapshot = {}
        for run_id in self._run_ids:
            record = await self._store.get_run(run_id)
            assert record is not None
            attached = len(await self._store.attachments(run_id))
            snapshot[run_id] = (record.run.phase, record.run.version, attached)
        self.seen.append(snapshot)
        self.asked.set()
        await self._released.wait()
        await self._aws.delete_message(queue_url, receipt, region)


async def receive(queue: HeldDeletes, events: Events, count: int) -> list[QueueMessage]:
    """Receive `count` messages (moto may hand them out over several calls)."""
    got: list[QueueMessage] = []
    for _ in range(10):
        got += await queue.receive_messages(events.url, REGION, wait_s=1)
        if len(got) >= count:
            break
    assert len(got) == count, got
    return got


async def test_a_state_change_is_deleted_only_after_its_transition_and_a_redelivery_is_a_no_op(
    harness: Harness,
) -> None:
    events = Events(harness.fleet, "ev-state-commit")
    daemon = await harness.start(**SLOW)  # no consumer of its own: this test drives one
    assert daemon.consumer is None and harness.aws is not None and harness.store is not None
    queue = HeldDeletes(harness.aws, harness.store, ("ondemand", "spot"))
    consumer = EventConsumer(
        queue, events.url, REGION, lambda: list(daemon.monitors.values()), harness.store,
        SystemClock(), spot_margin_s=15.0, wait_s=1,
    )  # fmt: skip
    ondemand, spot = harness.fleet.launch(2)
    await harness.attach("ondemand", ondemand)
    await harness.attach("spot", spot, spot=True)
    for run_id in ("ondemand", "spot"):
        await harness.wait_phase(run_id, P.RUNNING)
        await checks_scheduled_late(harness, run_id)
    harness.fleet.put("runs/ondemand/crash/error.log", "Killed\n")

    # AWS ends both instances; sweeps are 30 s apart: only the messages explain a reaction.
    harness.fleet.terminate(ondemand)
    harness.fleet.terminate(spot)
    events.send(state_change(ondemand, "terminated"))
    events.send(state_change(spot, "terminated"))
    messages = await receive(queue, events, 2)

    for message in messages:
        queue.asked.clear()
        handling = asyncio.create_task(consumer.handle(message))
        await asyncio.wait_for(queue.asked.wait(), 10)
        handling.cancel()  # the daemon dies between the commit and the delete
        with pytest.raises(asyncio.CancelledError):
            await handling

    # Each delete was asked for only once its run's transition (and, for the crash, the
    # crash report's attachment) was in SQLite.
    ended = {ondemand: ("ondemand", P.CRASHED, 1), spot: ("spot", P.INTERRUPTED, 0)}
    for message, seen in zip(messages, queue.seen, strict=True):
        run_id, phase, attached = ended[json.loads(message.body)["detail"]["instance-id"]]
        assert (seen[run_id][0], seen[run_id][2]) == (phase, attached), seen
    second = queue.seen[-1]
    crashed, interrupted = await harness.run("ondemand"), await harness.run("spot")
    assert crashed.outcome is Outcome.CRASHED, crashed.reason
    assert crashed.reason.startswith("instance terminated without a request"), crashed.reason
    assert interrupted.outcome is Outcome.INTERRUPTED, interrupted.reason
    assert interrupted.reason.startswith("spot instance terminated without a request")
    assert (second["ondemand"][1], second["spot"][1]) == (crashed.version, interrupted.version)
    assert events.depth() == (0, 2)  # neither was deleted
    assert consumer.handled == 0
    describes = harness.calls("DescribeInstances")
    lists = harness.calls("ListObjectsV2")

    # Redelivery after the visibility timeout: nothing owns the instances any more.
    queue.release()
    for message in messages:
        events.sqs.change_message_visibility(
            QueueUrl=events.url, ReceiptHandle=message.receipt, VisibilityTimeout=0
        )
    again = await receive(queue, events, 2)
    assert sorted(m.message_id for m in again) == sorted(m.message_id for m in messages)
    assert all(m.receive_count == 2 for m in again)
    for message in again:
        assert await consumer.handle(message) is True

    assert phases(await history(harness, "ondemand")) == [P.PENDING, P.RUNNING, P.CRASHED]
    assert phases(await history(harness, "spot")) == [P.PENDING, P.RUNNING, P.INTERRUPTED]
    assert (await harness.run("ondemand")).version == crashed.version
    assert (await harness.run("spot")).version == interrupted.version
    assert len(await harness.store.attachments("ondemand")) == 1
    assert (harness.calls("DescribeInstances"), harness.calls("ListObjectsV2")) == (
        describes, lists,
    )  # fmt: skip
    assert (harness.calls("StopInstances"), harness.calls("TerminateInstances")) == (0, 0)
    assert consumer.handled == 2
    assert events.depth() == (0, 0)
    # The redeliveries came after the runs ended: recorded against them, not as unowned.
    late = [
        (a["kind"], a["subject"], a["detail"]["state"], a["detail"]["run_id"])
        for a in await audit(harness)
    ]
    assert sorted(late) == sorted([("ended-run", ondemand, "terminated", "ondemand"),
                                   ("ended-run", spot, "terminated", "spot")])  # fmt: skip
    assert (await harness.store.attachments("ondemand"))[0].uri == (
        f"s3://{BUCKET}/runs/ondemand/crash/error.log"
    )
