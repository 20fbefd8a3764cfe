"""The messages `make demo` puts on its queue for demo-spot: the real AWS shapes (the same
samples as tests/fixtures/aws-events/, shipped as package data), filled in so that the
daemon's own parser reads them as a spot warning and a state change for the demo's instance.
The demo itself checks the rest of the story when it runs (its exit code)."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from supervisor.core.notifications import Ec2StateChange, SpotWarning, parse_message
from supervisor.core.values import InstanceId, InstanceState
from supervisor.demo import events

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "supervisor" / "demo" / "aws-events"
INSTANCE = InstanceId("i-0fedcba9876543210")
AT = datetime(2026, 11, 23, 16, 18, 7, 654321, tzinfo=UTC)


@pytest.mark.parametrize("name", [events.SPOT_WARNING, events.STATE_CHANGE])
def test_the_demo_ships_the_same_samples_as_the_tests_use(name: str) -> None:
    shipped = (SHIPPED / f"{name}.json").read_bytes()
    assert shipped == (ROOT / "tests" / "fixtures" / "aws-events" / f"{name}.json").read_bytes()
    assert events.sample(name) == json.loads(shipped)


def test_the_samples_are_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["supervisor.demo"]
    shipped = {p.relative_to(SHIPPED.parent) for g in patterns for p in SHIPPED.parent.glob(g)}
    assert shipped == {
        Path("aws-events") / f"{n}.json" for n in (events.SPOT_WARNING, events.STATE_CHANGE)
    }


def test_the_spot_warning_is_read_as_one_for_the_demos_instance() -> None:
    body = events.spot_warning(INSTANCE, region="eu-west-1", at=AT)

    assert parse_message(json.dumps(body)) == (
        SpotWarning(INSTANCE, "terminate", AT.replace(microsecond=0)),
    )
    assert body["resources"] == [f"arn:aws:ec2:eu-west-1:123456789012:instance/{INSTANCE}"]
    assert body["region"] == "eu-west-1"
    assert body["id"] != events.sample(events.SPOT_WARNING)["id"]


def test_the_state_change_is_read_as_one_for_the_demos_instance() -> None:
    body = events.state_change(INSTANCE, "terminated", region="us-east-1", at=AT)

    (change,) = parse_message(json.dumps(body))

    assert change == Ec2StateChange(INSTANCE, InstanceState.TERMINATED, AT.replace(microsecond=0))
