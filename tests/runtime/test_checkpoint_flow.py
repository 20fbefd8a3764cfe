"""Checkpoint safety and resume, in-process against real moto, real SQLite and real processes.

The "instance" is this machine: the local transport runs `python -m supervisor.instance`
here, which signals a real stand-in trainer (`tests/instance/trainer.py`), uploads its newest
checkpoint to moto and writes the manifest that the daemon then verifies with HeadObject.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from supervisor.adapters.aws import Aws
from supervisor.adapters.shell import LocalShell
from supervisor.core.checkpoint import (
    CommandKind,
    CommandResult,
    InstanceCommand,
    Manifest,
    StoredObject,
)
from supervisor.core.completion import ListRequest
from supervisor.core.errors import InvalidTransition
from supervisor.core.idle import Datapoint, IdleMetric
from supervisor.core.machine import Transition
from supervisor.core.run import TERMINAL_PHASES, CheckpointStatus, Outcome, Phase, Run
from supervisor.core.spec import LaunchTemplate
from supervisor.core.values import InstanceId, InstanceState, ObjectInfo
from supervisor.core.zombies import InstanceSeen
from supervisor.runtime.daemon import Daemon
from supervisor.runtime.monitor import Monitor
from supervisor.runtime.ports import CallCounts
from tests.conftest import AMI, BUCKET, REGION, Fleet
from tests.runtime.conftest import Harness
from tests.runtime.trainers import Trainer, Trainers, clear, is_running, is_trainer, pid_in
from tests.runtime.waiting import wait_for

P = Phase
END_S = 30.0  # the longest any run here may take to reach its end


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- a harness with checkpoint helpers ---------------------------------------------------------


class CheckpointHarness(Harness):
    """`Harness`, with helpers for checkpointed runs."""

    @property
    def api_daemon(self) -> Daemon:
        assert self.daemon is not None
        return self.daemon

    async def history(self, run_id: str) -> list[Transition]:
        assert self.store is not None
        return [record.transition for record in await self.store.transitions(run_id)]

    async def ended(self, run_id: str, within_s: float = END_S) -> Run:
        return await self.wait_phase(run_id, *TERMINAL_PHASES, within_s=within_s)

    async def resumed(self, run_id: str, within_s: float = END_S) -> Run:
        return await self.wait_phase(run_id, P.RUNNING, *TERMINAL_PHASES, within_s=within_s)

    def monitor(self, run_id: str) -> Monitor:
        return self.api_daemon.monitors[run_id]

    def commands_sent(self, run_id: str) -> list[str]:
        """Kinds of the instance commands the run's current monitor sent (recent ones)."""
        return [e.fields["kind"] for e in self.monitor(run_id).recent if e.event == "command_sent"]

    def manifest(self, run_id: str) -> Manifest:
        body = self.fleet.s3.get_object(
            Bucket=BUCKET, Key=f"runs/{run_id}/checkpoints/_manifest.json"
        )["Body"].read()
        return Manifest.model_validate_json(body)


@pytest.fixture
async def ck(fleet: Fleet) -> AsyncIterator[CheckpointHarness]:
    state_dir = Path(tempfile.mkdtemp(prefix="sv-ck-", dir="/tmp"))  # short: socket path limit
    h = CheckpointHarness(fleet, state_dir)
    try:
        yield h
    finally:
        await h.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def only(transitions: list[Transition], to: Phase) -> Transition:
    found = [t for t in transitions if t.to_phase is to]
    assert len(found) == 1, f"expected one transition to {to}, got {found}"
    return found[0]


def last(transitions: list[Transition], to: Phase) -> Transition:
    found = [t for t in transitions if t.to_phase is to]
    assert found, f"no transition to {to} in {[t.to_phase for t in transitions]}"
    return found[-1]


def seconds_between(earlier: Transition, later: Transition) -> float:
    return (later.at - earlier.at).total_seconds()


