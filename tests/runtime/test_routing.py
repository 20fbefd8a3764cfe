"""Two replicas on one database (issue 14): in-process daemons `a` and `b` on one real SQLite
file, or on one real PostgreSQL database with LISTEN/NOTIFY, against the real moto server.
`b` starts first with no runs, and `a` then attaches them, so `a` alone watches them (as a
lease would make it): what `b` is asked about them goes through the run inbox to `a`.

On PostgreSQL the inbox poll is slower than the tests' bounds, so only the notices can explain
a prompt answer.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from supervisor.adapters.aws import Aws, QueueMessage
from supervisor.adapters.pg_notices import PgNotices
from supervisor.adapters.protocol import RunView
from supervisor.adapters.sql_store import SqlStore
from supervisor.core.duties import LEADER
from supervisor.core.errors import InvalidTransition, NoAnswer
from supervisor.core.feed import FeedTransition
from supervisor.core.inbox import NOTICE_CHANNELS, InboxKind, InboxState
from supervisor.core.machine import Decision, Transition, new_run
from supervisor.core.records import RunRecord
from supervisor.core.run import Outcome, Phase, Run
from supervisor.core.spec import RunSpec
from supervisor.core.zombies import RUN_TAG
from supervisor.runtime.events import EventConsumer
from supervisor.runtime.ports import SystemClock
from tests.adapters.backends import open_store
from tests.conftest import REGION, Fleet
from tests.runtime.conftest import Harness
from tests.runtime.test_events import (
    REACT_S,
    SLOW,
    Events,
    checks_scheduled_late,
    clock,
    history,
    phases,
    s3_put,
)
from tests.runtime.waiting import wait_for

P = Phase
SLOW_POLL_S = 60.0
"""The inbox poll on PostgreSQL here: longer than any bound below, so notices must wake."""


class Pair:
    """Replica `a` (watches the runs) and replica `b` (started first, watches none), both on
    `a`'s database file, or on one PostgreSQL database (`database_url`)."""

    def __init__(self, fleet: Fleet, root: Path, database_url: str | None) -> None:
        self.a = Harness(fleet, root / "a")
        self.b = Harness(fleet, root / "b")
        self.b.db_path = self.a.settings().db_path
        self.a.state_dir.mkdir()
        self.b.state_dir.mkdir()
        self.database_url = database_url
        # Leases of an hour: no fair-share hand-over moves a run from a to b mid-test.
        self.quick: dict[str, Any] = (
            {"inbox_poll_s": 0.05, "lease_ttl_s": 3600.0}
            if database_url is None
            else {"inbox_poll_s": SLOW_POLL_S, "database_url": database_url, "lease_ttl_s": 3600.0}
        )
        self._notices = AsyncExitStack()

    async def start(self, **overrides: Any) -> None:
        if self.database_url is not None:
            for harness in (self.a, self.b):
                notices = PgNotices(self.database_url, NOTICE_CHANNELS)
                harness.daemon_options["notices"] = await self._notices.enter_async_context(notices)
        settings = {**self.quick, **overrides}
        await self.b.start(replica_id="replica-b", **settings)
        await self.a.start(replica_id="replica-a", **settings)

    async def stop(self) -> None:
        await self.a.stop()
        await self.b.stop()
        await self._notices.aclose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def pair(request: pytest.FixtureRequest, fleet: Fleet) -> AsyncIterator[Pair]:
    root = Path(tempfile.mkdtemp(prefix="sv-rr-", dir="/tmp"))  # short: socket path limit
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    made = Pair(fleet, root, url)
    try:
        yield made
    finally:
        await made.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def pg_pair(fleet: Fleet, pg_url: str) -> AsyncIterator[Pair]:
    """Two replicas on PostgreSQL only: where runs move between replicas by their leases
    (with SQLite each daemon holds every lease it takes)."""
    root = Path(tempfile.mkdtemp(prefix="sv-rr-", dir="/tmp"))
    made = Pair(fleet, root, pg_url)
    try:
        yield made
    finally:
        await made.stop()
        shutil.rmtree(root, ignore_errors=True)


