"""When training ends, estimated from the job's heartbeats, and the check schedule around it.

Pure: the samples (step, total steps, the job's time) and `now` in, an estimate or a wait out.
A job whose heartbeat says `total_steps` is checked sparsely while its end is far and every
`initial_s` from shortly before the estimated end; a job without progress keeps the backoff
(core/backoff.py).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from supervisor.core.backoff import BackoffPolicy

MAX_SAMPLES = 8
"""Samples kept: enough to smooth the rate, few enough that an old rate soon stops counting."""
STALL_INTERVALS = 3.0
"""Silence longer than this many typical heartbeat intervals counts as a stretch without
progress: the rate falls and the estimate moves out while the job says nothing."""
END_MARGIN = 0.1
"""Tight checks start this share of the remaining time (plus one interval) before the end:
the estimate is only as good as the rate, and it is refined at every check."""


@dataclass(frozen=True, slots=True)
class ProgressSample:
    """One heartbeat's progress: the step, the step training ends at (if said), and when."""

    step: int
    total_steps: int | None
    at: datetime


@dataclass(frozen=True, slots=True)
class Progress:
    """This attempt's progress samples, oldest first (at most MAX_SAMPLES)."""

    samples: tuple[ProgressSample, ...] = ()

    def add(self, sample: ProgressSample) -> Progress:
        """With `sample`: a lower step than the last means the job restarted (from a
        checkpoint): the rate before it says nothing of the rate after, so it starts again.
        A sample not newer than the last (the same heartbeat read again) changes nothing."""
        if not self.samples:
            return Progress((sample,))
        last = self.samples[-1]
        if sample.step < last.step:
            return Progress((sample,))
        if sample.at <= last.at:
            return self
        return Progress((*self.samples, sample)[-MAX_SAMPLES:])


@dataclass(frozen=True, slots=True)
class Estimate:
    """When training is estimated to end, and the rate the estimate rests on."""

    ends_at: datetime
    steps_per_s: float
    remaining_steps: int


def estimate_end(progress: Progress, now: datetime) -> Estimate | None:
    """When training ends at the recent step rate; None without a total, with fewer than two
    samples, or without progress at all.

    Each interval between samples gives a rate; later intervals weigh twice the one before,
    so a changed pace shows within a few heartbeats. A silence since the last sample longer
    than STALL_INTERVALS typical intervals counts as an interval without progress, and the
    remaining steps are counted from `now`: the estimate moves out while the job is stalled."""
    samples = progress.samples
    if len(samples) < 2:
        return None
    last = samples[-1]
    if last.total_steps is None:
        return None
    remaining = max(0, last.total_steps - last.step)
    intervals = [
        (b.step - a.step, (b.at - a.at).total_seconds()) for a, b in itertools.pairwise(samples)
    ]
    typical_s = sum(seconds for _, seconds in intervals) / len(intervals)
    silence_s = (now - last.at).total_seconds()
    stalled = silence_s > STALL_INTERVALS * typical_s
    if stalled:
        intervals.append((0, silence_s))
    weighted_rate = total_weight = 0.0
    for weight, (steps, seconds) in enumerate(intervals, start=1):
        weighted_rate += 2.0**weight * steps / seconds
        total_weight += 2.0**weight
    rate = weighted_rate / total_weight
    if rate <= 0:
        return None
    # Stalled, the remaining steps are still all to do from now on.
    since = now if stalled else last.at
    return Estimate(since + timedelta(seconds=remaining / rate), rate, remaining)


def wait_before_check(ends_at: datetime, now: datetime, policy: BackoffPolicy) -> float:
    """Seconds to the next check (un-jittered) of a job whose end is estimated at `ends_at`:
    up to `max_s` while the end is far, `initial_s` from shortly before it on (and after it,
    until the run completes)."""
    to_end_s = (ends_at - now).total_seconds()
    to_tight_s = to_end_s * (1.0 - END_MARGIN) - policy.initial_s
    if to_tight_s <= policy.initial_s:
        return policy.initial_s
    return min(to_tight_s, policy.max_s)


def jittered(wait_s: float, policy: BackoffPolicy, rng: random.Random) -> float:
    """`wait_s` ± the policy's jitter, as the backoff spreads its delays."""
    return wait_s * (1.0 + policy.jitter * (2.0 * rng.random() - 1.0))