async def complete(ck: CheckpointHarness, run_id: str, trainer: Trainer, **spec: Any) -> Run:
    """Attach a checkpointed run of a started trainer, mark it complete, wait for its end."""
    await trainer.started()
    (instance,) = ck.fleet.launch()
    await ck.attach(run_id, instance, **trainer.spec(**spec))
    await ck.wait_phase(run_id, P.RUNNING)
    ck.fleet.put(f"runs/{run_id}/COMPLETE")
    return await ck.ended(run_id)


# -- 1, 2: the whole path, and the two grace modes -------------------------------------------


async def test_completion_saves_uploads_verifies_then_stops(
    ck: CheckpointHarness, trainers: Trainers
) -> None:
    trainer = trainers.start("t1")
    await ck.start()
    run = await complete(ck, "r1", trainer)

    assert (run.phase, run.outcome, run.checkpoint) == (
        P.STOPPED,
        Outcome.COMPLETED,
        CheckpointStatus.VERIFIED,
    ), run.reason
    assert ck.fleet.state(run.instance_id) == "stopped"
    history = await ck.history("r1")
    assert [t.to_phase for t in history] == [
        P.PENDING,
        P.RUNNING,
        P.CHECKPOINTING,
        P.GRACE,
        P.STOPPING,
        P.STOPPED,
    ]
    # The trainer got SIGTERM: it saved its final checkpoint and exited cleanly.
    assert trainer.exit_code() == 0
    (final,) = trainer.checkpoint_dir.glob("step_*_final.pt")

    # The newest checkpoint (the final one) is in S3, byte for byte, and the manifest says so.
    manifest = ck.manifest("r1")
    assert manifest.checkpoint == final.name
    (entry,) = manifest.files
    assert entry.key == f"runs/r1/checkpoints/{final.name}"
    stored = ck.fleet.s3.get_object(Bucket=BUCKET, Key=entry.key)["Body"].read()
    assert stored == final.read_bytes()
    assert entry.sha256 == sha256_of(final)
    assert manifest.process.signalled and manifest.process.exited
    assert trainer.process is not None and manifest.process.pid == trainer.process.pid

    grace = only(history, P.GRACE)
    assert (grace.detail["files"], grace.detail["bytes"]) == (1, final.stat().st_size)
    assert grace.detail["checkpoint_name"] == final.name
    assert grace.detail["process"]["after_timeout"] == "none"
    # until-quiet (the default with a checkpoint_dir): 30 s of grace, ended once quiet.
    stopping = only(history, P.STOPPING)
    assert stopping.detail["grace_saved_s"] > 20
    assert seconds_between(grace, stopping) < 10
    assert ck.calls("StopInstances") == 1
    assert ck.calls("TerminateInstances") == 0


async def test_until_quiet_ends_grace_early_and_fixed_waits_it_out(
    ck: CheckpointHarness, trainers: Trainers
) -> None:
    quiet, fixed = trainers.start("quiet"), trainers.start("fixed")
    await ck.start()
    runs = await asyncio.gather(
        complete(ck, "quiet", quiet, grace_s=30.0, quiet_s=0.3),
        complete(ck, "fixed", fixed, grace_mode="fixed", grace_s=1.5),
    )
    assert [(r.phase, r.checkpoint) for r in runs] == [(P.STOPPED, CheckpointStatus.VERIFIED)] * 2

    history = await ck.history("quiet")
    grace, stopping = only(history, P.GRACE), only(history, P.STOPPING)
    assert stopping.from_phase is P.GRACE
    assert stopping.detail["grace_saved_s"] > 20
    assert seconds_between(grace, stopping) < 10
    assert "grace ended early" in stopping.reason

    history = await ck.history("fixed")
    grace, stopping = only(history, P.GRACE), only(history, P.STOPPING)
    assert stopping.from_phase is P.GRACE
    assert seconds_between(grace, stopping) >= 1.5
    assert "grace_saved_s" not in stopping.detail
    assert stopping.reason.startswith("grace over")


# -- 3: a trainer that ignores SIGTERM -------------------------------------------------------


