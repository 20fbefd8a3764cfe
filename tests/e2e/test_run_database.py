"""The run database end to end: a job reports through `supervisor.report` (started,
heartbeats, completed with 300 metrics and a history); the real daemon ingests it; the real
`supervisorctl show --json` has all of it, and `runs --where metrics.NAME<X` finds the run."""

from __future__ import annotations

import json

import pytest

from supervisor.report import Reporter
from tests.conftest import BUCKET, Fleet
from tests.e2e.conftest import Cli

pytestmark = pytest.mark.e2e

METRICS = {f"m{i:03d}": round(i / 7, 6) for i in range(299)} | {"val_loss": 0.125}


def test_a_reported_run_is_shown_whole_and_found_by_its_metrics(
    shared: Cli, fleet: Fleet, tmp_path: object
) -> None:
    (instance,) = fleet.launch()
    run_id = "reported-1"
    shared.attach(
        run_id, instance, fleet.prefix(run_id),
        "--name", "DeCo hop MGDA", "--project", "exp1", "--tag", "method=mgda",
        "--objective", "val_loss:min", "--wandb-project", "deco",
        "--instance-type", "g5.2xlarge",
    )  # fmt: skip
    shared.wait_db_phase(run_id, "running")

    job = Reporter(f"s3://{BUCKET}/runs/{run_id}/", client=fleet.s3)
    job.started(wandb_run_id="w123", wandb_url="https://wandb.ai/team/deco/runs/w123")
    for step in range(1, 51):
        job.log(step, loss=1 / step)
    job.heartbeat(50, loss=0.02)
    job.completed(METRICS)

    shared.wait_db_phase(run_id, "stopped")
    shown = shared.ctl_json("show", run_id)
    assert (shown["name"], shown["project"], shown["tags"]) == (
        "DeCo hop MGDA", "exp1", {"method": "mgda"},
    )  # fmt: skip
    assert (shown["phase"], shown["outcome"], shown["instance_type"]) == (
        "stopped", "completed", "g5.2xlarge",
    )  # fmt: skip
    assert (shown["wandb_run_id"], shown["wandb_url"]) == (
        "w123", "https://wandb.ai/team/deco/runs/w123",
    )  # fmt: skip
    assert shown["metrics"] == pytest.approx(METRICS)  # all 300 final metrics
    assert [r["step"] for r in shown["history"]] == list(range(1, 51))
    assert shown["total_steps"] == 50
    (objective,) = shown["objectives"]
    assert (objective["name"], objective["direction"]) == ("val_loss", "min")
    assert objective["final"] == pytest.approx(0.125)

    found = shared.ctl_json("runs", "--where", "metrics.val_loss<0.2")
    assert run_id in str(found)
    missed = shared.ctl_json("runs", "--where", "metrics.val_loss<0.1")
    assert run_id not in str(missed)


WANDB_SUMMARY = {
    "val_loss": 0.25, "accuracy": 0.91, "_step": 4999, "_runtime": 3600.5,
    "_timestamp": 1763812800.125, "_wandb": {"runtime": 3600},
    "weights": {"_type": "histogram", "values": [1, 2], "bins": [0.0, 0.5, 1.0]},
}  # fmt: skip
"""`json.dump(wandb.run.summary._json_dict, f)`: what a job without the reporter uploads."""


def test_a_wandb_summary_and_columns_are_recorded_and_an_unreadable_file_noted_in_show(
    shared: Cli, fleet: Fleet
) -> None:
    (instance,) = fleet.launch()
    run_id = "shapes-1"
    shared.attach(run_id, instance, fleet.prefix(run_id), "--objective", "val_loss:min")
    shared.wait_db_phase(run_id, "running")
    prefix = f"runs/{run_id}/"
    fleet.put(prefix + "final_metrics.json", json.dumps(WANDB_SUMMARY))
    fleet.put(prefix + "history.json", json.dumps({"_step": [0, 100], "loss": [2.5, 1.25]}))
    fleet.put(prefix + "status.json", "{'state': 'running'}")  # Python's repr, not JSON
    fleet.put(prefix + "COMPLETE")
    shared.wait_db_phase(run_id, "stopped")

    shown = shared.ctl_json("show", run_id)
    assert shown["metrics"] == {"val_loss": 0.25, "accuracy": 0.91}
    assert (shown["total_steps"], shown["runtime_s"]) == (4999, 3600.5)
    assert shown["objectives"][0]["final"] == 0.25
    assert shown["history"] == [{"step": 0, "loss": 2.5}, {"step": 100, "loss": 1.25}]
    (problem,) = shown["report_problems"]
    assert problem["key"] == "status.json"

    # After the run ended, in the text of show, status and tail: the file, the problem, the doc.
    done = shared.ctl_all(("show", run_id), ("status", run_id), ("tail", run_id))
    assert [d.returncode for d in done] == [0, 0, 0], [d.stderr for d in done]
    shown_text, status_text, tail_text = (d.stdout for d in done)
    for text in (shown_text, status_text, tail_text):
        assert "status.json is not JSON: Expecting property name" in text, text
        assert 'the README, section "Report files"' in text, text
    assert "report files not read" in shown_text
    assert "report_unreadable key=status.json" in tail_text
