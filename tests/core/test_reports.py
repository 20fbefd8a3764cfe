"""The job's reports: status.json, final_metrics.json and history.json parsed as
`supervisor/report.py` writes them, and read in step() once per ETag, before anything else."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from supervisor.core.backoff import delay
from supervisor.core.checkpoint import CommandKind
from supervisor.core.effects import (
    ActOnInstance,
    AttachCrashReport,
    IngestReport,
    RunInstanceCommand,
    WakeAt,
)
from supervisor.core.errors import InvalidInput, InvalidTransition
from supervisor.core.events import (
    Action,
    PrefixListed,
    ReportIngested,
    ResumeRequested,
)
from supervisor.core.machine import ACCEPTS, CHECKPOINT_UPLOAD_BUDGET_S, checkpoint_command
from supervisor.core.reports import (
    FinalMetrics,
    History,
    Report,
    StatusReport,
    WandbInfo,
    parse_report,
    report_keys,
    unreadable_note,
)
from supervisor.core.run import TERMINAL_PHASES, CheckpointStatus, Outcome, Phase, Run
from supervisor.core.values import InstanceState
from tests.core.builders import (
    GRACE_UNTIL,
    NOW,
    POLICY,
    checkpoint_spec,
    finished,
    heartbeat,
    listed,
    make_run,
    make_spec,
    obj,
    run_step,
    seeded,
    spot_spec,
    with_state,
)

P, S = Phase, InstanceState
V = CheckpointStatus.VERIFIED
START = CommandKind.START
STATUS, FINAL, HISTORY = "status.json", "final_metrics.json", "history.json"
REPORTS = (STATUS, FINAL, HISTORY)


def parse(key: str, document: object, *, heartbeat_file: str = STATUS) -> Report:
    """Parse `document` (a JSON text, or a value to encode as Python's json does) as `key`."""
    text = document if isinstance(document, str) else json.dumps(document)
    return parse_report(key, text, heartbeat_file=heartbeat_file)


# -- the reporter's formats, byte for byte -----------------------------------------------------

WANDB_URL = "https://wandb.ai/acme/llm/runs/3kx9q2ab"
STARTED = (
    '{"format":1,"state":"started","step":null,"metrics":{},"wandb_run_id":"3kx9q2ab",'
    f'"wandb_url":"{WANDB_URL}","time":"2026-11-22T11:00:00.125+00:00"}}'
)
RUNNING = (
    '{"format":1,"state":"running","step":1200,"metrics":{"loss":0.4321,"lr":0.0003,'
    '"tokens":1048576},"wandb_run_id":null,"wandb_url":null,"time":"2026-11-22T12:00:00.000+00:00"}'
)
FINAL_METRICS = (
    '{"format":1,"metrics":{"val_loss":0.21,"accuracy":0.93},"total_steps":5000,'
    f'"wandb":{{"run_id":"3kx9q2ab","url":"{WANDB_URL}","project":"llm",'
    '"summary":{"val_loss":0.21,"_runtime":3600}},"time":"2026-11-22T13:00:00.000+00:00"}'
)
FINAL_WITHOUT_WANDB = (
    '{"format":1,"metrics":{},"total_steps":null,"wandb":null,'
    '"time":"2026-11-22T13:00:00.000+00:00"}'
)
HISTORY_RECORDS = (
    '{"format":1,"records":[{"step":0,"loss":2.5},{"step":100,"loss":1.25,"lr":0.001},'
    '{"step":200,"loss":0.75}]}'
)


def test_a_started_status_has_no_step_or_metrics_yet_and_the_wandb_ids() -> None:
    assert parse(STATUS, STARTED) == StatusReport(
        state="started",
        step=None,
        metrics={},
        wandb_run_id="3kx9q2ab",
        wandb_url=WANDB_URL,
        time=datetime(2026, 11, 22, 11, 0, 0, 125_000, tzinfo=UTC),
    )


def test_a_running_status_has_the_step_and_its_metrics_as_floats() -> None:
    report = parse(STATUS, RUNNING)
    assert report == StatusReport(
        state="running",
        step=1200,
        metrics={"loss": 0.4321, "lr": 0.0003, "tokens": 1048576.0},
        time=datetime(2026, 11, 22, 12, tzinfo=UTC),
    )
    assert isinstance(report, StatusReport)
    assert all(type(value) is float for value in report.metrics.values())


def test_final_metrics_have_the_metrics_the_total_steps_and_the_wandb_run() -> None:
    # W&B's own `_runtime` in the summary is not a metric: it is the run's runtime.
    assert parse(FINAL, FINAL_METRICS) == FinalMetrics(
        metrics={"val_loss": 0.21, "accuracy": 0.93},
        total_steps=5000,
        runtime_s=3600.0,
        wandb=WandbInfo(
            run_id="3kx9q2ab", url=WANDB_URL, project="llm", summary={"val_loss": 0.21}
        ),
    )


def test_final_metrics_without_wandb_or_steps_are_empty_not_an_error() -> None:
    assert parse(FINAL, FINAL_WITHOUT_WANDB) == FinalMetrics(metrics={}, total_steps=None)


def test_history_keeps_its_records_in_order_and_knows_the_last_step() -> None:
    report = parse(HISTORY, HISTORY_RECORDS)
    assert isinstance(report, History)
    assert report.records == [
        {"step": 0, "loss": 2.5},
        {"step": 100, "loss": 1.25, "lr": 0.001},
        {"step": 200, "loss": 0.75},
    ]
    assert report.last_step == 200


@pytest.mark.parametrize(
    ("records", "last_step"),
    [
        ([], None),
        ([{"loss": 1.0}], None),
        ([{"step": 300}, {"step": 100}], 300),
        ([{"step": "7"}, {"step": 2.5}, {"step": 4}], 4),
    ],
    ids=["empty", "no-steps", "out-of-order", "only-whole-numbers-count"],
)
def test_the_last_step_of_a_history_is_its_largest_whole_step(
    records: list[dict[str, Any]], last_step: int | None
) -> None:
    report = parse(HISTORY, {"records": records})
    assert isinstance(report, History) and report.last_step == last_step


def test_an_empty_object_is_each_report_with_its_defaults() -> None:
    assert parse(STATUS, "{}") == StatusReport()
    assert parse(FINAL, "{}") == FinalMetrics()
    assert parse(HISTORY, "{}") == History()


# -- what is left out --------------------------------------------------------------------------

EXTRA = {"format": 2, "host": "ip-10-0-0-1", "gpu": {"util": 0.93}}
"""Fields a newer (or another) writer may add: none of them is an error."""


@pytest.mark.parametrize(
    ("key", "text"),
    [(STATUS, RUNNING), (FINAL, FINAL_METRICS), (HISTORY, HISTORY_RECORDS)],
    ids=REPORTS,
)
def test_fields_a_report_does_not_know_are_ignored(key: str, text: str) -> None:
    document = json.loads(text)
    with_extra = {**document, **EXTRA}
    if document.get("wandb"):
        with_extra["wandb"] = {**document["wandb"], "entity": "acme", "tags": ["a"]}
    assert parse(key, with_extra) == parse(key, text)


NOT_METRICS: dict[str, object] = {
    "phase": "warmup",
    "converged": True,
    "diverged": False,
    "none": None,
    "grads": [1.0, 2.0],
    "_wandb": {"runtime": 12},
}
"""What a W&B summary (or a careless job) holds beside numbers: labels, flags, nested objects."""


def _metrics_of(key: str, where: str, metrics: str) -> dict[str, float]:
    """The metrics kept from `metrics` (a JSON object's text) put `where` in report `key`."""
    if where == "wandb.summary":
        report = parse(key, f'{{"wandb":{{"summary":{metrics}}}}}')
        assert isinstance(report, FinalMetrics) and report.wandb is not None
        return report.wandb.summary
    report = parse(key, f'{{"metrics":{metrics}}}')
    assert isinstance(report, StatusReport | FinalMetrics)
    return report.metrics


METRIC_FIELDS = [(STATUS, "metrics"), (FINAL, "metrics"), (FINAL, "wandb.summary")]
METRIC_IDS = ["status", "final", "wandb-summary"]


@pytest.mark.parametrize(("key", "where"), METRIC_FIELDS, ids=METRIC_IDS)
def test_a_value_that_is_not_a_number_is_dropped_and_the_numbers_kept(key: str, where: str) -> None:
    metrics = json.dumps({"loss": 0.5, "step_time_s": 2, **NOT_METRICS})
    assert _metrics_of(key, where, metrics) == {"loss": 0.5, "step_time_s": 2.0}


@pytest.mark.parametrize(("key", "where"), METRIC_FIELDS, ids=METRIC_IDS)
def test_a_bool_is_not_a_metric_though_python_counts_it_as_an_int(key: str, where: str) -> None:
    assert _metrics_of(key, where, '{"converged":true,"loss":1}') == {"loss": 1.0}


@pytest.mark.parametrize(("key", "where"), METRIC_FIELDS, ids=METRIC_IDS)
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_value_that_is_not_finite_is_dropped(key: str, where: str, literal: str) -> None:
    # Python's json writes NaN and Infinity by default, and reads them (and 1e999 as inf).
    assert _metrics_of(key, where, f'{{"loss":{literal},"acc":0.5}}') == {"acc": 0.5}


def test_a_value_that_is_not_finite_is_dropped_from_a_history_record() -> None:
    report = parse(HISTORY, '{"records":[{"step":1,"loss":NaN,"acc":Infinity},{"step":2}]}')
    assert isinstance(report, History)
    json.dumps(report.records, allow_nan=False)
    assert [r["step"] for r in report.records] == [1, 2]


# -- what is refused, naming the file ----------------------------------------------------------


@pytest.mark.parametrize("key", REPORTS)
@pytest.mark.parametrize(
    "text", ["", '{"format":1,"state":', "{'state': 'running'}", "not json"],
    ids=["empty", "cut-short", "python-repr", "text"],
)  # fmt: skip
def test_a_file_that_is_not_json_is_refused_naming_it(key: str, text: str) -> None:
    with pytest.raises(InvalidInput, match=rf"^{key} is not JSON: "):
        parse(key, text)


@pytest.mark.parametrize("key", [STATUS, FINAL])
@pytest.mark.parametrize("text", ["[]", "[{}]", '"running"', "null", "42", "true"])
def test_json_that_is_not_an_object_is_refused_naming_the_file(key: str, text: str) -> None:
    with pytest.raises(InvalidInput, match=rf"^{key} is not a JSON object$"):
        parse(key, text)


@pytest.mark.parametrize("text", ['"running"', "null", "42", "true"])
def test_a_history_that_is_neither_an_object_nor_a_list_is_refused_naming_its_shapes(
    text: str,
) -> None:
    with pytest.raises(InvalidInput, match=r"^history\.json is not a JSON object or list: give "):
        parse(HISTORY, text)


BAD_SHAPES = [
    (STATUS, {"step": "ten"}, "step"),
    (STATUS, {"step": 12.5}, "step"),
    (STATUS, {"metrics": [0.5]}, "metrics"),
    (STATUS, {"state": 5}, "state"),
    (STATUS, {"time": "yesterday"}, "time"),
    (STATUS, {"wandb_url": ["x"]}, "wandb_url"),
    (FINAL, {"metrics": None}, "metrics"),
    (FINAL, {"total_steps": "many"}, "total_steps"),
    (FINAL, {"wandb": "3kx9q2ab"}, "wandb"),
    (FINAL, {"wandb": {"summary": [1]}}, "wandb.summary"),
    (HISTORY, {"records": {"step": 1}}, "records"),
    (HISTORY, {"records": None}, "records"),
    (HISTORY, {"records": [{"step": 1}, 2]}, "records.1"),
]


@pytest.mark.parametrize(("key", "document", "field"), BAD_SHAPES)
def test_a_field_of_the_wrong_type_is_refused_naming_the_file_and_the_field(
    key: str, document: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput, match=rf"^{key}: {field}: ") as info:
        parse(key, document)
    assert "\n" not in str(info.value)


def test_a_file_that_is_not_a_report_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"^metrics\.json is not a report file$"):
        parse("metrics.json", "{}")