async def inbox_rows(harness: Harness) -> list[tuple[str, str, str, str | None, str | None]]:
    """(run id, kind, state, created by, answered by) of every inbox row, oldest first."""
    assert harness.store is not None
    rows = await harness.store._read(
        "SELECT run_id, kind, state, created_by, answered_by FROM inbox ORDER BY created_at, id"
    )
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


# -- commands ------------------------------------------------------------------------------------


async def test_a_stop_through_a_replica_that_does_not_watch_the_run_is_carried_out_by_its_owner(
    pair: Pair,
) -> None:
    await pair.start()
    a, b = pair.a.daemon, pair.b.daemon
    assert a is not None and b is not None
    (instance,) = pair.a.fleet.launch()
    await pair.a.attach("r1", instance, grace_s=300.0, grace_mode="fixed")
    await pair.a.wait_phase("r1", P.RUNNING)
    assert "r1" in a.monitors and "r1" not in b.monitors

    asked = clock()
    answer: RunView = await b.views.request("r1", "stop")
    assert clock() - asked < REACT_S  # on PostgreSQL: woken by notices, not the minute's poll

    # The owner's decision, answered through b as if b had made it.
    assert (answer.run_id, answer.phase, answer.outcome) == ("r1", P.STOPPING, Outcome.CANCELLED)
    run = await pair.a.wait_phase("r1", P.STOPPED)
    assert answer.version <= run.version
    assert pair.a.fleet.state(instance) == "stopped"
    assert (pair.a.calls("StopInstances"), pair.b.calls("StopInstances")) == (1, 0)
    assert await inbox_rows(pair.a) == [("r1", "command", "done", "replica-b", "replica-a")]


async def test_the_owners_refusal_comes_back_through_the_other_replica_word_for_word(
    pair: Pair,
) -> None:
    await pair.start()
    a, b = pair.a.daemon, pair.b.daemon
    assert a is not None and b is not None
    (instance,) = pair.a.fleet.launch()
    await pair.a.attach("r1", instance)
    await pair.a.wait_phase("r1", P.RUNNING)

    with pytest.raises(InvalidTransition) as local:
        await a.api.request("r1", "resume")
    with pytest.raises(InvalidTransition) as forwarded:
        await b.api.request("r1", "resume")
    assert str(forwarded.value) == str(local.value)
    assert "can be resumed" in str(forwarded.value)
    assert (await pair.a.run("r1")).phase is P.RUNNING
    assert [row[2] for row in await inbox_rows(pair.a)] == ["failed"]


async def test_without_an_answer_the_command_is_withdrawn_and_says_so(pair: Pair) -> None:
    await pair.start(command_timeout_s=0.5)
    (instance,) = pair.a.fleet.launch()
    await pair.a.attach("r1", instance)
    await pair.a.wait_phase("r1", P.RUNNING)
    assert pair.a.daemon is not None

    async def killed() -> None:  # as a SIGKILL leaves it: its lease is not handed back
        pass

    pair.a.daemon._hand_back = killed  # type: ignore[method-assign]
    await pair.a.stop()  # the owner is gone; its run stays active (and leased) in the database
    b = pair.b.daemon
    assert b is not None

    with pytest.raises(NoAnswer) as caught:
        await b.api.request("r1", "stop")

    message = str(caught.value)
    assert message.startswith("no replica answered the stop of run 'r1' within 0.5s")
    assert "the request was withdrawn, so nothing will be done" in message
    assert await inbox_rows(pair.b) == [("r1", "command", "failed", "replica-b", "replica-b")]
    # The owner comes back: a withdrawn command is not carried out late.
    await pair.a.start(replica_id="replica-a", **pair.quick)
    a = pair.a.daemon
    assert a is not None
    await wait_for(
        lambda: _true("r1" in a.monitors), what="r1 watched again by a restarted replica a"
    )
    assert a.inbox.handled == 0
    assert await a.inbox.take() == []
    assert (await pair.a.run("r1")).phase is P.RUNNING


async def _true(value: bool) -> bool:
    return value


# -- tail -f -----------------------------------------------------------------------------------


