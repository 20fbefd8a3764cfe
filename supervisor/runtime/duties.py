"""Fleet-wide duties under a lease: the zombie sweep runs on the one replica that holds the
duty lease `leader` (`supervisor.core.duties`), so no instance is acted on by two replicas.

`DutyKeeper` takes the lease when it is free or expired and renews it every third of its TTL
(a root task); `holds()` answers from the last renewal and the injected clock, so a replica
that was frozen past its lease's end refuses to act before it has even read the database.
With SQLite the single daemon takes the lease over at start (its state-directory lock proves
nobody else is alive), so a restart sweeps at once as before, and holds it until it stops
with no renewal (no periodic write), as it holds its runs' leases.

The duty's writes are fenced by the lease as a monitor's are by its run's: `held()` gives the
lease to write under, and the store refuses the write (`DutyLost`) once another replica took
the duty over (its epoch moved on), whatever this replica's clock says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import structlog

from supervisor.core.duties import DutyLease
from supervisor.runtime.leases import UNTIL_RELEASED
from supervisor.runtime.ports import Clock, RunStore

log = structlog.get_logger("supervisor.duties")


class DutyKeeper:
    def __init__(
        self,
        store: RunStore,
        clock: Clock,
        *,
        name: str,
        replica_id: str,
        ttl_s: float,
        take_over_at_start: bool = False,
        on_acquired: Callable[[], object] = lambda: None,
    ) -> None:
        """`take_over_at_start`: this is the sole daemon on its database (SQLite behind the
        state-directory lock): it takes the duty over at start and holds it until it stops.
        `on_acquired`: called each time this replica comes to hold the duty (work done once
        per holder, such as the crash-report pass)."""
        self._on_acquired = on_acquired
        self._store = store
        self._clock = clock
        self.name = name
        self.replica_id = replica_id
        self._ttl = timedelta(seconds=ttl_s)
        self._margin = self._ttl / 3
        """A holder acts only with more than this left: a renewal every third of the TTL
        keeps two thirds, and one missed renewal still leaves room for clock skew."""
        self._take_over = take_over_at_start
        self._sole = take_over_at_start
        self.lease: DutyLease | None = None
        """The lease as last read (this replica's or another's)."""

    def __repr__(self) -> str:
        holder = self.lease.owner if self.lease is not None else None
        return f"<DutyKeeper {self.name} holder={holder} mine={self.holds()}>"

    def holds(self) -> bool:
        """Whether this replica holds the duty now, with margin to act."""
        return self.lease is not None and self.lease.held_by(
            self.replica_id, now=self._clock.now(), margin=self._margin
        )

    def held(self) -> DutyLease | None:
        """The lease to write the duty's work under, if this replica holds it now (with
        margin to act); else None: do nothing."""
        return self.lease if self.holds() else None

    async def renew(self) -> bool:
        """Take or renew the lease once; returns whether this replica holds it."""
        had = self.holds()
        now = self._clock.now()
        until = UNTIL_RELEASED if self._sole else now + self._ttl
        self.lease = await self._store.hold_duty(
            self.name, self.replica_id, now=now, until=until, take_over=self._take_over
        )
        self._take_over = False
        holds = self.holds()
        if holds != had:
            event = "duty_acquired" if holds else "duty_lost"
            log.info(event, duty=self.name, replica=self.replica_id, holder=self.lease.owner,
                     epoch=self.lease.epoch)  # fmt: skip
            if holds:
                self._on_acquired()
        return holds

    async def run_forever(self) -> None:
        while True:
            if not (self._sole and self.holds()):  # the sole daemon's lease needs no renewal
                await self.renew()
            await asyncio.sleep(self._ttl.total_seconds() / 3)

    async def release(self) -> None:
        """Give the duty up (the daemon is stopping): another replica takes it at once."""
        if self.lease is not None and self.lease.owner == self.replica_id:
            await self._store.release_duty(self.name, self.replica_id, now=self._clock.now())
            self.lease = None
            log.info("duty_released", duty=self.name, replica=self.replica_id)