def test_a_configured_heartbeat_file_is_the_status_report_and_status_json_is_not() -> None:
    assert isinstance(parse("logs/hb.json", RUNNING, heartbeat_file="logs/hb.json"), StatusReport)
    with pytest.raises(InvalidInput, match="not a report file"):
        parse(STATUS, RUNNING, heartbeat_file="logs/hb.json")


def test_the_report_keys_are_the_heartbeat_file_and_the_two_fixed_files() -> None:
    assert report_keys(STATUS) == REPORTS
    assert report_keys("logs/hb.json") == ("logs/hb.json", FINAL, HISTORY)


# -- the shapes people write: a W&B summary, pandas' records and columns ------------------------

WANDB_SUMMARY = {
    "val_loss": 0.21,
    "accuracy": 0.93,
    "epoch": 3,
    "_step": 4999,
    "_runtime": 3600.5,
    "_timestamp": 1763812800.125,
    "_wandb": {"runtime": 3600},
    "weights": {"_type": "histogram", "values": [1, 2], "bins": [0.0, 0.5, 1.0]},
    "samples": {"_type": "table-file", "path": "media/table/samples.json"},
    "best_checkpoint": "ckpt-4000",
    "converged": True,
}
"""`wandb.run.summary._json_dict` of a finished run, as `json.dump` writes it."""


