"""`supervisorctl compare`: group runs by one field and summarise one metric per group.

Pure: samples in (one per run, read by the query adapter), a comparison table out. Which way
is better comes from the runs' own objectives for the metric, so a table of accuracies picks
the highest and a table of losses the lowest.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from supervisor.core.run import Outcome
from supervisor.core.values import Direction

GroupValue = str | int | float | None
"""A field's value in one run: a JSON scalar (true/false as text), or None when missing."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One run, as `compare` needs it."""

    run_id: str
    group: GroupValue
    outcome: str | None
    value: float | None
    """The metric's final value; None when the run reported none."""
    direction: Direction | None = None
    """The direction this run's objective of that name declares, if it has one."""


@dataclass(frozen=True, slots=True)
class Group:
    value: GroupValue
    runs: int
    completed: int
    crashed: int
    measured: int
    """Runs with a final value of the metric; only these count in mean, min and max."""
    mean: float | None
    min: float | None
    max: float | None
    best_run: str | None
    best_value: float | None


@dataclass(frozen=True, slots=True)
class Comparison:
    by: str
    metric: str
    direction: Direction
    direction_source: Literal["given", "objective", "default"]
    direction_note: str
    """Why this direction, in a sentence fit to print above the table."""
    groups: tuple[Group, ...]
    """Best mean first; groups without a value of the metric after them, and the group of
    runs without the field (value None) last of all."""


def resolve_direction(
    metric: str, declared: Iterable[Direction | None], given: Direction | None = None
) -> tuple[Direction, Literal["given", "objective", "default"], str]:
    """The direction to rank `metric` by: `given`, else the one every run declaring the
    metric as an objective agrees on, else min (and the note says which and why)."""
    better = {Direction.MIN: "lower", Direction.MAX: "higher"}
    if given is not None:
        return given, "given", f"{better[given]} {metric} is better (as given)"
    counts = {d: 0 for d in Direction}
    for direction in declared:
        if direction is not None:
            counts[direction] += 1
    stated = [d for d in Direction if counts[d]]
    if len(stated) == 1:
        d = stated[0]
        return d, "objective", f"{better[d]} {metric} is better (the runs' objective {metric}:{d})"
    if not stated:
        return (
            Direction.MIN,
            "default",
            f"no run declares {metric} as an objective: assuming lower is better "
            "(give --direction max if higher is)",
        )
    return (
        Direction.MIN,
        "default",
        f"the runs disagree on {metric}'s direction (min in {counts[Direction.MIN]}, max in "
        f"{counts[Direction.MAX]}): assuming lower is better (give --direction to choose)",
    )


def compare(
    samples: Sequence[Sample], *, by: str, metric: str, direction: Direction | None = None
) -> Comparison:
    """Per value of `by`: runs, completed, crashed, and the mean, min, max and best run of
    `metric` over the runs that reported it. Ties go to the earlier sample."""
    chosen, source, note = resolve_direction(metric, (s.direction for s in samples), direction)
    grouped: dict[GroupValue, list[Sample]] = {}
    for sample in samples:
        grouped.setdefault(sample.group, []).append(sample)
    groups = [_group(value, members, chosen) for value, members in grouped.items()]
    sign = 1.0 if chosen is Direction.MIN else -1.0
    # The runs without the field, "(none)", come last whatever their mean: they are not a
    # value of the field to rank among the others.
    groups.sort(
        key=lambda g: (g.value is None, g.mean is None, sign * (g.mean or 0.0), str(g.value))
    )
    return Comparison(by, metric, chosen, source, note, tuple(groups))


def _group(value: GroupValue, members: list[Sample], direction: Direction) -> Group:
    measured = [(s.value, s.run_id) for s in members if s.value is not None]
    values = [v for v, _ in measured]
    sign = 1.0 if direction is Direction.MIN else -1.0
    # min() keeps the first of equal values: a tie goes to the earlier run.
    best = min(measured, key=lambda pair: sign * pair[0]) if measured else None
    return Group(
        value=value,
        runs=len(members),
        completed=sum(s.outcome == Outcome.COMPLETED for s in members),
        crashed=sum(s.outcome == Outcome.CRASHED for s in members),
        measured=len(values),
        mean=statistics.fmean(values) if values else None,
        min=min(values) if values else None,
        max=max(values) if values else None,
        best_run=best[1] if best else None,
        best_value=best[0] if best else None,
    )
