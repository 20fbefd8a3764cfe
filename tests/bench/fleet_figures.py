"""Figures 1 and 2: a simulated fleet against moto, watched three ways.

- baseline: the naive poller (tests/bench/baseline.py), in this process;
- polling: the real daemon, with no events queue;
- events: the real daemon consuming an SQS queue that moto's S3 notifications fill (and the
  EC2 state-change events AWS would send for each stop, played by this harness).

Each mode gets the same fleet: N fresh moto instances, and one job per instance that writes a
completion marker (the three default names in turn) after a chosen simulated time, from half
to all of `hours` (so runs end spread out, as they do). Time is compressed by `factor`
through the settings only: every daemon interval and the baseline's period are divided by it.
Grace is 0, so the stop follows the completion at once.

Figure 1 counts AWS calls per run-hour: calls in the window (first attach to last run ended)
divided by the simulated hours the jobs ran while watched (attach to marker, summed).
Figure 2 is the latency from the marker's PUT (this harness's clock, just before the call) to
the stop call (the daemon's `action_requested` log line; the baseline's own clock).
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from supervisor.client import AsyncSupervisor
from supervisor.core.backoff import BackoffPolicy, base_delay
from supervisor.core.run import TERMINAL_PHASES
from supervisor.core.spec import DEFAULT_MARKERS
from supervisor.demo.events import state_change
from supervisor.runtime.settings import Settings
from tests.bench.baseline import NaivePoller, Watched
from tests.bench.daemon_process import DaemonProcess, daemon_env, log_time, running
from tests.bench.moto_world import REGION, RUNS_PREFIX, MotoWorld

MODES = ("baseline", "polling", "events")
PRODUCTION = {
    "poll_initial_s": 30.0,
    "poll_max_s": 300.0,
    "poll_max_with_events_s": 1800.0,
    "reconcile_interval_s": 60.0,
    "zombie_interval_s": 60.0,
    "retry_base_s": 2.0,
    "poll_max_without_eta_s": 100.0,
}
BASELINE_PERIOD_S = 60.0
EVENTS_WAIT_S = 1
"""The SQS long poll in the bench: the smallest the settings allow (whole seconds, 1..20)."""
PRODUCTION_WAIT_S = 20
RECEIVES_PER_HOUR = 3600 / PRODUCTION_WAIT_S
JITTER = BackoffPolicy().jitter
_TERMINAL = frozenset(str(p) for p in TERMINAL_PHASES)


@dataclass(frozen=True, slots=True)
class PlannedRun:
    run_id: str
    instance_id: str
    bucket: str
    marker: str
    after_s: float
    """Real seconds from its attach to its marker."""

    @property
    def prefix(self) -> str:
        return f"{RUNS_PREFIX}{self.run_id}/"


@dataclass(slots=True)
class ModeResult:
    mode: str
    runs: int
    factor: float
    calls: dict[str, int] = field(default_factory=dict)
    window_s: float = 0.0
    """Real seconds from the first attach to the last run ended."""
    run_seconds: float = 0.0
    """Real seconds the jobs ran while watched (attach to marker), summed over runs."""
    latencies_s: list[float] = field(default_factory=list)
    """Real seconds from marker PUT to stop call, one per run that was stopped."""
    unstopped: int = 0
    bound: list[dict[str, float]] = field(default_factory=list)
    """Polling only: per run, the backoff bound at detection against the latency."""
    messages: int = 0
    """Events only: queue messages handled (each DeleteMessage)."""
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def run_hours(self) -> float:
        """Simulated hours the jobs ran while watched."""
        return self.run_seconds * self.factor / 3600

    @property
    def window_hours(self) -> float:
        return self.window_s * self.factor / 3600


def plan(
    tag: str, instances: list[str], bucket: str, hours: float, factor: float
) -> list[PlannedRun]:
    """One run per instance; run i ends after (0.5 + 0.5 (i + 0.5) / N) × `hours` simulated."""
    n = len(instances)
    return [
        PlannedRun(
            run_id=f"{tag}-{i:03d}",
            instance_id=instance_id,
            bucket=bucket,
            marker=DEFAULT_MARKERS[i % len(DEFAULT_MARKERS)],
            after_s=(0.5 + 0.5 * (i + 0.5) / n) * hours * 3600 / factor,
        )
        for i, instance_id in enumerate(instances)
    ]


def compressed(factor: float, *, events_queue_url: str | None, debug: bool) -> dict[str, str]:
    """The daemon's settings with every production interval divided by `factor`."""
    fields = Settings.model_fields
    values = {k: f"{v / factor:g}" for k, v in PRODUCTION.items() if k in fields}
    values |= {"grace_s": "0", "shutdown_timeout_s": "5", "log_level": "debug" if debug else "info"}
    if events_queue_url is not None:
        values["events_queue_url"] = events_queue_url
        if "events_wait_s" in fields:
            values["events_wait_s"] = str(EVENTS_WAIT_S)
    return values


