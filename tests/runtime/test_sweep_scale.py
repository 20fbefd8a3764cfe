"""The reconcile sweep at scale: 1,500 runs watched by one in-process daemon, against the real
moto server and a real SQLite file.

Every sweep describes all 1,500 instances with fifteen DescribeInstanceStatus calls (100 ids
per call), counted by the adapter's own CallCounter. An instance terminated directly in moto,
with no event, ends its run at the first sweep after it went (on-demand: `crashed`; spot:
`interrupted`), while the other runs stay `running`, untouched.

(The same on one run, at the test timings, is tests/runtime/test_daemon.py
`test_an_instance_that_dies_while_running_without_a_marker_is_crashed`.)
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from supervisor.adapters.aws import Aws
from supervisor.adapters.store import Store
from supervisor.core.events import InstanceObserved
from supervisor.core.machine import Policy, new_run, step
from supervisor.core.run import Outcome, Phase
from supervisor.core.spec import RunSpec
from supervisor.core.values import InstanceId, InstanceState
from supervisor.runtime.ports import Cloud
from tests.conftest import AMI, BUCKET, REGION
from tests.runtime.conftest import Harness
from tests.runtime.waiting import wait_for

P = Phase
RUNS = 1500
LAUNCH_BATCH = 500
INTERVAL_S = 3.0
"""The sweep interval (SUPERVISOR_RECONCILE_INTERVAL_S): long enough for the ended runs' last
look and commit between two sweeps, which keep moto busy for seconds each."""
SLACK_S = 5.0
"""For committing what a sweep showed, and for the loop's wake-up, on a loaded machine busy
serving moto (5.7 s gaps seen under faketime and a second suite). Still far below the default
60 s interval a sweep would wait if the setting were not honoured."""


@dataclass(frozen=True, slots=True)
class Sweep:
    """One sweep's describe: how many instances, the DescribeInstanceStatus calls it cost, when."""

    instances: int
    calls: int
    started: datetime
    ended: datetime

    @property
    def seconds(self) -> float:
        return (self.ended - self.started).total_seconds()


class SweepLog:
    """The real adapter at our own Cloud port, noting what each describe cost by the adapter's
    CallCounter. The reconciler is the only caller of `describe_instances` here, once per
    sweep and region."""

    def __init__(self, aws: Aws) -> None:
        self._aws = aws
        self.sweeps: list[Sweep] = []

    async def describe_instances(
        self, ids: Sequence[InstanceId], region: str
    ) -> dict[InstanceId, InstanceState]:
        before, started = self._aws.counter.count("DescribeInstanceStatus"), datetime.now(UTC)
        states = await self._aws.describe_instances(ids, region)
        calls = self._aws.counter.count("DescribeInstanceStatus") - before
        self.sweeps.append(Sweep(len(ids), calls, started, datetime.now(UTC)))
        return states

    def __getattr__(self, name: str) -> object:
        return getattr(self._aws, name)


def spec(index: int, instance: str) -> RunSpec:
    run_id = f"r{index:04d}"
    return RunSpec.build(
        run_id=run_id,
        instance_id=instance,
        region=REGION,
        s3_prefix=f"s3://{BUCKET}/runs/{run_id}/",
        grace_s=0,
        spot=index == 1,
    )


async def launch_and_store_running_runs(harness: Harness) -> list[str]:
    """Launch the instances in moto, and store a run for each, attached and seen running as
    the daemon would have committed it; the daemon then re-adopts them all at start, with no
    AWS call per run. Each batch is stored while the next one launches."""
    settings = harness.settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(settings.db_path)
    now, policy, rng = datetime.now(UTC), Policy(), random.Random(0)

    def launch(count: int) -> list[str]:
        reply = harness.fleet.ec2.run_instances(ImageId=AMI, MinCount=count, MaxCount=count)
        return [i["InstanceId"] for i in reply["Instances"]]

    instances: list[str] = []
    try:
        launching = asyncio.create_task(asyncio.to_thread(launch, LAUNCH_BATCH))
        while len(instances) < RUNS:
            batch = await launching
            left = RUNS - len(instances) - len(batch)
            if left:
                launching = asyncio.create_task(asyncio.to_thread(launch, min(left, LAUNCH_BATCH)))
            for instance in batch:
                attached = new_run(spec(len(instances), instance), now=now)
                await store.create_run(attached)
                running = step(
                    attached.run, InstanceObserved(InstanceState.RUNNING), now=now,
                    policy=policy, rng=rng,
                )  # fmt: skip
                await store.commit(attached.run, running, now=now)
                instances.append(instance)
    finally:
        await store.close()
    return instances


