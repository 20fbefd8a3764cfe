"""Crash reports through the real `supervisord` and `supervisorctl`: a crashed run's report is
attached and shown by `status`; `attach` offers the heartbeat and rebalance options."""

from __future__ import annotations

import contextlib
import json
import sqlite3

import pytest

from tests.conftest import BUCKET, Fleet
from tests.e2e.conftest import Cli, assert_chained, wait_for

pytestmark = pytest.mark.e2e

REPORT_LINES = [f"  step {n}: loss nan, lr 3e-4, grad norm inf" for n in range(1, 15)] + [
    "Traceback (most recent call last):",
    '  File "train.py", line 212, in <module>',
    "FloatingPointError: loss is nan at step 14",
]


def attachments(cli: Cli, run_id: str) -> int:
    """How many attachments the run has, read through a read-only connection."""
    uri = f"file:{cli.db_path}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
        (count,) = db.execute(
            "SELECT COUNT(*) FROM attachments WHERE run_id = ?", (run_id,)
        ).fetchone()
    return int(count)


def test_a_crashed_runs_report_is_attached_and_shown_by_status(shared: Cli, fleet: Fleet) -> None:
    (instance,) = fleet.launch()
    attached = shared.attach(
        "crash-report-1", instance, fleet.prefix("crash-report-1"),
        "--crash-report", "logs/crash.txt", "--stall-timeout-s", "600", "--on-stall", "notify",
    )  # fmt: skip
    assert attached["phase"] == "pending"
    shared.wait_db_phase("crash-report-1", "running")
    report = "\n".join(REPORT_LINES) + "\n"
    fleet.put("runs/crash-report-1/logs/crash.txt", report)
    fleet.put("runs/crash-report-1/FAILED", "exit code 1")

    shared.wait_db_phase("crash-report-1", "crashed")
    wait_for(
        lambda: attachments(shared, "crash-report-1") == 1,
        message=lambda: f"the crash report to be attached{shared.log_tail()}",
    )
    as_json, as_text, helped = shared.ctl_all(
        ("status", "crash-report-1", "--json"),
        ("status", "crash-report-1"),
        ("attach", "--help"),
    )

    uri = f"s3://{BUCKET}/runs/crash-report-1/logs/crash.txt"
    assert as_json.returncode == 0, as_json
    run = json.loads(as_json.stdout)
    assert (run["phase"], run["outcome"]) == ("crashed", "crashed")
    assert run["reason"] == "failure marker FAILED: exit code 1"
    assert_chained(run["transitions"])
    assert run["spec"]["crash_report"] == "logs/crash.txt"
    assert (run["spec"]["stall_timeout_s"], run["spec"]["on_stall"]) == (600.0, "notify")
    (attachment,) = run["attachments"]
    assert (attachment["kind"], attachment["uri"]) == ("crash-log", uri)
    assert (attachment["size"], attachment["excerpt"]) == (len(report), report)
    assert attachment["added_at"]

    assert as_text.returncode == 0, as_text
    lines = as_text.stdout.splitlines()
    header = f"  attached   crash-log: {uri}, {len(report)} bytes"
    assert header in lines, as_text.stdout
    shown = lines[lines.index(header) + 1 : lines.index("  transitions:")]
    assert shown == [f"             | {line}" for line in REPORT_LINES[-10:]]

    assert helped.returncode == 0, helped
    for option in ("--stall-timeout-s", "--on-stall", "--on-rebalance"):
        assert option in helped.stdout, option
    assert "checkpoint-stop" in helped.stdout
    assert helped.stderr == ""
