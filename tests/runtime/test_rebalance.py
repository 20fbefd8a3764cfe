"""EC2 rebalance recommendations, in-process against a real moto SQS queue, real moto EC2/S3,
real SQLite and a real stand-in trainer over the local transport.

The message is the real EventBridge JSON (tests/fixtures/aws-events/), with the instance id and
time replaced. With on_rebalance=checkpoint the instance program uploads the newest checkpoint
(`checkpoint --mode early`) and training goes on; the shell here is the real local one, whose
early steps wait at a gate the test opens, so it can see what happens while one is under way.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from supervisor.adapters.shell import LocalShell
from supervisor.core.checkpoint import CommandResult, InstanceCommand
from supervisor.core.run import Phase, Run
from supervisor.runtime.daemon import Daemon
from tests.conftest import BUCKET, REGION
from tests.runtime.conftest import Harness
from tests.runtime.test_events import (
    REACT_S,
    SLOW,
    Events,
    audit,
    commands_sent,
    handled,
    history,
    phases,
    spot_warning,
)
from tests.runtime.trainers import Trainer, Trainers, pid_in
from tests.runtime.waiting import WAIT_S, wait_for

P = Phase
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "aws-events"
MANIFEST_KEY = "runs/rb/checkpoints/early/_manifest.json"  # apart from the final one


def rebalance_recommendation(instance_id: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        (FIXTURES / "ec2-rebalance-recommendation.json").read_text(encoding="utf-8")
    )
    assert body["detail-type"] == "EC2 Instance Rebalance Recommendation"
    body["id"] = str(uuid.uuid4())
    body["time"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body["resources"] = [f"arn:aws:ec2:{REGION}:123456789012:instance/{instance_id}"]
    body["detail"]["instance-id"] = instance_id
    return body


class GatedShell:
    """The real local shell; an early checkpoint step waits at `gate` before it runs."""

    def __init__(self) -> None:
        self._inner = LocalShell()
        self.gate = asyncio.Event()
        self.early = 0
        """Early checkpoint steps started."""
        self.under_way = 0
        self.most_at_once = 0
        self.cancelled = 0
        """Early checkpoint steps cancelled while they waited or ran."""

    async def run(
        self,
        instance_id: str,
        region: str,
        command: InstanceCommand,
        *,
        timeout_s: float,
        comment: str,
    ) -> CommandResult:
        if command.option("mode") != "early":
            return await self._inner.run(
                instance_id, region, command, timeout_s=timeout_s, comment=comment
            )
        self.early += 1
        self.under_way += 1
        self.most_at_once = max(self.most_at_once, self.under_way)
        try:
            await self.gate.wait()
            return await self._inner.run(
                instance_id, region, command, timeout_s=timeout_s, comment=comment
            )
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.under_way -= 1

    async def started(self, count: int) -> None:
        async def reached() -> bool:
            return self.early >= count

        await wait_for(reached, within_s=REACT_S, what=f"{count} early checkpoint step(s)")


async def attach_training(
    harness: Harness, trainers: Trainers, shell: GatedShell, queue: str, **spec: Any
) -> tuple[Daemon, Events, Trainer, str]:
    """A running run "rb" of a real trainer, watched by a daemon that consumes `queue`."""
    harness.local_shell = lambda: shell
    trainer = trainers.start("t1")
    events = Events(harness.fleet, queue)
    daemon = await harness.start(events_queue_url=events.url, **SLOW)
    await trainer.started()
    (instance,) = harness.fleet.launch()
    await harness.attach("rb", instance, **trainer.spec(spot=True, **spec))
    await harness.wait_phase("rb", P.RUNNING)
    return daemon, events, trainer, instance


async def settled(daemon: Daemon, run_id: str) -> None:
    """Wait until every instance command the run's monitor sent has finished and it is idle."""
    monitor = daemon.monitors[run_id]

    async def done() -> bool:
        events = [e.event for e in monitor.recent]
        finished = events.count("command_finished") == events.count("command_sent")
        return finished and not monitor.busy

    await wait_for(done, what=f"{run_id}'s commands to finish")


async def verified_early(harness: Harness, run_id: str) -> Run:
    async def verified() -> bool:
        return (await harness.run(run_id)).verified_attempt is not None

    await wait_for(verified, what=f"{run_id}'s early checkpoint verified")
    return await harness.run(run_id)


