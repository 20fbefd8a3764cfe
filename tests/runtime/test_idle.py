"""Idle detection end to end, in process: the daemon's idle sweep reads the utilisation that the
test plays into the real moto server's CloudWatch (PutMetricData in AWS/EC2, as EC2 would), the
core judges it, and an idle run is stalled and then stopped or terminated by --on-stall; no
datapoints is not idle. Time is the daemon's injected clock; the sweep is called directly."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from supervisor.core.idle import IdleVerdict
from supervisor.core.run import Outcome, Phase, Run
from tests.runtime.test_stall_and_crash import ClockedHarness, only, timed  # noqa: F401
from tests.runtime.waiting import wait_for

P = Phase
IDLE_FOR_S = 600.0
RUNNING_FOR = timedelta(hours=1)
"""How long the run has been running when the sweep looks: longer than its idle window."""


def low_cpu(now: datetime) -> list[tuple[datetime, float]]:
    """Twenty minutes of 5-minute CPU datapoints at 1%, up to `now`."""
    return [(now - timedelta(minutes=m), 1.0) for m in (20, 15, 10, 5, 0)]


async def running_for_an_hour(h: ClockedHarness, run_id: str, **fields: object) -> str:
    h.clock.freeze()
    await h.start()
    (instance,) = h.fleet.launch()
    await h.attach(run_id, instance, idle_below=5.0, idle_for_s=IDLE_FOR_S, **fields)
    await h.wait_phase(run_id, P.RUNNING)
    h.clock.jump_to(h.clock.now() + RUNNING_FOR)
    return instance


async def judged(h: ClockedHarness, run_id: str) -> Run:
    """The monitor's run once it has taken the sweep's observation."""
    assert h.daemon is not None
    monitor = h.daemon.monitors[run_id]

    async def taken() -> bool:
        return monitor.run.utilisation is not None and not monitor.busy

    await wait_for(taken, what=f"{run_id} to take the sweep's utilisation")
    return monitor.run


@pytest.mark.parametrize(
    ("on_stall", "ended", "state"),
    [("terminate", P.TERMINATED, "terminated"), ("checkpoint-stop", P.STOPPED, "stopped")],
)
async def test_idle_cpu_datapoints_stall_the_run_and_on_stall_ends_it(
    timed: ClockedHarness,  # noqa: F811
    on_stall: str,
    ended: Phase,
    state: str,
) -> None:
    instance = await running_for_an_hour(timed, "idle", on_stall=on_stall)
    timed.fleet.utilisation(instance, low_cpu(timed.clock.now()))
    assert timed.daemon is not None

    assert await timed.daemon.idle_sweep.sweep() == 1

    run = await timed.settled("idle")
    assert (run.phase, run.outcome) == (ended, Outcome.STALLED), run.reason
    stall = only(await timed.history("idle"), P.STALLED)
    assert stall.reason.startswith("idle: cpu utilisation below 5% for 600s")
    assert stall.detail["idle_metric"] == "cpu" and stall.detail["peak"] == 1.0
    assert timed.fleet.state(instance) in (state, "stopping", "shutting-down")
    assert timed.calls("GetMetricData") == 1


async def test_no_datapoints_is_not_idle_and_the_run_says_so(timed: ClockedHarness) -> None:  # noqa: F811
    await running_for_an_hour(timed, "quiet", on_stall="terminate")
    assert timed.daemon is not None

    await timed.daemon.idle_sweep.sweep()

    run = await judged(timed, "quiet")
    assert run.phase is P.RUNNING
    assert run.utilisation is not None
    assert run.utilisation.verdict is IdleVerdict.NO_DATAPOINTS
    assert (await timed.run("quiet")).phase is P.RUNNING
    # `supervisorctl status quiet` shows it
    shown = (await timed.daemon.views.run_detail("quiet")).utilisation
    assert shown is not None
    assert shown.startswith("cpu utilisation: no datapoints covering the last 600s (none)")


async def test_a_busy_instance_stays_running(timed: ClockedHarness) -> None:  # noqa: F811
    instance = await running_for_an_hour(timed, "busy", on_stall="terminate")
    points = low_cpu(timed.clock.now())
    points[2] = (points[2][0], 97.0)
    timed.fleet.utilisation(instance, points)
    assert timed.daemon is not None

    await timed.daemon.idle_sweep.sweep()

    run = await judged(timed, "busy")
    assert run.utilisation is not None and run.utilisation.verdict is IdleVerdict.BUSY
    assert run.phase is P.RUNNING


async def test_runs_without_idle_detection_cost_no_call(timed: ClockedHarness) -> None:  # noqa: F811
    timed.clock.freeze()
    await timed.start()
    (instance,) = timed.fleet.launch()
    await timed.attach("plain", instance)
    await timed.wait_phase("plain", P.RUNNING)
    assert timed.daemon is not None

    assert await timed.daemon.idle_sweep.sweep() == 0
    assert timed.calls("GetMetricData") == 0
