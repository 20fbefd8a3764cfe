"""The duty lease of fleet-wide work (issue 14): one replica at a time holds `leader`, on both
backends, with the injected clock deciding expiry (no sleeps)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from supervisor.adapters.sql_store import SqlStore
from supervisor.core.duties import LEADER
from supervisor.core.run import Phase
from supervisor.core.zombies import ZombiePolicy
from supervisor.runtime.duties import DutyKeeper
from supervisor.runtime.zombies import ZombieWatch
from tests.adapters.backends import BACKENDS, open_store
from tests.conftest import Fleet
from tests.runtime.test_zombies import FakeClock, world_for

TTL_S = 30.0


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    where = (
        str(tmp_path / "s.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    )
    opened = await open_store(where)
    yield opened
    await opened.close()


def keeper(store: SqlStore, clock: FakeClock, replica: str, **options: bool) -> DutyKeeper:
    return DutyKeeper(store, clock, name=LEADER, replica_id=replica, ttl_s=TTL_S, **options)


async def test_one_replica_holds_the_duty_and_a_frozen_one_stops_acting_before_reading_again(
    store: SqlStore,
) -> None:
    clock = FakeClock()
    a, b = keeper(store, clock, "a"), keeper(store, clock, "b")
    assert await a.renew()
    assert not await b.renew()
    assert (a.holds(), b.holds()) == (True, False)

    clock.advance(TTL_S / 3)  # a renews on time: it keeps the duty
    assert await a.renew() and not await b.renew()

    # a is frozen: no renewal. Before its lease ends it may still act; with less than a third
    # of the TTL left it stops acting, on its own clock, without a database read.
    clock.advance(TTL_S / 3)
    assert a.holds()
    clock.advance(TTL_S / 3 + 1)
    assert not a.holds()
    assert not await b.renew()  # not expired yet: b waits
    clock.advance(TTL_S / 3)
    assert await b.renew()  # expired: b takes it, one epoch on
    assert b.lease is not None and (b.lease.owner, b.lease.epoch) == ("b", 2)
    # a wakes up and renews: refused, it sees b's lease.
    assert not await a.renew()
    assert a.lease is not None and a.lease.owner == "b"


async def test_the_sole_replica_takes_the_duty_over_at_start_and_a_stopping_holder_hands_it_on(
    store: SqlStore,
) -> None:
    clock = FakeClock()
    before_restart = keeper(store, clock, "host-100")
    assert await before_restart.renew()
    # SQLite's daemon restarted with another pid (so another replica id): its lock proves the
    # old one is gone, and it takes the duty at once instead of waiting out the TTL.
    restarted = keeper(store, clock, "host-200", take_over_at_start=True)
    assert await restarted.renew()
    clock.advance(365 * 24 * 3600)  # the sole daemon's lease needs no renewal: no writes
    assert restarted.holds()
    await restarted.release()
    assert not restarted.holds()
    other = keeper(store, clock, "host-300")
    assert await other.renew()


async def test_a_sweep_whose_replica_lost_the_duty_before_acting_makes_no_call(
    fleet: Fleet, tmp_path: Path
) -> None:
    async with world_for(fleet, tmp_path / "s.db") as world:
        (instance,) = world.fleet.launch()
        await world.run("r1", instance, Phase.STOPPED)
        duty = keeper(world.store, world.clock, "a")
        assert await duty.renew()
        watch = ZombieWatch(
            world.store, world.aws, world.clock, interval_s=3600, retry_base_s=0,
            policy=ZombiePolicy(auto_terminate=True, wait_s=0, cooldown_s=300),
            may_act=duty.holds,
        )  # fmt: skip
        await watch.sweep()  # marked and due at once (wait 0): but the holder acts
        assert world.calls("TerminateInstances") == 1

        (second,) = world.fleet.launch()
        await world.run("r2", second, Phase.STOPPED)
        world.clock.advance(TTL_S)  # frozen past its lease: it must not act
        result = await watch.sweep()
        assert result.acted == 1  # due, but the attempt refused itself
        assert world.calls("TerminateInstances") == 1
        assert world.fleet.state(second) == "running"
        zombie = next(z for z in await world.zombies() if z.instance_id == second)
        assert zombie.attempts == 0
