"""The short fault soak that `make test` runs: the harness of `make soak` (tests/soak/) with 40
runs and 5 SIGKILLs of the real daemon, as its own process: it starts a moto server, the daemon,
trainers and the instance program, and nothing of it stays in this one. It takes 35-70 s on an
idle machine; its budget is far wider (a loaded 2-core machine must not fail it for being slow:
the checks judge what happened, not how fast). Then the short replicated soak: two replicas on a
throwaway PostgreSQL server, one SIGKILLed, one SIGSTOPped. Below them, the checks themselves are
shown to catch what they are for, on made-up evidence (the lease check too)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.soak import checks
from tests.soak.aws import Ec2Call
from tests.soak.database import LeaseHistory, LeaseState
from tests.soak.plan import RunPlan, Story

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BUDGET_S = 420
SHORT = (
    *("--runs", "40", "--kills", "5", "--seed", "2"),
    *("--budget-s", str(BUDGET_S), "--active-s", "25"),
)


@pytest.mark.timeout(BUDGET_S + 60)
def test_a_short_fault_soak_ends_every_run_as_its_story_says_without_a_violation() -> None:
    figures, output = soak(*SHORT)

    assert figures["violations"] == "0", output
    assert figures["attached"] == "40", output
    assert int(figures["kills"]) >= 5 and int(figures["restarts"]) >= 5, output
    assert int(figures["faults"]) > 0 and int(figures["sqs_duplicates"]) > 0, output


REPLICATED = (
    *("--replicas", "2", "--runs", "10", "--kills", "1", "--stops", "1", "--seed", "3"),
    *("--budget-s", str(BUDGET_S), "--active-s", "8"),
)


@pytest.mark.timeout(BUDGET_S + 60)
def test_a_short_replicated_soak_ends_every_run_and_no_replica_acts_without_its_lease() -> None:
    """Two replicas on a throwaway PostgreSQL server, one SIGKILL and one SIGSTOP (`make soak
    SOAK_ARGS='--replicas 3'` is the long one); about 30 s alone."""
    figures, output = soak(*REPLICATED)

    assert figures["violations"] == "0" and figures["replicas"] == "2", output
    assert figures["attached"] == "10", output
    assert int(figures["kills"]) >= 1 and int(figures["stops"]) >= 1, output
    assert int(figures["lease_checked"]) > 0, output
    assert "soak: lease: actions by a replica without a valid lease" in output, output


def soak(*args: str) -> tuple[dict[str, str], str]:
    """`python -m tests.soak ARGS`, which must exit 0 with one summary line: its figures,
    and the whole output (for a failure's message)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.soak", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUDGET_S + 30,
        check=False,
    )
    output = f"{done.stdout}\n--- stderr (tail) ---\n{done.stderr[-4000:]}"
    summaries = [line for line in done.stdout.splitlines() if line.startswith("soak: seed=")]
    assert len(summaries) == 1, f"expected one summary line:\n{output}"
    assert done.returncode == 0, output
    return dict(re.findall(r"(\w+)=(\S+)", summaries[0])), output


# -- the checks catch what they are for (synthetic evidence, no processes) ----------------------

T0 = 1_800_000_000.0


def iso(offset_s: float) -> str:
    return datetime.fromtimestamp(T0 + offset_s, UTC).isoformat()


def stopped_run(**plan_changes: Any) -> tuple[RunPlan, dict[str, list[dict[str, Any]]]]:
    """A completed run with on_complete=stop, as the daemon records it: the stop intent at
    3 s, the call's success recorded (action_acked_at) at 4 s, stopped at 5 s."""
    plan = RunPlan("r1", Story.COMPLETE, attach_at=0, act_after=1, instance_id="i-1")
    plan.attached = True
    for key, value in plan_changes.items():
        setattr(plan, key, value)
    path = [(None, "pending"), ("pending", "running"), ("running", "grace")]
    path += [("grace", "stopping"), ("stopping", "stopped")]
    transitions = [
        {"id": seq, "run_id": "r1", "seq": seq, "from_phase": a, "to_phase": b,
         "at": iso(seq - 1), "reason": "because"}
        for seq, (a, b) in enumerate(path, start=1)
    ]  # fmt: skip
    run = {
        "run_id": "r1",
        "phase": "stopped",
        "version": 5,
        "instance_id": "i-1",
        "reason": "instance stopped",
        "checkpoint": None,
        "action_acked_at": iso(3.5),
    }
    tables: dict[str, list[dict[str, Any]]] = {
        "runs": [run],
        "transitions": transitions,
        "instances": [{"run_id": "r1", "instance_id": "i-1"}],
        "actions": [],
        "zombies": [],
        "terminations": [],
    }
    return plan, tables


def stop_at(offset_s: float, operation: str = "StopInstances") -> Ec2Call:
    return Ec2Call(T0 + offset_s, "daemon", operation, ("i-1",), 200)


def violations(
    plan: RunPlan,
    tables: dict[str, list[dict[str, Any]]],
    calls: list[Ec2Call],
    state: str = "stopped",
) -> tuple[list[str], Counter[str]]:
    found = checks.evidence([plan], tables, {"i-1": state}, calls)
    return checks.run_all(found), found.counts


