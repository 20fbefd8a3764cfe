"""Per-run leases among replicas (issue 14): the book of leases this replica holds, and the
lease keeper, a root task that renews them, drops the monitors of runs it lost, claims its
fair share of the rest and hands runs back.

The book is what fences a monitor: its writes go to the store under the run's lease (owner and
epoch, checked in the same transaction), and the executor asks the book before any AWS call
(`LeaseBook.check`): a run whose lease is gone, or expired by this replica's clock (a
replica that wakes from SIGSTOP finds its leases past their time), or too near its expiry for
an action on an instance to start (less than `margin_s` left), raises `LeaseLost`, and the
monitor stops with no call made. The intent of every action is committed (fenced) before
it, so the run's next owner re-drives it describe-first, as a restart does.

With SQLite (one daemon, its state-directory lock) the same code runs with one replica that is
`exclusive`: at start it takes over every lease, since the lock proves nobody else is alive,
and no other replica can take one from it, so its clock never expires them.

A replica cut off from the database (issue 14, deliberately): once no renewal has succeeded
for a whole TTL, every lease it held may be another replica's. The keeper then drops every
monitor and lease, logs `database_lost` and ends the daemon (`DatabaseLost`: exit status 1,
without handing back leases it can no longer write), so that its service manager starts it
again; a start refuses until the database answers, then claims its share afresh. Until that
TTL is out nothing changes: the store retries, and a monitor's action is refused by
`LeaseBook.check` as its lease runs short.

Not here: routing a command to another replica's run, SQS handoff, the leader lease.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import structlog

from supervisor.core.errors import LeaseLost
from supervisor.core.inbox import RELEASED_CHANNEL
from supervisor.core.leases import (
    Lease,
    LeasedRun,
    Replica,
    ReplicaState,
    ReplicaStatus,
    fair_share,
    surplus,
)
from supervisor.core.run import Phase, Run
from supervisor.runtime.ports import Clock, Notices, PollingNotices, RunStore
from supervisor.runtime.root_tasks import RootTaskFailed

log = structlog.get_logger("supervisor.leases")

CLAIM_BATCH = 500
"""Runs claimed per statement: a take-over of ten thousand runs arms them page by page."""
UNTIL_RELEASED = datetime(9999, 1, 1, tzinfo=UTC)
"""The expiry an exclusive replica's leases are written with: nobody else can claim them,
so they are never renewed (no write to a run's row for its lease while it is watched), and
the next daemon on the file releases them at its start."""


class DatabaseLost(RootTaskFailed):
    """No lease renewal reached the database for a whole TTL: this replica holds nothing any
    more and exits, for its service manager to start it again (exit status 1)."""


def default_replica_id() -> str:
    """`<hostname>-<pid>`: unique among processes on one database unless set otherwise."""
    return f"{socket.gethostname()}-{os.getpid()}"


class LeaseBook:
    """The leases this replica holds, by run id."""

    def __init__(self, owner: str, ttl_s: float, clock: Clock, *, exclusive: bool) -> None:
        self.owner = owner
        self.ttl = timedelta(seconds=ttl_s)
        self.margin_s = ttl_s / 3
        """An action on an instance starts only with this much of its lease left: a claim
        interval, so one missed renewal stops actions before anybody may claim the run."""
        self.exclusive = exclusive
        self._clock = clock
        self._held: dict[str, Lease] = {}

    def __repr__(self) -> str:
        return f"<LeaseBook {self.owner} held={len(self._held)} exclusive={self.exclusive}>"

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._held

    def items(self) -> list[tuple[str, Lease]]:
        return list(self._held.items())

    def held(self, run_id: str) -> Lease | None:
        return self._held.get(run_id)

    def until(self, now: datetime) -> datetime:
        """The expiry of a lease taken or renewed at `now`."""
        return UNTIL_RELEASED if self.exclusive else now + self.ttl

    def new_lease(self, epoch: int = 1) -> Lease:
        """A lease of this replica from now (a new run's first)."""
        return Lease(self.owner, epoch, self.until(self._clock.now()))

    def put(self, run_id: str, lease: Lease) -> None:
        self._held[run_id] = lease

    def drop(self, run_id: str) -> Lease | None:
        return self._held.pop(run_id, None)

    def fence(self, run_id: str) -> Lease:
        """The lease a write for `run_id` goes under; `LeaseLost` if none is held."""
        lease = self._held.get(run_id)
        if lease is None:
            raise LeaseLost(f"run {run_id}: replica {self.owner} holds no lease on it")
        return lease

    def check(self, run_id: str, *, acting: bool) -> Lease:
        """Before an AWS call for `run_id`: the lease, if it is held and (unless exclusive)
        not expired by this replica's clock, with `margin_s` left for an action on an
        instance (`acting`). Otherwise `LeaseLost`: the call must not be made."""
        lease = self.fence(run_id)
        if self.exclusive:
            return lease
        left = lease.left_s(self._clock.now())
        needed = self.margin_s if acting else 0.0
        if left <= 0:
            raise LeaseLost(
                f"run {run_id}: the lease of replica {self.owner} expired", why="expired"
            )
        if left <= needed:
            raise LeaseLost(
                f"run {run_id}: the lease of replica {self.owner} has {left:.1f} s left, under "
                f"the {needed:.1f} s margin an action needs",
                why="expiring",
            )
        return lease

    def live(self, run_id: str) -> bool:
        """Held and, unless exclusive, not expired by this replica's clock."""
        lease = self._held.get(run_id)
        return lease is not None and (self.exclusive or lease.left_s(self._clock.now()) > 0)

    def renewed(self, held: dict[str, int], until: datetime) -> list[str]:
        """Apply a renewal (the runs still held, with their epochs): extend those leases and
        forget the others. Returns the run ids lost."""
        lost = []
        for run_id, lease in list(self._held.items()):
            if held.get(run_id) == lease.epoch:
                self._held[run_id] = Lease(lease.owner, lease.epoch, until)
            else:
                del self._held[run_id]
                lost.append(run_id)
        return lost


@dataclass(slots=True)
class LeaseCounts:
    """What the keeper did since start (`/metrics`)."""

    claims: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    """Leases lost, by why: `renewal` (another replica holds it), or a monitor's `LeaseLost`
    why: `fence` (a write found it gone), `expired`, `expiring` (too little left to act)."""
    released: int = 0

    def lose(self, why: str) -> None:
        self.lost[why] = self.lost.get(why, 0) + 1


class LeaseKeeper:
    """The root task that keeps this replica's leases (one per daemon).

    `arm(run, lease)` starts a monitor for a claimed run; `disarm(run_id)` stops one whose
    lease is gone (no write, no AWS call); `idle_runs()` lists the run ids whose monitors
    are between events (the ones a replica above its fair share may hand back)."""

    def __init__(
        self,
        store: RunStore,
        book: LeaseBook,
        clock: Clock,
        *,
        arm: Callable[[Run, Lease], object],
        disarm: Callable[[str], None],
        idle_runs: Callable[[], Iterable[str]],
        host: str | None = None,
        pid: int | None = None,
        on_cut_off: Callable[[DatabaseLost], None] = lambda _: None,
        notices: Notices | None = None,
    ) -> None:
        """`on_cut_off`: called once no renewal has succeeded for a TTL (see the module).
        `notices`: wake-ups between replicas; a round starts early when another replica
        hands runs back (PostgreSQL's NOTIFY), so a clean stop's runs are claimed at once."""
        self._on_cut_off = on_cut_off
        self._notices: Notices = notices or PollingNotices()
        self._store = store
        self.book = book
        self._clock = clock
        self._arm = arm
        self._disarm = disarm
        self._idle_runs = idle_runs
        self.counts = LeaseCounts()
        self.interval_s = book.ttl.total_seconds() / 3
        """Renew and claim every third of the TTL: two renewals may fail before a lease
        expires."""
        self._to_release: dict[str, int] = {}
        self.busy = asyncio.Lock()
        """Held by each round and each claim of one run (`adopt`): a renewal's answer,
        read before a claim committed, must not be applied after it (it would drop the
        run just claimed as lost)."""
        """Runs to hand back at the next tick (their monitors stopped here), with epochs."""
        self._renewed_at = clock.now()
        """When the last renewal succeeded (or the start): a TTL after it, every lease held
        may be another's."""
        self._deadline: asyncio.Timeout | None = None
        """The running round's time limit (`run_forever`)."""
        self.replica = Replica(
            replica_id=book.owner,
            host=host or socket.gethostname(),
            pid=pid if pid is not None else os.getpid(),
            started_at=clock.now(),
            heartbeat_at=clock.now(),
            state=ReplicaState.RUNNING,
            lease_ttl_s=book.ttl.total_seconds(),
        )

    def __repr__(self) -> str:
        return f"<LeaseKeeper {self.book!r} claims={self.counts.claims} lost={self.counts.lost}>"

    @property
    def owner(self) -> str:
        return self.book.owner

    # -- start and stop -------------------------------------------------------------------------

    async def start(self) -> int:
        """At the daemon's start: the heartbeat row; any lease this replica id held in an
        earlier life handed back (exclusive: every lease); then the first claim (exclusive:
        every active run). Returns how many runs were armed."""
        await self._heartbeat()
        self._renewed_at = self._clock.now()
        if self.book.exclusive:
            await self._store.release_every_lease()
        else:
            earlier = await self._store.renew_leases(self.owner, until=self._clock.now())
            # Its own runs of an earlier life, which it claims again at once: nobody to wake.
            await self._store.release_runs(self.owner, earlier.items(), notify=False)
        return await self._claim(None if self.book.exclusive else await self._share())

    async def hand_back(self) -> int:
        """At a clean shutdown (monitors stopped): every run held is handed back, to be
        claimed by the other replicas at once rather than after the TTL."""
        await self._heartbeat(ReplicaState.STOPPING)
        released = await self._store.release_runs(
            self.owner,
            [*((r, lease.epoch) for r, lease in self.book.items()), *self._to_release.items()],
        )
        self.counts.released += released
        for run_id, _ in self.book.items():
            self.book.drop(run_id)
        self._to_release.clear()
        await self._heartbeat(ReplicaState.STOPPED)
        log.info("leases_handed_back", replica=self.owner, runs=released)
        return released

    # -- the loop -----------------------------------------------------------------------------

    async def run_forever(self) -> None:
        while True:
            await self._notices.wait(RELEASED_CHANNEL, self.interval_s)
            if self.book.exclusive:  # its leases never expire: nobody else could take them
                await self.tick()
                continue
            try:
                # A round stuck on an unreachable database (the store retries) ends when
                # the leases would have; but each round gets a claim interval at least: a
                # replica that wakes from a freeze past its TTL must try (and drop the leases
                # it lost), not take its own pause for a lost database.
                async with asyncio.timeout(None) as self._deadline:
                    self._push_deadline()
                    try:
                        await self.tick()
                    finally:
                        self._deadline = None  # `tick` alone (tests) pushes nothing
            except Exception as exc:  # TimeoutError, or the store's own error
                if self._left_s() > 0:
                    raise  # restarted as a root task: the next round may renew in time
                # The database failed this round (or did not answer within it), a TTL or more
                # since the last renewal.
                self.cut_off(exc)
                await asyncio.Event().wait()  # the daemon is ending: until it cancels this

    def _push_deadline(self) -> None:
        """Move the running round's deadline to a TTL after the last renewal (a round that
        has renewed may take its time over the claims that follow)."""
        if self._deadline is not None:
            loop = asyncio.get_running_loop()
            least = self.book.ttl.total_seconds() / 3  # a claim interval
            self._deadline.reschedule(loop.time() + max(least, self._left_s()))

    def _left_s(self) -> float:
        """Seconds until a TTL has passed since the last successful renewal."""
        return (self._renewed_at + self.book.ttl - self._clock.now()).total_seconds()

    def cut_off(self, exc: BaseException | None = None) -> DatabaseLost:
        """No renewal for a TTL: drop every monitor and lease (no further write or AWS call)
        and end the daemon through `on_cut_off`."""
        silent_s = (self._clock.now() - self._renewed_at).total_seconds()
        dropped = [run_id for run_id, _ in self.book.items()]
        for run_id in dropped:
            self.book.drop(run_id)
            self._disarm(run_id)
            self.counts.lose("cut-off")
        self._to_release.clear()
        if exc is None or isinstance(exc, TimeoutError):
            error = "no answer from the database"
        else:
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        lost = DatabaseLost(
            f"replica {self.owner} could not renew its leases for {silent_s:.0f} s (lease TTL "
            f"{self.book.ttl.total_seconds():g} s; last error: {error}): its runs may be "
            "another replica's now; supervisord exits so that its service manager starts it "
            "again once the database answers"
        )
        log.error(
            "database_lost", replica=self.owner, silent_s=round(silent_s, 1),
            ttl_s=self.book.ttl.total_seconds(), monitors_dropped=len(dropped), error=error,
        )  # fmt: skip
        self._on_cut_off(lost)
        return lost

    async def tick(self) -> None:
        """One round: renew (one statement), drop what was lost, heartbeat, hand back what
        stopped here, then claim towards the fair share or hand back a surplus."""
        async with self.busy:
            await self._round()

    async def _round(self) -> None:
        if not self.book.exclusive:
            await self._renew()
            self._renewed_at = self._clock.now()
            self._push_deadline()
        await self._heartbeat()
        if self._to_release:
            pending, self._to_release = self._to_release, {}
            self.counts.released += await self._store.release_runs(self.owner, pending.items())
        share = None if self.book.exclusive else await self._share()
        if share is not None:
            extra = surplus(len(self.book), share)
            if extra:
                await self._release_idle(extra)
                return
        await self._claim(share)

    async def _renew(self) -> None:
        now = self._clock.now()
        until = self.book.until(now)
        held = await self._store.renew_leases(self.owner, until=until)
        for run_id in self.book.renewed(held, until):
            self.counts.lose("renewal")
            log.warning("lease_lost", run_id=run_id, replica=self.owner, why="renewal")
            self._disarm(run_id)
        # Held in the database but armed nowhere here (a monitor stopped for its lease, a run
        # resumed elsewhere): hand it back so that a claim re-arms it.
        for run_id, epoch in held.items():
            if run_id not in self.book:
                self._to_release.setdefault(run_id, epoch)

    def stopped(self, run_id: str, *, lost: str | None = None) -> None:
        """A monitor stopped: its run finished (`lost` None), or its lease was found gone or
        expiring (`lost`: why). Its lease is handed back at the next tick (exclusive: kept,
        nobody else could use it, and a resume here takes it again)."""
        lease = self.book.drop(run_id)
        if lost is not None:
            self.counts.lose(lost)
            log.warning("lease_lost", run_id=run_id, replica=self.owner, why=lost)
        if lease is not None and not self.book.exclusive:
            self._to_release[run_id] = lease.epoch

    async def adopt(self, run_id: str) -> Lease | None:
        """Claim one run now (just resumed here), if nobody else holds it."""
        async with self.busy:
            return await self._adopt(run_id)

    async def _adopt(self, run_id: str) -> Lease | None:
        now = self._clock.now()
        self._to_release.pop(run_id, None)
        claimed = await self._store.claim_runs(
            self.owner, limit=1, now=now, until=self.book.until(now), only=run_id
        )
        for leased in claimed:
            self.counts.claims += 1
            self.book.put(run_id, leased.lease)
            return leased.lease
        return None

    # -- parts --------------------------------------------------------------------------------

    async def _share(self) -> int:
        """This replica's fair share of the active runs among the live replicas."""
        statuses: list[ReplicaStatus] = await self._store.replicas()
        now = self._clock.now()
        live = sum(
            1 for s in statuses if s.replica.alive(now) or s.replica.replica_id == self.owner
        )
        counts = await self._store.runs_by_phase_and_outcome()
        active = sum(n for (phase, _), n in counts.items() if not _terminal(phase))
        return fair_share(active, live)

    async def _claim(self, share: int | None) -> int:
        """Claim towards `share` (None: every claimable run), a batch at a time, arming each
        claimed run's monitor from its row."""
        armed = 0
        while True:
            want = CLAIM_BATCH if share is None else min(CLAIM_BATCH, share - len(self.book))
            if want <= 0:
                return armed
            now = self._clock.now()
            claimed = await self._store.claim_runs(
                self.owner, limit=want, now=now, until=self.book.until(now)
            )
            self._arm_all(claimed)
            armed += len(claimed)
            if len(claimed) < want:
                return armed

    def _arm_all(self, claimed: list[LeasedRun]) -> None:
        for leased in claimed:
            run = leased.record.run
            self.counts.claims += 1
            self.book.put(run.spec.run_id, leased.lease)
            self._arm(run, leased.lease)
        if claimed:
            log.info("runs_claimed", replica=self.owner, runs=len(claimed), owned=len(self.book))

    async def _release_idle(self, count: int) -> None:
        """Hand back up to `count` runs whose monitors are between events (gracefully: the
        monitor stops first, then the lease goes)."""
        chosen = [run_id for run_id in self._idle_runs() if run_id in self.book][:count]
        released = []
        for run_id in chosen:
            self._disarm(run_id)
            lease = self.book.drop(run_id)
            if lease is not None:
                released.append((run_id, lease.epoch))
        self.counts.released += await self._store.release_runs(self.owner, released)
        log.info("runs_handed_back", replica=self.owner, runs=len(released), owned=len(self.book))

    async def _heartbeat(self, state: ReplicaState = ReplicaState.RUNNING) -> None:
        self.replica = replace(self.replica, heartbeat_at=self._clock.now(), state=state)
        await self._store.record_replica(self.replica)


def _terminal(phase: str) -> bool:
    return Phase(phase).is_terminal
