"""Figure 7 (issue 13): idle instance-seconds, from the moment a job ends (its completion
marker or its `FAILED` marker written) until the stop call is accepted, per run.

Three kinds of job, `runs` of each per watcher, on fresh moto instances:
- progress: heartbeats (`status.json` written by `supervisor.report.Reporter`, with the step
  and `total_steps`), so the ETA-aware check schedule applies; then a completion marker;
- silent: no heartbeat, then a completion marker;
- crash: no heartbeat, then `Reporter.failed` (crash/error.log, then `FAILED`).

Three watchers, side by side in one run (figure 2's machinery: the real daemon as a process,
polling only, every interval compressed by `factor` through the settings):
- baseline: the naive poller (tests/bench/baseline.py) every 60 s, looking for the markers and
  `FAILED`, then a fixed 300 s wait before StopInstances;
- current: the daemon at this checkout's defaults (grace 300 s as the settings' default,
  until-quiet with the run's default quiet_s; both compressed);
- previous: the same daemon, runs attached with the previous defaults: `grace_mode` fixed, and
  `on_crash` keep when this checkout's RunSpec has the field. Without the field, a crashed
  run is left running under either watcher (then the crash row measures the same thing).
  Its settings keep the previous check schedule too: runs without an estimated end back off
  to `poll_max_s` (300 s), where the current default stops at `poll_max_without_eta_s`.
  The ETA-aware check schedule has no setting to turn it off: for "previous", the progress
  jobs' heartbeats carry no `total_steps`, which is what the previous code saw of them (it
  read the step, never the total), so their checks back off as before.

With `events` (`--idle-events`), a fourth watcher: the daemon at the current defaults with its
SQS events queue (moto's S3 notifications, and the EC2 state changes played by the harness as
figure 2 does). Its idle seconds are scaled by `factor` like the others', so the few tenths of
a second it takes to react (not compressed in production either) count `factor` times over.

A run whose instance is not stopped by the end of the window counts as "not stopped"; its
idle time is at least the window's end minus its end (given as a lower bound).

Each job's end falls at a random moment of its stratum (seeded by the repetition, the same
for every watcher): a job's end is as likely at any point of a check interval as in
production, whatever the schedule. (Ends on a fixed grid, a quarter of the span apart, met a
300 s schedule at four fixed phases, and one of them on a check: the crash row's p50 moved
from 109 s to 175 s between two runs of the same code.)

S3's LastModified keeps whole seconds, and an until-quiet grace counts its quiet from it: in
production the newest write is up to 1 s younger than its LastModified. Compressed by
`factor`, that second would be `factor` simulated seconds; so each job writes its end within
the first 1/`factor` s after a whole second (`s3_second`), which keeps it, as in production,
within one simulated second of its LastModified.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.client import AsyncSupervisor
from supervisor.core.spec import DEFAULT_FAILURE_MARKER, DEFAULT_MARKERS, RunSpec
from supervisor.report import Reporter
from tests.bench.baseline import NaivePoller, Watched
from tests.bench.daemon_process import DaemonProcess, daemon_env, log_time, running
from tests.bench.fleet_figures import (
    RECEIVES_PER_HOUR,
    compressed,
    percentile,
    play_ec2_events,
)
from tests.bench.moto_world import RUNS_PREFIX, MotoWorld
from tests.bench.table import row

KINDS = ("progress", "silent", "crash")
WATCHERS = ("baseline", "current", "previous")
EVENTS = "events"
"""The optional fourth watcher: the current defaults with the events queue."""
BASELINE_PERIOD_S = 60.0
BASELINE_WAIT_S = 300.0
"""The naive poller's fixed wait after it sees a marker (the runctl notes' schedule)."""
DEFAULT_GRACE_S = 300.0
DEFAULT_QUIET_S = float(RunSpec.model_fields["quiet_s"].default)
HEARTBEAT_S = 60.0
"""Simulated seconds between a progress job's heartbeats."""
STEPS_PER_HEARTBEAT = 100
SETTLE_S = 3.0
"""Real seconds watched after the last expected stop, for stops not expected."""
HAS_ON_CRASH = "on_crash" in RunSpec.model_fields
"""--on-crash (issue 13, another branch): the previous default is `keep`."""
PREVIOUS_POLL_MAX_S = 300.0
"""The previous schedule's cap for every run, also those without an estimated end."""


