"""One monitor per run: its mailbox and its commits. It feeds events to `step()`, commits the
decision, then has the executor (`runtime.executor`) carry out its effects.

A monitor handles one event at a time, so an effect's result is applied before any other
event of the run is looked at: a stop call in flight cannot be duplicated by an observation
that arrives meanwhile. Order within one event: the decision is committed (intent), and only
then are its effects carried out.

One exception: an instance command marked `background` (a rebalance's early checkpoint, which
may upload for many minutes) runs as a task in the monitor's TaskGroup and sends its result
back as an event, so a spot warning meanwhile is handled at once. Leaving running/stalled
cancels it.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import structlog

from supervisor.core.checkpoint import CommandResult, CommandStatus
from supervisor.core.effects import Effect, RunInstanceCommand, WakeAt
from supervisor.core.errors import InvalidTransition, LeaseLost
from supervisor.core.events import Armed, CommandFinished, Event, InstanceObserved, Tick
from supervisor.core.feed import FeedItem, FeedTransition, MonitorNote
from supervisor.core.machine import Decision, Policy, step
from supervisor.core.run import Phase, Run
from supervisor.runtime.executor import Executor
from supervisor.runtime.leases import LeaseBook
from supervisor.runtime.metrics import MetricsSink
from supervisor.runtime.ports import Clock, RunStore

log = structlog.get_logger("supervisor.monitor")

RECENT_EVENTS = 50
_BACKGROUND_PHASES = frozenset({Phase.RUNNING, Phase.STALLED})
"""Phases in which a background command (an early checkpoint) may go on."""


@dataclass(frozen=True, slots=True)
class MonitorDeps:
    """What every monitor shares: one store, one clock, the policies, one executor."""

    store: RunStore
    clock: Clock
    policy: Policy
    rng: random.Random
    executor: Executor
    metrics: MetricsSink = field(default_factory=MetricsSink)
    leases: LeaseBook | None = None
    """The leases of this replica (issue 14): each commit is fenced by the run's. None: no
    leases (a monitor on its own, in tests)."""


class Monitor:
    """One run's event loop. Ten thousand of these live in one process, so what each holds is
    kept small: no per-monitor asyncio.Event (a future exists only while someone waits), and
    the logger, the recent-event ring and the subscriber set are made on first use."""

    def __init__(self, run: Run, deps: MonitorDeps) -> None:
        self.run = run
        self._deps = deps
        self._items: list[tuple[Event, asyncio.Future[Decision] | None]] = []
        """Queued inputs, oldest first (a list: it is nearly always empty, and an empty deque
        costs ten times the memory)."""
        self._waiter: asyncio.Future[None] | None = None
        """Set while the loop waits for an input; resolved by `_wake`."""
        self._wake_at: datetime | None = None
        self.busy = False
        """Handling an event (a decision, its commit and its effects)."""
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._settle: dict[int, bool] = {}
        self._finished = False
        self._closing = False
        self._recent: deque[MonitorNote] | None = None
        self._subscribers: set[asyncio.Queue[FeedItem]] | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._background: list[asyncio.Task[None]] = []

    @property
    def run_id(self) -> str:
        return self.run.spec.run_id

    @functools.cached_property
    def _log(self) -> Any:
        return log.bind(run_id=self.run_id)

    @property
    def recent(self) -> tuple[MonitorNote, ...]:
        """The last monitor events (at most `RECENT_EVENTS`), oldest first."""
        return tuple(self._recent or ())

    async def wait_idle(self) -> None:
        """Return once the event in hand (if any) is handled."""
        if self.busy:
            waiter = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
            await waiter

    @property
    def closing(self) -> bool:
        """Closed: it takes no further events (the daemon is shutting down)."""
        return self._closing

    def close(self) -> None:
        """Take no further events; the one in hand (if any) is finished."""
        self._closing = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __repr__(self) -> str:
        state = "busy" if self.busy else "idle"
        return f"<Monitor {self.run!r} {state} queued={len(self._items)} wake={self._wake_at}>"

    # -- inputs -------------------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        """Queue an observed fact (from the reconciler or the event consumer).

        Observations are level-triggered: a newer instance state replaces one still queued,
        so a monitor busy with a long command does not pile up one per sweep."""
        if isinstance(event, InstanceObserved) and self._items:
            last, reply = self._items[-1]
            if reply is None and isinstance(last, InstanceObserved):
                self._items[-1] = (event, None)
                return
        self._items.append((event, None))
        self._wake()

    async def request(self, event: Event, *, settle: bool = False) -> Decision:
        """Queue a request; return once its decision is committed, or raise
        `InvalidTransition` if the run's phase does not allow it.

        With `settle`, return only after everything the event led to (effects and the
        decisions they caused) is committed: the queue consumer deletes a message then."""
        if self._finished:
            raise InvalidTransition(f"run {self.run_id} is {self.run.phase}: not watched now")
        reply: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._items.append((event, reply))
        self._settle[id(reply)] = settle
        self._wake()
        return await reply

    def subscribe(self) -> asyncio.Queue[FeedItem]:
        queue: asyncio.Queue[FeedItem] = asyncio.Queue(maxsize=1000)
        if self._subscribers is None:
            self._subscribers = set()
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[FeedItem]) -> None:
        if self._subscribers is not None:
            self._subscribers.discard(queue)

    # -- the loop -----------------------------------------------------------------------------

    async def run_forever(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                await self._handle(Armed(), None)
                while not self.run.phase.is_terminal:
                    event, reply = await self._next()
                    await self._handle(event, reply)
                self._cancel_background()
        except BaseExceptionGroup as group:
            # The loop's own error (or a background task's), not the group wrapping it: the
            # daemon records its type and message on the run.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            self._tasks = None
            self._finished = True
            for _, reply in self._items:
                if reply is not None and not reply.done():
                    reply.set_exception(InvalidTransition(f"run {self.run_id} is {self.run.phase}"))

    async def _next(self) -> tuple[Event, asyncio.Future[Decision] | None]:
        while True:
            if self._closing:
                await asyncio.Event().wait()  # until cancelled by the daemon's shutdown
            if self._wake_at is not None:
                remaining = (self._wake_at - self._deps.clock.now()).total_seconds()
                if remaining <= 0:
                    self._wake_at = None
                    return Tick(), None
            if self._items:
                return self._items.pop(0)
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            timer = None
            if self._wake_at is not None:
                timer = asyncio.get_running_loop().call_later(remaining, self._wake)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()

    async def _handle(self, event: Event, reply: asyncio.Future[Decision] | None) -> None:
        self.busy = True
        settle = self._settle.pop(id(reply), False) if reply is not None else False
        last: Decision | None = None
        try:
            pending: deque[Event] = deque([event])
            while pending:
                current = pending.popleft()
                try:
                    decision = step(
                        self.run,
                        current,
                        now=self._deps.clock.now(),
                        policy=self._deps.policy,
                        rng=self._deps.rng,
                    )
                except InvalidTransition as exc:
                    if reply is not None and current is event:
                        if not reply.done():  # its asker may have gone (cancelled)
                            reply.set_exception(exc)
                        return
                    self._log.info("event_ignored", kind=type(current).__name__, why=str(exc))
                    continue
                await self._commit(decision)
                last = decision
                if reply is not None and current is event and not settle and not reply.done():
                    reply.set_result(decision)
                for effect in decision.effects:
                    follow = await self._execute(effect)
                    if follow is not None:
                        pending.append(follow)
            if reply is not None and not reply.done() and last is not None:
                reply.set_result(last)
        except BaseException as exc:
            if reply is not None and not reply.done():
                reply.set_exception(exc)
            raise
        finally:
            self.busy = False
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _commit(self, decision: Decision) -> None:
        before = self.run
        leases = self._deps.leases
        lease = leases.fence(self.run_id) if leases is not None else None
        await self._deps.store.commit(before, decision, now=self._deps.clock.now(), lease=lease)
        self.run = decision.run
        self._deps.metrics.transitioned(before, decision)
        t = decision.transition
        if t is not None and t.to_phase not in _BACKGROUND_PHASES:
            self._cancel_background()
        if t is not None:
            self._log.info(
                "run_transitioned",
                from_phase=t.from_phase,
                to_phase=t.to_phase,
                reason=t.reason,
                outcome=decision.run.outcome,
            )
            self._publish(FeedTransition(decision.run.version, t))

    def _note(self, name: str, *, level: str = "info", **fields: Any) -> None:
        """A monitor event: logged, kept in the recent ring, streamed to `tail -f`.

        A debug event (a routine prefix check) goes to live `tail -f` followers only: kept in
        the ring it would push out what matters, and ten thousand rings of routine checks
        would cost hundreds of megabytes."""
        getattr(self._log, level)(name, **fields)
        routine = level == "debug"
        if routine and not self._subscribers:
            return
        note = MonitorNote(self._deps.clock.now(), self.run_id, name, fields)
        if not routine:
            if self._recent is None:
                self._recent = deque(maxlen=RECENT_EVENTS)
            self._recent.append(note)
        self._publish(note)

    def _publish(self, item: FeedItem) -> None:
        for queue in self._subscribers or ():
            if not queue.full():
                queue.put_nowait(item)

    # -- effects ------------------------------------------------------------------------------

    async def _execute(self, effect: Effect) -> Event | None:
        """The monitor's own two (its timer, a background command); the rest is the
        executor's."""
        if isinstance(effect, WakeAt):
            self._wake_at = effect.at
            return None
        if isinstance(effect, RunInstanceCommand) and effect.background:
            self._start_background(effect)
            return None
        return await self._deps.executor.execute(effect, self.run, self._note)

    def _start_background(self, effect: RunInstanceCommand) -> None:
        assert self._tasks is not None
        task = self._tasks.create_task(self._in_background(effect))
        self._background.append(task)
        task.add_done_callback(self._background.remove)

    async def _in_background(self, effect: RunInstanceCommand) -> None:
        command = effect.command
        early = command.option("mode") == "early"
        try:
            finished = await self._deps.executor.execute(effect, self.run, self._note)
        except asyncio.CancelledError:
            self._note("command_cancelled", kind=str(command.kind), early=early)
            raise
        except LeaseLost:  # not a failed command: the monitor stops (another replica owns it)
            raise
        except Exception as exc:  # it must not take the monitor down with it
            self._log.exception("background_command_failed")
            result = CommandResult(CommandStatus.FAILED, None, result={"ok": False,
                                   "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
            finished = CommandFinished(command.kind, result)
        assert isinstance(finished, CommandFinished)
        self.deliver(replace(finished, early=early))

    def _cancel_background(self) -> None:
        for task in list(self._background):
            task.cancel()
