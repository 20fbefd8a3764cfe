"""The store's run inbox and duty leases (issue 14, replicas), on both backends (a real SQLite
file, a real PostgreSQL database): two store objects on one database stand for two
replicas."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from supervisor.adapters.sql_store import SqlStore
from supervisor.core.duties import LEADER
from supervisor.core.events import Nudge, SpotInterruptionWarning
from supervisor.core.inbox import (
    Command,
    InboxAnswer,
    InboxItem,
    InboxKind,
    InboxState,
    decode_body,
    encode_body,
)
from supervisor.core.machine import new_run
from supervisor.core.run import Phase
from tests.adapters.backends import BACKENDS, open_store
from tests.adapters.test_store import move
from tests.core.builders import NOW, make_spec

TTL = timedelta(seconds=30)


@pytest.fixture(params=BACKENDS)
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    where = (
        str(tmp_path / "s.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    )
    a = await open_store(where)
    b = await open_store(where)
    await a.create_run(new_run(make_spec(run_id="r1"), now=NOW))  # active: its rows are seen
    yield a, b
    await b.close()
    await a.close()


def item(item_id: str, body: Command | Nudge, *, run_id: str = "r1", by: str = "b") -> InboxItem:
    kind = InboxKind.COMMAND if isinstance(body, Command) else InboxKind.EVENT
    return InboxItem(item_id, run_id, kind, body, NOW, by)


# -- the inbox ---------------------------------------------------------------------------------


async def test_a_row_written_by_one_replica_is_pending_for_the_other(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    a, b = stores
    await b.post_to_inbox(item("x1", Command("stop")))
    await b.post_to_inbox(item("x2", Nudge("prefix", key="runs/r1/COMPLETE")))
    pending = await a.pending_inbox()
    assert pending == [
        item("x1", Command("stop")),
        item("x2", Nudge("prefix", key="runs/r1/COMPLETE")),
    ]
    assert await a.inbox_answer("x1") is None  # pending: no answer yet


async def test_the_answer_carries_the_run_as_the_owner_decided_it(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    a, b = stores
    run = new_run(make_spec(run_id="r1"), now=NOW).run.evolve(phase=Phase.STOPPING, version=3)
    await b.post_to_inbox(item("x1", Command("stop")))
    assert await a.answer_inbox("x1", InboxAnswer(InboxState.DONE, run=run, answered_by="a"),
                                now=NOW)  # fmt: skip
    answer = await b.inbox_answer("x1")
    assert answer is not None
    assert (answer.state, answer.answered_by, answer.error) == (InboxState.DONE, "a", None)
    assert answer.run == run
    assert await a.pending_inbox() == []


async def test_the_first_answer_stands_and_a_withdrawn_row_is_never_answered(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    a, b = stores
    await b.post_to_inbox(item("x1", Command("stop")))
    withdrawn = InboxAnswer(InboxState.FAILED, error="NoAnswer", message="gave up", answered_by="b")
    assert await b.answer_inbox("x1", withdrawn, now=NOW)
    late = InboxAnswer(InboxState.FAILED, error="InvalidTransition", message="no", answered_by="a")
    assert not await a.answer_inbox("x1", late, now=NOW)
    answer = await b.inbox_answer("x1")
    assert answer is not None
    assert (answer.error, answer.message, answer.answered_by) == ("NoAnswer", "gave up", "b")


async def test_rows_of_ended_runs_are_not_pending_and_the_leader_fails_them_then_drops_old_ones(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    a, b = stores
    ended = new_run(make_spec(run_id="r2", instance_id="i-0000000000000000e"), now=NOW)
    await a.create_run(ended)
    await a.commit(ended.run, move(ended.run, Phase.DETACHED, 1), now=NOW)
    await b.post_to_inbox(item("x1", Command("stop"), run_id="r2"))
    await b.post_to_inbox(item("x2", Command("stop")))
    assert [i.id for i in await a.pending_inbox()] == ["x2"]

    await a.expire_inbox(now=NOW, keep=timedelta(days=7))
    answer = await b.inbox_answer("x1")
    assert answer is not None
    assert (answer.state, answer.error) == (InboxState.FAILED, "InvalidTransition")
    assert answer.message == "the run ended before its owner took this"
    assert await a.inbox_answer("x2") is None  # its run is active: still pending

    await a.expire_inbox(now=NOW + timedelta(days=8), keep=timedelta(days=7))
    assert await b.inbox_answer("x1") is None  # dropped
    assert [i.id for i in await a.pending_inbox()] == ["x2"]


def test_bodies_survive_their_json_form() -> None:
    for body in (
        Command("resume", from_scratch=True),
        Nudge("instance", state="stopped"),
        SpotInterruptionWarning(NOW, action="stop"),
    ):
        assert decode_body(encode_body(body)) == body
    with pytest.raises(ValueError, match="unknown inbox body"):
        decode_body({"type": "launch-missiles"})


# -- duty leases -------------------------------------------------------------------------------


async def test_a_duty_is_held_by_one_replica_until_it_expires_then_taken_with_a_new_epoch(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    a, b = stores
    first = await a.hold_duty(LEADER, "a", now=NOW, until=NOW + TTL)
    assert (first.owner, first.epoch) == ("a", 1)
    refused = await b.hold_duty(LEADER, "b", now=NOW + TTL / 2, until=NOW + TTL * 1.5)
    assert (refused.owner, refused.epoch, refused.lease_until) == ("a", 1, NOW + TTL)
    renewed = await a.hold_duty(LEADER, "a", now=NOW + TTL / 2, until=NOW + TTL * 1.5)
    assert (renewed.owner, renewed.epoch, renewed.lease_until) == ("a", 1, NOW + TTL * 1.5)
    # a stopped renewing (frozen, or dead): once expired, b takes it, one epoch on.
    taken = await b.hold_duty(LEADER, "b", now=NOW + TTL * 1.5, until=NOW + TTL * 2.5)
    assert (taken.owner, taken.epoch) == ("b", 2)
    assert (await a.hold_duty(LEADER, "a", now=NOW + TTL * 2, until=NOW + TTL * 3)).owner == "b"


async def test_a_released_duty_is_taken_at_once_and_a_sole_replica_takes_it_over(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    a, b = stores
    await a.hold_duty(LEADER, "a", now=NOW, until=NOW + TTL)
    await a.release_duty(LEADER, "a", now=NOW)
    assert (await b.hold_duty(LEADER, "b", now=NOW, until=NOW + TTL)).owner == "b"
    # SQLite's one daemon after a restart (its state-dir lock held): it takes over at once.
    over = await a.hold_duty(LEADER, "a2", now=NOW, until=NOW + TTL, take_over=True)
    assert (over.owner, over.epoch) == ("a2", 3)
