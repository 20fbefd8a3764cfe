"""What `supervisorctl status` prints that depends on a run's phases: when a grace ends, and
the checkpoint facts of the current attempt only (those after the last resume)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from supervisor.cli import supervisorctl
from tests.core.builders import INSTANCE

SINCE = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def run_json(**changes: Any) -> dict[str, Any]:
    return {
        "run_id": "r1",
        "phase": "running",
        "outcome": None,
        "instance_id": INSTANCE,
        "region": "us-east-1",
        "s3_prefix": "s3://my-runs/r1/",
        "on_complete": "stop",
        "reason": "instance running",
        "version": 3,
        "phase_since": SINCE.isoformat(),
        **changes,
    }


def transition(seq: int, to: str, reason: str, **detail: Any) -> dict[str, Any]:
    at = (SINCE + timedelta(minutes=seq)).isoformat()
    return {"seq": seq, "from": None, "to": to, "at": at, "reason": reason, "detail": detail}


def test_the_runs_table_says_when_the_grace_of_a_run_in_grace_ends(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ends = datetime.now(UTC) + timedelta(minutes=10)
    supervisorctl._print_table(
        [run_json(phase="grace", grace_until=ends.isoformat())], as_json=False
    )
    assert "grace ends in" in capsys.readouterr().out


def test_the_runs_table_has_an_eta_column_for_a_job_reporting_progress(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ends = datetime.now(UTC) + timedelta(hours=2, minutes=5)
    supervisorctl._print_table(
        [run_json(estimated_end=ends.isoformat()), run_json(run_id="r2")], as_json=False
    )
    header, with_eta, without = capsys.readouterr().out.splitlines()
    assert header.split()[-1] == "ETA"
    assert with_eta.split()[-2:] in (["in", "2h05m"], ["in", "2h04m"])
    assert without.split()[-1] == "-"


def test_status_run_says_when_training_is_estimated_to_end(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ends = datetime.now(UTC) - timedelta(minutes=3)
    detail = run_json(estimated_end=ends.isoformat(), spec={}, transitions=[])
    supervisorctl._print_detail(detail, as_json=False)
    line = next(line for line in capsys.readouterr().out.splitlines() if "ETA" in line)
    assert "due 3m0" in line and f"{ends:%Y-%m-%d %H:%M:%S} UTC" in line


def test_status_json_carries_the_estimated_end_as_the_daemon_sent_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    supervisorctl._print_table([run_json(estimated_end="2026-01-05T14:00:00Z")], as_json=True)
    assert '"estimated_end": "2026-01-05T14:00:00Z"' in capsys.readouterr().out


def test_checkpoint_facts_are_the_current_attempts_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    verified = "checkpoint verified in S3"
    detail = run_json(
        phase="running",
        checkpoint="s3://my-runs/r1/checkpoints/step_9.pt",
        spec={"checkpoint_dir": "/ckpt"},
        transitions=[
            transition(1, "grace", verified, files=1, bytes=111, verify_s=1.5),
            transition(2, "resuming", "resume requested"),
            transition(3, "grace", verified, files=2, bytes=222),
        ],
    )
    supervisorctl._print_detail(detail, as_json=False)
    line = next(line for line in capsys.readouterr().out.splitlines() if "checkpoint " in line)
    assert "2 file(s), 222 bytes verified" in line
    assert "111 bytes" not in line


def test_status_of_a_run_shows_what_idle_detection_last_saw(
    capsys: pytest.CaptureFixture[str],
) -> None:
    said = "cpu utilisation: no datapoints covering the last 1800s (none); not counted as idle"
    detail = run_json(spec={"idle_below": 5.0}, transitions=[], utilisation=said)
    supervisorctl._print_detail(detail, as_json=False)
    assert f"  idle       {said}" in capsys.readouterr().out.splitlines()


def test_status_of_a_run_without_idle_detection_has_no_idle_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    supervisorctl._print_detail(run_json(spec={}, transitions=[]), as_json=False)
    assert "idle " not in capsys.readouterr().out