@dataclass(frozen=True, slots=True)
class Job:
    run_id: str
    instance_id: str
    bucket: str
    kind: str
    after_s: float
    """Real seconds from its attach to its end."""

    @property
    def prefix(self) -> str:
        return f"{RUNS_PREFIX}{self.run_id}/"


@dataclass(slots=True)
class WatcherResult:
    watcher: str
    factor: float
    idle_s: dict[str, list[float]] = field(default_factory=dict)
    """kind -> simulated idle seconds of each run stopped."""
    not_stopped: dict[str, list[float]] = field(default_factory=dict)
    """kind -> simulated seconds from end to the window's end, of each run not stopped."""
    calls: dict[str, int] = field(default_factory=dict)
    run_seconds: float = 0.0
    """Real seconds the jobs ran while watched, summed."""
    window_s: float = 0.0
    """Real seconds from the first attach to the end of the window."""

    @property
    def run_hours(self) -> float:
        return self.run_seconds * self.factor / 3600

    @property
    def calls_per_run_hour(self) -> float:
        """All calls per run-hour; with events, ReceiveMessage at its production cost (a 20 s
        long poll, plus an early return per message), as figure 1 counts it: the bench's 1 s
        long poll is not compressed time."""
        if not self.run_hours:
            return float("nan")
        calls = Counter(self.calls)
        if self.watcher == EVENTS:
            window_hours = self.window_s * self.factor / 3600
            calls["ReceiveMessage"] = round(
                RECEIVES_PER_HOUR * window_hours + calls.get("DeleteMessage", 0)
            )
        return sum(calls.values()) / self.run_hours


def plan(
    tag: str,
    world: MotoWorld,
    runs: int,
    hours: float,
    factor: float,
    notify_queue_url: str | None = None,
    *,
    seed: int = 0,
) -> list[Job]:
    """`runs` jobs of each kind, ending from half of `hours` to all of it (simulated): job i
    at a random moment of the i-th of `runs` equal strata of that span (`seed`: the same
    moments for every watcher of a repetition)."""
    bucket = world.bucket(f"bench-idle-{tag}", notify_queue_url=notify_queue_url)
    instances = world.launch(runs * len(KINDS))
    draw = random.Random(seed)
    jobs = []
    for k, kind in enumerate(KINDS):
        for i in range(runs):
            jobs.append(
                Job(
                    run_id=f"{tag}-{kind}-{i:02d}",
                    instance_id=instances[k * runs + i],
                    bucket=bucket,
                    kind=kind,
                    after_s=(0.5 + 0.5 * (i + draw.random()) / runs) * hours * 3600 / factor,
                )
            )
    return jobs


def s3_second(at: float, factor: float, draw: random.Random) -> float:
    """`at`, or the first moment after it that lies within 1/`factor` s after a whole second
    (at a random point of that window): a write then is at most 1/`factor` s younger than the
    whole-second LastModified S3 gives it, one simulated second, as in production."""
    window = 1.0 / factor
    if at - math.floor(at) < window:
        return at
    return math.floor(at) + 1.0 + window * draw.random()


