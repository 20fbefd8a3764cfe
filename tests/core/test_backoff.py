"""Backoff: the poll schedule, its jitter, and policy validation."""

from __future__ import annotations

import random

import pytest

from supervisor.core.backoff import BackoffPolicy, base_delay, checks_made, delay

DEFAULT = BackoffPolicy()


def test_base_delay_doubles_from_30_s_and_caps_at_300_s() -> None:
    assert [base_delay(n, DEFAULT) for n in range(6)] == [30, 60, 120, 240, 300, 300]


def test_base_delay_stays_at_the_cap_for_huge_attempt_counts() -> None:
    assert base_delay(10_000, DEFAULT) == 300


@pytest.mark.parametrize("seed", range(10))
def test_jittered_delay_stays_within_ten_percent_of_the_base(seed: int) -> None:
    rng = random.Random(seed)
    for attempt in range(8):
        base = base_delay(attempt, DEFAULT)
        assert 0.9 * base <= delay(attempt, DEFAULT, rng) <= 1.1 * base


def test_jittered_schedule_is_repeatable_with_the_same_seed() -> None:
    def schedule(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [delay(n, DEFAULT, rng) for n in range(6)]

    assert schedule(7) == schedule(7)
    assert schedule(7) != schedule(8)


def test_zero_jitter_gives_exactly_the_base_delay() -> None:
    policy = BackoffPolicy(jitter=0)
    assert [delay(n, policy, random.Random(1)) for n in range(3)] == [30, 60, 120]


@pytest.mark.parametrize(
    "fields",
    [
        {"initial_s": -1},
        {"initial_s": 60, "max_s": 30},
        {"multiplier": 0.5},
        {"jitter": 1.0},
        {"jitter": -0.1},
    ],
)
def test_invalid_policy_is_refused_when_built(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="need"):
        BackoffPolicy(**fields)


@pytest.mark.parametrize(
    ("elapsed_s", "made"),
    [(-5, 0), (0, 0), (29.9, 0), (30, 1), (89, 1), (90, 2), (210, 3), (449, 3), (450, 4),
     (749, 4), (750, 5), (7200, 26)],
)  # fmt: skip
def test_checks_made_counts_the_unjittered_schedule(elapsed_s: float, made: int) -> None:
    assert checks_made(elapsed_s, DEFAULT) == made


@pytest.mark.parametrize("elapsed_s", [0.0, 1.0, 44.0, 300.0, 1234.5, 86_400.0])
@pytest.mark.parametrize("policy", [DEFAULT, BackoffPolicy(5, 5), BackoffPolicy(1, 1000, 3)])
def test_checks_made_is_where_the_schedule_is_after_that_long(
    elapsed_s: float, policy: BackoffPolicy
) -> None:
    made = checks_made(elapsed_s, policy)
    before = sum(base_delay(i, policy) for i in range(made))
    assert before <= elapsed_s < before + base_delay(made, policy)
