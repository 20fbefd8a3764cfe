"""Per-run leases in the store (issue 14), on both backends (the `store` fixture): two store
objects on one database are two replicas. Claims, renewals, expiry and stealing, hand-backs,
the replicas table, and the fence on every write a monitor makes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from supervisor.adapters.sql_store import SqlStore
from supervisor.adapters.store import ActionRecord, AttachmentRecord
from supervisor.core.errors import LeaseLost, StaleVersion
from supervisor.core.events import Action, UserAction, UserRequested
from supervisor.core.leases import Lease, Replica, ReplicaState
from supervisor.core.machine import new_run, step
from supervisor.core.records import ReportProblemRecord
from supervisor.core.reports import FinalMetrics
from supervisor.core.run import Phase, Run
from tests.adapters.backends import location, open_store, raw_count, raw_rows
from tests.adapters.test_store import move
from tests.core.builders import NOW, POLICY, make_spec, seeded

TTL = timedelta(seconds=30)
A, B = "replica-a", "replica-b"


@pytest.fixture
async def stores(store: SqlStore) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    """Two replicas' stores on one database."""
    second = await open_store(location(store))
    yield store, second
    await second.close()


async def attach(store: SqlStore, run_id: str, minutes: int = 0) -> Run:
    decision = new_run(
        make_spec(run_id=run_id, instance_id=f"i-{minutes:017x}"),
        now=NOW + timedelta(minutes=minutes),
    )
    await store.create_run(decision)
    return decision.run


def lease_row(store: SqlStore, run_id: str) -> tuple[str | None, int, str | None]:
    [(owner, epoch, until)] = raw_rows(
        store, f"SELECT owner, epoch, lease_until FROM runs WHERE run_id = '{run_id}'"
    )
    return owner, int(epoch), until


# -- claims -------------------------------------------------------------------------------------


