"""The run inbox between replicas: requests for a run go to the replica that owns it.

A replica that takes a command (stop, terminate, resume, detach) for an active run it does not
watch writes it to the inbox and waits, bounded, for the owner's answer (`ask`): the run after
the decision, or the error the owner's control API raised, handed back as if it were local.
An SQS message about such a run becomes an event row (`EventConsumer`), committed before the
message is deleted.

The owner's `InboxConsumer` (a root task) takes the pending rows of the runs it watches and
carries them out through the same path as a local request: a command through the control
API, an event through the run's monitor; then it writes the answer. Where the store sends
notices (PostgreSQL's NOTIFY in the writing transaction) they wake both sides at once; a poll
every `inbox_poll_s` is the fallback, and all there is on SQLite, where one daemon watches
every active run and this path stays idle.

A row is answered once: the first answer stands, and a writer that gives up withdraws its row
the same way, so a late owner does not act on a command nobody waits for any more.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta

import structlog

from supervisor.core.duties import DutyLease
from supervisor.core.errors import (
    DutyLost,
    InvalidInput,
    InvalidTransition,
    LeaseLost,
    NoAnswer,
    ShuttingDown,
    StaleVersion,
    SupervisorError,
    UnknownRun,
)
from supervisor.core.inbox import (
    ANSWER_CHANNEL,
    INBOX_CHANNEL,
    Command,
    HandedEvent,
    InboxAnswer,
    InboxItem,
    InboxKind,
    InboxState,
)
from supervisor.core.run import Run
from supervisor.runtime.monitor import Monitor
from supervisor.runtime.ports import Clock, Notices, RunStore

log = structlog.get_logger("supervisor.inbox")

TIDY_INTERVAL = timedelta(minutes=10)
KEEP_ANSWERED = timedelta(days=7)
"""Answered rows are kept this long (what was asked of whom, for a person looking back)."""

CarryOut = Callable[[str, Command], Awaitable[Run]]
"""The control API's local path for one run's command."""

_ERRORS: dict[str, Callable[[str, str], SupervisorError]] = {
    "InvalidTransition": lambda _, message: InvalidTransition(message),
    "InvalidInput": lambda _, message: InvalidInput(message),
    "StaleVersion": lambda _, message: StaleVersion(message),
    "ShuttingDown": lambda _, message: ShuttingDown(message),
    "UnknownRun": lambda run_id, message: UnknownRun(run_id, message),
}
"""The errors an owner's answer may carry, rebuilt on the asking side as the control API
raises them (anything else is answered as an internal error)."""


def new_item_id() -> str:
    return uuid.uuid4().hex


async def ask(
    store: RunStore,
    notices: Notices,
    clock: Clock,
    *,
    replica_id: str,
    run_id: str,
    command: Command,
    timeout_s: float,
    poll_s: float,
) -> Run:
    """Write `command` to the run's inbox and wait up to `timeout_s` for its owner's answer;
    return the run as the owner's decision left it, or raise the owner's error. Without an
    answer in time the row is withdrawn and `NoAnswer` raised."""
    item = InboxItem(
        id=new_item_id(),
        run_id=run_id,
        kind=InboxKind.COMMAND,
        body=command,
        created_at=clock.now(),
        created_by=replica_id,
    )
    await store.post_to_inbox(item)
    log.info("command_forwarded", run_id=run_id, action=command.action, inbox_id=item.id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (answer := await store.inbox_answer(item.id)) is None:
        left = deadline - loop.time()
        if left <= 0:
            break
        await notices.wait(ANSWER_CHANNEL, min(poll_s, left))
    if answer is None:
        message = (
            f"no replica answered the {command.action} of run {run_id!r} within "
            f"{timeout_s:g}s: the supervisord that watches it may be down or frozen (its runs "
            "move to another replica once its leases expire); the request was withdrawn, so "
            f"nothing will be done: check `supervisorctl status {run_id}` and try again"
        )
        withdrawal = InboxAnswer(
            InboxState.FAILED, error="NoAnswer", message=message, answered_by=replica_id
        )
        if await store.answer_inbox(item.id, withdrawal, now=clock.now()):
            log.warning("command_unanswered", run_id=run_id, action=command.action,
                        inbox_id=item.id, timeout_s=timeout_s)  # fmt: skip
            raise NoAnswer(message)
        answer = await store.inbox_answer(item.id)  # answered meanwhile: that answer stands
        assert answer is not None
    return _outcome(run_id, answer)


def _outcome(run_id: str, answer: InboxAnswer) -> Run:
    if answer.run is not None:
        return answer.run
    make = _ERRORS.get(answer.error or "")
    if make is not None:
        raise make(run_id, answer.message)
    raise RuntimeError(answer.message or f"replica {answer.answered_by} gave no answer")


async def hand_over(
    store: RunStore, clock: Clock, *, replica_id: str, run_id: str, event: HandedEvent
) -> str:
    """Write an event for a run another replica owns to its inbox; returns the row's id."""
    item = InboxItem(
        id=new_item_id(),
        run_id=run_id,
        kind=InboxKind.EVENT,
        body=event,
        created_at=clock.now(),
        created_by=replica_id,
    )
    await store.post_to_inbox(item)
    return item.id