async def test_a_recommendation_uploads_an_early_checkpoint_while_training_goes_on(
    harness: Harness, trainers: Trainers
) -> None:
    shell = GatedShell()
    daemon, events, trainer, instance = await attach_training(
        harness, trainers, shell, "rb-checkpoint", on_rebalance="checkpoint"
    )
    pid = pid_in(trainer.pid_file)
    message = rebalance_recommendation(instance)

    events.send(message)
    await shell.started(1)
    # Deleted once the step has started: the upload may take minutes.
    await handled(daemon, 1)
    await events.drained()
    # The same message again (at least once delivery) while the first step is under way.
    events.send(message)

    async def received() -> bool:
        return events.depth() == (0, 1)

    await wait_for(received, within_s=REACT_S, what="the repeat to be received")
    assert (shell.early, shell.under_way) == (1, 1)
    shell.gate.set()

    run = await verified_early(harness, "rb")
    assert (run.phase, run.outcome, run.checkpoint, run.verified_attempt) == (
        P.RUNNING, None, None, 1,
    )  # fmt: skip
    assert trainer.process is not None and trainer.process.poll() is None, "training goes on"
    assert pid_in(trainer.pid_file) == pid
    manifest = json.loads(
        harness.fleet.s3.get_object(Bucket=BUCKET, Key=MANIFEST_KEY)["Body"].read()
    )
    assert manifest["checkpoint"].startswith("step_"), manifest
    assert not manifest["checkpoint"].endswith("_final.pt"), "not a final checkpoint"
    assert not list(trainer.checkpoint_dir.glob("step_*_final.pt"))

    await handled(daemon, 2, within_s=WAIT_S)
    await events.drained()
    await settled(daemon, "rb")
    assert shell.most_at_once == 1, "two early checkpoints were under way at once"
    assert set(commands_sent(daemon, "rb")) == {"checkpoint"}
    assert trainer.process.poll() is None
    assert (await harness.run("rb")).verified_attempt == 1
    assert phases(await history(harness, "rb")) == [P.PENDING, P.RUNNING]
    assert await audit(harness) == []
    assert harness.fleet.state(instance) == "running"
    assert (harness.calls("StopInstances"), harness.calls("TerminateInstances")) == (0, 0)


async def test_with_on_rebalance_ignore_a_recommendation_is_audited_and_nothing_runs(
    harness: Harness, trainers: Trainers
) -> None:
    trainer = trainers.make("t1")  # a checkpointed run; nothing may touch its trainer
    events = Events(harness.fleet, "rb-ignore")
    daemon = await harness.start(events_queue_url=events.url, **SLOW)
    (instance,) = harness.fleet.launch()
    await harness.attach("rb", instance, **trainer.spec(spot=True, on_rebalance="ignore"))
    await harness.wait_phase("rb", P.RUNNING)

    message = rebalance_recommendation(instance)
    events.send(message)
    await handled(daemon, 1)
    await events.drained()

    (entry,) = await audit(harness)
    assert (entry["source"], entry["kind"], entry["subject"]) == (
        "sqs", "rebalance-ignored", instance,
    )  # fmt: skip
    assert entry["detail"]["run_id"] == "rb"
    assert entry["detail"]["reason"].startswith("on_rebalance=ignore")
    assert entry["detail"]["message_id"]
    run = await harness.run("rb")
    assert (run.phase, run.verified_attempt, run.checkpoint) == (P.RUNNING, None, None)
    assert commands_sent(daemon, "rb") == []
    listed = harness.fleet.s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/rb/checkpoints/")
    assert listed["KeyCount"] == 0
    assert phases(await history(harness, "rb")) == [P.PENDING, P.RUNNING]


# -- the early step runs beside the run's other events -----------------------------------------


async def test_a_spot_warning_during_an_early_checkpoint_starts_the_final_one_at_once(
    harness: Harness, trainers: Trainers
) -> None:
    shell = GatedShell()
    daemon, events, _, instance = await attach_training(
        harness, trainers, shell, "rb-warned", on_rebalance="checkpoint"
    )
    events.send(rebalance_recommendation(instance))
    await shell.started(1)
    await handled(daemon, 1)

    events.send(spot_warning(instance))  # the upload is still under way

    await harness.wait_phase("rb", P.INTERRUPTING, within_s=REACT_S)

    async def early_step_cancelled() -> bool:
        return shell.cancelled == 1 and shell.under_way == 0

    await wait_for(early_step_cancelled, within_s=REACT_S, what="the early step to be cancelled")
    assert shell.early == 1


async def test_a_repeat_received_during_an_early_checkpoint_starts_no_second_one(
    harness: Harness, trainers: Trainers
) -> None:
    shell = GatedShell()
    daemon, events, _, instance = await attach_training(
        harness, trainers, shell, "rb-repeat", on_rebalance="checkpoint"
    )
    message = rebalance_recommendation(instance)
    events.send(message)
    await shell.started(1)
    await handled(daemon, 1)
    events.send(message)

    async def received() -> bool:
        return events.depth() == (0, 1)

    await wait_for(received, within_s=REACT_S, what="the repeat to be received")
    shell.gate.set()
    await handled(daemon, 2, within_s=WAIT_S)
    await settled(daemon, "rb")

    assert shell.early == 1
