"""The duty lease of fleet-wide work (issue 14): one replica at a time holds `leader`, on both
backends, with the injected clock deciding expiry (no sleeps); the duty's writes (the zombie
sweep's rows and terminations log, the inbox's tidying, the crash-report pass's attachments)
are fenced by its holder and epoch, so a replica that lost it writes nothing and acts on
nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from supervisor.adapters.aws import Aws
from supervisor.adapters.sql_store import SqlStore
from supervisor.core.duties import LEADER
from supervisor.core.errors import DutyLost
from supervisor.core.events import Action
from supervisor.core.machine import new_run
from supervisor.core.records import AttachmentRecord
from supervisor.core.run import Phase
from supervisor.core.spec import RunSpec
from supervisor.core.values import InstanceId
from supervisor.core.zombies import (
    AttemptOutcome,
    Cause,
    Termination,
    Zombie,
    ZombieKind,
    ZombiePolicy,
    ZombieState,
)
from supervisor.runtime.duties import DutyKeeper
from supervisor.runtime.zombies import SweepResult, ZombieWatch
from tests.adapters.backends import BACKENDS, open_store, raw_count
from tests.conftest import Fleet
from tests.runtime.test_zombies import FakeClock, World, world_for

TTL_S = 30.0


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    where = (
        str(tmp_path / "s.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    )
    opened = await open_store(where)
    yield opened
    await opened.close()


def keeper(
    store: SqlStore, clock: FakeClock, replica: str, *, take_over_at_start: bool = False
) -> DutyKeeper:
    return DutyKeeper(
        store, clock, name=LEADER, replica_id=replica, ttl_s=TTL_S,
        take_over_at_start=take_over_at_start,
    )  # fmt: skip


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
            duty=duty.held,
        )  # fmt: skip
        await watch.sweep()  # marked and due at once (wait 0): but the holder acts
        assert world.calls("TerminateInstances") == 1

        (second,) = world.fleet.launch()
        await world.run("r2", second, Phase.STOPPED)
        world.clock.advance(TTL_S)  # frozen past its lease: it must not act
        assert await watch.sweep() == SweepResult()  # it does not even look
        assert world.calls("TerminateInstances") == 1
        assert world.fleet.state(second) == "running"
        assert second not in {z.instance_id for z in await world.zombies()}


# -- the duty's writes are fenced by its lease ---------------------------------------------------


async def test_a_duty_write_under_a_lease_taken_over_is_refused_and_writes_nothing(
    store: SqlStore,
) -> None:
    """a's own clock may still say it holds the duty (clock skew, or a pause between its
    check and its write): the database's epoch decides."""
    clock = FakeClock()
    a = keeper(store, clock, "a")
    assert await a.renew()
    stale = a.held()
    assert stale is not None
    b = keeper(store, clock, "b", take_over_at_start=True)
    assert await b.renew()
    current = b.held()
    assert current is not None and current.epoch == stale.epoch + 1

    now = clock.now()
    spec = RunSpec.build(
        run_id="gone-run", instance_id="i-0aaaaaaaaaaaaaaaa", region="us-east-1",
        s3_prefix="s3://runs-bucket/runs/gone-run/", grace_s=0,
    )  # fmt: skip
    await store.create_run(new_run(spec, now=now))
    zombie = Zombie(
        InstanceId("i-0aaaaaaaaaaaaaaaa"), "us-east-1",
        Cause(ZombieKind.UNOWNED, "gone-run", keep_data=True), marked_at=now,
    )  # fmt: skip
    line = Termination(
        now, zombie.instance_id, "us-east-1", "gone-run", Action.TERMINATE,
        AttemptOutcome.ACCEPTED, 1, 0.0,
    )  # fmt: skip
    attachment = AttachmentRecord("gone-run", "crash-log", "s3://b/r/crash/error.log", now, 3, "x")
    with pytest.raises(DutyLost, match="duty leader: replica a no longer holds it"):
        await store.save_zombie(zombie, line, duty=stale)
    with pytest.raises(DutyLost):
        await store.expire_inbox(now=now, keep=timedelta(0), duty=stale)
    with pytest.raises(DutyLost):
        await store.attach(attachment, duty=stale)
    assert await store.zombies(open_only=False) == []
    assert await store.terminations() == []
    assert raw_count(store, "SELECT count(*) FROM attachments") == 0

    await store.save_zombie(zombie, line, duty=current)  # the holder's go through
    await store.attach(attachment, duty=current)
    await store.expire_inbox(now=now, keep=timedelta(0), duty=current)
    assert [z.instance_id for z in await store.zombies()] == [zombie.instance_id]
    assert len(await store.terminations()) == 1
    assert raw_count(store, "SELECT count(*) FROM attachments") == 1


async def test_a_sweep_on_a_replica_whose_duty_was_taken_over_writes_nothing_and_makes_no_call(
    store: SqlStore, fleet: Fleet
) -> None:
    async with Aws() as aws:
        world = World(fleet, store, aws, FakeClock())
        (instance,) = world.fleet.launch()
        await world.run("r1", instance, Phase.STOPPED)
        a = keeper(store, world.clock, "a")
        assert await a.renew()

        def watch_of(duty: DutyKeeper) -> ZombieWatch:
            return ZombieWatch(
                store, aws, world.clock, interval_s=3600, retry_base_s=0,
                policy=ZombiePolicy(auto_terminate=True, wait_s=0, cooldown_s=300),
                duty=duty.held,
            )  # fmt: skip

        b = keeper(store, world.clock, "b", take_over_at_start=True)
        assert await b.renew()
        assert a.holds()  # by a's clock, not renewed since: it would sweep and act
        with pytest.raises(DutyLost):
            await watch_of(a).sweep()
        assert world.calls("TerminateInstances") == 0
        assert await store.zombies(open_only=False) == []

        done = await watch_of(b).sweep()  # the holder marks it and terminates it, once
        assert (done.marked, done.acted) == (1, 1)
        assert world.calls("TerminateInstances") == 1
        assert len(await store.terminations()) == 1
        assert not await a.renew()  # a renews, sees b: no more sweeps
        assert await watch_of(a).sweep() == SweepResult()
        assert world.calls("TerminateInstances") == 1


async def test_an_attempt_whose_intent_is_refused_makes_no_call(
    store: SqlStore, fleet: Fleet
) -> None:
    """The duty moves between the sweep and the attempt: the intent's write is refused, so
    the call is never made."""
    async with Aws() as aws:
        world = World(fleet, store, aws, FakeClock())
        (instance,) = world.fleet.launch()
        await world.run("r1", instance, Phase.STOPPED)
        a = keeper(store, world.clock, "a")
        assert await a.renew()
        lease = a.held()
        watch = ZombieWatch(
            store, aws, world.clock, interval_s=3600, retry_base_s=0,
            policy=ZombiePolicy(auto_terminate=True, wait_s=3600, cooldown_s=300),
            duty=lambda: lease,
        )  # fmt: skip
        assert (await watch.sweep()).marked == 1  # marked; due in an hour
        b = keeper(store, world.clock, "b", take_over_at_start=True)
        assert await b.renew()
        world.clock.advance(3600)
        assert (await watch.sweep()).acted == 1  # due: but its intent is refused
        [zombie] = await store.zombies()
        assert zombie.attempts == 0 and zombie.state is ZombieState.MARKED
        assert world.calls("TerminateInstances") == 0
