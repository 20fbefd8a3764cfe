"""`supervisorctl zombies` and `supervisorctl report` against the real daemon process, which
finds a tagged instance no run owns; and the usage errors of `report --since`."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

import pytest

from tests.conftest import AMI, Fleet
from tests.e2e.conftest import Cli, wait_for

pytestmark = pytest.mark.e2e


def test_zombies_and_report_against_a_running_daemon(cli: Cli, fleet: Fleet) -> None:
    reply = fleet.ec2.run_instances(
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "supervisor:run-id", "Value": "gone"}]}
        ],
    )
    ghost = reply["Instances"][0]["InstanceId"]
    cli.start_daemon(
        SUPERVISOR_ZOMBIE_INTERVAL_S="0.2",
        SUPERVISOR_AUTO_TERMINATE="true",
        SUPERVISOR_ZOMBIE_WAIT_S="3600",
    )

    def listed_in_db() -> bool:  # polled read-only: a CLI call costs ~0.7 s of CPU here
        uri = f"file:{cli.db_path}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
            try:
                return bool(db.execute("SELECT 1 FROM zombies").fetchone())
            except sqlite3.OperationalError:
                return False

    wait_for(listed_in_db, message=lambda: f"the zombie to be recorded{cli.log_tail()}")

    listing: dict[str, Any] = cli.ctl_json("zombies")
    assert (listing["auto_terminate"], listing["wait_s"], listing["cooldown_s"]) == (
        True,
        3600,
        300,
    )
    [zombie] = listing["zombies"]
    assert (zombie["instance_id"], zombie["run_id"], zombie["kind"]) == (ghost, "gone", "unowned")
    assert zombie["reason"] == "tagged supervisor:run-id=gone; no active run owns it"
    assert (zombie["state"], zombie["attempts"], zombie["next_action"]) == (
        "marked",
        0,
        "terminate",
    )
    assert zombie["next_at"] is not None

    text, report_text = cli.ctl_all(("zombies",), ("report", "--since", "2"))
    assert text.returncode == 0, text.stderr
    assert "auto-terminate on" in text.stdout
    assert ghost in text.stdout and "terminate in" in text.stdout
    assert "no active run owns it" in text.stdout
    assert report_text.returncode == 0, report_text.stderr
    assert "open zombies: 1" in report_text.stdout

    report: dict[str, Any] = cli.ctl_json("report", "--since", "2")
    assert report["days"] == []
    assert (report["runs"], report["crash_rate"], report["open_zombies"]) == (0, None, 1)
    assert fleet.state(ghost) == "running"


def test_report_refuses_a_bad_since_as_a_usage_error(cli: Cli) -> None:
    results = cli.ctl_all(
        ("report", "--since", "0"), ("report", "--since", "-1"), ("report", "--since", "a week")
    )

    says_each = ("out of range", "is not a duration", "is not a duration")
    for done, says in zip(results, says_each, strict=True):
        assert done.returncode == 2, done
        assert done.stdout == ""
        assert "argument --since" in done.stderr and says in done.stderr, done.stderr
        assert "e.g. 7d" in done.stderr
