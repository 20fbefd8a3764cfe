"""Duty leases: a fleet-wide duty (the zombie sweep) is done by the one replica that holds
its lease. Pure: the holder and the clock's reading are given.

A holder acts only while its lease has more than `margin` left, so a replica that was frozen
(a long pause, a partition) and wakes up after its lease ran out does not act, even before it
has read the database again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

LEADER = "leader"
"""The duty of the zombie sweep (and its terminations log, which the report reads)."""


@dataclass(frozen=True, slots=True)
class DutyLease:
    """Who holds the duty `name` until when; `epoch` counts its hand-overs."""

    name: str
    owner: str
    epoch: int
    lease_until: datetime

    def held_by(self, owner: str, *, now: datetime, margin: timedelta) -> bool:
        """Whether `owner` holds it, with more than `margin` left at `now`."""
        return self.owner == owner and now + margin < self.lease_until
