"""One monitor on its own, through the executor's fake ports (tests/runtime/test_executor.py)
and a real SQLite store: what it does with requests whose askers went away."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from supervisor.core.errors import InvalidTransition
from supervisor.core.events import InstanceObserved, ResumeRequested
from supervisor.core.machine import Policy
from supervisor.core.run import Phase
from supervisor.core.values import InstanceState
from supervisor.runtime.monitor import Monitor, MonitorDeps
from tests.runtime.test_executor import World, _spec, _world
from tests.runtime.waiting import wait_for


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async for w in _world(tmp_path, _spec()):
        yield w


def _monitor(world: World) -> Monitor:
    ports = world.executor.ports
    deps = MonitorDeps(
        store=world.store,
        clock=ports.clock,
        policy=Policy(),
        rng=random.Random(0),
        executor=world.executor,
    )
    return Monitor(world.run, deps)


async def test_a_refused_request_whose_asker_went_away_does_not_crash_the_monitor(
    world: World,
) -> None:
    """The queue consumer is cancelled first at shutdown, while the monitors still run: a
    request it was waiting on is then answered to nobody."""
    world.cloud.answers["ListObjectsV2"] = ()  # an empty prefix: the job is still training
    monitor = _monitor(world)
    asking = asyncio.create_task(monitor.request(ResumeRequested(from_scratch=False), settle=True))
    await asyncio.sleep(0)  # queued
    asking.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asking
    loop = asyncio.create_task(monitor.run_forever())
    try:
        monitor.deliver(InstanceObserved(InstanceState.RUNNING, instance_id=world.run.instance_id))

        async def running() -> bool:
            return loop.done() or monitor.run.phase is Phase.RUNNING

        await wait_for(running, what="the monitor to go on to running")
        assert not loop.done(), loop.exception()
        with pytest.raises(InvalidTransition):  # a later asker still gets its answer
            await monitor.request(ResumeRequested(from_scratch=False))
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