async def test_a_trainer_ignoring_sigterm_is_killed_or_left_running_as_asked(
    ck: CheckpointHarness, trainers: Trainers
) -> None:
    # step_s 0.3: the trainer left running rotates files slower than an upload takes.
    killed = trainers.start("killed", ignore_sigterm=True, step_s=0.3)
    left = trainers.start("left", ignore_sigterm=True, step_s=0.3)
    await ck.start()
    runs = await asyncio.gather(
        complete(ck, "killed", killed, sigterm_timeout_s=0.5),
        complete(ck, "left", left, sigterm_timeout_s=0.5, on_sigterm_timeout="leave", grace_s=0.5),
    )
    assert [(r.phase, r.checkpoint) for r in runs] == [(P.STOPPED, CheckpointStatus.VERIFIED)] * 2

    process = only(await ck.history("killed"), P.GRACE).detail["process"]
    assert (process["signalled"], process["exited"], process["after_timeout"]) == (
        True,
        True,
        "sigkill",
    )
    assert process["waited_s"] >= 0.5
    assert killed.exit_code() == -signal.SIGKILL

    process = only(await ck.history("left"), P.GRACE).detail["process"]
    assert (process["signalled"], process["exited"], process["after_timeout"]) == (
        True,
        False,
        "left-running",
    )
    assert left.process is not None and left.process.poll() is None  # killed at teardown


# -- 4, 5: a checkpoint that cannot be verified ---------------------------------------------


async def test_failed_upload_blocks_terminate_or_keeps_running_and_resume_needs_from_scratch(
    ck: CheckpointHarness, trainers: Trainers
) -> None:
    policy, keep = trainers.start("policy"), trainers.start("keep")
    missing = "s3://no-such-bucket-ck/checkpoints/"
    await ck.start()
    (downgraded, failed) = await asyncio.gather(
        complete(
            ck, "policy", policy,
            checkpoint_s3=missing, on_complete="terminate", checkpoint_attempts=2, grace_s=0.3,
            resume_command=policy.resume_command(),
        ),
        complete(
            ck, "keep", keep,
            checkpoint_s3=missing, on_complete="terminate", checkpoint_attempts=2,
            on_checkpoint_failure="keep-running",
        ),
    )  # fmt: skip
    assert ck.store is not None

    # on_checkpoint_failure=stop (the default): the terminate becomes a stop.
    assert (downgraded.phase, downgraded.outcome, downgraded.checkpoint) == (
        P.STOPPED,
        Outcome.COMPLETED,
        CheckpointStatus.UNVERIFIED,
    ), downgraded.reason
    assert ck.fleet.state(downgraded.instance_id) == "stopped"
    history = await ck.history("policy")
    assert [t.to_phase for t in history] == [
        P.PENDING,
        P.RUNNING,
        P.CHECKPOINTING,
        P.GRACE,
        P.STOPPING,
        P.STOPPED,
    ]
    grace, stopping = only(history, P.GRACE), only(history, P.STOPPING)
    assert "NoSuchBucket" in grace.reason
    assert "after 2 attempt(s)" in grace.reason
    assert "checkpoint_unverified" in grace.reason
    assert grace.detail["checkpoint"] == "unverified"
    assert "downgraded to stop" in stopping.reason
    assert stopping.detail["downgraded"] == "terminate->stop"
    assert [a.action for a in await ck.store.actions("policy")] == ["stop"]

    # on_checkpoint_failure=keep-running: the run fails for a person, the instance runs on.
    assert (failed.phase, failed.error_code, failed.checkpoint) == (
        P.FAILED,
        "CheckpointUnverified",
        CheckpointStatus.UNVERIFIED,
    ), failed.reason
    assert "NoSuchBucket" in failed.reason
    assert ck.fleet.state(failed.instance_id) == "running"
    assert await ck.store.actions("keep") == []

    assert ck.calls("TerminateInstances") == 0
    assert ck.calls("StopInstances") == 1  # the first run's

    # Nothing verified to resume from: refused, unless from scratch (then nothing restored).
    with pytest.raises(InvalidTransition, match="--from-scratch"):
        await ck.api_daemon.views.request("policy", "resume")
    assert (await ck.run("policy")).phase is P.STOPPED
    assert ck.calls("StartInstances") == 0

    view = await ck.api_daemon.views.request("policy", "resume", from_scratch=True)
    assert view.phase == "resuming"
    run = await ck.resumed("policy")
    assert (run.phase, run.attempt) == (P.RUNNING, 2), run.reason
    assert ck.commands_sent("policy") == ["start"]  # no restore
    assert ck.fleet.state(run.instance_id) == "running"
    assert ck.calls("StartInstances") == 1
    resumed = last(await ck.history("policy"), P.RUNNING)
    assert resumed.detail["from_scratch"] is True
    assert "from scratch" in resumed.reason
    await assert_resumed_trainer_runs(ck, "policy", policy)


