"""Backoff schedules: the poll interval of a completion check.

Pure: the random source is passed in, so a seeded `random.Random` makes schedules repeatable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Start at `initial_s`, multiply by `multiplier` each attempt, never above `max_s`.

    `jitter` spreads each delay uniformly over ±jitter of itself, so ten thousand runs attached
    together do not poll in lock-step.
    """

    initial_s: float = 30.0
    max_s: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.max_s < self.initial_s:
            raise ValueError(f"need 0 <= initial_s <= max_s, got {self.initial_s}, {self.max_s}")
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"need multiplier >= 1 and 0 <= jitter < 1, got {self}")


def base_delay(attempt: int, policy: BackoffPolicy) -> float:
    """The un-jittered delay before check number `attempt + 1` (attempt counts from 0)."""
    # Cap the exponent: 2**64 * 30 s is already far past any max_s.
    return min(policy.initial_s * policy.multiplier ** min(attempt, 64), policy.max_s)


def checks_made(elapsed_s: float, policy: BackoffPolicy) -> int:
    """How many checks the un-jittered schedule has made `elapsed_s` after it started: where a
    restart picks the schedule up again, so a run watched for hours is not checked as if new."""
    made, total = 0, 0.0
    while made < 64:
        wait = base_delay(made, policy)
        if wait >= policy.max_s or wait <= 0:  # at the cap (or no wait): plain division
            return made + (int((elapsed_s - total) // wait) if wait > 0 else 0)
        if total + wait > elapsed_s:
            return made
        total += wait
        made += 1
    return made


def delay(attempt: int, policy: BackoffPolicy, rng: random.Random) -> float:
    """The jittered delay before the next check: base_delay(attempt) ± jitter."""
    base = base_delay(attempt, policy)
    return base * (1.0 + policy.jitter * (2.0 * rng.random() - 1.0))