def test_a_flat_wandb_summary_is_final_metrics_with_its_step_and_runtime() -> None:
    assert parse(FINAL, WANDB_SUMMARY) == FinalMetrics(
        metrics={"val_loss": 0.21, "accuracy": 0.93, "epoch": 3.0},
        total_steps=4999,
        runtime_s=3600.5,
    )


@pytest.mark.parametrize(
    ("document", "final"),
    [
        ({"loss": 0.5}, FinalMetrics(metrics={"loss": 0.5})),
        ({"loss": 0.5, "_step": 10.0}, FinalMetrics(metrics={"loss": 0.5}, total_steps=10)),
        ({"loss": 0.5, "_step": 2.5}, FinalMetrics(metrics={"loss": 0.5})),
        ({"loss": 0.5, "_step": -1}, FinalMetrics(metrics={"loss": 0.5})),
        ({"loss": 0.5, "_runtime": "long"}, FinalMetrics(metrics={"loss": 0.5})),
        ({"_step": 7, "note": "only steps"}, FinalMetrics(total_steps=7)),
        ({"_private": 1.0, "loss": 0.5}, FinalMetrics(metrics={"loss": 0.5})),
        ({"loss": 0.5, "lr": "NaN", "acc": None}, FinalMetrics(metrics={"loss": 0.5})),
    ],
    ids=[
        "numbers-only", "whole-float-step", "fractional-step", "negative-step",
        "runtime-text", "steps-only", "underscore-key", "labels-skipped",
    ],
)  # fmt: skip
def test_a_flat_object_keeps_its_numbers_and_wandbs_step_and_runtime(
    document: dict[str, object], final: FinalMetrics
) -> None:
    assert parse(FINAL, document) == final


