"""When training ends, estimated from the job's heartbeats, and the check schedule around it.

Pure: the samples (step, total steps, the job's time) and `now` in, an estimate or a wait out.
A job whose heartbeat says `total_steps` is checked sparsely while its end is far and every
`initial_s` from shortly before the estimated end; a job without an estimate (no progress, or
no total) backs off as core/backoff.py says, to a tighter cap (`without_eta`): it may end, or
crash, at any moment, and only the check rate bounds how long that goes unseen.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from supervisor.core.backoff import BackoffPolicy, base_delay

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


# -- runs without an estimate ---------------------------------------------------------------

POLL_MAX_WITHOUT_ETA_S = 100.0
"""The default cap of the checks of a run without an estimate. A job's end (or crash) at a
random moment is found, at the median, half a check interval later: checks at most 100 s
apart find it within about 50 s (the goal: 60 s, with room for the listing, the read of the
failure marker and the stop call), at 36 listings an hour where the 300 s cap made 12."""


def without_eta(poll: BackoffPolicy, cap_s: float | None) -> BackoffPolicy:
    """The backoff of a run whose end cannot be estimated: `poll`, its cap lowered to `cap_s`
    (never below `initial_s`); `cap_s` None (with an events queue: S3 notifications find the
    end) leaves `poll` as it is."""
    if cap_s is None or cap_s >= poll.max_s:
        return poll
    return replace(poll, max_s=max(poll.initial_s, cap_s))


def next_check_wait(
    estimate: Estimate | None,
    checks: int,
    now: datetime,
    poll: BackoffPolicy,
    cap_without_eta_s: float | None,
) -> float:
    """Seconds to the next check (un-jittered) of a run that has made `checks` checks: around
    its estimated end when there is one (`wait_before_check`), else the backoff capped for a
    run without an estimate (`without_eta`)."""
    if estimate is None:
        return base_delay(checks, without_eta(poll, cap_without_eta_s))
    return wait_before_check(estimate.ends_at, now, poll)