def test_a_clean_history_passes_every_check() -> None:
    plan, tables = stopped_run()

    found, counts = violations(plan, tables, [stop_at(3.2)])

    assert found == []
    assert (counts["stops"], counts["redrives"]) == (1, 0)


def test_a_second_stop_after_the_success_was_recorded_is_a_violation() -> None:
    plan, tables = stopped_run()

    found, _ = violations(plan, tables, [stop_at(3.2), stop_at(3.7)])

    assert len(found) == 1 and "succeeded again" in found[0] and "run r1 seq 4" in found[0]


def test_a_stop_redriven_before_its_success_was_recorded_is_counted_not_flagged() -> None:
    plan, tables = stopped_run()

    found, counts = violations(plan, tables, [stop_at(3.1), stop_at(3.3)])

    assert found == []
    assert counts["redrives"] == 1


def test_a_stop_no_intent_explains_is_a_violation() -> None:
    plan, tables = stopped_run()

    found, _ = violations(plan, tables, [stop_at(1.5), stop_at(3.2)])

    assert len(found) == 1 and "no intent explains it" in found[0]


def test_a_terminate_of_a_checkpointed_run_without_a_verified_checkpoint_is_a_violation() -> None:
    plan, tables = stopped_run(checkpoint=True, on_complete="terminate")
    tables["transitions"][3]["to_phase"] = "terminating"
    tables["transitions"][4].update(from_phase="terminating", to_phase="terminated")
    tables["runs"][0].update(phase="terminated", checkpoint="unverified")

    found, _ = violations(plan, tables, [stop_at(3.2, "TerminateInstances")], state="terminated")

    assert any(v.startswith("checkpoint: i-1") for v in found), found
    assert any("is terminated with checkpoint unverified" in v for v in found), found
    assert any(v.startswith("phase: r1") and "expected stopped" in v for v in found), found


def test_a_gap_in_the_transitions_is_a_broken_chain() -> None:
    plan, tables = stopped_run()
    del tables["transitions"][2]

    found, _ = violations(plan, tables, [stop_at(3.2)])

    assert any(v.startswith("chain: r1 seq is not") for v in found), found


def test_a_wrong_phase_a_running_instance_and_a_lost_run_are_violations() -> None:
    plan, tables = stopped_run()
    lost = RunPlan("r2", Story.SPOT, attach_at=0, act_after=1, instance_id="i-2")
    lost.attached = True

    found = checks.run_all(
        checks.evidence([plan, lost], tables, {"i-1": "running", "i-2": "terminated"}, [])
    )

    assert any("instance: i-1 is running, expected stopped/stopping" in v for v in found)
    assert any("r2 was attached but is not in the database (lost)" in v for v in found)


# -- with replicas: no action without a valid lease (synthetic lease histories) ------------------


def replica_stop(offset_s: float, actor: str = "soak-r1") -> Ec2Call:
    """A StopInstances by `actor` that reached the tap at `offset_s` (answered 10 ms later)."""
    at = T0 + offset_s
    return Ec2Call(at + 0.01, actor, "StopInstances", ("i-1",), 200, arrived=at)


def lease_violations(calls: list[Ec2Call], leases: LeaseHistory) -> list[str]:
    plan, tables = stopped_run()
    found = checks.evidence([plan], tables, {"i-1": "stopped"}, calls, leases)
    return [v for v in checks.run_all(found) if v.startswith("lease:")]


def held(owner: str | None, epoch: int, since_s: float, until_s: float) -> LeaseState:
    return LeaseState(T0 + since_s, owner, epoch, T0 + until_s if owner else None)


def test_a_stop_sent_while_the_replica_held_the_runs_lease_passes() -> None:
    leases = {("run", "r1"): [held("soak-r1", 1, 0, 2.0), held("soak-r1", 1, 1.5, 4.0)]}

    assert lease_violations([replica_stop(3.2)], leases) == []


def test_a_stop_sent_after_the_lease_expired_or_moved_is_a_violation() -> None:
    expired = {("run", "r1"): [held("soak-r1", 1, 0, 3.0)]}
    moved = {("run", "r1"): [held("soak-r1", 1, 0, 9.0), held("soak-r2", 2, 3.0, 9.0)]}

    late = lease_violations([replica_stop(3.2)], expired)
    stale = lease_violations([replica_stop(3.2)], moved)

    assert len(late) == 1 and "soak-r1 sent StopInstances i-1" in late[0], late
    assert "without run r1's lease: soak-r1 held it (epoch 1)" in late[0], late
    assert len(stale) == 1 and "soak-r2 held it (epoch 2)" in stale[0], stale


def test_an_action_on_an_ended_runs_instance_needs_the_leader_duty_lease() -> None:
    """After the run's terminal transition (at 4 s) its instance is a zombie: only the
    holder of the leader duty may act on it."""
    run_lease = {("run", "r1"): [held("soak-r1", 1, 0, 60.0)]}
    leader = {("duty", "leader"): [held("soak-r2", 1, 0, 60.0)]}

    by_owner_of_the_run = lease_violations([replica_stop(5.0)], run_lease | leader)
    by_leader = lease_violations([replica_stop(5.0, actor="soak-r2")], run_lease | leader)

    assert len(by_owner_of_the_run) == 1, by_owner_of_the_run
    assert "without the leader duty lease: soak-r2 held it" in by_owner_of_the_run[0]
    assert by_leader == []
