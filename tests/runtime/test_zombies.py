"""The zombie sweep against the real moto server and a real SQLite store, with time driven by
an injected clock (a sweep is called, never waited for), plus the daemon running it.

Runs are put in the store in the phase a test needs; instances are real moto instances, and
what happened to them is read back from moto.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from supervisor.adapters.aws import Aws
from supervisor.adapters.control_views import zombie_view
from supervisor.adapters.faults import FaultPlan
from supervisor.adapters.sql_store import SqlStore
from supervisor.adapters.store import Store
from supervisor.core.errors import InvalidInput
from supervisor.core.events import Action
from supervisor.core.machine import Decision, Transition, new_run
from supervisor.core.run import CheckpointStatus, Outcome, Phase, Run
from supervisor.core.spec import RunSpec
from supervisor.core.values import InstanceId, InstanceState
from supervisor.core.zombies import (
    RUN_TAG,
    AttemptOutcome,
    Termination,
    Zombie,
    ZombieKind,
    ZombiePolicy,
    ZombieState,
)
from supervisor.runtime.settings import Settings
from supervisor.runtime.zombies import ZombieWatch
from tests.conftest import AMI, BUCKET, REGION, Fleet
from tests.runtime.conftest import Harness
from tests.runtime.waiting import wait_for


class FakeClock:
    """The injected clock: time moves only when a test says so."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC).replace(microsecond=0)

    def now(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@dataclass
class World:
    fleet: Fleet
    store: SqlStore
    aws: Aws
    clock: FakeClock

    def watch(
        self, *, auto: bool = True, wait_s: float = 300, cooldown_s: float = 300
    ) -> ZombieWatch:
        return ZombieWatch(
            self.store,
            self.aws,
            self.clock,
            policy=ZombiePolicy(auto_terminate=auto, wait_s=wait_s, cooldown_s=cooldown_s),
            interval_s=3600,
            retry_base_s=0,
        )

    async def run(
        self,
        run_id: str,
        instance: str,
        phase: Phase,
        *,
        checkpoint: CheckpointStatus | None = None,
        **spec: Any,
    ) -> Run:
        """A run attached an hour ago and in `phase` since a minute ago."""
        fields: dict[str, Any] = {
            "run_id": run_id,
            "instance_id": instance,
            "region": REGION,
            "s3_prefix": f"s3://{BUCKET}/runs/{run_id}/",
            "grace_s": 0,
            **spec,
        }
        created = new_run(RunSpec.build(**fields), now=self.clock.now() - timedelta(hours=1))
        await self.store.create_run(created)
        at = self.clock.now() - timedelta(minutes=1)
        outcome = Outcome.CRASHED if phase is Phase.CRASHED else None
        moved = created.run.evolve(
            phase=phase, outcome=outcome, version=2, phase_since=at, checkpoint=checkpoint
        )
        decision = Decision(
            run=moved, transition=Transition(Phase.PENDING, phase, at, "set by test", {})
        )
        await self.store.commit(created.run, decision, now=at)
        return moved

    def launch_tagged(self, run_id: str) -> str:
        reply = self.fleet.ec2.run_instances(
            ImageId=AMI,
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": RUN_TAG, "Value": run_id}]}
            ],
        )
        return str(reply["Instances"][0]["InstanceId"])

    async def zombies(self) -> list[Zombie]:
        return await self.store.zombies()

    async def only_zombie(self, *, open_only: bool = True) -> Zombie:
        [found] = await self.store.zombies(open_only=open_only)
        return found

    async def log(self) -> list[Termination]:
        return await self.store.terminations()

    def calls(self, operation: str) -> int:
        return self.aws.counter.count(operation)


@asynccontextmanager
async def world_for(fleet: Fleet, path: Path, faults: str = "") -> AsyncIterator[World]:
    store = await Store.open(path)
    try:
        async with Aws(faults=FaultPlan.parse(faults) if faults else None) as aws:
            yield World(fleet, store, aws, FakeClock())
    finally:
        await store.close()