class InboxConsumer:
    """Carries out the inbox rows of the runs this replica watches (`local`): commands
    through `carry_out` (the control API's local path), events through the run's monitor;
    answers each. Rows are handled concurrently (a stop may wait for the monitor to finish a
    long effect), each once in this process."""

    def __init__(
        self,
        store: RunStore,
        notices: Notices,
        clock: Clock,
        *,
        replica_id: str,
        local: Callable[[str], Monitor | None],
        carry_out: CarryOut,
        poll_s: float,
        tidies: Callable[[], DutyLease | None] = lambda: None,
    ) -> None:
        """`tidies`: the leader duty's lease when this replica holds it (and tidies the
        inbox, its writes fenced by that lease), else None."""
        self._store = store
        self._notices = notices
        self._clock = clock
        self.replica_id = replica_id
        self._local = local
        self._carry_out = carry_out
        self._poll_s = poll_s
        self._in_flight: set[str] = set()
        self._tidies = tidies
        self._tidied_at: datetime | None = None
        self.handled = 0

    def __repr__(self) -> str:
        return f"<InboxConsumer {self.replica_id} in_flight={len(self._in_flight)} " \
            f"handled={self.handled}>"  # fmt: skip

    async def run_forever(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            while True:
                await self._tidy()
                for item in await self.take():
                    tasks.create_task(self._handle_guarded(item))
                await self._notices.wait(INBOX_CHANNEL, self._poll_s)

    async def _tidy(self) -> None:
        """On the leader, every `TIDY_INTERVAL`: end the rows of ended runs, drop old ones."""
        now = self._clock.now()
        due = self._tidied_at is None or now - self._tidied_at >= TIDY_INTERVAL
        duty = self._tidies() if due else None
        if duty is not None:
            try:
                await self._store.expire_inbox(now=now, keep=KEEP_ANSWERED, duty=duty)
            except DutyLost as lost:  # the new holder tidies
                log.info("inbox_tidy_skipped", why=str(lost))
            self._tidied_at = now

    async def take(self) -> list[InboxItem]:
        """The pending rows this replica should handle now (its runs', not in hand), marked
        as in hand: the caller must `handle` each."""
        mine = [
            item
            for item in await self._store.pending_inbox()
            if item.id not in self._in_flight and self._local(item.run_id) is not None
        ]
        self._in_flight.update(item.id for item in mine)
        return mine

    async def _handle_guarded(self, item: InboxItem) -> None:
        try:
            await self.handle(item)
        except asyncio.CancelledError:
            raise
        except Exception:  # one row's trouble must not end the consumer
            log.exception("inbox_item_failed", run_id=item.run_id, inbox_id=item.id)

    async def handle(self, item: InboxItem) -> None:
        """Carry out one row taken with `take` and write its answer."""
        try:
            answer = await self._answer(item)
            if answer is None:
                return  # left pending, for whoever watches the run next
            answered = await self._store.answer_inbox(
                item.id, replace(answer, answered_by=self.replica_id), now=self._clock.now()
            )
            self.handled += 1
            log.info(
                "inbox_item_handled",
                run_id=item.run_id,
                inbox_id=item.id,
                kind=str(item.kind),
                state=str(answer.state),
                error=answer.error,
                from_replica=item.created_by,
                withdrawn=not answered,
            )
        finally:
            self._in_flight.discard(item.id)

    async def _answer(self, item: InboxItem) -> InboxAnswer | None:
        body = item.body
        try:
            if isinstance(body, Command):
                return InboxAnswer(InboxState.DONE, run=await self._carry_out(item.run_id, body))
            monitor = self._local(item.run_id)
            if monitor is None:  # no longer ours: the next owner takes it
                return None
            await monitor.request(body)  # as the queue consumer would: nobody waits on it
            return InboxAnswer(InboxState.DONE)
        except (ShuttingDown, LeaseLost):
            return None  # left pending: the run's next owner (or this one, back) answers
        except SupervisorError as exc:  # a refusal (a repeat, or too late for the phase)
            return InboxAnswer(InboxState.FAILED, error=type(exc).__name__, message=str(exc))