@pytest.mark.parametrize(
    "document",
    [{"note": "done"}, {"_wandb": {"runtime": 1}, "_timestamp": 1.0}, {"nested": {"a": 1}}],
    ids=["labels", "only-wandb-internals", "only-nested"],
)
def test_a_flat_object_without_a_number_is_refused_naming_the_shapes(
    document: dict[str, object],
) -> None:
    with pytest.raises(InvalidInput, match=r"^final_metrics\.json has no metrics: .*W&B summary"):
        parse(FINAL, document)


def test_the_reporters_object_takes_wandbs_step_and_runtime_when_it_has_none() -> None:
    summary = {"loss": 0.5, "_step": 99, "_runtime": 60, "_timestamp": 1.0}
    report = parse(FINAL, {"metrics": {"loss": 0.5}, "wandb": {"summary": summary}})
    assert report == FinalMetrics(
        metrics={"loss": 0.5},
        total_steps=99,
        runtime_s=60.0,
        wandb=WandbInfo(summary={"loss": 0.5}),
    )
    given = parse(FINAL, {"total_steps": 100, "wandb": {"summary": summary}})
    assert isinstance(given, FinalMetrics) and given.total_steps == 100


def test_no_key_starting_with_an_underscore_is_a_final_metric_in_any_shape() -> None:
    reporter = parse(FINAL, {"metrics": {"_step": 1, "_x": 2.0, "loss": 0.5}})
    flat = parse(FINAL, {"_step": 1, "_x": 2.0, "loss": 0.5})
    assert isinstance(reporter, FinalMetrics) and isinstance(flat, FinalMetrics)
    assert reporter.metrics == flat.metrics == {"loss": 0.5}


