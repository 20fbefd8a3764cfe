"""The end-of-training estimate from heartbeat progress, and the check schedule around it."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from supervisor.core import machine
from supervisor.core.backoff import BackoffPolicy, delay
from supervisor.core.effects import WakeAt
from supervisor.core.eta import (
    MAX_SAMPLES,
    POLL_MAX_WITHOUT_ETA_S,
    Estimate,
    Progress,
    ProgressSample,
    estimate_end,
    jittered,
    next_check_wait,
    wait_before_check,
    without_eta,
)
from supervisor.core.events import ReportIngested
from supervisor.core.run import Phase as P
from tests.core.builders import (
    NOW,
    POLICY,
    POLL_WITHOUT_ETA,
    listed,
    make_run,
    run_step,
    seeded,
)

POLL = BackoffPolicy()  # 30 s doubling to 300 s


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def progress(*samples: tuple[float, int], total: int | None = 1000) -> Progress:
    """Samples of (seconds after NOW, step), all saying `total`."""
    built = Progress()
    for seconds, step in samples:
        built = built.add(ProgressSample(step, total, at(seconds)))
    return built


def ends_in(p: Progress, now_s: float) -> float | None:
    """Seconds after NOW the estimate puts the end at, seen at `now_s`; None: no estimate."""
    estimate = estimate_end(p, at(now_s))
    return None if estimate is None else (estimate.ends_at - NOW).total_seconds()


# -- the estimate ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "total", "now_s", "expected"),
    [
        pytest.param([(0, 0), (60, 100), (120, 200)], 1000, 120, 600.0, id="steady-rate"),
        pytest.param([(0, 0), (60, 100)], 100, 60, 60.0, id="at-the-total-ends-now"),
        # 100 steps/min, then 50: the later rate weighs twice -> (2*100/60 + 4*50/60)/6 /s
        pytest.param(
            [(0, 0), (60, 100), (120, 150)], 1000, 120, 120 + 850 / (400 / 360), id="slowing"
        ),
        pytest.param(
            [(0, 0), (60, 50), (120, 150)], 1000, 120, 120 + 850 / (500 / 360), id="speeding-up"
        ),
        pytest.param([(0, 0)], 1000, 0, None, id="one-sample-no-rate"),
        pytest.param([(0, 0), (60, 100)], None, 60, None, id="missing-total"),
        pytest.param([(0, 100), (60, 100), (120, 100)], 1000, 120, None, id="no-progress"),
    ],
)
def test_the_estimate_from_the_step_rate(
    samples: list[tuple[float, int]], total: int | None, now_s: float, expected: float | None
) -> None:
    got = ends_in(progress(*samples, total=total), now_s)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_a_changed_rate_moves_the_estimate_towards_the_recent_rate() -> None:
    steady = ends_in(progress((0, 0), (60, 100), (120, 200), (180, 300)), 180)
    slowed = ends_in(progress((0, 0), (60, 100), (120, 200), (180, 250)), 180)
    assert steady is not None and slowed is not None
    # The last minute's 50 steps/min counts most: the end moves out by more than the
    # remaining steps at the average rate of the whole would say.
    average_rate = 250 / 180
    assert slowed > 180 + 750 / average_rate > steady


def test_a_stalled_job_has_an_estimate_that_grows_with_its_silence() -> None:
    p = progress((0, 0), (60, 100), (120, 200))
    heard = ends_in(p, 120)
    quiet_a_while = ends_in(p, 120 + 60)  # within the heartbeat's usual spacing
    silent = ends_in(p, 120 + 600)
    more_silent = ends_in(p, 120 + 1200)
    assert heard == quiet_a_while == pytest.approx(600.0)
    assert heard is not None and silent is not None and more_silent is not None
    assert heard < silent < more_silent


def test_a_restarted_job_with_a_lower_step_restarts_the_estimate() -> None:
    before = progress((0, 0), (60, 100), (120, 200), (180, 300))
    restarted = before.add(ProgressSample(150, 1000, at(600)))
    assert restarted.samples == (ProgressSample(150, 1000, at(600)),)
    assert estimate_end(restarted, at(600)) is None
    again = restarted.add(ProgressSample(200, 1000, at(660)))
    assert ends_in(again, 660) == pytest.approx(660 + 800 * 60 / 50)


def test_the_same_heartbeat_read_again_adds_no_sample() -> None:
    p = progress((0, 0), (60, 100))
    assert p.add(ProgressSample(100, 1000, at(60))) is p


def test_only_the_latest_samples_are_kept() -> None:
    p = progress(*((60 * i, 10 * i) for i in range(MAX_SAMPLES + 5)))
    assert len(p.samples) == MAX_SAMPLES
    assert p.samples[-1].step == 10 * (MAX_SAMPLES + 4)


# -- the schedule it gives --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("end_in_s", "expected_wait_s"),
    [
        pytest.param(3 * 3600, 300.0, id="far-sparse-at-the-cap"),
        pytest.param(350, 350 * 0.9 - 30, id="nearing-waits-until-shortly-before"),
        pytest.param(60, 30.0, id="shortly-before-every-initial-interval"),
        pytest.param(0, 30.0, id="at-the-end"),
        pytest.param(-600, 30.0, id="overdue-keeps-checking-tightly"),
    ],
)
def test_the_wait_before_the_next_check(end_in_s: float, expected_wait_s: float) -> None:
    assert wait_before_check(at(end_in_s), NOW, POLL) == pytest.approx(expected_wait_s)


def test_checks_are_sparse_while_the_end_is_far_and_tight_just_before_it() -> None:
    end = at(3600)
    now, checks = NOW, []
    while now < end:
        now += timedelta(seconds=wait_before_check(end, now, POLL))
        checks.append(now)
    gaps = [(b - a).total_seconds() for a, b in zip([NOW, *checks], checks, strict=False)]
    assert gaps[:10] == [300.0] * 10
    assert gaps[-1] == gaps[-2] == POLL.initial_s
    assert len(checks) <= 16  # an hour at the cap is 12; the approach adds a few


@pytest.mark.parametrize(
    ("cap_s", "expected_max_s"),
    [
        pytest.param(100.0, 100.0, id="tighter-cap"),
        pytest.param(None, 300.0, id="none-keeps-the-cap"),
        pytest.param(900.0, 300.0, id="never-above-the-cap"),
        pytest.param(10.0, 30.0, id="never-below-the-first-interval"),
    ],
)
def test_the_backoff_of_a_run_without_an_estimate(
    cap_s: float | None, expected_max_s: float
) -> None:
    policy = without_eta(POLL, cap_s)
    assert policy.max_s == expected_max_s
    assert (policy.initial_s, policy.multiplier, policy.jitter) == (30.0, 2.0, POLL.jitter)


ESTIMATED = Estimate(ends_at=at(3 * 3600), steps_per_s=1.0, remaining_steps=10800)
NEAR = Estimate(ends_at=at(60), steps_per_s=1.0, remaining_steps=60)


@pytest.mark.parametrize(
    ("estimate", "checks", "cap_s", "expected_wait_s"),
    [
        pytest.param(None, 0, 100.0, 30.0, id="no-estimate-first-check"),
        pytest.param(None, 1, 100.0, 60.0, id="no-estimate-doubling"),
        pytest.param(None, 2, 100.0, 100.0, id="no-estimate-at-the-tighter-cap"),
        pytest.param(None, 40, 100.0, 100.0, id="no-estimate-hours-later"),
        pytest.param(None, 40, None, 300.0, id="no-estimate-no-tighter-cap"),
        pytest.param(ESTIMATED, 40, 100.0, 300.0, id="far-end-sparse-at-the-cap"),
        pytest.param(NEAR, 40, 100.0, 30.0, id="near-end-every-first-interval"),
    ],
)
def test_the_next_check_with_and_without_an_estimate(
    estimate: Estimate | None, checks: int, cap_s: float | None, expected_wait_s: float
) -> None:
    assert next_check_wait(estimate, checks, NOW, POLL, cap_s) == expected_wait_s


def test_checks_without_an_estimate_find_an_end_within_half_a_capped_interval_at_the_median() -> (
    None
):
    """An end at a random moment of a long run is found, at the median, half an interval
    later: with the default cap, within the 60 s the goal allows, the listing and the stop
    call included; at about three times the listings of the old 300 s cap (12 an hour)."""
    checks, t, schedule = 0, 0.0, []
    while t < 6 * 3600:
        t += next_check_wait(None, checks, NOW, POLL, POLL_MAX_WITHOUT_ETA_S)
        checks += 1
        schedule.append(t)
    ends = [3600 + 7.3 * i for i in range(400)]  # spread over an hour past the ramp
    found_after = sorted(next(c for c in schedule if c >= end) - end for end in ends)
    assert found_after[len(found_after) // 2] <= POLL_MAX_WITHOUT_ETA_S / 2 + 1 <= 60 - 9
    per_hour = sum(1 for c in schedule if 3600 <= c < 7200)
    assert per_hour == 3600 / POLL_MAX_WITHOUT_ETA_S == 36


# -- in the machine -------------------------------------------------------------------------


def beat(step: int, seconds: float, total: int | None = 1000) -> ReportIngested:
    return ReportIngested(
        "status.json", f"e{step}", progress=ProgressSample(step, total, at(seconds))
    )


def test_a_job_without_progress_backs_off_to_the_tighter_cap() -> None:
    d = run_step(make_run(P.RUNNING, checks=2), listed("logs.txt"))
    assert d.effects == (WakeAt(NOW + timedelta(seconds=delay(2, POLL_WITHOUT_ETA, seeded()))),)
    assert POLL_WITHOUT_ETA.max_s == POLL_MAX_WITHOUT_ETA_S < POLICY.poll.max_s
    assert d.run.this_attempt.estimated_end is None


def test_a_job_reporting_progress_without_a_total_backs_off_as_one_without_progress() -> None:
    run = make_run(
        P.RUNNING, checks=5, progress=progress((-120, 0), (-60, 10), (0, 20), total=None)
    )
    d = run_step(run, listed("logs.txt"))
    assert d.effects == (WakeAt(NOW + timedelta(seconds=delay(5, POLL_WITHOUT_ETA, seeded()))),)


def test_without_an_events_queue_cap_a_run_without_progress_keeps_the_plain_backoff() -> None:
    policy = machine.Policy(poll_max_without_eta_s=None)
    d = machine.step(make_run(P.RUNNING, checks=5), listed("logs.txt"), now=NOW, policy=policy,
             rng=seeded())  # fmt: skip
    assert d.effects == (WakeAt(NOW + timedelta(seconds=delay(5, POLICY.poll, seeded()))),)


def test_a_job_reporting_progress_far_from_its_end_is_checked_at_the_cap() -> None:
    run = make_run(P.RUNNING, checks=1, progress=progress((-120, 0), (-60, 10), (0, 20)))
    d = run_step(run, listed("logs.txt"))
    (wake,) = d.effects
    assert isinstance(wake, WakeAt)
    assert wake.at == NOW + timedelta(seconds=jittered(300.0, POLICY.poll, seeded()))
    assert d.run.this_attempt.estimated_end == at(980 * 6)


def test_a_job_reporting_progress_near_its_end_is_checked_every_initial_interval() -> None:
    run = make_run(P.RUNNING, checks=9, progress=progress((-120, 800), (-60, 900), (0, 990)))
    d = run_step(run, listed("logs.txt"))
    assert d.effects == (WakeAt(NOW + timedelta(seconds=jittered(30.0, POLICY.poll, seeded()))),)


def test_a_heartbeat_showing_the_end_is_near_brings_the_next_check_forward() -> None:
    due = at(300)
    run = make_run(P.RUNNING, next_check_at=due, progress=progress((-120, 800), (-60, 900)))
    d = run_step(run, beat(990, 0))
    assert d.effects == (WakeAt(at(30)),)
    assert d.run.next_check_at == at(30)
    assert d.run.report_etags == (("status.json", "e990"),)
    assert d.run.this_attempt.estimated_end is not None


def test_a_heartbeat_with_the_end_far_leaves_the_next_check_where_it_was() -> None:
    due = at(60)
    run = make_run(P.RUNNING, next_check_at=due, progress=progress((-120, 0), (-60, 10)))
    d = run_step(run, beat(20, 0))
    assert d.effects == ()
    assert d.run.next_check_at == due
    assert [s.step for s in d.run.this_attempt.progress.samples] == [0, 10, 20]


def test_a_heartbeat_in_grace_records_progress_but_schedules_nothing() -> None:
    run = make_run(P.GRACE, progress=progress((-120, 800), (-60, 900)))
    d = run_step(run, beat(1000, 0))
    assert d.effects == ()
    assert d.run.next_check_at is None
