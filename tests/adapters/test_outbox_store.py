"""The notification outbox in the store (issue 15), on both backends (the `store` fixture): a
row is written in the transaction of the transition it is about, or not at all; one per key;
the pending rows each replica is to send; delivery rounds claimed once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from supervisor.adapters.sql_store import SqlStore
from supervisor.core.errors import LeaseLost, StaleVersion
from supervisor.core.leases import Replica, ReplicaState
from supervisor.core.outbox import DeliveryState, NotifyEvent, TargetDelivery, parse_notify_on
from supervisor.core.run import Outcome, Phase
from supervisor.core.values import InstanceId
from supervisor.core.zombies import Cause, Zombie, ZombieKind, ZombieState
from tests.adapters.backends import location, open_store, raw_count
from tests.adapters.test_store import attach, move
from tests.core.builders import NOW

DEFAULTS = parse_notify_on("crashed,stalled,failed,timed_out,interrupted,checkpoint_unverified,"
                           "zombie")  # fmt: skip
TTL = timedelta(seconds=30)


@pytest.fixture
async def notifying(store: SqlStore) -> SqlStore:
    store.notify_on_events(DEFAULTS)
    return store


async def test_a_transition_that_notifies_writes_its_row_with_the_transition(
    notifying: SqlStore,
) -> None:
    run = await attach(notifying, "run-1")
    running = move(run, Phase.RUNNING, 1)
    await notifying.commit(run, running, now=NOW)
    crashed = move(running.run, Phase.CRASHED, 2, reason="failure marker FAILED: exit 1")
    await notifying.commit(running.run, crashed, now=NOW)

    [row] = await notifying.outbox_rows()
    assert row.key == "run-1:3"
    assert row.state is DeliveryState.PENDING
    assert row.notice.events == (NotifyEvent.CRASHED,)
    assert (row.notice.run_id, row.notice.seq, row.notice.phase) == ("run-1", 3, "crashed")
    assert row.notice.reason == "failure marker FAILED: exit 1"
    assert row.notice.from_phase == "running"


async def test_events_not_chosen_write_no_row(notifying: SqlStore) -> None:
    run = await attach(notifying, "run-1")
    stopped = move(run, Phase.STOPPED, 1)
    await notifying.commit(run, stopped, now=NOW)

    assert await notifying.outbox_rows() == []
    notifying.notify_on_events(frozenset({NotifyEvent.STOPPED}))
    again = move(stopped.run, Phase.RESUMING, 2)
    await notifying.commit(stopped.run, again, now=NOW)
    assert await notifying.outbox_rows() == []  # resuming is no event


async def test_a_commit_that_fails_leaves_no_outbox_row(notifying: SqlStore) -> None:
    run = await attach(notifying, "run-1")
    await notifying.commit(run, move(run, Phase.RUNNING, 1), now=NOW)

    with pytest.raises(StaleVersion):  # `run` is no longer the stored version
        await notifying.commit(run, move(run, Phase.CRASHED, 2), now=NOW)

    assert await notifying.outbox_rows() == []
    assert raw_count(notifying, "SELECT COUNT(*) FROM outbox") == 0


async def test_a_commit_under_a_lost_lease_leaves_no_outbox_row(notifying: SqlStore) -> None:
    other = await open_store(location(notifying))
    try:
        other.notify_on_events(DEFAULTS)
        run = await attach(notifying, "run-1")
        [mine] = await notifying.claim_runs("a", limit=1, now=NOW, until=NOW + TTL)
        later = NOW + TTL + timedelta(seconds=1)
        [theirs] = await other.claim_runs("b", limit=1, now=later, until=later + TTL)

        with pytest.raises(LeaseLost):
            await notifying.commit(run, move(run, Phase.CRASHED, 1), now=later, lease=mine.lease)
        assert await notifying.outbox_rows() == []

        await other.commit(run, move(run, Phase.CRASHED, 1), now=later, lease=theirs.lease)
        assert [r.key for r in await notifying.outbox_rows()] == ["run-1:2"]
    finally:
        await other.close()


async def test_a_zombie_notifies_once_per_mark(notifying: SqlStore) -> None:
    cause = Cause(ZombieKind.RUN_ENDED, "run-1", Phase.STOPPED, NOW)
    zombie = Zombie(InstanceId("i-0123456789abcdef0"), "us-east-1", cause, NOW)

    await notifying.save_zombie(zombie)
    await notifying.save_zombie(zombie)  # saved again (an attempt): still one row
    await notifying.save_zombie(
        Zombie(zombie.instance_id, zombie.region, cause, NOW, state=ZombieState.CONFIRMED)
    )

    [row] = await notifying.outbox_rows()
    assert row.key == f"zombie:i-0123456789abcdef0:us-east-1:{NOW.isoformat()}"
    assert row.notice.events == (NotifyEvent.ZOMBIE,)
    assert row.notice.seq is None


async def test_a_round_is_claimed_once_and_its_results_recorded(notifying: SqlStore) -> None:
    run = await attach(notifying, "run-1")
    await notifying.commit(run, move(run, Phase.FAILED, 1), now=NOW)
    [row] = await notifying.pending_outbox("a", leader=True, alive_since=NOW)

    assert await notifying.claim_outbox(row.key, attempts=0, sender="a", now=NOW)
    assert not await notifying.claim_outbox(row.key, attempts=0, sender="b", now=NOW)
    sent = TargetDelivery("abc", DeliveryState.SENT, 2)
    await notifying.record_outbox(
        row.key, [sent], state=DeliveryState.SENT, last_error=None, now=NOW
    )

    [done] = await notifying.outbox_rows()
    assert (done.state, done.attempts, done.sender) == (DeliveryState.SENT, 1, "a")
    assert done.deliveries == (sent,)
    assert await notifying.pending_outbox("a", leader=True, alive_since=NOW) == []
    assert await notifying.outbox_counts() == {"sent": 1}


@pytest.fixture
async def two(pg_url: str) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    """Two replicas' stores on one PostgreSQL database (one SQLite daemon sends every row)."""
    first, second = await open_store(pg_url), await open_store(pg_url)
    for s in (first, second):
        s.notify_on_events(DEFAULTS)
    yield first, second
    await second.close()
    await first.close()


