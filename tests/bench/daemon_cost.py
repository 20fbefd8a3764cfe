"""Figure 3: the daemon's own CPU time per run-hour and its resident memory, at the DEFAULT
schedule (nothing compressed), with 1,000 and 10,000 watched runs against moto.

The runs are seeded into a fresh SQLite file before the daemon starts (with
`synchronous=OFF`; the seeding is not measured), each in `running` since two hours ago, so a
re-armed run resumes its backoff at the 300 s cap with its first check anywhere in the next
300 s: the steady state from the start. Each run's prefix is empty (no marker: nothing ends).

The daemon reaches moto through a keep-alive proxy (tests/bench/keepalive_proxy.py): moto's
server closes every connection, S3 does not. Measured on the daemon process alone:
/proc/PID/stat (utime + stime, all its threads) and /proc/PID/status (VmRSS), at the edges
of a window that starts `settle_s` after the daemon answers, cut into three equal parts (the
spread). AWS calls come from its `/metrics`.

moto's limit: DescribeInstances in moto costs about 5 s for 1,000 ids, and launching costs
about 10 s per 1,000 instances, so the fleet has at most 1,000 moto instances; at 10,000 runs
ten runs share each instance (seeded directly: an attach would refuse it). The reconcile sweep
describes each instance once, so at 10,000 runs it parses 1,000 instances a minute, not
10,000 (see BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from supervisor.adapters.store import Store
from supervisor.core.events import InstanceObserved
from supervisor.core.machine import Policy, new_run, step
from supervisor.core.spec import RunSpec
from supervisor.core.values import InstanceState
from tests.bench.daemon_process import DaemonProcess, daemon_env, running
from tests.bench.keepalive_proxy import KeepAliveProxy
from tests.bench.moto_world import REGION, RUNS_PREFIX, MotoWorld

RUNNING_FOR = timedelta(hours=2)
BUCKET = "bench-cost"


@dataclass(slots=True)
class CostSample:
    runs: int
    instances: int
    window_s: float
    cpu_s: float
    rss_mb: float
    calls: dict[str, int] = field(default_factory=dict)
    parts: list[dict[str, float]] = field(default_factory=list)
    """Each third of the window: cpu_s, seconds, rss_mb, calls."""
    startup_cpu_s: float = 0.0
    """CPU from process start to the window's start (start-up, re-arm, settling)."""

    @property
    def cpu_per_run_hour(self) -> float:
        return self.cpu_s / (self.runs * self.window_s / 3600)

    @property
    def core_percent(self) -> float:
        return 100 * self.cpu_s / self.window_s


async def seed(db_path: Path, instances: list[str], runs: int) -> None:
    """`runs` runs in `running` since RUNNING_FOR ago, spread over `instances` in turn."""
    then = datetime.now(UTC) - RUNNING_FOR
    store = await Store.open(db_path)
    try:
        await store._writer.execute("PRAGMA synchronous = OFF")
        rng = random.Random(0)
        for i in range(runs):
            run_id = f"cost-{i:05d}"
            spec = RunSpec.build(
                run_id=run_id,
                instance_id=instances[i % len(instances)],
                region=REGION,
                s3_prefix=f"s3://{BUCKET}/{RUNS_PREFIX}{run_id}/",
                grace_s=300,
            )
            first = new_run(spec, now=then)
            await store.create_run(first)
            decision = step(
                first.run,
                InstanceObserved(InstanceState.RUNNING),
                now=then,
                policy=Policy(),
                rng=rng,
            )
            await store.commit(first.run, decision, now=then)
        await store._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        await store.close()


async def measure(
    world: MotoWorld,
    instances: list[str],
    runs: int,
    workdir: Path,
    *,
    settle_s: float,
    window_s: float,
) -> CostSample:
    state_dir = workdir / f"cost-{runs}"
    state_dir.mkdir(parents=True, mode=0o700)
    await seed(state_dir / "supervisor.db", instances, runs)
    # Through the keep-alive proxy: moto closes every connection, S3 keeps them open, and
    # what is measured here is the daemon's own CPU.
    with KeepAliveProxy(world.url) as proxy:
        aws = {**world.aws_env, "AWS_ENDPOINT_URL": proxy.url}
        return await _measure(DaemonProcess(state_dir, daemon_env(aws, state_dir, {})),
                              runs, instances, settle_s=settle_s, window_s=window_s)  # fmt: skip


async def _measure(
    daemon: DaemonProcess,
    runs: int,
    instances: list[str],
    *,
    settle_s: float,
    window_s: float,
) -> CostSample:
    with running(daemon):
        await daemon.wait_ready()
        await asyncio.sleep(settle_s)
        edges: list[tuple[float, float, float, Counter[str]]] = []
        for part in range(4):
            if part:
                await asyncio.sleep(window_s / 3)
            calls = await daemon.aws_calls()
            edges.append((time.monotonic(), daemon.cpu_seconds(), daemon.rss_mb(), calls))
    parts = [
        {
            "seconds": b[0] - a[0],
            "cpu_s": b[1] - a[1],
            "rss_mb": b[2],
            "calls": float(sum((b[3] - a[3]).values())),
        }
        for a, b in itertools.pairwise(edges)
    ]
    first, last = edges[0], edges[-1]
    return CostSample(
        runs=runs,
        instances=len(set(instances[:runs])),
        window_s=last[0] - first[0],
        cpu_s=last[1] - first[1],
        rss_mb=max(e[2] for e in edges),
        calls=dict(last[3] - first[3]),
        parts=parts,
        startup_cpu_s=first[1],
    )


def report(samples: list[CostSample], args: Any) -> tuple[list[str], dict[str, Any]]:
    """The table's lines for figure 3 (spread over the window's three parts), and the JSON."""
    from tests.bench.table import row, spread

    lines = [
        f"Figure 3: the daemon alone at the default schedule, {args.cost_window:g} s window "
        f"after {args.cost_settle:g} s, 3 parts (median, min - max)",
    ]
    document: dict[str, Any] = {"samples": [], "window_s": args.cost_window}
    for s in samples:
        per_hour = [p["cpu_s"] / (s.runs * p["seconds"] / 3600) for p in s.parts]
        percent = [100 * p["cpu_s"] / p["seconds"] for p in s.parts]
        rate = [p["calls"] / p["seconds"] for p in s.parts]
        rss = [p["rss_mb"] for p in s.parts]
        tag = f"{s.runs} runs"
        lines += [
            row(f"{tag}: CPU per run-hour", [v * 1000 for v in per_hour], "ms", "{:.2f}"),
            row(f"{tag}: % of one core (goal <= 5)", percent, "%", "{:.2f}"),
            row(f"{tag}: resident memory (goal <= 150)", rss, "MB"),
            row(f"{tag}: AWS calls/s", rate, "/s", "{:.2f}"),
            f"    {tag} on {s.instances} moto instances: whole window "
            f"{s.core_percent:.2f}% of a core, calls "
            + ", ".join(f"{op} {n}" for op, n in sorted(s.calls.items()))
            + f"; start-up and settling {s.startup_cpu_s:.1f} s CPU",
        ]
        document["samples"].append(
            {
                **dataclasses.asdict(s),
                "cpu_per_run_hour_s": spread(per_hour),
                "core_percent": spread(percent),
                "rss_mb_parts": spread(rss),
                "calls_per_s": spread(rate),
            }
        )
    lines.append("")
    return lines, document