async def test_tail_f_through_another_replica_follows_the_owners_transitions_to_the_end(
    pair: Pair,
) -> None:
    await pair.start()
    a, b = pair.a.daemon, pair.b.daemon
    assert a is not None and b is not None
    (instance,) = pair.a.fleet.launch()
    await pair.a.attach("r1", instance, grace_s=300.0, grace_mode="fixed")
    await pair.a.wait_phase("r1", P.RUNNING)

    seen: list[Phase] = []

    async def follow() -> None:
        async for item in b.api.tail("r1", follow=True):
            if isinstance(item, FeedTransition):
                seen.append(item.transition.to_phase)

    following = asyncio.create_task(follow())
    await wait_for(lambda: _true(seen == [P.PENDING, P.RUNNING]), what="the history replayed")
    await a.api.request("r1", "stop")  # committed by a only
    await asyncio.wait_for(following, REACT_S)  # the stream ends with the run
    assert seen == [P.PENDING, P.RUNNING, P.STOPPING, P.STOPPED]


async def test_tail_f_on_the_owner_goes_on_from_the_store_when_the_run_moves_to_another_replica(
    pg_pair: Pair,
) -> None:
    pair = pg_pair
    await pair.start()
    a, b = pair.a.daemon, pair.b.daemon
    assert a is not None and b is not None
    (instance,) = pair.a.fleet.launch()
    await pair.a.attach("r1", instance, grace_s=300.0, grace_mode="fixed")
    await pair.a.wait_phase("r1", P.RUNNING)
    seen: list[Phase] = []

    async def follow() -> None:
        async for item in a.api.tail("r1", follow=True):  # a watches it: its monitor's feed
            if isinstance(item, FeedTransition):
                seen.append(item.transition.to_phase)

    following = asyncio.create_task(follow())
    await wait_for(lambda: _true(seen == [P.PENDING, P.RUNNING]), what="the history replayed")

    # The run moves: a hands it back (as a replica with more than its share does), b claims.
    # (a's own round, woken by its hand-back's NOTIFY, waits until b holds the run; a hands
    # back only a monitor between checks, so it tries until r1's is.)
    async def handed_back() -> bool:
        await a.lease_keeper._release_idle(1)
        return "r1" not in a.lease_keeper.book

    async with a.lease_keeper.busy:
        await wait_for(handed_back, what="a to hand r1 back between two of its checks")
        async with b.lease_keeper.busy:
            await b.lease_keeper._claim(None)
    assert "r1" in b.monitors and "r1" not in a.monitors

    await b.api.request("r1", "stop")  # committed by b only
    await asyncio.wait_for(following, REACT_S)
    assert seen == [P.PENDING, P.RUNNING, P.STOPPING, P.STOPPED]
    assert (pair.a.calls("StopInstances"), pair.b.calls("StopInstances")) == (0, 1)


# -- events from the queue -----------------------------------------------------------------------


class CheckingDeletes:
    """The AWS adapter's queue (our own port), noting at each delete which inbox rows the
    database already held."""

    def __init__(self, aws: Aws, pair: Pair) -> None:
        self._aws = aws
        self._pair = pair
        self.rows_at_delete: list[list[tuple[str, str, str, str | None, str | None]]] = []

    async def receive_messages(
        self, queue_url: str, region: str, *, wait_s: int = 20, max_messages: int = 10
    ) -> list[QueueMessage]:
        return await self._aws.receive_messages(
            queue_url, region, wait_s=wait_s, max_messages=max_messages
        )

    async def delete_message(self, queue_url: str, receipt: str, region: str) -> None:
        self.rows_at_delete.append(await inbox_rows(self._pair.b))
        await self._aws.delete_message(queue_url, receipt, region)