async def test_with_replicas_the_owner_sends_and_the_leader_takes_what_a_dead_owner_left(
    two: tuple[SqlStore, SqlStore],
) -> None:
    a, b = two
    for name in ("a", "b"):
        await a.record_replica(Replica(name, "host", 1, NOW, NOW, ReplicaState.RUNNING, 30.0))
    run = await attach(a, "run-1")
    [mine] = await a.claim_runs("a", limit=1, now=NOW, until=NOW + TTL)
    await a.commit(run, move(run, Phase.CRASHED, 1), now=NOW, lease=mine.lease)

    alive = NOW - TTL
    assert [r.key for r in await a.pending_outbox("a", leader=False, alive_since=alive)] == [
        "run-1:2"
    ]
    assert await b.pending_outbox("b", leader=True, alive_since=alive) == []  # a is alive
    gone = NOW + 2 * TTL  # a's heartbeat is older than this
    assert [r.key for r in await b.pending_outbox("b", leader=True, alive_since=gone)] == [
        "run-1:2"
    ]
    assert await b.pending_outbox("b", leader=False, alive_since=gone) == []


async def test_the_outcome_names_the_event_of_a_stop_after_a_crash(notifying: SqlStore) -> None:
    run = await attach(notifying, "run-1")
    stopping = move(run, Phase.STOPPING, 1)
    crashed = stopping.run.evolve(outcome=Outcome.CRASHED)
    await notifying.commit(run, type(stopping)(run=crashed, transition=stopping.transition),
                           now=NOW)  # fmt: skip

    [row] = await notifying.outbox_rows()
    assert row.notice.events == (NotifyEvent.CRASHED,)
    assert row.notice.outcome == "crashed"