async def _write_markers(
    world: MotoWorld, runs: list[PlannedRun], attached: dict[str, float], put_at: dict[str, float]
) -> None:
    """Each job writes its marker `after_s` after its attach; the time just before the PUT."""

    async def one(run: PlannedRun) -> None:
        await asyncio.sleep(max(0.0, attached[run.run_id] + run.after_s - time.time()))
        put_at[run.run_id] = time.time()
        await asyncio.to_thread(
            world.s3.put_object, Bucket=run.bucket, Key=run.prefix + run.marker, Body=b""
        )

    await asyncio.gather(*(one(r) for r in runs))


def _timeout_s(runs: list[PlannedRun]) -> float:
    return max(r.after_s for r in runs) * 1.5 + 60


async def run_daemon(
    world: MotoWorld, runs: list[PlannedRun], factor: float, queue_url: str | None, workdir: Path
) -> ModeResult:
    """One mode of the real daemon over `runs` (their bucket, instances and, for the events
    mode, queue already exist)."""
    events = queue_url is not None
    mode = "events" if events else "polling"
    result = ModeResult(mode, len(runs), factor)
    settings = compressed(factor, events_queue_url=queue_url, debug=not events)
    daemon = DaemonProcess(workdir / mode, daemon_env(world.aws_env, workdir / mode, settings))
    with running(daemon):
        await daemon.wait_ready()
        before = await daemon.aws_calls()
        client = AsyncSupervisor(state_dir=daemon.state_dir)
        attached: dict[str, float] = {}
        put_at: dict[str, float] = {}
        started = time.time()
        for run in runs:
            attached[run.run_id] = time.time()
            await client.attach(
                run.run_id, run.instance_id, f"s3://{run.bucket}/{run.prefix}", grace_s=0
            )
        writer = asyncio.create_task(_write_markers(world, runs, attached, put_at))
        by_instance = {r.run_id: r.instance_id for r in runs}
        stop_at: dict[str, float] = {}
        ended: dict[str, float] = {}
        checks: dict[str, list[tuple[float, int, int]]] = {}
        deadline = time.monotonic() + _timeout_s(runs)
        while len(ended) < len(runs) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            for line in daemon.log.read():
                run_id, name = line.get("run_id"), line.get("event")
                if run_id not in by_instance:
                    continue
                if name == "action_requested" and line.get("operation") == "StopInstances":
                    stop_at.setdefault(run_id, log_time(line))
                elif name == "action_accepted" and events:
                    await play_ec2_events(world, queue_url, by_instance[run_id])
                elif name == "prefix_checked":
                    checks.setdefault(run_id, []).append(
                        (log_time(line), int(line["check"]), int(line["objects"]))
                    )
                elif name == "run_transitioned" and str(line.get("to_phase")) in _TERMINAL:
                    ended[run_id] = log_time(line)
        finished = time.time()
        await writer
        after = await daemon.aws_calls()
    result.calls = dict(after - before)
    result.window_s = finished - started
    result.run_seconds = sum(put_at[r] - attached[r] for r in put_at)
    result.latencies_s = [stop_at[r] - put_at[r] for r in stop_at if r in put_at]
    result.unstopped = len(runs) - len(result.latencies_s)
    result.messages = result.calls.get("DeleteMessage", 0)
    if not events:
        result.bound = _bounds(checks, put_at, stop_at, factor)
    return result


