"""Completion rules: what one listing says, and which listing to ask for."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from supervisor.core.completion import (
    Completed,
    FailureMarked,
    ListRequest,
    NotYet,
    evaluate,
    listing_request,
    watched_keys,
)
from supervisor.core.spec import DEFAULT_MARKERS
from supervisor.core.values import ObjectInfo
from tests.core.builders import NOW, make_spec, obj

SPEC = make_spec()


@pytest.mark.parametrize("marker", ["training_complete.txt", "COMPLETE", "done"])
def test_each_default_marker_means_completed(marker: str) -> None:
    written = NOW - timedelta(seconds=40)
    assert evaluate(SPEC, [obj("logs/train.log"), obj(marker, at=written)], None) == Completed(
        f"completion marker {marker} found", ended_at=written
    )
    assert marker in DEFAULT_MARKERS


def test_configured_markers_replace_the_defaults() -> None:
    spec = make_spec(markers=("out/SUCCESS",))
    assert evaluate(spec, [obj("done")], None) == NotYet(None)
    assert isinstance(evaluate(spec, [obj("out/SUCCESS")], None), Completed)


def test_nothing_watched_in_the_listing_is_not_yet() -> None:
    assert evaluate(SPEC, [obj("checkpoints/step-100.pt")], None) == NotYet(None)


def test_failure_marker_is_reported_with_its_key_and_when_it_was_written() -> None:
    written = NOW - timedelta(seconds=7)
    assert evaluate(SPEC, [obj("FAILED", at=written)], None) == FailureMarked("FAILED", written)
    spec = make_spec(failure_marker="status/ERROR")
    assert evaluate(spec, [obj("FAILED"), obj("status/ERROR")], None) == FailureMarked(
        "status/ERROR", NOW
    )


def test_completion_marker_beats_failure_marker() -> None:
    assert isinstance(evaluate(SPEC, [obj("FAILED"), obj("done")], None), Completed)


EXPECT = make_spec(expect=("model.pt", "metrics.json"))


def test_expected_outputs_need_two_identical_consecutive_snapshots() -> None:
    newest = NOW - timedelta(seconds=5)
    listing = [
        obj("model.pt", at=NOW - timedelta(seconds=90)),
        obj("metrics.json", "m1", at=newest),
    ]
    first = evaluate(EXPECT, listing, None)
    assert first == NotYet((("metrics.json", "m1", 10), ("model.pt", "e1", 10)))
    assert evaluate(EXPECT, listing, first.outputs) == Completed(
        "all 2 expected outputs present and unchanged", ended_at=newest
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
        ({"expect": ("out/model.pt",)}, ListRequest("my-runs", "exp1/run42/", None)),
        # The reports sit at the top of the run prefix: markers in a subfolder need it all.
        (
            {"markers": ("out/done",), "failure_marker": "out/FAILED", "expect": ("out/m.pt",)},
            ListRequest("my-runs", "exp1/run42/", None),
        ),
        ({"s3_prefix": "s3://my-runs"}, ListRequest("my-runs", "", "/")),
        ({"s3_prefix": "s3://my-runs", "markers": ("a/done",)}, ListRequest("my-runs", "", None)),
    ],
    ids=["top-folder", "two-folders", "subfolder-beside-reports", "bucket-root",
         "bucket-root-recursive"],
)  # fmt: skip
def test_listing_uses_a_delimiter_only_when_every_watched_key_shares_one_folder(
    overrides: dict[str, object], request_: ListRequest
) -> None:
    assert listing_request(make_spec(**overrides)) == request_


# -- since: a resumed run's attempt ------------------------------------------------------------

STARTED = NOW + timedelta(microseconds=700_000)
"""A resumed attempt's start; S3 keeps whole seconds, so objects of that second still count."""
SINCE = [
    (NOW - timedelta(hours=1), NotYet(None)),
    (NOW - timedelta(seconds=1), NotYet(None)),
    (NOW, Completed("completion marker done found", NOW)),
    (
        NOW + timedelta(minutes=5),
        Completed("completion marker done found", NOW + timedelta(minutes=5)),
    ),
]


@pytest.mark.parametrize(("written", "verdict"), SINCE)
def test_with_since_a_marker_written_before_the_attempt_started_is_not_evidence(
    written: datetime, verdict: object
) -> None:
    assert evaluate(SPEC, [obj("done", at=written)], None, since=STARTED) == verdict


def test_without_since_a_marker_of_any_age_is_evidence() -> None:
    old = obj("done", at=NOW - timedelta(days=30))
    assert evaluate(SPEC, [old], None) == Completed(
        "completion marker done found", old.last_modified
    )


def test_with_since_a_stale_failure_marker_or_stale_output_is_ignored_too() -> None:
    stale = NOW - timedelta(hours=1)
    assert evaluate(SPEC, [obj("FAILED", at=stale)], None, since=NOW) == NotYet(None)
    spec = make_spec(expect=("model.pt",))
    previous = (("model.pt", "e1", 10),)
    assert evaluate(spec, [obj("model.pt", at=stale)], previous, since=NOW) == NotYet(None)


def test_with_since_a_fresh_marker_wins_over_a_stale_one_of_another_name() -> None:
    listing = [obj("FAILED", at=NOW - timedelta(hours=1)), obj("COMPLETE", at=NOW)]
    assert evaluate(SPEC, listing, None, since=NOW) == Completed(
        "completion marker COMPLETE found", NOW
    )


# -- the job's reports: the heartbeat, final metrics and history -------------------------------


REPORTS = ("status.json", "final_metrics.json", "history.json")


@pytest.mark.parametrize("overrides", [{}, {"stall_timeout_s": 60}], ids=["off", "on"])
def test_the_reports_are_watched_whether_or_not_the_heartbeat_is_judged(
    overrides: dict[str, object],
) -> None:
    assert watched_keys(make_spec(**overrides))[-3:] == REPORTS


def test_a_configured_heartbeat_file_is_the_report_watched_in_place_of_status_json() -> None:
    keys = watched_keys(make_spec(heartbeat_file="logs/hb.json"))
    assert keys[-3:] == ("logs/hb.json", "final_metrics.json", "history.json")
    assert "status.json" not in keys


@pytest.mark.parametrize(
    ("overrides", "delimiter"),
    [
        ({"heartbeat_file": "logs/status.json"}, None),
        ({"heartbeat_file": "logs/status.json", "stall_timeout_s": 60}, None),
        ({"stall_timeout_s": 60}, "/"),
    ],
    ids=["nested-not-judged", "nested-and-judged", "top-and-judged"],
)
def test_a_nested_heartbeat_makes_the_listing_recursive_whether_or_not_it_is_judged(
    overrides: dict[str, object], delimiter: str | None
) -> None:
    assert listing_request(make_spec(**overrides)).delimiter == delimiter


@pytest.mark.parametrize("report", REPORTS)
def test_a_report_file_is_never_a_verdict(report: str) -> None:
    assert evaluate(make_spec(stall_timeout_s=60), [obj(report)], None) == NotYet(None)
