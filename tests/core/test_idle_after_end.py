"""Issue 13, measured: the job's end is recorded from its marker's LastModified (as the
listing that found it says), so that the idle instance-seconds from then until the accepted
stop can be shown per run and summed per day."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from supervisor.core.events import Action, ActionSucceeded, ObjectRead, PrefixListed
from supervisor.core.records import idle_after_end_s
from supervisor.core.run import Phase, Run
from supervisor.core.values import InstanceState
from tests.core.builders import NOW, checkpoint_spec, make_run, make_spec, obj, run_step, with_state

P = Phase
WRITTEN = NOW - timedelta(seconds=42)
"""The marker's LastModified: before the listing that finds it."""


def found(key: str) -> PrefixListed:
    return PrefixListed((obj("logs/train.log"), obj(key, at=WRITTEN)))


# fmt: off
MARKER_FOUND = [
    pytest.param(make_run(P.RUNNING), "done", P.GRACE, id="completion-marker-grace"),
    pytest.param(make_run(P.RUNNING, spec=checkpoint_spec()), "done", P.CHECKPOINTING,
                 id="completion-marker-checkpointing"),
    pytest.param(with_state(make_run(P.RUNNING), instance_ended=InstanceState.STOPPED), "done",
                 P.STOPPED, id="completion-marker-instance-already-ended"),
    pytest.param(make_run(P.RUNNING), "FAILED", P.RUNNING, id="failure-marker-read-next"),
]
# fmt: on


@pytest.mark.parametrize(("run", "key", "phase"), MARKER_FOUND)
def test_the_end_is_recorded_from_the_markers_last_modified(
    run: Run, key: str, phase: Phase
) -> None:
    d = run_step(run, found(key))
    assert (d.run.phase, d.run.job_ended_at) == (phase, WRITTEN)
    assert d.persist  # a stored field: a restart keeps it


def test_without_a_marker_no_end_is_recorded() -> None:
    d = run_step(make_run(P.RUNNING), PrefixListed((obj("logs/train.log"),)))
    assert d.run.job_ended_at is None


def test_a_crashed_run_stopped_by_on_crash_counts_from_the_failure_marker_to_the_ack() -> None:
    d = run_step(make_run(P.RUNNING), found("FAILED"))
    d = run_step(
        d.run, ObjectRead("FAILED", "CUDA out of memory\n"), now=NOW + timedelta(seconds=1)
    )
    assert (d.run.phase, d.run.job_ended_at) == (P.STOPPING, WRITTEN)
    acked = NOW + timedelta(seconds=3)
    d = run_step(d.run, ActionSucceeded(Action.STOP, InstanceState.STOPPED), now=acked)
    assert (d.run.phase, d.run.action_acked_at) == (P.STOPPED, acked)
    assert idle_after_end_s(d.run.job_ended_at, d.run.action_acked_at) == 45.0


def test_a_crashed_run_kept_running_has_an_end_but_no_idle_figure() -> None:
    run = make_run(P.RUNNING, spec=make_spec(on_crash="keep"))
    d = run_step(run_step(run, found("FAILED")).run, ObjectRead("FAILED", "boom"))
    assert (d.run.phase, d.run.job_ended_at, d.run.action_acked_at) == (P.CRASHED, WRITTEN, None)
    assert idle_after_end_s(d.run.job_ended_at, d.run.action_acked_at) is None


# fmt: off
IDLE = [
    (WRITTEN, NOW, 42.0),
    (None, NOW, None),  # a person's stop before any marker: not idle after an end
    (WRITTEN, None, None),  # never stopped by us (on_complete none, on_crash keep): no figure
    (NOW + timedelta(seconds=1), NOW, 0.0),  # S3's clock a little ahead of ours: never negative
]
# fmt: on


@pytest.mark.parametrize(("ended", "acked", "idle"), IDLE)
def test_idle_after_end_is_the_seconds_from_the_end_to_the_ack_or_none(
    ended: datetime | None, acked: datetime | None, idle: float | None
) -> None:
    assert idle_after_end_s(ended, acked) == idle
