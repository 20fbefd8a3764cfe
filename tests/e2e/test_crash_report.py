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
        "--on-crash", "keep",
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
    assert run["reason"] == (
        "failure marker FAILED: exit code 1; on_crash=keep leaves the instance running for a person"
    )
    assert fleet.state(instance) == "running"
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


def test_a_failure_marker_stops_the_instance_with_the_crash_report_attached(
    shared: Cli, fleet: Fleet
) -> None:
    (instance,) = fleet.launch()
    shared.attach("crash-stop-1", instance, fleet.prefix("crash-stop-1"), "--max-duration", "2d")
    shared.wait_db_phase("crash-stop-1", "running")
    shown = shared.ctl("status", "crash-stop-1")
    assert shown.returncode == 0, shown
    assert (
        "  time left  " in shown.stdout and "of max_duration 2d00h, then a stop" in shown.stdout
    ), shown.stdout
    fleet.put("runs/crash-stop-1/crash/error.log", "\n".join(REPORT_LINES) + "\n")
    fleet.put("runs/crash-stop-1/FAILED", "exit code 1")

    shared.wait_db_phase("crash-stop-1", "stopped")
    wait_for(
        lambda: attachments(shared, "crash-stop-1") == 1,
        message=lambda: f"the crash report to be attached{shared.log_tail()}",
    )
    assert fleet.state(instance) == "stopped"
    run = shared.ctl_json("status", "crash-stop-1", "--json")
    assert (run["phase"], run["outcome"]) == ("stopped", "crashed")
    assert [t["to"] for t in run["transitions"]][-2:] == ["stopping", "stopped"]
    assert run["transitions"][-2]["reason"] == (
        "failure marker FAILED: exit code 1; on_crash=stop: stop requested"
    )
    assert_chained(run["transitions"])
    assert [a["action"] for a in run["actions"]] == ["stop"], run["actions"]
    assert run["max_duration_at"] is None
    shown = shared.ctl_json("show", "crash-stop-1")  # counted from the FAILED marker
    assert shown["job_ended_at"] is not None and shown["idle_after_end_s"] >= 0, shown
    found = shared.ctl("runs", "--outcome", "crashed")
    assert found.returncode == 0, found
    assert "crash-stop-1" in found.stdout


def test_a_bad_max_duration_is_refused_on_one_line_naming_it(shared: Cli, fleet: Fleet) -> None:
    (instance,) = fleet.launch()
    done = shared.ctl(
        "attach", "bad-duration-1", "--instance-id", instance,
        "--s3-prefix", fleet.prefix("bad-duration-1"), "--max-duration", "12x",
    )  # fmt: skip
    assert done.returncode in (1, 2), done
    assert "Traceback" not in done.stderr, done
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "max_duration '12x': give seconds, or a number with s, m, h or d" in lines[0]
    assert shared.db_run("bad-duration-1") is None
