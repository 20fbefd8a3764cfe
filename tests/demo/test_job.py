"""The demo's simulated training job, run as a real process against the moto server: what it
reports through `supervisor.report` under its run prefix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

from supervisor.demo.job import Job, _parser
from tests.conftest import BUCKET, Fleet

RUN = "runs/job/"


def run_job(aws_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "supervisor.demo.job", "--bucket", BUCKET, "--prefix", RUN]
    return subprocess.run(
        [*command, "--steps", "3", "--step-s", "0", *args],
        env={**os.environ, **aws_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def read(fleet: Fleet, key: str) -> bytes:
    return bytes(fleet.s3.get_object(Bucket=BUCKET, Key=RUN + key)["Body"].read())


def read_json(fleet: Fleet, key: str) -> dict[str, Any]:
    document = json.loads(read(fleet, key))
    assert isinstance(document, dict)
    return document


def test_a_completed_job_reports_its_steps_history_and_final_metrics(
    fleet: Fleet, aws_env: dict[str, str]
) -> None:
    done = run_job(aws_env, "--method", "pcgrad", "--lr", "0.02")

    assert done.returncode == 0, done.stderr
    status = read_json(fleet, "status.json")
    assert (status["state"], status["step"], set(status["metrics"])) == ("running", 3, {"loss"})
    history = read_json(fleet, "history.json")["records"]
    assert [r["step"] for r in history] == [1, 2, 3]
    assert history[-1]["loss"] == status["metrics"]["loss"]
    final = read_json(fleet, "final_metrics.json")
    assert set(final["metrics"]) == {"train_loss", "val_loss", "accuracy"}
    assert final["metrics"]["train_loss"] == history[-1]["loss"]
    assert final["total_steps"] == 3
    assert read(fleet, "COMPLETE").startswith(b"completed at ")


def final_metrics(*args: str) -> dict[str, float]:
    options = _parser().parse_args(["--bucket", BUCKET, "--prefix", RUN, *args])
    return Job(cast(Any, None), options).final_metrics()  # no S3 call: nothing is written


def test_the_final_metrics_depend_only_on_the_lr_and_method() -> None:
    first = final_metrics("--method", "mgda")

    assert final_metrics("--method", "mgda") == first
    assert final_metrics("--method", "imtlg")["val_loss"] != first["val_loss"]
    assert final_metrics("--method", "mgda", "--lr", "0.05")["train_loss"] < first["train_loss"]


def test_a_failing_job_writes_its_crash_report_with_the_log_then_failed(
    fleet: Fleet, aws_env: dict[str, str], tmp_path: Path
) -> None:
    log_file = tmp_path / "train.log"
    done = run_job(
        aws_env,
        "--outcome",
        "fail",
        "--fail-reason",
        "CUDA error: OOM",
        "--log-file",
        str(log_file),
    )

    assert done.returncode == 1
    assert read(fleet, "FAILED") == b"CUDA error: OOM\n"
    crash = read(fleet, "crash/error.log").decode()
    assert crash.startswith(f"CUDA error: OOM\n\n--- {log_file} ---\n")
    assert crash.endswith("training failed: CUDA error: OOM\n")
    assert "step 3/3 loss=" in crash
    keys = {o["Key"] for o in fleet.s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert RUN + "COMPLETE" not in keys
