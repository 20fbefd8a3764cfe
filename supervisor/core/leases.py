"""Per-run leases among replicas, as values and pure rules (issue 14).

Each non-terminal run is owned by one replica at a time: a lease names its owner, its epoch
(the fencing token: +1 at each claim, every write of the owner's monitor is conditioned on
it) and its expiry. Here are the values the store returns and the rules the lease keeper
(`supervisor.runtime.leases`) follows: when a lease may still be acted under, which replicas
count as alive, and how many runs a replica should hold (its fair share).

Pure: no clock read (`now` is passed in), no I/O.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from supervisor.core.records import RunRecord


@dataclass(frozen=True, slots=True)
class Lease:
    """One run's lease as its owner holds it."""

    owner: str
    epoch: int
    until: datetime

    def left_s(self, now: datetime) -> float:
        """Seconds until it expires (negative once it has)."""
        return (self.until - now).total_seconds()


@dataclass(frozen=True, slots=True)
class LeasedRun:
    """A run just claimed: its stored row (to arm its monitor from, with no AWS call) and its
    lease."""

    record: RunRecord
    lease: Lease


class ReplicaState(enum.StrEnum):
    RUNNING = "running"
    STOPPING = "stopping"
    """Handing its runs back before it exits."""
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Replica:
    """One replica's heartbeat row."""

    replica_id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    state: ReplicaState
    lease_ttl_s: float

    def alive(self, now: datetime) -> bool:
        """Running and heard from within its lease TTL: it renews its leases (and its
        heartbeat) well before that."""
        return self.state is ReplicaState.RUNNING and now < self.heartbeat_at + timedelta(
            seconds=self.lease_ttl_s
        )


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """A replica as `supervisord status` lists it: its row and how many runs it owns now
    (leases not expired)."""

    replica: Replica
    runs_owned: int


def fair_share(active_runs: int, live_replicas: int) -> int:
    """How many of the active runs each live replica should own: ceil(runs / replicas), so
    the shares cover every run. At least one replica is counted (the one asking)."""
    return math.ceil(active_runs / max(1, live_replicas))


def surplus(owned: int, share: int) -> int:
    """How many runs a replica well above its fair share hands back: down to the share, but
    only once it is over by more than a tenth (and at least two), so that shares that differ by
    one run as runs come and go move nothing."""
    slack = max(2, share // 10)
    return owned - share if owned > share + slack else 0