@pytest.fixture
async def world(fleet: Fleet, tmp_path: Path) -> AsyncIterator[World]:
    async with world_for(fleet, tmp_path / "s.db") as made:
        yield made


# -- auto-terminate off ----------------------------------------------------------------------------


async def test_with_auto_terminate_off_a_zombie_is_listed_and_never_touched(world: World) -> None:
    crashed_on, done_on = world.fleet.launch(2)
    await world.run("crashed", crashed_on, Phase.CRASHED)
    await world.run("left-on", done_on, Phase.DONE)  # on_complete=none: not a zombie
    watch = world.watch(auto=False)

    first = await watch.sweep()
    world.clock.advance(7 * 24 * 3600)
    await watch.sweep()

    assert (first.marked, first.zombies, first.acted) == (1, 1, 0)
    found = await world.only_zombie()
    assert (found.instance_id, found.run_id, found.state) == (crashed_on, "crashed", "marked")
    assert found.cause.kind is ZombieKind.RUN_ENDED
    assert found.reason(world.clock.now()).startswith("run crashed ended (crashed) 7 days ago")
    view = zombie_view(found, now=world.clock.now(), policy=watch.policy)
    assert view.next_action is None and "auto-terminate is off" in view.plan
    assert view.age_s == 7 * 24 * 3600
    assert (world.calls("TerminateInstances"), world.calls("StopInstances")) == (0, 0)
    assert world.fleet.state(crashed_on) == "running"
    assert await world.log() == []


# -- auto-terminate on -----------------------------------------------------------------------------


async def test_a_zombie_is_terminated_only_after_the_wait(world: World) -> None:
    [instance] = world.fleet.launch(1)
    await world.run("r1", instance, Phase.STOPPED)
    watch = world.watch(wait_s=300)

    await watch.sweep()
    world.clock.advance(299)
    early = await watch.sweep()
    assert early.acted == 0 and world.calls("TerminateInstances") == 0
    assert world.fleet.state(instance) == "running"

    world.clock.advance(1)
    due = await watch.sweep()

    assert due.acted == 1 and world.calls("TerminateInstances") == 1
    assert world.fleet.state(instance) in ("shutting-down", "terminated")
    done = await world.only_zombie(open_only=False)
    assert (done.state, done.action, done.attempts) == (ZombieState.CONFIRMED, "terminate", 1)
    [entry] = await world.log()
    assert (entry.outcome, entry.action, entry.calls) == (AttemptOutcome.CONFIRMED, "terminate", 1)
    assert entry.seconds_since_marked == 300
    assert await world.zombies() == []

    world.clock.advance(3600)
    await watch.sweep()  # the terminated instance is described once more, and left alone
    assert world.calls("TerminateInstances") == 1
    assert len(await world.log()) == 1


async def test_a_sweep_costs_one_describe_for_tags_and_one_status_call_per_100_candidates(
    world: World,
) -> None:
    instances = world.fleet.launch(30)
    for i, instance in enumerate(instances):
        await world.run(f"r{i}", instance, Phase.CRASHED)
    world.launch_tagged("ghost")
    watch = world.watch(auto=False)

    result = await watch.sweep()

    assert (result.seen, result.zombies) == (31, 31)
    assert (world.calls("DescribeInstances"), world.calls("DescribeInstanceStatus")) == (1, 1)


class Spy:
    """The real adapter; records the stored zombies while TerminateInstances is in flight."""

    def __init__(self, aws: Aws, store: SqlStore) -> None:
        self._aws = aws
        self._store = store
        self.during_call: list[Zombie] = []

    async def terminate_instance(self, instance_id: InstanceId, region: str) -> InstanceState:
        self.during_call = await self._store.zombies()
        return await self._aws.terminate_instance(instance_id, region)

    def __getattr__(self, name: str) -> object:
        return getattr(self._aws, name)