async def test_1500_runs_cost_fifteen_status_calls_per_sweep_and_a_vanished_instance_ends_its_run(
    harness: Harness,
) -> None:
    instances = await launch_and_store_running_runs(harness)
    log: SweepLog | None = None

    def logged(aws: Aws) -> Cloud:
        nonlocal log
        log = SweepLog(aws)
        return cast(Cloud, log)

    daemon = await harness.start(
        wrap=logged, reconcile_interval_s=INTERVAL_S, poll_initial_s=3600, poll_max_s=3600
    )
    assert log is not None and harness.store is not None
    assert len(daemon.monitors) == RUNS
    sweeps = log.sweeps

    async def swept() -> bool:
        return len(sweeps) >= 1

    await wait_for(swept, within_s=60, what="the first sweep")
    (first,) = sweeps
    assert (first.instances, first.calls) == (RUNS, 15)

    # AWS ends two instances, and nobody sends an event.
    harness.fleet.ec2.terminate_instances(InstanceIds=instances[:2])
    gone_at = datetime.now(UTC)

    async def ended() -> bool:
        return all([(await harness.run(r)).phase.is_terminal for r in ("r0000", "r0001")])

    await wait_for(ended, within_s=INTERVAL_S + 3 * first.seconds + 10, what="r0000, r0001 to end")
    crashed, interrupted = await harness.run("r0000"), await harness.run("r0001")
    assert (crashed.phase, crashed.outcome) == (P.CRASHED, Outcome.CRASHED), crashed.reason
    assert "without a request from the supervisor" in crashed.reason
    assert (interrupted.phase, interrupted.outcome) == (P.INTERRUPTED, Outcome.INTERRUPTED)
    assert interrupted.reason.startswith("spot instance terminated without a request")

    # Ended no later than the first sweep that began after the instances went, and sweeps
    # begin one interval apart.
    ended_at = max(
        [(await harness.store.transitions(r))[-1].transition.at for r in ("r0000", "r0001")]
    )
    after = next(s for s in sweeps if s.started >= gone_at)
    assert ended_at <= after.ended + timedelta(seconds=SLACK_S), (ended_at, after)
    gaps = [(b.started - a.ended).total_seconds() for a, b in itertools.pairwise(sweeps)]
    assert all(gap < INTERVAL_S + SLACK_S for gap in gaps), gaps

    # Every sweep described every watched instance, with one call per 100 of them.
    calls, done = harness.calls("DescribeInstanceStatus"), list(sweeps)
    assert all(RUNS - 2 <= s.instances <= RUNS for s in done), done
    assert [s.calls for s in done] == [math.ceil(s.instances / 100) for s in done]
    assert max(s.calls for s in done) == 15
    # No describe of its own by any run: every call was a sweep's (one may be under way).
    assert sum(s.calls for s in done) <= calls <= sum(s.calls for s in done) + 15
    assert (harness.calls("StopInstances"), harness.calls("TerminateInstances")) == (0, 0)

    # The other 1,498 runs: still running, without a transition more.
    others = [
        r.run for r in await harness.store.runs() if r.run.spec.run_id not in ("r0000", "r0001")
    ]
    assert len(others) == RUNS - 2
    assert {(run.phase, run.version) for run in others} == {(P.RUNNING, 2)}

    async def watching_the_rest() -> bool:
        return len(daemon.monitors) == RUNS - 2

    await wait_for(watching_the_rest, what="the ended runs' monitors to finish")