async def play_ec2_events(world: MotoWorld, queue_url: str | None, instance_id: str) -> None:
    """What EventBridge would queue for a stop: the state changes to stopping and stopped.
    (moto sends no EC2 events; the daemon's rule in deploy/ takes every instance's changes.)"""
    assert queue_url is not None
    now = datetime.now(UTC)
    for state in ("stopping", "stopped"):
        body = state_change(instance_id, state, region=REGION, at=now)
        await asyncio.to_thread(world.send, queue_url, body)


def _bounds(
    checks: dict[str, list[tuple[float, int, int]]],
    put_at: dict[str, float],
    stop_at: dict[str, float],
    factor: float,
) -> list[dict[str, float]]:
    """For each stopped run: the backoff interval before the check that saw its marker
    (`check` k in the `prefix_checked` debug line waited base_delay(k - 2)), in simulated
    seconds, against the latency; and the daemon's processing after that check in real
    seconds (it does not scale with the compression: in production it is the same ~0.1 s)."""
    policy = BackoffPolicy(PRODUCTION["poll_initial_s"], PRODUCTION["poll_max_s"])
    out: list[dict[str, float]] = []
    for run_id, stopped in stop_at.items():
        seen = [c for c in checks.get(run_id, []) if c[2] > 0]
        if run_id not in put_at or not seen:
            continue
        at, k, _ = seen[0]
        base = base_delay(max(0, k - 2), policy)
        latency_sim = (stopped - put_at[run_id]) * factor
        processing_s = stopped - at
        out.append(
            {
                "check": k,
                "interval_s": base,
                "bound_s": base * (1 + JITTER),
                "latency_s": latency_sim,
                "processing_real_s": processing_s,
                "latency_less_processing_s": latency_sim - processing_s * factor,
            }
        )
    return out


async def run_baseline(world: MotoWorld, runs: list[PlannedRun], factor: float) -> ModeResult:
    result = ModeResult("baseline", len(runs), factor)
    await asyncio.to_thread(world.bucket, runs[0].bucket)
    poller = NaivePoller(
        world.aws_env,
        [Watched(r.run_id, r.instance_id, r.bucket, r.prefix) for r in runs],
        period_s=BASELINE_PERIOD_S / factor,
        markers=DEFAULT_MARKERS,
    )
    attached = dict.fromkeys((r.run_id for r in runs), time.time())
    put_at: dict[str, float] = {}
    started = time.time()
    writer = asyncio.create_task(_write_markers(world, runs, attached, put_at))
    outcome = await poller.run(_timeout_s(runs))
    finished = time.time()
    await writer
    result.calls = dict(outcome.calls)
    result.window_s = finished - started
    result.run_seconds = sum(put_at[r] - attached[r] for r in put_at)
    result.latencies_s = [outcome.stop_at[r] - put_at[r] for r in outcome.stop_at if r in put_at]
    result.unstopped = len(runs) - len(result.latencies_s)
    result.notes = {"sweeps": outcome.sweeps, "overruns": outcome.overruns}
    return result


async def repetition(
    world: MotoWorld,
    rep: int,
    runs: int,
    baseline_runs: int,
    hours: float,
    factor: float,
    *,
    concurrent: bool = True,
) -> dict[str, ModeResult]:
    """One repetition of the three modes, each on a fresh fleet of instances (`runs` for
    each daemon mode, `baseline_runs` for the baseline; the same plan of job lengths). The
    baseline runs alone; the two daemon modes run side by side unless `concurrent` is
    false."""
    sizes = {"baseline": baseline_runs, "polling": runs, "events": runs}
    fleets = {
        m: plan(f"{m[:4]}{rep}", world.launch(sizes[m]), f"bench-{m}-{rep}", hours, factor)
        for m in MODES
    }
    results = {"baseline": await run_baseline(world, fleets["baseline"], factor)}
    world.bucket(fleets["polling"][0].bucket)
    queue_url = world.queue(f"bench-events-{rep}")
    world.bucket(fleets["events"][0].bucket, notify_queue_url=queue_url)
    with tempfile.TemporaryDirectory(prefix="sv", dir="/tmp") as folder:
        work = Path(folder)
        polling = run_daemon(world, fleets["polling"], factor, None, work)
        events = run_daemon(world, fleets["events"], factor, queue_url, work)
        if concurrent:
            results["polling"], results["events"] = await asyncio.gather(polling, events)
        else:
            results["polling"] = await polling
            results["events"] = await events
    return results