async def test_the_intent_is_committed_before_the_terminate_call(world: World) -> None:
    [instance] = world.fleet.launch(1)
    await world.run("r1", instance, Phase.CRASHED)
    spy = Spy(world.aws, world.store)
    watch = ZombieWatch(
        world.store,
        spy,  # type: ignore[arg-type]
        world.clock,
        policy=ZombiePolicy(auto_terminate=True, wait_s=0),
        interval_s=3600,
        retry_base_s=0,
    )

    await watch.sweep()

    [during] = spy.during_call
    assert (during.state, during.action, during.attempts) == ("terminating", "terminate", 0)
    assert during.last_attempt_at == world.clock.now()
    assert (await world.only_zombie(open_only=False)).state is ZombieState.CONFIRMED


# -- failed attempts and the cooldown --------------------------------------------------------------


@pytest.fixture
async def refusing(fleet: Fleet, tmp_path: Path) -> AsyncIterator[World]:
    """TerminateInstances is refused once (UnauthorizedOperation), then works."""
    async with world_for(fleet, tmp_path / "s.db", "TerminateInstances=UnauthorizedOperation") as w:
        yield w


async def test_a_failed_attempt_is_not_retried_before_the_cooldown(refusing: World) -> None:
    world = refusing
    [instance] = world.fleet.launch(1)
    await world.run("r1", instance, Phase.CRASHED)
    watch = world.watch(wait_s=0, cooldown_s=300)

    await watch.sweep()

    assert world.calls("TerminateInstances") == 1
    refused = await world.only_zombie()
    assert (refused.state, refused.attempts) == (ZombieState.MARKED, 1)
    assert refused.last_error is not None
    assert refused.last_error.startswith("UnauthorizedOperation: ")
    [entry] = await world.log()
    assert entry.outcome is AttemptOutcome.UNAUTHORIZED
    assert entry.message is not None
    assert "ec2:TerminateInstances" in entry.message and "deploy/iam-policy.json" in entry.message

    for _ in range(3):
        world.clock.advance(99)
        await watch.sweep()  # 297 s after the attempt: still within the cooldown
    assert world.calls("TerminateInstances") == 1
    assert world.fleet.state(instance) == "running"
    view = zombie_view(await world.only_zombie(), now=world.clock.now(), policy=watch.policy)
    assert view.next_action == "terminate" and view.last_error == refused.last_error
    assert view.next_at == refused.last_attempt_at + timedelta(seconds=300)  # type: ignore[operator]

    world.clock.advance(3)
    await watch.sweep()

    assert world.calls("TerminateInstances") == 2
    assert world.fleet.state(instance) in ("shutting-down", "terminated")
    assert [e.outcome for e in await world.log()] == ["unauthorized", "confirmed"]
    assert (await world.only_zombie(open_only=False)).attempts == 2


async def test_transient_errors_are_retried_within_one_attempt_and_recorded_once(
    fleet: Fleet, tmp_path: Path
) -> None:
    async with world_for(
        fleet, tmp_path / "s.db", "TerminateInstances=RequestLimitExceeded*4"
    ) as w:
        [instance] = w.fleet.launch(1)
        await w.run("r1", instance, Phase.CRASHED)

        await w.watch(wait_s=0).sweep()

        assert w.calls("TerminateInstances") == 4  # the first call and three retries
        [entry] = await w.log()
        assert (entry.outcome, entry.calls, entry.error_code) == (
            AttemptOutcome.FAILED,
            4,
            "RequestLimitExceeded",
        )
        assert (await w.only_zombie()).state is ZombieState.MARKED


