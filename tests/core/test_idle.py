"""Idle detection from utilisation: the rule that judges CloudWatch datapoints (idle only when
every datapoint over the window is below the level and they cover it; missing data is never
idleness), and what a verdict does in step(): idle makes a running run stalled with the
reason, and --on-stall decides as for a stale heartbeat."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from supervisor.core.checkpoint import CommandKind
from supervisor.core.effects import ActOnInstance, RunInstanceCommand, WakeAt
from supervisor.core.errors import InvalidInput
from supervisor.core.events import Action, Tick, UtilisationObserved
from supervisor.core.idle import (
    METRIC_SOURCES,
    Datapoint,
    IdleMetric,
    IdleVerdict,
    fetch_window,
    judge,
)
from supervisor.core.machine import IDLE_REASON
from supervisor.core.run import Outcome, Phase, Run
from supervisor.core.spec import RunSpec
from supervisor.core.values import InstanceId
from tests.core.builders import NOW, checkpoint_spec, make_run, make_spec, run_step

P = Phase
CPU, GPU = IdleMetric.CPU, IdleMetric.GPU
WINDOW_S = 1800.0
LEVEL = 5.0


def every(period_s: int, values: list[float], *, newest_age_s: float = 0) -> tuple[Datapoint, ...]:
    """Datapoints `period_s` apart, the last `newest_age_s` before NOW."""
    newest = NOW - timedelta(seconds=newest_age_s)
    n = len(values)
    return tuple(
        Datapoint(newest - timedelta(seconds=period_s * (n - 1 - i)), v)
        for i, v in enumerate(values)
    )


LOW_CPU = every(300, [1.0] * 7)  # 30 minutes of 5-minute points, all low
"""Seven 5-minute points ending at NOW: they cover a 30-minute window."""

# fmt: off
VERDICTS = [
    pytest.param(LOW_CPU, CPU, IdleVerdict.IDLE, id="all-low-covered"),
    pytest.param(every(300, [1.0] * 6, newest_age_s=300), CPU, IdleVerdict.IDLE,
                 id="cloudwatch-lag-of-one-period"),
    pytest.param((), CPU, IdleVerdict.NO_DATAPOINTS, id="no-datapoints"),
    pytest.param(every(300, [1.0] * 3), CPU, IdleVerdict.NO_DATAPOINTS,
                 id="only-the-last-15-minutes"),
    pytest.param(every(300, [1.0] * 5, newest_age_s=900), CPU, IdleVerdict.NO_DATAPOINTS,
                 id="nothing-for-15-minutes"),
    pytest.param(LOW_CPU[:2] + LOW_CPU[5:], CPU, IdleVerdict.NO_DATAPOINTS, id="a-gap-inside"),
    pytest.param(every(300, [1, 1, 1, 80, 1, 1, 1]), CPU, IdleVerdict.BUSY, id="one-busy-point"),
    pytest.param(every(300, [1, 1, 1, 5, 1, 1, 1]), CPU, IdleVerdict.BUSY,
                 id="at-the-level-is-not-below"),
    pytest.param(every(300, [90.0]), CPU, IdleVerdict.BUSY, id="busy-even-when-not-covered"),
    pytest.param(every(300, [90.0] + [1.0] * 7, newest_age_s=0)[1:], CPU, IdleVerdict.IDLE,
                 id="busy-before-the-window-is-forgotten"),
    pytest.param(every(60, [0.0] * 31), GPU, IdleVerdict.IDLE, id="gpu-every-minute"),
    pytest.param(every(300, [0.0] * 7), GPU, IdleVerdict.NO_DATAPOINTS,
                 id="gpu-points-5-minutes-apart-leave-gaps"),
]
# fmt: on


@pytest.mark.parametrize(("points", "metric", "verdict"), VERDICTS)
def test_idle_only_when_every_datapoint_is_below_and_they_cover_the_window(
    points: tuple[Datapoint, ...], metric: IdleMetric, verdict: IdleVerdict
) -> None:
    seen = judge(points, metric=metric, below=LEVEL, window_s=WINDOW_S, now=NOW)
    assert seen.verdict is verdict


def test_datapoints_older_than_the_window_do_not_count() -> None:
    old_busy = (Datapoint(NOW - timedelta(hours=2), 99.0),)
    seen = judge(old_busy + LOW_CPU, metric=CPU, below=LEVEL, window_s=WINDOW_S, now=NOW)
    assert (seen.verdict, seen.datapoints, seen.peak) == (IdleVerdict.IDLE, 7, 1.0)


def test_each_verdict_is_described_in_one_line_naming_metric_level_and_window() -> None:
    idle = judge(LOW_CPU, metric=CPU, below=LEVEL, window_s=WINDOW_S, now=NOW)
    assert idle.describe() == "cpu utilisation below 5% for 1800s (peak 1.0%, 7 datapoints)"
    busy = judge(every(300, [42.5]), metric=CPU, below=LEVEL, window_s=WINDOW_S, now=NOW)
    assert busy.describe() == "cpu utilisation reached 42.5% in the last 1800s (idle below 5%)"
    none = judge((), metric=GPU, below=LEVEL, window_s=WINDOW_S, now=NOW)
    assert none.describe().startswith(
        "gpu utilisation: no datapoints covering the last 1800s (none); not counted as idle"
    )


def test_the_metrics_are_cloudwatchs_cpu_without_an_agent_and_the_agents_gpu() -> None:
    cpu, gpu = METRIC_SOURCES[CPU], METRIC_SOURCES[GPU]
    assert (cpu.namespace, cpu.name) == ("AWS/EC2", "CPUUtilization")
    assert (gpu.namespace, gpu.name) == ("CWAgent", "nvidia_smi_utilization_gpu")


def test_the_sweep_asks_for_the_window_and_the_tolerance_either_side() -> None:
    assert fetch_window(WINDOW_S, CPU) == timedelta(seconds=WINDOW_S + 1200)


# -- the run spec -------------------------------------------------------------------------------


def test_idle_detection_is_off_by_default_and_on_with_a_level_and_a_time() -> None:
    assert not make_spec().idle_detection
    spec = make_spec(idle_below=5, idle_for_s=1800, idle_metric="gpu")
    assert (spec.idle_detection, spec.idle_metric) == (True, GPU)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"idle_below": 5}, "idle_below needs idle_for_s"),
        ({"idle_for_s": 1800}, "idle_for_s needs idle_below"),
        ({"idle_below": 0, "idle_for_s": 1800}, "idle_below: input should be greater than 0"),
        ({"idle_below": 101, "idle_for_s": 1800}, "idle_below: input should be less than"),
        ({"idle_below": 5, "idle_for_s": 60}, "idle_for_s: input should be greater than"),
        ({"idle_below": 5, "idle_for_s": 1800, "idle_metric": "tpu"}, "idle_metric: input"),
    ],
)
def test_a_bad_idle_setting_is_refused_naming_it(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        make_spec(**fields)


@pytest.mark.parametrize(
    ("given", "seconds"), [("30m", 1800), ("2h", 7200), (900, 900), ("600", 600)]
)
def test_idle_for_takes_a_duration_with_a_unit(given: object, seconds: float) -> None:
    assert make_spec(idle_below=5, idle_for_s=given).idle_for_s == seconds


def test_a_bad_idle_for_duration_is_refused_naming_it() -> None:
    with pytest.raises(InvalidInput, match="idle_for_s") as refused:
        make_spec(idle_below=5, idle_for_s="30x")
    assert "30x" in str(refused.value)


# -- in step() ----------------------------------------------------------------------------------


def idle_spec(on_stall: str = "notify", *, checkpointing: bool = False, **spec: Any) -> RunSpec:
    build = checkpoint_spec if checkpointing else make_spec
    return build(idle_below=LEVEL, idle_for_s=WINDOW_S, on_stall=on_stall, **spec)


def running(spec: RunSpec, *, for_s: float = 3600, **changes: Any) -> Run:
    return make_run(P.RUNNING, spec=spec, phase_since=NOW - timedelta(seconds=for_s), **changes)


def observed(points: tuple[Datapoint, ...] = LOW_CPU, **fields: Any) -> UtilisationObserved:
    return UtilisationObserved(fields.pop("metric", CPU), points, **fields)


def test_idle_makes_a_running_run_stalled_with_the_metric_level_and_time() -> None:
    d = run_step(running(idle_spec()), observed())
    assert (d.run.phase, d.run.outcome, d.effects) == (P.STALLED, None, ())
    assert d.run.reason == (
        "idle: cpu utilisation below 5% for 1800s (peak 1.0%, 7 datapoints) while the instance "
        "runs; on_stall=notify"
    )
    assert d.transition is not None and d.transition.detail == {
        "idle_metric": "cpu", "idle_below": 5.0, "idle_for_s": 1800.0, "peak": 1.0,
        "datapoints": 7,
    }  # fmt: skip
    assert d.run.utilisation is not None and d.run.utilisation.verdict is IdleVerdict.IDLE


@pytest.mark.parametrize(
    "points",
    [pytest.param((), id="no-datapoints"), pytest.param(every(300, [1, 50, 1]), id="busy")],
)
def test_no_datapoints_or_a_busy_one_leaves_the_run_running_and_says_so(
    points: tuple[Datapoint, ...],
) -> None:
    d = run_step(running(idle_spec("terminate")), observed(points))
    assert (d.run.phase, d.transition, d.effects) == (P.RUNNING, None, ())
    assert d.run.utilisation is not None
    assert d.run.utilisation.verdict is not IdleVerdict.IDLE
    assert not d.persist  # a judgement costs no database write


def test_a_run_running_for_less_than_the_window_is_not_idle_yet() -> None:
    d = run_step(running(idle_spec(), for_s=WINDOW_S - 1), observed())
    assert d.run.phase is P.RUNNING


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(observed(instance_id=InstanceId("i-0fedcba9876543210")), id="other-instance"),
        pytest.param(observed(metric=GPU), id="other-metric"),
    ],
)
def test_a_stale_or_foreign_observation_changes_nothing(event: UtilisationObserved) -> None:
    d = run_step(running(idle_spec()), event)
    assert (d.run.phase, d.run.utilisation) == (P.RUNNING, None)


def test_without_idle_detection_datapoints_change_nothing() -> None:
    d = run_step(running(make_spec()), observed())
    assert (d.run.phase, d.run.utilisation, d.transition) == (P.RUNNING, None, None)


@pytest.mark.parametrize(("on_stall", "action"), [("checkpoint-stop", Action.STOP),
                                                  ("terminate", Action.TERMINATE)])  # fmt: skip
def test_an_acting_policy_records_the_stall_then_acts_on_the_next_tick(
    on_stall: str, action: Action
) -> None:
    d = run_step(running(idle_spec(on_stall)), observed())
    assert (d.run.phase, d.effects) == (P.STALLED, (WakeAt(NOW),))
    acted = run_step(d.run, Tick())
    assert acted.effects == (ActOnInstance(action),)
    assert acted.run.outcome is Outcome.STALLED


def test_with_checkpointing_the_stall_policy_saves_the_checkpoint_first() -> None:
    d = run_step(running(idle_spec("terminate", checkpointing=True)), observed())
    acted = run_step(d.run, Tick())
    assert acted.run.phase is P.CHECKPOINTING and acted.run.pending_action is Action.TERMINATE
    (effect,) = acted.effects
    assert isinstance(effect, RunInstanceCommand)
    assert effect.command.kind is CommandKind.CHECKPOINT


def test_an_idle_stall_ends_when_utilisation_rises_again() -> None:
    stalled = run_step(running(idle_spec()), observed()).run
    d = run_step(stalled, observed(every(300, [1, 1, 60])))
    assert d.run.phase is P.RUNNING
    assert d.run.reason.startswith("busy again: cpu utilisation reached 60.0%")


def test_a_heartbeat_stall_is_not_ended_by_utilisation() -> None:
    stalled = make_run(P.STALLED, spec=idle_spec(), reason="heartbeat status.json is 600s old")
    d = run_step(stalled, observed(every(300, [1, 1, 60])))
    assert (d.run.phase, d.transition) == (P.STALLED, None)


def test_a_stalled_run_stays_stalled_while_idle() -> None:
    stalled = run_step(running(idle_spec()), observed()).run
    assert stalled.reason.startswith(IDLE_REASON)
    d = run_step(stalled, observed())
    assert (d.run.phase, d.transition) == (P.STALLED, None)
