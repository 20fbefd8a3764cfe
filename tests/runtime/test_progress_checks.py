"""Checks that know where the job is: heartbeats with `total_steps`, read from the real moto
server by the real daemon, bring the checks close together near the estimated end; a job
without a total keeps the backoff. Times are the job's own (written into status.json)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from supervisor.core.run import Phase as P
from supervisor.runtime.daemon import Daemon
from tests.runtime.conftest import Harness
from tests.runtime.waiting import wait_for

POLL: dict[str, Any] = {"poll_initial_s": 0.05, "poll_max_s": 60.0}
"""The backoff doubles from 0.05 s towards a minute: within seconds a run without progress is
checked seconds apart, one near its estimated end every 0.05 s."""


def beat(step: int, total: int | None, at: datetime) -> str:
    return json.dumps({"format": 1, "state": "running", "step": step, "total_steps": total,
                       "metrics": {}, "time": at.isoformat()})  # fmt: skip


def samples(daemon: Daemon, run_id: str) -> int:
    monitor = daemon.monitors.get(run_id)
    return 0 if monitor is None else len(monitor.run.this_attempt.progress.samples)


def seconds_to_next_check(daemon: Daemon, run_id: str) -> float:
    due = daemon.monitors[run_id].run.next_check_at
    assert due is not None
    return (due - datetime.now(UTC)).total_seconds()


async def test_a_job_near_its_estimated_end_is_checked_tightly_and_stopped_after_its_marker(
    harness: Harness,
) -> None:
    daemon = await harness.start(**POLL)
    near, plain = harness.fleet.launch(2)
    start = datetime.now(UTC)
    harness.fleet.put("runs/r1/status.json", beat(900, 1000, start - timedelta(seconds=60)))
    harness.fleet.put("runs/r2/status.json", beat(900, None, start - timedelta(seconds=60)))
    await harness.attach("r1", near)
    await harness.attach("r2", plain)

    async def first_beats_read() -> bool:
        return samples(daemon, "r1") == 1 and samples(daemon, "r2") == 1

    await wait_for(first_beats_read, what="the first heartbeats read")
    harness.fleet.put("runs/r1/status.json", beat(999, 1000, datetime.now(UTC)))
    harness.fleet.put("runs/r2/status.json", beat(999, None, datetime.now(UTC)))

    async def second_beats_read() -> bool:
        return samples(daemon, "r1") == 2 and samples(daemon, "r2") == 2

    await wait_for(second_beats_read, what="the second heartbeats read")
    assert daemon.monitors["r1"].run.this_attempt.estimated_end is not None
    assert daemon.monitors["r2"].run.this_attempt.estimated_end is None

    async def backed_off() -> bool:  # the run without a total goes on backing off
        return seconds_to_next_check(daemon, "r2") > 1.0

    await wait_for(backed_off, what="r2's checks to back off")
    # r1's estimated end is due: every check is one poll-initial interval (± jitter) away.
    for _ in range(5):
        assert seconds_to_next_check(daemon, "r1") <= 0.05 * 1.1 + 0.01
        before = daemon.monitors["r1"].run.checks

        async def checked_again(before: int = before) -> bool:
            return daemon.monitors["r1"].run.checks > before

        await wait_for(checked_again, what="r1's next check")

    harness.fleet.put("runs/r1/COMPLETE")
    run = await harness.wait_phase("r1", P.STOPPED, P.STOPPING)
    assert run.outcome == "completed"
    assert (await harness.run("r2")).phase is P.RUNNING