async def test_not_found_counts_as_confirmed(fleet: Fleet, tmp_path: Path) -> None:
    async with world_for(
        fleet, tmp_path / "s.db", "TerminateInstances=InvalidInstanceID.NotFound"
    ) as w:
        [instance] = w.fleet.launch(1)
        await w.run("r1", instance, Phase.CRASHED)

        await w.watch(wait_s=0).sweep()

        gone = await w.only_zombie(open_only=False)
        assert gone.state is ZombieState.CONFIRMED
        [entry] = await w.log()
        assert entry.outcome is AttemptOutcome.NOT_FOUND
        report = await w.store.fleet_report(since=w.clock.now() - timedelta(days=1))
        [day] = report.days
        assert (day.terminations, day.attempts, day.success_rate) == (1, 1, 1.0)


# -- the checkpoint invariant ----------------------------------------------------------------------


CHECKPOINTING: dict[str, Any] = {"checkpoint_dir": "/data/ckpt", "pid_file": "/run/train.pid"}


async def test_a_zombie_of_a_run_without_a_verified_checkpoint_is_stopped_not_terminated(
    world: World,
) -> None:
    [instance] = world.fleet.launch(1)
    await world.run("ck", instance, Phase.CRASHED, **CHECKPOINTING)
    watch = world.watch(wait_s=0)

    await watch.sweep()
    world.clock.advance(3600)
    await watch.sweep()  # stopped now: no longer a candidate, nothing more is done

    assert (world.calls("TerminateInstances"), world.calls("StopInstances")) == (0, 1)
    assert world.fleet.state(instance) in ("stopping", "stopped")
    stopped = await world.only_zombie(open_only=False)
    assert (stopped.state, stopped.action) == (ZombieState.CONFIRMED, Action.STOP)
    assert stopped.cause.keep_data
    [entry] = await world.log()
    assert entry.action is Action.STOP
    assert entry.message is not None
    assert "stopped, not terminated" in entry.message and "EBS" in entry.message


async def test_a_zombie_of_a_run_with_a_verified_checkpoint_is_terminated(world: World) -> None:
    [instance] = world.fleet.launch(1)
    await world.run(
        "ck", instance, Phase.STOPPED, checkpoint=CheckpointStatus.VERIFIED, **CHECKPOINTING
    )

    await world.watch(wait_s=0).sweep()

    assert (world.calls("TerminateInstances"), world.calls("StopInstances")) == (1, 0)


# -- tagged instances, and zombies that stop being zombies -----------------------------------------


async def test_a_tagged_instance_no_run_owns_is_a_zombie_until_a_run_owns_it(
    world: World,
) -> None:
    ghost = world.launch_tagged("r9")
    watch = world.watch(wait_s=300)

    await watch.sweep()
    found = await world.only_zombie()
    assert (found.instance_id, found.cause.kind, found.run_id) == (ghost, ZombieKind.UNOWNED, "r9")
    assert found.reason(world.clock.now()) == f"tagged {RUN_TAG}=r9; no active run owns it"

    await world.run("r9", ghost, Phase.RUNNING)
    world.clock.advance(600)  # past the wait: it would have been terminated
    result = await watch.sweep()

    assert (result.resolved, result.acted) == (1, 0)
    assert await world.zombies() == []
    cleared = await world.only_zombie(open_only=False)
    assert (cleared.state, cleared.note) == (ZombieState.CLEARED, "run r9 (running) owns it")
    assert world.calls("TerminateInstances") == 0
    assert world.fleet.state(ghost) == "running"


async def test_a_zombie_someone_else_terminated_is_cleared_without_a_termination(
    world: World,
) -> None:
    [instance] = world.fleet.launch(1)
    await world.run("r1", instance, Phase.INTERRUPTED)
    watch = world.watch(wait_s=300)
    await watch.sweep()

    world.fleet.terminate(instance)
    world.clock.advance(60)
    await watch.sweep()

    cleared = await world.only_zombie(open_only=False)
    assert cleared.state is ZombieState.CLEARED
    assert "not by the supervisor" in cleared.note
    assert await world.log() == []