# -- summaries ------------------------------------------------------------------------------


def per_run_hour(result: ModeResult) -> dict[str, float]:
    """Calls per run-hour by operation, as measured."""
    return {op: n / result.run_hours for op, n in sorted(result.calls.items())}


def production_receives(result: ModeResult) -> float:
    """ReceiveMessage calls the same window would make with the production 20 s long poll:
    one per 20 s for the whole fleet, plus at most one early return per message handled."""
    return RECEIVES_PER_HOUR * result.window_hours + result.messages


def total_per_run_hour(result: ModeResult) -> float:
    """All calls per run-hour; for events, ReceiveMessage at its production cost."""
    calls = Counter(result.calls)
    total = float(sum(calls.values()))
    if result.mode == "events":
        total += production_receives(result) - calls["ReceiveMessage"]
    return total / result.run_hours


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q) - 1]


SWEEPS_PER_HOUR = 3600 / PRODUCTION["reconcile_interval_s"] + 3600 / PRODUCTION["zombie_interval_s"]
"""Fleet-wide DescribeInstances calls per hour: the reconcile sweep and the zombie sweep."""


def at_fleet_size(result: ModeResult, runs: int) -> float:
    """Derived, not measured: total calls per run-hour if the same window held `runs` runs
    instead of `result.runs`. Fleet-wide calls (the sweeps' DescribeInstances on schedule,
    and for events the production ReceiveMessage long polls) are shared by all runs; every
    other call is taken to be per run."""
    if result.mode == "baseline":
        return total_per_run_hour(result)
    fleet = min(SWEEPS_PER_HOUR * result.window_hours, result.calls.get("DescribeInstances", 0))
    if result.mode == "events":
        fleet += RECEIVES_PER_HOUR * result.window_hours
    total = total_per_run_hour(result) * result.run_hours
    return (total - fleet) / result.run_hours + fleet / (result.run_hours * runs / result.runs)


