"""Idle detection from utilisation: the pure rule that judges an instance's CloudWatch
datapoints, and the metrics it reads.

A run with `idle_below` and `idle_for_s` is idle when every datapoint over the last
`idle_for_s` is below the level **and** the datapoints cover that window. Missing data (basic
monitoring's delay, an agent not installed, a gap) is never idleness: it is reported as "no
datapoints", so a run is never stopped because CloudWatch said nothing.

No I/O and no clock reads here: `now` is passed in; the runtime's sweep fetches the datapoints
(`runtime.idle`) and the transition table decides what a verdict does (`core.machine`).
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta


class IdleMetric(enum.StrEnum):
    """Which utilisation a run is judged by."""

    CPU = "cpu"  # AWS/EC2 CPUUtilization: every instance has it, no agent
    GPU = "gpu"  # CWAgent nvidia_smi_utilization_gpu: needs the CloudWatch agent (deploy/)


@dataclass(frozen=True, slots=True)
class MetricSource:
    """Where CloudWatch keeps a metric, and the period its datapoints come at."""

    namespace: str
    name: str
    period_s: int


METRIC_SOURCES: dict[IdleMetric, MetricSource] = {
    # Basic monitoring publishes every 5 minutes; detailed monitoring's 1-minute points are
    # averaged into the same 5-minute periods, which is all idleness needs.
    IdleMetric.CPU: MetricSource("AWS/EC2", "CPUUtilization", 300),
    # The agent configuration in deploy/cloudwatch-agent.json collects every 60 s.
    IdleMetric.GPU: MetricSource("CWAgent", "nvidia_smi_utilization_gpu", 60),
}

MIN_IDLE_FOR_S = 600.0
"""The shortest `idle_for_s`: two of CPUUtilization's 5-minute periods, so one low datapoint
never makes a run idle."""


@dataclass(frozen=True, slots=True)
class Datapoint:
    """One CloudWatch datapoint: the start of its period and its value (percent)."""

    at: datetime
    value: float


class IdleVerdict(enum.StrEnum):
    IDLE = "idle"  # every datapoint over the window below the level, the window covered
    BUSY = "busy"  # a datapoint at or above the level
    NO_DATAPOINTS = "no datapoints"  # none, or not enough to cover the window: not idle


@dataclass(frozen=True, slots=True)
class Utilisation:
    """What the datapoints say about one run's instance over its window."""

    verdict: IdleVerdict
    metric: IdleMetric
    below: float
    window_s: float
    datapoints: int
    peak: float | None
    """The highest value in the window (None: no datapoint in it)."""
    newest: datetime | None

    def describe(self) -> str:
        """One line for `status RUN` and transition reasons."""
        if self.verdict is IdleVerdict.IDLE:
            return (
                f"{self.metric} utilisation below {self.below:g}% for {self.window_s:g}s "
                f"(peak {self.peak:.1f}%, {self.datapoints} datapoints)"
            )
        if self.verdict is IdleVerdict.BUSY:
            return (
                f"{self.metric} utilisation reached {self.peak:.1f}% in the last "
                f"{self.window_s:g}s (idle below {self.below:g}%)"
            )
        have = f"{self.datapoints} datapoints" if self.datapoints else "none"
        return (
            f"{self.metric} utilisation: no datapoints covering the last {self.window_s:g}s "
            f"({have}); not counted as idle (is monitoring on, or the CloudWatch agent "
            f"installed for gpu?)"
        )


def fetch_window(window_s: float, metric: IdleMetric) -> timedelta:
    """How far back the sweep asks CloudWatch: the window, one period before it (a
    datapoint's time is its period's start) and the allowed lag at its end."""
    return timedelta(seconds=window_s) + 2 * _tolerance(metric)


def judge(
    points: tuple[Datapoint, ...],
    *,
    metric: IdleMetric,
    below: float,
    window_s: float,
    now: datetime,
) -> Utilisation:
    """Pure. Idle when every datapoint over the last `window_s` is below `below` and the
    datapoints cover the window: the first within a tolerance of its start, none further
    apart than the tolerance, the newest within the tolerance of `now`. The tolerance is two
    of the metric's periods (CloudWatch publishes a period's point some minutes after it)."""
    start = now - timedelta(seconds=window_s)
    tolerance = _tolerance(metric)
    # A datapoint stamped up to one period before the window covers its beginning.
    earliest = start - timedelta(seconds=METRIC_SOURCES[metric].period_s)
    inside = sorted((p for p in points if earliest <= p.at <= now), key=lambda p: p.at)
    peak = max((p.value for p in inside), default=None)
    newest = inside[-1].at if inside else None
    verdict = IdleVerdict.NO_DATAPOINTS
    if peak is not None and peak >= below:
        verdict = IdleVerdict.BUSY
    elif inside and _covers(tuple(p.at for p in inside), start, now, tolerance):
        verdict = IdleVerdict.IDLE
    return Utilisation(verdict, metric, below, window_s, len(inside), peak, newest)


def _tolerance(metric: IdleMetric) -> timedelta:
    return timedelta(seconds=2 * METRIC_SOURCES[metric].period_s)


def _covers(times: tuple[datetime, ...], start: datetime, end: datetime, gap: timedelta) -> bool:
    edges = (start, *times, end)
    return all(later - earlier <= gap for earlier, later in itertools.pairwise(edges))
