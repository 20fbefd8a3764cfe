"""`supervisord status` names this daemon's replica id and role, and lists the replicas on its
database with their heartbeats and the runs they own (issue 14)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from supervisor.cli.supervisord import _print_replicas
from supervisor.cli.views import DaemonStatus


def _answer(**fields: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "pid": 4242,
        "version": "0.1.0",
        "started_at": (now - timedelta(hours=1)).isoformat(),
        "state_dir": "/var/lib/supervisor",
        "socket": "/var/lib/supervisor/supervisord.sock",
        "runs_by_phase": {"running": 3},
        "monitors": 2,
        "aws_calls": {},
        **fields,
    }


def _replica(replica_id: str, *, alive: bool, runs: int, state: str = "running") -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "replica_id": replica_id,
        "host": "box-1",
        "pid": 7,
        "state": state,
        "started_at": (now - timedelta(hours=2)).isoformat(),
        "heartbeat_at": (now - timedelta(seconds=5 if alive else 600)).isoformat(),
        "alive": alive,
        "runs_owned": runs,
    }


def test_a_replica_lists_every_replica_not_stopped_with_its_heartbeat_and_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    answer = _answer(
        replica_id="box-1-7",
        role="replica",
        runs_owned=2,
        replicas=[
            _replica("box-1-7", alive=True, runs=2),
            _replica("box-2-9", alive=False, runs=1),
            _replica("box-3-1", alive=False, runs=0, state="stopped"),
        ],
    )

    _print_replicas(DaemonStatus.from_json(answer))

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "replica: box-1-7, one of several: owns 2 run(s)"
    assert lines[1] == "replicas:"
    assert lines[2].split()[:5] == ["box-1-7", "box-1", "running", "alive", "heartbeat"]
    assert lines[2].endswith(", 2 run(s)")
    assert lines[3].split()[:4] == ["box-2-9", "box-1", "running", "silent"]
    assert len(lines) == 4  # a stopped replica is not listed


def test_a_sqlite_daemon_says_it_is_the_sole_one(capsys: pytest.CaptureFixture[str]) -> None:
    answer = _answer(replica_id="vm-12", role="sole", runs_owned=2, replicas=[])
    _print_replicas(DaemonStatus.from_json(answer))
    assert capsys.readouterr().out == (
        "replica: vm-12, sole daemon on its database (holds every run)\n"
    )


def test_an_older_daemons_answer_without_replicas_prints_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _print_replicas(DaemonStatus.from_json(_answer()))
    assert capsys.readouterr().out == ""