class TamperingShell:
    """The real local shell; after a checkpoint step succeeded, each uploaded file is
    overwritten in S3 with other bytes by a plain PUT (no checksum), before the result
    goes back to the daemon."""

    def __init__(self, fleet: Fleet) -> None:
        self._inner = LocalShell()
        config = Config(request_checksum_calculation="when_required")
        self._s3: Any = boto3.client(
            "s3", endpoint_url=fleet.url, region_name=REGION, config=config
        )
        self.tampered: list[str] = []

    async def run(
        self,
        instance_id: str,
        region: str,
        command: InstanceCommand,
        *,
        timeout_s: float,
        comment: str,
    ) -> CommandResult:
        result = await self._inner.run(
            instance_id, region, command, timeout_s=timeout_s, comment=comment
        )
        if command.kind is CommandKind.CHECKPOINT and result.ok:
            await asyncio.to_thread(self._tamper, str(result.result["manifest_key"]))
        return result

    def _tamper(self, manifest_key: str) -> None:
        body = self._s3.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read()
        for entry in Manifest.model_validate_json(body).files:
            self._s3.put_object(Bucket=BUCKET, Key=entry.key, Body=b"not the checkpoint")
            self.tampered.append(entry.key)


async def test_an_object_changed_after_upload_is_not_verified_and_blocks_terminate(
    ck: CheckpointHarness, trainers: Trainers
) -> None:
    shell = TamperingShell(ck.fleet)
    ck.local_shell = lambda: shell
    trainer = trainers.start("t1")
    await ck.start()
    run = await complete(
        ck, "r1", trainer, on_complete="terminate", checkpoint_attempts=1, grace_s=0.3
    )

    (key,) = shell.tampered
    assert (run.phase, run.checkpoint) == (P.STOPPED, CheckpointStatus.UNVERIFIED), run.reason
    assert ck.fleet.state(run.instance_id) == "stopped"
    assert ck.calls("TerminateInstances") == 0
    history = await ck.history("r1")
    grace, stopping = only(history, P.GRACE), only(history, P.STOPPING)
    assert "checkpoint not verified" in grace.reason
    assert grace.detail["problems"], grace.detail
    assert all(problem.startswith(key) for problem in grace.detail["problems"])
    assert f"{key}: size" in " ".join(grace.detail["problems"])
    assert key in grace.reason
    assert stopping.detail["downgraded"] == "terminate->stop"


# -- 7: a person's stop ---------------------------------------------------------------------


async def test_a_persons_stop_saves_the_checkpoint_first(
    ck: CheckpointHarness, trainers: Trainers
) -> None:
    trainer = trainers.start("t1")
    await trainer.started()
    (instance,) = ck.fleet.launch()
    await ck.start()
    await ck.attach("r1", instance, **trainer.spec())
    await ck.wait_phase("r1", P.RUNNING)

    view = await ck.api_daemon.views.request("r1", "stop")
    assert view.phase == "checkpointing"
    run = await ck.ended("r1")
    assert (run.phase, run.outcome, run.checkpoint) == (
        P.STOPPED,
        Outcome.CANCELLED,
        CheckpointStatus.VERIFIED,
    ), run.reason
    history = await ck.history("r1")
    assert [t.to_phase for t in history] == [
        P.PENDING,
        P.RUNNING,
        P.CHECKPOINTING,
        P.STOPPING,
        P.STOPPED,
    ]
    assert "requested by user" in only(history, P.CHECKPOINTING).reason
    assert only(history, P.STOPPING).detail["files"] == 1
    assert ck.fleet.state(instance) == "stopped"
    assert trainer.exit_code() == 0
    (final,) = trainer.checkpoint_dir.glob("step_*_final.pt")
    assert ck.manifest("r1").files[0].sha256 == sha256_of(final)


