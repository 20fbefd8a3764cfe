"""Two real `supervisord` processes on one PostgreSQL database (issue 14): a run attached
through replica A is stopped through replica B, whose `supervisorctl` gets A's answer; `tail
-f` through B follows what A commits; and `status` through either lists it.

Both replicas start before the run exists, so A (which attached it) is the one that watches
it; B has no monitor for it and hands the stop to A through the run inbox (LISTEN/NOTIFY).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import Fleet
from tests.e2e.conftest import SUPERVISORCTL, Cli, assert_chained, cli_for, wait_for

REPLICA_TIMINGS = {
    "SUPERVISOR_INBOX_POLL_S": "60",
    "SUPERVISOR_COMMAND_TIMEOUT_S": "30",
    "SUPERVISOR_LEASE_TTL_S": "3600",
}
"""A minute's inbox poll: only the notices explain an answer within the command's timeout.
Leases of an hour: no fair-share hand-over moves the run from A to B during the test."""


@pytest.fixture
def replicas(aws_env: dict[str, str], pg_url: str) -> Iterator[tuple[Cli, Cli]]:
    with cli_for(aws_env) as a, cli_for(aws_env) as b:
        for name, replica in (("replica-a", a), ("replica-b", b)):
            replica.env |= {
                **REPLICA_TIMINGS,
                "SUPERVISOR_DATABASE_URL": pg_url,
                "SUPERVISOR_REPLICA_ID": name,
            }
        yield a, b


def db_run(url: str, run_id: str) -> dict[str, Any] | None:
    with psycopg.connect(url) as conn:
        cursor = conn.execute(
            "SELECT phase, outcome, reason FROM runs WHERE run_id = %s", (run_id,)
        )
        row = cursor.fetchone()
    return None if row is None else {"phase": row[0], "outcome": row[1], "reason": row[2]}


def inbox(url: str) -> list[tuple[str, str, str, str, str | None]]:
    with psycopg.connect(url) as conn:
        return [
            (r[0], r[1], r[2], r[3], r[4])
            for r in conn.execute(
                "SELECT run_id, kind, state, created_by, answered_by FROM inbox ORDER BY created_at"
            )
        ]


def wait_phase(url: str, run_id: str, phase: str, replica: Cli) -> None:
    wait_for(
        lambda: (db_run(url, run_id) or {}).get("phase") == phase,
        message=lambda: f"{run_id} to reach {phase}: {db_run(url, run_id)}{replica.log_tail()}",
    )


def test_a_run_attached_through_one_replica_is_stopped_through_another(
    replicas: tuple[Cli, Cli], fleet: Fleet, pg_url: str
) -> None:
    a, b = replicas
    b.start_daemon()
    a.start_daemon()
    (instance,) = fleet.launch()
    attached = a.attach("rr-1", instance, fleet.prefix("rr-1"))
    assert attached["phase"] == "pending"
    wait_phase(pg_url, "rr-1", "running", a)

    # B lists it and shows it (from the database), though A watches it.
    assert [r["run_id"] for r in b.ctl_json("status")] == ["rr-1"]
    follower = subprocess.Popen(
        [SUPERVISORCTL, "tail", "rr-1", "-f"], env=b.env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        requested = b.ctl_json("stop", "rr-1")
        # A's answer, through B: the decision A committed.
        assert (requested["phase"], requested["outcome"]) == ("stopping", "cancelled")
        wait_phase(pg_url, "rr-1", "stopped", a)
        followed, errors = follower.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            follower.kill()
    assert follower.returncode == 0, errors
    assert [line.split()[1:4] for line in followed.splitlines() if "->" in line][-2:] == [
        ["running", "->", "stopping"],
        ["stopping", "->", "stopped"],
    ], followed

    run = b.ctl_json("status", "rr-1")
    assert (run["phase"], run["outcome"]) == ("stopped", "cancelled")
    assert [t["to"] for t in run["transitions"]] == ["pending", "running", "stopping", "stopped"]
    assert_chained(run["transitions"])
    assert [(x["action"], x["outcome"]) for x in run["actions"]] == [("stop", "accepted")]
    assert fleet.state(instance) == "stopped"
    assert inbox(pg_url) == [("rr-1", "command", "done", "replica-b", "replica-a")]
    assert "inbox_item_handled" in a.log_path.read_text()
    assert "command_forwarded" in b.log_path.read_text()
    stops = {name: r.daemon_status()["aws_calls"].get("ec2:StopInstances", 0) for name, r in
             (("a", a), ("b", b))}  # fmt: skip
    assert stops == {"a": 1, "b": 0}

    # The run has ended: B answers from the database, as a single daemon would.
    again = b.ctl("stop", "rr-1")
    assert again.returncode == 1, again
    assert "run 'rr-1' is already stopped: nothing to stop" in again.stderr
