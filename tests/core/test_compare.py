"""`compare`: groups, counts, mean/min/max over the runs that reported the metric, the best run
by the objective's direction, and which direction was used and why."""

from __future__ import annotations

import pytest

from supervisor.core.compare import Group, Sample, compare, resolve_direction
from supervisor.core.spec import Direction

MIN, MAX = Direction.MIN, Direction.MAX


def test_groups_count_outcomes_and_summarise_only_the_runs_with_the_metric() -> None:
    samples = [
        Sample("a1", "mgda", "completed", 0.3),
        Sample("a2", "mgda", "crashed", None),
        Sample("a3", "mgda", "completed", 0.1),
        Sample("b1", "pcgrad", None, None),
    ]
    table = compare(samples, by="config.gradient_method", metric="val_loss")
    assert table.groups == (
        Group("mgda", 3, 2, 1, 2, pytest.approx(0.2), 0.1, 0.3, "a3", 0.1),  # type: ignore[arg-type]
        Group("pcgrad", 1, 0, 0, 0, None, None, None, None, None),
    )


@pytest.mark.parametrize(
    ("direction", "best", "order"),
    [(MIN, ("a1", 0.1), ["a", "b"]), (MAX, ("a2", 0.5), ["b", "a"])],
)
def test_the_best_run_and_the_group_order_follow_the_direction(
    direction: Direction, best: tuple[str, float], order: list[str]
) -> None:
    samples = [
        Sample("a1", "a", "completed", 0.1, direction),
        Sample("a2", "a", "completed", 0.5, direction),
        Sample("b1", "b", "completed", 0.4, direction),
        Sample("b2", "b", "completed", 0.45, direction),
    ]
    table = compare(samples, by="tag.g", metric="m")
    assert table.direction is direction and table.direction_source == "objective"
    first = next(g for g in table.groups if g.value == "a")
    assert (first.best_run, first.best_value) == best
    assert [g.value for g in table.groups] == order


def test_a_tie_goes_to_the_earlier_run() -> None:
    samples = [Sample("first", "g", "completed", 0.2), Sample("second", "g", "completed", 0.2)]
    assert compare(samples, by="tag.g", metric="m").groups[0].best_run == "first"


def test_runs_without_the_field_form_their_own_group_after_the_others_when_unmeasured() -> None:
    samples = [Sample("x", None, "completed", None), Sample("y", "g", "completed", 1.0)]
    assert [g.value for g in compare(samples, by="tag.g", metric="m").groups] == ["g", None]


@pytest.mark.parametrize("direction", [Direction.MIN, Direction.MAX])
def test_the_group_without_the_field_is_last_whatever_its_mean(direction: Direction) -> None:
    best = 0.0 if direction is Direction.MIN else 9.0
    samples = [
        Sample("a", "g", "completed", 5.0),
        Sample("x", None, "completed", best),  # the best mean of all: still not a value of g
        Sample("b", "h", "completed", None),
    ]
    groups = compare(samples, by="tag.g", metric="m", direction=direction).groups
    assert [g.value for g in groups] == ["g", "h", None]


@pytest.mark.parametrize(
    ("declared", "given", "expected", "source", "says"),
    [
        ([MAX, None, MAX], None, MAX, "objective", "higher acc is better (the runs' objective"),
        ([MIN], None, MIN, "objective", "lower acc is better"),
        ([None, None], None, MIN, "default", "no run declares acc as an objective: assuming"),
        ([MIN, MAX, MAX], None, MIN, "default", "disagree on acc's direction (min in 1, max in 2)"),
        ([MIN, MIN], MAX, MAX, "given", "higher acc is better (as given)"),
    ],
)
def test_the_direction_comes_from_the_objectives_else_min_and_the_note_says_so(
    declared: list[Direction | None],
    given: Direction | None,
    expected: Direction,
    source: str,
    says: str,
) -> None:
    direction, why, note = resolve_direction("acc", declared, given)
    assert (direction, why) == (expected, source)
    assert says in note
