"""The notification sender (issue 15) over a real store, with a sender faked at our own port
(`NotificationSender`) and an injected clock: delivery once, retries then failure, a target
already served is not sent again, and with replicas only the owner (or, for a gone owner, the
leader) sends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from supervisor.adapters.sql_store import SqlStore
from supervisor.core.errors import TransientError
from supervisor.core.leases import Replica, ReplicaState
from supervisor.core.outbox import DeliveryState, Message, Target, parse_notify_on
from supervisor.core.run import Phase
from supervisor.runtime.notifier import Notifier, NotifyPolicy
from tests.adapters.backends import open_store
from tests.adapters.test_store import attach, move
from tests.core.builders import NOW
from tests.runtime.waiting import wait_for as wait_until

pytestmark = pytest.mark.usefixtures("no_retry_waits")

OK, BAD = Target("ok-digest", "json://ok"), Target("bad-digest", "json://bad")
TTL = timedelta(seconds=30)


@dataclass
class Clock:
    at: datetime = NOW

    def now(self) -> datetime:
        return self.at


@dataclass
class FakeSender:
    """Our port, faked: records each send; `failing` targets raise every time."""

    targets: tuple[Target, ...] = (OK,)
    failing: set[str] = field(default_factory=set)
    hanging: str | None = None
    """A run id whose messages never get an answer (until cancelled)."""
    sent: list[tuple[str, Message]] = field(default_factory=list)
    tries: list[str] = field(default_factory=list)

    async def send(self, target: Target, message: Message) -> None:
        self.tries.append(target.digest)
        if self.hanging is not None and message.key.startswith(f"{self.hanging}:"):
            await asyncio.Event().wait()
        if target.digest in self.failing:
            raise TransientError("SendFailed", "error=500")
        self.sent.append((target.digest, message))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    opened = await open_store(str(tmp_path / "s.db"))
    opened.notify_on_events(parse_notify_on("crashed,failed"))
    yield opened
    await opened.close()


def notifier(store: SqlStore, sender: FakeSender, *, replica: str = "a", leader: bool = True,
             clock: Clock | None = None) -> Notifier:  # fmt: skip
    return Notifier(store, sender, clock or Clock(), replica_id=replica, leader=lambda: leader,
                    policy=NotifyPolicy(retries=2, retry_base_s=1.0, owner_gone_after_s=30.0,
                                        public_url="https://runs.example.com"))  # fmt: skip


async def until(predicate: Callable[[], bool]) -> None:
    async def holds() -> bool:
        return predicate()

    await wait_until(holds)


async def crashed(store: SqlStore, run_id: str = "run-1") -> None:
    run = await attach(store, run_id)
    await store.commit(run, move(run, Phase.CRASHED, 1), now=NOW)


async def test_a_pending_row_is_sent_once_and_recorded(store: SqlStore) -> None:
    sender = FakeSender()
    await crashed(store)
    sending = notifier(store, sender)

    assert await sending.deliver_pending() == 1
    assert await sending.deliver_pending() == 0

    [(target, message)] = sender.sent
    assert target == OK.digest and message.key == "run-1:2"
    assert "run page: https://runs.example.com/runs/run-1" in message.body
    [row] = await store.outbox_rows()
    assert (row.state, row.attempts) == (DeliveryState.SENT, 1)
    assert [(d.target, d.state, d.attempts) for d in row.deliveries] == [
        (OK.digest, DeliveryState.SENT, 1)
    ]
    assert sending.sent[OK.digest] == 1


async def test_a_failing_target_is_retried_then_recorded_failed_and_the_other_served(
    store: SqlStore,
) -> None:
    sender = FakeSender(targets=(BAD, OK), failing={BAD.digest})
    await crashed(store)
    sending = notifier(store, sender)

    await sending.deliver_pending()

    assert sender.tries == [BAD.digest] * 3 + [OK.digest]  # the first try and 2 retries
    [row] = await store.outbox_rows()
    assert row.state is DeliveryState.FAILED
    assert row.last_error == "json://bad: SendFailed: error=500"
    assert row.delivery(BAD) is not None and row.delivery(BAD).attempts == 3  # type: ignore[union-attr]
    status = await sending.status()
    assert [
        (f.target, f.sent, f.failed, f.last.ok, f.pending, f.failed_rows) for f in status.targets
    ] == [(BAD, 0, 1, False, 0, 1), (OK, 1, 0, True, 0, 0)]
    assert status.rows == {"failed": 1}
    assert await sending.deliver_pending() == 0  # given up on: never sent again


async def test_a_target_that_got_the_message_is_not_sent_it_again_in_a_later_round(
    store: SqlStore,
) -> None:
    await crashed(store)
    first = FakeSender(targets=(OK,))
    await notifier(store, first).deliver_pending()
    # A URL added since: only it gets the message in the next round.
    later = FakeSender(targets=(OK, BAD))
    [row] = await store.outbox_rows()
    await store.record_outbox(row.key, row.deliveries, state=DeliveryState.PENDING,
                              last_error=None, now=NOW)  # fmt: skip

    await notifier(store, later).deliver_pending()

    assert [t for t, _ in later.sent] == [BAD.digest]


async def test_a_receiver_that_does_not_answer_holds_up_no_other_row(store: SqlStore) -> None:
    sender = FakeSender(hanging="run-1")
    await crashed(store, "run-1")
    sending = notifier(store, sender)
    sending.policy = NotifyPolicy(poll_s=0.01)
    task = asyncio.create_task(sending.run_forever())
    try:
        await until(lambda: sender.tries == [OK.digest])  # run-1's send hangs
        await crashed(store, "run-2")
        await until(lambda: [m.key for _, m in sender.sent] == ["run-2:2"])
        assert sender.tries == [OK.digest, OK.digest]  # run-1 was not started again meanwhile
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [r.state for r in await store.outbox_rows()] == [
        DeliveryState.PENDING,
        DeliveryState.SENT,
    ]


async def test_a_test_message_goes_to_every_target_once_without_an_outbox_row(
    store: SqlStore,
) -> None:
    sender = FakeSender(targets=(BAD, OK), failing={BAD.digest})

    results = await notifier(store, sender).test_all()

    assert [(r.target, r.ok, r.error) for r in results] == [
        (BAD, False, "SendFailed: error=500"),
        (OK, True, None),
    ]
    assert sender.tries == [BAD.digest, OK.digest]
    assert await store.outbox_rows() == []


async def test_with_replicas_the_owner_sends_and_the_leader_only_once_the_owner_is_gone(
    pg_url: str,
) -> None:
    a, b = await open_store(pg_url), await open_store(pg_url)
    try:
        for s in (a, b):
            s.notify_on_events(parse_notify_on("crashed"))
        for name in ("a", "b"):
            await a.record_replica(Replica(name, "host", 1, NOW, NOW, ReplicaState.RUNNING, 30.0))
        run = await attach(a, "run-1")
        [mine] = await a.claim_runs("a", limit=1, now=NOW, until=NOW + TTL)
        await a.commit(run, move(run, Phase.CRASHED, 1), now=NOW, lease=mine.lease)
        clock = Clock()
        leader_sender, owner_sender = FakeSender(), FakeSender()
        leader = notifier(b, leader_sender, replica="b", leader=True, clock=clock)

        assert await leader.deliver_pending() == 0  # a is alive: its row is a's to send
        clock.at = NOW + 2 * TTL  # a's heartbeat is now older than the TTL: a is gone
        assert await leader.deliver_pending() == 1
        assert await notifier(a, owner_sender, replica="a", leader=False).deliver_pending() == 0

        assert [m.key for _, m in leader_sender.sent] == ["run-1:2"]
        assert owner_sender.sent == []
    finally:
        await a.close()
        await b.close()