EXPECTED_RECORDS = [{"step": 0, "loss": 2.5}, {"step": 100, "loss": 1.25, "lr": 0.001}]


@pytest.mark.parametrize(
    "document",
    [
        {"format": 1, "records": EXPECTED_RECORDS},
        EXPECTED_RECORDS,
        [{"_step": 0, "loss": 2.5, "lr": None}, {"_step": 100, "loss": 1.25, "lr": 0.001}],
        {"step": [0, 100], "loss": [2.5, 1.25], "lr": [None, 0.001]},
        {"_step": [0, 100], "loss": [2.5, 1.25], "lr": [None, 0.001], "_runtime": [1.5, 9.0]},
        {"_step": [0.0, 100.0], "loss": [2.5, 1.25], "lr": ["NaN", 0.001]},
    ],
    ids=[
        "reporter", "records", "records-wandb-step", "columns", "columns-wandb-history",
        "columns-pandas-floats",
    ],
)  # fmt: skip
def test_every_shape_of_a_history_gives_the_same_records(document: object) -> None:
    text = json.dumps(document).replace('"NaN"', "NaN")  # pandas writes NaN for an empty cell
    report = parse(HISTORY, text)
    assert isinstance(report, History)
    assert report.records == EXPECTED_RECORDS
    assert report.last_step == 100


def test_wandbs_own_keys_other_than_step_are_left_out_of_history_records() -> None:
    row = {"_step": 3, "_runtime": 1.5, "_timestamp": 1763812800.0, "_wandb": {}, "loss": 1.0}
    report = parse(HISTORY, [row])
    assert isinstance(report, History) and report.records == [{"step": 3, "loss": 1.0}]


def test_a_records_own_step_wins_over_wandbs() -> None:
    report = parse(HISTORY, [{"step": 5, "_step": 2, "loss": 1.0}])
    assert isinstance(report, History) and report.records == [{"step": 5, "loss": 1.0}]


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"step": [0, 1, 2], "loss": [1.0, 0.5]}, r"its columns differ in length \('step' 3"),
        ({"step": [0, 1], "name": "run-1"}, r"'name' is not a column"),
        ({"step": 3, "loss": 0.5}, r"'step' is not a column"),
        ([{"step": 1}, 2], r"^history\.json: records\.1: "),
        (["step", "loss"], r"^history\.json: records\.0: "),
    ],
    ids=["ragged-columns", "column-and-label", "one-record-as-object", "not-a-record", "names"],
)
def test_a_history_in_no_known_shape_is_refused_naming_the_problem(
    document: object, problem: str
) -> None:
    with pytest.raises(InvalidInput, match=problem) as info:
        parse(HISTORY, document)
    assert str(info.value).startswith("history.json")
    assert "\n" not in str(info.value)


def test_the_note_on_an_unreadable_file_says_where_its_shapes_are_documented() -> None:
    note = unreadable_note("history.json is not JSON: Expecting value: line 1 column 1 (char 0)")
    assert note.startswith("history.json is not JSON: Expecting value")
    assert 'the README, section "Report files"' in note


