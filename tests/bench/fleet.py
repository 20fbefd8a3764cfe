"""Runs driven through the pure core and committed to a real `Store`, as the daemon would."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from supervisor.adapters.sql_store import SqlStore
from supervisor.core.events import (
    Action,
    ActionSucceeded,
    Event,
    InstanceObserved,
    PrefixListed,
    Tick,
)
from supervisor.core.machine import Decision, Policy, new_run, step
from supervisor.core.run import Run
from supervisor.core.spec import RunSpec
from supervisor.core.values import InstanceState, ObjectInfo

REGION = "us-east-1"
BUCKET = "bench-bucket"


def spec(i: int) -> RunSpec:
    run_id = f"r{i:05d}"
    return RunSpec.build(
        run_id=run_id,
        instance_id=f"i-{i:017x}",
        region=REGION,
        s3_prefix=f"s3://{BUCKET}/runs/{run_id}/",
        grace_s=0,
    )


def lifecycle() -> list[Event]:
    """A completed run's story: running, marker seen, stop asked, stop acknowledged, stopped."""
    now = datetime.now(UTC)
    return [
        InstanceObserved(InstanceState.RUNNING),
        PrefixListed((ObjectInfo("COMPLETE", "etag", 0, now),)),
        Tick(),
        ActionSucceeded(Action.STOP, InstanceState.STOPPING),
        InstanceObserved(InstanceState.STOPPED),
    ]


def decisions(
    spec: RunSpec, events: list[Event], *, now: datetime | None = None
) -> tuple[Decision, list[tuple[Run, Decision]]]:
    """The run's creation and each later decision with the run it was taken on (pure core)."""
    now = now or datetime.now(UTC)
    rng = random.Random(0)
    first = new_run(spec, now=now)
    run = first.run
    later: list[tuple[Run, Decision]] = []
    for event in events:
        decision = step(run, event, now=now, policy=Policy(), rng=rng)
        later.append((run, decision))
        run = decision.run
    return first, later


async def seed_running(
    store: SqlStore, count: int, *, running_for: timedelta = timedelta()
) -> None:
    """`count` runs committed up to `running` (the state a restart re-adopts), each in it
    since `running_for` ago."""
    running: list[Event] = [InstanceObserved(InstanceState.RUNNING)]
    now = datetime.now(UTC) - running_for
    for i in range(count):
        first, later = decisions(spec(i), running, now=now)
        await store.create_run(first)
        for before, decision in later:
            await store.commit(before, decision, now=now)
