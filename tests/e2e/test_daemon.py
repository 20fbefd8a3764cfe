"""The real daemon process: completion, crash detection, kill -9 mid-transition, restarts,
retried AWS errors. Each test drives `supervisord` and `supervisorctl` as subprocesses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Fleet
from tests.e2e.conftest import Cli, assert_chained, pid_alive, wait_for

pytestmark = pytest.mark.e2e

COMPLETED_PATH = ["pending", "running", "grace", "stopping", "stopped"]


def phases(run: dict[str, Any]) -> list[str]:
    return [t["to"] for t in run["transitions"]]


def test_completed_run_is_stopped_through_grace(shared: Cli, fleet: Fleet) -> None:
    (instance,) = fleet.launch()
    attached = shared.attach("complete-1", instance, fleet.prefix("complete-1"))
    assert attached["phase"] == "pending"
    shared.wait_db_phase("complete-1", "running")
    assert fleet.state(instance) == "running"

    fleet.put("runs/complete-1/COMPLETE")
    run = shared.wait_phase("complete-1", "stopped")

    assert run["outcome"] == "completed"
    assert fleet.state(instance) == "stopped"
    assert phases(run) == COMPLETED_PATH
    assert [t["seq"] for t in run["transitions"]] == [1, 2, 3, 4, 5]
    assert_chained(run["transitions"])
    assert [(a["action"], a["outcome"]) for a in run["actions"]] == [("stop", "accepted")]


def test_on_complete_terminate_and_none(shared: Cli, fleet: Fleet) -> None:
    gone, kept = fleet.launch(2)
    fleet.put("runs/oc-terminate/done")
    fleet.put("runs/oc-none/training_complete.txt")
    shared.attach("oc-terminate", gone, fleet.prefix("oc-terminate"), "--on-complete", "terminate")
    shared.attach("oc-none", kept, fleet.prefix("oc-none"), "--on-complete", "none")

    terminated = shared.wait_phase("oc-terminate", "terminated")
    done = shared.wait_phase("oc-none", "done")

    assert terminated["outcome"] == "completed"
    assert phases(terminated) == ["pending", "running", "grace", "terminating", "terminated"]
    assert_chained(terminated["transitions"])
    assert [(a["action"], a["outcome"]) for a in terminated["actions"]] == [
        ("terminate", "accepted")
    ]
    assert fleet.state(gone) == "terminated"

    assert done["outcome"] == "completed"
    assert phases(done) == ["pending", "running", "grace", "done"]
    assert_chained(done["transitions"])
    assert done["actions"] == []
    assert fleet.state(kept) == "running"


def test_instance_gone_without_a_marker_is_a_crash(shared: Cli, fleet: Fleet) -> None:
    (instance,) = fleet.launch()
    shared.attach("lost-1", instance, fleet.prefix("lost-1"))
    # --no-verify: registered before its instance exists (here: it never will).
    shared.attach("ghost-1", "i-0123456789abcdef0", fleet.prefix("ghost-1"), "--no-verify")
    shared.wait_db_phase("lost-1", "running")

    fleet.terminate(instance)
    # A few reconcile intervals (0.3 s each), with room for this 2-core machine.
    lost = shared.wait_phase("lost-1", "crashed", timeout=6)
    ghost = shared.wait_phase("ghost-1", "crashed", timeout=6)

    assert lost["outcome"] == "crashed"
    assert "terminated" in lost["reason"]
    assert phases(lost) == ["pending", "running", "crashed"]
    assert_chained(lost["transitions"])
    assert lost["actions"] == []

    assert ghost["outcome"] == "crashed"
    assert "before training started" in ghost["reason"]
    assert phases(ghost) == ["pending", "crashed"]
    assert ghost["actions"] == []


def test_kill_9_between_stop_intent_and_stop_call_is_repaired_once(cli: Cli, fleet: Fleet) -> None:
    (instance,) = fleet.launch()
    first = cli.start_daemon(SUPERVISOR_FAULTS="StopInstances=hang")
    cli.attach("exp1", instance, fleet.prefix("exp1"))
    cli.wait_db_phase("exp1", "running")
    fleet.put("runs/exp1/COMPLETE")
    # The stop intent is committed; the daemon then blocks inside StopInstances (the fault
    # hook sits before the request is sent, so moto never sees it).
    assert cli.wait_phase("exp1", "stopping")["actions"] == []

    assert cli.kill_daemon() == first
    assert fleet.state(instance) == "running"
    down = cli.ctl("status")  # the killed daemon's socket file is left behind
    assert down.returncode == 1, down
    assert "supervisord is not running" in down.stderr, down

    second = cli.start_daemon()
    assert second != first
    run = cli.wait_phase("exp1", "stopped")

    assert fleet.state(instance) == "stopped"
    assert run["outcome"] == "completed"
    assert_chained(run["transitions"])
    assert phases(run) == COMPLETED_PATH
    edges = [(t["from"], t["to"]) for t in run["transitions"]]
    assert edges.count(("stopping", "stopped")) == 1
    assert [(a["action"], a["outcome"], a["attempts"]) for a in run["actions"]] == [
        ("stop", "accepted", 1)
    ]
    calls = cli.daemon_status()["aws_calls"]
    assert calls.get("ec2:StopInstances") == 1, calls


def test_sigterm_exits_promptly_and_restart_readopts_runs(cli: Cli, fleet: Fleet) -> None:
    (instance,) = fleet.launch()
    # An idle monitor has nothing in flight, so the stop must not wait out the shutdown timeout:
    # an hour here, far beyond the command timeout `supervisord stop` runs under in `cli`.
    hour = {"SUPERVISOR_SHUTDOWN_TIMEOUT_S": "3600"}
    pid = cli.start_daemon(**hour)
    cli.attach("exp1", instance, fleet.prefix("exp1"))
    cli.wait_db_phase("exp1", "running")

    done = cli.supervisord("stop", **hour)
    assert done.returncode == 0, done.stderr
    assert f"pid {pid}" in done.stdout
    wait_for(lambda: not pid_alive(pid), 2, f"pid {pid} to be gone after supervisord stop")
    assert not cli.socket_path.exists()
    assert fleet.state(instance) == "running"

    second = cli.start_daemon()
    started_events = [
        json.loads(line)
        for line in cli.log_path.read_text().splitlines()
        if '"daemon_started"' in line
    ]
    assert [(e["pid"], e["readopted"]) for e in started_events] == [(pid, 0), (second, 1)]
    assert cli.db_run("exp1") is not None
    fleet.put("runs/exp1/COMPLETE")
    run = cli.wait_phase("exp1", "stopped")

    assert run["outcome"] == "completed"
    assert fleet.state(instance) == "stopped"
    assert phases(run) == COMPLETED_PATH
    assert_chained(run["transitions"])


def test_throttled_stop_is_retried_then_accepted(cli: Cli, fleet: Fleet) -> None:
    (instance,) = fleet.launch()
    fleet.put("runs/exp1/COMPLETE")
    cli.start_daemon(SUPERVISOR_FAULTS="StopInstances=RequestLimitExceeded*2")
    cli.attach("exp1", instance, fleet.prefix("exp1"))
    run = cli.wait_phase("exp1", "stopped")

    assert run["outcome"] == "completed"
    assert fleet.state(instance) == "stopped"
    assert phases(run) == COMPLETED_PATH
    assert_chained(run["transitions"])
    assert [(a["action"], a["outcome"], a["attempts"]) for a in run["actions"]] == [
        ("stop", "accepted", 3)
    ]
    calls = cli.daemon_status()["aws_calls"]
    assert calls.get("ec2:StopInstances") == 3, calls