def report(reps: list[dict[str, ModeResult]], args: Any) -> tuple[list[str], dict[str, Any]]:
    """The table's lines for figures 1 and 2, and the JSON."""
    from tests.bench.table import row, spread

    factor = args.factor
    n = len(reps)

    def per_op(mode: str, op: str) -> list[float]:
        return [r[mode].calls.get(op, 0) / r[mode].run_hours for r in reps]

    def totals(mode: str) -> list[float]:
        return [total_per_run_hour(r[mode]) for r in reps]

    lines = [
        f"Figure 1: AWS calls per run-hour, {args.fleet_runs} runs per daemon mode, "
        f"{args.baseline_runs} for the baseline, jobs of {args.fleet_hours / 2:g}-"
        f"{args.fleet_hours:g} simulated h, time /{factor:g}, {n} repetitions (median, min - max)",
    ]
    ops = {
        "baseline": ("HeadObject", "DescribeInstances", "StopInstances"),
        "polling": ("ListObjectsV2", "DescribeInstances", "StopInstances"),
        "events": ("ListObjectsV2", "DescribeInstances", "StopInstances", "DeleteMessage"),
    }
    for mode in MODES:
        for op in ops[mode]:
            lines.append(row(f"{mode}: {op}", per_op(mode, op), "/run-h"))
        if mode == "events":
            lines.append(
                row(
                    "events: ReceiveMessage as run (1 s long poll)",
                    per_op(mode, "ReceiveMessage"),
                    "/run-h",
                )
            )
            lines.append(
                row(
                    "events: ReceiveMessage at 20 s (production)",
                    [production_receives(r[mode]) / r[mode].run_hours for r in reps],
                    "/run-h",
                )
            )
        lines.append(row(f"{mode}: total", totals(mode), "/run-h"))
    ratio_polling = [b / p for b, p in zip(totals("baseline"), totals("polling"), strict=True)]
    ratio_events = [b / e for b, e in zip(totals("baseline"), totals("events"), strict=True)]
    lines.append(row("baseline / ours polling only (goal >= 10)", ratio_polling, "x"))
    lines.append(row("baseline / ours with events (goal >= 30)", ratio_events, "x"))
    derived: dict[str, dict[str, float]] = {}
    for size in (1000,):
        fleet_p = [at_fleet_size(r["polling"], size) for r in reps]
        fleet_e = [at_fleet_size(r["events"], size) for r in reps]
        base = totals("baseline")
        rp = [b / p for b, p in zip(base, fleet_p, strict=True)]
        re_ = [b / e for b, e in zip(base, fleet_e, strict=True)]
        lines.append(row(f"derived at {size} runs: polling total", fleet_p, "/run-h"))
        lines.append(row(f"derived at {size} runs: events total", fleet_e, "/run-h"))
        lines.append(row(f"derived at {size} runs: baseline / polling", rp, "x"))
        lines.append(row(f"derived at {size} runs: baseline / events", re_, "x"))
        derived[str(size)] = {
            "polling": spread(fleet_p)["median"],
            "events": spread(fleet_e)["median"],
            "ratio_polling": spread(rp)["median"],
            "ratio_events": spread(re_)["median"],
        }
    lines.append("")

    def lat(mode: str, q: float, scale: float) -> list[float]:
        values = []
        for r in reps:
            got = r[mode].latencies_s
            values.append(
                (max(got) if q >= 100 else percentile(got, q)) * scale if got else float("nan")
            )
        return values

    lines.append(
        f"Figure 2: completion-to-stop-call latency, grace 0, {n} repetitions "
        "(median, min - max of each run's p50/p95/max)"
    )
    for mode, scale, unit in (
        ("events", 1.0, "s real"),
        ("polling", factor, "s sim"),
        ("baseline", factor, "s sim"),
    ):
        for q, name in ((50, "p50"), (95, "p95"), (100, "max")):
            lines.append(
                row(
                    f"{mode}: {name}",
                    lat(mode, q, scale),
                    unit,
                    "{:.2f}" if mode == "events" else "{:.0f}",
                )
            )
    over_raw = [float(sum(b["latency_s"] > b["bound_s"] for b in r["polling"].bound)) for r in reps]
    over_net = [
        float(sum(b["latency_less_processing_s"] > b["bound_s"] for b in r["polling"].bound))
        for r in reps
    ]
    judged = [float(len(r["polling"].bound)) for r in reps]
    lines.append(row("polling: runs judged against the bound", judged, "runs", "{:.0f}"))
    lines.append(row("polling: over interval x 1.1 (as measured)", over_raw, "runs", "{:.0f}"))
    lines.append(row("polling: over it, processing not scaled", over_net, "runs", "{:.0f}"))
    lines.append(
        row(
            "polling: processing after the check (real)",
            [percentile([b["processing_real_s"] for b in r["polling"].bound], 50) for r in reps],
            "s p50",
            "{:.3f}",
        )
    )
    lines.append(
        row(
            "baseline: sweeps that started late",
            [float(r["baseline"].notes.get("overruns", 0)) for r in reps],
            "sweeps",
            "{:.0f}",
        )
    )
    unstopped = [float(sum(m.unstopped for m in r.values())) for r in reps]
    lines.append(row("runs never stopped (all modes)", unstopped, "runs", "{:.0f}"))
    lines.append("")
    document = {
        "fleet_runs": args.fleet_runs,
        "baseline_runs": args.baseline_runs,
        "fleet_hours": args.fleet_hours,
        "factor": factor,
        "concurrent_daemon_modes": not args.fleet_sequential,
        "samples": [{m: dataclasses.asdict(r) for m, r in rep.items()} for rep in reps],
        "totals_per_run_hour": {m: spread(totals(m)) for m in MODES},
        "ratio_polling": spread(ratio_polling),
        "ratio_events": spread(ratio_events),
        "derived": derived,
        "latency": {
            "events_real_s": {
                q: spread(lat("events", v, 1.0))
                for q, v in (("p50", 50), ("p95", 95), ("max", 100))
            },
            "polling_sim_s": {
                q: spread(lat("polling", v, factor))
                for q, v in (("p50", 50), ("p95", 95), ("max", 100))
            },
            "baseline_sim_s": {
                q: spread(lat("baseline", v, factor))
                for q, v in (("p50", 50), ("p95", 95), ("max", 100))
            },
            "polling_over_bound": over_raw,
            "polling_over_bound_processing_unscaled": over_net,
        },
    }
    return lines, document
