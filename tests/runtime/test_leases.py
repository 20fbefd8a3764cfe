"""The lease keeper, the lease book and the fence in the monitor and the executor (issue 14),
in one process: two store objects on one SQLite file are two replicas, the clock is injected
and the keepers' rounds are called one at a time (`tick`)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from supervisor.adapters.sql_store import SqlStore
from supervisor.adapters.store import Store
from supervisor.core.completion import ListRequest
from supervisor.core.effects import ActOnInstance, ListPrefix
from supervisor.core.errors import LeaseLost
from supervisor.core.events import Action, UserAction, UserRequested
from supervisor.core.leases import Lease, ReplicaState, fair_share, surplus
from supervisor.core.machine import Policy, new_run
from supervisor.core.run import Run
from supervisor.core.values import InstanceState
from supervisor.runtime.executor import Executor
from supervisor.runtime.leases import DatabaseLost, LeaseBook, LeaseKeeper
from supervisor.runtime.monitor import Monitor, MonitorDeps
from tests.adapters.backends import BACKENDS, location, open_store
from tests.core.builders import NOW, make_spec
from tests.runtime.conftest import Harness
from tests.runtime.test_executor import World, _spec, _world
from tests.runtime.test_metrics import scrape_socket
from tests.runtime.waiting import wait_for

TTL_S = 30.0
TTL = timedelta(seconds=TTL_S)
RUNS = 10


class SetClock:
    """The replicas' clock: it says what the test set."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@dataclass
class Replica:
    """One replica without a daemon: its store, its keeper, and the monitors it armed (run id
    to the lease it was armed under), as the daemon's `arm` and `disarm` would keep them."""

    store: SqlStore
    keeper: LeaseKeeper
    armed: dict[str, Lease] = field(default_factory=dict)
    disarmed: list[str] = field(default_factory=list)

    @property
    def book(self) -> LeaseBook:
        return self.keeper.book


async def replica(where: str, name: str, clock: SetClock, *, exclusive: bool = False) -> Replica:
    store = await open_store(where)
    book = LeaseBook(name, TTL_S, clock, exclusive=exclusive)
    armed: dict[str, Lease] = {}
    disarmed: list[str] = []

    def arm(run: Run, lease: Lease) -> None:
        armed[run.spec.run_id] = lease

    def disarm(run_id: str) -> None:
        armed.pop(run_id, None)
        disarmed.append(run_id)

    keeper = LeaseKeeper(
        store, book, clock, arm=arm, disarm=disarm, idle_runs=lambda: sorted(armed),
        host="box", pid=1,
    )  # fmt: skip
    return Replica(store, keeper, armed, disarmed)


@pytest.fixture
def clock() -> SetClock:
    return SetClock(NOW)


