"""The notification sender (issue 15): a root task delivering the outbox's pending rows.

The rows are written by the store in the transaction of the transition (or zombie record)
they are about; this task only sends them, so a daemon killed between the commit and the
send delivers the row after its restart (or another replica does, after a failover). Which
rows a replica sends: those of the runs whose lease it holds, and, as the leader, the zombie
rows and the rows whose run's owner is gone (`RunStore.pending_outbox`).

Each round of a row is claimed first (`claim_outbox`, conditioned on the rounds so far), so two
replicas never send the same round. Within a round each target not yet done with is sent the
message with retries (`runtime.retry`); its result is recorded at once, so a target that got
the message is not sent it again after a restart. The window left is a daemon killed after a
receiver accepted and before the result was recorded: the receiver then gets the message a
second time, with the same idempotency key (`RUN_ID:SEQ`), to drop it by.

The sender is off the monitors' path: a receiver that hangs or keeps failing delays only its
own notifications, and shows in `supervisord status` and `/metrics`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog

from supervisor.core.errors import ExternalError
from supervisor.core.outbox import (
    DeliveryState,
    Message,
    NotifierStatus,
    OutboxRow,
    Target,
    TargetDelivery,
    TargetFigures,
    TargetResult,
    render,
    row_state,
    trial_message,
)
from supervisor.runtime.ports import Clock, NotificationSender, RunStore
from supervisor.runtime.retry import GaveUp, call_with_retries

log = structlog.get_logger("supervisor.notifier")

CONCURRENT_ROWS = 8
"""Rows delivered at once: one slow receiver does not hold up the others' messages."""


@dataclass(frozen=True, slots=True)
class NotifyPolicy:
    retries: int = 3
    """Retries of a failed send within a round (after the first try); then the target is
    recorded as failed for that row."""
    retry_base_s: float = 2.0
    poll_s: float = 2.0
    """How often pending rows are looked for (a commit does not wake the sender)."""
    public_url: str | None = None
    owner_gone_after_s: float = 30.0
    """A replica not heard from for this long is gone: the leader sends its runs' rows."""