def test_the_readme_has_the_section_the_notes_point_to() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    assert "\n### Report files\n" in readme
    for shape in ('to_dict("list")', 'orient="records"', "_json_dict", "_step", "_runtime"):
        assert shape in readme


# -- reading them in step(): once per ETag, before anything else -------------------------------

FIRST_CHECK = WakeAt(NOW + timedelta(seconds=delay(0, POLICY.poll, seeded())))
"""The next check a run with no checks yet schedules after a listing without a verdict."""


def read(key: str, etag: str = "e1", size: int = 10) -> IngestReport:
    return IngestReport(key, etag, size)


def reports(etag: str = "e1") -> tuple[tuple[str, str], ...]:
    """`report_etags` of a run that has read the three reports at `etag`, sorted by key."""
    return tuple(sorted((key, etag) for key in REPORTS))


def test_a_listing_reads_each_report_not_read_yet_first_in_listing_order() -> None:
    listing = PrefixListed((
        obj("logs/train.log"), obj(HISTORY, "h1", 5_000), obj(STATUS, "s1", 180),
        obj(FINAL, "f1", 300),
    ))  # fmt: skip
    d = run_step(make_run(P.RUNNING), listing)
    assert d.effects == (read(HISTORY, "h1", 5_000), read(STATUS, "s1", 180),
                         read(FINAL, "f1", 300), FIRST_CHECK)  # fmt: skip
    assert (d.run.phase, d.transition, d.run.report_etags) == (P.RUNNING, None, ())


def test_a_report_whose_etag_was_read_is_not_read_again() -> None:
    run = make_run(P.RUNNING, report_etags=reports())
    assert run_step(run, listed("logs/train.log", *REPORTS)).effects == (FIRST_CHECK,)


def test_only_a_report_whose_etag_changed_is_read_again() -> None:
    run = make_run(P.RUNNING, report_etags=((HISTORY, "e1"), (STATUS, "e1")))
    listing = PrefixListed((obj(STATUS, "e2"), obj(HISTORY, "e1"), obj(FINAL, "e1")))
    assert run_step(run, listing).effects == (read(STATUS, "e2"), read(FINAL, "e1"), FIRST_CHECK)


def test_only_the_report_files_at_their_keys_are_read() -> None:
    listing = listed(
        "metrics.json", "logs/status.json", "checkpoints/history.json", "out/final_metrics.json",
        "status.json.tmp", "crash/error.log",
    )  # fmt: skip
    assert run_step(make_run(P.RUNNING), listing).effects == (FIRST_CHECK,)


def test_a_configured_heartbeat_file_is_read_in_place_of_status_json() -> None:
    run = make_run(P.RUNNING, spec=make_spec(heartbeat_file="logs/hb.json"))
    effects = run_step(run, listed(STATUS, "logs/hb.json")).effects
    assert effects == (read("logs/hb.json"), FIRST_CHECK)


STALL = {"stall_timeout_s": 60}
# fmt: off
SAME_DECISION = [
    pytest.param(make_run(P.RUNNING), listed("logs/train.log", *REPORTS), id="no-verdict"),
    pytest.param(make_run(P.RUNNING, checks=4), heartbeat(5, FINAL), id="backed-off"),
    pytest.param(make_run(P.RUNNING, spec=make_spec(**STALL)), heartbeat(600, HISTORY),
                 id="stall"),
    pytest.param(make_run(P.STALLED, spec=make_spec(**STALL)), heartbeat(5, HISTORY),
                 id="fresh-again"),
    pytest.param(make_run(P.RUNNING), listed("FAILED", *REPORTS), id="failure-marker"),
    pytest.param(make_run(P.RUNNING), listed("done", *REPORTS), id="completed"),
    pytest.param(make_run(P.RUNNING, spec=checkpoint_spec()), listed("done", *REPORTS),
                 id="completed-checkpointing"),
    pytest.param(make_run(P.RUNNING, instance_ended=S.TERMINATED), listed(*REPORTS),
                 id="crashed"),
    pytest.param(make_run(P.RUNNING, spec=make_spec(spot=True), instance_ended=S.TERMINATED),
                 listed(*REPORTS), id="interrupted"),
]
# fmt: on