@pytest.fixture(params=BACKENDS)
async def pair(
    request: pytest.FixtureRequest, tmp_path: Path, clock: SetClock
) -> AsyncIterator[tuple[Replica, Replica]]:
    """Two replicas on one database (a SQLite file, or a PostgreSQL database) with `RUNS`
    active runs, none of them owned."""
    where = (
        str(tmp_path / "s.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    )
    a = await replica(where, "replica-a", clock)
    b = await replica(where, "replica-b", clock)
    for n in range(RUNS):
        spec = make_spec(run_id=f"run-{n:02}", instance_id=f"i-{n:017x}")
        await a.store.create_run(new_run(spec, now=NOW + timedelta(seconds=n)))
    yield a, b
    await a.store.close()
    await b.store.close()


def epochs(r: Replica) -> set[int]:
    return {lease.epoch for lease in r.armed.values()}


# -- fair share -------------------------------------------------------------------------------


def test_the_fair_share_covers_every_run_and_a_small_excess_is_left_alone() -> None:
    assert [fair_share(10, n) for n in (0, 1, 2, 3, 4)] == [10, 10, 5, 4, 3]
    assert surplus(10, 5) == 5
    assert surplus(7, 5) == 0  # over by two: not worth moving monitors for
    assert surplus(120, 100) == 20 and surplus(110, 100) == 0


async def test_a_new_replica_takes_over_its_fair_share_from_a_busy_one_gracefully(
    pair: tuple[Replica, Replica], clock: SetClock
) -> None:
    a, b = pair
    assert await a.keeper.start() == RUNS  # alone: every run
    assert await b.keeper.start() == 0  # every run is held; its share comes from A's hand-back

    clock.advance(TTL_S / 3)
    await a.keeper.tick()  # A sees two live replicas: it hands back half, idle monitors first
    assert (len(a.armed), len(a.disarmed)) == (RUNS // 2, RUNS // 2)
    await b.keeper.tick()  # B claims them at once, without waiting for a lease to expire

    assert (len(a.armed), len(b.armed)) == (RUNS // 2, RUNS // 2)
    assert set(a.armed).isdisjoint(b.armed)
    assert epochs(b) == {2}  # one claim each before: its claim bumped the epoch
    for _ in range(3):  # settled: nothing moves any more
        clock.advance(TTL_S / 3)
        await a.keeper.tick()
        await b.keeper.tick()
    assert (len(a.armed), len(b.armed)) == (RUNS // 2, RUNS // 2)
    assert a.keeper.counts.claims + b.keeper.counts.claims == RUNS + RUNS // 2


# -- failover ---------------------------------------------------------------------------------


async def test_a_dead_replicas_runs_are_claimed_within_the_ttl_and_one_claim_interval(
    pair: tuple[Replica, Replica], clock: SetClock
) -> None:
    a, b = pair
    await a.keeper.start()
    await b.keeper.start()
    clock.advance(TTL_S / 3)
    await a.keeper.tick()
    await b.keeper.tick()
    died_at = clock.now()  # A's last renewal and heartbeat: then it is SIGKILLed

    while len(b.armed) < RUNS:
        clock.advance(b.keeper.interval_s)
        await b.keeper.tick()
        assert clock.now() - died_at <= TTL + timedelta(seconds=b.keeper.interval_s)

    assert epochs(b) == {2}  # A's five claimed a second time; the five A handed back, kept
    assert len(await b.store.renew_leases("replica-a", until=clock.now())) == 0


async def test_a_clean_shutdown_hands_every_run_back_for_the_others_to_claim_at_once(
    pair: tuple[Replica, Replica], clock: SetClock
) -> None:
    a, b = pair
    await a.keeper.start()
    await b.keeper.start()

    assert await a.keeper.hand_back() == RUNS
    await b.keeper.tick()  # at the same instant: no lease had to expire

    assert len(b.armed) == RUNS
    [row_a] = [s for s in await b.store.replicas() if s.replica.replica_id == "replica-a"]
    assert (row_a.replica.state, row_a.runs_owned) == (ReplicaState.STOPPED, 0)


async def test_a_replica_that_wakes_past_its_ttl_drops_every_monitor_it_lost(
    pair: tuple[Replica, Replica], clock: SetClock
) -> None:
    a, b = pair
    await a.keeper.start()
    await b.keeper.start()
    clock.advance(TTL_S * 2)  # A is SIGSTOPped meanwhile
    await b.keeper.tick()
    assert len(b.armed) == RUNS

    await a.keeper.tick()  # A wakes: its renewal finds nothing held

    assert (a.armed, len(a.disarmed), len(a.book)) == ({}, RUNS, 0)
    assert a.keeper.counts.lost == {"renewal": RUNS}
    assert await b.store.renew_leases("replica-b", until=clock.now() + TTL) == {
        run_id: lease.epoch for run_id, lease in b.armed.items()
    }


async def test_a_replica_restarted_under_the_same_id_frees_its_earlier_lives_leases(
    pair: tuple[Replica, Replica], clock: SetClock
) -> None:
    a, _ = pair
    await a.keeper.start()
    again = await replica(location(a.store), "replica-a", clock)  # SIGKILLed, started again
    try:
        assert await again.keeper.start() == RUNS  # no wait for the TTL
        assert epochs(again) == {2}
    finally:
        await again.store.close()


async def test_an_exclusive_replica_takes_every_lease_at_start_whoever_held_it(
    pair: tuple[Replica, Replica], clock: SetClock
) -> None:
    a, _ = pair
    await a.keeper.start()
    alone = await replica(location(a.store), "sqlite-daemon", clock, exclusive=True)
    try:
        assert await alone.keeper.start() == RUNS
        clock.advance(TTL_S * 10)  # an exclusive replica's leases never expire by its clock
        alone.book.check("run-00", acting=True)
        await alone.keeper.tick()
        assert len(alone.armed) == RUNS and alone.disarmed == []
    finally:
        await alone.store.close()


# -- the book -----------------------------------------------------------------------------------


def test_the_book_refuses_an_aws_call_once_the_lease_is_gone_expired_or_nearly_over() -> None:
    clock = SetClock(NOW)
    book = LeaseBook("replica-a", TTL_S, clock, exclusive=False)
    book.put("run-0", Lease("replica-a", 3, NOW + TTL))

    assert book.check("run-0", acting=True).epoch == 3
    clock.advance(TTL_S - book.margin_s + 0.5)  # a read may go on, an action may not start
    book.check("run-0", acting=False)
    with pytest.raises(LeaseLost, match=r"under the 10\.0 s margin") as nearly:
        book.check("run-0", acting=True)
    assert nearly.value.why == "expiring"
    clock.advance(book.margin_s)
    with pytest.raises(LeaseLost, match="expired"):
        book.check("run-0", acting=False)
    with pytest.raises(LeaseLost, match="holds no lease"):
        book.check("run-1", acting=False)


# -- the fence in the executor and the monitor --------------------------------------------------


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async for w in _world(tmp_path, _spec()):
        yield w


def _leased(world: World, book: LeaseBook) -> Executor:
    return Executor(
        ports=type(world.executor.ports)(
            **{
                name: getattr(world.executor.ports, name)
                for name in world.executor.ports.__dataclass_fields__
                if name != "leases"
            },
            leases=book,
        )
    )


async def test_the_executor_makes_no_aws_call_for_a_run_whose_lease_ran_out(world: World) -> None:
    clock = SetClock(NOW)
    book = LeaseBook("replica-a", TTL_S, clock, exclusive=False)
    book.put("r1", Lease("replica-a", 1, NOW + TTL))
    executor = _leased(world, book)
    world.cloud.answers["StopInstances"] = InstanceState.STOPPING

    clock.advance(TTL_S - 1)  # too little left to start a stop
    with pytest.raises(LeaseLost):
        await executor.execute(ActOnInstance(Action.STOP), world.run, world.notes)
    clock.advance(2)  # expired: not even a listing
    request = ListRequest(bucket="runs-bucket", prefix="exp/r1/", delimiter="/")
    with pytest.raises(LeaseLost):
        await executor.execute(ListPrefix(request), world.run, world.notes)
    assert world.cloud.calls == Counter()
    assert await world.store.actions("r1") == []


async def test_the_executor_acts_under_a_live_lease_and_records_the_action_fenced(
    world: World,
) -> None:
    clock = SetClock(NOW)
    [leased] = await world.store.claim_runs("replica-a", limit=1, now=NOW, until=NOW + TTL)
    book = LeaseBook("replica-a", TTL_S, clock, exclusive=False)
    book.put("r1", leased.lease)
    world.cloud.answers["StopInstances"] = InstanceState.STOPPING

    await _leased(world, book).execute(ActOnInstance(Action.STOP), world.run, world.notes)

    assert world.cloud.calls == Counter({"StopInstances": 1})
    assert [a.outcome for a in await world.store.actions("r1")] == ["accepted"]


async def test_a_monitor_whose_lease_was_stolen_commits_nothing_and_calls_nothing(
    world: World, tmp_path: Path
) -> None:
    """Its book still says the lease is live (it renewed just before losing it): the fenced
    commit of the stop's intent is what stops it, before the StopInstances call."""
    clock = SetClock(NOW)
    [mine] = await world.store.claim_runs("replica-a", limit=1, now=NOW, until=NOW + TTL)
    other = await Store.open(world.store.path)
    try:
        later = NOW + TTL + timedelta(seconds=1)
        await other.claim_runs("replica-b", limit=1, now=later, until=later + TTL)
    finally:
        await other.close()
    book = LeaseBook("replica-a", TTL_S, clock, exclusive=False)
    book.put("r1", Lease("replica-a", mine.lease.epoch, NOW + 10 * TTL))
    world.cloud.answers["StopInstances"] = InstanceState.STOPPING
    executor = _leased(world, book)
    deps = MonitorDeps(
        store=world.store, clock=clock, policy=Policy(), rng=random.Random(0),
        executor=executor, leases=book,
    )  # fmt: skip
    monitor = Monitor(world.run, deps)
    loop = asyncio.create_task(monitor.run_forever())
    try:
        with pytest.raises(LeaseLost):
            await monitor.request(UserRequested(UserAction.STOP))
        with pytest.raises(LeaseLost):
            await loop
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError, LeaseLost):
            await loop

    assert world.cloud.calls == Counter()
    assert [t.seq for t in await world.store.transitions("r1")] == [1]
    assert await world.store.actions("r1") == []


# -- a SQLite daemon: the sole replica ---------------------------------------------------------


async def test_a_sqlite_daemon_holds_every_run_says_so_and_hands_them_back_when_it_stops(
    harness: Harness,
) -> None:
    daemon = await harness.start(replica_id="box-1")
    (instance,) = harness.fleet.launch()
    await harness.attach("held-1", instance)

    status = await daemon.views.status()
    scrape = await scrape_socket(daemon)

    assert (status.replica_id, status.role, status.runs_owned) == ("box-1", "sole", 1)
    [me] = status.replicas
    assert (me.replica_id, me.state, me.alive, me.runs_owned) == ("box-1", "running", True, 1)
    assert scrape.value("supervisor_runs_owned") == 1
    assert scrape.value("supervisor_leases_lost_total", why="renewal") == 0

    await harness.stop()
    store = await Store.open(harness.settings().db_path)
    try:
        assert await store.renew_leases("box-1", until=NOW) == {}  # handed back
        [row] = await store.replicas()
        assert (row.replica.state, row.runs_owned) == (ReplicaState.STOPPED, 0)
    finally:
        await store.close()

    daemon = await harness.start(replica_id="box-2")  # re-armed at once, by a claim
    assert set(daemon.monitors) == {"held-1"}
    assert (await scrape_socket(daemon)).value("supervisor_lease_claims_total") == 1


# -- a replica cut off from the database ----------------------------------------------------------


class Unreachable:
    """Our own store port with the database gone: every call fails as the driver's would
    after its retries."""

    def __getattr__(self, name: str) -> object:
        async def fail(*args: object, **kwargs: object) -> None:
            raise OSError("connection refused")

        return fail


async def test_a_replica_that_cannot_renew_for_a_ttl_drops_everything_and_ends_the_daemon(
    pair: tuple[Replica, Replica], clock: SetClock
) -> None:
    a, b = pair
    assert await a.keeper.start() == RUNS
    ended: list[DatabaseLost] = []
    cut_off = asyncio.Event()

    def end(lost: DatabaseLost) -> None:
        ended.append(lost)
        cut_off.set()

    a.keeper._on_cut_off = end
    a.keeper._store = Unreachable()  # type: ignore[assignment]
    a.keeper.interval_s = 0  # its rounds at once: the clock says how late they are

    clock.advance(TTL_S / 3)  # a round fails, well within the TTL: the root task restarts it
    with pytest.raises(OSError, match="connection refused"):
        await a.keeper.run_forever()
    assert (len(a.book), len(a.armed), ended) == (RUNS, RUNS, [])

    clock.advance(TTL_S * 2 / 3)  # a TTL since the last renewal: every lease may be gone
    looping = asyncio.ensure_future(a.keeper.run_forever())
    await asyncio.wait_for(cut_off.wait(), 30)
    assert (len(a.book), a.armed) == (0, {})
    assert sorted(a.disarmed) == sorted(f"run-{n:02}" for n in range(RUNS))
    assert a.keeper.counts.lost == {"cut-off": RUNS}
    assert "could not renew its leases for 30 s" in str(ended[0])
    assert not looping.done()  # it waits for the daemon to end, restarting nothing
    looping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await looping

    clock.advance(1)  # the leases it wrote have expired: B takes every run over
    await b.keeper.tick()
    assert len(b.armed) == RUNS


async def test_a_replica_woken_from_a_freeze_past_its_ttl_drops_what_it_lost_and_goes_on(
    pair: tuple[Replica, Replica], clock: SetClock
) -> None:
    """Its own clock says a TTL passed since its last renewal, but the database answers: a
    frozen replica, not a lost database. It is not ended."""
    a, b = pair
    assert await a.keeper.start() == RUNS
    ended: list[DatabaseLost] = []
    a.keeper._on_cut_off = ended.append
    clock.advance(TTL_S + 1)  # a frozen; b takes every run over meanwhile
    await b.keeper.tick()
    assert len(b.armed) == RUNS

    a.keeper.interval_s = 0
    looping = asyncio.ensure_future(a.keeper.run_forever())

    async def dropped() -> bool:
        return not a.armed

    try:
        await wait_for(dropped, what="a to drop the monitors of the runs it lost")
    finally:
        looping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await looping
    assert ended == []
    assert a.keeper.counts.lost == {"renewal": RUNS}
    assert len(b.armed) == RUNS