async def test_a_failing_describe_skips_the_sweep_and_changes_nothing(
    fleet: Fleet, tmp_path: Path
) -> None:
    async with world_for(fleet, tmp_path / "s.db", "DescribeInstances=InternalError") as w:
        [instance] = w.fleet.launch(1)
        await w.run("r1", instance, Phase.CRASHED)
        watch = w.watch(wait_s=0)

        failed = await watch.sweep()
        assert (failed.seen, failed.marked) == (0, 0)
        assert await w.zombies() == []

        await watch.sweep()
        assert (await w.only_zombie(open_only=False)).state is ZombieState.CONFIRMED


# -- in the daemon ---------------------------------------------------------------------------------


async def test_the_daemon_lists_a_tagged_zombie_and_an_attach_clears_it(
    harness: Harness,
) -> None:
    reply = harness.fleet.ec2.run_instances(
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": RUN_TAG, "Value": "z1"}]}],
    )
    ghost = reply["Instances"][0]["InstanceId"]
    daemon = await harness.start(zombie_interval_s=0.05)

    async def listed() -> bool:
        return [z.instance_id for z in (await daemon.views.zombies()).zombies] == [ghost]

    await wait_for(listed, what="the tagged instance to be listed as a zombie")
    found = (await daemon.views.zombies()).zombies[0]
    assert (found.kind, found.run_id, found.state) == ("unowned", "z1", "marked")
    assert (await daemon.views.zombies()).auto_terminate is False

    await harness.attach("z1", ghost)

    async def cleared() -> bool:
        return (await daemon.views.zombies()).zombies == []

    await wait_for(cleared, what="the attach to clear the zombie")
    assert harness.fleet.state(ghost) == "running"


async def test_the_daemon_terminates_a_crashed_runs_instance_with_auto_terminate(
    harness: Harness,
) -> None:
    [instance] = harness.fleet.launch(1)
    daemon = await harness.start(auto_terminate=True, zombie_wait_s=0, zombie_interval_s=0.05)
    await harness.attach("boom", instance, on_crash="keep")  # the sweep catches what escapes
    await harness.wait_phase("boom", Phase.RUNNING)
    harness.fleet.put("runs/boom/FAILED", "exit code 3")
    await harness.wait_phase("boom", Phase.CRASHED)

    async def recorded() -> bool:
        return bool((await daemon.views.report(1)).days)

    await wait_for(recorded, what="the termination of the crashed run's instance")
    assert harness.fleet.state(instance) in ("shutting-down", "terminated")
    report = await daemon.views.report(1)
    assert [(d.terminations, d.attempts) for d in report.days] == [(1, 1)]
    assert report.runs_by_outcome == {"crashed": 1} and report.crash_rate == 1.0
    assert harness.calls("TerminateInstances") == 1


# -- settings --------------------------------------------------------------------------------------


def test_zombie_settings_default_to_listing_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AUTO_TERMINATE", "ZOMBIE_WAIT_S", "TERMINATION_COOLDOWN_S", "ZOMBIE_INTERVAL_S"):
        monkeypatch.delenv(f"SUPERVISOR_{name}", raising=False)

    settings = Settings.load(None)

    assert settings.zombie_policy == ZombiePolicy(auto_terminate=False, wait_s=300, cooldown_s=300)
    assert settings.zombie_interval_s == 60


def test_zombie_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_AUTO_TERMINATE", "true")
    monkeypatch.setenv("SUPERVISOR_ZOMBIE_WAIT_S", "30")
    monkeypatch.setenv("SUPERVISOR_TERMINATION_COOLDOWN_S", "0.5")

    policy = Settings.load(None).zombie_policy

    assert policy == ZombiePolicy(auto_terminate=True, wait_s=30, cooldown_s=0.5)


def test_a_negative_zombie_wait_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_ZOMBIE_WAIT_S", "-1")

    with pytest.raises(InvalidInput, match="SUPERVISOR_ZOMBIE_WAIT_S"):
        Settings.load(None)