@pytest.mark.parametrize(("run", "listing"), SAME_DECISION)
def test_reading_the_reports_changes_nothing_else_in_the_decision(
    run: Run, listing: PrefixListed
) -> None:
    unread = run_step(run, listing)
    already = run_step(run.evolve(report_etags=reports()), listing)
    reads = tuple(read(o.key) for o in listing.objects if o.key in REPORTS)
    assert reads and unread.effects == reads + already.effects
    assert unread.run == already.run.evolve(report_etags=())
    assert (unread.transition, unread.persist) == (already.transition, already.persist)


def test_report_ingested_records_the_etag_persisted_without_a_transition_or_effects() -> None:
    run = make_run(P.RUNNING, report_etags=((HISTORY, "h1"), (STATUS, "s1")))
    d = run_step(run, ReportIngested(STATUS, "s2"))
    assert d.run.report_etags == ((HISTORY, "h1"), (STATUS, "s2"))
    assert (d.persist, d.transition, d.effects) == (True, None, ())
    assert (d.run.phase, d.run.version) == (run.phase, run.version)
    added = run_step(d.run, ReportIngested(FINAL, "f1")).run.report_etags
    assert added == ((FINAL, "f1"), (HISTORY, "h1"), (STATUS, "s2"))


def test_a_read_report_is_not_read_again_until_its_etag_changes() -> None:
    run = run_step(make_run(P.RUNNING), ReportIngested(STATUS, "e1")).run
    assert run_step(run, listed(STATUS)).effects == (FIRST_CHECK,)
    changed = PrefixListed((obj(STATUS, "e2"),))
    assert run_step(run, changed).effects == (read(STATUS, "e2"), FIRST_CHECK)


def test_an_unreadable_report_is_not_read_again_until_it_changes_either() -> None:
    error = "status.json is not JSON: Expecting value: line 1 column 1 (char 0)"
    run = run_step(make_run(P.RUNNING), ReportIngested(STATUS, "e1", error)).run
    assert run.report_etags == ((STATUS, "e1"),)
    assert run_step(run, listed(STATUS)).effects == (FIRST_CHECK,)
    assert run_step(run, PrefixListed((obj(STATUS, "e2"),))).effects[0] == read(STATUS, "e2")


ACTIVE = [p for p in Phase if p not in TERMINAL_PHASES]


@pytest.mark.parametrize("phase", ACTIVE)
def test_every_active_phase_records_a_read_report(phase: Phase) -> None:
    run = make_run(phase)
    d = run_step(run, ReportIngested(FINAL, "f1"))
    assert (d.run.phase, d.run.report_etags, d.persist) == (phase, ((FINAL, "f1"),), True)


@pytest.mark.parametrize("phase", sorted(TERMINAL_PHASES))
def test_a_run_that_ended_refuses_report_ingested_and_changes_nothing(phase: Phase) -> None:
    run = make_run(phase)
    assert ReportIngested not in ACCEPTS[phase]
    with pytest.raises(InvalidTransition, match=f"is {phase}: ReportIngested does not apply"):
        run_step(run, ReportIngested(FINAL, "f1"))


def _checkpoint_step() -> RunInstanceCommand:
    """The step that ends training and saves the final checkpoint, for `checkpoint_spec()`."""
    run = make_run(spec=checkpoint_spec())
    timeout = run.spec.sigterm_timeout_s + CHECKPOINT_UPLOAD_BUDGET_S
    return RunInstanceCommand(checkpoint_command(run), timeout)


def test_the_completion_listing_reads_the_final_metrics_and_history_before_the_checkpoint() -> None:
    run = make_run(P.RUNNING, spec=checkpoint_spec(), report_etags=((STATUS, "e1"),))
    d = run_step(run, listed(STATUS, FINAL, HISTORY, "COMPLETE"))
    assert d.effects == (read(FINAL), read(HISTORY), _checkpoint_step())
    assert (d.run.phase, d.run.outcome) == (P.CHECKPOINTING, Outcome.COMPLETED)


