"""The fault plan's random rules (`Code@P`, bursts `Code@PxN`, `*`, `seed=N`), the counted
rules next to them, and its parse errors. Draws are checked without AWS; one test sends real
calls to moto through the botocore hook."""

from __future__ import annotations

from collections import Counter

import pytest

from supervisor.adapters.aws import Aws
from supervisor.adapters.faults import FaultPlan
from supervisor.core.errors import InvalidInput, TransientError
from supervisor.core.values import InstanceId, InstanceState
from tests.conftest import REGION, Fleet

OPERATIONS = ("StopInstances", "DescribeInstances", "ListObjectsV2", "ReceiveMessage")


def draws(plan: FaultPlan, operation: str, n: int) -> list[str | None]:
    return [plan.draw(operation) for _ in range(n)]


def test_a_random_rule_fails_about_p_of_every_operation_with_its_codes() -> None:
    plan = FaultPlan.parse("*=Throttling,InternalError,ServiceUnavailable@0.1; seed=7")

    counts = Counter(plan.draw(op) for _ in range(5000) for op in OPERATIONS)

    failed = 20000 - counts[None]
    assert 1700 < failed < 2300  # 10 % of 20,000, with a wide margin for chance
    assert set(counts) == {None, "Throttling", "InternalError", "ServiceUnavailable"}
    assert min(counts[c] for c in ("Throttling", "InternalError", "ServiceUnavailable")) > 500


def test_the_same_seed_fails_the_same_calls_and_another_seed_others() -> None:
    text = "*=Throttling,InternalError@0.2x2; seed={}"

    first = draws(FaultPlan.parse(text.format(3)), "StopInstances", 300)
    again = draws(FaultPlan.parse(text.format(3)), "StopInstances", 300)
    other = draws(FaultPlan.parse(text.format(4)), "StopInstances", 300)

    assert first == again
    assert first != other


def test_a_burst_fails_that_many_calls_of_the_operation_it_hit_in_a_row() -> None:
    plan = FaultPlan.parse("StopInstances=SlowDown@0.05x3; seed=1")

    seen = draws(plan, "StopInstances", 4000)

    runs = [len(r) for r in "".join("x" if d else "." for d in seen).split(".") if r]
    assert runs, "no burst in 4000 draws at p=0.05"
    # Each burst is 3 calls; two bursts can follow each other, never a partial one.
    assert all(length % 3 == 0 for length in runs[:-1]), runs
    assert set(seen) == {None, "SlowDown"}


def test_a_burst_on_one_operation_leaves_the_others_alone() -> None:
    plan = FaultPlan.parse("*=Throttling@1x3")

    assert plan.draw("StopInstances") == "Throttling"
    # The burst belongs to StopInstances; DescribeInstances draws (and fails) on its own.
    assert draws(plan, "StopInstances", 2) == ["Throttling", "Throttling"]
    assert plan.draw("DescribeInstances") == "Throttling"


def test_a_random_rule_for_one_operation_never_fails_another() -> None:
    plan = FaultPlan.parse("StopInstances=InternalError@1")

    assert draws(plan, "StopInstances", 3) == ["InternalError"] * 3
    assert draws(plan, "TerminateInstances", 3) == [None] * 3


def test_counted_rules_come_first_then_the_random_ones() -> None:
    plan = FaultPlan.parse("StopInstances=UnauthorizedOperation*2; *=Throttling@1")

    assert draws(plan, "StopInstances", 3) == [
        "UnauthorizedOperation",
        "UnauthorizedOperation",
        "Throttling",
    ]


def test_the_existing_syntax_still_parses_the_same() -> None:
    plan = FaultPlan.parse("StopInstances=RequestLimitExceeded*2; DescribeInstances=InternalError")

    assert draws(plan, "StopInstances", 3) == ["RequestLimitExceeded"] * 2 + [None]
    assert draws(plan, "DescribeInstances", 2) == ["InternalError", None]
    assert plan.draw("StopInstances") is None


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("*=Throttling@0", "must be > 0"),
        ("*=Throttling@1.5", "must be > 0"),
        ("*=Throttling@often", "is not a probability"),
        ("*=Throttling@0.1x0", "at least 1 call"),
        ("*=Throttling,@0.1", "is not an error code"),
        ("*=hang@0.1", "hang cannot be random"),
        ("*=Throttling*2", "random rules"),
        ("StopInstances=Throttling*x", "must be a whole number"),
        ("StopInstances=Throttling*0", "must be a whole number"),
        ("seed=seven", "must be an integer"),
        ("Stop-Instances=Throttling@0.1", "the operation must be"),
    ],
)
def test_a_bad_rule_is_named_with_the_syntax(text: str, names: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        FaultPlan.parse(f"DescribeInstances=InternalError; {text}; seed=1")

    message = str(caught.value)
    assert f"fault rule {text!r} is not valid" in message
    assert names in message
    assert "Operation=ErrorCode[*N]" in message and "@P[xN]" in message


def test_a_plan_of_a_seed_only_is_falsy_and_a_random_rule_is_not() -> None:
    assert not FaultPlan.parse("seed=3")
    assert FaultPlan.parse("*=Throttling@0.01")


async def test_random_faults_reach_real_calls_and_are_counted(fleet: Fleet) -> None:
    [instance] = [InstanceId(i) for i in fleet.launch(1)]
    plan = FaultPlan.parse("DescribeInstanceStatus=Throttling@1x2")

    async with Aws(faults=plan) as aws:
        for _ in range(2):
            with pytest.raises(TransientError) as caught:
                await aws.describe_instances([instance], REGION)
            assert caught.value.code == "Throttling"
        # p=1: the third call starts a new burst; a plan at p<1 lets calls through.
        with pytest.raises(TransientError):
            await aws.describe_instances([instance], REGION)

    assert plan.injected == Counter({("DescribeInstanceStatus", "Throttling"): 3})
    assert plan.total_injected == 3

    async with Aws(faults=FaultPlan.parse("StopInstances=Throttling@1")) as aws:
        assert await aws.describe_instances([instance], REGION) == {instance: InstanceState.RUNNING}