class CountingAudit:
    """b's store as its event consumer reads it, counting the reads of every active run."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self.full_reads = 0

    async def record_audit(
        self, *, at: datetime, source: str, kind: str, subject: str | None, detail: dict[str, Any]
    ) -> None:
        await self._store.record_audit(
            at=at, source=source, kind=kind, subject=subject, detail=detail
        )

    async def runs_on_instances(
        self, instance_ids: Iterable[str], run_ids: Iterable[str] = ()
    ) -> list[Run]:
        return await self._store.runs_on_instances(instance_ids, run_ids)

    async def runs(self, *, active_only: bool = False) -> list[RunRecord]:
        self.full_reads += 1
        return await self._store.runs(active_only=active_only)


async def test_a_message_about_another_replicas_run_is_in_its_inbox_before_the_delete(
    pair: Pair,
) -> None:
    events = Events(pair.a.fleet, "ev-handover")
    await pair.start(**SLOW)
    a, b = pair.a.daemon, pair.b.daemon
    assert a is not None and b is not None and pair.b.aws is not None and pair.b.store is not None
    queue = CheckingDeletes(pair.b.aws, pair)
    audit = CountingAudit(pair.b.store)
    consumer = EventConsumer(
        queue, events.url, REGION, lambda: list(b.monitors.values()), audit,
        SystemClock(), spot_margin_s=15.0, wait_s=1, hand_over=b._hand_over,
    )  # fmt: skip
    (instance,) = pair.a.fleet.launch()
    await pair.a.attach("r1", instance, grace_s=300.0, grace_mode="fixed")
    await pair.a.wait_phase("r1", P.RUNNING)
    await checks_scheduled_late(pair.a, "r1")  # the next look is a minute away

    pair.a.fleet.put("runs/r1/COMPLETE")
    events.send(s3_put("runs/r1/COMPLETE"))
    (message,) = await queue.receive_messages(events.url, REGION, wait_s=1)
    assert await consumer.handle(message) is True

    assert queue.rows_at_delete == [[("r1", "event", "pending", "replica-b", None)]]
    # The owner takes it from its inbox and its monitor looks at once.
    run = await pair.a.wait_phase("r1", P.GRACE, within_s=REACT_S)
    assert run.outcome is Outcome.COMPLETED
    await wait_for(
        lambda: _rows_are(pair, [("r1", "event", "done", "replica-b", "replica-a")]),
        what="the event row answered by its owner",
    )

    # The same message again (SQS delivers at least once): handed over again, harmless.
    events.send(s3_put("runs/r1/COMPLETE"))
    (again,) = await queue.receive_messages(events.url, REGION, wait_s=1)
    assert await consumer.handle(again) is True
    await wait_for(lambda: _inbox_settled(pair), what="the second event row answered")
    assert phases(await history(pair.a, "r1")) == [P.PENDING, P.RUNNING, P.GRACE]
    assert (pair.a.calls("StopInstances"), pair.b.calls("StopInstances")) == (0, 0)
    assert pair.b.calls("ListObjectsV2") == 0  # b never looked at a's run
    assert events.depth() == (0, 0)
    # Every active run was read once, for the first upload; the second was matched by the
    # prefix b keeps and its run read by id.
    assert audit.full_reads == 1


async def _rows_are(pair: Pair, rows: list[tuple[str, str, str, str | None, str | None]]) -> bool:
    return await inbox_rows(pair.a) == rows


async def _inbox_settled(pair: Pair) -> bool:
    rows = await inbox_rows(pair.a)
    return len(rows) == 2 and all(row[2] != InboxState.PENDING for row in rows)


# -- the zombie sweep under the duty lease -------------------------------------------------------


async def test_one_replica_holds_the_sweeps_duty_and_only_it_terminates_a_zombie(
    pair: Pair,
) -> None:
    (orphan,) = pair.a.fleet.launch()
    pair.a.fleet.ec2.create_tags(Resources=[orphan], Tags=[{"Key": RUN_TAG, "Value": "gone"}])
    await pair.start(
        zombie_interval_s=0.1, auto_terminate=True, zombie_wait_s=0.0,
        termination_cooldown_s=3600.0,
    )  # fmt: skip
    a, b = pair.a.daemon, pair.b.daemon
    assert a is not None and b is not None
    # b started first and holds the duty; a does not, and does not sweep.
    assert (b.leader.holds(), a.leader.holds()) == (True, False)
    if pair.database_url is not None:  # replicas: status names the leader
        assert ((await b.api.status()).role, (await a.api.status()).role) == ("leader", "replica")
    assert a.leader.lease is not None and a.leader.lease.owner == "replica-b"

    await wait_for(
        lambda: _true(pair.a.fleet.state(orphan) in ("shutting-down", "terminated")),
        what="the orphan terminated",
    )
    await wait_for(lambda: _true(b.zombie_watch.sweeps >= 3), what="more sweeps by b")
    assert (pair.b.calls("TerminateInstances"), pair.a.calls("TerminateInstances")) == (1, 0)
    assert pair.a.calls("DescribeInstances") == 0  # a never looked for zombies
    assert a.zombie_watch.sweeps == 0
    assert pair.a.store is not None
    assert [t.instance_id for t in await pair.a.store.terminations()] == [orphan]


async def test_a_stopping_leader_hands_the_duty_over_without_waiting_for_the_ttl(
    pair: Pair,
) -> None:
    await pair.start()  # leases (and the duty) of an hour: only the release hands it on
    a, b = pair.a.daemon, pair.b.daemon
    assert a is not None and b is not None
    assert b.leader.holds()
    await pair.b.stop()
    assert await a.leader.renew()
    assert a.leader.lease is not None
    assert (a.leader.lease.name, a.leader.lease.owner, a.leader.lease.epoch) == (
        LEADER, "replica-a", 2,
    )  # fmt: skip


async def test_the_crash_reports_a_killed_replica_never_read_are_read_by_the_leader_alone(
    pair: Pair,
) -> None:
    """A fleet-wide pass, like the sweep: not at every replica's start, but when a replica
    comes to hold the leader duty, by it alone (one GET each), its attachments fenced by
    that duty; a replica that takes the duty over later finds nothing left to read."""
    location = pair.database_url or str(pair.a.settings().db_path)
    store = await open_store(location)
    try:
        (instance,) = pair.a.fleet.launch()
        at = datetime.now(UTC) - timedelta(minutes=5)
        spec = RunSpec.build(run_id="late", instance_id=instance, region=REGION,
                             s3_prefix=pair.a.fleet.prefix("late"), grace_s=0)  # fmt: skip
        created = new_run(spec, now=at)
        await store.create_run(created)
        crashed = created.run.evolve(
            phase=Phase.CRASHED, outcome=Outcome.CRASHED, version=2, phase_since=at
        )
        moved = Transition(Phase.PENDING, Phase.CRASHED, at, "instance gone", {})
        await store.commit(created.run, Decision(run=crashed, transition=moved), now=at)
        # A third replica holds the duty as both start: neither reads anything.
        ghost = datetime.now(UTC)
        await store.hold_duty(LEADER, "replica-z", now=ghost, until=ghost + timedelta(hours=1))
    finally:
        await store.close()
    pair.a.fleet.put("runs/late/crash/error.log", "ValueError: nan loss\n")

    await pair.start()
    a, b = pair.a.daemon, pair.b.daemon
    assert a is not None and b is not None and pair.b.store is not None
    assert not b.leader.holds() and not a.leader.holds()
    b_store = pair.b.store
    assert "crash-reports" not in {t.get_name() for t in [*a._tasks, *b._tasks]}
    assert (pair.b.calls("GetObject"), pair.a.calls("GetObject")) == (0, 0)

    await b_store.release_duty(LEADER, "replica-z", now=datetime.now(UTC))  # z stopped
    assert await b.leader.renew()

    async def attached() -> bool:
        return bool(await b_store.attachments("late"))

    await wait_for(attached, what="the leader to attach the crash report")
    assert (pair.b.calls("GetObject"), pair.a.calls("GetObject")) == (1, 0)

    await pair.b.stop()  # a takes the duty over: the pass runs there, with nothing to read
    assert await a.leader.renew()
    await wait_for(lambda: _true("crash-reports" not in {t.get_name() for t in a._tasks}),
                   what="a's pass to end")  # fmt: skip
    assert pair.a.calls("GetObject") == 0
    assert pair.a.store is not None
    assert len(await pair.a.store.attachments("late")) == 1


def test_inbox_kinds_are_the_migrations() -> None:
    assert {k.value for k in InboxKind} == {"command", "event"}
    assert {s.value for s in InboxState} == {"pending", "done", "failed"}
