"""The run spec: validated once at attach, every bad field named, stored as JSON."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.core.errors import InvalidInput
from supervisor.core.spec import DEFAULT_MARKERS, OnComplete, RunSpec
from supervisor.core.values import S3Prefix
from tests.core.builders import SPEC_FIELDS, make_spec


def test_a_minimal_spec_gets_the_documented_defaults() -> None:
    spec = make_spec(s3_prefix="s3://my-runs/exp1/run42")
    assert (spec.on_complete, spec.markers, spec.failure_marker, spec.expect) == (
        OnComplete.STOP,
        DEFAULT_MARKERS,
        "FAILED",
        (),
    )
    assert spec.s3_prefix == "s3://my-runs/exp1/run42/"
    assert spec.prefix == S3Prefix("my-runs", "exp1/run42/")


BAD_FIELDS = [
    ({"grace_s": -1}, "grace_s", "-1"),
    ({"grace_s": "soon"}, "grace_s", "'soon'"),
    ({"colour": "blue"}, "colour", "'blue'"),
    ({"instance_id": "i-xyz"}, "instance id", "'i-xyz'"),
    ({"region": "mars"}, "region", "'mars'"),
    ({"s3_prefix": "http://x/"}, "s3 prefix", "'http://x/'"),
    ({"on_complete": "halt"}, "on_complete", "'halt'"),
    ({"markers": ()}, "markers", ""),
    ({"markers": ("../done",)}, "completion marker", "'../done'"),
    ({"expect": ("x; rm -rf /",)}, "expected output", "'x; rm -rf /'"),
    ({"failure_marker": "/FAILED"}, "failure marker", "'/FAILED'"),
]


@pytest.mark.parametrize(("overrides", "field", "shown"), BAD_FIELDS)
def test_build_refuses_a_bad_field_naming_it_and_the_value_as_given(
    overrides: dict[str, Any], field: str, shown: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        make_spec(**overrides)
    assert field in str(info.value).lower()
    assert shown in str(info.value)


def test_build_refuses_a_missing_field_naming_it() -> None:
    fields = {k: v for k, v in SPEC_FIELDS.items() if k != "grace_s"}
    with pytest.raises(InvalidInput, match=r"^grace_s: field required$"):
        RunSpec.build(**fields)


def test_build_names_every_bad_field_at_once() -> None:
    # Fails today: the validators raise InvalidInput, which pydantic does not collect.
    with pytest.raises(InvalidInput) as info:
        make_spec(instance_id="i-xyz", grace_s=-1)
    assert "i-xyz" in str(info.value) and "grace_s" in str(info.value)


@pytest.mark.parametrize("grace_s", [float("inf"), float("nan"), 1e12])
def test_build_refuses_a_grace_that_no_clock_can_reach(grace_s: float) -> None:
    # Fails today for inf and 1e12: step() then raises OverflowError when the run completes.
    with pytest.raises(InvalidInput, match="grace_s"):
        make_spec(grace_s=grace_s)


def test_spec_round_trips_through_json() -> None:
    spec = make_spec(
        on_complete="terminate",
        markers=("out/done",),
        expect=("model.pt", "out/metrics.json"),
        failure_marker="out/FAILED",
    )
    assert RunSpec.model_validate_json(spec.model_dump_json()) == spec


def test_stored_json_with_a_bad_value_is_refused() -> None:
    text = make_spec().model_dump_json().replace('"grace_s":600.0', '"grace_s":-5')
    with pytest.raises(ValueError, match="grace_s"):
        RunSpec.model_validate_json(text)