# -- 8, 9 (and 6): resume; terminate with a verified checkpoint -----------------------------


def assert_restored(trainer: Trainer, manifest: Manifest) -> None:
    for entry in manifest.files:
        assert sha256_of(trainer.checkpoint_dir / entry.path) == entry.sha256, entry.path


async def assert_resumed_trainer_runs(ck: CheckpointHarness, run_id: str, trainer: Trainer) -> int:
    pid = last(await ck.history(run_id), P.RUNNING).detail["pid"]
    assert isinstance(pid, int)
    assert pid_in(trainer.pid_file) == pid
    assert is_trainer(pid, trainer.pid_file)
    assert is_running(pid)
    return pid


async def stays_running(ck: CheckpointHarness, run_id: str, checks: int = 4) -> None:
    """Let the monitor list the prefix `checks` more times; the run must still be running."""
    monitor = ck.monitor(run_id)
    target = monitor.run.checks + checks

    async def checked() -> bool:
        return monitor.run.checks >= target or monitor.run.phase is not P.RUNNING

    await wait_for(checked, what=f"{checks} more prefix checks of {run_id}")
    assert monitor.run.phase is P.RUNNING, monitor.run.reason
    assert (await ck.run(run_id)).phase is P.RUNNING


async def test_resume_of_a_stopped_run_restores_the_checkpoint_and_restarts_training(
    ck: CheckpointHarness, trainers: Trainers
) -> None:
    trainer = trainers.start("t1")
    await ck.start()
    run = await complete(ck, "r1", trainer, resume_command=trainer.resume_command())
    assert (run.phase, run.checkpoint) == (P.STOPPED, CheckpointStatus.VERIFIED), run.reason
    assert trainer.exit_code() == 0
    manifest = ck.manifest("r1")
    clear(trainer.checkpoint_dir)  # a fresh disk: everything must come back from S3

    view = await ck.api_daemon.views.request("r1", "resume")
    assert (view.phase, view.attempt) == ("resuming", 1)
    run = await ck.resumed("r1")
    assert (run.phase, run.attempt, run.instance_id) == (P.RUNNING, 2, view.instance_id), run.reason
    assert ck.commands_sent("r1") == ["restore", "start"]
    assert run.checkpoint is None and run.outcome is None
    assert ck.fleet.state(run.instance_id) == "running"
    assert ck.calls("StartInstances") == 1
    assert_restored(trainer, manifest)
    await assert_resumed_trainer_runs(ck, "r1", trainer)
    history = await ck.history("r1")
    assert [t.to_phase for t in history][-3:] == [P.STOPPED, P.RESUMING, P.RUNNING]
    resumed = last(history, P.RUNNING)
    assert resumed.detail["attempt"] == 2 and resumed.detail["from_scratch"] is False
    assert "checkpoint restored" in resumed.reason

    # The first attempt's COMPLETE marker is still there: it does not end the new attempt.
    await stays_running(ck, "r1")
    assert ck.store is not None
    instances = await ck.store.instances("r1")
    assert [(i.instance_id, i.source) for i in instances] == [(run.instance_id, "attached")]


