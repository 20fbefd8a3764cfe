"""Completion rules: what one listing says, and which listing to ask for."""

from __future__ import annotations

import pytest

from supervisor.core.completion import (
    Completed,
    FailureMarked,
    ListRequest,
    NotYet,
    evaluate,
    listing_request,
)
from supervisor.core.spec import DEFAULT_MARKERS
from supervisor.core.values import ObjectInfo
from tests.core.builders import make_spec, obj

SPEC = make_spec()


@pytest.mark.parametrize("marker", ["training_complete.txt", "COMPLETE", "done"])
def test_each_default_marker_means_completed(marker: str) -> None:
    assert evaluate(SPEC, [obj("logs/train.log"), obj(marker)], None) == Completed(
        f"completion marker {marker} found"
    )
    assert marker in DEFAULT_MARKERS


def test_configured_markers_replace_the_defaults() -> None:
    spec = make_spec(markers=("out/SUCCESS",))
    assert evaluate(spec, [obj("done")], None) == NotYet(None)
    assert isinstance(evaluate(spec, [obj("out/SUCCESS")], None), Completed)


def test_nothing_watched_in_the_listing_is_not_yet() -> None:
    assert evaluate(SPEC, [obj("checkpoints/step-100.pt")], None) == NotYet(None)


def test_failure_marker_is_reported_with_its_key() -> None:
    assert evaluate(SPEC, [obj("FAILED")], None) == FailureMarked("FAILED")
    spec = make_spec(failure_marker="status/ERROR")
    assert evaluate(spec, [obj("FAILED"), obj("status/ERROR")], None) == FailureMarked(
        "status/ERROR"
    )


def test_completion_marker_beats_failure_marker() -> None:
    assert isinstance(evaluate(SPEC, [obj("FAILED"), obj("done")], None), Completed)


EXPECT = make_spec(expect=("model.pt", "metrics.json"))


def test_expected_outputs_need_two_identical_consecutive_snapshots() -> None:
    listing = [obj("model.pt"), obj("metrics.json", etag="m1")]
    first = evaluate(EXPECT, listing, None)
    assert first == NotYet((("metrics.json", "m1", 10), ("model.pt", "e1", 10)))
    assert evaluate(EXPECT, listing, first.outputs) == Completed(
        "all 2 expected outputs present and unchanged"
    )


@pytest.mark.parametrize("changed", [obj("model.pt", etag="e2"), obj("model.pt", size=11)])
def test_a_changed_expected_output_restarts_the_comparison(changed: ObjectInfo) -> None:
    first = evaluate(EXPECT, [obj("model.pt"), obj("metrics.json")], None)
    assert isinstance(first, NotYet)
    second = evaluate(EXPECT, [changed, obj("metrics.json")], first.outputs)
    assert isinstance(second, NotYet) and second.outputs != first.outputs
    assert isinstance(evaluate(EXPECT, [changed, obj("metrics.json")], second.outputs), Completed)


def test_a_missing_expected_output_forgets_the_snapshot() -> None:
    assert evaluate(EXPECT, [obj("model.pt")], (("model.pt", "e1", 10),)) == NotYet(None)


@pytest.mark.parametrize(
    ("overrides", "request_"),
    [
        ({}, ListRequest("my-runs", "exp1/run42/", "/")),
        (
            {"markers": ("out/done",), "failure_marker": "out/FAILED", "expect": ("out/m.pt",)},
            ListRequest("my-runs", "exp1/run42/out/", "/"),
        ),
        ({"expect": ("out/model.pt",)}, ListRequest("my-runs", "exp1/run42/", None)),
        ({"s3_prefix": "s3://my-runs"}, ListRequest("my-runs", "", "/")),
        ({"s3_prefix": "s3://my-runs", "markers": ("a/done",)}, ListRequest("my-runs", "", None)),
    ],
    ids=["top-folder", "one-subfolder", "two-folders", "bucket-root", "bucket-root-recursive"],
)
def test_listing_uses_a_delimiter_only_when_every_watched_key_shares_one_folder(
    overrides: dict[str, object], request_: ListRequest
) -> None:
    assert listing_request(make_spec(**overrides)) == request_