async def play(
    world: MotoWorld,
    jobs: list[Job],
    attached: dict[str, float],
    ended: dict[str, float],
    factor: float,
    *,
    with_total: bool = True,
) -> None:
    """Each job as it runs: heartbeats for `progress` (with `total_steps` if `with_total`),
    then its marker or its failure; the harness's time just before the first write of the
    end."""

    async def one(job: Job) -> None:
        reporter = Reporter(f"s3://{job.bucket}/{job.prefix}", client=world.s3)
        end = attached[job.run_id] + job.after_s
        draw = random.Random(job.run_id)
        if job.kind == "progress":
            beats = max(2, int(job.after_s * factor / HEARTBEAT_S))
            total = beats * STEPS_PER_HEARTBEAT if with_total else None
            for beat in range(beats):
                at = attached[job.run_id] + beat * HEARTBEAT_S / factor
                await asyncio.sleep(max(0.0, at - time.time()))
                # No total: no keyword at all, as a job that never heard of it calls it.
                progress = {"total_steps": total} if total is not None else {}
                await asyncio.to_thread(reporter.heartbeat, beat * STEPS_PER_HEARTBEAT, **progress)
        await asyncio.sleep(max(0.0, end - time.time()))
        await asyncio.sleep(max(0.0, s3_second(time.time(), factor, draw) - time.time()))
        ended[job.run_id] = time.time()
        if job.kind == "crash":
            await asyncio.to_thread(reporter.failed, "bench: the job crashed")
        else:
            marker = DEFAULT_MARKERS[int(job.run_id[-2:]) % len(DEFAULT_MARKERS)]
            await asyncio.to_thread(
                world.s3.put_object, Bucket=job.bucket, Key=job.prefix + marker, Body=b""
            )

    await asyncio.gather(*(one(j) for j in jobs))


def _timeout_s(jobs: list[Job], factor: float) -> float:
    return max(j.after_s for j in jobs) + (2 * BASELINE_WAIT_S + 600) / factor + 30


def _summarise(
    result: WatcherResult,
    jobs: list[Job],
    attached: dict[str, float],
    ended: dict[str, float],
    accepted: dict[str, float],
    window_end: float,
) -> None:
    result.window_s = window_end - min(attached.values())
    for job in jobs:
        if job.run_id not in ended:
            continue
        if job.run_id in accepted:
            idle = (accepted[job.run_id] - ended[job.run_id]) * result.factor
            result.idle_s.setdefault(job.kind, []).append(idle)
        else:
            lower = (window_end - ended[job.run_id]) * result.factor
            result.not_stopped.setdefault(job.kind, []).append(lower)
        result.run_seconds += ended[job.run_id] - attached[job.run_id]


async def run_baseline(world: MotoWorld, jobs: list[Job], factor: float) -> WatcherResult:
    result = WatcherResult("baseline", factor)
    poller = NaivePoller(
        world.aws_env,
        [Watched(j.run_id, j.instance_id, j.bucket, j.prefix) for j in jobs],
        period_s=BASELINE_PERIOD_S / factor,
        markers=(*DEFAULT_MARKERS, DEFAULT_FAILURE_MARKER),
        wait_s=BASELINE_WAIT_S / factor,
    )
    attached = dict.fromkeys((j.run_id for j in jobs), time.time())
    ended: dict[str, float] = {}
    player = asyncio.create_task(play(world, jobs, attached, ended, factor))
    outcome = await poller.run(_timeout_s(jobs, factor))
    await player
    result.calls = dict(outcome.calls)
    _summarise(result, jobs, attached, ended, outcome.accepted_at, time.time())
    return result


def _previous_defaults() -> dict[str, Any]:
    fields: dict[str, Any] = {"grace_mode": "fixed"}
    if HAS_ON_CRASH:
        fields["on_crash"] = "keep"
    return fields