async def test_a_verified_checkpoint_allows_terminate_and_resume_launches_from_the_template(
    ck: CheckpointHarness, trainers: Trainers
) -> None:
    template = ck.fleet.ec2.create_launch_template(
        LaunchTemplateName="ck-resume",
        LaunchTemplateData={"ImageId": AMI, "InstanceType": "t3.micro"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    plain, launched = trainers.start("plain"), trainers.start("launched")
    await ck.start()
    runs = await asyncio.gather(
        complete(
            ck, "plain", plain, on_complete="terminate", resume_command=plain.resume_command()
        ),
        complete(
            ck, "lt", launched,
            on_complete="terminate", launch_template={"id": template},
            resume_command=launched.resume_command(),
        ),
    )  # fmt: skip

    # The invariant lets a terminate through once the checkpoint is verified.
    for run in runs:
        assert (run.phase, run.outcome, run.checkpoint) == (
            P.TERMINATED,
            Outcome.COMPLETED,
            CheckpointStatus.VERIFIED,
        ), run.reason
        assert ck.fleet.state(run.instance_id) == "terminated"
        history = await ck.history(run.spec.run_id)
        assert [t.to_phase for t in history] == [
            P.PENDING,
            P.RUNNING,
            P.CHECKPOINTING,
            P.GRACE,
            P.TERMINATING,
            P.TERMINATED,
        ]
        assert "downgraded" not in only(history, P.TERMINATING).detail
    assert (ck.calls("TerminateInstances"), ck.calls("StopInstances")) == (2, 0)

    # Its instance is gone and the spec names no launch template: no resume.
    with pytest.raises(InvalidTransition, match="launch_template"):
        await ck.api_daemon.views.request("plain", "resume")
    assert (await ck.run("plain")).phase is P.TERMINATED

    # With a launch template: a new instance, the checkpoint restored onto it, training again.
    old = runs[1].instance_id
    manifest = ck.manifest("lt")
    clear(launched.checkpoint_dir)
    await ck.api_daemon.views.request("lt", "resume")
    run = await ck.resumed("lt")
    assert (run.phase, run.attempt) == (P.RUNNING, 2), run.reason
    assert ck.commands_sent("lt") == ["restore", "start"]
    new = run.instance_id
    assert new != old
    assert ck.fleet.state(new) == "running"
    reply = ck.fleet.ec2.describe_instances(InstanceIds=[new])
    tags: Mapping[str, str] = {
        t["Key"]: t["Value"] for t in reply["Reservations"][0]["Instances"][0].get("Tags", [])
    }
    assert tags.get("supervisor:run-id") == "lt"
    assert ck.calls("StartInstances") == 0
    assert ck.store is not None
    instances = await ck.store.instances("lt")
    assert [(i.instance_id, i.source) for i in instances] == [
        (old, "attached"),
        (new, "launched"),
    ]
    assert last(await ck.history("lt"), P.RUNNING).detail["instance_id"] == new
    assert_restored(launched, manifest)
    await assert_resumed_trainer_runs(ck, "lt", launched)
    assert ck.calls("RunInstances") == 1


class SlowLaunch:
    """The real cloud adapter, with RunInstances taking `delay_s` longer (on AWS a launch
    takes a second or more), so that reconcile sweeps run while a launch is in flight."""

    def __init__(self, aws: Aws, delay_s: float) -> None:
        self._aws = aws
        self._delay_s = delay_s

    @property
    def default_region(self) -> str | None:
        return self._aws.default_region

    @property
    def counter(self) -> CallCounts:
        return self._aws.counter

    async def list_objects(self, request: ListRequest, region: str) -> tuple[ObjectInfo, ...]:
        return await self._aws.list_objects(request, region)

    async def list_uploads(self, bucket: str, prefix: str, region: str) -> tuple[str, ...]:
        return await self._aws.list_uploads(bucket, prefix, region)

    async def read_object(self, bucket: str, key: str, region: str, *, limit: int = 65536) -> str:
        return await self._aws.read_object(bucket, key, region, limit=limit)

    async def read_tail(
        self, bucket: str, key: str, region: str, *, limit: int = 65536
    ) -> tuple[str, int]:
        return await self._aws.read_tail(bucket, key, region, limit=limit)

    async def read_range(
        self, bucket: str, key: str, region: str, start: int, *, limit: int = 1 << 20
    ) -> tuple[bytes, int]:
        return await self._aws.read_range(bucket, key, region, start, limit=limit)

    async def describe_instances(
        self, ids: Sequence[InstanceId], region: str
    ) -> dict[InstanceId, InstanceState]:
        return await self._aws.describe_instances(ids, region)

    async def describe_tagged(self, tag_key: str, region: str) -> list[InstanceSeen]:
        return await self._aws.describe_tagged(tag_key, region)

    async def instance_exists(self, instance_id: InstanceId, region: str) -> bool:
        return await self._aws.instance_exists(instance_id, region)

    async def probe_prefix(self, bucket: str, prefix: str, region: str) -> None:
        await self._aws.probe_prefix(bucket, prefix, region)

    async def stop_instance(self, instance_id: InstanceId, region: str) -> InstanceState:
        return await self._aws.stop_instance(instance_id, region)

    async def terminate_instance(self, instance_id: InstanceId, region: str) -> InstanceState:
        return await self._aws.terminate_instance(instance_id, region)

    async def start_instance(self, instance_id: InstanceId, region: str) -> InstanceState:
        return await self._aws.start_instance(instance_id, region)

    async def head_object(self, bucket: str, key: str, region: str) -> StoredObject | None:
        return await self._aws.head_object(bucket, key, region)

    async def launch_from_template(
        self, template: LaunchTemplate, tags: Mapping[str, str], region: str, *, token: str
    ) -> InstanceId:
        await asyncio.sleep(self._delay_s)
        return await self._aws.launch_from_template(template, tags, region, token=token)

    async def create_tags(
        self, instance_id: InstanceId, tags: Mapping[str, str], region: str
    ) -> None:
        await self._aws.create_tags(instance_id, tags, region)

    async def utilisation(
        self,
        ids: Sequence[InstanceId],
        metric: IdleMetric,
        region: str,
        *,
        start: datetime,
        end: datetime,
    ) -> dict[InstanceId, tuple[Datapoint, ...]]:
        return await self._aws.utilisation(ids, metric, region, start=start, end=end)


async def test_a_stale_sweep_of_the_old_instance_does_not_launch_a_second_one(
    ck: CheckpointHarness, trainers: Trainers
) -> None:
    template = ck.fleet.ec2.create_launch_template(
        LaunchTemplateName="ck-slow",
        LaunchTemplateData={"ImageId": AMI, "InstanceType": "t3.micro"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    trainer = trainers.start("t1")
    await ck.start(wrap=lambda aws: SlowLaunch(aws, delay_s=0.5))
    run = await complete(
        ck, "r1", trainer,
        on_complete="terminate", launch_template={"id": template},
        resume_command=trainer.resume_command(),
    )  # fmt: skip
    assert run.phase is P.TERMINATED, run.reason
    await ck.api_daemon.views.request("r1", "resume")
    run = await ck.resumed("r1")
    assert (run.phase, run.attempt) == (P.RUNNING, 2), run.reason
    reply = ck.fleet.ec2.describe_instances(
        Filters=[
            {"Name": "tag:supervisor:run-id", "Values": ["r1"]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    alive = [i["InstanceId"] for r in reply["Reservations"] for i in r["Instances"]]
    assert alive == [run.instance_id], f"launched and left running: {alive}"
    assert ck.calls("RunInstances") == 1


async def test_throttled_reads_while_verifying_are_retried_not_taken_for_a_missing_file(
    ck: CheckpointHarness, trainers: Trainers
) -> None:
    """Found by the soak: a throttled HEAD read as "missing in S3" and reran the whole
    checkpoint step (and, after three, downgraded a terminate to a stop)."""
    trainer = trainers.start("t-throttled")
    await ck.start(faults="HeadObject=Throttling*2;GetObject=SlowDown*1")
    run = await complete(ck, "r-throttled", trainer)

    assert (run.phase, run.checkpoint) == (P.STOPPED, CheckpointStatus.VERIFIED), run.reason
    grace = only(await ck.history("r-throttled"), P.GRACE)
    assert grace.detail["checkpoint_attempt"] == 1  # verified on the first checkpoint step
    assert ck.calls("HeadObject") == 3  # one file: two throttled, then read
