"""The real `supervisorctl` and `supervisord` commands: requests, refusals, exit codes,
messages, following a run, and what the daemon leaves on disk."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
from typing import Any

import pytest

from tests.conftest import Fleet
from tests.e2e.conftest import SUPERVISORCTL, TERMINAL, Cli, assert_chained, pid_alive, wait_for

pytestmark = pytest.mark.e2e


def test_bad_input_is_refused_and_changes_nothing(shared: Cli, fleet: Fleet) -> None:
    first, other = fleet.launch(2)
    prefix = fleet.prefix("input-1")
    shared.attach("input-1", first, prefix)
    shared.wait_db_phase("input-1", "running")
    # Every other run of the shared daemon has ended: nothing else writes meanwhile.
    wait_for(
        lambda: all(row[2] in TERMINAL for row in shared.db_dump()["runs"] if row[0] != "input-1"),
        message="the shared daemon's earlier runs to end",
    )
    before = shared.db_dump()

    bad_id, bad_url = "i-12345xyz", "https://runs-bucket/runs/x/"
    attach = ("attach", "--s3-prefix", prefix)
    results = shared.ctl_all(
        (*attach, "input-2", "--instance-id", bad_id),
        ("attach", "input-2", "--instance-id", other, "--s3-prefix", bad_url),
        (*attach, "input-1", "--instance-id", other),
        (*attach, "input-2", "--instance-id", first),
        (*attach, "input-2", "--instance-id", other, "--grace-s", "-1"),
        ("status", "no-such-run"),
        ("stop", "no-such-run"),
        ("tail", "no-such-run"),
    )
    malformed, url, duplicate, watched, negative, *unknown = results

    assert malformed.returncode == 1, malformed
    assert bad_id in malformed.stderr and "instance id" in malformed.stderr
    assert url.returncode == 1, url
    assert bad_url in url.stderr and "S3 prefix" in url.stderr
    assert duplicate.returncode == 1, duplicate
    assert "run id 'input-1' is taken: that run is still active" in duplicate.stderr
    assert watched.returncode == 1, watched
    assert f"instance {first} is already watched by run 'input-1'" in watched.stderr
    assert negative.returncode == 1, negative
    assert "grace_s" in negative.stderr and "-1" in negative.stderr
    for done in unknown:
        assert done.returncode == 1, done
        assert "no run 'no-such-run' is attached" in done.stderr, done
    for done in results:
        assert done.stdout == "", done
        assert "Traceback" not in done.stderr, done

    usage = shared.ctl()
    assert usage.returncode == 2, usage
    assert "usage: supervisorctl" in usage.stderr

    assert shared.db_dump() == before
    assert fleet.state(other) == "running"


def test_daemon_down_is_reported_with_the_way_out(cli: Cli) -> None:
    status, stop = cli.ctl("status"), cli.supervisord("stop")

    assert status.returncode == 1, status
    assert status.stdout == "", status
    assert status.stderr.strip() == (
        f"supervisorctl: supervisord is not running (no socket at {cli.socket_path}): "
        "start it with `supervisord start`"
    )
    assert stop.returncode == 1, stop
    assert "supervisord is not running" in stop.stderr, stop


def test_one_daemon_per_state_dir_and_private_files(cli: Cli) -> None:
    cli.state_dir.chmod(0o755)
    pid = cli.start_daemon()

    assert stat.S_IMODE(cli.state_dir.stat().st_mode) == 0o700
    socket = cli.socket_path.stat()
    assert stat.S_ISSOCK(socket.st_mode)
    assert stat.S_IMODE(socket.st_mode) == 0o600
    assert stat.S_IMODE(cli.db_path.stat().st_mode) == 0o600

    again = cli.supervisord("start")
    assert again.returncode != 0, again
    assert f"already running (pid {pid})" in again.stderr, again.stderr
    assert cli.daemon_pid() == pid
    assert pid_alive(pid)
    assert cli.socket_path.is_socket()


def test_supervisord_status_reports_pid_runs_and_calls(shared: Cli, fleet: Fleet) -> None:
    pid = shared.daemon_pid()

    text = shared.supervisord("status")
    assert text.returncode == 0, text.stderr
    assert f"pid {pid}" in text.stdout

    status: dict[str, Any] = shared.daemon_status()
    assert status["pid"] == pid
    assert isinstance(status["runs_by_phase"], dict)
    assert isinstance(status["aws_calls"], dict)
    assert {"reconciler": 0, "zombies": 0}.items() <= status["root_task_restarts"].items()
    assert "root task restarts: " in text.stdout and "reconciler 0" in text.stdout
    # Issue 14: where the run database is (the SQLite file here).
    assert f"\ndatabase: {shared.db_path}\n" in text.stdout
    assert status["database"] == str(shared.db_path)


def test_attach_refuses_a_typo_or_a_shared_prefix_in_one_line_and_stores_nothing(
    shared: Cli, fleet: Fleet
) -> None:
    first, other = fleet.launch(2)
    shared.attach("verify-1", first, fleet.prefix("verify-1"))
    shared.wait_db_phase("verify-1", "running")
    wait_for(
        lambda: all(row[2] in TERMINAL for row in shared.db_dump()["runs"] if row[0] != "verify-1"),
        message="the shared daemon's earlier runs to end",
    )
    before = shared.db_dump()

    typo, inside = "i-0123456789abcdef0", fleet.prefix("verify-1") + "eval/"
    attach = ("attach", "verify-2", "--instance-id")
    results = shared.ctl_all(
        (*attach, typo, "--s3-prefix", fleet.prefix("verify-2")),
        (*attach, other, "--s3-prefix", "s3://no-such-bucket-e2e/runs/verify-2/"),
        (*attach, other, "--s3-prefix", inside),
        ("attach", "verify-1", "--instance-id", other, "--s3-prefix", fleet.prefix("verify-3")),
    )

    for done in results:
        assert done.returncode == 1, done
        assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
    typo_said, bucket_said, inside_said, taken_said = (r.stderr for r in results)
    assert f"instance {typo} not found in region us-east-1" in typo_said
    assert "--no-verify" in typo_said
    assert (
        "bucket no-such-bucket-e2e does not exist or is not reachable: NoSuchBucket" in bucket_said
    )
    assert (
        f"overlaps {fleet.prefix('verify-1')}, the prefix of active run 'verify-1'" in inside_said
    )
    assert "run id 'verify-1' is taken: that run is still active" in taken_said
    assert "detach" not in taken_said
    assert shared.db_dump() == before


def test_stop_and_detach_requests(shared: Cli, fleet: Fleet) -> None:
    cancelled, kept = fleet.launch(2)
    shared.attach("cancel-1", cancelled, fleet.prefix("cancel-1"))
    shared.attach("detach-1", kept, fleet.prefix("detach-1"))
    shared.wait_db_phase("cancel-1", "running")
    shared.wait_db_phase("detach-1", "running")

    requested = shared.ctl_json("stop", "cancel-1")
    assert (requested["phase"], requested["outcome"]) == ("stopping", "cancelled")
    detached = shared.ctl_json("detach", "detach-1")
    assert detached["phase"] == "detached"

    run = shared.wait_phase("cancel-1", "stopped")
    assert run["outcome"] == "cancelled"
    assert [t["to"] for t in run["transitions"]] == ["pending", "running", "stopping", "stopped"]
    assert_chained(run["transitions"])
    assert [(a["action"], a["outcome"]) for a in run["actions"]] == [("stop", "accepted")]
    assert fleet.state(cancelled) == "stopped"

    again, late = shared.ctl_all(("stop", "cancel-1"), ("terminate", "detach-1"))
    assert again.returncode == 1, again
    assert "run 'cancel-1' is already stopped: nothing to stop" in again.stderr
    assert late.returncode == 1, late
    assert "run 'detach-1' is already detached: nothing to terminate" in late.stderr

    rows = shared.db_dump()
    left = shared.db_run("detach-1")
    assert left is not None
    assert (left["phase"], left["outcome"]) == ("detached", None)
    assert [t[4] for t in rows["transitions"] if t[1] == "detach-1"] == [
        "pending",
        "running",
        "detached",
    ]
    assert [a for a in rows["actions"] if a[1] == "detach-1"] == []
    assert fleet.state(kept) == "running"


def test_show_and_report_give_the_idle_seconds_after_a_completed_runs_end(
    shared: Cli, fleet: Fleet
) -> None:
    (instance,) = fleet.launch()
    shared.attach("idle-end-1", instance, fleet.prefix("idle-end-1"))
    shared.wait_db_phase("idle-end-1", "running")
    fleet.put("runs/idle-end-1/COMPLETE")
    shared.wait_db_phase("idle-end-1", "stopped")

    shown = shared.ctl_json("show", "idle-end-1")
    assert shown["job_ended_at"] is not None, shown
    assert shown["idle_after_end_s"] >= 0, shown
    table = shared.ctl("show", "idle-end-1")
    assert table.returncode == 0, table
    assert "  idle after end " in table.stdout, table.stdout
    report = shared.ctl_json("report")
    assert sum(day["runs"] for day in report["idle_days"]) >= 1, report
    printed = shared.ctl("report")
    assert "idle instance-seconds after the end" in printed.stdout, printed.stdout


def test_tail_follow_prints_later_transitions_and_exits_at_the_end(
    shared: Cli, fleet: Fleet
) -> None:
    (instance,) = fleet.launch()
    shared.attach("tail-1", instance, fleet.prefix("tail-1"))
    shared.wait_db_phase("tail-1", "running")

    lines: list[str] = []
    follower = subprocess.Popen(
        [SUPERVISORCTL, "tail", "tail-1", "-f"],
        env=shared.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(follower.stdout or ()), daemon=True)
    try:
        reader.start()
        # History first: the follower is connected once it has printed `pending -> running`.
        wait_for(
            lambda: any("pending -> running" in line for line in lines),
            message=lambda: f"tail -f to print the history; got {lines}",
        )
        assert follower.poll() is None, "tail -f exited before the run ended"
        fleet.put("runs/tail-1/COMPLETE")
        code = follower.wait(timeout=20)
        reader.join(timeout=5)
    finally:
        if follower.poll() is None:
            follower.send_signal(signal.SIGKILL)
            follower.wait()
    stderr = follower.stderr.read() if follower.stderr else ""

    assert code == 0, stderr
    moves = [line.split("  ")[1] for line in lines if " -> " in line]
    assert moves == [
        "- -> pending",
        "pending -> running",
        "running -> grace",
        "grace -> stopping",
        "stopping -> stopped",
    ], lines
    assert fleet.state(instance) == "stopped"
    assert os.path.exists(shared.socket_path)
