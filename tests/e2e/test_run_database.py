"""The run database end to end: a job reports through `supervisor.report` (started,
heartbeats, completed with 300 metrics and a history); the real daemon ingests it; the real
`supervisorctl show --json` has all of it, and `runs --where metrics.NAME<X` finds the run."""

from __future__ import annotations

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