async def run_daemon(
    world: MotoWorld,
    jobs: list[Job],
    factor: float,
    watcher: str,
    workdir: Path,
    queue_url: str | None = None,
) -> WatcherResult:
    """The real daemon at the default settings compressed by `factor`, polling only unless
    `queue_url` is given."""
    result = WatcherResult(watcher, factor)
    settings = compressed(factor, events_queue_url=queue_url, debug=False)
    settings["grace_s"] = f"{DEFAULT_GRACE_S / factor:g}"
    if watcher == "previous" and "poll_max_without_eta_s" in settings:
        settings["poll_max_without_eta_s"] = f"{PREVIOUS_POLL_MAX_S / factor:g}"
    state_dir = workdir / watcher
    daemon = DaemonProcess(state_dir, daemon_env(world.aws_env, state_dir, settings))
    fields: dict[str, Any] = {"quiet_s": DEFAULT_QUIET_S / factor}
    if watcher == "previous":
        fields |= _previous_defaults()
    expect_stop = {
        j.run_id
        for j in jobs
        if j.kind != "crash" or (watcher in ("current", EVENTS) and HAS_ON_CRASH)
    }
    with running(daemon):
        await daemon.wait_ready()
        before = await daemon.aws_calls()
        client = AsyncSupervisor(state_dir=daemon.state_dir)
        attached: dict[str, float] = {}
        for job in jobs:
            attached[job.run_id] = time.time()
            await client.attach(
                job.run_id, job.instance_id, f"s3://{job.bucket}/{job.prefix}", **fields
            )
        ended: dict[str, float] = {}
        player = asyncio.create_task(
            play(world, jobs, attached, ended, factor, with_total=watcher != "previous")
        )
        accepted: dict[str, float] = {}
        deadline = time.monotonic() + _timeout_s(jobs, factor)
        settle_until: float | None = None
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            for line in daemon.log.read():
                if (
                    line.get("event") == "action_accepted"
                    and line.get("operation") == "StopInstances"
                    and line.get("run_id") in attached
                ):
                    accepted.setdefault(str(line["run_id"]), log_time(line))
                    if queue_url is not None:
                        instance_id = next(
                            j.instance_id for j in jobs if j.run_id == line["run_id"]
                        )
                        await play_ec2_events(world, queue_url, instance_id)
            if player.done() and expect_stop <= accepted.keys():
                settle_until = settle_until or time.monotonic() + SETTLE_S
                if time.monotonic() >= settle_until:
                    break
        window_end = time.time()
        await player
        after = await daemon.aws_calls()
    result.calls = dict(after - before)
    _summarise(result, jobs, attached, ended, accepted, window_end)
    return result


async def repetition(
    world: MotoWorld, rep: int, runs: int, hours: float, factor: float, *, events: bool = False
) -> dict[str, WatcherResult]:
    """The watchers side by side, each on its own jobs (the same plan of lengths)."""
    fleets = {w: plan(f"{w[:4]}{rep}", world, runs, hours, factor, seed=rep) for w in WATCHERS}
    with tempfile.TemporaryDirectory(prefix="sv", dir="/tmp") as folder:
        work = Path(folder)
        watching = [
            run_baseline(world, fleets["baseline"], factor),
            run_daemon(world, fleets["current"], factor, "current", work),
            run_daemon(world, fleets["previous"], factor, "previous", work),
        ]
        if events:
            queue_url = world.queue(f"bench-idle-events-{rep}")
            jobs = plan(
                f"even{rep}", world, runs, hours, factor, notify_queue_url=queue_url, seed=rep
            )
            watching.append(run_daemon(world, jobs, factor, EVENTS, work, queue_url))
        results = await asyncio.gather(*watching)
    return {r.watcher: r for r in results}


# -- summary --------------------------------------------------------------------------------


def _watchers(reps: list[dict[str, WatcherResult]]) -> tuple[str, ...]:
    return (*WATCHERS, EVENTS) if EVENTS in reps[0] else WATCHERS


def _pooled(reps: list[dict[str, WatcherResult]], watcher: str, kind: str) -> list[float]:
    return [s for r in reps for s in r[watcher].idle_s.get(kind, [])]


def _unstopped(reps: list[dict[str, WatcherResult]], watcher: str, kind: str) -> list[float]:
    return [s for r in reps for s in r[watcher].not_stopped.get(kind, [])]


def _cell(values: list[float], q: float) -> str:
    return f"{percentile(values, q):.0f}" if values else "-"


