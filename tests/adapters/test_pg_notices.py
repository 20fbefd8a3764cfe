"""PostgreSQL's LISTEN/NOTIFY as the replicas' wake-ups (issue 14), on the real test server:
the store notifies in the transaction that writes an inbox row, an answer or a transition."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from supervisor.adapters.pg_notices import PgNotices
from supervisor.adapters.pg_store import PgStore
from supervisor.core.inbox import (
    ANSWER_CHANNEL,
    INBOX_CHANNEL,
    NOTICE_CHANNELS,
    RELEASED_CHANNEL,
    TRANSITION_CHANNEL,
    Command,
    InboxAnswer,
    InboxItem,
    InboxKind,
    InboxState,
)
from supervisor.core.machine import new_run
from supervisor.core.run import Phase
from tests.adapters.test_store import move
from tests.core.builders import NOW, make_spec
from tests.runtime.waiting import wait_for

LONG_S = 120.0
"""A wait that only a notice ends within the test's bound."""
BOUND_S = 30.0
LEASE = timedelta(seconds=30)


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PgStore]:
    opened = await PgStore.open(pg_url)
    yield opened
    await opened.close()


def stop_command(item_id: str) -> InboxItem:
    return InboxItem(item_id, "r1", InboxKind.COMMAND, Command("stop"), NOW, "replica-b")


async def waiting_on(notices: PgNotices, channel: str) -> asyncio.Task[None]:
    task = asyncio.create_task(notices.wait(channel, LONG_S))
    await asyncio.sleep(0)  # let it register before anything is sent
    return task


async def test_an_inbox_row_and_its_answer_wake_their_waiters_at_once(
    store: PgStore, pg_url: str
) -> None:
    await store.create_run(new_run(make_spec(run_id="r1"), now=NOW))
    async with PgNotices(pg_url, NOTICE_CHANNELS) as notices:
        owner = await waiting_on(notices, INBOX_CHANNEL)
        await store.post_to_inbox(stop_command("x1"))
        await asyncio.wait_for(owner, BOUND_S)
        assert [item.id for item in await store.pending_inbox()] == ["x1"]  # visible when woken

        asker = await waiting_on(notices, ANSWER_CHANNEL)
        run = new_run(make_spec(run_id="r1"), now=NOW).run.evolve(phase=Phase.STOPPING)
        await store.answer_inbox("x1", InboxAnswer(InboxState.DONE, run=run), now=NOW)
        await asyncio.wait_for(asker, BOUND_S)
        answer = await store.inbox_answer("x1")
        assert answer is not None and answer.run == run


async def test_a_notice_with_nobody_waiting_is_kept_for_the_next_wait(
    store: PgStore, pg_url: str
) -> None:
    async with PgNotices(pg_url, NOTICE_CHANNELS) as notices:
        await store.post_to_inbox(stop_command("x1"))

        async def arrived() -> bool:
            return notices.received >= 1

        await wait_for(arrived, within_s=BOUND_S, what="the notice")
        await asyncio.wait_for(notices.wait(INBOX_CHANNEL, LONG_S), BOUND_S)


async def test_a_committed_transition_wakes_a_follower(store: PgStore, pg_url: str) -> None:
    decision = new_run(make_spec(run_id="r1"), now=NOW)
    await store.create_run(decision)
    async with PgNotices(pg_url, NOTICE_CHANNELS) as notices:
        follower = await waiting_on(notices, TRANSITION_CHANNEL)
        await store.commit(decision.run, move(decision.run, Phase.RUNNING, 1), now=NOW)
        await asyncio.wait_for(follower, BOUND_S)
        assert [t.seq for t in await store.transitions("r1")] == [1, 2]


async def test_runs_handed_back_wake_the_replicas_waiting_to_claim(
    store: PgStore, pg_url: str
) -> None:
    """A clean stop's runs are claimed at once, not at the other replicas' next round."""
    await store.create_run(new_run(make_spec(run_id="r1"), now=NOW))
    [leased] = await store.claim_runs("replica-a", limit=1, now=NOW, until=NOW + LEASE)
    async with PgNotices(pg_url, NOTICE_CHANNELS) as notices:
        claimer = await waiting_on(notices, RELEASED_CHANNEL)
        assert await store.release_runs("replica-a", [("r1", leased.lease.epoch)]) == 1
        await asyncio.wait_for(claimer, BOUND_S)
        assert [c.record.run.spec.run_id for c in await store.claim_runs(
            "replica-b", limit=1, now=NOW, until=NOW + LEASE)] == ["r1"]  # fmt: skip
        assert await store.release_runs("replica-a", [("r1", leased.lease.epoch)]) == 0
        assert notices.received == 1  # nothing released: no notice