def test_the_completion_listing_without_checkpointing_reads_them_before_grace() -> None:
    d = run_step(make_run(P.RUNNING), listed(FINAL, HISTORY, "COMPLETE"))
    assert d.effects == (read(FINAL), read(HISTORY), WakeAt(GRACE_UNTIL))
    assert d.run.phase is P.GRACE


def test_a_listing_that_ends_the_run_reads_its_reports_and_then_refuses_the_answer() -> None:
    # The executor reads them all the same; the answer is refused: nothing lists it any more.
    run = make_run(P.RUNNING, instance_ended=S.TERMINATED)
    d = run_step(run, listed(FINAL, HISTORY, "COMPLETE"))
    assert (d.run.phase, d.run.outcome) == (P.TERMINATED, Outcome.COMPLETED)
    assert d.effects == (read(FINAL), read(HISTORY))
    with pytest.raises(InvalidTransition):
        run_step(d.run, ReportIngested(FINAL, "e1"))


def test_a_crash_listing_reads_the_reports_before_attaching_the_crash_report() -> None:
    d = run_step(make_run(P.RUNNING, instance_ended=S.STOPPED), listed(STATUS, HISTORY))
    assert d.run.phase is P.CRASHED
    assert d.effects == (read(STATUS), read(HISTORY), AttachCrashReport("crash/error.log"))


QUIET = timedelta(seconds=30)
"""The default quiet_s of an until-quiet grace."""


def _quiet_grace(**changes: Any) -> Run:
    """A grace that may end early: checkpoint verified, training process exited."""
    return make_run(P.GRACE, spec=checkpoint_spec(), checkpoint=V, process_exited=True, **changes)


def test_an_until_quiet_grace_listing_reads_the_reports_too() -> None:
    busy = PrefixListed((obj(HISTORY, at=NOW - timedelta(seconds=10)),))
    d = run_step(_quiet_grace(), busy)
    assert d.effects == (read(HISTORY), WakeAt(NOW - timedelta(seconds=10) + QUIET))
    quiet = PrefixListed((obj(FINAL, at=NOW - timedelta(minutes=5)),))
    ended = run_step(_quiet_grace(), quiet)
    assert ended.effects == (read(FINAL), ActOnInstance(Action.STOP))
    assert ended.run.phase is P.STOPPING


def test_a_listing_in_a_grace_that_cannot_end_early_only_reads_the_reports() -> None:
    d = run_step(make_run(P.GRACE), listed(FINAL, "done"))
    assert (d.effects, d.transition) == ((read(FINAL),), None)


def test_the_interrupting_runs_last_look_reads_the_reports_too() -> None:
    spec = spot_spec()
    run = make_run(
        P.INTERRUPTING, spec=spec, outcome=Outcome.INTERRUPTED, checkpoint=V,
        instance_ended=S.TERMINATED,
    )  # fmt: skip
    d = run_step(run, listed(STATUS, FINAL, HISTORY, "COMPLETE"))
    assert (d.run.phase, d.run.outcome) == (P.INTERRUPTED, Outcome.COMPLETED)
    assert d.effects == (read(STATUS), read(FINAL), read(HISTORY))
    waiting = with_state(run, instance_ended=None)
    assert run_step(waiting, listed(FINAL)).effects == (read(FINAL),)


def test_a_resume_keeps_the_etags_read_so_the_last_attempts_reports_are_not_read_again() -> None:
    run = make_run(
        P.STOPPED, spec=checkpoint_spec(), outcome=Outcome.COMPLETED, checkpoint=V,
        report_etags=reports(),
    )  # fmt: skip
    resuming = run_step(run, ResumeRequested()).run
    started = run_step(with_state(resuming, resume_stage="start"), finished(START, pid=777)).run
    assert (started.phase, started.attempt, started.report_etags) == (P.RUNNING, 2, reports())
    assert run_step(started, listed(*REPORTS)).effects == (FIRST_CHECK,)