async def test_a_claim_takes_unowned_active_runs_oldest_first_with_their_whole_rows(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    a, _ = stores
    for n in (2, 0, 1):
        await attach(a, f"run-{n}", minutes=n)

    claimed = await a.claim_runs(A, limit=2, now=NOW, until=NOW + TTL)

    assert [c.record.run.spec.run_id for c in claimed] == ["run-0", "run-1"]
    assert [c.lease for c in claimed] == [Lease(A, 1, NOW + TTL)] * 2
    for leased in claimed:  # the monitor is armed from this row: no read, no AWS call
        assert leased.record == await a.get_run(leased.record.run.spec.run_id)
    assert lease_row(a, "run-0") == (A, 1, (NOW + TTL).isoformat())
    assert lease_row(a, "run-2") == (None, 0, None)


async def test_a_live_lease_is_not_claimed_and_an_expired_one_is_stolen_with_a_new_epoch(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    a, b = stores
    await attach(a, "run-0")
    await a.claim_runs(A, limit=10, now=NOW, until=NOW + TTL)

    assert await b.claim_runs(B, limit=10, now=NOW + TTL - timedelta(seconds=1),
                              until=NOW + 2 * TTL) == []  # fmt: skip
    later = NOW + TTL + timedelta(seconds=1)
    [stolen] = await b.claim_runs(B, limit=10, now=later, until=later + TTL)

    assert stolen.lease == Lease(B, 2, later + TTL)
    assert lease_row(a, "run-0")[:2] == (B, 2)


async def test_terminal_runs_are_never_claimed(stores: tuple[SqlStore, SqlStore]) -> None:
    a, _ = stores
    run = await attach(a, "run-0")
    detach = step(run, UserRequested(UserAction.DETACH), now=NOW, policy=POLICY, rng=seeded())
    await a.commit(run, detach, now=NOW)

    assert await a.claim_runs(A, limit=10, now=NOW, until=NOW + TTL) == []


async def test_a_run_created_under_a_lease_is_owned_from_its_first_row(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    a, b = stores
    decision = new_run(make_spec(run_id="run-0"), now=NOW)
    await a.create_run(decision, lease=Lease(A, 1, NOW + TTL))

    assert lease_row(a, "run-0") == (A, 1, (NOW + TTL).isoformat())
    assert await b.claim_runs(B, limit=10, now=NOW, until=NOW + TTL) == []


async def test_claiming_one_run_only_takes_that_run_also_from_its_own_owner(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    a, b = stores
    await attach(a, "run-0")
    await attach(a, "run-1", minutes=1)
    await a.claim_runs(A, limit=10, now=NOW, until=NOW + TTL)

    assert await b.claim_runs(B, limit=1, now=NOW, until=NOW + TTL, only="run-1") == []
    [again] = await a.claim_runs(A, limit=1, now=NOW, until=NOW + TTL, only="run-1")
    assert again.lease == Lease(A, 2, NOW + TTL)
    assert lease_row(a, "run-0")[:2] == (A, 1)


# -- renewals and hand-backs --------------------------------------------------------------------


async def test_one_renewal_extends_every_lease_still_held_and_names_them(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    a, b = stores
    for n in range(3):
        await attach(a, f"run-{n}", minutes=n)
    await a.claim_runs(A, limit=2, now=NOW, until=NOW + TTL)
    await b.claim_runs(B, limit=1, now=NOW, until=NOW + TTL)
    later = NOW + 2 * TTL  # every lease expired; B steals the oldest run, run-0
    await b.claim_runs(B, limit=1, now=later, until=later + TTL)

    held = await a.renew_leases(A, until=later + TTL)

    assert held == {"run-1": 1}  # an expired lease nobody took is still A's to renew
    assert lease_row(a, "run-1") == (A, 1, (later + TTL).isoformat())
    assert await b.renew_leases(B, until=later + TTL) == {"run-0": 2, "run-2": 1}


async def test_a_hand_back_frees_runs_at_once_but_only_under_the_epoch_held(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    a, b = stores
    await attach(a, "run-0")
    await attach(a, "run-1", minutes=1)
    await a.claim_runs(A, limit=10, now=NOW, until=NOW + TTL)

    assert await a.release_runs(A, [("run-0", 1), ("run-1", 7)]) == 1

    assert lease_row(a, "run-0") == (None, 1, None)
    assert lease_row(a, "run-1")[:2] == (A, 1)
    [taken] = await b.claim_runs(B, limit=10, now=NOW, until=NOW + TTL)  # no wait for the TTL
    assert taken.lease == Lease(B, 2, NOW + TTL)


async def test_releasing_every_lease_frees_whatever_replica_held_them(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    a, b = stores
    await attach(a, "run-0")
    await attach(a, "run-1", minutes=1)
    await a.claim_runs(A, limit=1, now=NOW, until=NOW + TTL)
    await b.claim_runs(B, limit=1, now=NOW, until=NOW + TTL)

    assert await a.release_every_lease() == 2
    assert len(await a.claim_runs(A, limit=10, now=NOW, until=NOW + TTL)) == 2


# -- the fence --------------------------------------------------------------------------------


async def test_a_commit_under_a_stolen_lease_is_refused_and_writes_nothing(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    a, b = stores
    run = await attach(a, "run-0")
    [mine] = await a.claim_runs(A, limit=1, now=NOW, until=NOW + TTL)
    later = NOW + TTL + timedelta(seconds=1)
    [theirs] = await b.claim_runs(B, limit=1, now=later, until=later + TTL)

    with pytest.raises(LeaseLost, match="replica-a no longer holds its lease"):
        await a.commit(run, move(run, Phase.RUNNING, 1), now=later, lease=mine.lease)

    assert raw_count(a, "SELECT COUNT(*) FROM transitions") == 1
    assert raw_count(a, "SELECT version FROM runs") == 1
    await b.commit(run, move(run, Phase.RUNNING, 1), now=later, lease=theirs.lease)
    assert raw_count(a, "SELECT version FROM runs") == 2


async def test_a_stale_version_under_a_held_lease_is_still_a_stale_version(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    a, _ = stores
    run = await attach(a, "run-0")
    [mine] = await a.claim_runs(A, limit=1, now=NOW, until=NOW + TTL)
    await a.commit(run, move(run, Phase.RUNNING, 1), now=NOW, lease=mine.lease)

    with pytest.raises(StaleVersion) as raised:
        await a.commit(run, move(run, Phase.RUNNING, 2), now=NOW, lease=mine.lease)
    assert not isinstance(raised.value, LeaseLost)


async def test_every_other_write_of_a_monitor_is_fenced_too(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    a, b = stores
    await attach(a, "run-0")
    [mine] = await a.claim_runs(A, limit=1, now=NOW, until=NOW + TTL)
    later = NOW + TTL + timedelta(seconds=1)
    await b.claim_runs(B, limit=1, now=later, until=later + TTL)
    stale = mine.lease

    action = ActionRecord("run-0", "i-0", str(Action.STOP), later, 1, "accepted", None, None)
    with pytest.raises(LeaseLost):
        await a.record_action(action, lease=stale)
    with pytest.raises(LeaseLost):
        await a.attach(AttachmentRecord("run-0", "crash-log", "s3://b/k", later), lease=stale)
    with pytest.raises(LeaseLost):
        await a.record_report("run-0", "final_metrics.json", FinalMetrics(runtime_s=1.0),
                              read_at=later, now=later, lease=stale)  # fmt: skip
    with pytest.raises(LeaseLost):
        await a.record_report_problem(
            ReportProblemRecord("run-0", "history.json", "e1", "bad", later), lease=stale
        )
    for table in ("actions", "attachments", "run_data", "report_problems"):
        assert raw_count(a, f"SELECT COUNT(*) FROM {table}") == 0, table
    await a.record_action(action)  # without a lease (a single daemon's old callers): written
    assert raw_count(a, "SELECT COUNT(*) FROM actions") == 1


# -- replicas -------------------------------------------------------------------------------------


def _replica(replica_id: str, seconds: int, state: ReplicaState = ReplicaState.RUNNING) -> Replica:
    at = NOW + timedelta(seconds=seconds)
    return Replica(replica_id, "box", 42, NOW, at, state, TTL.total_seconds())


async def test_replicas_are_listed_newest_heartbeat_first_with_the_active_runs_they_own(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    a, b = stores
    for n in range(3):
        await attach(a, f"run-{n}", minutes=n)
    await a.claim_runs(A, limit=2, now=NOW, until=NOW + TTL)
    await a.record_replica(_replica(A, 0))
    await b.record_replica(_replica(B, 5))
    await a.record_replica(_replica(A, 10))  # a heartbeat replaces the row

    statuses = await b.replicas()

    assert [(s.replica, s.runs_owned) for s in statuses] == [(_replica(A, 10), 2),
                                                             (_replica(B, 5), 0)]  # fmt: skip


def test_a_replica_is_alive_while_running_and_heard_from_within_its_ttl() -> None:
    replica = _replica(A, 0)
    assert replica.alive(NOW + TTL - timedelta(seconds=1))
    assert not replica.alive(NOW + TTL)
    assert not _replica(A, 0, ReplicaState.STOPPED).alive(NOW)


async def test_replicas_claiming_at_once_never_claim_the_same_run(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    """On PostgreSQL each claim passes over the rows the other holds (SKIP LOCKED); on
    SQLite the claims take turns."""
    a, b = stores
    for n in range(40):
        await attach(a, f"run-{n:02}", minutes=n)

    rounds = await asyncio.gather(
        *(s.claim_runs(name, limit=7, now=NOW, until=NOW + TTL) for _ in range(4)
          for s, name in ((a, A), (b, B)))
    )  # fmt: skip

    claimed = [leased.record.run.spec.run_id for batch in rounds for leased in batch]
    assert len(claimed) == len(set(claimed)) == 40
    assert {leased.lease.epoch for batch in rounds for leased in batch} == {1}