def report(reps: list[dict[str, WatcherResult]], args: Any) -> tuple[list[str], dict[str, Any]]:
    """The table's lines for figure 7, and the JSON."""
    factor = args.idle_factor
    n = len(reps)
    modes = "polling, and events" if EVENTS in reps[0] else "polling only"
    lines = [
        f"Figure 7: idle instance-seconds, job end (marker or FAILED written) to stop accepted, "
        f"{modes}, {args.idle_runs} runs per kind per watcher x {n} repetitions (pooled), "
        f"jobs of {args.idle_hours / 2:g}-{args.idle_hours:g} simulated h, time /{factor:g}; "
        f"simulated s; on_crash {'in' if HAS_ON_CRASH else 'NOT in'} RunSpec",
        f"  {'kind':<9} {'watcher':<9} {'p50':>6} {'p90':>6} {'stopped':>8}  not stopped "
        "(idle >= s, p50)",
    ]
    document: dict[str, Any] = {
        "runs_per_kind": args.idle_runs,
        "hours": args.idle_hours,
        "factor": factor,
        "repetitions": n,
        "on_crash_field": HAS_ON_CRASH,
        "idle_s": {},
        "not_stopped_s": {},
        "ratios_p50": {},
    }
    for kind in KINDS:
        for watcher in _watchers(reps):
            idle, left = _pooled(reps, watcher, kind), _unstopped(reps, watcher, kind)
            stopped = f"{len(idle)}/{len(idle) + len(left)}"
            rest = f"{len(left)} (>= {statistics.median(left):.0f})" if left else "0"
            lines.append(
                f"  {kind:<9} {watcher:<9} {_cell(idle, 50):>6} {_cell(idle, 90):>6} "
                f"{stopped:>8}  {rest}"
            )
            document["idle_s"].setdefault(kind, {})[watcher] = idle
            document["not_stopped_s"].setdefault(kind, {})[watcher] = left
        current = _pooled(reps, "current", kind)
        for other in ("previous", "baseline"):
            theirs = _pooled(reps, other, kind)
            if current and theirs:
                ratio = percentile(theirs, 50) / max(percentile(current, 50), 1e-9)
                lines.append(f"  {kind:<9} p50 {other} / current: {ratio:.1f}x")
                document["ratios_p50"].setdefault(kind, {})[other] = ratio
            elif current and _unstopped(reps, other, kind):
                lines.append(f"  {kind:<9} p50 {other} / current: {other} never stops them")
            elif theirs and not current:
                lines.append(f"  {kind:<9} p50 {other} / current: current never stops them")
    calls = {w: [r[w].calls_per_run_hour for r in reps] for w in _watchers(reps)}
    for watcher in _watchers(reps):
        name = f"AWS calls per run-hour: {watcher}"
        if watcher == EVENTS:
            name += " (receives at 20 s)"
        lines.append(row(name, calls[watcher], "/run-h"))
    over = [c / p for c, p in zip(calls["current"], calls["previous"], strict=True)]
    lines.append(row("calls current / previous (goal <= 2)", over, "x", "{:.2f}"))
    by_op: Counter[str] = Counter()
    for r in reps:
        by_op.update(r["current"].calls)
    lines.append(
        "  current calls by operation: "
        + ", ".join(f"{op} {count}" for op, count in sorted(by_op.items()))
    )
    lines.append(
        f"  note: each job's end is written within 1/{factor:g} s after a whole second, so S3's "
        f"whole-second LastModified is at most 1 simulated s older (as in production); the "
        f"daemon's own reaction (a listing, a commit, the stop call) counts {factor:g} times over"
    )
    lines.append("")
    document["calls_per_run_hour"] = calls
    document["calls_current_over_previous"] = over
    document["samples"] = [
        {w: {"calls": r[w].calls, "run_seconds": r[w].run_seconds} for w in _watchers(reps)}
        for r in reps
    ]
    return lines, document