class Notifier:
    def __init__(
        self,
        store: RunStore,
        sender: NotificationSender,
        clock: Clock,
        *,
        replica_id: str,
        leader: Callable[[], bool],
        policy: NotifyPolicy,
    ) -> None:
        self._store = store
        self._sender = sender
        self._clock = clock
        self._replica_id = replica_id
        self._leader = leader
        self.policy = policy
        self.sent: Counter[str] = Counter()
        """Messages accepted, by target digest (since this daemon started)."""
        self.failed: Counter[str] = Counter()
        """Rows given up on, by target digest."""
        self._last: dict[str, TargetResult] = {}
        self.pending = 0
        """Pending rows this replica found at its last look."""
        self._in_flight: set[str] = set()
        """Keys of the rows being delivered now (a look finds them still pending)."""
        self._slots = asyncio.Semaphore(CONCURRENT_ROWS)

    def __repr__(self) -> str:
        return (
            f"<Notifier targets={len(self.targets)} pending={self.pending} "
            f"sent={sum(self.sent.values())} failed={sum(self.failed.values())}>"
        )

    @property
    def targets(self) -> tuple[Target, ...]:
        return self._sender.targets

    async def run_forever(self) -> None:
        """Look for pending rows every `poll_s` and start a delivery of each one not already
        under way: a row whose receiver is slow or failing does not hold up the rows after it
        (at most `CONCURRENT_ROWS` deliveries at once)."""
        async with asyncio.TaskGroup() as group:
            while True:
                try:
                    await self._start_pending(group)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a database hiccup: the rows stay pending for the next look
                    log.exception("notifications_not_delivered")
                await asyncio.sleep(self.policy.poll_s)

    async def deliver_pending(self) -> int:
        """Deliver every pending row this replica is to send, and return once they are done
        with; how many rows were tried."""
        async with asyncio.TaskGroup() as group:  # left once every delivery started is done
            return await self._start_pending(group)

    async def _start_pending(self, group: asyncio.TaskGroup) -> int:
        now = self._clock.now()
        rows = await self._store.pending_outbox(
            self._replica_id,
            leader=self._leader(),
            alive_since=now - timedelta(seconds=self.policy.owner_gone_after_s),
        )
        self.pending = len(rows)
        started = 0
        for row in rows:
            if row.key in self._in_flight:
                continue
            self._in_flight.add(row.key)
            group.create_task(self._deliver_guarded(row))
            started += 1
        return started

    async def _deliver_guarded(self, row: OutboxRow) -> None:
        try:
            async with self._slots:
                await self.deliver(row)
        except asyncio.CancelledError:
            raise
        except Exception:  # the row stays pending: the next look tries it again
            log.exception("notification_round_failed", key=row.key)
        finally:
            self._in_flight.discard(row.key)

    async def deliver(self, row: OutboxRow) -> DeliveryState | None:
        """One delivery round of a row: each target not yet done with is sent the message
        (with retries); the results are recorded as they come. The row's state after the
        round; None if another replica took the round."""
        claimed = await self._store.claim_outbox(
            row.key, attempts=row.attempts, sender=self._replica_id, now=self._clock.now()
        )
        if not claimed:
            return None
        message = render(row.notice, public_url=self.policy.public_url)
        targets = self.targets
        results = {d.target: d for d in row.deliveries}
        last_error: str | None = row.last_error
        for target in targets:
            done = results.get(target.digest)
            if done is not None and done.state is not DeliveryState.PENDING:
                continue
            before = done.attempts if done is not None else 0
            result = await self._send(target, message, row_key=row.key)
            attempts = before + result.attempts
            if result.error is None:
                results[target.digest] = TargetDelivery(target.digest, DeliveryState.SENT, attempts)
            else:
                last_error = f"{target.shown}: {result.error}"
                results[target.digest] = TargetDelivery(
                    target.digest, DeliveryState.FAILED, attempts, result.error
                )
            state = row_state(results, targets)
            await self._store.record_outbox(
                row.key, results.values(), state=state, last_error=last_error,
                now=self._clock.now(),
            )  # fmt: skip
        state = row_state(results, targets)
        log.info("notification_delivered" if state is DeliveryState.SENT else
                 "notification_failed", key=row.key, events=",".join(row.notice.events),
                 state=str(state))  # fmt: skip
        return state

    async def _send(self, target: Target, message: Message, *, row_key: str) -> _Sent:
        def on_retry(error: ExternalError, attempt: int, wait_s: float) -> None:
            log.warning(
                "notification_retrying", key=row_key, target=target.shown, attempt=attempt,
                in_s=round(wait_s, 3), error=str(error)[:300],
            )  # fmt: skip

        try:
            _, attempts = await call_with_retries(
                lambda: self._sender.send(target, message),
                base_s=self.policy.retry_base_s,
                retries=self.policy.retries,
                on_retry=on_retry,
            )
        except GaveUp as gave_up:
            error = f"{gave_up.error.code}: {gave_up.error.message}"[:300]
            self.failed[target.digest] += 1
            self._last[target.digest] = TargetResult(target, False, error, self._clock.now())
            log.warning("notification_gave_up", key=row_key, target=target.shown,
                        attempts=gave_up.attempts, error=error)  # fmt: skip
            return _Sent(gave_up.attempts, error)
        self.sent[target.digest] += 1
        self._last[target.digest] = TargetResult(target, True, None, self._clock.now())
        return _Sent(attempts, None)

    async def test_all(self) -> list[TargetResult]:
        """`supervisorctl notify-test`: a test message to every target, one try each (no
        outbox row: nothing to deliver later); each target's result."""
        message = trial_message(
            at=self._clock.now(), replica_id=self._replica_id, public_url=self.policy.public_url
        )

        async def one(target: Target) -> TargetResult:
            try:
                await self._sender.send(target, message)
            except ExternalError as error:
                why = f"{error.code}: {error.message}"[:300]
                return TargetResult(target, False, why, self._clock.now())
            return TargetResult(target, True, None, self._clock.now())

        return list(await asyncio.gather(*(one(t) for t in self.targets)))

    async def status(self) -> NotifierStatus:
        """Each target's figures: since the start, and from the database (the rows still to
        send it, the rows given up on for it), and the outbox's rows by state."""
        pending = await self._store.outbox_rows(state=DeliveryState.PENDING)
        failed = await self._store.outbox_rows(state=DeliveryState.FAILED)

        def count(rows: list[OutboxRow], target: Target, *states: DeliveryState | None) -> int:
            done = (row.delivery(target) for row in rows)
            return sum(1 for d in done if (d.state if d is not None else None) in states)

        figures = tuple(
            TargetFigures(
                target,
                self.sent[target.digest],
                self.failed[target.digest],
                self._last.get(target.digest, TargetResult(target, None)),
                pending=count(pending, target, None, DeliveryState.PENDING),
                failed_rows=count(failed, target, DeliveryState.FAILED),
            )
            for target in self.targets
        )
        return NotifierStatus(figures, await self._store.outbox_counts())


@dataclass(frozen=True, slots=True)
class _Sent:
    attempts: int
    error: str | None
